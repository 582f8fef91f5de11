//! Policies down, events up: one standing Sync stream per agent.
//!
//! For every registered host a link task opens the agent's Sync stream,
//! sends the policy set (and again on every change), and stores each event
//! the agent sends before acknowledging it, so an event is acknowledged
//! only once it is durable here. A policy's action is audited in the same
//! transaction, with principal `policy:<name>@<host>`. New events go on to
//! `roomyctl events --follow` and to the webhooks. A broken stream is
//! reopened with backoff; meanwhile the agent enforces its last copy and
//! buffers its events.
//!
//! Only the leader holds links (`crate::leader`); every controller re-reads
//! hosts and policies from the store each second, so what one controller
//! changes reaches the leader, and a new leader starts from the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use roomy_proto::v1::{sync_request, Event, EventKind, Policy, PolicySet, SyncRequest};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::error::ControllerError;
use crate::leader::Leadership;
use crate::metrics::ControllerMetrics;
use crate::registry::Registry;
use crate::reopen::PerHost;
use crate::store::{AuditRecord, Store};
use crate::webhook::Webhooks;

/// Events stored at most per transaction (and acknowledged at once).
const INGEST_BATCH: usize = 512;

/// The links to every agent.
pub struct Distributor {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    policies: watch::Sender<Arc<Vec<Policy>>>,
    events: broadcast::Sender<Event>,
    webhooks: Webhooks,
    metrics: Arc<ControllerMetrics>,
    leadership: Leadership,
    /// Each host's link task, and whether its stream is open.
    links: PerHost<Arc<AtomicBool>>,
}

impl Distributor {
    /// A distributor with the store's policies.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
        webhooks: Webhooks,
        metrics: Arc<ControllerMetrics>,
        leadership: Leadership,
    ) -> Result<Arc<Self>, ControllerError> {
        let policies = watch::Sender::new(Arc::new(store.policies()?));
        Ok(Arc::new(Distributor {
            registry,
            store,
            policies,
            events: broadcast::channel(1024).0,
            webhooks,
            metrics,
            leadership,
            links: PerHost::default(),
        }))
    }

    /// Re-read the policies from the store and send them to every agent
    /// when they changed.
    pub fn reload(&self) -> Result<(), ControllerError> {
        let now = self.store.policies()?;
        self.policies.send_if_modified(|current| {
            let changed = **current != now;
            if changed {
                *current = Arc::new(now);
            }
            changed
        });
        Ok(())
    }

    /// Whether this controller leads (holds the agents' links).
    pub fn leading(&self) -> bool {
        self.leadership.is_leader()
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<Vec<Policy>> {
        self.policies.borrow().clone()
    }

    /// New events as they are stored.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Where a store that sees other controllers' events (etcd's watch)
    /// sends them; followers read them with [`Distributor::subscribe`].
    pub fn event_sender(&self) -> broadcast::Sender<Event> {
        self.events.clone()
    }

    /// Whether the link to `host` is open now.
    pub fn connected(&self, host: &str) -> bool {
        self.links
            .with(host, |connected| connected.load(Ordering::Relaxed))
            .unwrap_or(false)
    }

    /// Keep one link per registered host while leading, for good.
    pub fn spawn(self: &Arc<Self>) {
        let this = self.clone();
        let mut leadership = self.leadership.clone();
        // Only a shared store changes behind this controller's back; on
        // its own store, every change goes through its service, which
        // reloads at once.
        let shared = self.store.shared();
        tokio::spawn(async move {
            loop {
                if shared {
                    // The store's calls block: off the async workers.
                    let reader = this.clone();
                    let refreshed = tokio::task::spawn_blocking(move || {
                        reader.registry.sync_from_store()?;
                        reader.reload()
                    })
                    .await;
                    if let Ok(Err(e)) = refreshed {
                        tracing::warn!("re-reading hosts and policies from the store: {e}");
                    }
                }
                if leadership.is_leader() {
                    this.reconcile();
                } else {
                    this.stop_links();
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = leadership.changed() => {}
                }
            }
        });
    }

    /// Not leading: the agents' streams are the leader's.
    fn stop_links(&self) {
        let links = self.links.stop_all();
        if links > 0 {
            tracing::info!(links, "not leading: closing the agents' sync links");
        }
    }

    /// Start links for new hosts, stop those of removed ones.
    fn reconcile(self: &Arc<Self>) {
        self.links.reconcile(&self.registry.names(), |host| {
            let connected = Arc::new(AtomicBool::new(false));
            let this = self.clone();
            let (h, c) = (host.to_string(), connected.clone());
            (
                tokio::spawn(async move { this.link(h, c).await }),
                connected,
            )
        });
    }

    async fn link(self: Arc<Self>, host: String, connected: Arc<AtomicBool>) {
        crate::reopen::forever(
            &self.registry,
            &host,
            "sync link",
            || self.session(&host, &connected),
            || connected.store(false, Ordering::Relaxed),
        )
        .await;
    }

    /// One stream, until it breaks.
    async fn session(&self, host: &str, connected: &AtomicBool) -> Result<(), Status> {
        let mut client = self.registry.client(host)?;
        let mut policies = self.policies.subscribe();
        // Each agent gets the policies whose host glob matches it.
        let set = |p: &[Policy]| SyncRequest {
            msg: Some(sync_request::Msg::Policies(PolicySet {
                policies: p
                    .iter()
                    .filter(|p| {
                        let glob = p.selector.as_ref().map_or("", |s| s.host.as_str());
                        roomy_policy::glob_match(glob, host)
                    })
                    .cloned()
                    .collect(),
                host: host.to_string(),
            })),
        };
        let (tx, rx) = mpsc::channel(16);
        let first = set(&policies.borrow_and_update());
        tx.send(first).await.expect("receiver is alive");
        let mut inbound = client
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        connected.store(true, Ordering::Relaxed);
        self.registry.observe(host, Ok(()));
        tracing::info!(%host, "sync link open: policies sent, events flowing");
        let closed = || Status::unavailable("sync stream closed");
        loop {
            tokio::select! {
                changed = policies.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let next = set(&policies.borrow_and_update());
                    tx.send(next).await.map_err(|_| closed())?;
                }
                message = inbound.message() => {
                    let Some(event) = message? else {
                        return Err(closed());
                    };
                    // What has arrived already goes into the same
                    // transaction, under one ack: a backlog is stored at
                    // the disk's write speed, not one fsync per event.
                    let mut batch = vec![event];
                    let mut ended = false;
                    while batch.len() < INGEST_BATCH {
                        match inbound.message().now_or_never() {
                            Some(Ok(Some(event))) => batch.push(event),
                            None => break,
                            Some(Ok(None) | Err(_)) => {
                                ended = true;
                                break;
                            }
                        }
                    }
                    let seq = batch.last().map_or(0, |e| e.seq);
                    self.accept(host, batch).await?;
                    let ack = SyncRequest { msg: Some(sync_request::Msg::Ack(seq)) };
                    tx.send(ack).await.map_err(|_| closed())?;
                    if ended {
                        return Err(closed());
                    }
                }
            }
        }
    }

    /// An event as stored: stamped with its host, and the audit entry of
    /// the action it reports, if any.
    fn record(host: &str, mut event: Event) -> (Event, Option<AuditRecord>) {
        event.host = host.to_string();
        let kind = EventKind::try_from(event.kind).unwrap_or(EventKind::Unspecified);
        let pool = event.target == "pool";
        let audit = matches!(kind, EventKind::Grown | EventKind::Failed).then(|| AuditRecord {
            time_ms: event.time_ms,
            principal: format!("policy:{}@{host}", event.policy),
            action: if pool { "pool grow" } else { "resize" }.into(),
            target: if pool {
                host.to_string()
            } else {
                format!("{host}/{}", event.target)
            },
            from_bytes: event.from_bytes,
            to_bytes: event.to_bytes,
            result: if kind == EventKind::Grown {
                "ok".into()
            } else {
                "failed".into()
            },
            message: event.message.clone(),
        });
        (event, audit)
    }

    /// Store a batch of events (and audit their actions) once, in one
    /// transaction off the async workers; pass the new ones on.
    async fn accept(&self, host: &str, events: Vec<Event>) -> Result<(), Status> {
        let records: Vec<_> = events.into_iter().map(|e| Self::record(host, e)).collect();
        let store = self.store.clone();
        let (records, added) = tokio::task::spawn_blocking(move || {
            let added = store.record_events(&records);
            (records, added)
        })
        .await
        .map_err(|e| Status::internal(format!("storing events: {e}")))?;
        let added = added.map_err(Status::from)?;
        if added.contains(&true) {
            self.webhooks.stored(host);
        }
        for ((event, audit), new) in records.into_iter().zip(added) {
            if !new {
                continue;
            }
            if let Some(a) = &audit {
                self.metrics.audit(&a.action, &a.result);
            }
            let kind = EventKind::try_from(event.kind).unwrap_or(EventKind::Unspecified);
            self.metrics.event(host, kind.word(), &event.reason);
            // No followers is fine.
            let _ = self.events.send(event);
        }
        Ok(())
    }
}
