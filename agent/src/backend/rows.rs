//! The refresh loop's rows, kept between refreshes while nothing about
//! their container changed.
//!
//! Why: the refresh lists the running containers every 2 s under policies,
//! and reading one container's disk is a dozen syscalls (dm ioctls, the
//! metadata file, the superblock, XFS geometry or quotactls). On 200
//! containers that was a second of every refresh under emulation. What
//! those reads find changes only when Docker's view of the container
//! changes (start, stop, rename, a dockerd restart: all new views from the
//! event-fed cache) or when the agent itself grows or repairs it; usage,
//! the one figure that moves all the time, the sampler reads on its own.
//!
//! A row is reused while (1) its container's view is the same, (2) no
//! resize or repair of it ended since it was read, and no filesystem size
//! moved under it (the policy sampler's statvfs sees a grow by hand,
//! `xfs_growfs` or a quota set, within its idle bound and calls
//! [`RowCache::changed`]), (3) it is younger than its time to live, 2 to 4
//! minutes spread by id so that rows read together do not all expire
//! together: what someone changes by hand that no statvfs shows (a dm table
//! reloaded with `dmsetup`) shows within that. With 20-40 s, re-reading
//! the expired rows was about a tenth of an idle agent's syscalls on a
//! host with 200 containers (statx, ioctl, openat and close: about 1,000
//! in 20 s, 560 after). `ls` and single-container reads never use these
//! rows.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use roomy_proto::v1::ContainerStorage;

use crate::docker::ContainerView;

/// The shortest time to live; each row adds up to as much again.
pub const ROW_TTL: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct Kept {
    view: ContainerView,
    read_at: Instant,
    row: ContainerStorage,
}

#[derive(Debug, Default)]
struct State {
    rows: HashMap<String, Kept>,
    /// Bumped whenever a mutation ends: rows read before it are not kept.
    generation: u64,
}

/// Rows of running containers, as read by the refresh.
#[derive(Debug, Default)]
pub struct RowCache {
    state: Mutex<State>,
}

/// A reading pass: which rows it may reuse, and whether it may keep what it
/// reads.
#[derive(Debug)]
pub struct Pass {
    generation: u64,
    started: Instant,
}

fn ttl(id: &str) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    ROW_TTL + Duration::from_millis(h.finish() % ROW_TTL.as_millis() as u64)
}

impl RowCache {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start a pass at `now`.
    pub fn pass(&self, now: Instant) -> Pass {
        Pass {
            generation: self.state().generation,
            started: now,
        }
    }

    /// Split a listing: the kept rows of the running containers of
    /// `driver` in `views`, and the views whose rows must be read (then
    /// [`put`](Self::put)). Rows of containers not in `views` (gone or
    /// stopped) are dropped.
    pub fn split<'v>(
        &self,
        pass: &Pass,
        views: &'v [ContainerView],
        driver: &str,
    ) -> (Vec<ContainerStorage>, Vec<&'v ContainerView>) {
        self.retain(views.iter().map(|v| v.id.as_str()));
        let mut kept = Vec::new();
        let mut unread = Vec::new();
        for view in views.iter().filter(|v| v.running && v.driver == driver) {
            match self.get(pass, view) {
                Some(row) => kept.push(row),
                None => unread.push(view),
            }
        }
        (kept, unread)
    }

    /// The row kept for `view`, if it is still its row.
    pub fn get(&self, pass: &Pass, view: &ContainerView) -> Option<ContainerStorage> {
        let s = self.state();
        let kept = s.rows.get(&view.id)?;
        let fresh = kept.view == *view
            && pass.started.saturating_duration_since(kept.read_at) < ttl(&view.id);
        fresh.then(|| kept.row.clone())
    }

    /// Keep `row`, read for `view` in `pass`, unless a mutation ended since
    /// the pass began.
    pub fn put(&self, pass: &Pass, view: &ContainerView, row: &ContainerStorage) {
        let mut s = self.state();
        if s.generation != pass.generation {
            return;
        }
        s.rows.insert(
            view.id.clone(),
            Kept {
                view: view.clone(),
                read_at: pass.started,
                row: row.clone(),
            },
        );
    }

    /// Drop rows of containers not in `ids` (gone or stopped).
    pub fn retain<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let ids: std::collections::HashSet<&str> = ids.into_iter().collect();
        self.state().rows.retain(|id, _| ids.contains(id.as_str()));
    }

    /// How many resizes and repairs ended since the cache was made.
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// A resize or repair of `id` ended, or its filesystem's size moved:
    /// its row is read again next time, no pass under way keeps what it
    /// read, and the change count moves (the inventory lists again).
    pub fn changed(&self, id: &str) {
        let mut s = self.state();
        s.rows.remove(id);
        s.generation += 1;
    }

    /// Rows kept now.
    pub fn len(&self) -> usize {
        self.state().rows.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Calls [`RowCache::changed`] when dropped: held by a mutation beside its
/// container's lock, so the row goes however the mutation ends.
pub struct ChangeGuard<'a> {
    rows: &'a RowCache,
    id: String,
}

impl<'a> ChangeGuard<'a> {
    /// For a mutation of container `id`.
    pub fn new(rows: &'a RowCache, id: &str) -> Self {
        ChangeGuard {
            rows,
            id: id.to_string(),
        }
    }
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        self.rows.changed(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, state: &str) -> ContainerView {
        ContainerView {
            id: id.into(),
            name: id.into(),
            state: state.into(),
            running: state == "running",
            driver: "devicemapper".into(),
            device_name: Some(format!("docker-{id}")),
            device_id: Some(1),
            docker_size: Some(1 << 30),
            ..Default::default()
        }
    }

    fn row(id: &str, size: u64) -> ContainerStorage {
        ContainerStorage {
            id: id.into(),
            fs_size_bytes: size,
            ..Default::default()
        }
    }

    #[test]
    fn a_row_is_reused_until_its_view_changes_or_it_ages() {
        let rows = RowCache::default();
        let t0 = Instant::now();
        let a = view("a", "running");
        let p = rows.pass(t0);
        assert_eq!(rows.get(&p, &a), None);
        rows.put(&p, &a, &row("a", 1));
        assert_eq!(rows.get(&rows.pass(t0), &a).unwrap().fs_size_bytes, 1);
        // Another view (a dockerd restart adopted a new DeviceSize).
        let restarted = ContainerView {
            docker_size: Some(2 << 30),
            ..a.clone()
        };
        assert_eq!(rows.get(&rows.pass(t0), &restarted), None);
        // Old enough: read again, whatever its id's spread.
        assert!(rows.get(&rows.pass(t0 + ROW_TTL / 2), &a).is_some());
        assert_eq!(rows.get(&rows.pass(t0 + 2 * ROW_TTL), &a), None);
        rows.retain([]);
        assert!(rows.is_empty());
    }

    #[test]
    fn a_mutation_drops_the_row_and_what_passes_under_way_read() {
        let rows = RowCache::default();
        let t0 = Instant::now();
        let (a, b) = (view("a", "running"), view("b", "running"));
        let before = rows.pass(t0);
        rows.put(&before, &a, &row("a", 1));
        // A pass reads b while a resize of a is under way; the resize ends.
        let during = rows.pass(t0);
        drop(ChangeGuard::new(&rows, "a"));
        rows.put(&during, &b, &row("b", 1));
        rows.put(&during, &a, &row("a", 1));
        let after = rows.pass(t0);
        assert_eq!(rows.get(&after, &a), None, "a's old size was kept");
        assert_eq!(rows.get(&after, &b), None);
        rows.put(&after, &a, &row("a", 2));
        assert_eq!(rows.get(&rows.pass(t0), &a).unwrap().fs_size_bytes, 2);
    }

    #[test]
    fn a_listing_splits_into_kept_rows_and_views_to_read() {
        let rows = RowCache::default();
        let t0 = Instant::now();
        let (a, b, gone) = (
            view("a", "running"),
            view("b", "running"),
            view("g", "running"),
        );
        let stopped = view("s", "exited");
        let other = ContainerView {
            driver: "overlay2".into(),
            ..view("o", "running")
        };
        let p = rows.pass(t0);
        rows.put(&p, &a, &row("a", 1));
        rows.put(&p, &gone, &row("g", 1));
        let views = [a, b, stopped, other];
        let (kept, unread) = rows.split(&rows.pass(t0), &views, "devicemapper");
        assert_eq!(kept, vec![row("a", 1)]);
        assert_eq!(
            unread.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(
            rows.len(),
            1,
            "the row of a container no longer listed was kept"
        );
    }
}
