//! The overlay2 backend's pool: the XFS filesystem under Docker's layers.
//! `pool ls` shows its size, free space and the sum of the containers'
//! limits against it (the overcommit); the pool guard and pool policies read
//! it. Where it sits on a loop file or an LVM logical volume, `pool grow
//! --data` grows it online: the file (sparse, then LOOP_SET_CAPACITY) or the
//! volume (`lvextend`), then XFS growfs on the mounted filesystem.

use std::path::{Path, PathBuf};

use roomy_proto::format_bytes;
use roomy_proto::v1::PoolStatus;

use super::{BackingFs, Overlay2Backend, DRIVER};
use crate::backend::devicemapper::pool::plan;
use crate::backend::shared;
use crate::backend::PoolGrowth;
use crate::docker::DaemonInfo;
use crate::error::AgentError;
use crate::sys::fs::{self, FsKind};
use crate::sys::loopdev::{self, LoopBacking};
use crate::sys::lvm;

/// XFS grows in whole blocks; Roomy plans in 4 KiB.
const ALIGN: u64 = 4096;

/// What the backing filesystem sits on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Under {
    /// A loop device over a file.
    Loop(LoopBacking),
    /// An LVM logical volume: VG and LV.
    Lvm(String, String),
    /// A disk or partition Roomy does not grow.
    Device(String),
}

impl Under {
    fn word(&self) -> &'static str {
        match self {
            Under::Loop(_) => "loop",
            Under::Lvm(..) => "lvm",
            Under::Device(_) => "device",
        }
    }
}

/// The block device behind a mount source, and its size.
fn block_device(source: &str) -> Result<(devicemapper::Device, u64), AgentError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(source).map_err(|e| AgentError::io("stat", source, e))?;
    let rdev = meta.rdev();
    let dev = devicemapper::Device {
        major: nix::sys::stat::major(rdev) as u32,
        minor: nix::sys::stat::minor(rdev) as u32,
    };
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}/size", dev.major, dev.minor));
    let sectors: u64 = std::fs::read_to_string(&sys)
        .map_err(|e| AgentError::io("read", &sys, e))?
        .trim()
        .parse()
        .map_err(|_| AgentError::Internal(format!("{} is not a number", sys.display())))?;
    Ok((dev, sectors * 512))
}

fn under(source: &str) -> Under {
    if let Ok((dev, _)) = block_device(source) {
        if let Some(lp) = loopdev::loop_backing(dev) {
            return Under::Loop(lp);
        }
    }
    if let Some(name) = source.strip_prefix("/dev/mapper/") {
        if let Some((vg, lv)) = lvm::lvm_names(name) {
            // Only what LVM itself knows is LVM's to grow.
            if lvm::lvm(&[
                "lvs",
                "--noheadings",
                "-o",
                "lv_name",
                &format!("{vg}/{lv}"),
            ])
            .is_ok()
            {
                return Under::Lvm(vg, lv);
            }
        }
    }
    Under::Device(source.to_string())
}

impl Overlay2Backend {
    /// The limits of every overlay2 container, for the overcommit.
    pub(crate) async fn limits(&self, info: &DaemonInfo) -> Result<u64, AgentError> {
        let mut sum = 0u64;
        let views = self.inner.docker.known().await?;
        let backing = self.list_backing(info).await;
        for view in views {
            if view.driver != DRIVER || view.upper_dir.is_none() {
                continue;
            }
            // A container removed meanwhile counts for nothing.
            if let Ok(obs) = self.observe_blocking(&view, info, backing.as_ref()).await {
                sum = sum.saturating_add(obs.limit());
            }
        }
        Ok(sum)
    }

    /// The backing filesystem as a pool. Blocking.
    pub(crate) fn pool_status(
        &self,
        info: &DaemonInfo,
        limits: u64,
    ) -> Result<PoolStatus, AgentError> {
        let backing = self.backing(info)?;
        Ok(status(&backing, &under(&backing.mount.source), limits))
    }

    /// Grow the backing filesystem's data: its file or volume, then XFS.
    pub(crate) async fn grow_backing(
        &self,
        growth: PoolGrowth,
    ) -> Result<(PoolStatus, PoolStatus), AgentError> {
        if growth.metadata.is_some() {
            return Err(AgentError::InvalidSize(
                "an XFS filesystem has no separate metadata to grow: ask for --data only".into(),
            ));
        }
        let info = self.inner.docker.info().await?;
        Self::check_daemon(&info)?;
        let limits = self.limits(&info).await?;
        let _serialized = self.inner.locks.lock("pool").await;
        let this = self.clone();
        shared::on_blocking_thread(move || {
            let backing = this.backing(&info)?;
            let below = under(&backing.mount.source);
            let before = status(&backing, &below, limits);
            let (_, device_bytes) = block_device(&backing.mount.source)?;
            let Some(target) = plan("data", growth.data, device_bytes, ALIGN)? else {
                return Ok((before.clone(), before));
            };
            let needed = target - device_bytes;
            match &below {
                Under::Loop(lp) => {
                    let free = loopdev::free_under(&lp.file)?;
                    if free < needed {
                        return Err(AgentError::BackingFull {
                            file: lp.file.display().to_string(),
                            free,
                            growth: needed,
                        });
                    }
                    loopdev::extend_file(&lp.file, target)?;
                    loopdev::set_capacity(&lp.node)?;
                }
                Under::Lvm(vg, lv) => {
                    let free = lvm::vg_free(vg)?;
                    if free < needed {
                        return Err(AgentError::BackingFull {
                            file: format!("volume group {vg}"),
                            free,
                            growth: needed,
                        });
                    }
                    lvm::lvm(&["lvextend", "-L", &format!("{target}b"), &format!("{vg}/{lv}")])?;
                }
                Under::Device(dev) => {
                    return Err(AgentError::Unsupported(format!(
                        "{} is on {dev}, which is neither a loop file nor an LVM volume: grow the device, then run xfs_growfs {}",
                        backing.mount.point.display(),
                        backing.mount.point.display()
                    )));
                }
            }
            let grown = fs::grow_mounted(
                FsKind::Xfs,
                &backing.mount.point,
                Path::new(&backing.mount.source),
                target,
            )?;
            tracing::info!(
                mount = %backing.mount.point.display(),
                from = device_bytes,
                to = target,
                fs = grown,
                "backing filesystem grown"
            );
            let after = this.backing(&info)?;
            Ok((before, status(&after, &below, limits)))
        })
        .await
    }
}

fn status(backing: &BackingFs, below: &Under, limits: u64) -> PoolStatus {
    let u = backing.usage;
    let (file, free) = match below {
        Under::Loop(lp) => (
            lp.file.display().to_string(),
            loopdev::free_under(&lp.file).unwrap_or(0),
        ),
        Under::Lvm(vg, lv) => (format!("{vg}/{lv}"), lvm::vg_free(vg).unwrap_or(0)),
        Under::Device(dev) => (dev.clone(), 0),
    };
    let used = u.total.saturating_sub(u.avail);
    PoolStatus {
        name: backing.mount.point.display().to_string(),
        data_used_bytes: used,
        data_total_bytes: u.total,
        mode: "rw".into(),
        backing: below.word().into(),
        data_file: file,
        backing_free_bytes: free,
        virtual_bytes: limits,
        message: format!(
            "XFS with project quotas at {} on {}: {} of {} used; the containers' limits add up to {}",
            backing.mount.point.display(),
            backing.mount.source,
            format_bytes(used),
            format_bytes(u.total),
            format_bytes(limits)
        ),
        ..Default::default()
    }
}
