//! The agent's end of the controller's Sync stream: the policy set comes
//! down and is kept on local disk (so the agent enforces it across its own
//! restarts and while the controller is away); events go up from the
//! on-disk buffer until acknowledged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use roomy_policy::validate;
use roomy_proto::v1::{sync_request, Event, PolicySet, SyncRequest};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

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
}

/// Serves Sync streams; one at a time (a new stream ends the old one).
pub struct SyncHub {
    policies: Arc<PolicyStore>,
    events: Arc<EventLog>,
    generation: AtomicU64,
    connected: AtomicBool,
}

impl SyncHub {
    /// A hub over the store and the buffer.
    pub fn new(policies: Arc<PolicyStore>, events: Arc<EventLog>) -> Self {
        SyncHub {
            policies,
            events,
            generation: AtomicU64::new(0),
            connected: AtomicBool::new(false),
        }
    }

    /// Whether a controller's stream is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Run one stream: read policy sets and acks from `inbound`, send
    /// pending events on the returned channel, oldest first.
    pub fn session(
        self: &Arc<Self>,
        mut inbound: Streaming<SyncRequest>,
    ) -> mpsc::Receiver<Result<Event, Status>> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.connected.store(true, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        let hub = self.clone();
        let current = move |hub: &SyncHub| hub.generation.load(Ordering::SeqCst) == generation;
        tokio::spawn(async move {
            // An older stream's reader runs until the controller closes it;
            // what it still delivers (a policy set, an ack) is harmless.
            loop {
                match inbound.message().await {
                    Ok(Some(SyncRequest { msg: Some(m) })) => {
                        let done = match m {
                            sync_request::Msg::Policies(set) => hub.policies.replace(set),
                            sync_request::Msg::Ack(seq) => hub.events.ack(seq),
                        };
                        if let Err(e) = done {
                            tracing::error!("sync: {e}");
                        }
                    }
                    Ok(Some(SyncRequest { msg: None })) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            if current(&hub) {
                hub.connected.store(false, Ordering::Relaxed);
            }
        });
        let hub = self.clone();
        tokio::spawn(async move {
            let mut latest = hub.events.subscribe();
            // Everything unacknowledged goes again on a new stream: the
            // controller keeps (host, seq) unique, so nothing doubles.
            let mut sent = 0;
            while current(&hub) && !tx.is_closed() {
                latest.borrow_and_update();
                // In batches, so a long backlog is neither copied whole nor
                // held under the buffer's lock.
                let batch = hub.events.after(sent, SEND_BATCH);
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
                    _ = latest.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                    // Ending the stream lets the server's graceful stop finish.
                    _ = roomy_daemon::signal::shutdown() => return,
                }
            }
        });
        rx
    }
}
