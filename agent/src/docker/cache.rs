//! What dockerd said about its containers and itself, kept current by its
//! event stream instead of asked for again on every list.
//!
//! Why: the refresh loop (every 2 s under policies), the guard's sweep
//! (every 5 s) and every `ls` list all containers. Asked of Docker each
//! time, that is one inspect per container per list: on a host with 200
//! containers, half a core for the agent and half for dockerd under
//! emulation (bench-host). A container's view changes only with an event
//! about it (start, die, rename, destroy, ...), and the daemon's facts and
//! devicemapper's `DeviceSize` only when dockerd restarts, which ends the
//! event stream. So:
//!
//! 1. The watcher subscribes to container events, from a second before it
//!    connects (`since`), so that nothing between a read and the
//!    subscription is missed.
//! 2. An event marks its container dirty (`destroy` also forgets it);
//!    events that change nothing Roomy reads (exec, health checks, attach)
//!    are ignored.
//! 3. A list re-reads only the dirty containers; the first list reads
//!    them all. As a safety net against events the stream lost, the
//!    loops' lists check the views as a user's list does (5) at least
//!    every [`CHECK_EVERY`]: one small call on a quiet host, where reading
//!    everything again was a list and 220 inspects (bench-host: dockerd
//!    1.6% of a core in the minute it fell into). Everything is read
//!    again only every [`FULL_READ_EVERY`].
//! 4. When the stream ends (dockerd stopped or restarted), everything is
//!    forgotten: the next list reads everything from the new dockerd. A
//!    read that started before the break is returned to its caller but not
//!    kept (`epoch`).
//! 5. A user's list must also show what the stream has not delivered (an
//!    event on its way, or one dockerd dropped: it gives a subscriber
//!    100 ms to take each). It asks dockerd for the events since the cache
//!    was last checked ([`ViewCache::replay_from`]), from the ring of its
//!    last 256 events that dockerd keeps and fills before the call that
//!    caused the event returns: a few hundred bytes on a quiet host, where
//!    `docker ps -a` of 200 containers is a list Docker builds and Roomy
//!    parses every time (in the VM with 20 of them filling, most of a
//!    user's `ls`). When the ring may have turned over since
//!    ([`REPLAY_COMPLETE_BELOW`]), the list compares against `docker ps -a`
//!    instead ([`ViewCache::verify`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::EventsOptions;
use bollard::Docker;
use futures_util::StreamExt;

use super::{ContainerView, DaemonInfo};

/// The views are checked against dockerd's kept events (or its list) at
/// least this often, in case the stream lost an event (dockerd drops
/// events for a subscriber that falls behind): what the loops see is then
/// at most this stale.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Every container is read afresh at least this often: the net under the
/// checks, for a view that changed with no event dockerd kept.
pub const FULL_READ_EVERY: Duration = Duration::from_secs(3600);

/// A replay of fewer events than this covered everything since it began:
/// dockerd keeps its last 256 events (moby's `eventsLimit`), so a reply
/// near that size may have lost its oldest. The margin covers events
/// stamped after the replay's end, which dockerd keeps but leaves out.
pub const REPLAY_COMPLETE_BELOW: usize = 192;

/// Nanoseconds in a second: dockerd stamps events in both.
pub const NANOS: i64 = 1_000_000_000;

/// How far back a replay reaches before the last check: an event stamped
/// just before a check may enter dockerd's ring just after it was read.
const REPLAY_OVERLAP_NANOS: i64 = NANOS;

/// Event actions that change nothing a [`ContainerView`] holds. Docker
/// appends details to some (`exec_start: sh -c ...`, `health_status:
/// healthy`); the word before the colon is compared.
const IGNORED: &[&str] = &[
    "exec_create",
    "exec_start",
    "exec_die",
    "exec_detach",
    "health_status",
    "attach",
    "detach",
    "top",
    "resize",
    "archive-path",
    "extract-to-dir",
    "export",
    "copy",
    "commit",
];

/// A container as `docker ps -a` lists it: enough to tell whether the
/// cached view is still its view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Full id.
    pub id: String,
    /// Name without the leading slash.
    pub name: String,
    /// Docker's state word.
    pub state: String,
}

/// What a list has to read from Docker.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Everything: nothing is known, or it is time for the safety net.
    Everything {
        /// The cache's epoch when the read starts.
        epoch: u64,
    },
    /// Only these containers (possibly none).
    Only {
        /// The cache's epoch when the read starts.
        epoch: u64,
        /// Container ids to inspect again.
        ids: Vec<String>,
        /// Whether the views are due a check ([`CHECK_EVERY`]): then a
        /// list also reads what dockerd's kept events name.
        check: bool,
    },
}

#[derive(Debug, Default)]
struct State {
    /// Bumped whenever the event stream ends: reads begun before belong to
    /// another dockerd, maybe.
    epoch: u64,
    /// When the views were last read in full; `None`: not since the epoch
    /// began.
    full_at: Option<Instant>,
    views: HashMap<String, ContainerView>,
    dirty: HashSet<String>,
    info: Option<DaemonInfo>,
    /// Events that may change a container's row, and stream breaks, ever:
    /// the inventory stream sends a new list when this moved.
    changes: u64,
    /// Wall-clock nanoseconds (dockerd's event clock) from which every
    /// event is either in the views or must be replayed; `None`: not since
    /// the epoch began.
    checked_from: Option<i64>,
    /// When (monotonic) that check began.
    checked_at: Option<Instant>,
}

impl State {
    /// What an event about `id` changes at once; whether the container
    /// must be read again.
    fn apply(&mut self, id: &str, action: &str) -> bool {
        let word = action.split(':').next().unwrap_or(action).trim();
        if IGNORED.contains(&word) {
            return false;
        }
        // A destroyed container is read once more too (Docker answers 404,
        // and the read forgets it): a full read under way when it went has
        // its old view, and would otherwise keep it until the next one.
        if word == "destroy" {
            self.views.remove(id);
        }
        self.changes += 1;
        true
    }
}

/// The views and daemon facts, with what events said since.
#[derive(Debug, Default)]
pub struct ViewCache {
    state: Mutex<State>,
    /// One list reads from Docker at a time; the others then find what it
    /// read instead of reading it again.
    pub(super) reading: tokio::sync::Mutex<()>,
}

impl ViewCache {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to read before answering a list at `now`. Takes the dirty ids:
    /// events arriving from here on mark them again.
    pub fn plan(&self, now: Instant) -> Plan {
        let mut s = self.state();
        let fresh = s
            .full_at
            .is_some_and(|t| now.duration_since(t) < FULL_READ_EVERY);
        if !fresh {
            s.dirty.clear();
            return Plan::Everything { epoch: s.epoch };
        }
        let mut ids: Vec<String> = s.dirty.drain().collect();
        ids.sort();
        let check = s
            .checked_at
            .is_none_or(|t| now.saturating_duration_since(t) >= CHECK_EVERY);
        Plan::Only {
            epoch: s.epoch,
            ids,
            check,
        }
    }

    /// Keep a full read begun at `started`, unless the stream ended since.
    pub fn store_all(&self, epoch: u64, started: Instant, views: &[ContainerView]) {
        let mut s = self.state();
        if s.epoch != epoch {
            return;
        }
        s.views = views.iter().map(|v| (v.id.clone(), v.clone())).collect();
        s.full_at = Some(started);
    }

    /// Keep the containers re-read (`None`: gone): whether they were kept
    /// (`false`: the stream ended since the plan, and the caller reads
    /// everything instead). The views stay in the cache: callers copy out
    /// what they need (`views_where`) or look in place (`with_views`).
    pub fn keep_some(&self, epoch: u64, read: Vec<(String, Option<ContainerView>)>) -> bool {
        let mut s = self.state();
        if s.epoch != epoch {
            return false;
        }
        for (id, view) in read {
            match view {
                Some(v) => s.views.insert(id, v),
                None => s.views.remove(&id),
            };
        }
        true
    }

    /// Copies of the views that `pick` picks.
    pub fn views_where(&self, pick: impl Fn(&ContainerView) -> bool) -> Vec<ContainerView> {
        self.state()
            .views
            .values()
            .filter(|v| pick(v))
            .cloned()
            .collect()
    }

    /// `f` over the views in place, under the cache's lock (keep it short:
    /// events wait for it).
    pub fn with_views<R>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = &ContainerView>) -> R,
    ) -> R {
        f(&mut self.state().views.values())
    }

    /// Check the cache against what `docker ps -a` said just now: forget
    /// the containers it no longer lists and return those to read again
    /// (not known, renamed, in another state). A user's list goes through
    /// this, so that what they just did in Docker shows even when its event
    /// is still on its way.
    pub fn verify(&self, listed: &[Listed]) -> Vec<String> {
        let mut s = self.state();
        let now: HashSet<&str> = listed.iter().map(|l| l.id.as_str()).collect();
        s.views.retain(|id, _| now.contains(id.as_str()));
        listed
            .iter()
            .filter(|l| {
                s.views
                    .get(&l.id)
                    .is_none_or(|v| v.name != l.name || v.state != l.state)
            })
            .map(|l| l.id.clone())
            .collect()
    }

    /// Where a replay of dockerd's events must begin for the views to be
    /// current, if they were checked in this epoch.
    pub fn replay_from(&self) -> (u64, Option<i64>) {
        let s = self.state();
        (s.epoch, s.checked_from)
    }

    /// The views of `epoch` hold every event before `at` (wall-clock
    /// nanoseconds; a full read, a replay or a `docker ps -a` check that
    /// began then, at `began` on the monotonic clock): the next replay
    /// starts a little before it, the next check is due [`CHECK_EVERY`]
    /// after it.
    pub fn checked(&self, epoch: u64, at: i64, began: Instant) {
        let mut s = self.state();
        if s.epoch == epoch {
            s.checked_from = Some(at.saturating_sub(REPLAY_OVERLAP_NANOS));
            s.checked_at = Some(began);
        }
    }

    /// Apply the container events a replay found (id and action, oldest
    /// first) and return the containers to read again now. As
    /// [`ViewCache::on_event`], minus marking them for the next list.
    pub fn replayed<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<String> {
        let mut s = self.state();
        events
            .into_iter()
            .filter(|(id, action)| s.apply(id, action))
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// Mark these for the next list again (a read of them failed).
    pub fn redirty(&self, ids: impl IntoIterator<Item = String>) {
        self.state().dirty.extend(ids);
    }

    /// Docker said `action` of container `id`.
    pub fn on_event(&self, id: &str, action: &str) {
        let mut s = self.state();
        if s.apply(id, action) {
            s.dirty.insert(id.to_string());
        }
    }

    /// How many events that may change a container's row arrived, and
    /// breaks of the stream happened, since the cache was made.
    pub fn changes(&self) -> u64 {
        self.state().changes
    }

    /// The event stream ended: forget everything.
    pub fn on_break(&self) {
        let mut s = self.state();
        s.epoch += 1;
        s.full_at = None;
        s.views.clear();
        s.dirty.clear();
        s.info = None;
        s.checked_from = None;
        s.checked_at = None;
        s.changes += 1;
    }

    /// The daemon's facts, if read in this epoch.
    pub fn info(&self) -> (u64, Option<DaemonInfo>) {
        let s = self.state();
        (s.epoch, s.info.clone())
    }

    /// Keep the daemon's facts read in `epoch`.
    pub fn store_info(&self, epoch: u64, info: &DaemonInfo) {
        let mut s = self.state();
        if s.epoch == epoch {
            s.info = Some(info.clone());
        }
    }
}

/// Now on dockerd's event clock (the host's wall clock), in nanoseconds.
pub fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn unix_now() -> u64 {
    (unix_nanos() / NANOS) as u64
}

/// Feed `cache` from dockerd's container events until the cache is
/// dropped. Reconnects a second after the stream ends, asking for the
/// events since a second before it ended.
pub async fn watch(docker: Docker, cache: Weak<ViewCache>) {
    let mut since = unix_now().saturating_sub(1);
    loop {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        let mut events = Box::pin(docker.events(Some(EventsOptions {
            since: Some(since.to_string()),
            filters: Some(filters),
            ..Default::default()
        })));
        while let Some(event) = events.next().await {
            let Some(cache) = cache.upgrade() else { return };
            match event {
                // The real-kernel tier's stand-in for events dockerd dropped.
                Ok(_) if crate::failpoint::active("events-lost") => {}
                Ok(event) => {
                    let action = event.action.unwrap_or_default();
                    if let Some(id) = event.actor.and_then(|a| a.id) {
                        cache.on_event(&id, &action);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Docker's event stream failed");
                    break;
                }
            }
        }
        let Some(cache) = cache.upgrade() else { return };
        cache.on_break();
        drop(cache);
        since = unix_now().saturating_sub(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ViewCache {
        /// The tests' shorthand: keep a read and copy every view out, as
        /// `DockerClient::update` and a list of them do.
        fn store_some(
            &self,
            epoch: u64,
            read: Vec<(String, Option<ContainerView>)>,
        ) -> Option<Vec<ContainerView>> {
            self.keep_some(epoch, read)
                .then(|| self.views_where(|_| true))
        }
    }

    fn view(id: &str, running: bool) -> ContainerView {
        ContainerView {
            id: id.into(),
            name: format!("n-{id}"),
            state: if running { "running" } else { "exited" }.into(),
            running,
            driver: "overlay2".into(),
            ..Default::default()
        }
    }

    fn ids(views: &[ContainerView]) -> Vec<String> {
        let mut ids: Vec<String> = views.iter().map(|v| v.id.clone()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn reads_everything_once_then_only_what_events_name() {
        let cache = ViewCache::default();
        let t0 = Instant::now();
        assert_eq!(cache.plan(t0), Plan::Everything { epoch: 0 });
        cache.store_all(0, t0, &[view("a", true), view("b", false)]);
        cache.checked(0, 5_000_000_000, t0);
        assert_eq!(
            cache.plan(t0),
            Plan::Only {
                epoch: 0,
                ids: vec![],
                check: false
            }
        );
        // Noise changes nothing; a start, a create and a rename are read.
        cache.on_event("a", "exec_start: sh -c true");
        cache.on_event("a", "health_status: healthy");
        cache.on_event("b", "start");
        cache.on_event("c", "create");
        cache.on_event("a", "rename");
        let Plan::Only {
            epoch, ids: read, ..
        } = cache.plan(t0)
        else {
            panic!("a full read while fresh");
        };
        assert_eq!(read, ["a", "b", "c"]);
        let answer = cache
            .store_some(
                epoch,
                vec![
                    ("a".into(), Some(view("a", true))),
                    ("b".into(), Some(view("b", true))),
                    ("c".into(), Some(view("c", false))),
                ],
            )
            .unwrap();
        assert_eq!(ids(&answer), ["a", "b", "c"]);
        assert!(answer.iter().all(|v| v.id != "b" || v.running));
        // Removed: gone at once, and its read (a 404) confirms it; gone
        // between event and read: gone too.
        cache.on_event("c", "destroy");
        cache.on_event("b", "die");
        let Plan::Only { ids: read, .. } = cache.plan(t0) else {
            panic!()
        };
        assert_eq!(read, ["b", "c"]);
        let answer = cache
            .store_some(0, vec![("b".into(), None), ("c".into(), None)])
            .unwrap();
        assert_eq!(ids(&answer), ["a"]);
    }

    #[test]
    fn a_container_removed_during_a_full_read_is_not_kept() {
        let cache = ViewCache::default();
        let t0 = Instant::now();
        let Plan::Everything { epoch } = cache.plan(t0) else {
            panic!("the first list reads everything")
        };
        // "b" was inspected, then removed before the read ended.
        cache.on_event("b", "destroy");
        cache.store_all(epoch, t0, &[view("a", true), view("b", true)]);
        let Plan::Only { ids: read, .. } = cache.plan(t0) else {
            panic!()
        };
        assert_eq!(read, ["b"]);
        let answer = cache.store_some(epoch, vec![("b".into(), None)]).unwrap();
        assert_eq!(ids(&answer), ["a"]);
    }

    #[test]
    fn an_event_during_a_read_is_read_next_time() {
        let cache = ViewCache::default();
        let t0 = Instant::now();
        cache.store_all(0, t0, &[view("a", true)]);
        cache.on_event("a", "die");
        let Plan::Only { ids: read, .. } = cache.plan(t0) else {
            panic!()
        };
        assert_eq!(read, ["a"]);
        // While "a" is being inspected it starts again.
        cache.on_event("a", "start");
        cache.store_some(0, vec![("a".into(), Some(view("a", false)))]);
        assert!(matches!(
            cache.plan(t0),
            Plan::Only { ids, .. } if ids == ["a"]
        ));
        // A failed read is tried again.
        cache.redirty(["a".to_string()]);
        let Plan::Only { ids: read, .. } = cache.plan(t0) else {
            panic!()
        };
        assert_eq!(read, ["a"]);
    }

    /// A loop that only looks sees the kept views in place; a list copies
    /// only those it asks for; a read from before a restart is not kept.
    #[test]
    fn views_are_looked_at_in_place_and_copied_only_as_asked() {
        let cache = ViewCache::default();
        let t0 = Instant::now();
        cache.store_all(0, t0, &[view("a", true), view("b", false)]);
        assert!(cache.keep_some(0, vec![("c".into(), Some(view("c", true)))]));
        let mut seen = cache.with_views(|vs| vs.map(|v| v.id.clone()).collect::<Vec<_>>());
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        let mut running: Vec<String> = cache
            .views_where(|v| v.running)
            .into_iter()
            .map(|v| v.id)
            .collect();
        running.sort();
        assert_eq!(running, ["a", "c"]);
        cache.on_break();
        assert!(!cache.keep_some(0, vec![("d".into(), Some(view("d", true)))]));
        assert_eq!(cache.with_views(|vs| vs.count()), 0);
    }

    #[test]
    fn a_dockerd_restart_forgets_everything_even_reads_in_flight() {
        let cache = ViewCache::default();
        let t0 = Instant::now();
        let info = DaemonInfo::from_status("/x".into(), "devicemapper".into(), &[]);
        cache.store_info(0, &info);
        cache.store_all(0, t0, &[view("a", true)]);
        let Plan::Only { epoch, .. } = cache.plan(t0) else {
            panic!()
        };
        // dockerd restarts while a list reads: the read is not kept.
        cache.on_break();
        assert_eq!(cache.store_some(epoch, vec![]), None);
        assert_eq!(cache.info(), (1, None));
        assert_eq!(cache.plan(t0), Plan::Everything { epoch: 1 });
        // A full read begun before the break is not kept either.
        cache.store_all(0, t0, &[view("old", true)]);
        cache.store_info(0, &info);
        assert_eq!(cache.plan(t0), Plan::Everything { epoch: 1 });
        assert_eq!(cache.info(), (1, None));
    }

    #[test]
    fn a_users_list_reads_what_docker_ps_shows_changed() {
        let cache = ViewCache::default();
        let t0 = Instant::now();
        cache.store_all(0, t0, &[view("a", true), view("b", true), view("c", false)]);
        let listed = |id: &str, name: &str, state: &str| Listed {
            id: id.into(),
            name: name.into(),
            state: state.into(),
        };
        // Before their events arrive: b renamed, c started, d created, a
        // removed.
        let mut stale = cache.verify(&[
            listed("b", "renamed", "running"),
            listed("c", "n-c", "running"),
            listed("d", "n-d", "created"),
        ]);
        stale.sort();
        assert_eq!(stale, ["b", "c", "d"]);
        let answer = cache.store_some(0, vec![]).unwrap();
        assert_eq!(ids(&answer), ["b", "c"], "a is gone, d not read yet");
        // Nothing changed: nothing to read.
        assert!(cache
            .verify(&[listed("b", "n-b", "running"), listed("c", "n-c", "exited")])
            .is_empty());
    }

    #[test]
    fn a_replay_reads_what_the_stream_lost_and_never_spans_two_dockerds() {
        let cache = ViewCache::default();
        let t0 = Instant::now();
        assert_eq!(cache.replay_from(), (0, None), "never checked: no replay");
        cache.store_all(0, t0, &[view("a", true), view("b", true)]);
        cache.checked(0, 5_000_000_000, t0);
        assert_eq!(
            cache.replay_from(),
            (0, Some(4_000_000_000)),
            "a second before the check"
        );
        let before = cache.changes();
        // Events the stream never delivered: noise, a removal, a new
        // container, a stop.
        let read = cache.replayed([
            ("a", "exec_start: sh -c true"),
            ("b", "destroy"),
            ("c", "create"),
            ("a", "die"),
        ]);
        assert_eq!(read, ["b", "c", "a"]);
        assert_eq!(cache.changes(), before + 3);
        let answer = cache
            .store_some(0, vec![("c".into(), Some(view("c", false)))])
            .unwrap();
        assert_eq!(ids(&answer), ["a", "c"], "b is gone at once");
        // dockerd restarted: its ring is another's; a check of the old
        // epoch landing late changes nothing.
        cache.on_break();
        assert_eq!(cache.replay_from(), (1, None));
        cache.checked(0, 9_000_000_000, t0);
        assert_eq!(cache.replay_from(), (1, None));
    }

    /// The loops' safety net: the views checked against dockerd's kept
    /// events every minute (one small call), not every container read
    /// again every 5 minutes (a list and 220 inspects); that only hourly.
    #[test]
    fn views_are_checked_every_minute_and_read_again_every_hour() {
        let cache = ViewCache::default();
        let t0 = Instant::now();
        let at = |d: Duration| t0 + d;
        cache.store_all(0, t0, &[view("a", true)]);
        cache.checked(0, 5_000_000_000, t0);
        let plan = |now| cache.plan(now);
        assert_eq!(
            plan(at(CHECK_EVERY - Duration::from_secs(1))),
            Plan::Only {
                epoch: 0,
                ids: vec![],
                check: false
            }
        );
        // A minute on: checked, not read again (5 minutes on too).
        for d in [CHECK_EVERY, Duration::from_secs(300)] {
            assert_eq!(
                plan(at(d)),
                Plan::Only {
                    epoch: 0,
                    ids: vec![],
                    check: true
                }
            );
        }
        // Checked: not due again for another minute.
        let later = at(Duration::from_secs(300));
        cache.checked(0, 305_000_000_000, later);
        assert!(matches!(plan(later), Plan::Only { check: false, .. }));
        // A stream break forgets the check with the views.
        cache.on_break();
        assert!(matches!(plan(later), Plan::Everything { epoch: 1 }));
        cache.store_all(1, later, &[view("a", true)]);
        assert!(matches!(plan(later), Plan::Only { check: true, .. }));
    }

    #[test]
    fn everything_is_read_again_after_a_while() {
        let cache = ViewCache::default();
        let t0 = Instant::now();
        cache.store_all(0, t0, &[view("a", true)]);
        cache.on_event("a", "start");
        assert!(matches!(
            cache.plan(t0 + FULL_READ_EVERY),
            Plan::Everything { .. }
        ));
        // The full read covers what was dirty.
        cache.store_all(0, t0 + FULL_READ_EVERY, &[view("a", true)]);
        cache.checked(0, 5_000_000_000, t0 + FULL_READ_EVERY);
        assert_eq!(
            cache.plan(t0 + FULL_READ_EVERY),
            Plan::Only {
                epoch: 0,
                ids: vec![],
                check: false
            }
        );
    }
}
