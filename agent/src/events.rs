//! The agent's event buffer: every policy decision is appended here, on
//! disk, before anyone is told; the controller acknowledges what it has
//! stored and only then is an event dropped. So events survive an agent
//! restart and a controller outage, and reach the controller in order.
//!
//! Files in the state directory:
//! - `events-<first seq>.log`: segments of length-delimited protobuf
//!   `Event`s, appended and fsync'd, at most [`SEGMENT_EVENTS`] each. Only
//!   the newest (opened by this process) is appended to; an older one is
//!   deleted once every event in it is acknowledged. So an ack costs a
//!   pop from memory and now and then an unlink, never a rewrite of what
//!   is still pending: draining a backlog is linear in its size (a single
//!   log rewritten on every ack made a 100,000-event drain quadratic).
//! - `events.acked`: the highest acknowledged seq, written atomically, at
//!   most every [`ACK_WRITE_INTERVAL`] and always before a segment goes.
//!   A stale value only means the controller gets some events again after
//!   a restart, which it ignores (it keeps (host, seq) unique).
//!
//! Sequence numbers never repeat: after a restart they continue from the
//! larger of `events.acked` and the newest seq in any segment; a segment
//! holding the newest seq is never deleted before `events.acked` has
//! caught up with it. An `events.log` of an older agent is read as the
//! first segment.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use roomy_proto::v1::Event;
use tokio::sync::watch;

use crate::error::AgentError;
use crate::sys::atomic::write_atomically;

/// Events kept at most while the controller is away; the oldest go first.
/// At a few events per minute per container this is days of outage.
const MAX_PENDING: usize = 100_000;

/// Events per segment file: small enough that a fully acknowledged one
/// goes soon, large enough that a long backlog is a few dozen files.
pub const SEGMENT_EVENTS: u64 = 4096;

/// How often at most `events.acked` is rewritten while acks stream in.
pub const ACK_WRITE_INTERVAL: Duration = Duration::from_millis(250);

const LEGACY_LOG: &str = "events.log";
const ACKED_FILE: &str = "events.acked";

/// The buffer.
pub struct EventLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// The last seq appended: senders wait on it.
    latest: watch::Sender<u64>,
}

/// A segment no longer appended to, and the newest seq it holds.
struct Sealed {
    path: PathBuf,
    last_seq: u64,
}

/// The segment this process appends to.
struct Active {
    path: PathBuf,
    file: File,
    events: u64,
}

struct Inner {
    next_seq: u64,
    acked: u64,
    acked_on_disk: u64,
    acked_written: Instant,
    /// Unacknowledged events, in seq order.
    pending: VecDeque<Event>,
    sealed: VecDeque<Sealed>,
    active: Option<Active>,
}

impl Inner {
    /// Seal the active segment (if any) and open a new one named for the
    /// next seq. The directory is fsync'd, so the new file's name survives
    /// a crash with the record about to be written into it.
    fn start_segment(&mut self, dir: &Path) -> Result<(), AgentError> {
        if let Some(old) = self.active.take() {
            self.sealed.push_back(Sealed {
                path: old.path,
                last_seq: self.next_seq - 1,
            });
        }
        let path = dir.join(segment_name(self.next_seq));
        // A file of this name can only hold a torn first record of a crash:
        // its events would all be at or after next_seq, and there are none.
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("create", &path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync", dir, e))?;
        self.active = Some(Active {
            path,
            file,
            events: 0,
        });
        Ok(())
    }

    fn write_acked(&mut self, dir: &Path) -> Result<(), AgentError> {
        if self.acked_on_disk == self.acked {
            return Ok(());
        }
        let path = dir.join(ACKED_FILE);
        write_atomically(&path, self.acked.to_string().as_bytes())
            .map_err(|e| io("write", &path, e))?;
        self.acked_on_disk = self.acked;
        self.acked_written = Instant::now();
        Ok(())
    }

    /// Delete the sealed segments that hold no pending event (acknowledged
    /// or dropped as the oldest). `events.acked` is brought up to date
    /// first, so the seqs they held are never handed out again.
    fn sweep(&mut self, dir: &Path) -> Result<(), AgentError> {
        // Everything below the oldest pending event is done with.
        let done_below = self.pending.front().map_or(self.next_seq, |e| e.seq);
        if self.sealed.front().is_none_or(|s| s.last_seq >= done_below) {
            return Ok(());
        }
        // Dropped events count as handled here: they are gone either way.
        self.acked = self.acked.max(done_below - 1);
        self.write_acked(dir)?;
        while let Some(s) = self.sealed.front() {
            if s.last_seq >= done_below {
                break;
            }
            match std::fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &s.path, e)),
            }
            self.sealed.pop_front();
        }
        Ok(())
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> AgentError {
    AgentError::Internal(format!("{what} {}: {e}", path.display()))
}

fn segment_name(first_seq: u64) -> String {
    format!("events-{first_seq:020}.log")
}

/// The first seq a file's name says it starts at (0 for the legacy log).
fn segment_start(name: &str) -> Option<u64> {
    if name == LEGACY_LOG {
        return Some(0);
    }
    name.strip_prefix("events-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// The events of one segment; a torn last record (crash mid-append) ends
/// it.
fn read_segment(path: &Path) -> Result<Vec<Event>, AgentError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io("read", path, e))?;
    let mut events = Vec::new();
    let mut buf = bytes.as_slice();
    while !buf.is_empty() {
        let Ok(event) = Event::decode_length_delimited(&mut buf) else {
            tracing::warn!(path = %path.display(), "ignoring a torn record at the end of an event log segment");
            break;
        };
        events.push(event);
    }
    Ok(events)
}

impl EventLog {
    /// Open (or create) the buffer in `dir`.
    pub fn open(dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let acked: u64 = std::fs::read_to_string(dir.join(ACKED_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
            let entry = entry.map_err(|e| io("list", dir, e))?;
            if let Some(start) = entry.file_name().to_str().and_then(segment_start) {
                segments.push((start, entry.path()));
            }
        }
        segments.sort();
        let mut pending = VecDeque::new();
        let mut sealed = VecDeque::new();
        let mut max_seq = acked;
        for (_, path) in segments {
            let events = read_segment(&path)?;
            // Nothing whole in it (a crash right after it was made): gone
            // now, or the segment about to be made under its name would be
            // swept as this one later.
            if events.is_empty() {
                std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
                continue;
            }
            let last_seq = events.iter().map(|e| e.seq).max().unwrap_or(0);
            max_seq = max_seq.max(last_seq);
            pending.extend(events.into_iter().filter(|e| e.seq > acked));
            sealed.push_back(Sealed { path, last_seq });
        }
        // Segments are in seq order and so are the events in each; sort
        // anyway, so a hand-copied file cannot break `after`'s search.
        pending.make_contiguous().sort_by_key(|e| e.seq);
        while pending.len() > MAX_PENDING {
            pending.pop_front();
        }
        let mut inner = Inner {
            next_seq: max_seq + 1,
            acked,
            acked_on_disk: acked,
            acked_written: Instant::now(),
            pending,
            sealed,
            active: None,
        };
        // Segments left with nothing pending go now.
        inner.sweep(dir)?;
        Ok(EventLog {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
            latest: watch::Sender::new(max_seq),
        })
    }

    /// Append an event: give it the next seq, write it durably, wake the
    /// senders. Returns its seq.
    pub fn append(&self, mut event: Event) -> Result<u64, AgentError> {
        let mut inner = self.inner.lock().expect("event log poisoned");
        event.seq = inner.next_seq;
        let bytes = event.encode_length_delimited_to_vec();
        if inner
            .active
            .as_ref()
            .is_none_or(|a| a.events >= SEGMENT_EVENTS)
        {
            inner.start_segment(&self.dir)?;
        }
        let active = inner.active.as_mut().expect("a segment was just started");
        active
            .file
            .write_all(&bytes)
            .and_then(|_| active.file.sync_data())
            .map_err(|e| io("append to", &active.path, e))?;
        active.events += 1;
        inner.next_seq += 1;
        inner.pending.push_back(event);
        if inner.pending.len() > MAX_PENDING {
            inner.pending.pop_front();
            tracing::warn!("event buffer full: dropped the oldest undelivered event");
            inner.sweep(&self.dir)?;
        }
        let seq = inner.next_seq - 1;
        drop(inner);
        self.latest.send_replace(seq);
        Ok(seq)
    }

    /// The controller stored everything up to `seq`: forget it.
    pub fn ack(&self, seq: u64) -> Result<(), AgentError> {
        let mut inner = self.inner.lock().expect("event log poisoned");
        // Never past what was sent: a confused peer cannot skip events.
        let seq = seq.min(inner.next_seq - 1);
        if seq <= inner.acked {
            return Ok(());
        }
        inner.acked = seq;
        while inner.pending.front().is_some_and(|e| e.seq <= seq) {
            inner.pending.pop_front();
        }
        if inner.acked_written.elapsed() >= ACK_WRITE_INTERVAL || inner.pending.is_empty() {
            inner.write_acked(&self.dir)?;
        }
        inner.sweep(&self.dir)
    }

    /// Up to `limit` pending events after `seq`, oldest first.
    pub fn after(&self, seq: u64, limit: usize) -> Vec<Event> {
        let inner = self.inner.lock().expect("event log poisoned");
        let start = inner.pending.partition_point(|e| e.seq <= seq);
        inner.pending.range(start..).take(limit).cloned().collect()
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

    /// Segment files on disk (for tests and the benchmark).
    pub fn segments(&self) -> usize {
        let inner = self.inner.lock().expect("event log poisoned");
        inner.sealed.len() + usize::from(inner.active.is_some())
    }

    /// Wakes when an event is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

impl Drop for EventLog {
    /// A clean stop leaves `events.acked` current, so nothing is sent
    /// twice after it; a crash only costs a resend.
    fn drop(&mut self) {
        if let Ok(inner) = self.inner.get_mut() {
            if let Err(e) = inner.write_acked(&self.dir) {
                tracing::warn!("event log: {e}");
            }
        }
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

    fn messages(events: &[Event]) -> Vec<String> {
        events.iter().map(|e| e.message.clone()).collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("events"))
            .collect();
        names.sort();
        names
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
        assert_eq!(messages(&log.after(0, 100)), ["b", "c"]);
        assert_eq!(log.after(2, 100).len(), 1);
        log.ack(3).unwrap();
        assert_eq!(log.pending(), 0);
        drop(log);

        // Seqs continue after everything was acked and the segments went.
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.append(event("d")).unwrap(), 4);
        // An ack beyond what exists cannot skip future events.
        log.ack(99).unwrap();
        assert_eq!(log.append(event("e")).unwrap(), 5);
        assert_eq!(messages(&log.after(0, 100)), ["e"]);
    }

    #[test]
    fn a_torn_tail_is_dropped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.append(event("whole")).unwrap();
        drop(log);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(segment_name(1)))
            .unwrap();
        f.write_all(&[0x40, 1, 2]).unwrap();
        drop(f);
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.after(0, 100).len(), 1);
        assert_eq!(log.append(event("next")).unwrap(), 2);
        drop(log);
        // What was appended after the torn record is in a segment of its
        // own, so it is read back too.
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(messages(&log.after(0, 100)), ["whole", "next"]);
    }

    #[test]
    fn segments_roll_over_and_go_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let n = 2 * SEGMENT_EVENTS + 10;
        for i in 0..n {
            log.append(event(&i.to_string())).unwrap();
        }
        assert_eq!(log.segments(), 3);
        // Half the first segment acked: nothing can go yet.
        log.ack(SEGMENT_EVENTS / 2).unwrap();
        assert_eq!(log.segments(), 3);
        // The first segment whole, and one more event: it goes.
        log.ack(SEGMENT_EVENTS + 1).unwrap();
        assert_eq!(log.segments(), 2);
        assert_eq!(
            files(dir.path()),
            [
                segment_name(SEGMENT_EVENTS + 1),
                segment_name(2 * SEGMENT_EVENTS + 1),
                ACKED_FILE.to_string(),
            ]
        );
        assert_eq!(log.after(0, 1)[0].seq, SEGMENT_EVENTS + 2);
        // Batches: `limit` at most, from the seq asked for.
        let batch = log.after(SEGMENT_EVENTS + 10, 7);
        assert_eq!(batch.len(), 7);
        assert_eq!(batch[0].seq, SEGMENT_EVENTS + 11);
        // A crash (no drop) before the rest was acked: a restart resends
        // from where the ack file says (it may lag by ACK_WRITE_INTERVAL;
        // never beyond).
        std::mem::forget(log);
        let log = EventLog::open(dir.path()).unwrap();
        let first = log.after(0, 1)[0].seq;
        assert!((2..=SEGMENT_EVENTS + 2).contains(&first), "{first}");
        assert_eq!(log.after(0, usize::MAX).last().unwrap().seq, n);
        log.ack(n).unwrap();
        assert_eq!(log.pending(), 0);
        // Only the segment holding the newest seq may stay; seqs go on.
        assert!(log.segments() <= 1);
        assert_eq!(log.append(event("after")).unwrap(), n + 1);
        drop(log);
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(messages(&log.after(0, 100)), ["after"]);
    }

    #[test]
    fn a_segment_left_empty_by_a_crash_is_not_swept_with_its_successor() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.append(event("a")).unwrap();
        log.append(event("b")).unwrap();
        std::mem::forget(log);
        // The crash came right after the next segment was made.
        std::fs::write(dir.path().join(segment_name(3)), [0x40, 1]).unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.append(event("c")).unwrap(), 3);
        log.ack(2).unwrap();
        drop(log);
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(messages(&log.after(0, 100)), ["c"]);
    }

    #[test]
    fn an_older_agents_single_log_is_read_as_the_first_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for (seq, msg) in [(6, "f"), (7, "g")] {
            let mut e = event(msg);
            e.seq = seq;
            e.encode_length_delimited(&mut bytes).unwrap();
        }
        std::fs::write(dir.path().join(LEGACY_LOG), bytes).unwrap();
        std::fs::write(dir.path().join(ACKED_FILE), "5").unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(messages(&log.after(0, 100)), ["f", "g"]);
        assert_eq!(log.append(event("h")).unwrap(), 8);
        log.ack(8).unwrap();
        assert!(!dir.path().join(LEGACY_LOG).exists());
    }

    #[test]
    fn the_oldest_go_when_the_buffer_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        // Fill past MAX_PENDING through the disk: a restart trims the same
        // way append does, and the dropped events' segments go.
        drop(log);
        let total = MAX_PENDING as u64 + SEGMENT_EVENTS + 5;
        let mut seq = 1;
        while seq <= total {
            let mut bytes = Vec::new();
            let first = seq;
            while seq <= total && seq < first + SEGMENT_EVENTS {
                let mut e = event("x");
                e.seq = seq;
                e.encode_length_delimited(&mut bytes).unwrap();
                seq += 1;
            }
            std::fs::write(dir.path().join(segment_name(first)), bytes).unwrap();
        }
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.pending(), MAX_PENDING);
        assert_eq!(log.after(0, 1)[0].seq, total - MAX_PENDING as u64 + 1);
        // The first segment held only dropped events.
        assert!(!dir.path().join(segment_name(1)).exists());
        assert_eq!(log.append(event("y")).unwrap(), total + 1);
        assert_eq!(log.pending(), MAX_PENDING);
    }
}
