//! The agent's end of the controller's Sync stream: the policy set comes
//! down and is kept on local disk (so the agent enforces it across its own
//! restarts and while the controller is away); events go up from the
//! on-disk buffer until acknowledged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prost::Message;
use roomy_policy::validate;
use roomy_proto::v1::{sync_request, Event, PolicySet, SyncRequest};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use crate::backend::shared::off_the_worker;
use crate::error::AgentError;
use crate::events::EventLog;
use crate::sys::atomic::write_atomically;

/// Events taken from the buffer at a time for the stream.
const SEND_BATCH: usize = 1024;

/// The last policy set from the controller, on disk and in memory.
pub struct PolicyStore {
    path: PathBuf,
    current: watch::Sender<Arc<PolicySet>>,
}

impl PolicyStore {
    /// Load `policies.pb` from `dir`, or start with none.
    pub fn open(dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::Internal(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("policies.pb");
        let set = match std::fs::read(&path) {
            Ok(bytes) => PolicySet::decode(bytes.as_slice()).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "unreadable policy copy, starting with none until the controller sends them: {e}");
                PolicySet::default()
            }),
            Err(_) => PolicySet::default(),
        };
        if !set.policies.is_empty() {
            tracing::info!(
                count = set.policies.len(),
                "enforcing the policies kept from the controller's last sync"
            );
        }
        Ok(PolicyStore {
            path,
            current: watch::Sender::new(Arc::new(set)),
        })
    }

    /// Adopt a new set: keep the valid policies (an invalid one can only
    /// come from a newer controller; it is skipped, loudly), write them to
    /// disk first, then enforce them.
    pub fn replace(&self, mut set: PolicySet) -> Result<(), AgentError> {
        set.policies.retain(|p| match validate(p) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("not enforcing: {e}");
                false
            }
        });
        if **self.current.borrow() == set {
            return Ok(());
        }
        write_atomically(&self.path, &set.encode_to_vec())
            .map_err(|e| AgentError::Internal(format!("write {}: {e}", self.path.display())))?;
        tracing::info!(
            count = set.policies.len(),
            host = %set.host,
            "policy set from the controller adopted"
        );
        self.current.send_replace(Arc::new(set));
        Ok(())
    }

    /// The set in force.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.borrow().clone()
    }

    /// Told of each set adopted after this call.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySet>> {
        self.current.subscribe()
    }
}

/// Serves Sync streams; one at a time (a new stream ends the old one).
pub struct SyncHub {
    policies: Arc<PolicyStore>,
    events: Arc<EventLog>,
    /// Bumped by each new stream; the older one's sender sees it and ends.
    generation: watch::Sender<u64>,
    connected: AtomicBool,
}

impl SyncHub {
    /// A hub over the store and the buffer.
    pub fn new(policies: Arc<PolicyStore>, events: Arc<EventLog>) -> Self {
        SyncHub {
            policies,
            events,
            generation: watch::Sender::new(0),
            connected: AtomicBool::new(false),
        }
    }

    /// Whether a controller's stream is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// A new stream: the older one's sender ends. Its generation.
    fn begin(&self) -> u64 {
        let mut generation = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        self.connected.store(true, Ordering::Relaxed);
        generation
    }

    /// Whether `generation` is the newest stream.
    fn current(&self, generation: u64) -> bool {
        *self.generation.borrow() == generation
    }

    /// Run one stream: read policy sets and acks from `inbound`, send
    /// pending events on the returned channel, oldest first.
    pub fn session(
        self: &Arc<Self>,
        mut inbound: Streaming<SyncRequest>,
    ) -> mpsc::Receiver<Result<Event, Status>> {
        let generation = self.begin();
        let (tx, rx) = mpsc::channel(64);
        let hub = self.clone();
        tokio::spawn(async move {
            // An older stream's reader runs until the controller closes it;
            // what it still delivers (a policy set, an ack) is harmless.
            loop {
                match inbound.message().await {
                    Ok(Some(SyncRequest { msg: Some(m) })) => {
                        // Both may sync to disk: off the one worker's back.
                        let done = off_the_worker(|| match m {
                            sync_request::Msg::Policies(set) => hub.policies.replace(set),
                            sync_request::Msg::Ack(seq) => hub.events.ack(seq),
                        });
                        if let Err(e) = done {
                            tracing::error!("sync: {e}");
                        }
                    }
                    Ok(Some(SyncRequest { msg: None })) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            if hub.current(generation) {
                hub.connected.store(false, Ordering::Relaxed);
            }
        });
        tokio::spawn(self.clone().send_events(generation, tx));
        rx
    }

    /// Send the buffer's events on `tx` until a newer stream begins, the
    /// stream closes, or the agent stops.
    async fn send_events(
        self: Arc<Self>,
        generation: u64,
        tx: mpsc::Sender<Result<Event, Status>>,
    ) {
        let mut latest = self.events.subscribe();
        let mut superseded = self.generation.subscribe();
        // Everything unacknowledged goes again on a new stream: the
        // controller keeps (host, seq) unique, so nothing doubles.
        let mut sent = 0;
        loop {
            // Marked seen before looking: what changes from here on wakes
            // the wait below.
            latest.borrow_and_update();
            superseded.borrow_and_update();
            if !self.current(generation) || tx.is_closed() {
                return;
            }
            // In batches, so a long backlog is neither copied whole nor
            // held under the buffer's lock.
            let batch = self.events.after(sent, SEND_BATCH);
            let more = batch.len() == SEND_BATCH;
            for event in batch {
                sent = event.seq;
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                // Nothing to poll for: a new event or a newer stream wakes
                // this one (a timer here woke every idle agent each second).
                Ok(()) = latest.changed() => {}
                Ok(()) = superseded.changed() => {}
                _ = tx.closed() => return,
                // Ending the stream lets the server's graceful stop finish.
                _ = roomy_daemon::signal::shutdown() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(n: u64) -> Event {
        Event {
            message: format!("event {n}"),
            ..Default::default()
        }
    }

    /// Events reach the stream as they are appended, and a newer stream
    /// ends the older one at once: no timer polls for either (one used to
    /// wake every idle agent each second, and ended an old stream only at
    /// its next tick).
    #[tokio::test]
    async fn events_flow_and_a_newer_stream_ends_the_older_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(EventLog::open(dir.path()).unwrap());
        let hub = Arc::new(SyncHub::new(
            Arc::new(PolicyStore::open(dir.path()).unwrap()),
            events.clone(),
        ));
        events.append(event(1)).unwrap();
        let (tx, mut old) = mpsc::channel(64);
        tokio::spawn(hub.clone().send_events(hub.begin(), tx));
        async fn within(d: u64, rx: &mut mpsc::Receiver<Result<Event, Status>>) -> Option<Event> {
            let got = tokio::time::timeout(Duration::from_millis(d), rx.recv());
            got.await.expect("nothing in time").map(|e| e.unwrap())
        }
        assert_eq!(within(2000, &mut old).await.unwrap().message, "event 1");
        // Let the sender settle into its wait, then append.
        tokio::time::sleep(Duration::from_millis(50)).await;
        events.append(event(2)).unwrap();
        assert_eq!(within(500, &mut old).await.unwrap().message, "event 2");

        tokio::time::sleep(Duration::from_millis(50)).await;
        let newer = hub.begin();
        // Within half a second: ended, not polled for.
        assert!(
            within(500, &mut old).await.is_none(),
            "the old stream sent more"
        );
        // The newer one sends everything unacknowledged again.
        let (tx, mut new) = mpsc::channel(64);
        tokio::spawn(hub.clone().send_events(newer, tx));
        assert_eq!(new.recv().await.unwrap().unwrap().message, "event 1");
        assert!(hub.connected());
    }
}
