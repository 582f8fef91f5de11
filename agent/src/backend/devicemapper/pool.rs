//! Docker's thin pool: what backs it, how full it is, and growing it
//! online (DESIGN.md F6): enlarge the sparse backing file, tell the loop
//! device (LOOP_SET_CAPACITY), reload the pool table with the new length.
//! Containers keep running; their devices are suspended without flushing
//! (queued writes of a full pool never block the reload) for the instant of
//! the swap, and always resumed.

use std::path::Path;

use devicemapper::{Device, DmFlags, DmOptions};
use roomy_proto::v1::PoolStatus;
use roomy_proto::{format_bytes, SizeRequest};

use crate::backend::devicemapper::table::PoolUsage;
use crate::error::AgentError;
use crate::failpoint;
use crate::sys::dm::DeviceMapper;
use crate::sys::loopdev::{extend_file, free_under, set_capacity};
pub use crate::sys::loopdev::{loop_backing, LoopBacking};
pub use crate::sys::lvm::lvm_names;
use crate::sys::lvm::{lvm, vg_free};

/// Metadata blocks are 4 KiB.
const META_BLOCK: u64 = 4096;
/// dm-thin's metadata device cannot use more than this.
const META_MAX: u64 = 16 << 30;

/// Everything about the pool, read fresh.
#[derive(Debug, Clone)]
pub struct Pool {
    /// dm name.
    pub name: String,
    /// Live table length in sectors.
    pub length: u64,
    /// Live table params (after the target type).
    pub params: String,
    /// Data device.
    pub data_dev: Device,
    /// Metadata device.
    pub meta_dev: Device,
    /// Data block size in bytes.
    pub block_bytes: u64,
    /// Low water mark in bytes.
    pub low_water_bytes: u64,
    /// Use and mode.
    pub usage: PoolUsage,
    /// loop-lvm files, when so backed.
    pub data_loop: Option<LoopBacking>,
    /// loop-lvm metadata file.
    pub meta_loop: Option<LoopBacking>,
    /// LVM owns it (direct-lvm).
    pub lvm: bool,
}

impl Pool {
    /// Read the pool `name`.
    pub fn read(dm: &DeviceMapper, name: &str) -> Result<Pool, AgentError> {
        let (length, params) = dm.raw_table(name, "thin-pool")?;
        let parsed = super::table::pool_params(name, &params)?;
        let block_bytes = *parsed.data_block_size * 512;
        Ok(Pool {
            name: name.to_string(),
            length,
            data_dev: parsed.data_dev,
            meta_dev: parsed.metadata_dev,
            block_bytes,
            low_water_bytes: (*parsed.low_water_mark).saturating_mul(block_bytes),
            usage: dm.pool_usage(name)?,
            data_loop: loop_backing(parsed.data_dev),
            meta_loop: loop_backing(parsed.metadata_dev),
            lvm: dm.uuid(name)?.starts_with("LVM-"),
            params,
        })
    }

    /// Free space where the pool can grow: the VG's (one `vgs`, the costly
    /// part of a status) or the filesystem's under the data loop file.
    pub fn backing_free(&self) -> u64 {
        match self.lvm.then(|| lvm_names(&self.name)).flatten() {
            Some((vg, _)) => vg_free(&vg).unwrap_or(0),
            None => self
                .data_loop
                .as_ref()
                .and_then(|l| free_under(&l.file).ok())
                .unwrap_or(0),
        }
    }

    /// The wire form. `virtual_bytes`: sum of the thin devices' sizes;
    /// `free`: [`Pool::backing_free`], as read by the caller.
    pub fn status(&self, virtual_bytes: u64, free: u64) -> PoolStatus {
        let u = &self.usage;
        let backing = if self.lvm {
            "lvm"
        } else if self.data_loop.is_some() {
            "loop"
        } else {
            "device"
        };
        let file = |l: &Option<LoopBacking>| {
            l.as_ref()
                .map(|l| l.file.display().to_string())
                .unwrap_or_default()
        };
        let lvm = if self.lvm {
            lvm_names(&self.name)
        } else {
            None
        };
        let percent = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 * 100.0 / total as f64
            }
        };
        PoolStatus {
            name: self.name.clone(),
            data_used_bytes: u.data_used,
            data_total_bytes: u.data_total,
            metadata_used_bytes: u.meta_used * META_BLOCK,
            metadata_total_bytes: u.meta_total * META_BLOCK,
            low_water_mark_bytes: self.low_water_bytes,
            mode: u.mode.to_string(),
            backing: backing.to_string(),
            data_file: match &lvm {
                Some((vg, lv)) => format!("{vg}/{lv}"),
                None => file(&self.data_loop),
            },
            metadata_file: file(&self.meta_loop),
            backing_free_bytes: free,
            virtual_bytes,
            message: format!(
                "data {} of {} ({:.0}%), metadata {:.0}%, {}{}",
                format_bytes(u.data_used),
                format_bytes(u.data_total),
                percent(u.data_used, u.data_total),
                percent(u.meta_used, u.meta_total),
                u.mode,
                match u.when_full {
                    "error" => ", fails writes when full",
                    "queue" => ", holds writes when full",
                    _ => "",
                }
            ),
            when_full: u.when_full.to_string(),
            // The service adds what the policy engine measured.
            data_fill_rate_bytes_per_second: 0.0,
        }
    }
}

/// Plan one side of a pool growth: the new size, rounded up to `align`,
/// or `None` when nothing is asked or it is already that size.
pub fn plan(
    what: &str,
    request: Option<SizeRequest>,
    current: u64,
    align: u64,
) -> Result<Option<u64>, AgentError> {
    let Some(request) = request else {
        return Ok(None);
    };
    let target = request
        .target(roomy_proto::ByteSize(current))
        .ok_or_else(|| {
            AgentError::InvalidSize(format!("pool {what}: size does not fit in 64 bits"))
        })?
        .0;
    let target = target.div_ceil(align) * align;
    if target < current {
        return Err(AgentError::PoolShrink {
            what: what.to_string(),
            current,
        });
    }
    Ok((target > current).then_some(target))
}

impl DeviceMapper {
    /// Grow a loop-lvm pool: data to `data` bytes and/or metadata to `meta`
    /// bytes. Checks first (backing space, loop files), then acts; every
    /// step skips what is already done. `vg_free`: for a direct-lvm pool,
    /// the VG's free space as the caller read it, now or in a recent sample
    /// (loop pools check each file's filesystem here: data and metadata may
    /// not share one).
    pub fn grow_loop_pool(
        &self,
        pool: &Pool,
        data: Option<u64>,
        meta: Option<u64>,
        vg_free: u64,
    ) -> Result<(), AgentError> {
        if crate::backend::shared::needs_repair(pool.usage.mode) {
            return Err(AgentError::PoolNeedsRepair {
                pool: pool.name.clone(),
                mode: pool.usage.mode.to_string(),
            });
        }
        if pool.lvm {
            return self.grow_lvm_pool(pool, data, meta, vg_free);
        }
        let (Some(data_loop), Some(meta_loop)) = (&pool.data_loop, &pool.meta_loop) else {
            return Err(AgentError::PoolUnhealthy {
                pool: pool.name.clone(),
                mode: "not backed by loop files or LVM: grow its devices, then reload it".into(),
            });
        };
        if let Some(m) = meta {
            if m > META_MAX {
                return Err(AgentError::InvalidSize(format!(
                    "pool metadata cannot exceed {}; ask for at most that",
                    format_bytes(META_MAX)
                )));
            }
        }
        // Check every side before changing any.
        let file_len = |f: &Path| {
            std::fs::metadata(f)
                .map(|m| m.len())
                .map_err(|e| AgentError::io("stat", f, e))
        };
        let mut needed_on: Vec<(&LoopBacking, u64)> = Vec::new();
        if let Some(d) = data {
            needed_on.push((data_loop, d));
        }
        if let Some(m) = meta {
            needed_on.push((meta_loop, m));
        }
        for (lp, target) in &needed_on {
            let growth = target.saturating_sub(file_len(&lp.file)?);
            let free = free_under(&lp.file)?;
            if free < growth {
                return Err(AgentError::BackingFull {
                    file: lp.file.display().to_string(),
                    free,
                    growth,
                });
            }
        }
        // 1. The files, then the loop devices' capacity.
        for (lp, target) in &needed_on {
            extend_file(&lp.file, *target)?;
            set_capacity(&lp.node)?;
        }
        // 2. The pool table: data length in sectors (metadata growth is
        //    noticed by the pool on resume with the same table).
        let length = data
            .map(|d| d / 512)
            .unwrap_or(pool.length)
            .max(pool.length);
        self.reload_pool(&pool.name, length, &pool.params)?;
        // 3. Re-read: a pool that needs_check refuses growth yet reports success.
        let after = Pool::read(self, &pool.name)?;
        if data.is_some_and(|d| after.usage.data_total < d)
            || meta.is_some_and(|m| after.usage.meta_total * META_BLOCK + META_BLOCK * 2 < m)
        {
            return Err(AgentError::kernel(
                "grow",
                &pool.name,
                format!(
                    "the pool is {} and did not take the new size (data {}, metadata {}); run thin_check on its metadata",
                    after.usage.mode,
                    format_bytes(after.usage.data_total),
                    format_bytes(after.usage.meta_total * META_BLOCK)
                ),
            ));
        }
        Ok(())
    }

    /// Grow a direct-lvm pool with LVM's own tools, never a raw table
    /// reload under LVM's feet: VG free space first, then `lvextend`.
    fn grow_lvm_pool(
        &self,
        pool: &Pool,
        data: Option<u64>,
        meta: Option<u64>,
        free: u64,
    ) -> Result<(), AgentError> {
        let (vg, lv) = lvm_names(&pool.name).ok_or_else(|| AgentError::UnexpectedTable {
            device: pool.name.clone(),
            why: "an LVM device whose name is not VG-LV".into(),
        })?;
        let meta_now = pool.usage.meta_total * META_BLOCK;
        let growth = data.map_or(0, |d| d.saturating_sub(pool.usage.data_total))
            + meta.map_or(0, |m| m.saturating_sub(meta_now));
        // `free` may be a sample a few seconds old: the VG as it is now
        // decides a refusal, before acting when the sample says short, and
        // when lvextend refuses (atomically: LVM changes nothing then).
        let short_now = || -> Result<Option<AgentError>, AgentError> {
            let now = vg_free(&vg)?;
            Ok((now < growth).then(|| AgentError::BackingFull {
                file: format!("volume group {vg}"),
                free: now,
                growth,
            }))
        };
        if free < growth {
            if let Some(full) = short_now()? {
                return Err(full);
            }
        }
        let target = format!("{vg}/{lv}");
        let extend = |args: &[&str]| {
            lvm(args).map_err(|e| match short_now() {
                Ok(Some(full)) => full,
                _ => e,
            })
        };
        if let Some(d) = data {
            extend(&["lvextend", "-L", &format!("{d}b"), &target])?;
        }
        if let Some(m) = meta {
            extend(&["lvextend", "--poolmetadatasize", &format!("{m}b"), &target])?;
        }
        let after = Pool::read(self, &pool.name)?;
        if data.is_some_and(|d| after.usage.data_total < d)
            || meta.is_some_and(|m| after.usage.meta_total * META_BLOCK + 2 * META_BLOCK < m)
        {
            return Err(AgentError::kernel(
                "grow",
                &pool.name,
                format!(
                    "lvextend succeeded but the pool is {} and did not take the new size; run lvs and thin_check",
                    after.usage.mode
                ),
            ));
        }
        Ok(())
    }

    /// Reload the pool with `length` sectors: suspend its thin devices
    /// without flushing or freezing (queued writes of a full pool would
    /// block a flush forever), swap the pool's table, resume everything.
    fn reload_pool(&self, pool: &str, length: u64, params: &str) -> Result<(), AgentError> {
        let pool_dev = self.device_number(pool)?;
        let thins: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|n| n != pool)
            .filter(|n| {
                self.raw_table(n, "thin")
                    .is_ok_and(|(_, p)| p.split(' ').next() == Some(&format!("{pool_dev}")))
            })
            .collect();
        let quiet = DmOptions::default()
            .set_flags(DmFlags::DM_SUSPEND | DmFlags::DM_NOFLUSH | DmFlags::DM_SKIP_LOCKFS);
        let mut suspended = Vec::new();
        let mut result = Ok(());
        failpoint::hit("pool-listed");
        for t in &thins {
            match self.suspend_with(t, quiet) {
                Ok(()) => suspended.push(t.clone()),
                // Removed since the list (Docker deactivates a container's
                // -init device right after creating it): nothing of it is
                // left on the pool to hold still.
                Err(_) if matches!(self.state(t), Ok(None)) => {
                    tracing::info!(device = %t, "thin device gone before the pool reload: skipped");
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self
                .load_raw(pool, length, "thin-pool", params)
                .and_then(|_| {
                    self.suspend_with(pool, DmOptions::default().set_flags(DmFlags::DM_NOFLUSH))
                });
        }
        // Whatever happened, nothing stays suspended.
        for t in &suspended {
            if let Err(e) = self.resume(t) {
                tracing::error!(device = %t, error = %e, "could not resume a thin device after the pool reload");
                result = result.and(Err(e));
            }
        }
        if let Ok(Some(state)) = self.state(pool) {
            if state.inactive_table {
                let _ = self.clear_inactive(pool);
            }
            if state.suspended {
                let _ = self.resume(pool);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn splits_lvm_dm_names() {
        let n = |s: &str| lvm_names(s).map(|(v, l)| format!("{v}/{l}"));
        assert_eq!(n("docker-thinpool").as_deref(), Some("docker/thinpool"));
        assert_eq!(
            n("docker-thinpool-tpool").as_deref(),
            Some("docker/thinpool")
        );
        assert_eq!(n("my--vg-thin--pool").as_deref(), Some("my-vg/thin-pool"));
        assert_eq!(n("nodash"), None);
    }

    use crate::backend::PoolGrowth;

    fn req(text: &str) -> Option<SizeRequest> {
        (!text.is_empty()).then(|| text.parse().unwrap())
    }

    #[test]
    fn plans_pool_growth_in_whole_blocks() {
        assert_eq!(plan("data", req(""), 4 * G, 65536).unwrap(), None);
        assert_eq!(plan("data", req("8G"), 4 * G, 65536).unwrap(), Some(8 * G));
        assert_eq!(plan("data", req("+4G"), 4 * G, 65536).unwrap(), Some(8 * G));
        assert_eq!(plan("data", req("4G"), 4 * G, 65536).unwrap(), None);
        assert_eq!(
            plan("data", req("+1000"), 4 * G, 65536).unwrap(),
            Some(4 * G + 65536)
        );
        assert!(matches!(
            plan("data", req("2G"), 4 * G, 65536),
            Err(AgentError::PoolShrink { .. })
        ));
        // Unparsable sizes are refused where the request comes in.
        assert!(PoolGrowth::parse("much", "").is_err());
        assert_eq!(PoolGrowth::parse(" ", "").unwrap(), PoolGrowth::default());
    }
}
