//! The filesystem sizes of thin devices as the agent last read them, so that
//! listing stopped containers does not activate each one's device.
//!
//! A stopped container's device is usually not active, and its filesystem
//! size is on disk only: reading it takes a private activation in Docker's
//! pool. Such a mapping, while it exists, makes the pool refuse to delete
//! the thin device, so a `docker rm` that lands in it fails (moby retries
//! only with deferred deletion on, which is off by default). A filesystem
//! on an inactive device cannot change without an activation, and Docker's
//! own activations (start) are seen by the agent while the container runs.
//! So `ls` uses what was read last, and reads only what it never saw;
//! `inspect NAME`, resize and repair always read the device itself.
//!
//! Kept in `<state>/fs-seen.json`, rewritten atomically when it changes;
//! records of containers that are gone are dropped when `ls` lists all.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::sys::atomic::write_atomically;
use crate::sys::fs::FsKind;

/// One device's filesystem, as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The thin id it was read from: a record never answers for another
    /// device under a reused mount id.
    device_id: u64,
    fs_bytes: u64,
    xfs: bool,
}

/// The records, by Docker's mount id.
#[derive(Debug)]
pub struct Seen {
    path: PathBuf,
    records: Mutex<BTreeMap<String, Record>>,
}

impl Seen {
    /// Loads the records in `path`; a missing or unreadable file starts
    /// empty (each stopped container is then read once more).
    pub fn load(path: PathBuf) -> Self {
        let records = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Seen {
            path,
            records: Mutex::new(records),
        }
    }

    /// The filesystem last read on thin device `device_id` of `mount_id`.
    pub fn get(&self, mount_id: &str, device_id: u64) -> Option<(FsKind, u64)> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let r = records.get(mount_id).filter(|r| r.device_id == device_id)?;
        Some((if r.xfs { FsKind::Xfs } else { FsKind::Ext4 }, r.fs_bytes))
    }

    /// Records a filesystem just read from the device itself.
    pub fn put(&self, mount_id: &str, device_id: u64, kind: FsKind, fs_bytes: u64) {
        let record = Record {
            device_id,
            fs_bytes,
            xfs: kind == FsKind::Xfs,
        };
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.get(mount_id) != Some(&record) {
            records.insert(mount_id.to_owned(), record);
            self.save(&records);
        }
    }

    /// Drops the records of mount ids not in `live` (containers removed).
    pub fn retain(&self, live: &HashSet<String>) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let before = records.len();
        records.retain(|id, _| live.contains(id));
        if records.len() != before {
            self.save(&records);
        }
    }

    fn save(&self, records: &BTreeMap<String, Record>) {
        // A record that could not be saved costs one more read after a
        // restart, nothing else: warn and go on.
        let bytes = serde_json::to_vec(records).unwrap_or_default();
        if let Err(e) = write_atomically(&self.path, &bytes) {
            tracing::warn!(path = %self.path.display(), "cannot save filesystem sizes: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_answers_for_its_own_device_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs-seen.json");
        let seen = Seen::load(path.clone());
        assert_eq!(seen.get("abc", 7), None);
        seen.put("abc", 7, FsKind::Xfs, 4 << 30);
        seen.put("def", 8, FsKind::Ext4, 2 << 30);
        assert_eq!(seen.get("abc", 7), Some((FsKind::Xfs, 4 << 30)));
        // Another thin device under the same mount id is not this one.
        assert_eq!(seen.get("abc", 9), None);

        let again = Seen::load(path.clone());
        assert_eq!(again.get("def", 8), Some((FsKind::Ext4, 2 << 30)));
        again.retain(&HashSet::from(["def".to_string()]));
        assert_eq!(Seen::load(path).get("abc", 7), None);
    }

    #[test]
    fn an_unreadable_file_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs-seen.json");
        std::fs::write(&path, b"{not json").unwrap();
        let seen = Seen::load(path);
        assert_eq!(seen.get("abc", 7), None);
        seen.put("abc", 7, FsKind::Xfs, 1 << 30);
        assert_eq!(seen.get("abc", 7), Some((FsKind::Xfs, 1 << 30)));
    }
}
