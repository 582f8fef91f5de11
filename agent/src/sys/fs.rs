//! Filesystems on thin devices: what size they are (superblock or live
//! geometry), where they are mounted, how full they are, and growing them
//! online with the kernel's own ioctls (the ones `xfs_growfs` and
//! `resize2fs` use), through a private mount when the container is stopped.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use devicemapper::Device;

use crate::error::AgentError;

/// A filesystem Roomy can grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// XFS: grows only while mounted (XFS_IOC_FSGROWFSDATA).
    Xfs,
    /// ext4: grown online while mounted (EXT4_IOC_RESIZE_FS).
    Ext4,
}

impl FsKind {
    /// `xfs` / `ext4`, as mount(8) and Docker's `dm.fs` spell them.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Xfs => "xfs",
            FsKind::Ext4 => "ext4",
        }
    }
}

/// What a superblock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Which filesystem.
    pub kind: FsKind,
    /// Filesystem block size in bytes.
    pub block_size: u64,
    /// Blocks in the filesystem.
    pub blocks: u64,
}

impl Superblock {
    /// Size of the filesystem in bytes: what the device must at least hold.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size
    }

    /// Parse the first 4 KiB of a device. `None` when neither XFS nor ext4.
    pub fn parse(head: &[u8]) -> Option<Superblock> {
        let be32 = |at: usize| {
            head.get(at..at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        };
        let be64 = |at: usize| {
            head.get(at..at + 8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        };
        let le32 = |at: usize| {
            head.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        let le16 = |at: usize| {
            head.get(at..at + 2)
                .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
        };

        // XFS: "XFSB", sb_blocksize (be32 @4), sb_dblocks (be64 @8).
        if head.get(0..4) == Some(b"XFSB") {
            return Some(Superblock {
                kind: FsKind::Xfs,
                block_size: u64::from(be32(4)?),
                blocks: be64(8)?,
            });
        }
        // ext2/3/4 superblock at 1024: s_magic 0xEF53 @0x38,
        // s_blocks_count_lo @0x04, s_log_block_size @0x18,
        // s_blocks_count_hi @0x150 when INCOMPAT_64BIT (0x80) is set.
        const SB: usize = 1024;
        if le16(SB + 0x38)? == 0xEF53 {
            let log = le32(SB + 0x18)?;
            if log > 6 {
                return None;
            }
            let lo = u64::from(le32(SB + 0x04)?);
            let incompat = le32(SB + 0x60)?;
            let hi = if incompat & 0x80 != 0 {
                u64::from(le32(SB + 0x150)?)
            } else {
                0
            };
            return Some(Superblock {
                kind: FsKind::Ext4,
                block_size: 1024 << log,
                blocks: (hi << 32) | lo,
            });
        }
        None
    }
}

/// A block device node for a dm device: `/dev/dm-N` when it is there and
/// really is that device, else one of our own under `/dev/.roomy`. udev may
/// still be removing the node of an earlier device with the same minor (seen
/// in the VM tier), so `/dev/dm-N` alone is not to be trusted.
pub fn dev_node(dev: Device) -> PathBuf {
    let standard = PathBuf::from(format!("/dev/dm-{}", dev.minor));
    if is_node_of(&standard, dev) {
        return standard;
    }
    let private = PathBuf::from(format!("/dev/.roomy/{}:{}", dev.major, dev.minor));
    if !is_node_of(&private, dev) {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        let _ = std::fs::create_dir_all("/dev/.roomy");
        let _ = std::fs::remove_file(&private);
        let _ = mknod(
            &private,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o600),
            makedev(dev.major.into(), dev.minor.into()),
        );
    }
    private
}

/// Whether `path` is a block device node for `dev`.
fn is_node_of(path: &Path, dev: Device) -> bool {
    is_block_node(
        path,
        nix::sys::stat::makedev(dev.major.into(), dev.minor.into()),
    )
}

/// Whether `path` (a symlink is followed, as udev's `/dev/mapper` links
/// are) is a block device whose number is `rdev`.
pub(crate) fn is_block_node(path: &Path, rdev: u64) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == rdev)
}

/// Read the superblock of a device. `direct` bypasses the page cache, for
/// devices no filesystem has mounted (their cache may be stale); a mounted
/// ext4 keeps its superblock in the block device's cache, so read it
/// buffered.
pub fn read_superblock(node: &Path, direct: bool) -> Result<Option<Superblock>, AgentError> {
    let device = node.display().to_string();
    let mut options = OpenOptions::new();
    options.read(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let mut file = options
        .open(node)
        .map_err(|e| AgentError::fs(&device, format!("open: {e}")))?;
    let mut buf = AlignedBuf::new();
    file.read_exact(buf.bytes_mut())
        .map_err(|e| AgentError::fs(&device, format!("read superblock: {e}")))?;
    Ok(Superblock::parse(buf.bytes_mut()))
}

/// 4 KiB aligned to 4 KiB, as O_DIRECT wants.
#[repr(C, align(4096))]
struct AlignedBuf([u8; 4096]);

impl AlignedBuf {
    fn new() -> Box<Self> {
        Box::new(AlignedBuf([0; 4096]))
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// Where a device is mounted in this mount namespace, if it is.
pub fn mountpoint_of(dev: Device) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_mount(&text, dev)
}

/// Find `dev` in mountinfo text (first match).
pub fn find_mount(mountinfo: &str, dev: Device) -> Option<PathBuf> {
    let want = format!("{}:{}", dev.major, dev.minor);
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let devno = fields.nth(2)?;
        let _root = fields.next()?;
        let point = fields.next()?;
        (devno == want).then(|| PathBuf::from(unescape_mountinfo(point)))
    })
}

/// Mount points at or under `dir` in mountinfo text, deepest first (the
/// order they must be unmounted in).
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(parse_mountinfo_line)
        .map(|m| m.point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts whatever an earlier agent, killed between its private mount and
/// the unmount, left under its scratch directory `dir` (a forgotten mount
/// keeps the thin device open, so Docker could not remove it), and removes
/// the empty mount points. Returns one line per mount, for the log.
pub fn sweep_scratch(dir: &Path) -> Vec<String> {
    use nix::mount::{umount2, MntFlags};
    let mut report = Vec::new();
    let text = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(t) => t,
        Err(e) => {
            return vec![format!(
                "cannot read /proc/self/mountinfo to sweep {}: {e}",
                dir.display()
            )]
        }
    };
    for point in mounts_under(&text, dir) {
        // A plain unmount first: nothing but a dead agent used it. Detach if
        // something still holds it, so the device is free once they let go.
        let line = match umount2(&point, MntFlags::empty()) {
            Ok(()) => format!("unmounted {}, left by an agent killed while growing a stopped container", point.display()),
            Err(busy) => match umount2(&point, MntFlags::MNT_DETACH) {
                Ok(()) => format!("detached {} ({busy} on a plain unmount), left by an agent killed while growing a stopped container", point.display()),
                Err(e) => format!("cannot unmount {}: {e}; unmount it by hand before removing the container it belongs to", point.display()),
            },
        };
        report.push(line);
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            // Only empty directories go: remove_dir refuses anything else.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
    report
}

/// One line of mountinfo, the fields Roomy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the filesystem.
    pub devno: String,
    /// Where it is mounted.
    pub point: PathBuf,
    /// Filesystem type, e.g. `xfs`.
    pub fstype: String,
    /// What was mounted (a device path, for block filesystems).
    pub source: String,
    /// The filesystem's own options, e.g. `rw,attr2,inode64,prjquota`.
    pub super_options: String,
}

/// Parse one mountinfo line (`proc(5)`): `ID PARENT MAJ:MIN ROOT POINT
/// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
pub fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (head, tail) = line.split_once(" - ")?;
    let mut head = head.split(' ');
    let devno = head.nth(2)?.to_string();
    let _root = head.next()?;
    let point = PathBuf::from(unescape_mountinfo(head.next()?));
    let mut tail = tail.split(' ');
    Some(MountEntry {
        devno,
        point,
        fstype: tail.next()?.to_string(),
        source: unescape_mountinfo(tail.next()?),
        super_options: tail.next().unwrap_or("").to_string(),
    })
}

/// The mount that holds `path`: the one of its device (st_dev) whose mount
/// point is the longest prefix of it.
pub fn mount_of(path: &Path) -> Result<MountEntry, AgentError> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path)
        .map_err(|e| AgentError::io("stat", path, e))?
        .dev();
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| AgentError::io("read", "/proc/self/mountinfo", e))?;
    let want = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    find_mount_of(&text, &want, path).ok_or_else(|| {
        AgentError::Internal(format!(
            "{} (device {want}) is on no mount in /proc/self/mountinfo",
            path.display()
        ))
    })
}

/// `mount_of` on mountinfo text.
pub fn find_mount_of(mountinfo: &str, devno: &str, path: &Path) -> Option<MountEntry> {
    mountinfo
        .lines()
        .filter_map(parse_mountinfo_line)
        .filter(|m| m.devno == devno && path.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Space and inodes of a mounted filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes in the filesystem as df shows them.
    pub total: u64,
    /// Bytes used.
    pub used: u64,
    /// Bytes available to unprivileged writers.
    pub avail: u64,
    /// Inodes in total.
    pub inodes_total: u64,
    /// Inodes used.
    pub inodes_used: u64,
}

/// statvfs of a mount point.
pub fn usage(mountpoint: &Path) -> Result<Usage, AgentError> {
    let st = nix::sys::statvfs::statvfs(mountpoint)
        .map_err(|e| AgentError::fs(&mountpoint.display().to_string(), format!("statvfs: {e}")))?;
    let frsize = st.fragment_size() as u64;
    let total = st.blocks() as u64 * frsize;
    let free = st.blocks_free() as u64 * frsize;
    Ok(Usage {
        total,
        used: total.saturating_sub(free),
        avail: st.blocks_available() as u64 * frsize,
        inodes_total: st.files() as u64,
        inodes_used: (st.files() as u64).saturating_sub(st.files_free() as u64),
    })
}

/// struct xfs_fsop_geom_v1 (xfs_fs.h): stable since Linux 2.6.
#[repr(C)]
#[derive(Default)]
struct XfsGeomV1 {
    blocksize: u32,
    rtextsize: u32,
    agblocks: u32,
    agcount: u32,
    logblocks: u32,
    sectsize: u32,
    inodesize: u32,
    imaxpct: u32,
    datablocks: u64,
    rtblocks: u64,
    rtextents: u64,
    logstart: u64,
    uuid: [u8; 16],
    sunit: u32,
    swidth: u32,
    version: i32,
    flags: u32,
    logsectsize: u32,
    rtsectsize: u32,
    dirblocksize: u32,
}

/// struct xfs_growfs_data (xfs_fs.h).
#[repr(C)]
struct XfsGrowfsData {
    newblocks: u64,
    imaxpct: u32,
}

/// ioctl numbers from xfs_fs.h and ext4.h.
#[allow(missing_docs)]
mod ioctl {
    use super::{XfsGeomV1, XfsGrowfsData};
    nix::ioctl_read!(xfs_fsgeometry_v1, b'X', 100, XfsGeomV1);
    nix::ioctl_write_ptr!(xfs_growfs_data, b'X', 110, XfsGrowfsData);
    nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);
}
use ioctl::{ext4_resize_fs, xfs_fsgeometry_v1, xfs_growfs_data};

fn xfs_geometry(mount: &File) -> nix::Result<XfsGeomV1> {
    let mut geom = XfsGeomV1::default();
    // SAFETY: the fd is an open directory on an XFS mount and `geom` is a
    // properly sized xfs_fsop_geom_v1 the kernel fills in.
    unsafe { xfs_fsgeometry_v1(mount.as_raw_fd(), &mut geom) }?;
    Ok(geom)
}

/// Size in bytes of the mounted filesystem at `mountpoint`, read from the
/// live filesystem (XFS geometry) or its superblock in the block device's
/// cache (ext4), both current even before the log is checkpointed.
pub fn mounted_size(kind: FsKind, mountpoint: &Path, node: &Path) -> Result<u64, AgentError> {
    let device = mountpoint.display().to_string();
    match kind {
        FsKind::Xfs => {
            let dir = File::open(mountpoint)
                .map_err(|e| AgentError::fs(&device, format!("open: {e}")))?;
            let geom = xfs_geometry(&dir)
                .map_err(|e| AgentError::fs(&device, format!("XFS geometry: {e}")))?;
            Ok(geom.datablocks * u64::from(geom.blocksize))
        }
        FsKind::Ext4 => read_superblock(node, false)?
            .map(|sb| sb.bytes())
            .ok_or_else(|| AgentError::fs(&device, "no ext4 superblock")),
    }
}

/// Grow the filesystem mounted at `mountpoint` to fill `device_bytes`.
/// Idempotent: a filesystem that already fills the device is left alone.
/// Returns the filesystem's size afterwards.
pub fn grow_mounted(
    kind: FsKind,
    mountpoint: &Path,
    node: &Path,
    device_bytes: u64,
) -> Result<u64, AgentError> {
    let device = mountpoint.display().to_string();
    let dir = File::open(mountpoint).map_err(|e| AgentError::fs(&device, format!("open: {e}")))?;
    match kind {
        FsKind::Xfs => {
            let geom = xfs_geometry(&dir)
                .map_err(|e| AgentError::fs(&device, format!("XFS geometry: {e}")))?;
            let block = u64::from(geom.blocksize);
            let newblocks = device_bytes / block;
            if newblocks > geom.datablocks {
                let arg = XfsGrowfsData {
                    newblocks,
                    imaxpct: geom.imaxpct,
                };
                // SAFETY: valid fd on the XFS mount and a valid argument.
                unsafe { xfs_growfs_data(dir.as_raw_fd(), &arg) }.map_err(|e| {
                    AgentError::fs(&device, format!("XFS grow to {newblocks} blocks: {e}"))
                })?;
            }
            mounted_size(kind, mountpoint, node)
        }
        FsKind::Ext4 => {
            let sb = read_superblock(node, false)?
                .ok_or_else(|| AgentError::fs(&device, "no ext4 superblock"))?;
            let newblocks = device_bytes / sb.block_size;
            if newblocks > sb.blocks {
                // SAFETY: valid fd on the ext4 mount; the kernel reads one u64.
                unsafe { ext4_resize_fs(dir.as_raw_fd(), &newblocks) }.map_err(|e| {
                    AgentError::fs(&device, format!("ext4 resize to {newblocks} blocks: {e}"))
                })?;
            }
            mounted_size(kind, mountpoint, node)
        }
    }
}

/// Grow an unmounted filesystem: mount it privately at `scratch`, grow,
/// unmount. XFS only grows while mounted; ext4 is treated the same way so
/// both take one path. Returns the filesystem's size afterwards.
pub fn grow_unmounted(
    kind: FsKind,
    node: &Path,
    scratch: &Path,
    device_bytes: u64,
) -> Result<u64, AgentError> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let device = node.display().to_string();
    std::fs::create_dir_all(scratch)
        .map_err(|e| AgentError::io("create mount point", scratch, e))?;
    // Docker mounts its thin devices with nouuid: every snapshot of the base
    // device carries the same XFS UUID.
    let options = match kind {
        FsKind::Xfs => Some("nouuid"),
        FsKind::Ext4 => None,
    };
    mount(
        Some(node),
        scratch,
        Some(kind.name()),
        MsFlags::MS_NOATIME,
        options,
    )
    .map_err(|e| AgentError::fs(&device, format!("mount at {}: {e}", scratch.display())))?;
    crate::failpoint::hit("after-mount");
    let grown = grow_mounted(kind, scratch, node, device_bytes);
    crate::failpoint::hit("before-unmount");
    let unmounted = umount2(scratch, MntFlags::empty());
    let size = grown?;
    unmounted
        .map_err(|e| AgentError::fs(&device, format!("unmount {}: {e}", scratch.display())))?;
    let _ = std::fs::remove_dir(scratch);
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_the_scratch_dir_deepest_first() {
        let info = "\
36 25 8:1 / / rw - ext4 /dev/sda1 rw
90 36 253:4 / /var/lib/roomy/mnt/abc rw,noatime - xfs /dev/mapper/docker-8:1-1-abc rw,nouuid
91 90 0:50 / /var/lib/roomy/mnt/abc/proc rw - proc proc rw
92 36 253:5 / /var/lib/roomy/mntx rw - xfs /dev/dm-5 rw
93 36 253:6 / /var/lib/roomy/mnt/a\\040b rw - xfs /dev/dm-6 rw
";
        let got = mounts_under(info, Path::new("/var/lib/roomy/mnt"));
        assert_eq!(
            got,
            [
                PathBuf::from("/var/lib/roomy/mnt/abc/proc"),
                PathBuf::from("/var/lib/roomy/mnt/abc"),
                PathBuf::from("/var/lib/roomy/mnt/a b"),
            ]
        );
    }

    #[test]
    fn finds_the_mount_that_holds_a_path() {
        let text = "\
22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw
90 22 7:3 / /var/lib/docker rw,relatime shared:40 - xfs /dev/loop3 rw,attr2,inode64,logbufs=8,prjquota
91 90 0:52 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw,lowerdir=x
92 22 7:3 / /srv/bind\\040me rw - xfs /dev/loop3 rw,prjquota
";
        let m = find_mount_of(text, "7:3", Path::new("/var/lib/docker/overlay2/abc/diff")).unwrap();
        assert_eq!(m.point, PathBuf::from("/var/lib/docker"));
        assert_eq!(m.fstype, "xfs");
        assert_eq!(m.source, "/dev/loop3");
        assert!(m.super_options.split(',').any(|o| o == "prjquota"));
        let b = find_mount_of(text, "7:3", Path::new("/srv/bind me/x")).unwrap();
        assert_eq!(b.point, PathBuf::from("/srv/bind me"));
        assert_eq!(
            find_mount_of(text, "7:9", Path::new("/var/lib/docker")),
            None
        );
    }

    #[test]
    fn finds_a_device_in_mountinfo_and_unescapes_the_path() {
        let text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    95 22 253:3 / /var/lib/docker/devicemapper/mnt/ab\\040cd rw - xfs /dev/mapper/x rw,nouuid\n";
        assert_eq!(
            find_mount(
                text,
                Device {
                    major: 253,
                    minor: 3
                }
            ),
            Some(PathBuf::from("/var/lib/docker/devicemapper/mnt/ab cd"))
        );
        assert_eq!(
            find_mount(
                text,
                Device {
                    major: 253,
                    minor: 4
                }
            ),
            None
        );
    }

    #[test]
    fn parses_hand_made_superblocks() {
        let mut xfs = vec![0u8; 4096];
        xfs[0..4].copy_from_slice(b"XFSB");
        xfs[4..8].copy_from_slice(&4096u32.to_be_bytes());
        xfs[8..16].copy_from_slice(&524288u64.to_be_bytes());
        let sb = Superblock::parse(&xfs).unwrap();
        assert_eq!((sb.kind, sb.bytes()), (FsKind::Xfs, 2 << 30));

        let mut ext4 = vec![0u8; 4096];
        ext4[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        ext4[1024 + 0x18..1024 + 0x1c].copy_from_slice(&2u32.to_le_bytes());
        ext4[1024 + 0x04..1024 + 0x08].copy_from_slice(&1000u32.to_le_bytes());
        ext4[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        // Without INCOMPAT_64BIT the high word is ignored.
        assert_eq!(Superblock::parse(&ext4).unwrap().bytes(), 1000 * 4096);
        ext4[1024 + 0x60..1024 + 0x64].copy_from_slice(&0x80u32.to_le_bytes());
        assert_eq!(Superblock::parse(&ext4).unwrap().blocks, (1 << 32) | 1000);

        assert_eq!(Superblock::parse(&[0u8; 4096]), None);
        assert_eq!(Superblock::parse(b"XFSB"), None);
    }

    /// Real superblocks from the real mkfs tools, on image files (no root).
    #[test]
    fn reads_superblocks_made_by_mkfs() {
        for (mkfs, args, kind) in [
            ("mkfs.xfs", &["-q", "-f"][..], FsKind::Xfs),
            ("mkfs.ext4", &["-q", "-F"][..], FsKind::Ext4),
        ] {
            let Some(tool) = ["/usr/sbin/", "/sbin/"]
                .iter()
                .map(|d| format!("{d}{mkfs}"))
                .find(|p| Path::new(p).exists())
            else {
                panic!("{mkfs} is missing: run tests/vm/install-deps.sh (xfsprogs, e2fsprogs)");
            };
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("fs.img");
            File::create(&image).unwrap().set_len(512 << 20).unwrap();
            let status = std::process::Command::new(tool)
                .args(args)
                .arg(&image)
                .status()
                .unwrap();
            assert!(status.success(), "{mkfs} failed");
            let sb = read_superblock(&image, false).unwrap().unwrap();
            assert_eq!(sb.kind, kind);
            assert_eq!(sb.bytes(), 512 << 20, "{mkfs}");
        }
    }
}
