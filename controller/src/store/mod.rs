//! The controller's durable state: the host registry, the audit log, the
//! policies and the agents' events, behind one trait with two engines:
//! SQLite in one file (`sqlite`, the default for one controller) and etcd
//! (`etcd`, for several controllers sharing one fleet). Both pass the same
//! tests (`conformance`).

use std::collections::BTreeMap;

use prost::Message;
use roomy_proto::v1::{Event, Policy};
use serde::{Deserialize, Serialize};

use crate::error::ControllerError;

mod etcd;
#[doc(hidden)]
pub mod etcd_member;
mod sqlite;

pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use sqlite::SqliteStore;

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRecord {
    /// Name, also the name its agent's certificate carries.
    pub name: String,
    /// host:port of the agent's TLS listener.
    pub address: String,
    /// "config" or "cli".
    pub source: String,
    /// Name the agent's certificate carries (usually `name`).
    pub server_name: String,
}

/// One audited mutation.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// Who asked.
    pub principal: String,
    /// What was asked.
    pub action: String,
    /// Of what.
    pub target: String,
    /// Size before, when known.
    pub from_bytes: u64,
    /// Size after (or asked for).
    pub to_bytes: u64,
    /// "ok" or a gRPC code name.
    pub result: String,
    /// The answer's sentence.
    pub message: String,
}

/// Durable state.
pub trait Store: Send + Sync + 'static {
    /// Insert or replace a host.
    fn put_host(&self, host: &HostRecord) -> Result<(), ControllerError>;
    /// Remove a host; false when there was none.
    fn remove_host(&self, name: &str) -> Result<bool, ControllerError>;
    /// Every host, by name.
    fn hosts(&self) -> Result<Vec<HostRecord>, ControllerError>;
    /// Append to the audit log.
    fn append_audit(&self, entry: &AuditRecord) -> Result<(), ControllerError>;
    /// The newest `limit` entries, newest first.
    fn audit(&self, limit: u32) -> Result<Vec<AuditRecord>, ControllerError>;

    /// Insert or replace a policy; returns the one it replaced.
    fn put_policy(&self, policy: &Policy) -> Result<Option<Policy>, ControllerError>;
    /// Remove a policy; returns it, or `None` when there was none.
    fn remove_policy(&self, name: &str) -> Result<Option<Policy>, ControllerError>;
    /// Every policy, by name.
    fn policies(&self) -> Result<Vec<Policy>, ControllerError>;

    /// Store agents' events, each with its audit entry when it has one,
    /// all in one transaction: all are stored or none. Per event, false
    /// when (host, seq) is already stored: the agent sent it again before
    /// it saw the ack; nothing is written twice.
    fn record_events(
        &self,
        batch: &[(Event, Option<AuditRecord>)],
    ) -> Result<Vec<bool>, ControllerError>;

    /// One event: [`Store::record_events`] of one.
    fn record_event(
        &self,
        event: &Event,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, ControllerError> {
        let added = self.record_events(&[(event.clone(), audit.cloned())])?;
        Ok(added.first().copied().unwrap_or(false))
    }
    /// The newest `limit` events (of `host`, when given), oldest first.
    fn events(&self, limit: u32, host: Option<&str>) -> Result<Vec<Event>, ControllerError>;

    /// Events of `host` with a sequence after `after`, by sequence, at
    /// most `limit`: how a webhook's delivery reads on from its cursor.
    fn events_after(
        &self,
        host: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, ControllerError>;

    /// Delete events whose `time_ms` is before `events_before_ms` and
    /// audit entries before `audit_before_ms` (`None`: keep all).
    fn prune(
        &self,
        events_before_ms: Option<i64>,
        audit_before_ms: Option<i64>,
    ) -> Result<Pruned, ControllerError>;

    /// Where webhook `name`'s delivery stands, `None` for a webhook never
    /// seen before.
    fn webhook_cursor(&self, name: &str) -> Result<Option<WebhookCursor>, ControllerError>;

    /// Save where webhook `name`'s delivery stands. On etcd, only while
    /// this controller leads: a deposed leader cannot move it.
    fn put_webhook_cursor(&self, name: &str, cursor: &WebhookCursor)
        -> Result<(), ControllerError>;

    /// Every webhook cursor, by webhook name (for [`copy`]).
    fn webhook_cursors(&self) -> Result<Vec<(String, WebhookCursor)>, ControllerError>;

    /// Whether other controllers write this store too (so hosts and
    /// policies can change behind this one's back and must be re-read).
    fn shared(&self) -> bool {
        false
    }
}

/// How far a webhook's delivery has come: per host, the sequence of the
/// last event it is done with (delivered, given up on, or not of a kind
/// the webhook wants). The controller that leads resumes from here, so a
/// restart or a failover neither skips events nor sends them all again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookCursor {
    /// When the webhook was first seen (Unix ms): of a host the cursor has
    /// no entry for, older events were there before the webhook and are
    /// not sent.
    pub since_ms: i64,
    /// Host name to the last sequence done with.
    pub hosts: BTreeMap<String, u64>,
}

/// What [`Store::prune`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Events.
    pub events: u64,
    /// Audit entries.
    pub audit: u64,
}

/// What [`copy`] copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Hosts.
    pub hosts: usize,
    /// Policies.
    pub policies: usize,
    /// Audit entries.
    pub audit: usize,
    /// Events.
    pub events: usize,
}

/// Copy everything in `from` into `to` (SQLite into etcd, when a fleet
/// moves to several controllers), in stored order. Refused, before any
/// write, when `to` already holds audit entries or events: they would mix.
pub fn copy(from: &dyn Store, to: &dyn Store) -> Result<Copied, ControllerError> {
    let (audit_there, events_there) = (to.audit(1)?.len(), to.events(1, None)?.len());
    if audit_there + events_there > 0 {
        return Err(ControllerError::Invalid(
            "the target store already holds audit entries or events: copy into an empty one (another [etcd] prefix, or delete the prefix first)".into(),
        ));
    }
    let mut copied = Copied::default();
    for host in from.hosts()? {
        to.put_host(&host)?;
        copied.hosts += 1;
    }
    for policy in from.policies()? {
        to.put_policy(&policy)?;
        copied.policies += 1;
    }
    let mut audit = from.audit(u32::MAX)?;
    audit.reverse(); // oldest first, so the target keeps their order
    for entry in &audit {
        to.append_audit(entry)?;
    }
    copied.audit = audit.len();
    let events: Vec<(Event, Option<AuditRecord>)> = from
        .events(u32::MAX, None)?
        .into_iter()
        .map(|e| (e, None))
        .collect();
    // One host per batch: etcd gives a transaction's keys one revision,
    // and orders them by key, so a batch mixing hosts would lose the
    // order between them.
    for run in events.chunk_by(|a, b| a.0.host == b.0.host) {
        for batch in run.chunks(512) {
            to.record_events(batch)?;
        }
    }
    copied.events = events.len();
    // After the events: a cursor names sequences the target now holds.
    for (name, cursor) in from.webhook_cursors()? {
        to.put_webhook_cursor(&name, &cursor)?;
    }
    Ok(copied)
}

/// A webhook cursor as both engines store it.
pub(crate) fn cursor_json(cursor: &WebhookCursor) -> String {
    // Strings and integers always serialize.
    serde_json::to_string(cursor).expect("a cursor serializes")
}

/// A stored webhook cursor back from its JSON.
pub(crate) fn cursor_from_json(name: &str, bytes: &[u8]) -> Result<WebhookCursor, ControllerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ControllerError::Store(format!("webhook {name:?}: unreadable cursor: {e}")))
}

/// A stored protobuf message back from its bytes.
pub(crate) fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ControllerError> {
    M::decode(bytes).map_err(|e| ControllerError::Store(format!("undecodable row: {e}")))
}

#[cfg(test)]
mod conformance;
