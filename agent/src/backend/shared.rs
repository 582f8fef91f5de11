//! Rules every backend shares, pure so they are tested without a kernel:
//! grow-only planning, the backing-space check, sector arithmetic and the
//! health words.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use roomy_proto::v1::{ContainerStorage, Health};
use roomy_proto::{format_bytes, ByteSize, SizeRequest};

use crate::backend::rows::{ChangeGuard, RowCache};
use crate::backend::ContainerRef;
use crate::docker::{ContainerView, DaemonInfo, DockerClient};
use crate::error::AgentError;

/// Bytes in a sector: dm lengths and XFS quota limits ("basic blocks")
/// are both counted in them.
pub const SECTOR: u64 = 512;

/// Bytes to sectors, refusing sizes that are not whole sectors.
pub fn bytes_to_sectors(bytes: u64) -> Result<u64, AgentError> {
    if bytes == 0 || !bytes.is_multiple_of(SECTOR) {
        return Err(AgentError::InvalidSize(format!(
            "{bytes} bytes is not a whole number of 512-byte sectors: use a unit (K, M, G, T)"
        )));
    }
    Ok(bytes / SECTOR)
}

/// What a growth draws on: a thin pool's data space, or the filesystem
/// that holds overlay2's layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// Its name in messages (the pool, or the filesystem's mount point).
    pub name: String,
    /// Free bytes now.
    pub free: u64,
    /// Size in bytes.
    pub total: u64,
}

/// Refuse a growth of `growth` bytes for `container` that would leave
/// `backing` with less free space than `margin_percent` of its size.
pub fn check_backing(
    backing: &Backing,
    container: &str,
    growth: u64,
    margin_percent: u64,
) -> Result<(), AgentError> {
    let margin = backing.total / 100 * margin_percent;
    if backing.free < growth.saturating_add(margin) {
        return Err(AgentError::PoolTooFull {
            pool: backing.name.clone(),
            container: container.to_string(),
            free: backing.free,
            total: backing.total,
            growth,
            margin_percent,
        });
    }
    Ok(())
}

/// The sizes a container's disk has in its different places. Absent ones
/// (device not active, filesystem unreadable) are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Live dm table.
    pub table: Option<u64>,
    /// dockerd's memory: what it activates the device at on start.
    pub docker: u64,
    /// Docker's metadata file: what dockerd adopts when it restarts.
    pub persisted: u64,
    /// The filesystem.
    pub fs: Option<u64>,
}

impl Sizes {
    /// The container's size for growing: the largest of all, so that a
    /// growth never lands below any of them.
    pub fn current(&self) -> u64 {
        [self.table, Some(self.docker), Some(self.persisted), self.fs]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
    }

    /// Grown and persisted, dockerd not yet holding the new size, and the
    /// filesystem within what is persisted: what the guard keeps startable
    /// until dockerd restarts.
    pub fn pending(&self) -> bool {
        self.persisted > self.docker && self.fs.is_none_or(|fs| fs <= self.persisted)
    }
}

/// The size a request asks for, or why it is refused. Shared by every
/// backend so that the simulated one refuses exactly what the real one does.
pub fn plan_grow(container: &str, request: SizeRequest, current: u64) -> Result<u64, AgentError> {
    let target = request
        .target(ByteSize(current))
        .ok_or_else(|| {
            AgentError::InvalidSize(format!(
                "{container}: {current} bytes plus {request:?} does not fit in 64 bits"
            ))
        })?
        .0;
    if target < current {
        return Err(AgentError::Shrink {
            container: container.to_string(),
            current,
            requested: target,
        });
    }
    bytes_to_sectors(target)?;
    Ok(target)
}

/// Whether a pool in `mode` (PoolStatus.mode) must have its metadata repaired before it
/// takes a new size: dm-thin ignores a grow of a needs_check pool ("unable
/// to grow ... until repaired") and a failed one takes nothing at all.
pub fn needs_repair(mode: &str) -> bool {
    matches!(mode, "needs_check" | "fail" | "error")
}

/// The health of a container's disk and the sentence that goes with it.
/// `protected`: the agent keeps the grown device alive across a restart
/// (fd held with deferred removal, or the device left active while stopped).
pub fn health(sizes: &Sizes, protected: bool) -> (Health, String) {
    let Sizes {
        docker,
        persisted,
        fs,
        ..
    } = *sizes;
    match fs {
        Some(fs) if fs > persisted => (
            Health::AtRisk,
            format!(
                "filesystem is {} but Docker's metadata says {}: the container will not start once it stops and dockerd restarts; run `roomyctl repair`",
                format_bytes(fs),
                format_bytes(persisted)
            ),
        ),
        Some(fs) if fs > docker && !protected => (
            Health::AtRisk,
            format!(
                "filesystem is {} but dockerd would activate the device at {}: the next start fails; run `roomyctl repair`",
                format_bytes(fs),
                format_bytes(docker)
            ),
        ),
        _ if persisted > docker => (
            Health::Pending,
            format!(
                "grown to {} and persisted; dockerd holds {} until it restarts, and Roomy keeps the container startable meanwhile; restart dockerd (with live-restore) to settle",
                format_bytes(persisted),
                format_bytes(docker)
            ),
        ),
        None => (
            Health::Ok,
            format!("{}; filesystem size not read", format_bytes(docker)),
        ),
        Some(_) => (Health::Ok, format!("{} everywhere", format_bytes(docker))),
    }
}

/// The row of a container this backend does not manage (another driver).
pub fn unmanaged(view: &ContainerView, backend: &str) -> ContainerStorage {
    ContainerStorage {
        id: view.id.clone(),
        name: view.name.clone(),
        state: view.state.clone(),
        driver: view.driver.clone(),
        labels: view.labels.clone(),
        health: Health::Unmanaged as i32,
        health_message: format!(
            "{} storage is not managed by this agent ({backend} only)",
            view.driver
        ),
        ..Default::default()
    }
}

/// Runs kernel work (ioctls, mounts, fsyncs) on tokio's blocking pool so it
/// never stalls the runtime; the task panicking is an internal error.
pub async fn on_blocking_thread<T, F>(work: F) -> Result<T, AgentError>
where
    F: FnOnce() -> Result<T, AgentError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::Internal(format!("storage work stopped: {e}")))?
}

/// Runs short blocking work (an fsync) where it is called, but lets the
/// runtime's other tasks go on meanwhile (`block_in_place`): a real host's
/// agent has one worker thread, and an fsync on a disk saturated by
/// writers takes seconds. On a current-thread runtime (unit tests), or
/// off the runtime, it simply runs.
pub fn off_the_worker<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The rows of `inspect`: the one container asked for (its error is the
/// call's), or every container, where one that cannot be read becomes a row
/// saying why instead of hiding the others. Sorted by name. `row` is the
/// backend's reading of one container, blocking (statfs, the mount table's
/// answer, a device's status, an activation).
///
/// A list's rows are read in a few batches side by side on the blocking
/// pool, not one trip there per row: under emulation the hand-off to a
/// blocking thread and back cost more than most rows, and the batches use
/// the host's other cores.
pub async fn inspect_rows<F>(
    docker: &DockerClient,
    container: Option<&ContainerRef>,
    row: F,
) -> Result<Vec<ContainerStorage>, AgentError>
where
    F: Fn(&ContainerView) -> Result<ContainerStorage, AgentError> + Send + Sync + 'static,
{
    if let Some(query) = container {
        let view = docker.container(query.as_str()).await?;
        return on_blocking_thread(move || row(&view))
            .await
            .map(|r| vec![r]);
    }
    let t0 = std::time::Instant::now();
    let views = docker.list().await?;
    let t1 = std::time::Instant::now();
    let mut out: Vec<ContainerStorage> = read_in_batches(views, Arc::new(row))
        .await?
        .into_iter()
        .map(|(view, read)| read.unwrap_or_else(|e| row_why(&view, e)))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    // Where a user's list spends its time (bench-host reads these).
    tracing::debug!(
        containers = out.len(),
        docker_ms = (t1 - t0).as_millis() as u64,
        rows_ms = t1.elapsed().as_millis() as u64,
        "listed"
    );
    Ok(out)
}

/// Every container's row, as a list of [`inspect_rows`] reads them, from
/// `views` (Docker's as its events left them), but with the row `rows`
/// keeps for each running container of `driver` whose view has not
/// changed since it was read (`RowCache::get`); the rows read are kept
/// in turn. Sorted by name.
///
/// Why: the inventory stream lists again after every change (a Docker
/// event, a growth), and a growth changes one row. With 20 of 200
/// containers filling (bench-host), the stream's fresh lists were 6 a
/// minute, each reading 220 rows as an `ls` does (100-180 ms there) and
/// asking dockerd for its events; these lists take 20-40 ms and no call.
/// (The agent's CPU in that window did not move measurably: 4.18%
/// against 4.12% before, in one run.) What a kept row may miss (a table
/// reloaded by hand) shows within its time to live, and in the stream's
/// fresh list every 5 minutes.
pub async fn rows_keeping<F>(
    views: Vec<ContainerView>,
    rows: &RowCache,
    driver: &str,
    row: F,
) -> Result<Vec<ContainerStorage>, AgentError>
where
    F: Fn(&ContainerView) -> Result<ContainerStorage, AgentError> + Send + Sync + 'static,
{
    let pass = rows.pass(std::time::Instant::now());
    let (mut out, unread) = rows.split(&pass, &views, driver);
    let to_keep: std::collections::HashSet<String> =
        unread.into_iter().map(|v| v.id.clone()).collect();
    let kept: std::collections::HashSet<&str> = out.iter().map(|r| r.id.as_str()).collect();
    let to_read: Vec<ContainerView> = views
        .iter()
        .filter(|v| !kept.contains(v.id.as_str()))
        .cloned()
        .collect();
    for (view, read) in read_in_batches(to_read, Arc::new(row)).await? {
        match read {
            Ok(row) => {
                if to_keep.contains(&view.id) {
                    rows.put(&pass, &view, &row);
                }
                out.push(row);
            }
            Err(e) => out.push(row_why(&view, e)),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Each view with its row as `row` reads it, in a few batches side by
/// side on the blocking pool (one trip each), in the views' order.
async fn read_in_batches<F>(
    mut views: Vec<ContainerView>,
    row: Arc<F>,
) -> Result<Vec<(ContainerView, Result<ContainerStorage, AgentError>)>, AgentError>
where
    F: Fn(&ContainerView) -> Result<ContainerStorage, AgentError> + Send + Sync + 'static,
{
    if views.is_empty() {
        return Ok(Vec::new());
    }
    let batches = std::thread::available_parallelism().map_or(1, |n| n.get().min(ROW_BATCHES));
    let per_batch = views.len().div_ceil(batches).max(1);
    let mut reads = Vec::with_capacity(batches);
    while !views.is_empty() {
        let rest = views.split_off(per_batch.min(views.len()));
        let batch = std::mem::replace(&mut views, rest);
        let row = Arc::clone(&row);
        reads.push(on_blocking_thread(move || {
            Ok(batch
                .into_iter()
                .map(|view| {
                    let read = row(&view);
                    (view, read)
                })
                .collect::<Vec<_>>())
        }));
    }
    Ok(futures_util::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// At most this many batches of a list's rows are read at once.
const ROW_BATCHES: usize = 4;

/// The row of a container that could not be read, saying why.
fn row_why(view: &ContainerView, e: AgentError) -> ContainerStorage {
    ContainerStorage {
        id: view.id.clone(),
        name: view.name.clone(),
        state: view.state.clone(),
        driver: view.driver.clone(),
        health: Health::Unspecified as i32,
        health_message: format!("could not read its storage: {e}"),
        ..Default::default()
    }
}

/// Whether `query` is a whole container id (64 hex digits), as the policy
/// engine and the controller's routing pass it.
pub fn is_full_id(query: &str) -> bool {
    query.len() == 64 && query.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container's lock (keyed by its id), with its view and the daemon's
/// facts read under it: a change that ran before this one may have
/// changed what `find` reads. `find` is the backend's own lookup. A whole
/// id is the key as it is (one Docker inspect instead of two, for every
/// policy growth); a name is looked up first to learn the key, and so is
/// a name that only looked like an id.
pub async fn lock_container<F, Fut>(
    locks: &LockTable,
    query: &str,
    find: F,
) -> Result<(tokio::sync::OwnedMutexGuard<()>, ContainerView, DaemonInfo), AgentError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(ContainerView, DaemonInfo), AgentError>>,
{
    let mut key = if is_full_id(query) {
        query.to_string()
    } else {
        find(query.to_string()).await?.0.id
    };
    loop {
        let lock = locks.lock(&key).await;
        let (view, info) = find(key.clone()).await?;
        if view.id == key {
            return Ok((lock, view, info));
        }
        key = view.id;
    }
}

/// What a change to one container holds while it runs: the container's
/// lock, and its row's [`ChangeGuard`], so that the row is read again
/// however the change ends. Dropped together, after the change.
pub struct Held<'a> {
    _row: ChangeGuard<'a>,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

/// [`lock_container`] for a change: every resize and repair starts here,
/// so none can forget to mark its row changed.
pub async fn hold_container<'a, F, Fut>(
    locks: &LockTable,
    rows: &'a RowCache,
    query: &str,
    find: F,
) -> Result<(Held<'a>, ContainerView, DaemonInfo), AgentError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(ContainerView, DaemonInfo), AgentError>>,
{
    let (lock, view, info) = lock_container(locks, query, find).await?;
    let held = Held {
        _row: ChangeGuard::new(rows, &view.id),
        _lock: lock,
    };
    Ok((held, view, info))
}

/// One lock per container (or pool): changes to one are serialized, to
/// different ones run side by side. Entries nobody holds or waits for are
/// dropped as new ones are taken, so the table does not grow with every
/// container a host ever had.
#[derive(Debug, Default)]
pub struct LockTable {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl LockTable {
    /// Wait for `key`'s lock. The guard owns it: held across awaits and
    /// into a spawned task, released when dropped.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Only this table refers to an idle lock.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(key.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Locks in the table now.
    pub fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the table holds no lock.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const G: u64 = 1 << 30;

    /// Docker as `find` sees it: containers by name and id, and a count
    /// of the inspects asked of it.
    struct Daemon {
        containers: Vec<(String, String)>,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl Daemon {
        async fn find(&self, q: String) -> Result<(ContainerView, DaemonInfo), AgentError> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (id, name) = self
                .containers
                .iter()
                .find(|(id, name)| *id == q || *name == q)
                .ok_or_else(|| AgentError::NotFound(q.clone()))?;
            let view = ContainerView {
                id: id.clone(),
                name: name.clone(),
                state: "running".into(),
                running: true,
                driver: "overlay2".into(),
                ..Default::default()
            };
            Ok((
                view,
                DaemonInfo::from_status("/x".into(), "overlay2".into(), &[]),
            ))
        }
    }

    #[tokio::test]
    async fn a_container_is_locked_by_its_id_and_read_under_the_lock() {
        let id = "ab".repeat(32);
        // A name that looks like an id but is not this one's.
        let lookalike = "cd".repeat(32);
        let web = "ef".repeat(32);
        let docker = Daemon {
            containers: vec![(id.clone(), lookalike.clone()), (web.clone(), "web".into())],
            asked: Default::default(),
        };
        let locks = LockTable::default();
        let asked = || docker.asked.swap(0, std::sync::atomic::Ordering::SeqCst);
        let find = |q: String| docker.find(q);

        // By id (the policy engine): one inspect.
        let (held, view, _) = lock_container(&locks, &id, find).await.unwrap();
        assert_eq!((view.id.as_str(), asked()), (id.as_str(), 1));
        // Held: another change of it waits.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            lock_container(&locks, &lookalike, find),
        );
        assert!(waiting.await.is_err(), "a second lock was taken while held");
        asked();
        drop(held);
        // By a name that looks like an id: taken for one, read, corrected.
        let (_, view, _) = lock_container(&locks, &lookalike, find).await.unwrap();
        assert_eq!((view.id.as_str(), asked()), (id.as_str(), 2));
        // By name: looked up, then read again under the lock.
        let (_, view, _) = lock_container(&locks, "web", find).await.unwrap();
        assert_eq!((view.id.as_str(), asked()), (web.as_str(), 2));
        // Not there: the lookup's error, nothing held.
        let missing = lock_container(&locks, "nope", find).await;
        assert!(matches!(missing, Err(AgentError::NotFound(_))));
    }

    /// As a request arrives: text parsed first, then planned.
    fn plan(container: &str, text: &str, current: u64) -> Result<u64, AgentError> {
        plan_grow(container, text.parse()?, current)
    }

    #[test]
    fn plans_growth_and_refuses_the_rest() {
        assert_eq!(plan("c", "4G", 2 * G).unwrap(), 4 * G);
        assert_eq!(plan("c", "+2G", 2 * G).unwrap(), 4 * G);
        assert_eq!(
            plan("c", "2G", 2 * G).unwrap(),
            2 * G,
            "same size is a no-op, not an error"
        );
        assert!(matches!(
            plan("c", "1G", 2 * G),
            Err(AgentError::Shrink { .. })
        ));
        assert!(matches!(plan("c", "0", 2 * G), Err(AgentError::Size(_))));
        assert!(matches!(plan("c", "lots", 2 * G), Err(AgentError::Size(_))));
        assert!(matches!(
            plan("c", "4294967297", 2 * G),
            Err(AgentError::InvalidSize(_))
        ));
        assert!(matches!(
            plan("c", "+16777215T", 1 << 41),
            Err(AgentError::InvalidSize(_))
        ));
    }

    #[test]
    fn lock_table_serializes_one_key_and_forgets_idle_ones() {
        let table = LockTable::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let held = table.lock("a").await;
            // The same key waits; another does not.
            let same = tokio::time::timeout(std::time::Duration::from_millis(50), table.lock("a"));
            assert!(same.await.is_err(), "a second holder of one key");
            let _b = table.lock("b").await;
            drop(held);
            drop(_b);
            for i in 0..100 {
                drop(table.lock(&format!("c{i}")).await);
            }
            // Every lock above is idle: only the last taken is left.
            assert!(table.len() <= 1, "{} locks kept", table.len());
        });
    }

    #[test]
    fn current_size_is_the_largest_known() {
        let sizes = Sizes {
            table: None,
            docker: 2 * G,
            persisted: 2 * G,
            fs: Some(4 * G),
        };
        assert_eq!(sizes.current(), 4 * G);
    }

    #[test]
    fn health_words() {
        let settled = Sizes {
            table: Some(4 * G),
            docker: 4 * G,
            persisted: 4 * G,
            fs: Some(4 * G),
        };
        assert_eq!(health(&settled, false).0, Health::Ok);

        let pending = Sizes {
            docker: 2 * G,
            ..settled
        };
        assert_eq!(health(&pending, true).0, Health::Pending);
        assert!(health(&pending, true).1.contains("restart dockerd"));
        // Persisted but nothing keeps the device alive: the next start fails.
        assert_eq!(health(&pending, false).0, Health::AtRisk);

        // The plain dmsetup recipe: filesystem grown, metadata not.
        let recipe = Sizes {
            persisted: 2 * G,
            docker: 2 * G,
            ..settled
        };
        let (word, sentence) = health(&recipe, true);
        assert_eq!(word, Health::AtRisk);
        assert!(sentence.contains("roomyctl repair"), "{sentence}");

        let unknown = Sizes {
            fs: None,
            ..settled
        };
        assert_eq!(health(&unknown, false).0, Health::Ok);
    }

    /// With one worker, a task ticking beside blocking work still ticks.
    #[test]
    fn other_tasks_go_on_during_the_blocking_work() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ticks = std::sync::Arc::new(AtomicU64::new(0));
            let t = ticks.clone();
            tokio::spawn(async move {
                loop {
                    t.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let before = ticks.load(Ordering::Relaxed);
            let during = tokio::spawn({
                let ticks = ticks.clone();
                async move {
                    off_the_worker(|| std::thread::sleep(std::time::Duration::from_millis(500)));
                    ticks.load(Ordering::Relaxed)
                }
            })
            .await
            .unwrap();
            assert!(
                during >= before + 5,
                "the ticker ticked {} times in 500 ms of blocking work",
                during - before
            );
        });
        // Off a runtime: it just runs.
        assert_eq!(off_the_worker(|| 7), 7);
    }

    /// The rows of a kept list (`rows_keeping`): `views`' names as listed,
    /// and the names whose rows were read for it.
    async fn kept_list(views: &[ContainerView], rows: &RowCache) -> (Vec<String>, Vec<String>) {
        let reads = Arc::new(Mutex::new(Vec::new()));
        let log = reads.clone();
        let listed = rows_keeping(views.to_vec(), rows, "devicemapper", move |v| {
            log.lock().unwrap().push(v.name.clone());
            if v.name == "broken" {
                return Err(AgentError::fs("/dev/mapper/x", "no filesystem"));
            }
            Ok(ContainerStorage {
                id: v.id.clone(),
                name: v.name.clone(),
                state: v.state.clone(),
                ..Default::default()
            })
        })
        .await
        .unwrap();
        for row in &listed {
            if row.name == "broken" {
                assert!(row.health_message.contains("could not read its storage: "));
            }
        }
        let mut reads = reads.lock().unwrap().clone();
        reads.sort();
        (listed.into_iter().map(|r| r.name).collect(), reads)
    }

    /// A growth changes one row of 200: the inventory stream's list after
    /// it reads that row again, and the rows no kept row stands for
    /// (stopped containers, other drivers, rows that failed), not the
    /// rest. Every change that makes a row stale is one it reads again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_list_reads_again_only_what_changed() {
        let view = |id: &str, name: &str, running: bool, driver: &str| ContainerView {
            id: id.into(),
            name: name.into(),
            state: if running { "running" } else { "exited" }.into(),
            running,
            driver: driver.into(),
            ..Default::default()
        };
        let mut views = vec![
            view("b1", "b", true, "devicemapper"),
            view("a1", "a", true, "devicemapper"),
            view("c1", "c", false, "devicemapper"),
            view("d1", "d", true, "overlay2"),
            view("e1", "broken", true, "devicemapper"),
        ];
        let rows = RowCache::default();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let every = names(&["a", "b", "broken", "c", "d"]);
        // First: every row read, listed by name.
        assert_eq!(
            kept_list(&views, &rows).await,
            (every.clone(), every.clone())
        );
        // Nothing changed: only what no kept row stands for.
        let rest = names(&["broken", "c", "d"]);
        assert_eq!(
            kept_list(&views, &rows).await,
            (every.clone(), rest.clone())
        );
        // A growth of `a` ended: its row too.
        rows.changed("a1");
        assert_eq!(
            kept_list(&views, &rows).await,
            (every, names(&["a", "broken", "c", "d"]))
        );
        // Docker's view of `b` changed (renamed): read again, listed anew.
        views[0].name = "bb".into();
        assert_eq!(
            kept_list(&views, &rows).await,
            (
                names(&["a", "bb", "broken", "c", "d"]),
                names(&["bb", "broken", "c", "d"])
            )
        );
        // `a` removed: gone from the list.
        views.remove(1);
        assert_eq!(
            kept_list(&views, &rows).await,
            (names(&["bb", "broken", "c", "d"]), rest)
        );
    }
}
