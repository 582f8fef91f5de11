//! Loop devices: which file backs one (sysfs), growing that file sparsely
//! and telling the device (LOOP_SET_CAPACITY). Docker's loop-lvm pool and
//! an XFS filesystem on a loop file grow the same way.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use devicemapper::Device;

use crate::error::AgentError;

/// A loop device and the file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopBacking {
    /// `/dev/loopN`.
    pub node: PathBuf,
    /// The backing file.
    pub file: PathBuf,
}

/// What backs a pool's data or metadata device.
pub fn loop_backing(dev: Device) -> Option<LoopBacking> {
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", dev.major, dev.minor));
    let file = std::fs::read_to_string(sys.join("loop/backing_file")).ok()?;
    let uevent = std::fs::read_to_string(sys.join("uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    Some(LoopBacking {
        node: PathBuf::from("/dev").join(name),
        file: PathBuf::from(file.trim_end()),
    })
}

/// LOOP_SET_CAPACITY from linux/loop.h.
#[allow(missing_docs)]
mod ioctl {
    nix::ioctl_none!(loop_set_capacity, 0x4C, 0x07);
}
use ioctl::loop_set_capacity;

/// Make the loop device re-read its file's size.
pub fn set_capacity(node: &Path) -> Result<(), AgentError> {
    let dev = File::open(node).map_err(|e| AgentError::io("open", node, e))?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument; the fd is a loop device.
    unsafe { loop_set_capacity(dev.as_raw_fd()) }
        .map_err(|e| AgentError::io("LOOP_SET_CAPACITY", node, e.into()))?;
    Ok(())
}

/// Free bytes of the filesystem holding `file`.
pub fn free_under(file: &Path) -> Result<u64, AgentError> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let st =
        nix::sys::statvfs::statvfs(dir).map_err(|e| AgentError::io("statvfs", dir, e.into()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Extend `file` to `target` bytes, sparsely (space is taken as it fills,
/// as Docker makes its loop files), and fsync; a no-op when it is that long.
pub fn extend_file(path: &Path, target: u64) -> Result<(), AgentError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| AgentError::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| AgentError::io("stat", path, e))?
        .len();
    if len < target {
        file.set_len(target)
            .map_err(|e| AgentError::io("extend", path, e))?;
        file.sync_all()
            .map_err(|e| AgentError::io("fsync", path, e))?;
    }
    Ok(())
}
