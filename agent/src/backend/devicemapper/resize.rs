//! The resize protocol of the devicemapper backend (docs/ARCHITECTURE.md
//! walks it as numbered steps). Every step checks what is already done
//! before acting, so an interrupted resize is finished by running it again.

use std::time::{SystemTime, UNIX_EPOCH};

use roomy_proto::format_bytes;
use roomy_proto::v1::Health;

use crate::backend::devicemapper::{Observed, ThinBackend};
use crate::backend::shared::{self, check_backing, Backing};
use crate::backend::{plan_grow, GrowAction, RepairOutcome, ResizeOutcome, SizeRequest};
use crate::docker::{ContainerView, DaemonInfo};
use crate::error::AgentError;
use crate::failpoint;
use crate::journal::Intent;
use crate::sys::fs::{self, FsKind};

/// How far below the device an ext4 may stay after an online resize: the
/// kernel drops a last block group too small to hold its own metadata.
const EXT4_SLACK: u64 = 128 << 20;

fn fs_slack(kind: Option<FsKind>) -> u64 {
    match kind {
        Some(FsKind::Ext4) => EXT4_SLACK,
        _ => 4096,
    }
}

/// Whether every place already holds `target`: nothing to do.
fn settled_at(obs: &Observed, target: u64) -> bool {
    let s = &obs.sizes;
    let table_ok = match s.table {
        Some(t) => t >= target,
        // Inactive: Docker activates it at its own size.
        None => s.docker >= target,
    };
    let fs_ok = s.fs.is_none_or(|fs| fs + fs_slack(obs.fs_kind) > target);
    table_ok && fs_ok && s.persisted >= target
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ThinBackend {
    /// Observe on a blocking thread.
    async fn observe_blocking(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
    ) -> Result<Observed, AgentError> {
        let (this, view, info) = (self.clone(), view.clone(), info.clone());
        shared::on_blocking_thread(move || this.observe(&view, &info)).await
    }

    /// Run the protocol's kernel steps on a blocking thread.
    async fn apply_blocking(
        &self,
        obs: Observed,
        target: u64,
        grow_fs: bool,
    ) -> Result<StepTimes, AgentError> {
        let this = self.clone();
        shared::on_blocking_thread(move || this.apply(&obs, target, grow_fs)).await
    }

    /// Grow a container. See `StorageBackend::resize`.
    pub(crate) async fn resize_container(
        &self,
        query: &str,
        size: SizeRequest,
    ) -> Result<ResizeOutcome, AgentError> {
        let started = std::time::Instant::now();
        let (_held, view, info) =
            shared::hold_container(&self.inner.locks, &self.inner.rows, query, |q| async move {
                self.find(&q).await
            })
            .await?;
        let obs = self.observe_blocking(&view, &info).await?;
        let current = obs.sizes.current();
        let target = plan_grow(&view.name, size, current)?;
        if target == current && settled_at(&obs, target) {
            let container = self.describe(&obs, &info);
            return Ok(ResizeOutcome {
                action: GrowAction::Unchanged { size: current },
                message: format!(
                    "{} is already {}: nothing changed",
                    view.name,
                    format_bytes(current)
                ),
                container,
            });
        }
        self.check_pool(&obs, target.saturating_sub(current))?;

        let intent = Intent {
            container_id: view.id.clone(),
            container_name: view.name.clone(),
            device: obs.device.clone(),
            from_bytes: current,
            to_bytes: target,
            started: now(),
        };
        let t0 = std::time::Instant::now();
        self.inner.journal.record(&intent)?;
        failpoint::hit("after-intent");
        let from = obs.sizes.fs.unwrap_or(current);
        let online = obs.mountpoint.is_some();
        let t1 = std::time::Instant::now();
        let steps = self.apply_blocking(obs, target, true).await?;
        let t2 = std::time::Instant::now();
        self.inner.journal.clear(&view.id)?;
        // Where the time went, for operators chasing a slow grow (fsyncs
        // behind a busy writer's dirty pages are the usual suspect).
        tracing::info!(
            container = %view.name,
            from,
            to = target,
            online,
            read_ms = (t0 - started).as_millis() as u64,
            intent_ms = (t1 - t0).as_millis() as u64,
            device_ms = steps.device.as_millis() as u64,
            fs_ms = steps.fs.as_millis() as u64,
            metadata_ms = steps.metadata.as_millis() as u64,
            clear_ms = t2.elapsed().as_millis() as u64,
            "grown"
        );

        // The view read under the lock still holds: growing changes nothing
        // Docker shows (its DeviceSize moves only when dockerd restarts),
        // and a stop meanwhile is the guard's, by Docker's event.
        let obs = self.reconcile_locked(&view, &info).await?;
        Ok(ResizeOutcome {
            action: GrowAction::Grown { from, to: target },
            message: format!(
                "grew {} from {} to {} {}",
                view.name,
                format_bytes(from),
                format_bytes(target),
                if online {
                    "online"
                } else {
                    "while stopped; it starts at the new size"
                }
            ),
            container: self.describe(&obs, &info),
        })
    }

    /// Refuse growth the pool cannot back with its margin left.
    fn check_pool(&self, obs: &Observed, growth: u64) -> Result<(), AgentError> {
        let usage = self.inner.dm.pool_usage(&obs.pool)?;
        if usage.mode != "rw" {
            return Err(AgentError::PoolUnhealthy {
                pool: obs.pool.clone(),
                mode: usage.mode.to_string(),
            });
        }
        let backing = Backing {
            name: obs.pool.clone(),
            free: usage.data_free(),
            total: usage.data_total,
        };
        check_backing(
            &backing,
            &obs.view.name,
            growth,
            self.inner.config.pool_margin_percent,
        )
    }

    /// The kernel steps: device at `target`, filesystem filling it,
    /// Docker's metadata saying so. Each skips what is already done.
    pub(crate) fn apply(
        &self,
        obs: &Observed,
        target: u64,
        grow_fs: bool,
    ) -> Result<StepTimes, AgentError> {
        let dm = &self.inner.dm;
        let device = obs.device.as_str();
        let started = std::time::Instant::now();

        // 1. The device, at least `target` long.
        match dm.state(device)? {
            Some(state) => {
                if state.suspended {
                    // Left by a resume that failed after the swap.
                    tracing::warn!(device, "device was suspended; resuming it");
                    dm.resume(device)?;
                }
                if state.inactive_table {
                    // Staged by a load that was never resumed.
                    dm.clear_inactive(device)?;
                }
                let table = dm.thin_table(device)?;
                if table.bytes() < target {
                    let grown = table.with_bytes(target)?;
                    dm.load(device, &grown)?;
                    failpoint::hit("after-load");
                    if let Err(e) = dm.resume_grown(device) {
                        self.settle_after_failed_resume(device);
                        return Err(e);
                    }
                    failpoint::hit("after-resume");
                    let live = dm.thin_table(device)?;
                    if live.bytes() != target {
                        return Err(AgentError::kernel(
                            "resume",
                            device,
                            format!("table is {} after loading {}", live.bytes(), target),
                        ));
                    }
                }
            }
            None => {
                // Stopped container: activate at the new size under Docker's
                // own name; the next `docker start` mounts it as it is (F5).
                let pool = dm.device_number(&obs.pool)?;
                let table = crate::backend::devicemapper::table::ThinTable::new(
                    pool,
                    obs.device_id,
                    target,
                )?;
                dm.create(device, &table, false)?;
                failpoint::hit("after-activate");
            }
        }

        let device_done = std::time::Instant::now();
        // 2. The filesystem, filling the device.
        if grow_fs {
            let state = dm
                .state(device)?
                .ok_or_else(|| AgentError::kernel("info", device, "vanished while growing"))?;
            let node = fs::dev_node(state.dev);
            let kind = match obs.fs_kind {
                Some(kind) => kind,
                None => fs::read_superblock(&node, true)?
                    .map(|sb| sb.kind)
                    .ok_or_else(|| AgentError::fs(device, "no XFS or ext4 filesystem on it"))?,
            };
            let fs_bytes = match self.mountpoint_of(state.dev) {
                Some(mp) => fs::grow_mounted(kind, &mp, &node, target)?,
                None => fs::grow_unmounted(kind, &node, &self.scratch_dir(&obs.mount_id), target)?,
            };
            // What `ls` shows for the container once its device goes away.
            self.inner
                .seen
                .put(&obs.mount_id, obs.device_id, kind, fs_bytes);
            failpoint::hit("after-grow");
        }

        let fs_done = std::time::Instant::now();
        // 3. Docker's metadata, so dockerd adopts the size when it restarts.
        if obs.meta.size()? < target {
            obs.meta.set_size(target)?;
        }
        failpoint::hit("after-persist");
        Ok(StepTimes {
            device: device_done - started,
            fs: fs_done - device_done,
            metadata: fs_done.elapsed(),
        })
    }

    /// A resume can fail after the swap and leave the device suspended:
    /// re-read it and resume whatever table it holds.
    fn settle_after_failed_resume(&self, device: &str) {
        let dm = &self.inner.dm;
        if let Ok(Some(state)) = dm.state(device) {
            if state.inactive_table {
                let _ = dm.clear_inactive(device);
            }
            if state.suspended {
                if let Err(e) = dm.resume(device) {
                    tracing::error!(device, error = %e, "device left suspended; resume it with `dmsetup resume`");
                }
            }
        }
    }

    /// Make an `at_risk` container startable. See `StorageBackend::repair`.
    pub(crate) async fn repair_container(&self, query: &str) -> Result<RepairOutcome, AgentError> {
        let (_held, view, info) =
            shared::hold_container(&self.inner.locks, &self.inner.rows, query, |q| async move {
                self.find(&q).await
            })
            .await?;
        let obs = self.observe_blocking(&view, &info).await?;
        let before = self.describe(&obs, &info);
        if before.health() != Health::AtRisk {
            return Ok(RepairOutcome {
                repaired: false,
                message: format!(
                    "{} is {}: nothing to repair",
                    view.name,
                    before.health().word()
                ),
                container: before,
            });
        }
        let fs = obs.sizes.fs.ok_or_else(|| {
            AgentError::fs(
                &obs.device,
                "filesystem size unreadable; nothing was changed",
            )
        })?;
        // The device must hold the whole filesystem, in whole sectors.
        let target = obs.sizes.current().max(fs.div_ceil(512) * 512);
        let intent = Intent {
            container_id: view.id.clone(),
            container_name: view.name.clone(),
            device: obs.device.clone(),
            from_bytes: obs.sizes.docker,
            to_bytes: target,
            started: now(),
        };
        self.inner.journal.record(&intent)?;
        self.apply_blocking(obs, target, false).await?;
        self.inner.journal.clear(&view.id)?;
        let obs = self.reconcile_locked(&view, &info).await?;
        tracing::info!(container = %view.name, size = target, "repaired");
        Ok(RepairOutcome {
            repaired: true,
            message: format!(
                "repaired {}: device active at {} and Docker's metadata says {}; it starts with its data",
                view.name,
                format_bytes(target),
                format_bytes(target)
            ),
            container: self.describe(&obs, &info),
        })
    }

    /// Finish resizes an earlier agent was killed in the middle of.
    /// Returns one line per scratch mount swept and per intent found, for
    /// the log.
    pub async fn recover(&self) -> Vec<String> {
        // Mounts first: a re-run must not find the device held by a mount
        // the killed agent never undid.
        let mut report = fs::sweep_scratch(&self.scratch_root());
        let journal = &self.inner.journal;
        let finished = journal
            .recover(|intent| async move { self.finish(&intent).await })
            .await;
        report.extend(finished);
        report
    }

    async fn finish(&self, intent: &Intent) -> Result<(), AgentError> {
        let _serialized = self.inner.locks.lock(&intent.container_id).await;
        let (view, info) = self.find(&intent.container_id).await?;
        let obs = self.observe_blocking(&view, &info).await?;
        self.apply_blocking(obs, intent.to_bytes, true).await?;
        self.inner.journal.clear(&intent.container_id)?;
        self.reconcile_locked(&view, &info).await.map(|_| ())
    }
}
/// How long each kernel step of a grow took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepTimes {
    pub(crate) device: std::time::Duration,
    pub(crate) fs: std::time::Duration,
    pub(crate) metadata: std::time::Duration,
}
