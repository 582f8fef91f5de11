//! The agent's one door to device-mapper: typed ioctls through the
//! devicemapper crate, never `dmsetup`. Every call re-reads what it needs;
//! nothing here caches kernel state.

use std::path::PathBuf;

use devicemapper::{DevId, Device, DmError, DmFlags, DmName, DmOptions, DM};

use crate::backend::devicemapper::table::{PoolUsage, ThinTable};
use crate::error::AgentError;
use crate::sys::fs::{ensure_node_at, NodeFix};

/// What the kernel says of one dm device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevState {
    /// Its block device number.
    pub dev: Device,
    /// Suspended: I/O is queued. Roomy never leaves a device like this.
    pub suspended: bool,
    /// A table is staged but not swapped in (`dmsetup info`: `LI-`... `I`).
    pub inactive_table: bool,
    /// How many openers hold it (mounts count as one).
    pub open_count: i32,
    /// Marked for deferred removal: it vanishes when the last opener closes.
    pub deferred_remove: bool,
}

/// A handle on /dev/mapper/control.
pub struct DeviceMapper {
    dm: DM,
}

fn name(device: &str) -> Result<&DmName, AgentError> {
    DmName::new(device).map_err(|e| AgentError::Internal(format!("bad dm name {device:?}: {e}")))
}

fn is_errno(err: &DmError, errno: nix::errno::Errno) -> bool {
    matches!(err, DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, e)) if **e == errno)
}

impl DeviceMapper {
    /// Open the control device. Fails without root or without dm-mod.
    pub fn new() -> Result<Self, AgentError> {
        let dm = DM::new().map_err(|e| {
            AgentError::kernel(
                "open",
                "/dev/mapper/control",
                format!("{e}: run as root on a kernel with device-mapper (modprobe dm-thin-pool)"),
            )
        })?;
        Ok(DeviceMapper { dm })
    }

    /// The device's state, or `None` when no such device is active.
    pub fn state(&self, device: &str) -> Result<Option<DevState>, AgentError> {
        match self.dm.device_info(&DevId::Name(name(device)?)) {
            Ok(info) => {
                let flags = info.flags();
                Ok(Some(DevState {
                    dev: info.device(),
                    suspended: flags.contains(DmFlags::DM_SUSPEND),
                    inactive_table: flags.contains(DmFlags::DM_INACTIVE_PRESENT),
                    open_count: info.open_count(),
                    deferred_remove: flags.contains(DmFlags::DM_DEFERRED_REMOVE),
                }))
            }
            Err(e) if is_errno(&e, nix::errno::Errno::ENXIO) => Ok(None),
            Err(e) => Err(AgentError::kernel("info", device, e)),
        }
    }

    /// The live thin table of a device.
    pub fn thin_table(&self, device: &str) -> Result<ThinTable, AgentError> {
        let options = DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE);
        let (_, lines) = self
            .dm
            .table_status(&DevId::Name(name(device)?), options)
            .map_err(|e| AgentError::kernel("table", device, e))?;
        ThinTable::from_lines(device, &lines)
    }

    /// Stage `table` as the device's inactive table. The live table is
    /// untouched until [`Self::resume`] (DESIGN.md F7).
    pub fn load(&self, device: &str, table: &ThinTable) -> Result<(), AgentError> {
        self.dm
            .table_load(
                &DevId::Name(name(device)?),
                &table.to_lines(),
                DmOptions::default(),
            )
            .map(|_| ())
            .map_err(|e| AgentError::kernel("load", device, e))
    }

    /// Swap in the staged table and resume: suspend, swap and resume in one
    /// ioctl. Also resumes a device left suspended.
    pub fn resume(&self, device: &str) -> Result<(), AgentError> {
        self.dm
            .device_suspend(&DevId::Name(name(device)?), DmOptions::default())
            .map(|_| ())
            .map_err(|e| AgentError::kernel("resume", device, e))
    }

    /// Swap in a staged table that only makes the device longer, without
    /// freezing the filesystem or flushing I/O in flight: existing sectors
    /// map exactly as before, so nothing needs to settle first. A plain
    /// resume (lockfs) syncs every dirty page of the filesystem first,
    /// which under a busy writer stalls it for seconds.
    ///
    /// Nor does it wait for udev: the devicemapper crate makes every resume
    /// wait until udev has run its rules for the change event, which
    /// matters when a device node is made or renamed, not when an existing
    /// device gets longer (about 180 ms of each growth in the VM; `dmsetup
    /// --noudevsync` does the same). So this one ioctl is issued here, as
    /// `dmsetup --noudevsync resume` issues it: udev still gets the event,
    /// marked as libdevmapper's own, with no cookie to answer.
    pub fn resume_grown(&self, device: &str) -> Result<(), AgentError> {
        use std::os::fd::AsRawFd;
        name(device)?;
        let mut hdr = raw::DmIoctl::resume(
            device.as_bytes(),
            DmFlags::DM_NOFLUSH | DmFlags::DM_SKIP_LOCKFS,
        )
        .map_err(|e| AgentError::kernel("resume", device, e))?;
        // SAFETY: `hdr` is a whole dm_ioctl with data_size its own size,
        // which the kernel reads and writes within.
        unsafe { raw::dm_dev_suspend(self.dm.as_raw_fd(), &mut hdr) }
            .map(|_| ())
            .map_err(|e| AgentError::kernel("resume", device, e))
    }

    /// Drop a staged table nobody will swap in.
    pub fn clear_inactive(&self, device: &str) -> Result<(), AgentError> {
        self.dm
            .table_clear(&DevId::Name(name(device)?))
            .map(|_| ())
            .map_err(|e| AgentError::kernel("clear", device, e))
    }

    /// Create and activate a device with `table`, and make sure
    /// `/dev/mapper/<name>` exists (where no udev runs, nobody else makes it;
    /// Docker mounts by that path).
    pub fn create(
        &self,
        device: &str,
        table: &ThinTable,
        read_only: bool,
    ) -> Result<Device, AgentError> {
        let dm_name = name(device)?;
        let info = self
            .dm
            .device_create(dm_name, None, DmOptions::default())
            .map_err(|e| AgentError::kernel("create", device, e))?;
        let options = if read_only {
            DmOptions::default().set_flags(DmFlags::DM_READONLY)
        } else {
            DmOptions::default()
        };
        let activated = self
            .dm
            .table_load(&DevId::Name(dm_name), &table.to_lines(), options)
            .map_err(|e| AgentError::kernel("load", device, e))
            .and_then(|_| self.resume(device));
        if let Err(e) = activated {
            // Leave nothing half-made behind.
            let _ = self
                .dm
                .device_remove(&DevId::Name(dm_name), DmOptions::default());
            return Err(e);
        }
        let dev = info.device();
        ensure_node(device, dev)?;
        Ok(dev)
    }

    /// Remove a device now (not deferred).
    pub fn remove(&self, device: &str) -> Result<(), AgentError> {
        self.dm
            .device_remove(&DevId::Name(name(device)?), DmOptions::default())
            .map(|_| ())
            .map_err(|e| AgentError::kernel("remove", device, e))
    }

    /// Undo Docker's deferred removal so the device stays active after its
    /// last opener closes (DESIGN.md F5, F9).
    pub fn cancel_deferred_remove(&self, device: &str) -> Result<(), AgentError> {
        self.dm
            .target_msg(&DevId::Name(name(device)?), None, "@cancel_deferred_remove")
            .map(|_| ())
            .map_err(|e| AgentError::kernel("cancel deferred remove", device, e))
    }

    /// The live table of a device with one target of type `target`:
    /// (length in sectors, params).
    pub fn raw_table(&self, device: &str, target: &str) -> Result<(u64, String), AgentError> {
        let options = DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE);
        let (_, lines) = self
            .dm
            .table_status(&DevId::Name(name(device)?), options)
            .map_err(|e| AgentError::kernel("table", device, e))?;
        match lines.as_slice() {
            [(0, length, t, params)] if t == target => Ok((*length, params.clone())),
            _ => Err(AgentError::UnexpectedTable {
                device: device.to_string(),
                why: format!("expected one {target} target"),
            }),
        }
    }

    /// Stage a one-target table given as text.
    pub fn load_raw(
        &self,
        device: &str,
        length: u64,
        target: &str,
        params: &str,
    ) -> Result<(), AgentError> {
        self.dm
            .table_load(
                &DevId::Name(name(device)?),
                &[(0, length, target.to_string(), params.to_string())],
                DmOptions::default(),
            )
            .map(|_| ())
            .map_err(|e| AgentError::kernel("load", device, e))
    }

    /// Suspend (with DM_SUSPEND in `options`) or resume with these flags.
    pub fn suspend_with(&self, device: &str, options: DmOptions) -> Result<(), AgentError> {
        self.dm
            .device_suspend(&DevId::Name(name(device)?), options)
            .map(|_| ())
            .map_err(|e| AgentError::kernel("suspend/resume", device, e))
    }

    /// The device's dm uuid ("LVM-..." for LVM's devices), empty if none.
    pub fn uuid(&self, device: &str) -> Result<String, AgentError> {
        let info = self
            .dm
            .device_info(&DevId::Name(name(device)?))
            .map_err(|e| AgentError::kernel("info", device, e))?;
        Ok(info.uuid().map(|u| u.to_string()).unwrap_or_default())
    }

    /// Data and metadata use of a thin pool.
    pub fn pool_usage(&self, pool: &str) -> Result<PoolUsage, AgentError> {
        let id = DevId::Name(name(pool)?);
        let (_, table) = self
            .dm
            .table_status(
                &id,
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map_err(|e| AgentError::kernel("table", pool, e))?;
        let (_, status) = self
            .dm
            .table_status(&id, DmOptions::default().set_flags(DmFlags::DM_NOFLUSH))
            .map_err(|e| AgentError::kernel("status", pool, e))?;
        PoolUsage::from_lines(pool, &table, &status)
    }

    /// Block device number of an active device.
    pub fn device_number(&self, device: &str) -> Result<Device, AgentError> {
        self.state(device)?
            .map(|s| s.dev)
            .ok_or_else(|| AgentError::kernel("info", device, "not active"))
    }

    /// Names of all active dm devices.
    pub fn list(&self) -> Result<Vec<String>, AgentError> {
        Ok(self
            .dm
            .list_devices()
            .map_err(|e| AgentError::kernel("list", "all devices", e))?
            .into_iter()
            .map(|(name, _, _)| name.to_string())
            .collect())
    }
}

/// The one ioctl issued without the devicemapper crate: a resume with no
/// udev cookie (see [`DeviceMapper::resume_grown`]). Layout and numbers
/// from `include/uapi/linux/dm-ioctl.h`.
mod raw {
    use devicemapper::{DmFlags, DmUdevFlags};

    /// Interface version asked for: 4.0.0, which every kernel with dm has.
    const VERSION: [u32; 3] = [4, 0, 0];
    const NAME_LEN: usize = 128;
    const UUID_LEN: usize = 129;
    /// Where libdevmapper puts its udev flags in `event_nr`.
    const UDEV_FLAGS_SHIFT: u32 = 16;

    /// `struct dm_ioctl`.
    #[repr(C)]
    pub struct DmIoctl {
        version: [u32; 3],
        data_size: u32,
        data_start: u32,
        target_count: u32,
        open_count: i32,
        flags: u32,
        event_nr: u32,
        padding: u32,
        dev: u64,
        name: [u8; NAME_LEN],
        uuid: [u8; UUID_LEN],
        data: [u8; 7],
    }

    nix::ioctl_readwrite!(dm_dev_suspend, 0xfd, 6, DmIoctl);

    impl DmIoctl {
        /// A resume (DM_DEV_SUSPEND without DM_SUSPEND_FLAG) of device
        /// `name` with `flags`, carrying libdevmapper's "primary source"
        /// udev flag and no cookie: udev runs its rules as for `dmsetup`'s
        /// own resume, and nobody waits for them.
        pub fn resume(name: &[u8], flags: DmFlags) -> Result<Self, String> {
            if name.is_empty() || name.len() >= NAME_LEN || name.contains(&0) {
                return Err(format!(
                    "{} is not a dm device name",
                    String::from_utf8_lossy(name)
                ));
            }
            let mut hdr = DmIoctl {
                version: VERSION,
                data_size: std::mem::size_of::<DmIoctl>() as u32,
                data_start: std::mem::size_of::<DmIoctl>() as u32,
                target_count: 0,
                open_count: 0,
                flags: (flags - DmFlags::DM_SUSPEND).bits(),
                event_nr: DmUdevFlags::DM_UDEV_PRIMARY_SOURCE_FLAG.bits() << UDEV_FLAGS_SHIFT,
                padding: 0,
                dev: 0,
                name: [0; NAME_LEN],
                uuid: [0; UUID_LEN],
                data: [0; 7],
            };
            hdr.name[..name.len()].copy_from_slice(name);
            Ok(hdr)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_header_is_the_kernels_dm_ioctl() {
            // sizeof(struct dm_ioctl) and offsetof(name) on every arch.
            assert_eq!(std::mem::size_of::<DmIoctl>(), 312);
            assert_eq!(std::mem::offset_of!(DmIoctl, dev), 40);
            assert_eq!(std::mem::offset_of!(DmIoctl, name), 48);
            assert_eq!(std::mem::offset_of!(DmIoctl, uuid), 176);
            // _IOWR(0xfd, 6, struct dm_ioctl), as dmsetup issues it.
            assert_eq!(nix::request_code_readwrite!(0xfd, 6, 312), 0xc138_fd06);
        }

        #[test]
        fn a_resume_header_names_the_device_and_carries_no_cookie() {
            let hdr = DmIoctl::resume(b"docker-8:1-42-abc", DmFlags::DM_NOFLUSH).unwrap();
            assert_eq!(&hdr.name[..17], b"docker-8:1-42-abc");
            assert!(hdr.name[17..].iter().all(|&b| b == 0));
            assert_eq!(hdr.flags, DmFlags::DM_NOFLUSH.bits());
            // The udev flags only: the low 16 bits (the cookie) are zero.
            assert_eq!(hdr.event_nr & 0xffff, 0);
            assert_ne!(hdr.event_nr, 0);
            // Never a suspend, whatever the caller passed.
            let hdr = DmIoctl::resume(b"x", DmFlags::DM_SUSPEND).unwrap();
            assert_eq!(hdr.flags, 0);
            assert!(DmIoctl::resume(b"", DmFlags::empty()).is_err());
            assert!(DmIoctl::resume(&[b'a'; 128], DmFlags::empty()).is_err());
        }
    }
}

/// `/dev/mapper/<name>`.
pub fn mapper_path(device: &str) -> PathBuf {
    PathBuf::from("/dev/mapper").join(device)
}

/// Make `/dev/mapper/<name>` point at `dev`. Never trusts a path that
/// merely exists: it must resolve to a block device with `dev`'s number.
fn ensure_node(device: &str, dev: Device) -> Result<NodeFix, AgentError> {
    let fix = ensure_node_at(&mapper_path(device), dev)?;
    if fix == NodeFix::Replaced {
        tracing::warn!(
            device,
            dev = %dev,
            "replaced a stale /dev/mapper entry that pointed at another device"
        );
    }
    Ok(fix)
}
