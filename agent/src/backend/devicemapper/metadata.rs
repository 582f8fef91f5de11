//! Docker's per-device metadata file,
//! `<data-root>/devicemapper/metadata/<mount id>` (DESIGN.md F3):
//! `{"device_id":4,"size":2147483648,"transaction_id":4,...}`.
//!
//! dockerd reads these files only at start, so rewriting `size` is how a
//! grown device keeps its size across a dockerd restart. The rewrite is the
//! one Docker does itself: a dot-prefixed temp file (dockerd skips dot files
//! when it loads), fsync, rename, fsync of the directory. Every other field
//! is kept exactly, in its order.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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

/// Every live device's recorded size, from Docker's metadata directory,
/// read again only when the directory changed: the pool's "virtual" bytes
/// (their sum, every refresh) and the guard's look at each container's
/// persisted size (every sweep). Reading 400 files each time was most of
/// an idle agent's CPU on a host of 200 containers (bench-host's perf).
/// Docker and Roomy both change a file by renaming a new one over it, and
/// devices come and go as files, so each change moves the directory's
/// mtime.
///
/// When the directory did change, only the files that changed are read
/// again: each file's stamp (inode, length, mtime, ctime) comes from one
/// `statx` relative to the directory, where a read was a five-step path
/// walk, the file and its JSON. While 20 containers grow one after the
/// other the directory changes every few seconds, and reading all 400
/// files at each refresh was most of the agent's pool read (72 ms while
/// filling against 2 ms idle, bench-host).
#[derive(Debug, Default)]
pub struct Provisioned {
    /// The directory's mtime and what was read under it.
    last: Mutex<Option<(SystemTime, Arc<Sizes>)>>,
    /// Each file's stamp and size as last read (`None`: not a live
    /// device), kept while its stamp holds.
    files: Mutex<HashMap<String, (FileStamp, Option<u64>)>>,
    /// Device files read (opened and parsed) since start.
    files_read: std::sync::atomic::AtomicU64,
}

/// What tells a file was not rewritten since it was read. Both Docker and
/// Roomy rename a new file over the old one, but a freed inode number is
/// soon handed out again (on XFS a file rewritten twice can be back on
/// its first inode), so the times and length are part of it too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// What one read of the directory found.
#[derive(Debug, Default)]
pub struct Sizes {
    /// Size by device (file) name; devices marked deleted are left out.
    pub by_device: HashMap<String, u64>,
    /// Their sum.
    pub sum: u64,
}

/// Timestamps are taken from a coarse clock: a change within the same tick
/// as the one seen leaves the mtime as it was. A read is kept only when its
/// mtime is older than this, so no later change can share it.
const SETTLED: Duration = Duration::from_secs(1);

impl Provisioned {
    /// The sizes under `data_root`'s `devicemapper/metadata`.
    pub fn sizes(&self, data_root: &Path) -> Arc<Sizes> {
        let dir = data_root.join("devicemapper/metadata");
        let mtime = fs::metadata(&dir).and_then(|m| m.modified()).ok();
        let last = self
            .last
            .lock()
            .expect("provisioned cache poisoned")
            .clone();
        if let (Some(now), Some((seen, sizes))) = (mtime, last) {
            if now == seen {
                return sizes;
            }
        }
        let sizes = Arc::new(self.read_sizes(&dir));
        let now = SystemTime::now();
        let settled = mtime.filter(|m| settled(*m, now));
        *self.last.lock().expect("provisioned cache poisoned") =
            settled.map(|m| (m, sizes.clone()));
        sizes
    }

    /// How many device files were read (not only stamped) since start.
    pub fn files_read(&self) -> u64 {
        self.files_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every live device's size in `dir`: Docker's bookkeeping files and
    /// its (and Roomy's) dot-prefixed temp files are not devices. A file
    /// whose stamp is the one last read is not read again.
    fn read_sizes(&self, dir: &Path) -> Sizes {
        let mut kept = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::with_capacity(kept.len());
        let now = SystemTime::now();
        let mut sizes = Sizes::default();
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(file) = entry.file_name().into_string() else {
                continue;
            };
            if file.starts_with('.')
                || file == "transaction-metadata"
                || file == "deviceset-metadata"
            {
                continue;
            }
            // statx relative to the directory (std's DirEntry::metadata).
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let stamp = FileStamp::of(&meta);
            let size = match kept.remove(&file) {
                Some((seen, size)) if seen == stamp => size,
                _ => {
                    self.files_read
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    read_size(&entry.path())
                }
            };
            // Timestamps come from a coarse clock: a stamp is kept only
            // once no later rewrite can share it (as the directory's).
            if settled(changed_at(&meta), now) {
                next.insert(file.clone(), (stamp, size));
            }
            if let Some(size) = size {
                sizes.sum = sizes.sum.saturating_add(size);
                sizes.by_device.insert(file, size);
            }
        }
        *kept = next;
        sizes
    }
}

/// Whether something last changed at `at` is older than [`SETTLED`] at
/// `now`: no later change can share its timestamp.
fn settled(at: SystemTime, now: SystemTime) -> bool {
    now.duration_since(at).is_ok_and(|age| age > SETTLED)
}

/// When a file last changed: its ctime (a rename or a write moves it).
fn changed_at(meta: &fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    std::time::UNIX_EPOCH
        + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().max(0) as u32)
}

/// One device file's size; `None` when it is unreadable, not understood,
/// or marked deleted (not a live device).
fn read_size(path: &Path) -> Option<u64> {
    let record = DeviceRecord::parse(&fs::read(path).ok()?).ok()?;
    match (record.deleted(), record.size()) {
        (false, Ok(size)) => Some(size),
        _ => None,
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

    /// Once the directory changed, only the device files whose stamp moved
    /// (or that were too recent to keep) are read again.
    #[test]
    fn only_files_that_changed_are_read_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("devicemapper/metadata");
        fs::create_dir_all(&dir).unwrap();
        for name in ["a", "b", "c"] {
            fs::write(dir.join(name), DOCKER).unwrap();
        }
        let settle = || std::thread::sleep(SETTLED + Duration::from_millis(100));
        settle();
        let p = Provisioned::default();
        assert_eq!(p.sizes(root.path()).sum, 3 * (2 << 30));
        assert_eq!(p.files_read(), 3);
        // A new device: only it is read.
        fs::write(dir.join("d"), DOCKER).unwrap();
        assert_eq!(p.sizes(root.path()).sum, 4 * (2 << 30));
        assert_eq!(p.files_read(), 4);
        // b rewritten as Docker and Roomy do it: b is read, and d again
        // (read too soon after it was written to be kept); a and c not.
        DeviceMetadata::new(root.path(), "b")
            .set_size(1 << 30)
            .unwrap();
        assert_eq!(p.sizes(root.path()).sum, 3 * (2 << 30) + (1 << 30));
        assert_eq!(p.files_read(), 6);
        settle();
        assert_eq!(p.sizes(root.path()).sum, 3 * (2 << 30) + (1 << 30));
        assert_eq!(p.files_read(), 8, "b and d once more, now settled");
        // A device gone: nothing is read, the sum drops.
        fs::remove_file(dir.join("a")).unwrap();
        assert_eq!(p.sizes(root.path()).sum, 2 * (2 << 30) + (1 << 30));
        assert_eq!(p.files_read(), 8);
        assert!(!p.sizes(root.path()).by_device.contains_key("a"));
    }

    /// The sum is read again when a device comes, goes or is rewritten
    /// (each moves the directory's mtime), and not otherwise once that
    /// mtime has settled.
    #[test]
    fn provisioned_bytes_are_reread_when_the_directory_changes() {
        let (root, meta) = fixture();
        let dir = root.path().join("devicemapper/metadata");
        fs::write(dir.join("deviceset-metadata"), r#"{"size":999}"#).unwrap();
        fs::write(dir.join(".tmp123"), DOCKER).unwrap();
        fs::write(
            dir.join("gone"),
            r#"{"device_id":5,"size":7,"deleted":true}"#,
        )
        .unwrap();
        let settle = || {
            let past = nix::sys::time::TimeSpec::new(1_600_000_000, 0);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &dir,
                &past,
                &past,
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )
            .unwrap();
        };
        let p = Provisioned::default();
        settle();
        assert_eq!(
            p.sizes(root.path()).sum,
            2 << 30,
            "one live device of 2 GiB"
        );
        let by_device = &p.sizes(root.path()).by_device;
        assert_eq!(by_device.len(), 1, "{by_device:?}");
        assert_eq!(by_device["abc"], 2 << 30);

        // Changed in place, the directory as it was: the settled sum holds
        // (this is the read the cache saves).
        fs::write(meta.path(), DOCKER.replace("2147483648", "1")).unwrap();
        settle();
        assert_eq!(p.sizes(root.path()).sum, 2 << 30);

        // A rewrite as Docker and Roomy do it (rename over) is seen.
        meta.set_size(3 << 30).unwrap();
        assert_eq!(p.sizes(root.path()).sum, 3 << 30);
        // Its mtime is recent: not kept, read again each time until settled.
        fs::write(dir.join("new"), DOCKER).unwrap();
        assert_eq!(p.sizes(root.path()).sum, (3 << 30) + (2 << 30));
        fs::remove_file(dir.join("new")).unwrap();
        settle();
        assert_eq!(p.sizes(root.path()).sum, 3 << 30, "a device gone");
    }
}
