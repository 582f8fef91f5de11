//! The kernel doors every backend shares: device-mapper ioctls (`dm`),
//! filesystems (`fs`: superblocks, mountinfo, statvfs, grow ioctls), XFS
//! project quotas (`quota`), loop devices (`loopdev`), LVM's tools
//! (`lvm`), and crash-safe file rewrites (`atomic`).
//! Backends reach the kernel only through these.

pub mod atomic;
pub mod dm;
pub mod fs;
pub mod loopdev;
pub mod lvm;
pub mod quota;
