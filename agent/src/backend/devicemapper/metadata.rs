//! Docker's per-device metadata file,
//! `<data-root>/devicemapper/metadata/<mount id>` (DESIGN.md F3):
//! `{"device_id":4,"size":2147483648,"transaction_id":4,...}`.
//!
//! dockerd reads these files only at start, so rewriting `size` is how a
//! grown device keeps its size across a dockerd restart. The rewrite is the
//! one Docker does itself: a dot-prefixed temp file (dockerd skips dot files
//! when it loads), fsync, rename, fsync of the directory. Every other field
//! is kept exactly, in its order.

use std::fs;
use std::path::{Path, PathBuf};

use roomy_formats::docker_metadata::DeviceRecord;

use crate::error::AgentError;
use crate::sys::atomic::write_atomically;

/// One device's metadata file.
#[derive(Debug, Clone)]
pub struct DeviceMetadata {
    path: PathBuf,
}

impl DeviceMetadata {
    /// The file of device `mount_id` under Docker's data root.
    pub fn new(data_root: &Path, mount_id: &str) -> Self {
        DeviceMetadata {
            path: data_root.join("devicemapper/metadata").join(mount_id),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, detail: impl std::fmt::Display) -> AgentError {
        AgentError::Metadata {
            path: self.path.display().to_string(),
            detail: detail.to_string(),
        }
    }

    fn read(&self) -> Result<DeviceRecord, AgentError> {
        let text = fs::read(&self.path).map_err(|e| self.err(e))?;
        DeviceRecord::parse(&text).map_err(|e| self.err(e))
    }

    /// The size Docker will adopt at its next start, in bytes.
    pub fn size(&self) -> Result<u64, AgentError> {
        self.read()?.size().map_err(|e| self.err(e))
    }

    /// The thin device id the file records.
    pub fn device_id(&self) -> Result<u64, AgentError> {
        self.read()?.device_id().map_err(|e| self.err(e))
    }

    /// Rewrite `size`, keeping every other field. Returns the old size.
    /// A no-op (nothing written) when the size is already `bytes`.
    pub fn set_size(&self, bytes: u64) -> Result<u64, AgentError> {
        let record = self.read()?;
        let old = record.size().map_err(|e| self.err(e))?;
        if let Some(text) = record.with_size(bytes).map_err(|e| self.err(e))? {
            write_atomically(&self.path, &text).map_err(|e| self.err(e))?;
        }
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = r#"{"device_id":4,"size":2147483648,"transaction_id":4,"initialized":false,"deleted":false}"#;

    fn fixture() -> (tempfile::TempDir, DeviceMetadata) {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("devicemapper/metadata")).unwrap();
        let meta = DeviceMetadata::new(root.path(), "abc");
        fs::write(meta.path(), DOCKER).unwrap();
        (root, meta)
    }

    #[test]
    fn rewrites_size_and_keeps_every_other_field_in_order() {
        let (root, meta) = fixture();
        assert_eq!(meta.size().unwrap(), 2 << 30);
        assert_eq!(meta.device_id().unwrap(), 4);
        assert_eq!(meta.set_size(4 << 30).unwrap(), 2 << 30);
        assert_eq!(
            fs::read_to_string(meta.path()).unwrap(),
            DOCKER.replace("2147483648", "4294967296")
        );
        // No temp file left behind, dotted or not.
        let names: Vec<_> = fs::read_dir(root.path().join("devicemapper/metadata"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["abc"]);
    }

    #[test]
    fn same_size_writes_nothing() {
        let (_root, meta) = fixture();
        let before = fs::metadata(meta.path()).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(meta.set_size(2 << 30).unwrap(), 2 << 30);
        assert_eq!(
            fs::metadata(meta.path()).unwrap().modified().unwrap(),
            before
        );
    }

    #[test]
    fn refuses_files_it_does_not_understand_and_leaves_them() {
        let (_root, meta) = fixture();
        fs::write(meta.path(), r#"{"device_id":4}"#).unwrap();
        assert!(meta
            .set_size(4 << 30)
            .unwrap_err()
            .to_string()
            .contains("no numeric \"size\""));
        assert_eq!(
            fs::read_to_string(meta.path()).unwrap(),
            r#"{"device_id":4}"#
        );
        fs::write(meta.path(), "[1]").unwrap();
        assert!(meta.size().is_err());
        let missing = DeviceMetadata::new(Path::new("/nonexistent"), "x");
        assert!(missing
            .size()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/devicemapper/metadata/x"));
    }
}
