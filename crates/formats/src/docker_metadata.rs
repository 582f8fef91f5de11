//! Docker's devicemapper per-device metadata, the JSON object in
//! `<data-root>/devicemapper/metadata/<mount id>` (DESIGN.md F3):
//! `{"device_id":4,"size":2147483648,"transaction_id":4,...}`. Roomy
//! rewrites `size` so dockerd adopts a grown device at its next start, and
//! keeps every other field exactly, in its order.

use serde_json::{Map, Value};

/// Why a metadata file's text is not one Roomy may read or rewrite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// The object lacks a field Roomy needs, or it is not a whole number.
    #[error("no numeric \"{0}\" field")]
    Missing(&'static str),
}

/// A parsed metadata object.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    fields: Map<String, Value>,
}

impl DeviceRecord {
    /// Parse a file's bytes.
    pub fn parse(text: &[u8]) -> Result<Self, MetadataError> {
        match serde_json::from_slice(text).map_err(|e| MetadataError::NotJson(e.to_string()))? {
            Value::Object(fields) => Ok(DeviceRecord { fields }),
            _ => Err(MetadataError::NotObject),
        }
    }

    fn number(&self, name: &'static str) -> Result<u64, MetadataError> {
        self.fields
            .get(name)
            .and_then(Value::as_u64)
            .ok_or(MetadataError::Missing(name))
    }

    /// The size dockerd adopts at its next start, in bytes.
    pub fn size(&self) -> Result<u64, MetadataError> {
        self.number("size")
    }

    /// Whether Docker marked the device deleted (deferred deletion).
    pub fn deleted(&self) -> bool {
        self.fields.get("deleted").and_then(Value::as_bool) == Some(true)
    }

    /// The thin device id.
    pub fn device_id(&self) -> Result<u64, MetadataError> {
        self.number("device_id")
    }

    /// The file's new text with `size` set to `bytes`, every other field as
    /// it was, in its order; `None` when it is `bytes` already (nothing to
    /// write). Refused, changing nothing, when there is no numeric `size`.
    pub fn with_size(&self, bytes: u64) -> Result<Option<Vec<u8>>, MetadataError> {
        if self.size()? == bytes {
            return Ok(None);
        }
        let mut fields = self.fields.clone();
        fields.insert("size".into(), Value::from(bytes));
        // A map of JSON values always serializes.
        Ok(Some(
            serde_json::to_vec(&Value::Object(fields)).expect("a JSON map serializes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = r#"{"device_id":4,"size":2147483648,"transaction_id":4,"initialized":false,"deleted":false}"#;

    #[test]
    fn rewrites_size_and_keeps_every_other_field_in_order() {
        let record = DeviceRecord::parse(DOCKER.as_bytes()).unwrap();
        assert_eq!(record.size().unwrap(), 2 << 30);
        assert_eq!(record.device_id().unwrap(), 4);
        let text = record.with_size(4 << 30).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            DOCKER.replace("2147483648", "4294967296")
        );
        assert_eq!(record.with_size(2 << 30).unwrap(), None);
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let no_size = DeviceRecord::parse(br#"{"device_id":4}"#).unwrap();
        assert_eq!(no_size.with_size(1), Err(MetadataError::Missing("size")));
        let negative = DeviceRecord::parse(br#"{"size":-1,"device_id":1.5}"#).unwrap();
        assert_eq!(negative.size(), Err(MetadataError::Missing("size")));
        assert_eq!(
            negative.device_id(),
            Err(MetadataError::Missing("device_id"))
        );
        assert_eq!(DeviceRecord::parse(b"[1]"), Err(MetadataError::NotObject));
        assert!(matches!(
            DeviceRecord::parse(b"{\"size\":"),
            Err(MetadataError::NotJson(_))
        ));
    }
}
