//! XFS project quotas: the door overlay2's disk limits go through (moby's
//! `quota/projectquota.go` sets them the same way, DESIGN.md F12).
//!
//! A directory's project id is read with `FS_IOC_FSGETXATTR`; a project's
//! limit and use with `Q_XGETQUOTA`, its limit set with `Q_XSETQLIM`, and
//! whether the filesystem accounts and enforces project quotas with
//! `Q_XGETQSTATV`. Every call goes through `quotactl_fd(2)` (Linux 5.14+)
//! on a directory of the filesystem, so no block device node is needed
//! (Docker mknods `backingFsBlockDev` for `quotactl(2)`); older kernels get
//! `quotactl(2)` on a node made in the agent's state directory.
//!
//! XFS counts limits and use in 512-byte basic blocks.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// Bytes in an XFS quota basic block.
pub const BASIC_BLOCK: u64 = 512;

const XQM_CMD_BASE: i32 = (b'X' as i32) << 8;
const Q_XGETQUOTA: i32 = XQM_CMD_BASE + 3;
const Q_XSETQLIM: i32 = XQM_CMD_BASE + 4;
const Q_XGETQSTATV: i32 = XQM_CMD_BASE + 8;
const PRJQUOTA: i32 = 2;
const FS_DQUOT_VERSION: i8 = 1;
const FS_PROJ_QUOTA: i8 = 2;
const FS_DQ_BSOFT: u16 = 1 << 2;
const FS_DQ_BHARD: u16 = 1 << 3;
const FS_QSTATV_VERSION1: i8 = 1;
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;

/// `QCMD(cmd, type)` from `<sys/quota.h>`.
const fn qcmd(cmd: i32, kind: i32) -> i32 {
    (cmd << 8) | (kind & 0xff)
}

/// `struct fs_disk_quota` (`<linux/dqblk_xfs.h>`), 112 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FsDiskQuota {
    d_version: i8,
    d_flags: i8,
    d_fieldmask: u16,
    d_id: u32,
    d_blk_hardlimit: u64,
    d_blk_softlimit: u64,
    d_ino_hardlimit: u64,
    d_ino_softlimit: u64,
    d_bcount: u64,
    d_icount: u64,
    d_itimer: i32,
    d_btimer: i32,
    d_iwarns: u16,
    d_bwarns: u16,
    d_itimer_hi: i8,
    d_btimer_hi: i8,
    d_rtbtimer_hi: i8,
    d_padding2: i8,
    d_rtb_hardlimit: u64,
    d_rtb_softlimit: u64,
    d_rtbcount: u64,
    d_rtbtimer: i32,
    d_rtbwarns: u16,
    d_padding3: i16,
    d_padding4: [u8; 8],
}

/// `struct fsxattr` (`<linux/fs.h>`), 28 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FsXattr {
    fsx_xflags: u32,
    fsx_extsize: u32,
    fsx_nextents: u32,
    fsx_projid: u32,
    fsx_cowextsize: u32,
    fsx_pad: [u8; 8],
}

/// `FS_XFLAG_PROJINHERIT`: new files in the directory take its project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

/// Size of `struct fs_quota_statv`; only its version (in) and flags (out,
/// at byte 2) are used.
const FS_QUOTA_STATV_SIZE: usize = 160;

/// `FS_IOC_FSGETXATTR` from `<linux/fs.h>`.
#[allow(missing_docs)]
mod ioctl {
    use super::FsXattr;
    nix::ioctl_read!(fs_ioc_fsgetxattr, b'X', 31, FsXattr);
}
use ioctl::fs_ioc_fsgetxattr;

/// A directory's XFS project and whether it passes it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Project {
    /// The project id (0: none).
    pub id: u32,
    /// Whether new files under the directory join the project.
    pub inherit: bool,
}

/// One project's quota: limits and use, in bytes and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectQuota {
    /// Hard block limit in bytes; 0 when there is none.
    pub hard_bytes: u64,
    /// Soft block limit in bytes; 0 when there is none.
    pub soft_bytes: u64,
    /// Bytes the project's files use.
    pub used_bytes: u64,
    /// Inodes the project's files use.
    pub used_inodes: u64,
    /// Hard inode limit; 0 when there is none.
    pub inode_limit: u64,
}

/// How a filesystem treats project quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// Use is counted (mounted with `prjquota` or `pqnoenforce`).
    pub accounting: bool,
    /// Limits are enforced (`prjquota`).
    pub enforcing: bool,
}

/// The project of the directory `dir`.
pub fn project_of(dir: &Path) -> Result<Project, AgentError> {
    let file = File::open(dir).map_err(|e| AgentError::io("open", dir, e))?;
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR fills a `struct fsxattr`, which `attr` is.
    unsafe { fs_ioc_fsgetxattr(file.as_raw_fd(), &mut attr) }.map_err(|e| AgentError::Quota {
        op: "read project id (FS_IOC_FSGETXATTR)",
        path: dir.display().to_string(),
        detail: e.to_string(),
    })?;
    Ok(Project {
        id: attr.fsx_projid,
        inherit: attr.fsx_xflags & FS_XFLAG_PROJINHERIT != 0,
    })
}

/// The quota door of one filesystem, reached through a directory on it.
#[derive(Debug)]
pub struct QuotaFs {
    dir: File,
    path: PathBuf,
    /// For kernels without `quotactl_fd`: a block device node of the
    /// filesystem, made on first use.
    node: std::sync::Mutex<Option<CString>>,
    node_dir: PathBuf,
}

impl QuotaFs {
    /// Open the filesystem holding `dir`. `node_dir` is where a device node
    /// is made if the kernel lacks `quotactl_fd` (the agent's state dir).
    pub fn open(dir: &Path, node_dir: &Path) -> Result<Self, AgentError> {
        let file = File::open(dir).map_err(|e| AgentError::io("open", dir, e))?;
        Ok(QuotaFs {
            dir: file,
            path: dir.to_path_buf(),
            node: std::sync::Mutex::new(None),
            node_dir: node_dir.to_path_buf(),
        })
    }

    /// The directory this door was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether project quotas are counted and enforced here.
    pub fn state(&self) -> Result<QuotaState, AgentError> {
        let mut buf = [0u8; FS_QUOTA_STATV_SIZE];
        buf[0] = FS_QSTATV_VERSION1 as u8;
        self.quotactl("read quota state (Q_XGETQSTATV)", Q_XGETQSTATV, 0, &mut buf)?;
        let flags = u16::from_ne_bytes([buf[2], buf[3]]);
        Ok(QuotaState {
            accounting: flags & FS_QUOTA_PDQ_ACCT != 0,
            enforcing: flags & FS_QUOTA_PDQ_ENFD != 0,
        })
    }

    /// Project `id`'s limits and use.
    pub fn get(&self, id: u32) -> Result<ProjectQuota, AgentError> {
        let mut q = FsDiskQuota::default();
        self.quotactl(
            "read project quota (Q_XGETQUOTA)",
            Q_XGETQUOTA,
            id,
            bytes_of_mut(&mut q),
        )?;
        Ok(ProjectQuota {
            hard_bytes: q.d_blk_hardlimit * BASIC_BLOCK,
            soft_bytes: q.d_blk_softlimit * BASIC_BLOCK,
            used_bytes: q.d_bcount * BASIC_BLOCK,
            used_inodes: q.d_icount,
            inode_limit: q.d_ino_hardlimit,
        })
    }

    /// Set project `id`'s block limit, hard = soft = `bytes`, as Docker
    /// does at create. Inode limits are left as they are. XFS keeps the
    /// limit on disk: it lasts across remounts and daemon restarts.
    pub fn set_limit(&self, id: u32, bytes: u64) -> Result<(), AgentError> {
        if !bytes.is_multiple_of(BASIC_BLOCK) {
            return Err(AgentError::InvalidSize(format!(
                "{bytes} bytes is not a whole number of 512-byte blocks"
            )));
        }
        let blocks = bytes / BASIC_BLOCK;
        let mut q = FsDiskQuota {
            d_version: FS_DQUOT_VERSION,
            d_flags: FS_PROJ_QUOTA,
            d_fieldmask: FS_DQ_BSOFT | FS_DQ_BHARD,
            d_id: id,
            d_blk_hardlimit: blocks,
            d_blk_softlimit: blocks,
            ..Default::default()
        };
        self.quotactl(
            "set project quota (Q_XSETQLIM)",
            Q_XSETQLIM,
            id,
            bytes_of_mut(&mut q),
        )
    }

    fn quotactl(
        &self,
        op: &'static str,
        cmd: i32,
        id: u32,
        buf: &mut [u8],
    ) -> Result<(), AgentError> {
        let cmd = qcmd(cmd, PRJQUOTA);
        // SAFETY: quotactl_fd(fd, cmd, id, addr): `buf` is as large as the
        // structure `cmd` reads or writes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_quotactl_fd,
                self.dir.as_raw_fd(),
                cmd as libc::c_uint,
                id as libc::c_int,
                buf.as_mut_ptr(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(self.error(op, err));
        }
        let node = self.node()?;
        // SAFETY: as above, with a block device node instead of an fd.
        let rc = unsafe {
            libc::quotactl(
                cmd,
                node.as_ptr(),
                id as libc::c_int,
                buf.as_mut_ptr().cast(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(self.error(op, std::io::Error::last_os_error()))
        }
    }

    fn error(&self, op: &'static str, err: std::io::Error) -> AgentError {
        let hint = match err.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOSYS) | Some(libc::ENOTTY) => {
                ": project quotas are off here; mount the filesystem with -o prjquota"
            }
            Some(libc::EPERM) => ": the agent needs CAP_SYS_ADMIN (run it as root)",
            _ => "",
        };
        AgentError::Quota {
            op,
            path: self.path.display().to_string(),
            detail: format!("{err}{hint}"),
        }
    }

    /// A block device node for the filesystem, as Docker's
    /// `backingFsBlockDev`: made once, checked to be the right device.
    fn node(&self) -> Result<CString, AgentError> {
        use nix::sys::stat::{mknod, Mode, SFlag};
        let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = node.as_ref() {
            return Ok(node.clone());
        }
        let dev = self
            .dir
            .metadata()
            .map_err(|e| AgentError::io("stat", &self.path, e))?
            .dev();
        let path = self.node_dir.join("backing-fs-block-dev");
        let _ = std::fs::remove_file(&path);
        mknod(&path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), dev).map_err(|e| {
            AgentError::Quota {
                op: "make a device node",
                path: path.display().to_string(),
                detail: e.to_string(),
            }
        })?;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        *node = Some(c.clone());
        Ok(c)
    }
}

/// The bytes of a plain `repr(C)` struct of integers, for the kernel.
fn bytes_of_mut(q: &mut FsDiskQuota) -> &mut [u8] {
    // SAFETY: FsDiskQuota is repr(C), made of integers only (every bit
    // pattern is valid), and the slice covers exactly it.
    unsafe {
        std::slice::from_raw_parts_mut(
            (q as *mut FsDiskQuota).cast::<u8>(),
            std::mem::size_of::<FsDiskQuota>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<FsDiskQuota>(), 112);
        assert_eq!(std::mem::offset_of!(FsDiskQuota, d_blk_hardlimit), 8);
        assert_eq!(std::mem::offset_of!(FsDiskQuota, d_bcount), 40);
        assert_eq!(std::mem::offset_of!(FsDiskQuota, d_rtb_hardlimit), 72);
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::offset_of!(FsXattr, fsx_projid), 12);
        // _IOR('X', 31, struct fsxattr), as <linux/fs.h> spells it.
        assert_eq!(
            nix::request_code_read!(b'X', 31, std::mem::size_of::<FsXattr>()),
            0x801c_581f
        );
        assert_eq!(qcmd(Q_XGETQUOTA, PRJQUOTA), 0x0058_0302);
        assert_eq!(qcmd(Q_XSETQLIM, PRJQUOTA), 0x0058_0402);
    }

    #[test]
    fn a_limit_must_be_whole_basic_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fs = QuotaFs::open(dir.path(), dir.path()).unwrap();
        assert!(matches!(
            fs.set_limit(3, 1000),
            Err(AgentError::InvalidSize(_))
        ));
    }
}
