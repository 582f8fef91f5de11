//! The etcd engine: the fleet's state under one key prefix of an etcd
//! cluster, so several controllers can share it.
//!
//! Keys, under the prefix P (`/roomy/` unless configured):
//!
//! | key | value |
//! |---|---|
//! | `P hosts/NAME` | [`HostRecord`], JSON |
//! | `P policies/NAME` | `Policy`, protobuf |
//! | `P audit/TIME_MS/ID` | [`AuditRecord`], JSON; TIME_MS has 16 digits, so keys sort by time |
//! | `P events/HOST/SEQ` | `Event`, protobuf; SEQ has 20 digits, so a host's keys sort by sequence |
//! | `P webhooks/NAME` | [`WebhookCursor`], JSON; written only by the leader (fenced) |
//!
//! An event's key is its (host, seq): a resent event finds its key taken
//! and is not stored twice, which is SQLite's `UNIQUE (host, seq)` here.
//!
//! The [`Store`] trait is synchronous, and SQLite's calls block their
//! caller too; an etcd call runs on this store's own one-thread runtime
//! and its caller waits for the answer with a deadline, so an etcd that
//! lost its quorum is an error after `timeout`, not a request that hangs.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use prost::Message;
use roomy_proto::v1::{Event, Policy};
use tokio::sync::watch;

use super::{
    cursor_from_json, cursor_json, decode, AuditRecord, HostRecord, Pruned, Store, WebhookCursor,
};
use crate::error::ControllerError;
use crate::leader::Leadership;

/// etcd refuses a transaction of more than 128 operations (its
/// `--max-txn-ops` default); an event and its audit entry are two puts.
const EVENTS_PER_TXN: usize = 60;

/// Where and how to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs, `http://` or (with `tls`) `https://`.
    pub endpoints: Vec<String>,
    /// Every key the controller writes starts with this; ends with `/`.
    pub prefix: String,
    /// Mutual TLS to etcd.
    pub tls: Option<EtcdTls>,
    /// Deadline of one store call.
    pub timeout: Duration,
    /// The leader's lease: a leader that died is replaced within this.
    pub lease_ttl: Duration,
}

/// PEM files for mutual TLS to etcd.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificates.
    pub ca: PathBuf,
    /// The controller's client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// The controller's state in etcd.
pub struct EtcdStore {
    /// No per-request deadline on the channel: it would cut a campaign's
    /// wait and the lease's keep-alive stream; store calls get theirs from
    /// `bridge`.
    client: Client,
    /// The election key and its create revision of this controller's
    /// latest term as leader: the leader's writes hold only while that
    /// key exists with that revision, so a deposed leader's late writes
    /// are refused. Kept after the term ends, on purpose.
    fence: Arc<Mutex<Option<(String, i64)>>>,
    prefix: String,
    /// `Some` until drop, which must not block (it may run on a tokio
    /// worker thread, where dropping a runtime panics).
    runtime: Option<tokio::runtime::Runtime>,
    timeout: Duration,
    /// For messages.
    endpoints: String,
    /// Audit keys are unique per controller: this instance's random id and
    /// a counter.
    instance: u64,
    audit_seq: AtomicU64,
}

impl EtcdStore {
    /// Connect and check that etcd answers under the prefix.
    pub fn open(options: &EtcdOptions) -> Result<Self, ControllerError> {
        let endpoints = options.endpoints.join(",");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("roomy-etcd")
            .enable_all()
            .build()
            .map_err(|e| ControllerError::Store(format!("etcd client runtime: {e}")))?;
        // HTTP/2 pings every second: a member that hangs (stopped, cut
        // off) is dropped from the client's balancer within about 2 s, not
        // when TCP gives up; meanwhile calls it holds fail at their deadline.
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(tls_options(tls)?);
        }
        let urls = options.endpoints.clone();
        // Connecting builds tonic channels, which need the runtime.
        let client = attempt(&runtime, options.timeout, async move {
            Client::connect(urls, Some(connect)).await
        })
        .into_result(&endpoints, options.timeout)?;
        let store = EtcdStore {
            client,
            fence: Arc::default(),
            prefix: options.prefix.clone(),
            runtime: Some(runtime),
            timeout: options.timeout,
            endpoints,
            instance: random_u64(),
            audit_seq: AtomicU64::new(0),
        };
        // Connecting is lazy: one read now, so a wrong address or
        // certificate stops the controller at start with its reason.
        let probe = store.key("hosts/");
        store.run(move |mut c| {
            let probe = probe.clone();
            async move {
                c.get(
                    probe,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
            }
        })?;
        Ok(store)
    }

    /// Campaign to lead, as `id`, for as long as the store lives, on the
    /// store's runtime: a lease of `ttl`, renewed every third of it; a term
    /// ends when a renewal goes unanswered for a third of the ttl (so two
    /// thirds after the last one, before etcd expires the lease), then
    /// the controller campaigns again.
    pub fn campaign(&self, id: String, ttl: Duration) -> Leadership {
        let (tx, rx) = watch::channel(false);
        let client = self.client.clone();
        let name = self.key("leader");
        let fence = self.fence.clone();
        self.runtime().spawn(async move {
            loop {
                let reason = lead_once(client.clone(), &name, &id, ttl, &tx, &fence).await;
                tracing::warn!(%id, "leader election: {reason}; campaigning again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Leadership::from_watch(rx)
    }

    /// Every event stored from now on, by any controller, into `sink`
    /// (for `events --follow` on every controller, not only the leader
    /// that stored it), for as long as the store lives. A broken watch is
    /// resumed from the revision after the last one seen.
    pub fn watch_events(&self, sink: tokio::sync::broadcast::Sender<Event>) {
        let client = self.client.clone();
        let prefix = self.key("events/");
        self.runtime().spawn(async move {
            let mut next_rev = 0;
            loop {
                let mut options = WatchOptions::new().with_prefix();
                if next_rev > 0 {
                    options = options.with_start_revision(next_rev);
                }
                match client.clone().watch(prefix.clone(), Some(options)).await {
                    Ok(mut stream) => loop {
                        let resp = match stream.message().await {
                            Ok(Some(resp)) => resp,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!("watching events in etcd: {e}; again in 1 s");
                                break;
                            }
                        };
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            next_rev = next_rev.max(kv.mod_revision() + 1);
                            if ev.event_type() != EventType::Put {
                                continue; // a prune
                            }
                            match decode::<Event>(kv.value()) {
                                // No followers is fine.
                                Ok(event) => drop(sink.send(event)),
                                Err(e) => tracing::warn!("watching events in etcd: {e}"),
                            }
                        }
                    },
                    Err(e) => tracing::warn!("watching events in etcd: {e}; again in 1 s"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn event_key(&self, host: &str, seq: u64) -> String {
        self.key(&format!("events/{host}/{seq:020}"))
    }

    /// Run one etcd exchange on the store's runtime and wait for it, within
    /// the store's deadline. An attempt that failed to connect (a member
    /// that is down: the client's balancer still hands it requests) never
    /// reached etcd, so it goes again, to another member as likely as not;
    /// an attempt that got no answer in time may have been applied and is
    /// not repeated.
    fn run<T, F, Fut>(&self, call: F) -> Result<T, ControllerError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match attempt(self.runtime(), left, call(self.client.clone())) {
                Attempt::Failed(e) if not_sent(&e) && !left.is_zero() => {
                    // A moment for the balancer to see the member gone.
                    std::thread::sleep(Duration::from_millis(50).min(left));
                }
                other => return other.into_result(&self.endpoints, self.timeout),
            }
        }
    }

    fn get_all(
        &self,
        prefix: String,
        options: GetOptions,
    ) -> Result<Vec<KeyValue>, ControllerError> {
        self.run(move |mut c| {
            let (prefix, options) = (prefix.clone(), options.clone());
            async move { Ok(c.get(prefix, Some(options.with_prefix())).await?.take_kvs()) }
        })
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One exchange's outcome.
enum Attempt<T> {
    Done(T),
    Failed(etcd_client::Error),
    TimedOut,
    Stopped,
}

/// Spawn `fut` on `runtime` and block until it answers or `timeout` runs
/// out. Safe from inside another runtime: the caller waits on a channel,
/// not on `block_on`.
fn attempt<T, Fut>(runtime: &tokio::runtime::Runtime, timeout: Duration, fut: Fut) -> Attempt<T>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(tokio::time::timeout(timeout, fut).await);
    });
    match rx.recv() {
        Ok(Ok(Ok(v))) => Attempt::Done(v),
        Ok(Ok(Err(e))) => Attempt::Failed(e),
        Ok(Err(_)) => Attempt::TimedOut,
        Err(_) => Attempt::Stopped,
    }
}

impl<T> Attempt<T> {
    fn into_result(self, endpoints: &str, timeout: Duration) -> Result<T, ControllerError> {
        match self {
            Attempt::Done(v) => Ok(v),
            Attempt::Failed(e) => {
                let message = format!(
                    "etcd at {endpoints}: {e}: check `etcdctl --endpoints {endpoints} endpoint health` and the [etcd] section"
                );
                Err(if unavailable(&e) {
                    ControllerError::StoreUnavailable(message)
                } else {
                    ControllerError::Store(message)
                })
            }
            Attempt::TimedOut => Err(ControllerError::StoreUnavailable(format!(
                "etcd at {endpoints} did not answer in {} ms: is a majority of its members up? (`etcdctl --endpoints {endpoints} endpoint health`)",
                timeout.as_millis()
            ))),
            Attempt::Stopped => Err(ControllerError::Store(format!(
                "etcd at {endpoints}: the client's runtime stopped"
            ))),
        }
    }
}

/// An error that says the request never left: the connection to the
/// member it was handed to could not be made (refused: the member is
/// down). Such a request is safe to send again, a write too.
fn not_sent(e: &etcd_client::Error) -> bool {
    // etcd_client's error has no source(); its variants hold the chain.
    let mut source: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// One term: a lease, a campaign, leadership until the lease cannot be
/// renewed. Returns why it ended.
async fn lead_once(
    mut client: Client,
    name: &str,
    id: &str,
    ttl: Duration,
    leading: &watch::Sender<bool>,
    fence: &Mutex<Option<(String, i64)>>,
) -> String {
    let step = ttl / 3;
    let ttl_s = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
    let lease = match tokio::time::timeout(step, client.lease_grant(ttl_s, None)).await {
        Ok(Ok(r)) => r.id(),
        Ok(Err(e)) => return format!("lease grant: {e}"),
        Err(_) => return format!("lease grant: no answer in {} ms", step.as_millis()),
    };
    let (mut keeper, mut acks) =
        match tokio::time::timeout(step, client.lease_keep_alive(lease)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return format!("lease keep-alive: {e}"),
            Err(_) => return format!("lease keep-alive: no answer in {} ms", step.as_millis()),
        };
    // Renewed while campaigning too: waiting in line needs a live key.
    let alive = async {
        loop {
            tokio::time::sleep(step).await;
            let renewed = tokio::time::timeout(step, async {
                keeper.keep_alive().await?;
                acks.message().await
            })
            .await;
            match renewed {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return "the lease expired".to_string(),
                Ok(Ok(None)) => return "the lease's stream ended".to_string(),
                Ok(Err(e)) => return format!("lease renewal: {e}"),
                Err(_) => return format!("no lease renewal answered in {} ms", step.as_millis()),
            }
        }
    };
    tokio::pin!(alive);
    let mut campaigner = client.clone();
    let reason = tokio::select! {
        reason = &mut alive => reason,
        won = campaigner.campaign(name, id, lease) => match won.map(|mut r| r.take_leader()) {
            Ok(Some(key)) => {
                let key_name = String::from_utf8_lossy(key.key()).into_owned();
                *fence.lock().expect("fence poisoned") = Some((key_name.clone(), key.rev()));
                leading.send_replace(true);
                tracing::info!(%id, key = %key_name, rev = key.rev(), "leading: this controller holds the agents' streams");
                let reason = (&mut alive).await;
                leading.send_replace(false);
                tracing::warn!(%id, "no longer leading: {reason}");
                reason
            }
            Ok(None) => "the campaign answered without a leader key".to_string(),
            Err(e) => format!("campaign: {e}"),
        },
    };
    // Best effort: a revoked lease lets the next controller lead at once.
    let _ = tokio::time::timeout(step, client.lease_revoke(lease)).await;
    reason
}

/// Errors that say etcd could not be reached or had no quorum in time,
/// as opposed to a refused request.
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

fn tls_options(tls: &EtcdTls) -> Result<etcd_client::TlsOptions, ControllerError> {
    let read = |p: &PathBuf| {
        std::fs::read(p)
            .map_err(|e| ControllerError::Config(format!("[etcd] {}: {e}", p.display())))
    };
    Ok(etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?))
        .identity(etcd_client::Identity::from_pem(
            read(&tls.cert)?,
            read(&tls.key)?,
        )))
}

/// Random enough to tell controllers' audit keys apart: std's hasher keys
/// are random per process, mixed with the clock.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

fn json<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, ControllerError> {
    serde_json::from_slice(kv.value()).map_err(|e| {
        ControllerError::Store(format!(
            "undecodable value at {}: {e}",
            String::from_utf8_lossy(kv.key())
        ))
    })
}

/// A deposed leader's write, refused by its fence.
fn deposed(key: &str, rev: i64) -> ControllerError {
    ControllerError::Store(format!(
        "this controller no longer leads (its election key {key} of revision {rev} is gone): its writes are refused and the new leader takes the agents' events"
    ))
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

impl Store for EtcdStore {
    fn put_host(&self, host: &HostRecord) -> Result<(), ControllerError> {
        let (key, value) = (self.key(&format!("hosts/{}", host.name)), to_json(host));
        self.run(move |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await.map(drop) }
        })
    }

    fn remove_host(&self, name: &str) -> Result<bool, ControllerError> {
        let key = self.key(&format!("hosts/{name}"));
        self.run(move |mut c| {
            let key = key.clone();
            async move { Ok(c.delete(key, None).await?.deleted() > 0) }
        })
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, ControllerError> {
        self.get_all(self.key("hosts/"), GetOptions::new())?
            .iter()
            .map(json)
            .collect()
    }

    fn append_audit(&self, entry: &AuditRecord) -> Result<(), ControllerError> {
        let key = self.audit_key(entry.time_ms);
        let value = to_json(entry);
        self.run(move |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await.map(drop) }
        })
    }

    fn audit(&self, limit: u32) -> Result<Vec<AuditRecord>, ControllerError> {
        let options = GetOptions::new()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(i64::from(limit));
        self.get_all(self.key("audit/"), options)?
            .iter()
            .map(json)
            .collect()
    }

    fn put_policy(&self, policy: &Policy) -> Result<Option<Policy>, ControllerError> {
        let key = self.key(&format!("policies/{}", policy.name));
        let value = policy.encode_to_vec();
        let old = self.run(move |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let mut r = c
                    .put(key, value, Some(PutOptions::new().with_prev_key()))
                    .await?;
                Ok(r.take_prev_key())
            }
        })?;
        old.map(|kv| decode(kv.value())).transpose()
    }

    fn remove_policy(&self, name: &str) -> Result<Option<Policy>, ControllerError> {
        let key = self.key(&format!("policies/{name}"));
        let old = self.run(move |mut c| {
            let key = key.clone();
            async move {
                let mut r = c
                    .delete(key, Some(DeleteOptions::new().with_prev_key()))
                    .await?;
                Ok(r.take_prev_kvs().into_iter().next())
            }
        })?;
        old.map(|kv| decode(kv.value())).transpose()
    }

    fn policies(&self) -> Result<Vec<Policy>, ControllerError> {
        self.get_all(self.key("policies/"), GetOptions::new())?
            .iter()
            .map(|kv| decode(kv.value()))
            .collect()
    }

    fn record_events(
        &self,
        batch: &[(Event, Option<AuditRecord>)],
    ) -> Result<Vec<bool>, ControllerError> {
        // All or none holds per transaction; a batch larger than one is
        // several, and a failure between them leaves a prefix stored. The
        // agent resends what was not acknowledged and the stored part is
        // skipped then, so nothing is lost or doubled.
        let mut added = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(EVENTS_PER_TXN) {
            added.extend(self.record_chunk(chunk)?);
        }
        Ok(added)
    }

    fn events_after(
        &self,
        host: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, ControllerError> {
        // A key range: from the key after `after` to the end of the host's
        // prefix (`0` follows `/`), in key order, which is sequence order.
        let from = self.event_key(host, after.saturating_add(1));
        let end = self.key(&format!("events/{host}0"));
        let options = GetOptions::new()
            .with_range(end)
            .with_limit(i64::from(limit));
        let kvs = self.run(move |mut c| {
            let (from, options) = (from.clone(), options.clone());
            async move { Ok(c.get(from, Some(options)).await?.take_kvs()) }
        })?;
        kvs.iter().map(|kv| decode(kv.value())).collect()
    }

    fn webhook_cursor(&self, name: &str) -> Result<Option<WebhookCursor>, ControllerError> {
        let key = self.key(&format!("webhooks/{name}"));
        let kv = self.run(move |mut c| {
            let key = key.clone();
            async move { Ok(c.get(key, None).await?.take_kvs().into_iter().next()) }
        })?;
        kv.map(|kv| cursor_from_json(name, kv.value())).transpose()
    }

    fn put_webhook_cursor(
        &self,
        name: &str,
        cursor: &WebhookCursor,
    ) -> Result<(), ControllerError> {
        let key = self.key(&format!("webhooks/{name}"));
        // Fenced as the leader's event writes are: a deposed leader that
        // finished a delivery late must not move the new leader's cursor.
        self.fenced(vec![TxnOp::put(key, cursor_json(cursor), None)])
            .map(drop)
    }

    fn shared(&self) -> bool {
        true
    }

    fn webhook_cursors(&self) -> Result<Vec<(String, WebhookCursor)>, ControllerError> {
        let prefix = self.key("webhooks/");
        self.get_all(prefix.clone(), GetOptions::new())?
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                let cursor = cursor_from_json(&name, kv.value())?;
                Ok((name, cursor))
            })
            .collect()
    }

    fn prune(
        &self,
        events_before_ms: Option<i64>,
        audit_before_ms: Option<i64>,
    ) -> Result<Pruned, ControllerError> {
        let mut pruned = Pruned::default();
        if let Some(t) = audit_before_ms {
            // Audit keys sort by time: one range delete.
            let (from, to) = (
                self.key("audit/"),
                self.key(&format!("audit/{:016}", t.max(0))),
            );
            let delete = TxnOp::delete(from, Some(DeleteOptions::new().with_range(to)));
            pruned.audit = self
                .fenced(vec![delete])?
                .op_responses()
                .iter()
                .map(|op| match op {
                    TxnOpResponse::Delete(d) => d.deleted().max(0) as u64,
                    _ => 0,
                })
                .sum();
        }
        if let Some(t) = events_before_ms {
            // Events are keyed by (host, seq), not time: read them, delete
            // the old ones, at most 128 deletes per transaction.
            let old: Vec<Vec<u8>> = self
                .get_all(self.key("events/"), GetOptions::new())?
                .iter()
                .filter(|kv| decode::<Event>(kv.value()).is_ok_and(|e| e.time_ms < t))
                .map(|kv| kv.key().to_vec())
                .collect();
            for keys in old.chunks(128) {
                let ops: Vec<TxnOp> = keys
                    .iter()
                    .map(|k| TxnOp::delete(k.clone(), None))
                    .collect();
                self.fenced(ops)?;
            }
            pruned.events = old.len() as u64;
        }
        Ok(pruned)
    }

    fn events(&self, limit: u32, host: Option<&str>) -> Result<Vec<Event>, ControllerError> {
        // One host's keys sort by sequence; across hosts, by the revision
        // that created them (stored order, as SQLite's row id).
        let (prefix, target) = match host {
            Some(h) => (self.key(&format!("events/{h}/")), SortTarget::Key),
            None => (self.key("events/"), SortTarget::Create),
        };
        let options = GetOptions::new()
            .with_sort(target, SortOrder::Descend)
            .with_limit(i64::from(limit));
        let mut kvs = self.get_all(prefix, options)?;
        // Events stored by one transaction share a revision; etcd's order
        // among them is not defined, their keys' is.
        kvs.sort_by(|a, b| (a.create_revision(), a.key()).cmp(&(b.create_revision(), b.key())));
        kvs.iter().map(|kv| decode(kv.value())).collect()
    }
}

impl EtcdStore {
    /// `ops` in one transaction that holds only while this controller's
    /// latest term as leader does (unconditional for a store that never
    /// led: `migrate`, tests). The leader's writes other than events go
    /// through here: a deposed leader's late write is refused.
    fn fenced(&self, ops: Vec<TxnOp>) -> Result<TxnResponse, ControllerError> {
        let (fence, compares) = self.fence_compares();
        let response = self.run(move |mut c| {
            let (compares, ops) = (compares.clone(), ops.clone());
            async move { c.txn(Txn::new().when(compares).and_then(ops)).await }
        })?;
        match (response.succeeded(), fence) {
            (true, _) => Ok(response),
            (false, Some((key, rev))) => Err(deposed(&key, rev)),
            (false, None) => unreachable!("a transaction without conditions succeeds"),
        }
    }

    /// This controller's latest term as leader (its election key and that
    /// key's create revision), and the condition that it still holds: none
    /// for a store that never led.
    fn fence_compares(&self) -> (Option<(String, i64)>, Vec<Compare>) {
        let fence = self.fence.lock().expect("fence poisoned").clone();
        let compares = fence
            .iter()
            .map(|(key, rev)| Compare::create_revision(key.clone(), CompareOp::Equal, *rev))
            .collect();
        (fence, compares)
    }

    fn audit_key(&self, time_ms: i64) -> String {
        let n = self.audit_seq.fetch_add(1, Ordering::Relaxed);
        self.key(&format!(
            "audit/{:016}/{:016x}{n:08x}",
            time_ms.max(0),
            self.instance
        ))
    }

    /// One transaction's worth of events: find which keys are taken, then
    /// put the rest on the condition that they are still free (another
    /// controller may store the same resend at the same time); again when
    /// that condition failed.
    fn record_chunk(
        &self,
        chunk: &[(Event, Option<AuditRecord>)],
    ) -> Result<Vec<bool>, ControllerError> {
        let keys: Vec<String> = chunk
            .iter()
            .map(|(e, _)| self.event_key(&e.host, e.seq))
            .collect();
        for _ in 0..3 {
            let gets: Vec<TxnOp> = keys
                .iter()
                .map(|k| TxnOp::get(k.clone(), Some(GetOptions::new().with_keys_only())))
                .collect();
            let taken: Vec<bool> = self.run(move |mut c| {
                let gets = gets.clone();
                async move {
                    let r = c.txn(Txn::new().and_then(gets)).await?;
                    Ok(r.op_responses()
                        .iter()
                        .map(|op| matches!(op, TxnOpResponse::Get(g) if !g.kvs().is_empty()))
                        .collect())
                }
            })?;
            // The same (host, seq) twice in one batch: the second is a resend.
            let mut fresh = HashSet::new();
            let new: Vec<bool> = keys
                .iter()
                .zip(&taken)
                .map(|(k, &t)| !t && fresh.insert(k.as_str()))
                .collect();
            let (fence, mut compares) = self.fence_compares();
            let mut puts = Vec::new();
            for (((event, audit), key), _) in chunk.iter().zip(&keys).zip(&new).filter(|(_, &n)| n)
            {
                compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                puts.push(TxnOp::put(key.clone(), event.encode_to_vec(), None));
                if let Some(a) = audit {
                    puts.push(TxnOp::put(self.audit_key(a.time_ms), to_json(a), None));
                }
            }
            if puts.is_empty() {
                return Ok(new);
            }
            let stored = self.run(move |mut c| {
                let (compares, puts) = (compares.clone(), puts.clone());
                async move {
                    Ok(c.txn(Txn::new().when(compares).and_then(puts))
                        .await?
                        .succeeded())
                }
            })?;
            if stored {
                return Ok(new);
            }
            if let Some((key, rev)) = fence {
                let probe = key.clone();
                let now = self.run(move |mut c| {
                    let probe = probe.clone();
                    async move {
                        Ok(c.get(probe, None)
                            .await?
                            .kvs()
                            .first()
                            .map(|kv| kv.create_revision()))
                    }
                })?;
                if now != Some(rev) {
                    return Err(deposed(&key, rev));
                }
            }
        }
        Err(ControllerError::Store(format!(
            "etcd at {}: events of {} were being stored by another writer three times in a row; the agent will send them again",
            self.endpoints,
            chunk.first().map(|(e, _)| e.host.as_str()).unwrap_or("?")
        )))
    }
}
