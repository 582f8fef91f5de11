//! The kernel doors every backend shares: device-mapper ioctls (`dm`),
//! filesystems (`fs`: superblocks, mountinfo, statvfs, grow ioctls), XFS
//! project quotas (`quota`), loop devices (`loopdev`), LVM's tools
//! (`lvm`), crash-safe file rewrites (`atomic`), and the host's write
//! counters (`vmstat`).
//! Backends reach the kernel only through these.

pub mod atomic;
pub mod dm;
pub mod fs;
pub mod loopdev;
pub mod lvm;
pub mod quota;
pub mod vmstat;
