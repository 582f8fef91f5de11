//! The agent's event buffer: every policy decision is appended here, on
//! disk, before anyone is told; the controller acknowledges what it has
//! stored and only then is an event dropped. So events survive an agent
//! restart and a controller outage, and reach the controller in order.
//!
//! Files in the state directory: `events.log` (length-delimited protobuf
//! `Event`s, appended and fsync'd) and `events.acked` (the highest
//! acknowledged seq, written atomically). Sequence numbers never repeat:
//! after a restart they continue from the larger of both.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::Message;
use roomy_proto::v1::Event;
use tokio::sync::watch;

use crate::error::AgentError;
use crate::sys::atomic::write_atomically;

/// Events kept at most while the controller is away; the oldest go first.
/// At a few events per minute per container this is days of outage.
const MAX_PENDING: usize = 100_000;

/// The buffer.
pub struct EventLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// The last seq appended: senders wait on it.
    latest: watch::Sender<u64>,
}

struct Inner {
    next_seq: u64,
    acked: u64,
    pending: VecDeque<Event>,
    file: File,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> AgentError {
    AgentError::Internal(format!("{what} {}: {e}", path.display()))
}

impl EventLog {
    /// Open (or create) the buffer in `dir`.
    pub fn open(dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let log = dir.join("events.log");
        let acked_path = dir.join("events.acked");
        let acked: u64 = std::fs::read_to_string(&acked_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&log) {
            f.read_to_end(&mut bytes).map_err(|e| io("read", &log, e))?;
        }
        let mut pending = VecDeque::new();
        let mut max_seq = acked;
        let mut buf = bytes.as_slice();
        while !buf.is_empty() {
            // A torn last record (crash mid-append) ends the log.
            let Ok(event) = Event::decode_length_delimited(&mut buf) else {
                tracing::warn!(path = %log.display(), "ignoring a torn record at the end of the event log");
                break;
            };
            max_seq = max_seq.max(event.seq);
            if event.seq > acked {
                pending.push_back(event);
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| io("open", &log, e))?;
        let this = EventLog {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                next_seq: max_seq + 1,
                acked,
                pending,
                file,
            }),
            latest: watch::Sender::new(max_seq),
        };
        // Rewrite without the torn tail or acknowledged events.
        this.compact(&mut this.inner.lock().expect("event log poisoned"))?;
        Ok(this)
    }

    /// Append an event: give it the next seq, write it durably, wake the
    /// senders. Returns its seq.
    pub fn append(&self, mut event: Event) -> Result<u64, AgentError> {
        let mut inner = self.inner.lock().expect("event log poisoned");
        event.seq = inner.next_seq;
        let bytes = event.encode_length_delimited_to_vec();
        let path = self.dir.join("events.log");
        inner
            .file
            .write_all(&bytes)
            .and_then(|_| inner.file.sync_data())
            .map_err(|e| io("append to", &path, e))?;
        inner.next_seq += 1;
        inner.pending.push_back(event);
        if inner.pending.len() > MAX_PENDING {
            inner.pending.pop_front();
            tracing::warn!("event buffer full: dropped the oldest undelivered event");
        }
        let seq = inner.next_seq - 1;
        drop(inner);
        self.latest.send_replace(seq);
        Ok(seq)
    }

    /// The controller stored everything up to `seq`: forget it.
    pub fn ack(&self, seq: u64) -> Result<(), AgentError> {
        let mut inner = self.inner.lock().expect("event log poisoned");
        if seq <= inner.acked {
            return Ok(());
        }
        // Never past what was sent: a confused peer cannot skip events.
        let seq = seq.min(inner.next_seq - 1);
        inner.acked = seq;
        let path = self.dir.join("events.acked");
        write_atomically(&path, seq.to_string().as_bytes()).map_err(|e| io("write", &path, e))?;
        inner.pending.retain(|e| e.seq > seq);
        self.compact(&mut inner)
    }

    /// Rewrite the log with only what is pending (usually nothing, which
    /// is a truncate).
    fn compact(&self, inner: &mut Inner) -> Result<(), AgentError> {
        let path = self.dir.join("events.log");
        let mut bytes = Vec::new();
        for e in &inner.pending {
            e.encode_length_delimited(&mut bytes)
                .expect("Vec grows as needed");
        }
        write_atomically(&path, &bytes).map_err(|e| io("rewrite", &path, e))?;
        inner.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io("open", &path, e))?;
        Ok(())
    }

    /// Pending events after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> Vec<Event> {
        let inner = self.inner.lock().expect("event log poisoned");
        inner
            .pending
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }

    /// Where the buffer lives: the agent's state directory, also home to
    /// what the engine must remember across restarts (the pool's mode).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Events not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.inner.lock().expect("event log poisoned").pending.len()
    }

    /// Wakes when an event is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(msg: &str) -> Event {
        Event {
            message: msg.into(),
            ..Default::default()
        }
    }

    #[test]
    fn survives_restarts_in_order_and_forgets_what_was_acked() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.append(event("a")).unwrap(), 1);
        assert_eq!(log.append(event("b")).unwrap(), 2);
        assert_eq!(log.append(event("c")).unwrap(), 3);
        log.ack(1).unwrap();
        drop(log);

        let log = EventLog::open(dir.path()).unwrap();
        let left: Vec<_> = log.after(0).iter().map(|e| e.message.clone()).collect();
        assert_eq!(left, ["b", "c"]);
        assert_eq!(log.after(2).len(), 1);
        log.ack(3).unwrap();
        assert_eq!(log.pending(), 0);
        drop(log);

        // Seqs continue after everything was acked and the log truncated.
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.append(event("d")).unwrap(), 4);
        // An ack beyond what exists cannot skip future events.
        log.ack(99).unwrap();
        assert_eq!(log.append(event("e")).unwrap(), 5);
        assert_eq!(log.after(0).len(), 1);
    }

    #[test]
    fn a_torn_tail_is_dropped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.append(event("whole")).unwrap();
        drop(log);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("events.log"))
            .unwrap();
        f.write_all(&[0x40, 1, 2]).unwrap();
        drop(f);
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.after(0).len(), 1);
        assert_eq!(log.append(event("next")).unwrap(), 2);
    }
}
