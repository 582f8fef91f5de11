//! The guard keeps grown containers startable until dockerd adopts their
//! new size (DESIGN.md F2, F5, F9).
//!
//! dockerd activates a device at the size it holds in memory, which is the
//! old size until dockerd restarts. So while a container is `pending`
//! (persisted size > dockerd's size):
//! - running, deferred removal on: the guard holds the device open, so a
//!   stop only marks it for removal and the next start finds it alive;
//! - stopped: the device stays active at the new size and unmarked (the
//!   guard cancels Docker's deferred removal, then lets go, so `docker rm`
//!   is not blocked by an open fd); if it is gone (the agent was down, or
//!   deferred removal is off) the guard activates it again.
//!
//! It acts on Docker's container events and on a periodic sweep.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;

use crate::backend::devicemapper::{Observed, ThinBackend};
use crate::backend::shared;
use crate::docker::{ContainerView, DaemonInfo};
use crate::error::AgentError;

/// Devices held open, by container id.
#[derive(Default)]
pub struct Guard {
    held: Mutex<HashMap<String, (String, File)>>,
}

impl Guard {
    /// Whether the guard holds this container's device open.
    pub fn holds(&self, container_id: &str) -> bool {
        self.held
            .lock()
            .expect("guard poisoned")
            .contains_key(container_id)
    }

    fn hold(&self, container_id: &str, device: &str) -> Result<(), AgentError> {
        let mut held = self.held.lock().expect("guard poisoned");
        if held.get(container_id).is_some_and(|(d, _)| d == device) {
            return Ok(());
        }
        let path = crate::sys::dm::mapper_path(device);
        let file = File::open(&path).map_err(|e| AgentError::io("hold open", &path, e))?;
        held.insert(container_id.to_string(), (device.to_string(), file));
        tracing::info!(
            device,
            "holding grown device open until dockerd adopts its size"
        );
        Ok(())
    }

    fn release(&self, container_id: &str) {
        if let Some((device, _)) = self
            .held
            .lock()
            .expect("guard poisoned")
            .remove(container_id)
        {
            tracing::info!(device, "released grown device");
        }
    }

    /// Container ids currently held.
    pub fn held_ids(&self) -> Vec<String> {
        self.held
            .lock()
            .expect("guard poisoned")
            .keys()
            .cloned()
            .collect()
    }
}

impl ThinBackend {
    /// Bring one container's protection in line with its state. The caller
    /// holds the container's lock.
    pub(crate) async fn reconcile_locked(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
    ) -> Result<Observed, AgentError> {
        let (this, view, info) = (self.clone(), view.clone(), info.clone());
        shared::on_blocking_thread(move || this.reconcile_blocking(&view, &info)).await
    }

    /// Returns the container as it is afterwards: what it read, or read
    /// again where it changed the device.
    fn reconcile_blocking(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
    ) -> Result<Observed, AgentError> {
        let guard = &self.inner.guard;
        let dm = &self.inner.dm;
        let obs = self.observe(view, info)?;
        let s = obs.sizes;
        let pending = s.persisted > s.docker && s.fs.is_none_or(|fs| fs <= s.persisted);
        if !pending {
            guard.release(&view.id);
            return Ok(obs);
        }
        match (view.running, obs.dev) {
            (true, Some(_)) => {
                if info.deferred_removal {
                    guard.hold(&view.id, &obs.device)?;
                }
            }
            (true, None) => {}
            (false, Some(state)) => {
                if state.deferred_remove {
                    // Docker has stopped the container and marked the device;
                    // keep it active without an fd.
                    dm.cancel_deferred_remove(&obs.device)?;
                    guard.release(&view.id);
                    tracing::info!(container = %view.name, "kept grown device active across stop");
                    return self.observe(view, info);
                }
                // Held and not yet marked: Docker is still tearing down and
                // will mark it; the next event or sweep lets go then. Not
                // held: active and unmarked already, as it should be.
            }
            (false, None) => {
                // Gone: the agent was down while it stopped, or deferred
                // removal is off. Activate it at the persisted size (F5).
                guard.release(&view.id);
                let pool = dm.device_number(&obs.pool)?;
                let table = crate::backend::devicemapper::table::ThinTable::new(
                    pool,
                    obs.device_id,
                    s.persisted,
                )?;
                dm.create(&obs.device, &table, false)?;
                tracing::warn!(container = %view.name, size = s.persisted, "re-activated grown device of a stopped container");
                return self.observe(view, info);
            }
        }
        Ok(obs)
    }

    /// Reconcile one container by id, taking its lock.
    pub async fn reconcile(&self, container_id: &str) -> Result<(), AgentError> {
        let _serialized = self.inner.locks.lock(container_id).await;
        match self.find(container_id).await {
            Ok((view, info)) => self.reconcile_locked(&view, &info).await.map(|_| ()),
            Err(AgentError::NotFound(_)) | Err(AgentError::WrongDriver { .. }) => {
                self.inner.guard.release(container_id);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sweep every devicemapper container whose size is not settled, plus
    /// every one the guard holds.
    pub async fn sweep(&self) -> Result<(), AgentError> {
        let info = self.inner.docker.info().await?;
        let mut ids = self.inner.guard.held_ids();
        // Every device's persisted size in one look (re-read only when
        // Docker's metadata changed), not a file read per container.
        let recorded = self.inner.provisioned.sizes(&info.root_dir);
        for view in self.inner.docker.known().await? {
            if view.driver != "devicemapper" {
                continue;
            }
            let persisted = view
                .mount_id(&info.root_dir)
                .and_then(|m| recorded.by_device.get(&m).copied());
            if persisted.is_some_and(|p| Some(p) != view.docker_size) {
                ids.push(view.id);
            }
        }
        ids.sort();
        ids.dedup();
        for id in ids {
            if let Err(e) = self.reconcile(&id).await {
                tracing::warn!(container = %id, error = %e, "guard could not reconcile");
            }
        }
        Ok(())
    }

    /// Run the guard until the process ends: a sweep now and every
    /// `interval`, and a reconcile on each container start/stop event.
    pub async fn run_guard(self, interval: Duration) {
        let sweeper = {
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = this.sweep().await {
                        tracing::warn!(error = %e, "guard sweep failed");
                    }
                    tokio::time::sleep(interval).await;
                }
            })
        };
        loop {
            let mut events = Box::pin(self.inner.docker.container_events());
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                let action = event.action.unwrap_or_default();
                let Some(id) = event.actor.and_then(|a| a.id) else {
                    continue;
                };
                if matches!(
                    action.as_str(),
                    "start" | "die" | "stop" | "destroy" | "restart"
                ) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        // Again a moment later: Docker deactivates the device
                        // after it reports the container's death.
                        for delay in [0, 1500] {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            if let Err(e) = this.reconcile(&id).await {
                                tracing::warn!(container = %id, error = %e, "guard could not reconcile");
                            }
                        }
                    });
                }
            }
            // dockerd went away (restart): reconnect after a pause.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if sweeper.is_finished() {
                break;
            }
        }
    }
}
