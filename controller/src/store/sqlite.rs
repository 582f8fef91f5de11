//! The SQLite engine: one file, the default for one controller.

use std::path::Path;
use std::sync::Mutex;

use prost::Message;
use roomy_proto::v1::{Event, Policy};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    cursor_from_json, cursor_json, decode, AuditRecord, HostRecord, Pruned, Store, WebhookCursor,
};
use crate::error::ControllerError;

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
                 seq INTEGER NOT NULL, body BLOB NOT NULL, UNIQUE (host, seq));
             CREATE TABLE IF NOT EXISTS webhook_cursors (
                 name TEXT PRIMARY KEY, cursor TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms);",
        )
        .map_err(db_err)?;
        add_event_times(&conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("store poisoned")
    }
}

/// Events got a `time_ms` column (for pruning by age) after the first
/// release: a store made before gets it here, filled from each event's
/// own time, once.
fn add_event_times(conn: &Connection) -> Result<(), ControllerError> {
    let has: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'time_ms'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(db_err)?
        > 0;
    if !has {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE events ADD COLUMN time_ms INTEGER NOT NULL DEFAULT 0;",
        )
        .map_err(db_err)?;
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut stmt = conn
                .prepare("SELECT id, body FROM events")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        for (id, body) in rows {
            let event: Event = decode(&body)?;
            conn.execute(
                "UPDATE events SET time_ms = ?1 WHERE id = ?2",
                params![event.time_ms, id],
            )
            .map_err(db_err)?;
        }
        conn.execute_batch("COMMIT;").map_err(db_err)?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS events_time ON events (time_ms);")
        .map_err(db_err)
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
                    "INSERT OR IGNORE INTO events (host, seq, body, time_ms) VALUES (?1, ?2, ?3, ?4)",
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
                    .execute(params![
                        event.host,
                        event.seq as i64,
                        event.encode_to_vec(),
                        event.time_ms
                    ])
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

    fn events_after(
        &self,
        host: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, ControllerError> {
        let conn = self.conn();
        // UNIQUE (host, seq) is the index this walks.
        let mut stmt = conn
            .prepare_cached(
                "SELECT body FROM events WHERE host = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![host, after as i64, limit], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .map_err(db_err)?;
        rows.map(|r| r.map_err(db_err).and_then(|b| decode(&b)))
            .collect()
    }

    fn webhook_cursor(&self, name: &str) -> Result<Option<WebhookCursor>, ControllerError> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT cursor FROM webhook_cursors WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        text.map(|t| cursor_from_json(name, t.as_bytes()))
            .transpose()
    }

    fn put_webhook_cursor(
        &self,
        name: &str,
        cursor: &WebhookCursor,
    ) -> Result<(), ControllerError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO webhook_cursors (name, cursor) VALUES (?1, ?2)",
                params![name, cursor_json(cursor)],
            )
            .map(drop)
            .map_err(db_err)
    }

    fn webhook_cursors(&self) -> Result<Vec<(String, WebhookCursor)>, ControllerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, cursor FROM webhook_cursors ORDER BY name")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(db_err)?;
        rows.map(|r| {
            let (name, text) = r.map_err(db_err)?;
            let cursor = cursor_from_json(&name, text.as_bytes())?;
            Ok((name, cursor))
        })
        .collect()
    }

    fn prune(
        &self,
        events_before_ms: Option<i64>,
        audit_before_ms: Option<i64>,
    ) -> Result<Pruned, ControllerError> {
        let conn = self.conn();
        let mut pruned = Pruned::default();
        if let Some(t) = events_before_ms {
            pruned.events = conn
                .execute("DELETE FROM events WHERE time_ms < ?1", params![t])
                .map_err(db_err)? as u64;
        }
        if let Some(t) = audit_before_ms {
            pruned.audit = conn
                .execute("DELETE FROM audit WHERE time_ms < ?1", params![t])
                .map_err(db_err)? as u64;
        }
        Ok(pruned)
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
