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
//! It acts on Docker's container events and on a periodic sweep. The
//! sweep is the net for what events miss (a gap in the event stream, a
//! teardown slower than the second look after an event); it leaves alone a
//! container whose last reconcile found it steady while Docker's view of
//! it stays the same, for up to `SETTLED_RECHECK`. Re-reading every pending
//! container every 5 s was a `docker inspect` and a dozen device reads
//! each: on a host where policies had grown 200 containers (all pending
//! until dockerd restarts), 40 inspects a second for nothing.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::backend::devicemapper::{Observed, ThinBackend};
use crate::backend::shared;
use crate::docker::{ContainerView, DaemonInfo};
use crate::error::AgentError;

/// How long the sweep leaves a steady container to events while its view
/// is the same; then it looks again (a device removed by hand).
const SETTLED_RECHECK: Duration = Duration::from_secs(300);

/// Devices held open, by container id.
#[derive(Default)]
pub struct Guard {
    held: Mutex<HashMap<String, (String, File)>>,
    /// Containers whose last reconcile left them steady: the view it was
    /// made for, and when.
    settled: Mutex<HashMap<String, (ContainerView, Instant)>>,
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

    /// Remember how the last reconcile of `view`'s container left it.
    fn settle(&self, view: &ContainerView, steady: bool, now: Instant) {
        let mut settled = self.settled.lock().expect("guard poisoned");
        if steady {
            settled.insert(view.id.clone(), (view.clone(), now));
        } else {
            settled.remove(&view.id);
        }
    }

    fn unsettle(&self, container_id: &str) {
        self.settled
            .lock()
            .expect("guard poisoned")
            .remove(container_id);
    }

    /// Whether the sweep may leave this container to events: its last
    /// reconcile found it steady, for this same view, less than
    /// `SETTLED_RECHECK` ago.
    fn is_settled(&self, view: &ContainerView, now: Instant) -> bool {
        self.settled
            .lock()
            .expect("guard poisoned")
            .get(&view.id)
            .is_some_and(|(v, at)| {
                v == view && now.saturating_duration_since(*at) < SETTLED_RECHECK
            })
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
        let (this, v, i) = (self.clone(), view.clone(), info.clone());
        let result = shared::on_blocking_thread(move || this.reconcile_blocking(&v, &i)).await;
        match &result {
            Ok(obs) => self
                .inner
                .guard
                .settle(view, self.steady(obs, info), Instant::now()),
            Err(_) => self.inner.guard.unsettle(&view.id),
        }
        result
    }

    /// Whether a reconcile left the container where only an event (or a
    /// hand) can move it: not pending; running with its device held (or
    /// no deferred removal to guard against); stopped with its device
    /// active, unmarked and not held. Anything else is mid-way (Docker
    /// still tearing down) and the next sweep looks again.
    fn steady(&self, obs: &Observed, info: &DaemonInfo) -> bool {
        if !obs.sizes.pending() {
            return true;
        }
        let held = self.inner.guard.holds(&obs.view.id);
        match (obs.view.running, &obs.dev) {
            (true, Some(_)) => held || !info.deferred_removal,
            (false, Some(state)) => !state.deferred_remove && !held,
            _ => false,
        }
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
        if !obs.sizes.pending() {
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
                    obs.sizes.persisted,
                )?;
                dm.create(&obs.device, &table, false)?;
                tracing::warn!(container = %view.name, size = obs.sizes.persisted, "re-activated grown device of a stopped container");
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
                self.inner.guard.unsettle(container_id);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sweep every devicemapper container whose size dockerd has not
    /// adopted, plus every one the guard holds, except those left steady
    /// by their last reconcile under the same view (see the module doc).
    pub async fn sweep(&self) -> Result<(), AgentError> {
        let info = self.inner.docker.info().await?;
        let guard = &self.inner.guard;
        let mut held: std::collections::HashSet<String> = guard.held_ids().into_iter().collect();
        // Every device's persisted size in one look (re-read only when
        // Docker's metadata changed), not a file read per container.
        let recorded = self.inner.provisioned.sizes(&info.root_dir);
        let now = Instant::now();
        // Looked at in place: only the ids to reconcile are copied. (A
        // view's mount id is read once, then memoized: `MountIdMemo`.)
        let mut ids = self
            .inner
            .docker
            .with_known(|views| {
                let mut ids = Vec::new();
                for view in views {
                    if view.driver != "devicemapper" {
                        continue;
                    }
                    let was_held = held.remove(&view.id);
                    let persisted = view
                        .mount_id(&info.root_dir)
                        .and_then(|m| recorded.by_device.get(&m).copied());
                    let pending = persisted.is_some_and(|p| Some(p) != view.docker_size);
                    if (pending || was_held) && !guard.is_settled(view, now) {
                        ids.push(view.id.clone());
                    }
                }
                ids
            })
            .await?;
        // Held, but Docker no longer knows it: removed.
        ids.extend(held);
        ids.sort();
        for id in ids {
            if let Err(e) = self.reconcile(&id).await {
                tracing::warn!(container = %id, error = %e, "guard could not reconcile");
            }
        }
        Ok(())
    }

    /// Run the guard until the process ends: a sweep now and every
    /// `interval` (on `beat`: with the sampler's passes), and a reconcile
    /// on each container start/stop event.
    pub async fn run_guard(self, interval: Duration, beat: crate::beat::Beat) {
        let sweeper = {
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = this.sweep().await {
                        tracing::warn!(error = %e, "guard sweep failed");
                    }
                    beat.sleep(interval).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn view(running: bool) -> ContainerView {
        ContainerView {
            id: "a".repeat(64),
            name: "web".into(),
            running,
            driver: "devicemapper".into(),
            docker_size: Some(10 << 30),
            ..Default::default()
        }
    }

    /// The sweep leaves a steady container to events only while Docker's
    /// view of it is the one reconciled, and only for so long.
    #[test]
    fn a_steady_container_is_left_to_events_while_its_view_holds() {
        let guard = Guard::default();
        let t0 = Instant::now();
        let running = view(true);
        assert!(!guard.is_settled(&running, t0), "never reconciled");
        guard.settle(&running, true, t0);
        assert!(guard.is_settled(&running, t0 + Duration::from_secs(60)));
        // Stopped (an event the stream missed shows in the cache's view).
        assert!(!guard.is_settled(&view(false), t0));
        // dockerd restarted and adopted the size.
        let adopted = ContainerView {
            docker_size: Some(20 << 30),
            ..running.clone()
        };
        assert!(!guard.is_settled(&adopted, t0));
        // Looked at again after the recheck period, however steady.
        assert!(!guard.is_settled(&running, t0 + SETTLED_RECHECK));
        // A reconcile that left it mid-way, or failed: swept again.
        guard.settle(&running, false, t0);
        assert!(!guard.is_settled(&running, t0));
        guard.settle(&running, true, t0);
        guard.unsettle(&running.id);
        assert!(!guard.is_settled(&running, t0));
    }
}
