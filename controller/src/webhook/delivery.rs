//! Where a webhook's events come from: the store, read on from the
//! webhook's cursor ([`WebhookCursor`]) by the controller that leads.
//!
//! The store is the queue. Per target, while this controller leads:
//! 1. Read the cursor; a webhook never seen before gets one that starts
//!    now (its `since_ms`), saved at once.
//! 2. Every registered host, and every host the cursor knows, is read on
//!    from its entry: what was stored while no one delivered (a restart,
//!    a failover) goes out first.
//! 3. Then only the hosts the distributor says got new events
//!    ([`super::Webhooks::stored`]).
//! 4. Per host, in sequence order: an event of a wanted kind, from after
//!    `since_ms`, is sent until delivered or given up on; the cursor moves
//!    past every event and is saved after each sent one (so a failover
//!    resends at most the one in flight) and at the end of a read.
//!
//! On etcd the cursor's writes are fenced like the leader's event writes:
//! a deposed leader cannot move it. Losing the lead stops delivery at
//! once, mid-retry included; the new leader resends what was unsaved.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomy_proto::v1::EventKind;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::{payload, Endpoint};
use crate::clock::now_ms;
use crate::error::ControllerError;
use crate::leader::Leadership;
use crate::store::{Store, WebhookCursor};

/// Events read from the store at once, per host.
const BATCH: u32 = 256;
/// After a store error (etcd without a majority), delivery tries again in this.
const RETRY: Duration = Duration::from_secs(1);

/// Hosts with new events, and a wakeup for the task.
#[derive(Debug, Default)]
pub(super) struct Wake {
    hosts: Mutex<BTreeSet<String>>,
    notify: Notify,
}

impl Wake {
    pub(super) fn host(&self, host: &str) {
        self.hosts
            .lock()
            .expect("wake poisoned")
            .insert(host.to_owned());
        // A permit is kept when the task is busy: no wakeup is lost.
        self.notify.notify_one();
    }

    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.hosts.lock().expect("wake poisoned"))
    }
}

/// One target's task.
pub(super) struct Delivery {
    pub(super) endpoint: Endpoint,
    pub(super) kinds: Vec<EventKind>,
    pub(super) store: Arc<dyn Store>,
    pub(super) leadership: Leadership,
    pub(super) wake: Arc<Wake>,
}

impl Delivery {
    /// Deliver while leading, until `stop`'s sender is dropped.
    pub(super) async fn run(mut self, mut stop: watch::Receiver<()>) {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = leading(&mut self.leadership) => {}
            }
            let outcome = tokio::select! {
                _ = stop.changed() => return,
                outcome = self.lead() => outcome,
            };
            if let Err(e) = outcome {
                warn!(webhook = %self.endpoint.label, "webhook delivery paused: {e}; again in {RETRY:?}");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }

    /// One term as leader: returns when it ends, or on a store error.
    async fn lead(&mut self) -> Result<(), ControllerError> {
        let label = self.endpoint.label.clone();
        let mut cursor = match self.blocking(move |s| s.webhook_cursor(&label)).await? {
            Some(cursor) => cursor,
            None => {
                let cursor = WebhookCursor {
                    since_ms: now_ms(),
                    ..Default::default()
                };
                self.save(&cursor).await?;
                info!(webhook = %self.endpoint.label, "new webhook: it gets the events stored from now on");
                cursor
            }
        };
        let mut pending: BTreeSet<String> = self
            .blocking(|s| s.hosts())
            .await?
            .into_iter()
            .map(|h| h.name)
            .collect();
        pending.extend(cursor.hosts.keys().cloned());
        loop {
            pending.extend(self.wake.take());
            if pending.is_empty() {
                tokio::select! {
                    _ = self.wake.notify.notified() => continue,
                    _ = lost(&mut self.leadership) => return Ok(()),
                }
            }
            for host in std::mem::take(&mut pending) {
                if !self.catch_up(&host, &mut cursor).await? {
                    return Ok(());
                }
            }
        }
    }

    /// Send `host`'s events after its cursor entry; false when the lead
    /// was lost meanwhile.
    async fn catch_up(
        &mut self,
        host: &str,
        cursor: &mut WebhookCursor,
    ) -> Result<bool, ControllerError> {
        let mut unsaved = false;
        loop {
            let after = cursor.hosts.get(host).copied().unwrap_or(0);
            let owned = host.to_owned();
            let batch = self
                .blocking(move |s| s.events_after(&owned, after, BATCH))
                .await?;
            let more = batch.len() == BATCH as usize;
            for event in batch {
                let kind = EventKind::try_from(event.kind).unwrap_or(EventKind::Unspecified);
                // Older than the webhook: it was not there to be told.
                let send = self.kinds.contains(&kind) && event.time_ms >= cursor.since_ms;
                if send {
                    let word = kind.word();
                    let what = format!("{}/{} {word} seq {}", event.host, event.target, event.seq);
                    let body = payload(&event, kind, word);
                    tokio::select! {
                        _ = self.endpoint.send(body, &what) => {}
                        _ = lost(&mut self.leadership) => return Ok(false),
                    }
                }
                cursor.hosts.insert(host.to_owned(), event.seq);
                unsaved = true;
                if send {
                    self.save(cursor).await?;
                    unsaved = false;
                }
            }
            if !more {
                break;
            }
        }
        if unsaved {
            self.save(cursor).await?;
        }
        Ok(true)
    }

    async fn save(&self, cursor: &WebhookCursor) -> Result<(), ControllerError> {
        let (label, cursor) = (self.endpoint.label.clone(), cursor.clone());
        self.blocking(move |s| s.put_webhook_cursor(&label, &cursor))
            .await
    }

    /// A store call off the async workers (SQLite and etcd calls block).
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Store) -> Result<T, ControllerError> + Send + 'static,
    ) -> Result<T, ControllerError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || call(&*store))
            .await
            .map_err(|e| ControllerError::Store(format!("webhook store call: {e}")))?
    }
}

/// Resolves once this controller leads.
async fn leading(leadership: &mut Leadership) {
    while !leadership.is_leader() {
        leadership.changed().await;
    }
}

/// Resolves once this controller no longer leads (never, for the only one).
async fn lost(leadership: &mut Leadership) {
    while leadership.is_leader() {
        leadership.changed().await;
    }
}
