//! The formats roomy-agent reads from disks, the kernel and Docker, as pure
//! functions over bytes and text. Nothing here does I/O: the agent's `sys/`
//! doors read the bytes and hand them over. Kept apart so that `fuzz/` can
//! run them millions of times without building the agent (tokio, tonic,
//! libdevmapper), and so that what a hostile or corrupt input can do to the
//! agent is decided here, in one small crate.
//!
//! - [`superblock`]: XFS and ext4 superblocks (a stopped container's size).
//! - [`mountinfo`]: `/proc/self/mountinfo` lines (where a device is mounted,
//!   what holds a path, what an earlier agent left mounted).
//! - [`docker_metadata`]: Docker's devicemapper per-device metadata JSON,
//!   read and rewritten with every field but `size` kept as it was.

pub mod docker_metadata;
pub mod mountinfo;
pub mod superblock;
