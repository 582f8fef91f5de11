//! The controller's durable state: the host registry, the audit log, the
//! policies and the agents' events, behind a small trait so another engine
//! can be added. SQLite by default.

use std::path::Path;
use std::sync::Mutex;

use prost::Message;
use roomy_proto::v1::{Event, Policy};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::ControllerError;

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
}

/// SQLite in one file (WAL, synchronous=FULL: an audit entry that was
/// answered is on disk).
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db_err(e: rusqlite::Error) -> ControllerError {
    ControllerError::Store(e.to_string())
}

impl SqliteStore {
    /// Open (and create) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, ControllerError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ControllerError::Store(format!("create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| ControllerError::Store(format!("open {}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS hosts (
                 name TEXT PRIMARY KEY, address TEXT NOT NULL, source TEXT NOT NULL,
                 server_name TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS audit (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL,
                 principal TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
                 from_bytes INTEGER NOT NULL, to_bytes INTEGER NOT NULL,
                 result TEXT NOT NULL, message TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS policies (
                 name TEXT PRIMARY KEY, body BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS events (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL,
                 seq INTEGER NOT NULL, body BLOB NOT NULL, UNIQUE (host, seq));",
        )
        .map_err(db_err)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("store poisoned")
    }
}

impl Store for SqliteStore {
    fn put_host(&self, host: &HostRecord) -> Result<(), ControllerError> {
        self.conn()
            .execute(
                "INSERT INTO hosts (name, address, source, server_name) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET address = excluded.address, source = excluded.source,
                     server_name = excluded.server_name",
                params![host.name, host.address, host.source, host.server_name],
            )
            .map(|_| ())
            .map_err(db_err)
    }

    fn remove_host(&self, name: &str) -> Result<bool, ControllerError> {
        self.conn()
            .execute("DELETE FROM hosts WHERE name = ?1", params![name])
            .map(|n| n > 0)
            .map_err(db_err)
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, ControllerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, address, source, server_name FROM hosts ORDER BY name")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(HostRecord {
                    name: r.get(0)?,
                    address: r.get(1)?,
                    source: r.get(2)?,
                    server_name: r.get(3)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    fn append_audit(&self, e: &AuditRecord) -> Result<(), ControllerError> {
        self.conn()
            .execute(
                "INSERT INTO audit (time_ms, principal, action, target, from_bytes, to_bytes, result, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![e.time_ms, e.principal, e.action, e.target, e.from_bytes as i64, e.to_bytes as i64, e.result, e.message],
            )
            .map(|_| ())
            .map_err(db_err)
    }

    fn put_policy(&self, policy: &Policy) -> Result<Option<Policy>, ControllerError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let old = get_policy(&tx, &policy.name)?;
        tx.execute(
            "INSERT INTO policies (name, body) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET body = excluded.body",
            params![policy.name, policy.encode_to_vec()],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(old)
    }

    fn remove_policy(&self, name: &str) -> Result<Option<Policy>, ControllerError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let old = get_policy(&tx, name)?;
        tx.execute("DELETE FROM policies WHERE name = ?1", params![name])
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(old)
    }

    fn policies(&self) -> Result<Vec<Policy>, ControllerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT body FROM policies ORDER BY name")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(db_err)?;
        rows.map(|r| r.map_err(db_err).and_then(|b| decode(&b)))
            .collect()
    }

    fn record_events(
        &self,
        batch: &[(Event, Option<AuditRecord>)],
    ) -> Result<Vec<bool>, ControllerError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let mut added = Vec::with_capacity(batch.len());
        {
            let mut event_stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO events (host, seq, body) VALUES (?1, ?2, ?3)",
                )
                .map_err(db_err)?;
            let mut audit_stmt = tx
                .prepare_cached(
                    "INSERT INTO audit (time_ms, principal, action, target, from_bytes, to_bytes, result, message)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db_err)?;
            for (event, audit) in batch {
                let new = event_stmt
                    .execute(params![event.host, event.seq as i64, event.encode_to_vec()])
                    .map_err(db_err)?
                    > 0;
                if let (true, Some(e)) = (new, audit) {
                    audit_stmt
                        .execute(params![
                            e.time_ms,
                            e.principal,
                            e.action,
                            e.target,
                            e.from_bytes as i64,
                            e.to_bytes as i64,
                            e.result,
                            e.message
                        ])
                        .map_err(db_err)?;
                }
                added.push(new);
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(added)
    }

    fn events(&self, limit: u32, host: Option<&str>) -> Result<Vec<Event>, ControllerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT body FROM (SELECT id, body FROM events WHERE ?1 IS NULL OR host = ?1
                 ORDER BY id DESC LIMIT ?2) ORDER BY id",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![host, limit], |r| r.get::<_, Vec<u8>>(0))
            .map_err(db_err)?;
        rows.map(|r| r.map_err(db_err).and_then(|b| decode(&b)))
            .collect()
    }

    fn audit(&self, limit: u32) -> Result<Vec<AuditRecord>, ControllerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT time_ms, principal, action, target, from_bytes, to_bytes, result, message
                 FROM audit ORDER BY id DESC LIMIT ?1",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![limit], |r| {
                Ok(AuditRecord {
                    time_ms: r.get(0)?,
                    principal: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    from_bytes: r.get::<_, i64>(4)? as u64,
                    to_bytes: r.get::<_, i64>(5)? as u64,
                    result: r.get(6)?,
                    message: r.get(7)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ControllerError> {
    M::decode(bytes).map_err(|e| ControllerError::Store(format!("undecodable row: {e}")))
}

fn get_policy(conn: &Connection, name: &str) -> Result<Option<Policy>, ControllerError> {
    conn.query_row(
        "SELECT body FROM policies WHERE name = ?1",
        params![name],
        |r| r.get::<_, Vec<u8>>(0),
    )
    .optional()
    .map_err(db_err)?
    .map(|b| decode(&b))
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_audit_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roomy.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            let h = HostRecord {
                name: "host1".into(),
                address: "10.0.0.2:7444".into(),
                source: "cli".into(),
                server_name: "host1".into(),
            };
            store.put_host(&h).unwrap();
            store
                .put_host(&HostRecord {
                    address: "10.0.0.3:7444".into(),
                    ..h
                })
                .unwrap();
            store
                .put_host(&HostRecord {
                    name: "host2".into(),
                    address: "x:1".into(),
                    source: "config".into(),
                    server_name: "h2".into(),
                })
                .unwrap();
            assert!(store.remove_host("host2").unwrap());
            assert!(!store.remove_host("host2").unwrap());
            for i in 0..3 {
                store
                    .append_audit(&AuditRecord {
                        time_ms: i,
                        principal: "alice".into(),
                        action: "resize".into(),
                        target: "host1/node".into(),
                        from_bytes: 2 << 30,
                        to_bytes: 4 << 30,
                        result: "ok".into(),
                        message: format!("m{i}"),
                    })
                    .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let hosts = store.hosts().unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].address, "10.0.0.3:7444");
        let audit = store.audit(2).unwrap();
        assert_eq!(
            audit.iter().map(|a| a.message.as_str()).collect::<Vec<_>>(),
            ["m2", "m1"]
        );
        assert_eq!(audit[0].to_bytes, 4 << 30);
    }

    #[test]
    fn events_are_stored_once_with_their_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("roomy.db")).unwrap();
        let event = |host: &str, seq| Event {
            host: host.into(),
            seq,
            message: format!("{host}-{seq}"),
            ..Default::default()
        };
        let audit = AuditRecord {
            principal: "policy:grow80@host1".into(),
            ..Default::default()
        };
        assert!(store
            .record_event(&event("host1", 1), Some(&audit))
            .unwrap());
        // The agent resends before it saw the ack: not stored, not audited twice.
        assert!(!store
            .record_event(&event("host1", 1), Some(&audit))
            .unwrap());
        assert!(store.record_event(&event("host2", 1), None).unwrap());
        assert!(store.record_event(&event("host1", 2), None).unwrap());
        assert_eq!(store.audit(10).unwrap().len(), 1);
        let all: Vec<_> = store
            .events(10, None)
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(all, ["host1-1", "host2-1", "host1-2"]);
        let last: Vec<_> = store
            .events(1, Some("host1"))
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(last, ["host1-2"]);
    }

    #[test]
    fn a_batch_is_stored_in_one_go_and_resends_in_it_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("roomy.db")).unwrap();
        let event = |seq| Event {
            host: "host1".into(),
            seq,
            ..Default::default()
        };
        let audit = |target: &str| AuditRecord {
            principal: "policy:grow80@host1".into(),
            target: target.into(),
            ..Default::default()
        };
        store.record_event(&event(2), Some(&audit("a"))).unwrap();
        // 2 again (a resend after a lost ack), then new ones.
        let added = store
            .record_events(&[
                (event(1), Some(audit("b"))),
                (event(2), Some(audit("a"))),
                (event(3), None),
                (event(4), Some(audit("c"))),
            ])
            .unwrap();
        assert_eq!(added, [true, false, true, true]);
        let targets: Vec<_> = store
            .audit(10)
            .unwrap()
            .into_iter()
            .map(|a| a.target)
            .collect();
        assert_eq!(targets.len(), 3, "{targets:?}");
        assert_eq!(store.events(10, None).unwrap().len(), 4);
    }

    #[test]
    fn policies_replace_and_remove_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("roomy.db")).unwrap();
        let p = Policy {
            name: "grow80".into(),
            max_bytes: 1,
            ..Default::default()
        };
        assert!(store.put_policy(&p).unwrap().is_none());
        let old = store
            .put_policy(&Policy {
                max_bytes: 2,
                ..p.clone()
            })
            .unwrap();
        assert_eq!(old.unwrap().max_bytes, 1);
        assert_eq!(store.policies().unwrap()[0].max_bytes, 2);
        assert!(store.remove_policy("grow80").unwrap().is_some());
        assert!(store.remove_policy("grow80").unwrap().is_none());
    }
}
