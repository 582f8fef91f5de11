//! The inventory stream (`WatchInventory`): this host's container list,
//! sent to a controller at once and again when it changes.
//!
//! Why: a controller answering `roomyctl ls` by asking every agent makes
//! one call per host per `ls`; at 10,000 hosts that is seconds of CPU on
//! the controller and the agents for every listing. With the list kept
//! current by its agent, the controller answers from memory.
//!
//! What "changes" means, cheaply:
//! 1. The backend's change count ([`StorageBackend::change_count`]) moved:
//!    a Docker event, an ended resize or repair. The list is read again at
//!    the next tick (every `min_interval`, 1 s by default): the rows of
//!    the containers that changed, the others as the backend keeps them
//!    ([`StorageBackend::list_kept_rows`]; a growth changes one row of
//!    200), with use read again as in 2.
//! 2. Use moves with writes, which no event announces. The host's write
//!    counter ([`StorageBackend::written_bound`]) says whether anything was
//!    written: use is read again after `usage_interval` (10 s) once 16 MiB
//!    were written, after six of those once anything was. Only use: the
//!    list last sent, each row's use read again (a statvfs or a quotactl
//!    each, [`StorageBackend::usage`]) and its fill rate now; what else a
//!    row says changes with the change count, and a whole list, every row
//!    read afresh, at least every 5 minutes while anything is written or
//!    changes (a change made by hand). An idle host's list is never read
//!    again: its agent pays for nothing.
//! 3. A list equal to the one sent last is not sent again.
//! 4. After a list that took `t` to read, the next is read no sooner than
//!    50 `t` later: a host whose containers come and go all the time pays
//!    at most a 50th of a core per stream for its lists.
//! 5. A controller that asks for changes only
//!    (`WatchInventoryRequest.changes_only`) gets the whole list first,
//!    then only the rows that are new or differ from the last sent, and
//!    the ids of those gone (`roomy_proto::inventory`). Why: while 20 of
//!    200 containers fill, each list differs in about 20 rows, and sending
//!    all 220 (encoding, then TLS sealing, under emulation a tenth of the
//!    agent's CPU) was most of what the stream cost.
//!
//! Each list carries the change count read before it was read, so that the
//! controller can tell it from an older one (`InspectResponse.generation`).

use std::time::{Duration, Instant};

use prost::Message;
use roomy_proto::v1::{ContainerStorage, InspectResponse, WatchInventoryRequest};
use tokio::sync::mpsc;
use tonic::Status;

use crate::backend::{ContainerRef, StorageBackend};
use crate::error::AgentError;
use crate::policy::Engine;

/// Written bytes that make use worth reading again after one usage
/// interval.
const WRITTEN_ENOUGH: u64 = 16 << 20;

/// With less written, use is read again after this many usage intervals.
const SLOW_FACTOR: u32 = 6;

/// Between changes, only use is read again, except once this long after
/// the last whole list: what no change count announces and use alone does
/// not show (a filesystem grown by hand) shows within it on a host that
/// writes.
const WHOLE_EVERY: Duration = Duration::from_secs(300);

/// After a list that took `t` to read, the next waits at least this many
/// `t`: on a host whose containers come and go all the time, and where a
/// list is slow (hundreds of containers, an emulated machine), reading
/// lists takes at most a 50th of a core per stream.
const DUTY: u32 = 50;

/// How long to wait after a list that took `took` before looking again.
fn pause_after(took: Duration, pacing: Pacing) -> Duration {
    pacing.min_interval.max(took * DUTY)
}

/// How often the stream looks, and reads use again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// The shortest time between two lists, and the tick.
    pub min_interval: Duration,
    /// Use is read again this long after the last list when enough was
    /// written.
    pub usage_interval: Duration,
    /// After the first list, send only what changed.
    pub changes_only: bool,
}

impl Pacing {
    /// The request's pacing; zeros are the defaults. A tick under 100 ms
    /// is raised to it: a controller cannot make the agent spin.
    pub fn from_request(r: &WatchInventoryRequest) -> Self {
        let ms =
            |v: u32, default: u64| Duration::from_millis(if v == 0 { default } else { v.into() });
        Pacing {
            min_interval: ms(r.min_interval_ms, 1000).max(Duration::from_millis(100)),
            usage_interval: ms(r.usage_interval_ms, 10_000),
            changes_only: r.changes_only,
        }
    }
}

/// What the last list was read at.
#[derive(Debug, Clone)]
struct LastRead {
    changes: u64,
    written: Option<u64>,
    at: Instant,
}

impl LastRead {
    /// Whether the list is to be read again now.
    fn due(&self, changes: u64, written: Option<u64>, now: Instant, pacing: Pacing) -> bool {
        if changes != self.changes {
            return true;
        }
        let age = now.saturating_duration_since(self.at);
        match (written, self.written) {
            (Some(now_w), Some(then_w)) => {
                let moved = now_w.saturating_sub(then_w);
                (moved >= WRITTEN_ENOUGH && age >= pacing.usage_interval)
                    || (moved > 0 && age >= pacing.usage_interval * SLOW_FACTOR)
            }
            // No write counter: use may have moved at any time.
            _ => age >= pacing.usage_interval,
        }
    }
}

/// The containers (all, or the one `container` names) with their fill
/// rates, and the change count read before them: what `Inspect` answers
/// and what the stream sends.
pub async fn list<B: StorageBackend + Clone>(
    backend: &B,
    engine: &Engine<B>,
    container: Option<&ContainerRef>,
) -> Result<InspectResponse, AgentError> {
    let generation = backend.change_count();
    let mut containers = backend.inspect(container).await?;
    for c in &mut containers {
        put_fill_rate(engine, c);
    }
    Ok(InspectResponse {
        containers,
        generation,
        ..Default::default()
    })
}

/// The policy engine's fill rate on a row (0 where it has none).
fn put_fill_rate<B: StorageBackend + Clone>(engine: &Engine<B>, c: &mut ContainerStorage) {
    c.fill_rate_bytes_per_second = engine.fill_rate(&c.id).unwrap_or(0.0);
}

/// `containers` (as last sent, or with rows kept since their container's
/// last change) with each one's use and fill rate of now: what writes
/// change. A full list reads every container's disk (on
/// devicemapper a dozen syscalls each, half a second of the agent's CPU
/// for 220 containers under emulation); this, one read of use each, and
/// none where the policy sampler read it within its idle bound.
pub(crate) fn with_use_now<B: StorageBackend + Clone>(
    backend: &B,
    engine: &Engine<B>,
    mut containers: Vec<ContainerStorage>,
    generation: u64,
) -> InspectResponse {
    let recent = engine.put_recent_use(&mut containers);
    for (c, recent) in containers.iter_mut().zip(recent) {
        if !recent {
            if let Some(u) = backend.usage(c) {
                crate::policy::put_usage(c, u);
            }
        }
    }
    InspectResponse {
        containers,
        generation,
        ..Default::default()
    }
}

/// Start one stream: lists go to the returned receiver until it is
/// dropped (the controller went away) or a list fails (the error is sent,
/// then the stream ends; the controller opens a new one).
pub fn spawn<B: StorageBackend + Clone>(
    backend: B,
    engine: Engine<B>,
    pacing: Pacing,
) -> mpsc::Receiver<Result<InspectResponse, Status>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut last: Option<LastRead> = None;
        let mut sent: Option<Vec<ContainerStorage>> = None;
        // When the last whole list was read (not only use).
        let mut whole_at: Option<Instant> = None;
        loop {
            let changes = backend.change_count();
            let written = backend.written_bound();
            let now = Instant::now();
            let mut pause = pacing.min_interval;
            if last
                .as_ref()
                .is_none_or(|l| l.due(changes, written, now, pacing))
            {
                let (kind, listed) = match (&last, &sent) {
                    (Some(l), Some(rows))
                        if whole_at.is_some_and(|t| now.duration_since(t) < WHOLE_EVERY) =>
                    {
                        if l.changes == changes {
                            // Nothing but writes since the last list: its
                            // rows' use.
                            let list = with_use_now(&backend, &engine, rows.clone(), changes);
                            ("use", Ok(list))
                        } else {
                            // A change: the rows of what changed read again,
                            // the others as kept.
                            let list = backend
                                .list_kept_rows()
                                .await
                                .map(|rows| with_use_now(&backend, &engine, rows, changes));
                            ("kept", list)
                        }
                    }
                    _ => {
                        whole_at = Some(now);
                        ("whole", list(&backend, &engine, None).await)
                    }
                };
                let took = now.elapsed();
                pause = pause_after(took, pacing);
                match listed {
                    Ok(list) => {
                        last = Some(LastRead {
                            changes: list.generation,
                            written,
                            at: now,
                        });
                        // None: the list is the one sent last.
                        let msg = roomy_proto::inventory::message(
                            sent.as_deref(),
                            &list,
                            pacing.changes_only,
                        );
                        // How often the stream lists, and how, and what it
                        // sends: bench-host counts these in each window.
                        tracing::debug!(
                            kind,
                            rows = list.containers.len(),
                            took_ms = took.as_millis() as u64,
                            sent = msg.is_some(),
                            sent_rows = msg.as_ref().map_or(0, |m| m.containers.len()),
                            sent_bytes = msg.as_ref().map_or(0, |m| m.encoded_len()),
                            "inventory listed"
                        );
                        if let Some(msg) = msg {
                            sent = Some(list.containers);
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            tokio::select! {
                // With the sampler's passes: no wake-up of its own.
                _ = engine.beat().sleep(pause) => {}
                _ = tx.closed() => return,
                // A stopping agent ends the stream, so that the server's
                // graceful shutdown can finish: held open, every stop of
                // an agent a controller watched took the whole 10 s grace
                // and ended by `exit`.
                _ = roomy_daemon::signal::shutdown() => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sim::SimBackend;
    use crate::events::EventLog;
    use crate::metrics::AgentMetrics;
    use crate::policy::Cadence;
    use crate::sync::PolicyStore;
    use std::sync::Arc;

    const PACE: Pacing = Pacing {
        min_interval: Duration::from_millis(100),
        usage_interval: Duration::from_secs(1),
        changes_only: false,
    };

    #[test]
    fn a_list_is_due_when_something_changed_or_enough_was_written() {
        let t0 = Instant::now();
        let last = LastRead {
            changes: 5,
            written: Some(1000),
            at: t0,
        };
        let after = |ms| t0 + Duration::from_millis(ms);
        // Nothing moved: never, however long.
        assert!(!last.due(5, Some(1000), after(3_600_000), PACE));
        // A change: at once.
        assert!(last.due(6, Some(1000), after(0), PACE));
        // Enough written: after one usage interval, not before.
        let lots = Some(1000 + WRITTEN_ENOUGH);
        assert!(!last.due(5, lots, after(999), PACE));
        assert!(last.due(5, lots, after(1000), PACE));
        // A little written: only after six.
        assert!(!last.due(5, Some(1001), after(5999), PACE));
        assert!(last.due(5, Some(1001), after(6000), PACE));
        // No write counter: every usage interval.
        let blind = LastRead {
            written: None,
            ..last
        };
        assert!(!blind.due(5, None, after(999), PACE));
        assert!(blind.due(5, None, after(1000), PACE));
    }

    #[test]
    fn slow_lists_are_read_less_often() {
        let ms = Duration::from_millis;
        // A quick list (the sim, a small host): the tick.
        assert_eq!(pause_after(ms(2), PACE), ms(100));
        // 300 ms for a list (200 containers under emulation): 15 s.
        assert_eq!(pause_after(ms(300), PACE), ms(15_000));
    }

    #[test]
    fn a_request_cannot_make_the_agent_spin() {
        let p = Pacing::from_request(&WatchInventoryRequest {
            min_interval_ms: 1,
            usage_interval_ms: 0,
            changes_only: false,
        });
        assert_eq!(p.min_interval, Duration::from_millis(100));
        assert_eq!(p.usage_interval, Duration::from_secs(10));
    }

    /// The stream's next list, within 10 s, or `what` did not arrive.
    async fn next(
        rx: &mut mpsc::Receiver<Result<InspectResponse, Status>>,
        what: &str,
    ) -> InspectResponse {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} was not sent"))
            .unwrap()
            .unwrap()
    }

    fn engine(sim: &SimBackend, dir: &std::path::Path) -> Engine<SimBackend> {
        Engine::new(
            sim.clone(),
            Arc::new(PolicyStore::open(dir).unwrap()),
            Arc::new(EventLog::open(dir).unwrap()),
            Arc::new(AgentMetrics::default()),
            Cadence::default(),
        )
    }

    /// What a controller sees: the list at once; nothing more while the
    /// host is idle; a resize's new size within a tick, with a higher
    /// generation than the list before it.
    #[tokio::test]
    async fn the_list_comes_at_once_then_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBackend::demo("h", 3);
        let mut rx = spawn(sim.clone(), engine(&sim, dir.path()), PACE);
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(first.containers.len(), 3);
        // Idle: 10 ticks and nothing.
        let quiet = tokio::time::timeout(Duration::from_millis(1000), rx.recv()).await;
        assert!(quiet.is_err(), "an idle host sent {quiet:?}");
        let (c, size) = crate::service::parse_resize("c1", "+1G").unwrap();
        let grown = sim.resize(&c, size).await.unwrap().container.fs_size_bytes;
        let next = next(&mut rx, "the resize").await;
        assert!(next.generation > first.generation);
        let c1 = next.containers.iter().find(|c| c.name == "c1").unwrap();
        assert_eq!(c1.fs_size_bytes, grown);
        // The change's list kept what it could: the first list was read
        // afresh, the change's from the rows kept.
        assert_eq!(sim.kept_lists(), 1, "the change's list read every row");
    }

    /// A controller that asks for changes only: the whole list first,
    /// then a resize's row alone, and the generation moves as before.
    #[tokio::test]
    async fn a_stream_asked_for_changes_sends_only_the_changed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBackend::demo("h", 3);
        let pace = Pacing {
            changes_only: true,
            ..PACE
        };
        let mut rx = spawn(sim.clone(), engine(&sim, dir.path()), pace);
        let first = next(&mut rx, "the first list").await;
        assert!(!first.changes_only);
        assert_eq!(first.containers.len(), 3);
        let (c, size) = crate::service::parse_resize("c1", "+1G").unwrap();
        let grown = sim.resize(&c, size).await.unwrap().container;
        let next = next(&mut rx, "the resize").await;
        assert!(next.changes_only, "{next:?}");
        assert!(next.generation > first.generation);
        assert!(next.removed.is_empty());
        assert_eq!(next.containers.len(), 1, "only c1: {next:?}");
        assert_eq!(next.containers[0].id, grown.id);
        assert_eq!(next.containers[0].fs_size_bytes, grown.fs_size_bytes);
        // Applied as a controller does: the list an ls would show.
        let mut kept = Some(first.containers.clone());
        roomy_proto::inventory::apply(&mut kept, next).unwrap();
        let kept = kept.unwrap();
        let now = list(&sim, &engine(&sim, dir.path()), None).await.unwrap();
        assert_eq!(
            kept.iter()
                .map(|c| (&c.id, c.fs_size_bytes))
                .collect::<Vec<_>>(),
            now.containers
                .iter()
                .map(|c| (&c.id, c.fs_size_bytes))
                .collect::<Vec<_>>()
        );
    }

    /// Writes move use: the list is read again after the usage interval
    /// and shows the new use.
    #[tokio::test]
    async fn writes_bring_a_new_list_after_the_usage_interval() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBackend::demo("h", 2);
        let mut rx = spawn(sim.clone(), engine(&sim, dir.path()), PACE);
        let first = rx.recv().await.unwrap().unwrap();
        let c0 = first
            .containers
            .iter()
            .find(|c| c.name == "c0")
            .unwrap()
            .clone();
        let reads = sim.usage_reads();
        sim.write(&c0.id, 100 << 20);
        let next = next(&mut rx, "the write's use").await;
        let now = next.containers.iter().find(|c| c.name == "c0").unwrap();
        assert_eq!(now.fs_used_bytes, c0.fs_used_bytes + (100 << 20));
        assert_eq!(next.generation, first.generation, "a write is not a change");
        // Use alone was read (a read per row), not the whole list again.
        assert_eq!(sim.usage_reads(), reads + 2);
    }
}
