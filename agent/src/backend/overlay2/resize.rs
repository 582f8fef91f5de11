//! Growing an overlay2 container: raise its project's hard (and soft)
//! limit, as Docker set it at create. One quotactl does the growth; the
//! intent record around it lets a restarted agent finish what a killed one
//! started, and re-reading the quota proves XFS took it.

use std::time::{SystemTime, UNIX_EPOCH};

use roomy_proto::format_bytes;

use super::{Observed, Overlay2Backend};
use crate::backend::shared::{self, check_backing, Backing};
use crate::backend::{plan_grow, GrowAction, ResizeOutcome, SizeRequest};
use crate::docker::{ContainerView, DaemonInfo};
use crate::error::AgentError;
use crate::failpoint;
use crate::journal::Intent;

/// XFS rounds a limit up to its block size (4 KiB here; 64 KiB at most).
const XFS_ROUNDING: u64 = 64 << 10;

impl Overlay2Backend {
    /// Grow a container. See `StorageBackend::resize`.
    ///
    /// 1. Resolve the container (overlay2 only; the containerd image store
    ///    is refused), take its lock, re-read it under the lock.
    /// 2. Refuse a backing filesystem that is not XFS with prjquota, a
    ///    container with no limit, a shrink; the same size is a no-op.
    /// 3. Refuse growth the backing filesystem cannot back with its margin.
    /// 4. Intent record (fsync'd) *(failpoint `after-intent`)*.
    /// 5. Q_XSETQLIM hard = soft = target *(failpoint `after-grow`)*.
    /// 6. Re-read the quota: it must hold the target. Clear the intent.
    pub(crate) async fn resize_container(
        &self,
        query: &str,
        size: SizeRequest,
    ) -> Result<ResizeOutcome, AgentError> {
        let (_held, view, info) =
            shared::hold_container(&self.inner.locks, &self.inner.rows, query, |q| async move {
                self.find(&q).await
            })
            .await?;
        let this = self.clone();
        shared::on_blocking_thread(move || this.resize_locked(&view, &info, size)).await
    }

    fn resize_locked(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
        size: SizeRequest,
    ) -> Result<ResizeOutcome, AgentError> {
        let obs = self.observe(view, info)?;
        let current = obs.limit();
        if current == 0 {
            return Err(AgentError::NoLimit {
                container: view.name.clone(),
                backing: obs.backing.mount.point.display().to_string(),
                free: obs.backing.usage.avail,
            });
        }
        let target = plan_grow(&view.name, size, current)?;
        if target <= current {
            return Ok(ResizeOutcome {
                action: GrowAction::Unchanged { size: current },
                message: format!(
                    "{} is already {}: nothing changed",
                    view.name,
                    format_bytes(current)
                ),
                container: Self::describe(&obs),
            });
        }
        let backing = Backing {
            name: obs.backing.mount.point.display().to_string(),
            free: obs.backing.usage.avail,
            total: obs.backing.usage.total,
        };
        check_backing(
            &backing,
            &view.name,
            target - current,
            self.inner.config.pool_margin_percent,
        )?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.inner.journal.record(&Intent {
            container_id: view.id.clone(),
            container_name: view.name.clone(),
            device: obs.layer_dir.display().to_string(),
            from_bytes: current,
            to_bytes: target,
            started,
        })?;
        failpoint::hit("after-intent");
        let t0 = std::time::Instant::now();
        let obs = self.set_limit(&obs, target)?;
        failpoint::hit("after-grow");
        self.inner.journal.clear(&view.id)?;
        tracing::info!(
            container = %view.name,
            project = obs.project.id,
            from = current,
            to = obs.limit(),
            quota_ms = t0.elapsed().as_millis() as u64,
            "grown"
        );
        Ok(ResizeOutcome {
            action: GrowAction::Grown {
                from: current,
                to: obs.limit(),
            },
            message: format!(
                "grew {} from {} to {} {}",
                view.name,
                format_bytes(current),
                format_bytes(obs.limit()),
                if view.running {
                    "online"
                } else {
                    "while stopped; it starts at the new size"
                }
            ),
            container: Self::describe(&obs),
        })
    }

    /// Raise the project's limit to `target` (never lower it) and prove it
    /// took: the quota re-read holds at least `target`.
    fn set_limit(&self, obs: &Observed, target: u64) -> Result<Observed, AgentError> {
        let door = self.door(&obs.backing.home)?;
        if obs.limit() < target {
            door.set_limit(obs.project.id, target)?;
        }
        let after = door.get(obs.project.id)?;
        if after.hard_bytes < target || after.hard_bytes > target + XFS_ROUNDING {
            return Err(AgentError::Quota {
                op: "verify the new limit",
                path: obs.layer_dir.display().to_string(),
                detail: format!(
                    "asked for {} and XFS holds {}; check `xfs_quota -x -c 'report -p' {}`",
                    format_bytes(target),
                    format_bytes(after.hard_bytes),
                    obs.backing.mount.point.display()
                ),
            });
        }
        Ok(Observed {
            quota: Some(after),
            ..obs.clone()
        })
    }

    /// Finish resizes an earlier agent left unfinished (intent records), at
    /// start, before serving. Returns one line per record for the log.
    pub async fn recover(&self) -> Vec<String> {
        let journal = &self.inner.journal;
        journal
            .recover(|intent| async move { self.finish(&intent).await })
            .await
    }

    async fn finish(&self, intent: &Intent) -> Result<(), AgentError> {
        let _serialized = self.inner.locks.lock(&intent.container_id).await;
        let (view, info) = self.find(&intent.container_id).await?;
        let obs = self.observe_blocking(&view, &info, None).await?;
        let this = self.clone();
        let target = intent.to_bytes;
        shared::on_blocking_thread(move || this.set_limit(&obs, target)).await?;
        self.inner.journal.clear(&intent.container_id)
    }
}
