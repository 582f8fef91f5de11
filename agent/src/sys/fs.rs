//! Filesystems on thin devices: what size they are (superblock or live
//! geometry), where they are mounted, how full they are, and growing them
//! online with the kernel's own ioctls (the ones `xfs_growfs` and
//! `resize2fs` use), through a private mount when the container is stopped.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devicemapper::Device;
use roomy_formats::mountinfo;

use crate::error::AgentError;

pub use roomy_formats::superblock::{FsKind, Superblock};

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
    let _ = std::fs::create_dir_all("/dev/.roomy");
    let _ = ensure_node_at(&private, dev);
    private
}

/// Whether `path` (a symlink is followed) is a block device node for `dev`.
fn is_node_of(path: &Path, dev: Device) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::metadata(path).is_ok_and(|m| {
        m.file_type().is_block_device()
            && m.rdev() == nix::sys::stat::makedev(dev.major.into(), dev.minor.into())
    })
}

/// What `ensure_node_at` found at a device node's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeFix {
    /// It was there and is that device (udev's link, or a node of ours).
    Present,
    /// Nothing was there (no udev runs): made, as libdevmapper does then.
    Made,
    /// Something else was there: a node or link left from an earlier device
    /// whose minor number is now another device's. Replaced, since Docker
    /// mounts by this path and would otherwise open the wrong disk.
    Replaced,
}

/// Make `path` a node of `dev` unless it already resolves to one (a symlink
/// is followed, as udev's `/dev/mapper` links are). The new node is
/// made beside the path and renamed over it, so a reader never sees the
/// path missing, and udev can still replace it with its link later (udev
/// renames over whatever is there too).
pub(crate) fn ensure_node_at(path: &Path, dev: Device) -> Result<NodeFix, AgentError> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    if is_node_of(path, dev) {
        return Ok(NodeFix::Present);
    }
    let rdev = makedev(dev.major.into(), dev.minor.into());
    let existed = path.symlink_metadata().is_ok();
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.roomy-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    mknod(&tmp, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), rdev)
        .map_err(|e| AgentError::io("mknod", &tmp, e.into()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(AgentError::io("rename a device node to", path, e));
    }
    Ok(if existed {
        NodeFix::Replaced
    } else {
        NodeFix::Made
    })
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

/// The kind of the filesystem mounted at `mountpoint`, from the kernel's
/// mounted superblock (statfs): no read of the device, which under heavy
/// writes queues behind them (XFS keeps its superblock out of the block
/// device's page cache, so a read of a mounted XFS's first block is real
/// I/O: under 20 writers in the VM, `ls` took minutes). `None` for a
/// filesystem Roomy does not grow.
pub fn mounted_kind(mountpoint: &Path) -> Result<Option<FsKind>, AgentError> {
    use nix::sys::statfs::{statfs, FsType};
    const XFS: FsType = FsType(0x5846_5342);
    // ext2, ext3 and ext4 share it, as they share the superblock's magic.
    const EXT4: FsType = FsType(0xef53);
    let st = statfs(mountpoint)
        .map_err(|e| AgentError::fs(&mountpoint.display().to_string(), format!("statfs: {e}")))?;
    Ok(match st.filesystem_type() {
        XFS => Some(FsKind::Xfs),
        EXT4 => Some(FsKind::Ext4),
        _ => None,
    })
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

/// One read of `/proc/self/mountinfo` for the many lookups of a list: with
/// 200 containers mounted, a read per container was 200 reads of 200 lines
/// every refresh. An answer is a hint checked against the mount point's
/// own device, and a device the snapshot misses, or that moved since, is
/// looked up afresh; so a list never takes a stopped container's old mount
/// point for its own.
///
/// The refresh goes further and reuses the table of its last pass
/// ([`Mounts::reuse`]): the kernel formatting 400 mount lines every 2 s was
/// a tenth of the idle agent's CPU under emulation, and the checked hints
/// make an old table as safe as a new one. The first miss of such a pass
/// reads the table again, once, so that a burst of new containers costs one
/// read, not one each.
#[derive(Debug, Default)]
pub struct Mounts {
    points: Mutex<Arc<MountPoints>>,
    /// The table may be older than this list: the first miss re-reads it.
    stale: AtomicBool,
}

/// One mount table, indexed by device (`major:minor`): a lookup per row
/// scanning its 400 lines showed in the profile too.
#[derive(Debug, Default)]
pub struct MountPoints(std::collections::HashMap<String, PathBuf>);

impl MountPoints {
    fn parse(text: &str) -> Self {
        MountPoints(mountinfo::first_points(text))
    }

    fn now() -> Arc<Self> {
        Arc::new(Self::parse(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        ))
    }

    fn get(&self, dev: Device) -> Option<&PathBuf> {
        self.0.get(&format!("{}:{}", dev.major, dev.minor))
    }
}

impl Mounts {
    /// The mount table now (empty if unreadable: every lookup is fresh).
    pub fn read() -> Self {
        Mounts {
            points: Mutex::new(MountPoints::now()),
            stale: AtomicBool::new(false),
        }
    }

    /// A table read for an earlier list ([`points`](Self::points) of its
    /// [`Mounts`]).
    pub fn reuse(points: Arc<MountPoints>) -> Self {
        Mounts {
            points: Mutex::new(points),
            stale: AtomicBool::new(true),
        }
    }

    /// The table as this list has it now, for the next to reuse.
    pub fn points(&self) -> Arc<MountPoints> {
        self.points
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where `dev` is mounted, as [`mountpoint_of`].
    pub fn mountpoint_of(&self, dev: Device) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let want = nix::sys::stat::makedev(dev.major.into(), dev.minor.into());
        let checked = |points: &MountPoints| {
            points
                .get(dev)
                .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.dev() == want))
                .cloned()
        };
        if let Some(p) = checked(&self.points()) {
            return Some(p);
        }
        if self.stale.swap(false, Ordering::Relaxed) {
            let fresh = MountPoints::now();
            *self.points.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
            // Not in the table read just now: not mounted (a stopped
            // container's active device), without a third read.
            fresh.get(dev)?;
            if let Some(p) = checked(&fresh) {
                return Some(p);
            }
        }
        mountpoint_of(dev)
    }
}

/// Find `dev` in mountinfo text (first match).
pub fn find_mount(mountinfo: &str, dev: Device) -> Option<PathBuf> {
    mountinfo::find_device(mountinfo, &format!("{}:{}", dev.major, dev.minor))
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
    for point in mountinfo::mounts_under(&text, dir) {
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

pub use roomy_formats::mountinfo::MountEntry;

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
    mountinfo::holding(&text, &want, path).ok_or_else(|| {
        AgentError::Internal(format!(
            "{} (device {want}) is on no mount in /proc/self/mountinfo",
            path.display()
        ))
    })
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

    /// statfs's kind agrees with the kernel's mount table, for what this
    /// machine has mounted at / and /proc (a kind Roomy does not grow).
    #[test]
    fn the_kind_of_a_mounted_filesystem_comes_from_statfs() {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        // The last mount at / is the one in force.
        let root = table
            .lines()
            .rev()
            .filter_map(roomy_formats::mountinfo::parse_line)
            .find(|m| m.point == Path::new("/"))
            .unwrap();
        let want = match root.fstype.as_str() {
            "xfs" => Some(FsKind::Xfs),
            "ext2" | "ext3" | "ext4" => Some(FsKind::Ext4),
            _ => None,
        };
        assert_eq!(
            mounted_kind(Path::new("/")).unwrap(),
            want,
            "/ is {}",
            root.fstype
        );
        assert_eq!(mounted_kind(Path::new("/proc")).unwrap(), None);
        assert!(mounted_kind(Path::new("/no/such/dir")).is_err());
    }

    /// The device of `/`, and a mount table line saying it is at `point`.
    fn root_device() -> (Device, impl Fn(&str) -> String) {
        use std::os::unix::fs::MetadataExt;
        let raw = std::fs::metadata("/").unwrap().dev();
        let dev = Device {
            major: nix::sys::stat::major(raw) as u32,
            minor: nix::sys::stat::minor(raw) as u32,
        };
        let line =
            move |point: &str| format!("1 0 {}:{} / {point} rw - x x rw\n", dev.major, dev.minor);
        (dev, line)
    }

    #[test]
    fn a_mounts_snapshot_is_checked_against_the_mount_point() {
        let (dev, line) = root_device();
        let table = |text: String, stale: bool| Mounts {
            points: Mutex::new(Arc::new(MountPoints::parse(&text))),
            stale: AtomicBool::new(stale),
        };
        // Right: taken as it is.
        let right = table(line("/"), false);
        assert_eq!(right.mountpoint_of(dev), Some(PathBuf::from("/")));
        // Stale (that path is another filesystem now): looked up afresh.
        let stale = table(line("/proc"), false);
        assert_eq!(stale.mountpoint_of(dev), mountpoint_of(dev));
        assert_ne!(stale.mountpoint_of(dev), Some(PathBuf::from("/proc")));
        // Missing: looked up afresh.
        assert_eq!(Mounts::default().mountpoint_of(dev), mountpoint_of(dev));
    }

    #[test]
    fn a_reused_mount_table_is_read_again_once_at_its_first_miss() {
        let (dev, line) = root_device();
        // Its answers hold: the old table is kept as it is.
        let old = Arc::new(MountPoints::parse(&line("/")));
        let right = Mounts::reuse(old.clone());
        assert_eq!(right.mountpoint_of(dev), Some(PathBuf::from("/")));
        assert!(Arc::ptr_eq(&right.points(), &old), "kept as it was");
        // A miss: the table now, kept for the rest of the list and the next.
        let moved = Mounts::reuse(Arc::new(MountPoints::parse(&line("/proc"))));
        assert_eq!(moved.mountpoint_of(dev), mountpoint_of(dev));
        let now = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(moved.points().0, mountinfo::first_points(&now));
        assert!(!moved.stale.load(Ordering::Relaxed), "read again once only");
        // A device mounted nowhere (a stopped container's, kept active):
        // not in the table read again either, so not mounted.
        let nowhere = Mounts::reuse(old);
        assert_eq!(
            nowhere.mountpoint_of(Device {
                major: 250,
                minor: 99_999
            }),
            None
        );
        assert!(!nowhere.stale.load(Ordering::Relaxed));
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

#[cfg(test)]
mod node_tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn rdev_of(path: &std::path::Path) -> (u64, bool) {
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.rdev(), m.file_type().is_symlink())
    }

    fn dev(major: u32, minor: u32) -> Device {
        Device { major, minor }
    }

    fn make_node(path: &std::path::Path, d: Device) {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(
            path,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o600),
            makedev(d.major.into(), d.minor.into()),
        )
        .expect("mknod (the host tests run as root)");
    }

    // A node left from a device whose minor was reused must not survive:
    // Docker would mount another container's disk through it.
    #[test]
    fn stale_node_with_another_minor_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker-253:0-1-abc");
        make_node(&path, dev(253, 7));
        assert_eq!(
            ensure_node_at(&path, dev(253, 9)).unwrap(),
            NodeFix::Replaced
        );
        let want = nix::sys::stat::makedev(253, 9);
        assert_eq!(rdev_of(&path), (want, false));
        // Only the node itself is left: no temporary beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // udev's link to the right /dev/dm-N is left alone; a link to another
    // device is not.
    #[test]
    fn links_are_followed_and_kept_only_when_right() {
        let dir = tempfile::tempdir().unwrap();
        let right = dir.path().join("dm-9");
        let wrong = dir.path().join("dm-7");
        make_node(&right, dev(253, 9));
        make_node(&wrong, dev(253, 7));
        let path = dir.path().join("thin");
        std::os::unix::fs::symlink("dm-9", &path).unwrap();
        assert_eq!(
            ensure_node_at(&path, dev(253, 9)).unwrap(),
            NodeFix::Present
        );
        assert!(rdev_of(&path).1, "the right link stays a link");

        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("dm-7", &path).unwrap();
        assert_eq!(
            ensure_node_at(&path, dev(253, 9)).unwrap(),
            NodeFix::Replaced
        );
        assert_eq!(rdev_of(&path), (nix::sys::stat::makedev(253, 9), false));
        // The device the stale link pointed at is untouched.
        assert_eq!(rdev_of(&wrong), (nix::sys::stat::makedev(253, 7), false));
    }

    #[test]
    fn missing_node_is_made_and_a_regular_file_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thin");
        assert_eq!(ensure_node_at(&path, dev(253, 3)).unwrap(), NodeFix::Made);
        assert_eq!(
            ensure_node_at(&path, dev(253, 3)).unwrap(),
            NodeFix::Present
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a device").unwrap();
        assert_eq!(
            ensure_node_at(&path, dev(253, 3)).unwrap(),
            NodeFix::Replaced
        );
        assert_eq!(rdev_of(&path), (nix::sys::stat::makedev(253, 3), false));
    }
}
