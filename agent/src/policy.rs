//! The policy engine: enforces the controller's policies on this host, by
//! itself, so that growth goes on while the controller is down.
//!
//! Two loops. The refresh loop lists the running containers and reads the
//! pool every few seconds (Docker calls, dm ioctls) and runs pool policies.
//! The sample loop reads every container's filesystem use with statvfs
//! every 250 ms, measures its fill rate, and asks the one decision function
//! (`roomy_policy::decide`) what to do. A filesystem is left unread at a
//! pass while the host has written too little since its last read to bring
//! it to its trigger (`Track::due`), up to `Cadence::idle`: on an idle host
//! the statvfs calls drop eightfold. Growth runs in its own task,
//! through the same backend call as a manual resize, one per container at a
//! time. Every action and every change of skip reason is an event.

use std::collections::{HashMap, VecDeque};
use std::ops::Not;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use roomy_policy::{cap_for, decide, decide_pool, idle, select, PoolNumbers, Verdict};
use roomy_proto::v1::{
    ContainerStorage, Event, EventKind, Policy, PolicyKind, PolicySet, PoolStatus,
};
use roomy_proto::{format_bytes, ByteSize};

use crate::backend::shared::needs_repair;
use crate::backend::{ContainerRef, GrowAction, PoolGrowth, SizeRequest, StorageBackend, Usage};
use crate::beat::Beat;
use crate::events::EventLog;
use crate::metrics::{AgentMetrics, ContainerGauges, Source};
use crate::sync::PolicyStore;
use crate::sys::atomic::write_atomically;

/// Fill rate is the slope over this much recent history: long enough to
/// smooth page-cache bursts, short enough to see a new writer at once.
const RATE_WINDOW: Duration = Duration::from_secs(3);
/// After a failed grow, wait this long before the policy tries again.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// The same skip is reported again after this long.
const NOTE_AGAIN: Duration = Duration::from_secs(300);
/// How long a container new to the agent is read at every pass
/// (`Track::young_until`).
const YOUNG: Duration = Duration::from_secs(30);
/// A container unlisted this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// Without policies, refresh only for the metrics.
const IDLE_REFRESH: Duration = Duration::from_secs(15);
/// With nothing changed (no Docker event, no resize ended), the refresh
/// lists the containers this often, or at its own cadence if slower: the
/// rows the backend keeps expire on their own clock (`ROW_TTL`), and what
/// someone changed by hand shows when they do. Listing 200 containers
/// every 2 s to find nothing new was a fifth of the idle agent's work
/// under emulation (copies of every row and view, a map rebuilt).
const LIST_EVERY: Duration = Duration::from_secs(10);
/// Bytes of a filesystem's space one byte written can take, at most, for
/// the sampler's bound: XFS's speculative preallocation past the end of a
/// growing file reserves up to as much again as the file holds, and
/// delayed allocation reserves worst-case extent-tree blocks beside the
/// data; 4 covers both with room.
const SPACE_PER_BYTE_WRITTEN: u64 = 4;

/// How often the engine looks.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// statvfs of every running container.
    pub sample: Duration,
    /// Container list and pool.
    pub refresh: Duration,
    /// statvfs of a container filling fast enough to fire its policy
    /// before the next `sample`: the wait between crossing a threshold and
    /// noticing it is then this short, not up to a whole `sample`.
    pub hot: Duration,
    /// Longest a filesystem goes unread at the full passes while the
    /// host's write counters say too little was written to bring it to its
    /// trigger. It bounds what those counters miss: space taken without
    /// writing (`fallocate`), and deletions, which only the metrics see.
    pub idle: Duration,
}

impl Cadence {
    /// The sampler's passes, on which the agent's other periodic work
    /// wakes (`beat.rs`): one beat per sample interval.
    pub fn beat(&self) -> Beat {
        Beat::new(self.sample)
    }
}

impl Default for Cadence {
    fn default() -> Self {
        Cadence {
            sample: Duration::from_millis(250),
            refresh: Duration::from_secs(2),
            hot: Duration::from_millis(50),
            idle: Duration::from_secs(2),
        }
    }
}

/// Whether `policy` fires within `within` at `obs`'s fill rate: `obs`
/// moved forward by what that rate writes meanwhile (the caller is done
/// with it).
fn fires_within(policy: &Policy, obs: &mut roomy_policy::Observation, within: Duration) -> bool {
    if obs.fill_rate <= 0.0 {
        return false;
    }
    let ahead = (obs.fill_rate * within.as_secs_f64()) as u64;
    obs.used_bytes = obs.used_bytes.saturating_add(ahead);
    obs.avail_bytes = obs.avail_bytes.saturating_sub(ahead);
    roomy_policy::trigger(policy, obs).is_some()
}

/// Whether a pool policy idle now would grow the pool once `within` more
/// of its measured rate is written: the pool is then read at the hot
/// cadence, so a crossing is acted on within a hot tick instead of up to
/// a whole pass later (dmeventd hears the kernel's low-water event at once).
fn pool_fires_within(
    policy: &Policy,
    numbers: PoolNumbers,
    last_grow_ms: Option<i64>,
    now_ms: i64,
    within: Duration,
) -> bool {
    if numbers.data_rate <= 0.0 {
        return false;
    }
    let ahead = (numbers.data_rate * within.as_secs_f64()) as u64;
    let later = PoolNumbers {
        data_used: numbers
            .data_used
            .saturating_add(ahead)
            .min(numbers.data_total),
        ..numbers
    };
    decide_pool(policy, &later, last_grow_ms, now_ms).verdict == Verdict::Grow
}

/// Put a statvfs reading on a container's row.
pub(crate) fn put_usage(c: &mut ContainerStorage, u: Usage) {
    c.fs_total_bytes = u.total;
    c.fs_used_bytes = u.used;
    c.fs_avail_bytes = u.avail;
    c.inodes_total = u.inodes_total;
    c.inodes_used = u.inodes_used;
}

/// The statvfs figures on a container's row.
fn usage_of(c: &ContainerStorage) -> Usage {
    Usage {
        total: c.fs_total_bytes,
        used: c.fs_used_bytes,
        avail: c.fs_avail_bytes,
        inodes_total: c.inodes_total,
        inodes_used: c.inodes_used,
    }
}

/// One target's history.
#[derive(Debug, Default)]
struct Track {
    samples: VecDeque<(Instant, u64)>,
    rate: f64,
    last_grow_ms: Option<i64>,
    /// (policy, reason, when) of the last skip or dry-run event: the same
    /// one is not sent again until something else happens or NOTE_AGAIN
    /// passes, so a container hovering at a threshold does not flood.
    noted: Option<(String, &'static str, Instant)>,
    /// First sample that asked for this growth.
    fired_at: Option<Instant>,
    busy: bool,
    /// Sampled at the hot cadence: it fires before the next full pass at
    /// the rate it fills.
    hot: bool,
    retry_at: Option<Instant>,
    /// Policy in force and its cap, for metrics.
    cap: Option<(String, u64)>,
    /// When the filesystem was last read, and the host's write counter
    /// (`StorageBackend::written_bound`) then.
    read_at: Option<Instant>,
    written_at_read: u64,
    /// Bytes written that could make the policy fire, as of that read
    /// (`roomy_policy::write_headroom`); 0: read at every pass.
    headroom: u64,
    /// Listed for the first time after the agent's first listing, until
    /// then: read at every pass, write counter or not. A container fills
    /// most often right after it starts (unpacking, preallocating), and a
    /// `fallocate` moves no write counter: it would wait for `idle`.
    young_until: Option<Instant>,
}

impl Track {
    fn sample(&mut self, now: Instant, used: u64) {
        self.samples.push_back((now, used));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > RATE_WINDOW {
            self.samples.pop_front();
        }
        if let (Some(&(t0, u0)), Some(&(t1, u1))) = (self.samples.front(), self.samples.back()) {
            let dt = t1.duration_since(t0).as_secs_f64();
            if dt >= 0.2 {
                self.rate = (u1 as f64 - u0 as f64) / dt;
            }
        }
    }

    /// Whether a full pass reads this filesystem: unless the host's
    /// writes since the last read (`written` now), however they fell,
    /// are too few to reach the headroom, nothing moves (no rate, no
    /// growth going) and `idle` has not passed. Without a write counter:
    /// always.
    fn due(&self, now: Instant, written: Option<u64>, idle: Duration) -> bool {
        let (Some(written), Some(at)) = (written, self.read_at) else {
            return true;
        };
        let since = written.saturating_sub(self.written_at_read);
        self.headroom == 0
            || self.young_until.is_some_and(|t| now < t)
            || self.rate != 0.0
            || self.hot
            || self.busy
            || now.duration_since(at) >= idle
            || since.saturating_mul(SPACE_PER_BYTE_WRITTEN) >= self.headroom
    }

    /// A read at `now`, the write counter at `written`; the headroom is
    /// 0 until the policy's is known.
    fn read(&mut self, now: Instant, written: Option<u64>, used: u64) {
        self.sample(now, used);
        self.read_at = Some(now);
        self.written_at_read = written.unwrap_or(0);
        self.headroom = 0;
    }

    /// Whether this note is news (and remember it).
    fn note(&mut self, policy: &str, reason: &'static str) -> bool {
        if let Some((p, r, at)) = &self.noted {
            if p == policy && *r == reason && at.elapsed() < NOTE_AGAIN {
                return false;
            }
        }
        self.noted = Some((policy.to_string(), reason, Instant::now()));
        true
    }
}

struct Watched {
    c: ContainerStorage,
    track: Track,
    /// Last listed by the backend.
    seen: Instant,
    /// `c.labels` as the policy functions take them, built once per
    /// listing instead of once per sample.
    labels: HashMap<String, String>,
    /// The policy set last matched against this row, and the index of the
    /// policy in force from it: selection runs again only when either
    /// changes (every 250 ms it was most of the sampler's own work).
    picked: Option<(Arc<PolicySet>, Option<usize>)>,
}

impl Watched {
    fn new(c: ContainerStorage, track: Track, seen: Instant) -> Self {
        let labels = c.labels.clone().into_iter().collect();
        Watched {
            c,
            track,
            seen,
            labels,
            picked: None,
        }
    }

    /// The same container listed again as `c`: its history, and, while
    /// its name and labels stay the same, its label map and policy choice.
    fn relist(&mut self, c: ContainerStorage, seen: Instant) {
        if c.name == self.c.name && c.labels == self.c.labels {
            self.c = c;
            self.seen = seen;
        } else {
            *self = Watched::new(c, std::mem::take(&mut self.track), seen);
        }
    }

    /// The container policy in force for this container under `set`.
    fn pick<'s>(&mut self, set: &'s Arc<PolicySet>) -> Option<&'s Policy> {
        if !matches!(&self.picked, Some((s, _)) if Arc::ptr_eq(s, set)) {
            let hits = select(
                &set.policies,
                PolicyKind::Container,
                &set.host,
                &self.c.name,
                &self.labels,
            );
            let index = hits
                .first()
                .and_then(|hit| set.policies.iter().position(|p| std::ptr::eq(p, *hit)));
            self.track.cap = index.map(|i| {
                let p = &set.policies[i];
                (p.name.clone(), cap_for(p, &self.labels))
            });
            self.picked = Some((set.clone(), index));
        }
        let index = self.picked.as_ref().and_then(|(_, i)| *i)?;
        Some(&set.policies[index])
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Watched>,
    pool: Option<PoolStatus>,
    pool_track: Track,
    /// The pool's mode at the last refresh, for health events.
    pool_mode: Option<String>,
    refreshed_at: Option<Instant>,
    /// The backend's change count read just before the last listing that
    /// succeeded, and when.
    listed: Option<(u64, Instant)>,
}

/// The engine. Cheap to clone.
pub struct Engine<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Engine<B> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<B> {
    backend: B,
    policies: Arc<PolicyStore>,
    events: Arc<EventLog>,
    metrics: Arc<AgentMetrics>,
    cadence: Cadence,
    state: Mutex<State>,
    /// Whether the last pass left a container hot: the hot ticks between
    /// full passes skip everything otherwise.
    any_hot: AtomicBool,
    /// Whether the pool's policy fires within a pass at the pool's rate:
    /// the pool is then read at the hot cadence too (one status ioctl).
    pool_hot: AtomicBool,
    /// The sampler saw the backend's change count move (a container
    /// started, an event): the refresh lists now instead of at its next
    /// turn, up to `refresh` later, so a new container's policy starts
    /// within a pass or two of its start.
    relist: tokio::sync::Notify,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The pool's mode changed since `before` (or is unhealthy at first
/// sight): the mode it came from, and the pool.
fn mode_change(before: Option<String>, now: &PoolStatus) -> Option<(String, PoolStatus)> {
    let before = before.unwrap_or_else(|| "rw".into());
    (before != now.mode).then(|| (before, now.clone()))
}

/// What a health event says: what changed, what it means, what to do.
fn health_message(from: &str, pool: &PoolStatus) -> String {
    let next = match pool.mode.as_str() {
        "rw" => "it takes writes again".to_string(),
        "out_of_data_space" => format!(
            "writes to its containers {} until it grows: roomyctl pool grow --data +SIZE",
            if pool.when_full == "error" {
                "fail"
            } else {
                "wait (for the kernel's no_space_timeout, then fail)"
            }
        ),
        "ro" => "its metadata is full and its containers cannot grow until it grows: \
            roomyctl pool grow --metadata +SIZE"
            .to_string(),
        mode if needs_repair(mode) => {
            "the kernel takes no new size until its metadata is repaired, and Roomy refuses \
            to grow anything on it: stop Docker, run thin_check (then thin_repair) on the \
            pool's metadata, start Docker (README: \"A pool that needs a check\"); the kernel \
            log (dmesg) says what happened"
                .to_string()
        }
        _ => "read the kernel log (dmesg) and dmsetup status".to_string(),
    };
    format!(
        "pool {} went from {from} to {}: {next} ({})",
        pool.name, pool.mode, pool.message
    )
}

/// A grow the sample loop decided on.
struct Grow {
    id: String,
    name: String,
    policy: String,
    reason: &'static str,
    why: String,
    from: u64,
    to: u64,
    fired_at: Instant,
}

impl<B: StorageBackend + Clone> Engine<B> {
    /// An engine over `backend`, enforcing what `policies` holds.
    pub fn new(
        backend: B,
        policies: Arc<PolicyStore>,
        events: Arc<EventLog>,
        metrics: Arc<AgentMetrics>,
        cadence: Cadence,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                backend,
                policies,
                events,
                metrics,
                cadence,
                state: Mutex::new(State::default()),
                any_hot: AtomicBool::new(false),
                pool_hot: AtomicBool::new(false),
                relist: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The sampler's passes, on which the agent's other periodic work
    /// wakes (`Cadence::beat`).
    pub fn beat(&self) -> Beat {
        self.inner.cadence.beat()
    }

    /// Start both loops.
    pub fn spawn(&self) {
        let this = self.clone();
        tokio::spawn(async move { this.refresh_loop().await });
        let this = self.clone();
        tokio::spawn(async move { this.sample_loop().await });
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("engine state poisoned")
    }

    /// Append an event and count it.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        kind: EventKind,
        policy: &str,
        target: &str,
        container_id: &str,
        reason: &str,
        from: u64,
        to: u64,
        message: String,
        duration: Option<Duration>,
    ) {
        let m = &self.inner.metrics;
        match kind {
            EventKind::Skipped => m.skips.inc(&[policy, reason]),
            // Not a policy's action: roomy_pool_healthy tells it.
            EventKind::Health => {}
            other => m.actions.inc(&[policy, other.word()]),
        }
        match kind {
            EventKind::Failed => tracing::error!(policy, target, "{message}"),
            EventKind::Health if reason != "rw" => tracing::warn!(target, "{message}"),
            _ => tracing::info!(policy, target, kind = kind.word(), "{message}"),
        }
        let event = Event {
            time_ms: now_ms(),
            policy: policy.into(),
            target: target.into(),
            container_id: container_id.into(),
            kind: kind as i32,
            reason: reason.into(),
            from_bytes: from,
            to_bytes: to,
            message,
            duration_ms: duration.map_or(0, |d| d.as_millis() as u64),
            ..Default::default()
        };
        // The append syncs to disk: off the one worker's back.
        if let Err(e) = crate::backend::shared::off_the_worker(|| self.inner.events.append(event)) {
            tracing::error!("event not buffered: {e}");
        }
    }

    async fn refresh_loop(self) {
        let mut adopted = self.inner.policies.subscribe();
        loop {
            // Seen before it is read: a set adopted from here on wakes
            // the wait below.
            adopted.borrow_and_update();
            let busy = !self.inner.policies.current().policies.is_empty();
            let wait = if busy {
                self.inner.cadence.refresh
            } else {
                IDLE_REFRESH
            };
            let left = self
                .state()
                .refreshed_at
                .map_or(Duration::ZERO, |t| wait.saturating_sub(t.elapsed()));
            if left.is_zero() {
                self.refresh().await;
            }
            // Until the next refresh is due, or a new policy set, whose
            // cadence may be shorter (an idle host waits 15 s): no wake-up
            // in between.
            let pause = if left.is_zero() { wait } else { left };
            tokio::select! {
                _ = self.beat().sleep(pause) => {}
                Ok(()) = adopted.changed() => {}
                _ = self.inner.relist.notified() => {
                    self.refresh().await;
                }
            }
        }
    }

    fn mode_file(&self) -> std::path::PathBuf {
        self.inner.events.dir().join("pool.mode")
    }

    /// Re-read the pool, and the running containers when something may
    /// have changed them (`LIST_EVERY`); run pool policies.
    async fn refresh(&self) {
        let t0 = Instant::now();
        let changes = self.inner.backend.change_count();
        let list_every = self.inner.cadence.refresh.max(LIST_EVERY);
        // Without policies no sampler reads use, and this refresh (every
        // `IDLE_REFRESH`) is what brings the metrics today's: it lists.
        let enforcing = !self.inner.policies.current().policies.is_empty();
        let list = !enforcing
            || self
                .state()
                .listed
                .is_none_or(|(c, at)| c != changes || t0.duration_since(at) >= list_every);
        let listed = if list {
            Some(self.inner.backend.running().await)
        } else {
            None
        };
        let t1 = Instant::now();
        let pool = self.inner.backend.inspect_pool().await.ok();
        // Where a refresh's time goes (bench-host reads these).
        tracing::debug!(
            containers = listed
                .as_ref()
                .map_or(0, |l| l.as_ref().map_or(0, Vec::len)),
            listed = list,
            list_ms = (t1 - t0).as_millis() as u64,
            pool_ms = t1.elapsed().as_millis() as u64,
            "refreshed"
        );
        let health;
        {
            let mut state = self.state();
            state.refreshed_at = Some(Instant::now());
            if let Some(Ok(list)) = listed {
                let first_listing = state.listed.is_none();
                state.listed = Some((changes, t0));
                let now = Instant::now();
                // The sampler reads each filesystem at least every `idle`
                // while it enforces policies: its figures are fresh enough.
                let recent = self.inner.cadence.idle * 2;
                // In place: rebuilding the map each time cost fresh pages
                // (its table outgrew each allocation again).
                for mut c in list {
                    match state.containers.get_mut(&c.id) {
                        Some(w) => {
                            if w.track
                                .read_at
                                .is_some_and(|t| now.duration_since(t) < recent)
                            {
                                put_usage(&mut c, usage_of(&w.c));
                            } else if let Some(u) = self.inner.backend.usage(&c) {
                                // A row the backend kept from an earlier
                                // refresh has that refresh's use: the
                                // metrics want today's, and without
                                // policies no sampler refreshes it.
                                put_usage(&mut c, u);
                            }
                            w.relist(c, now);
                        }
                        None => {
                            if let Some(u) = self.inner.backend.usage(&c) {
                                put_usage(&mut c, u);
                            }
                            // Not at the first listing: the agent's
                            // start is not the containers'.
                            let track = Track {
                                young_until: first_listing.not().then(|| now + YOUNG),
                                ..Track::default()
                            };
                            let w = Watched::new(c, track, now);
                            state.containers.insert(w.c.id.clone(), w);
                        }
                    }
                }
                // A container missing from one listing (a read that failed
                // mid-way) keeps its history for a while, so that its
                // cooldown and noted skips hold; a grow in flight keeps it
                // until it reports.
                state
                    .containers
                    .retain(|_, w| w.track.busy || now.duration_since(w.seen) < FORGET_AFTER);
            }
            if let Some(p) = &pool {
                state.pool_track.sample(Instant::now(), p.data_used_bytes);
            }
            state.pool = pool.clone();
            health = pool.as_ref().and_then(|p| {
                // The mode last reported survives a restart, so that a pool
                // repaired while the agent was down is reported back to rw.
                let before = state
                    .pool_mode
                    .replace(p.mode.clone())
                    .or_else(|| std::fs::read_to_string(self.mode_file()).ok());
                mode_change(before.map(|m| m.trim().to_string()), p)
            });
        }
        if let Some((_, p)) = &health {
            if let Err(e) = write_atomically(&self.mode_file(), p.mode.as_bytes()) {
                tracing::warn!("pool mode not remembered: {e}");
            }
        }
        if let Some((from, p)) = health {
            self.emit(
                EventKind::Health,
                "",
                "pool",
                "",
                &p.mode,
                0,
                0,
                health_message(&from, &p),
                None,
            );
        }
        if let Some(p) = pool {
            self.pool_policies(p).await;
        }
    }

    /// Pool policies on `pool`, one run at a time: the refresh loop and
    /// the sampler both call it.
    async fn pool_policies(&self, pool: PoolStatus) {
        {
            let mut state = self.state();
            if state.pool_track.busy {
                return;
            }
            state.pool_track.busy = true;
        }
        self.run_pool_policies(pool).await;
        self.state().pool_track.busy = false;
    }

    /// The pool as the kernel has it now, when a pool policy is in force
    /// and no growth of it is under way: what the refresh loop read, with
    /// its use re-read cheaply, so that a pool filling fast is seen within
    /// one sample (the refresh's Docker and LVM reads take seconds under
    /// load).
    fn sample_pool(&self) -> Option<PoolStatus> {
        let set = self.inner.policies.current();
        let hits = select(
            &set.policies,
            PolicyKind::Pool,
            &set.host,
            "",
            &HashMap::new(),
        );
        let Some(policy) = hits.first() else {
            // No pool policy (any more): nothing to read at the hot cadence.
            self.inner.pool_hot.store(false, Ordering::Relaxed);
            return None;
        };
        let last = {
            let state = self.state();
            if state.pool_track.busy {
                return None;
            }
            let Some(last) = state.pool.clone() else {
                self.inner.pool_hot.store(false, Ordering::Relaxed);
                return None;
            };
            last
        };
        let now = self.inner.backend.pool_usage(&last)?;
        let (numbers, last_grow) = {
            let mut state = self.state();
            state.pool_track.sample(Instant::now(), now.data_used_bytes);
            state.pool = Some(now.clone());
            (
                PoolNumbers::from_status(&now, state.pool_track.rate),
                state.pool_track.last_grow_ms,
            )
        };
        // Here, not in the growth's task: the loop decides its next wake
        // right after this returns. Hot only while idle now: a growth that
        // fails is retried at full passes, not at every hot tick.
        let t = now_ms();
        let hot = pool_fires_within(policy, numbers, last_grow, t, self.inner.cadence.sample)
            && decide_pool(policy, &numbers, last_grow, t).verdict == Verdict::Idle;
        self.inner.pool_hot.store(hot, Ordering::Relaxed);
        Some(now)
    }

    async fn run_pool_policies(&self, pool: PoolStatus) {
        let set = self.inner.policies.current();
        let hits = select(
            &set.policies,
            PolicyKind::Pool,
            &set.host,
            "",
            &HashMap::new(),
        );
        let Some(policy) = hits.first() else {
            return;
        };
        let (numbers, last) = {
            let state = self.state();
            (
                PoolNumbers::from_status(&pool, state.pool_track.rate),
                state.pool_track.last_grow_ms,
            )
        };
        let d = decide_pool(policy, &numbers, last, now_ms());
        let fired = Instant::now();
        match d.verdict {
            Verdict::Idle => {}
            Verdict::Skip | Verdict::WouldGrow => {
                if self.state().pool_track.note(&policy.name, d.reason) {
                    let kind = if d.verdict == Verdict::Skip {
                        EventKind::Skipped
                    } else {
                        EventKind::WouldGrow
                    };
                    let to = d.data_to.unwrap_or(pool.data_total_bytes);
                    self.emit(
                        kind,
                        &policy.name,
                        "pool",
                        "",
                        d.reason,
                        pool.data_total_bytes,
                        to,
                        d.message,
                        None,
                    );
                }
            }
            Verdict::Grow => {
                let growth = PoolGrowth {
                    data: d.data_to.map(|b| SizeRequest::Absolute(ByteSize(b))),
                    metadata: d.meta_to.map(|b| SizeRequest::Absolute(ByteSize(b))),
                };
                let result = self
                    .inner
                    .backend
                    .grow_pool(growth, Some(pool.clone()))
                    .await;
                let word =
                    crate::metrics::result_word(&result, |(b, a): &(PoolStatus, PoolStatus)| {
                        a.data_total_bytes > b.data_total_bytes
                            || a.metadata_total_bytes > b.metadata_total_bytes
                    });
                self.inner.metrics.pool_grow(Source::Policy, word);
                match result {
                    Ok((before, after)) => {
                        {
                            let mut state = self.state();
                            state.pool_track.last_grow_ms = Some(now_ms());
                            state.pool_track.noted = None;
                            state.pool = Some(after.clone());
                        }
                        let message = format!(
                            "{}: data {} -> {}, metadata {} -> {}",
                            d.message,
                            format_bytes(before.data_total_bytes),
                            format_bytes(after.data_total_bytes),
                            format_bytes(before.metadata_total_bytes),
                            format_bytes(after.metadata_total_bytes)
                        );
                        self.emit(
                            EventKind::Grown,
                            &policy.name,
                            "pool",
                            "",
                            d.reason,
                            before.data_total_bytes,
                            after.data_total_bytes,
                            message,
                            Some(fired.elapsed()),
                        );
                    }
                    Err(e) => {
                        if self.state().pool_track.note(&policy.name, "error") {
                            self.emit(
                                EventKind::Failed,
                                &policy.name,
                                "pool",
                                "",
                                "error",
                                pool.data_total_bytes,
                                d.data_to.unwrap_or(pool.data_total_bytes),
                                format!("{}: the grow failed: {e}", d.message),
                                Some(fired.elapsed()),
                            );
                        }
                    }
                }
            }
        }
    }

    async fn sample_loop(self) {
        let cadence = self.inner.cadence;
        let hot = cadence
            .hot
            .min(cadence.sample)
            .max(Duration::from_millis(1));
        let beat = cadence.beat();
        let mut next_full = beat.at_or_after(tokio::time::Instant::now());
        let mut seen_changes = self.inner.backend.change_count();
        loop {
            let now = tokio::time::Instant::now();
            let full = now >= next_full;
            if full {
                // One counter read per pass: a move since the last listing
                // (under policies) has the refresh list now.
                let changes = self.inner.backend.change_count();
                if changes != seen_changes {
                    seen_changes = changes;
                    if !self.inner.policies.current().policies.is_empty()
                        && self.state().listed.is_some_and(|(c, _)| c != changes)
                    {
                        self.inner.relist.notify_one();
                    }
                }
                // Passes missed (a busy runtime) are skipped, not caught up.
                next_full += cadence.sample;
                if next_full <= now {
                    next_full = beat.at_or_after(now + cadence.sample);
                }
            }
            for grow in self.sample(full, now.into_std()) {
                let this = self.clone();
                tokio::spawn(async move { this.grow(grow).await });
            }
            let pool_hot = self.inner.pool_hot.load(Ordering::Relaxed);
            if full || pool_hot {
                if let Some(pool) = self.sample_pool() {
                    let this = self.clone();
                    tokio::spawn(async move { this.pool_policies(pool).await });
                }
            }
            // The hot cadence only while a container is hot: an idle host
            // wakes for the full passes alone, not 20 times a second (each
            // wake-up is a clock read and two context switches, which
            // showed in the idle agent's profile under emulation).
            let wake = if self.inner.any_hot.load(Ordering::Relaxed)
                || self.inner.pool_hot.load(Ordering::Relaxed)
            {
                (now + hot).min(next_full)
            } else {
                next_full
            };
            tokio::time::sleep_until(wake).await;
        }
    }

    /// One pass: statvfs, rate, decision, over every running container
    /// (`full`) or only those filling into their trigger (hot).
    fn sample(&self, full: bool, now: Instant) -> Vec<Grow> {
        // Most hot ticks: nothing is hot, and the tick costs one load.
        if !full && !self.inner.any_hot.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let set = self.inner.policies.current();
        // Nothing to enforce: the refresh loop's reads serve the metrics.
        if set.policies.is_empty() {
            return Vec::new();
        }
        // The loop's clock reading: under emulation every read is a
        // syscall and an emulated timer access, so a pass takes one.
        let written = self.inner.backend.written_bound();
        let idle_read = self.inner.cadence.idle;
        let mut grows = Vec::new();
        let mut notes = Vec::new();
        let mut moved = Vec::new();
        let mut any_hot = false;
        let mut state = self.state();
        let pool = state
            .pool
            .as_ref()
            .map(|p| PoolNumbers::from_status(p, state.pool_track.rate));
        for w in state.containers.values_mut() {
            if !full && !w.track.hot {
                continue;
            }
            // A new policy set (or a relisted row): its headroom is unknown.
            let matched = matches!(&w.picked, Some((s, _)) if Arc::ptr_eq(s, &set));
            if matched && !w.track.due(now, written, idle_read) {
                continue;
            }
            let Some(u) = self.inner.backend.usage(&w.c) else {
                continue;
            };
            // Its size moved under no resize of ours (grown by hand): the
            // row the backend keeps is stale (`StorageBackend::size_moved`).
            if !w.track.busy && w.c.fs_total_bytes != 0 && u.total != w.c.fs_total_bytes {
                moved.push(w.c.id.clone());
            }
            put_usage(&mut w.c, u);
            w.track.read(now, written, u.used);
            w.c.fill_rate_bytes_per_second = w.track.rate;
            let Some(policy) = w.pick(&set) else {
                w.track.headroom = u64::MAX;
                continue;
            };
            let t = &mut w.track;
            if t.busy || t.retry_at.is_some_and(|r| now < r) {
                continue;
            }
            let mut obs = roomy_policy::Observation {
                size_bytes: w.c.size_bytes(),
                used_bytes: u.used,
                avail_bytes: u.avail,
                inodes_total: u.inodes_total,
                inodes_used: u.inodes_used,
                fill_rate: t.rate,
                // Lent, not copied: handed back below.
                labels: std::mem::take(&mut w.labels),
                pool,
            };
            // Most samples of most containers: nothing to say, so nothing
            // formatted (decide writes its explanation every time).
            if idle(policy, &obs) {
                t.fired_at = None;
                t.headroom = roomy_policy::write_headroom(policy, &obs);
                t.hot = fires_within(policy, &mut obs, self.inner.cadence.sample);
                any_hot |= t.hot;
                w.labels = obs.labels;
                continue;
            }
            t.hot = false;
            // The wall clock only here, where a policy is past idle.
            let d = decide(policy, &obs, t.last_grow_ms, now_ms());
            w.labels = std::mem::take(&mut obs.labels);
            match d.verdict {
                Verdict::Idle => t.fired_at = None,
                Verdict::Grow => {
                    t.busy = true;
                    grows.push(Grow {
                        id: w.c.id.clone(),
                        name: w.c.name.clone(),
                        policy: policy.name.clone(),
                        reason: d.reason,
                        why: d.message,
                        from: d.from_bytes,
                        to: d.to_bytes,
                        fired_at: *t.fired_at.get_or_insert(now),
                    });
                }
                Verdict::Skip | Verdict::WouldGrow => {
                    if t.note(&policy.name, d.reason) {
                        let kind = if d.verdict == Verdict::Skip {
                            EventKind::Skipped
                        } else {
                            EventKind::WouldGrow
                        };
                        notes.push((
                            kind,
                            policy.name.clone(),
                            w.c.name.clone(),
                            w.c.id.clone(),
                            d,
                        ));
                    }
                }
            }
        }
        drop(state);
        for id in moved {
            self.inner.backend.size_moved(&id);
        }
        // A hot pass saw every hot container; a full one, every container.
        self.inner.any_hot.store(any_hot, Ordering::Relaxed);
        for (kind, policy, name, id, d) in notes {
            self.emit(
                kind,
                &policy,
                &name,
                &id,
                d.reason,
                d.from_bytes,
                d.to_bytes,
                d.message,
                None,
            );
        }
        grows
    }

    /// Carry out one grow and report it.
    async fn grow(&self, g: Grow) {
        let started = Instant::now();
        let result = match ContainerRef::parse(&g.id) {
            Ok(container) => {
                let to = SizeRequest::Absolute(ByteSize(g.to));
                self.inner.backend.resize(&container, to).await
            }
            Err(e) => Err(e),
        };
        let word =
            crate::metrics::result_word(&result, |o| matches!(o.action, GrowAction::Grown { .. }));
        self.inner
            .metrics
            .resize(Source::Policy, word, started.elapsed().as_secs_f64());
        let took = g.fired_at.elapsed();
        let mut state = self.state();
        if result.is_ok() {
            // The change count moved by this growth alone since the last
            // listing: its row is the outcome's, put in below, so the
            // refresh need not list every container again for it (with
            // 20 filling, most of its listings were for our own growths).
            // Moved by more (a Docker event, another growth): it lists.
            let changes = self.inner.backend.change_count();
            let watched = state.containers.contains_key(&g.id);
            if let Some((c, at)) = state.listed.filter(|_| watched) {
                if changes == c + 1 {
                    state.listed = Some((changes, at));
                }
            }
        }
        let mut track = state.containers.get_mut(&g.id);
        if let Some(w) = track.as_mut() {
            w.track.busy = false;
            w.track.fired_at = None;
            // A new size: read it again at the next pass.
            w.track.read_at = None;
        }
        match result {
            Ok(outcome) => {
                if let Some(w) = track {
                    let labels = std::mem::take(&mut w.c.labels);
                    w.c = outcome.container;
                    if w.c.labels.is_empty() {
                        w.c.labels = labels;
                    }
                    w.track.noted = None;
                    if matches!(outcome.action, GrowAction::Grown { .. }) {
                        w.track.last_grow_ms = Some(now_ms());
                    }
                }
                drop(state);
                if let GrowAction::Grown { from, to } = outcome.action {
                    let message = format!(
                        "{}; grew {} from {} to {} in {} ms",
                        g.why,
                        g.name,
                        format_bytes(from),
                        format_bytes(to),
                        took.as_millis()
                    );
                    self.emit(
                        EventKind::Grown,
                        &g.policy,
                        &g.name,
                        &g.id,
                        g.reason,
                        from,
                        to,
                        message,
                        Some(took),
                    );
                }
            }
            Err(e) => {
                if let Some(w) = track {
                    w.track.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
                drop(state);
                let message = format!(
                    "{}; the grow failed: {e}; trying again in {}s",
                    g.why,
                    RETRY_AFTER.as_secs()
                );
                self.emit(
                    EventKind::Failed,
                    &g.policy,
                    &g.name,
                    &g.id,
                    "error",
                    g.from,
                    g.to,
                    message,
                    Some(took),
                );
            }
        }
    }

    /// Puts on each row its fill rate (0 where the sampler does not watch
    /// it) and, where the sampler read its filesystem within its idle
    /// bound (`Cadence::idle`), that read's use; says which rows got one.
    ///
    /// Why: under policies the sampler reads every filesystem at least
    /// that often anyway, so the inventory stream reading use again (a
    /// statvfs per row, 200 on a busy host) would read it twice.
    pub fn put_recent_use(&self, rows: &mut [ContainerStorage]) -> Vec<bool> {
        let since = Instant::now().checked_sub(self.inner.cadence.idle);
        let state = self.state();
        rows.iter_mut()
            .map(|c| {
                let Some(w) = state.containers.get(&c.id) else {
                    c.fill_rate_bytes_per_second = 0.0;
                    return false;
                };
                c.fill_rate_bytes_per_second = w.track.rate;
                let recent = match (w.track.read_at, since) {
                    (Some(at), Some(since)) => at >= since,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if recent {
                    put_usage(c, usage_of(&w.c));
                }
                recent
            })
            .collect()
    }

    /// The fill rate the sampler measured for a container, if it watches it.
    pub fn fill_rate(&self, id: &str) -> Option<f64> {
        self.state().containers.get(id).map(|w| w.track.rate)
    }

    /// The pool's data fill rate the sampler measured (0 before two samples).
    pub fn pool_fill_rate(&self) -> f64 {
        self.state().pool_track.rate
    }

    /// Gauges for /metrics, from the last samples.
    pub fn render(&self, out: &mut roomy_metrics::Exposition) {
        let state = self.state();
        let mut rows: Vec<ContainerGauges<'_>> = state
            .containers
            .values()
            .map(|w| ContainerGauges {
                name: &w.c.name,
                id: &w.c.id,
                size: w.c.size_bytes(),
                fs_size: w.c.fs_total_bytes,
                fs_used: w.c.fs_used_bytes,
                fs_avail: w.c.fs_avail_bytes,
                inodes: w.c.inodes_total,
                inodes_used: w.c.inodes_used,
                fill_rate: w.track.rate,
                cap: w.track.cap.as_ref().map(|(p, c)| (p.as_str(), *c)),
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(b.name));
        crate::metrics::render_containers(out, &rows);
        if let Some(pool) = &state.pool {
            crate::metrics::render_pool(out, pool);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::shared::Sizes;
    use crate::backend::sim::{SimBackend, SimContainer};
    use crate::error::AgentError;
    use roomy_proto::v1::{Increase, Policy, PolicySet, Selector, Trigger};

    const G: u64 = 1 << 30;

    /// An empty running 100 GiB devicemapper container, id `ch` x 64.
    fn writer(ch: &str) -> SimContainer {
        SimContainer {
            id: ch.repeat(64),
            name: "writer".into(),
            running: true,
            driver: "devicemapper".into(),
            sizes: Sizes {
                table: Some(100 * G),
                docker: 100 * G,
                persisted: 100 * G,
                fs: Some(100 * G),
            },
            used: 0,
        }
    }

    /// A running 10 GiB container, id `ch` x 64, `used` bytes in use.
    fn ten_gib(ch: &str, used: u64) -> SimContainer {
        let mut c = writer(ch);
        c.sizes = Sizes {
            table: Some(10 * G),
            docker: 10 * G,
            persisted: 10 * G,
            fs: Some(10 * G),
        };
        c.used = used;
        c
    }

    /// The full pass the sampler makes first when spawned now, at least
    /// 200 ms away: passes fall on the process-wide beat (`beat.rs`), not
    /// on the spawn, so a test that times a crossing between passes starts
    /// from here, and the bytes already used put the crossing there.
    fn first_pass(sample: Duration) -> Instant {
        let beat = Beat::new(sample);
        beat.at_or_after(tokio::time::Instant::now() + Duration::from_millis(200))
            .into_std()
    }

    /// Bytes to start with so that a writer at `rate` bytes a second
    /// reaches `at` bytes at `crossing`.
    fn used_for_crossing(at: u64, rate: u64, crossing: Instant) -> u64 {
        let secs = crossing
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        at - (rate as f64 * secs) as u64
    }

    /// When the first running container grew past 10 GiB; fails with
    /// `what` at `deadline`.
    async fn first_grown(backend: &SimBackend, deadline: Instant, what: &str) -> Instant {
        loop {
            let rows = backend.running().await.unwrap();
            if rows[0].size_bytes() > 10 * G {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A growth at `grown` came within a few hot ticks (20 ms) of the
    /// crossing: full passes alone notice it at the third, 500 ms after.
    fn acted_within_hot_ticks(grown: Instant, crossing: Instant) {
        let late = grown.saturating_duration_since(crossing);
        assert!(
            late < Duration::from_millis(250),
            "grown {} ms after the crossing",
            late.as_millis()
        );
    }

    /// An engine on `backend` under `grow_at_80` for every container.
    fn grows_at_80(
        backend: &SimBackend,
        dir: &std::path::Path,
        cadence: Cadence,
    ) -> Engine<SimBackend> {
        let policies = Arc::new(PolicyStore::open(dir).unwrap());
        policies
            .replace(grow_at_80(PolicyKind::Container, "*"))
            .unwrap();
        Engine::new(
            backend.clone(),
            policies,
            Arc::new(EventLog::open(dir).unwrap()),
            Arc::new(AgentMetrics::default()),
            cadence,
        )
    }

    /// Host h's one policy: grow by 50% at 80% used, up to 1000 GiB, for
    /// the containers `glob` matches (the pool: "").
    fn grow_at_80(kind: PolicyKind, glob: &str) -> PolicySet {
        PolicySet {
            host: "h".into(),
            policies: vec![Policy {
                name: "grow80".into(),
                kind: kind as i32,
                selector: Some(Selector {
                    host: "*".into(),
                    container: glob.into(),
                    ..Default::default()
                }),
                trigger: Some(Trigger {
                    used_percent: 80.0,
                    ..Default::default()
                }),
                increase: Some(Increase {
                    percent: 50.0,
                    ..Default::default()
                }),
                max_bytes: 1000 * G,
                ..Default::default()
            }],
        }
    }

    /// A pool filling fast is grown within a few samples, not at the next
    /// refresh: that one is a minute away here (it is 2 s, and its Docker
    /// and LVM reads take seconds more under load, in the field).
    #[tokio::test]
    async fn a_pool_filling_fast_is_grown_by_the_sampler_between_refreshes() {
        let dir = tempfile::tempdir().unwrap();
        let big = writer("a");
        // 10 GiB pool, 4 GiB/s: past 80% in about 2 s.
        let backend = SimBackend::new(vec![big], 10 * G, 10).with_fill_rate(4 * G);
        let policies = Arc::new(PolicyStore::open(dir.path()).unwrap());
        let events = Arc::new(EventLog::open(dir.path()).unwrap());
        let engine = Engine::new(
            backend.clone(),
            policies.clone(),
            events,
            Arc::new(AgentMetrics::default()),
            Cadence {
                sample: Duration::from_millis(20),
                refresh: Duration::from_secs(60),
                ..Cadence::default()
            },
        );
        policies.replace(grow_at_80(PolicyKind::Pool, "")).unwrap();
        engine.spawn();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let p = backend.inspect_pool().await.unwrap();
            if p.data_total_bytes > 10 * G {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pool not grown between refreshes: {}",
                p.message
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A container filling into its threshold is looked at every `hot`
    /// once it is due before the next full pass, so its growth starts
    /// within a hot tick of the crossing, not up to a whole pass later.
    #[tokio::test]
    async fn a_container_filling_into_its_threshold_is_sampled_at_the_hot_cadence() {
        let dir = tempfile::tempdir().unwrap();
        let cadence = Cadence {
            sample: Duration::from_secs(1),
            refresh: Duration::from_secs(60),
            hot: Duration::from_millis(20),
            ..Cadence::default()
        };
        // 1 GiB/s: past 80% (8 GiB) halfway between the second full pass
        // (the first with a rate) and the third.
        let crossing = first_pass(cadence.sample) + Duration::from_millis(1500);
        let c = ten_gib("d", used_for_crossing(8 * G, G, crossing));
        let backend = SimBackend::new(vec![c], 1000 * G, 10).with_fill_rate(G);
        let engine = grows_at_80(&backend, dir.path(), cadence);
        engine.spawn();
        let grown = first_grown(&backend, crossing + Duration::from_secs(5), "not grown").await;
        acted_within_hot_ticks(grown, crossing);
    }

    /// A container started after the last listing, already past its
    /// threshold, is grown within a few passes of its start event, not at
    /// the refresh's next turn (a minute away here; 2 s by default, which
    /// was most of the bench's threshold-to-grown for new containers).
    #[tokio::test]
    async fn a_container_started_between_refreshes_is_listed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SimBackend::new(vec![], 1000 * G, 10);
        let cadence = Cadence {
            sample: Duration::from_millis(100),
            refresh: Duration::from_secs(60),
            hot: Duration::from_millis(20),
            ..Cadence::default()
        };
        let engine = grows_at_80(&backend, dir.path(), cadence);
        engine.spawn();
        // The first refresh has listed (nothing) by now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        backend.start(ten_gib("n", 9 * G));
        first_grown(
            &backend,
            deadline,
            "a container started between refreshes was not grown",
        )
        .await;
    }

    /// A container new to the agent that fills without writing (as
    /// `fallocate` does: no write counter moves) is read at every pass
    /// while young, not only when `idle` comes round (a minute here).
    #[tokio::test]
    async fn a_young_container_filled_without_writes_is_grown_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SimBackend::new(vec![], 1000 * G, 10);
        let cadence = Cadence {
            sample: Duration::from_millis(100),
            refresh: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            hot: Duration::from_millis(20),
        };
        let engine = grows_at_80(&backend, dir.path(), cadence);
        engine.spawn();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c = ten_gib("y", G);
        let id = c.id.clone();
        backend.start(c);
        // Listed and read at 10% by now.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        backend.allocate(&id, 8 * G);
        first_grown(
            &backend,
            deadline,
            "a young container filled by fallocate was not grown",
        )
        .await;
    }

    /// A pool filling into its policy's threshold is read at the hot
    /// cadence once it would cross before the next full pass, so its
    /// growth starts within a hot tick of the crossing.
    #[tokio::test]
    async fn a_pool_filling_into_its_threshold_is_sampled_at_the_hot_cadence() {
        let dir = tempfile::tempdir().unwrap();
        // One writer in a 10 GiB pool at 1 GiB/s: past 80% (8 GiB) halfway
        // between the second full pass (the first with a rate) and the
        // third.
        let crossing = first_pass(Duration::from_secs(1)) + Duration::from_millis(1500);
        let mut w = writer("p");
        w.used = used_for_crossing(8 * G, G, crossing);
        let backend = SimBackend::new(vec![w], 10 * G, 10).with_fill_rate(G);
        let policies = Arc::new(PolicyStore::open(dir.path()).unwrap());
        let engine = Engine::new(
            backend.clone(),
            policies.clone(),
            Arc::new(EventLog::open(dir.path()).unwrap()),
            Arc::new(AgentMetrics::default()),
            Cadence {
                sample: Duration::from_secs(1),
                refresh: Duration::from_secs(60),
                hot: Duration::from_millis(20),
                ..Cadence::default()
            },
        );
        policies.replace(grow_at_80(PolicyKind::Pool, "")).unwrap();
        engine.spawn();
        let grown = loop {
            if backend.inspect_pool().await.unwrap().data_total_bytes > 10 * G {
                break Instant::now();
            }
            assert!(
                Instant::now() < crossing + Duration::from_secs(5),
                "not grown"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        acted_within_hot_ticks(grown, crossing);
    }

    /// On a host that writes nothing, a filesystem is read once, not at
    /// every pass; a write big enough to reach a trigger anywhere makes the
    /// next pass read them all, and the container it filled is grown at
    /// once, not when `idle` comes round (a minute here).
    #[tokio::test]
    async fn filesystems_are_read_when_enough_was_written_to_matter() {
        let dir = tempfile::tempdir().unwrap();
        let containers: Vec<SimContainer> = (0..20)
            .map(|i| {
                let mut c = ten_gib("0", G);
                c.id = format!("{i:064x}");
                c.name = format!("c{i}");
                c
            })
            .collect();
        let target = containers[7].id.clone();
        let backend = SimBackend::new(containers, 1000 * G, 10);
        let pass = Duration::from_millis(20);
        let cadence = Cadence {
            sample: pass,
            refresh: Duration::from_millis(100),
            idle: Duration::from_secs(60),
            ..Cadence::default()
        };
        let engine = grows_at_80(&backend, dir.path(), cadence);
        engine.spawn();
        let deadline = Instant::now() + Duration::from_secs(20);
        while engine
            .state()
            .containers
            .values()
            .filter(|w| w.track.headroom > 0)
            .count()
            < 20
        {
            assert!(Instant::now() < deadline, "never read");
            tokio::time::sleep(pass).await;
        }
        let settled = backend.usage_reads();
        // 25 passes and 5 refreshes or more: each pass would read all 20
        // without the bound, each refresh too.
        tokio::time::sleep(pass * 25).await;
        assert_eq!(
            backend.usage_reads(),
            settled,
            "an idle host's filesystems read again"
        );

        // 1 GiB written, 4 GiB of space at most: short of any trigger
        // (80% of 10 GiB is 7 GiB away).
        backend.write(&target, G);
        tokio::time::sleep(pass * 25).await;
        assert_eq!(
            backend.usage_reads(),
            settled,
            "read after a write too small to matter"
        );

        // 6 more: 7 GiB in all, the container at 80%.
        backend.write(&target, 6 * G);
        let grown = loop {
            let rows = backend.running().await.unwrap();
            let row = rows.iter().find(|r| r.id == target).unwrap();
            if row.size_bytes() > 10 * G {
                break row.size_bytes();
            }
            assert!(
                Instant::now() < deadline,
                "not grown: the write was not noticed"
            );
            tokio::time::sleep(pass).await;
        };
        assert_eq!(grown, 15 * G);
        // Every filesystem read again: the write could have filled any.
        // (No upper bound: the grown one is read at every pass while its
        // use moves, however long this check takes to run.)
        let reads = backend.usage_reads() - settled;
        assert!(reads >= 20, "{reads} reads after the write: not all 20");
    }

    /// The sim backend, with `running()` answering the rows it read first
    /// ever after, as the real backends keep a row while its container's
    /// view stays the same (`backend/rows.rs`).
    #[derive(Clone)]
    struct KeptRows {
        sim: SimBackend,
        kept: Arc<tokio::sync::Mutex<Option<Vec<ContainerStorage>>>>,
        /// Calls of `running`.
        lists: Arc<std::sync::atomic::AtomicUsize>,
        /// Calls of `size_moved`, which moves the change count as the
        /// real backends' do.
        moved: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl StorageBackend for KeptRows {
        async fn running(&self) -> Result<Vec<ContainerStorage>, AgentError> {
            self.lists.fetch_add(1, Ordering::Relaxed);
            let mut kept = self.kept.lock().await;
            if kept.is_none() {
                *kept = Some(self.sim.running().await?);
            }
            Ok(kept.clone().unwrap_or_default())
        }
        fn usage(&self, c: &ContainerStorage) -> Option<Usage> {
            self.sim.usage(c)
        }
        fn change_count(&self) -> u64 {
            self.sim.change_count() + self.moved.load(Ordering::Relaxed) as u64
        }
        fn size_moved(&self, _: &str) {
            self.moved.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut kept) = self.kept.try_lock() {
                *kept = None;
            }
        }
        async fn inspect(
            &self,
            c: Option<&ContainerRef>,
        ) -> Result<Vec<ContainerStorage>, AgentError> {
            self.sim.inspect(c).await
        }
        async fn resize(
            &self,
            c: &ContainerRef,
            size: SizeRequest,
        ) -> Result<crate::backend::ResizeOutcome, AgentError> {
            self.sim.resize(c, size).await
        }
        async fn repair(
            &self,
            c: &ContainerRef,
        ) -> Result<crate::backend::RepairOutcome, AgentError> {
            self.sim.repair(c).await
        }
        async fn inspect_pool(&self) -> Result<PoolStatus, AgentError> {
            self.sim.inspect_pool().await
        }
        async fn grow_pool(
            &self,
            growth: PoolGrowth,
            seen: Option<PoolStatus>,
        ) -> Result<(PoolStatus, PoolStatus), AgentError> {
            self.sim.grow_pool(growth, seen).await
        }
    }

    /// Without policies no sampler runs, and the metrics' use comes from the
    /// refresh: a row kept from an earlier refresh must not bring its old
    /// use along.
    #[tokio::test]
    async fn a_kept_row_shows_the_use_of_now() {
        let dir = tempfile::tempdir().unwrap();
        let c = writer("b");
        let sim = SimBackend::new(vec![c], 1000 * G, 10).with_fill_rate(G);
        let backend = KeptRows {
            sim,
            kept: Default::default(),
            lists: Default::default(),
            moved: Default::default(),
        };
        let engine = Engine::new(
            backend,
            Arc::new(PolicyStore::open(dir.path()).unwrap()),
            Arc::new(EventLog::open(dir.path()).unwrap()),
            Arc::new(AgentMetrics::default()),
            Cadence::default(),
        );
        let used = |e: &Engine<KeptRows>| {
            e.state()
                .containers
                .values()
                .map(|w| w.c.fs_used_bytes)
                .next()
                .unwrap()
        };
        engine.refresh().await;
        let first = used(&engine);
        tokio::time::sleep(Duration::from_millis(200)).await;
        engine.refresh().await;
        let second = used(&engine);
        // 1 GiB/s for 200 ms: well over 100 MiB more.
        assert!(
            second > first + (100 << 20),
            "use went from {first} to {second} bytes"
        );
    }

    /// Under policies, the refresh lists the containers again only when
    /// the backend's change count moved (a Docker event, a resize ended)
    /// or `LIST_EVERY` passed: each listing copies every row.
    #[tokio::test]
    async fn the_refresh_lists_again_only_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBackend::new(vec![writer("d")], 1000 * G, 10);
        let lists = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = KeptRows {
            sim: sim.clone(),
            kept: Default::default(),
            lists: lists.clone(),
            moved: Default::default(),
        };
        let policies = Arc::new(PolicyStore::open(dir.path()).unwrap());
        let engine = Engine::new(
            backend,
            policies.clone(),
            Arc::new(EventLog::open(dir.path()).unwrap()),
            Arc::new(AgentMetrics::default()),
            Cadence::default(),
        );
        let listed = || lists.load(Ordering::Relaxed);
        // No policies: every refresh lists (it alone reads use then).
        engine.refresh().await;
        engine.refresh().await;
        assert_eq!(listed(), 2);
        policies
            .replace(grow_at_80(PolicyKind::Container, "*"))
            .unwrap();
        engine.refresh().await;
        assert_eq!(listed(), 2, "nothing changed: not listed");
        assert_eq!(engine.state().containers.len(), 1, "the row is kept");
        let d = ContainerRef::parse(&"d".repeat(64)).unwrap();
        sim.resize(&d, SizeRequest::Absolute(ByteSize(200 * G)))
            .await
            .unwrap();
        engine.refresh().await;
        assert_eq!(listed(), 3, "a resize ended: listed");
        engine.refresh().await;
        assert_eq!(listed(), 3);
        // A growth of the engine's own: its row is the outcome's, and the
        // refresh does not list again for it.
        engine
            .grow(Grow {
                id: "d".repeat(64),
                name: "d".into(),
                policy: "p".into(),
                reason: "used_percent",
                why: "test".into(),
                from: 200 * G,
                to: 300 * G,
                fired_at: Instant::now(),
            })
            .await;
        let row = engine.state().containers[&"d".repeat(64)].c.fs_size_bytes;
        assert_eq!(row, 300 * G, "the outcome's row");
        engine.refresh().await;
        assert_eq!(listed(), 3, "our own growth: not listed again");
        // Its change and another's: listed.
        sim.resize(&d, SizeRequest::Absolute(ByteSize(400 * G)))
            .await
            .unwrap();
        engine.refresh().await;
        assert_eq!(listed(), 4, "a change not the engine's: listed");
    }

    /// The inventory stream's use-only list takes what the sampler read
    /// within its idle bound instead of reading each filesystem again; a
    /// row it has not read that recently is read.
    #[tokio::test]
    async fn the_inventory_takes_the_samplers_recent_reads() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBackend::new(vec![ten_gib("a", G), ten_gib("b", 2 * G)], 1000 * G, 10);
        let cadence = Cadence {
            idle: Duration::from_millis(300),
            ..Cadence::default()
        };
        let engine = grows_at_80(&sim, dir.path(), cadence);
        engine.refresh().await;
        assert!(engine.sample(true, Instant::now()).is_empty());
        let mut rows = sim.inspect(None).await.unwrap();
        for c in &mut rows {
            c.fs_used_bytes = 0;
        }
        let reads = sim.usage_reads();
        let list = crate::inventory::with_use_now(&sim, &engine, rows.clone(), 0);
        assert_eq!(sim.usage_reads(), reads, "read again though just sampled");
        let mut used: Vec<u64> = list.containers.iter().map(|c| c.fs_used_bytes).collect();
        used.sort();
        assert_eq!(used, [G, 2 * G], "the sampler's use on the rows");
        tokio::time::sleep(Duration::from_millis(350)).await;
        crate::inventory::with_use_now(&sim, &engine, rows.clone(), 0);
        assert_eq!(sim.usage_reads(), reads + 2, "past the idle bound: read");
    }

    /// A filesystem grown by hand (no resize of Roomy's, no Docker event)
    /// shows in the sampler's statvfs: the backend hears that its kept row
    /// is stale, and the next refresh lists again and sees the new size.
    #[tokio::test]
    async fn a_filesystem_grown_by_hand_is_listed_again() {
        let dir = tempfile::tempdir().unwrap();
        let c = ten_gib("e", G);
        let sim = SimBackend::new(vec![c.clone()], 1000 * G, 10);
        let lists = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let moved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = KeptRows {
            sim: sim.clone(),
            kept: Default::default(),
            lists: lists.clone(),
            moved: moved.clone(),
        };
        // Every pass reads every filesystem.
        let cadence = Cadence {
            idle: Duration::ZERO,
            ..Cadence::default()
        };
        let policies = Arc::new(PolicyStore::open(dir.path()).unwrap());
        policies
            .replace(grow_at_80(PolicyKind::Container, "*"))
            .unwrap();
        let engine = Engine::new(
            backend,
            policies,
            Arc::new(EventLog::open(dir.path()).unwrap()),
            Arc::new(AgentMetrics::default()),
            cadence,
        );
        let listed = || lists.load(Ordering::Relaxed);
        engine.refresh().await;
        assert!(engine.sample(true, Instant::now()).is_empty());
        engine.refresh().await;
        assert_eq!(listed(), 1, "nothing changed: listed once");
        assert_eq!(moved.load(Ordering::Relaxed), 0, "no size moved yet");
        sim.grow_by_hand(&c.id, 20 * G);
        assert!(engine.sample(true, Instant::now()).is_empty());
        assert_eq!(moved.load(Ordering::Relaxed), 1, "the new size went unseen");
        engine.refresh().await;
        assert_eq!(listed(), 2, "not listed again after a grow by hand");
        let size = engine.state().containers[&c.id].c.size_bytes();
        assert_eq!(size, 20 * G);
        // Seen once: the next passes agree with the row.
        assert!(engine.sample(true, Instant::now()).is_empty());
        assert_eq!(moved.load(Ordering::Relaxed), 1);
    }

    /// The policy in force is chosen once per policy set, not per sample:
    /// a new set is seen at the next sample, both ways.
    #[tokio::test]
    async fn a_new_policy_set_is_seen_at_the_next_sample() {
        let dir = tempfile::tempdir().unwrap();
        let mut full = writer("c");
        full.used = 90 * G;
        let policies = Arc::new(PolicyStore::open(dir.path()).unwrap());
        let engine = Engine::new(
            SimBackend::new(vec![full], 1000 * G, 10),
            policies.clone(),
            Arc::new(EventLog::open(dir.path()).unwrap()),
            Arc::new(AgentMetrics::default()),
            Cadence::default(),
        );
        let for_containers = |glob: &str| grow_at_80(PolicyKind::Container, glob);
        engine.refresh().await;
        policies.replace(for_containers("other*")).unwrap();
        assert!(
            engine.sample(true, Instant::now()).is_empty(),
            "grown under a policy for others"
        );
        policies.replace(for_containers("writ*")).unwrap();
        let grows = engine.sample(true, Instant::now());
        assert_eq!(grows.len(), 1, "not grown under its own policy");
        assert_eq!(grows[0].to, 150 * G);
        // Back to a policy for others: no second decision, busy or not.
        engine
            .state()
            .containers
            .values_mut()
            .next()
            .unwrap()
            .track
            .busy = false;
        policies.replace(for_containers("other*")).unwrap();
        assert!(
            engine.sample(true, Instant::now()).is_empty(),
            "a replaced policy still in force"
        );
    }

    fn pool(mode: &str, when_full: &str) -> PoolStatus {
        PoolStatus {
            name: "docker-pool".into(),
            mode: mode.into(),
            when_full: when_full.into(),
            ..Default::default()
        }
    }

    #[test]
    fn health_events_on_every_change_of_mode_and_a_bad_first_sight() {
        assert!(mode_change(None, &pool("rw", "queue")).is_none());
        assert!(mode_change(Some("rw".into()), &pool("rw", "queue")).is_none());
        let (from, _) = mode_change(None, &pool("needs_check", "queue")).unwrap();
        assert_eq!(from, "rw");
        let (from, p) = mode_change(Some("out_of_data_space".into()), &pool("rw", "")).unwrap();
        assert_eq!(
            (from.as_str(), p.mode.as_str()),
            ("out_of_data_space", "rw")
        );
    }

    #[test]
    fn health_messages_say_what_to_do() {
        let m = health_message("rw", &pool("out_of_data_space", "error"));
        assert!(
            m.contains("writes to its containers fail") && m.contains("roomyctl pool grow"),
            "{m}"
        );
        let m = health_message("rw", &pool("out_of_data_space", "queue"));
        assert!(m.contains("wait"), "{m}");
        let m = health_message("rw", &pool("needs_check", "queue"));
        assert!(
            m.contains("thin_check") && m.contains("refuses to grow"),
            "{m}"
        );
        let m = health_message("rw", &pool("fail", ""));
        assert!(m.contains("thin_repair") && m.contains("dmesg"), "{m}");
        let m = health_message("rw", &pool("ro", "queue"));
        assert!(m.contains("pool grow --metadata"), "{m}");
        let m = health_message("out_of_data_space", &pool("rw", "queue"));
        assert!(m.contains("went from out_of_data_space to rw"), "{m}");
    }
}
