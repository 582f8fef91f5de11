//! What dockerd knows, through its API (bollard): its storage driver,
//! containers, their devicemapper devices and the size dockerd holds for
//! each in memory, or their overlay2 layer directories and the size they
//! were created with. Lists are answered from [`cache`], which Docker's
//! events keep current; a container asked for by name is always inspected.

pub mod cache;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::{Stream, TryStreamExt};

use crate::error::AgentError;

/// How long a replay of dockerd's kept events may take before a user's
/// list checks with `docker ps -a` instead.
const REPLAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The daemon-wide facts the devicemapper backend needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonInfo {
    /// `DockerRootDir`, where the devicemapper metadata files live.
    pub root_dir: PathBuf,
    /// Storage driver name.
    pub driver: String,
    /// Thin pool name (`Pool Name` in DriverStatus).
    pub pool: Option<String>,
    /// Whether Docker removes devices with deferred removal (F9).
    pub deferred_removal: bool,
    /// `Backing Filesystem` (overlay2): e.g. "xfs".
    pub backing_fs: Option<String>,
    /// Docker's containerd image store: layers are containerd snapshots
    /// (`driver-type: io.containerd.snapshotter.v1`), which ignore
    /// `--storage-opt size` (DESIGN.md F12).
    pub containerd_snapshotter: bool,
}

impl DaemonInfo {
    /// Read the facts out of `DriverStatus` pairs.
    pub fn from_status(root_dir: PathBuf, driver: String, status: &[Vec<String>]) -> Self {
        let get = |key: &str| {
            status
                .iter()
                .find(|pair| pair.first().map(String::as_str) == Some(key))
                .and_then(|pair| pair.get(1).cloned())
        };
        DaemonInfo {
            root_dir,
            driver,
            pool: get("Pool Name"),
            deferred_removal: get("Deferred Removal Enabled").as_deref() == Some("true"),
            backing_fs: get("Backing Filesystem"),
            containerd_snapshotter: get("driver-type")
                .is_some_and(|t| t.starts_with("io.containerd.snapshotter")),
        }
    }
}

/// One container as the backend sees it. `Default` is for tests' views:
/// every real one comes from `from_inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerView {
    /// Full id.
    pub id: String,
    /// Name without the leading slash.
    pub name: String,
    /// Docker's state word.
    pub state: String,
    /// Whether it is running (or paused: its device is mounted either way).
    pub running: bool,
    /// Storage driver.
    pub driver: String,
    /// devicemapper: `DeviceName`.
    pub device_name: Option<String>,
    /// devicemapper: `DeviceId`.
    pub device_id: Option<u64>,
    /// devicemapper: `DeviceSize`, what dockerd holds in memory.
    pub docker_size: Option<u64>,
    /// overlay2: `UpperDir`, the container's writable layer.
    pub upper_dir: Option<PathBuf>,
    /// overlay2: `MergedDir`, its root while running.
    pub merged_dir: Option<PathBuf>,
    /// `HostConfig.StorageOpt.size` as given at create ("10G").
    pub storage_size: Option<String>,
    /// Docker labels: policy selectors and overrides read them.
    pub labels: HashMap<String, String>,
    /// `mount_id`'s answer once read.
    pub mount_id_memo: MountIdMemo,
}

/// A view's layer mount id, read once: it is fixed for the container's
/// life, and reading its file for every view at every guard sweep was 40
/// file opens a second on a host with 200 containers. The clones of one
/// view (the event-fed cache hands out clones) share it; a view read again
/// starts empty. Not part of a view's equality.
#[derive(Debug, Clone, Default)]
pub struct MountIdMemo(Arc<OnceLock<(PathBuf, Option<String>)>>);

impl PartialEq for MountIdMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for MountIdMemo {}

impl ContainerView {
    /// Build from `docker inspect`.
    pub fn from_inspect(c: ContainerInspectResponse) -> Self {
        let state = c.state.as_ref();
        let running = state.and_then(|s| s.running).unwrap_or(false);
        let state_word = state
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let data: HashMap<String, String> = c
            .graph_driver
            .as_ref()
            .map(|g| g.data.clone())
            .unwrap_or_default();
        ContainerView {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            state: state_word,
            running,
            driver: c.driver.unwrap_or_default(),
            device_name: data.get("DeviceName").cloned(),
            device_id: data.get("DeviceId").and_then(|v| v.parse().ok()),
            docker_size: data.get("DeviceSize").and_then(|v| v.parse().ok()),
            upper_dir: data.get("UpperDir").map(PathBuf::from),
            merged_dir: data.get("MergedDir").map(PathBuf::from),
            storage_size: c
                .host_config
                .as_ref()
                .and_then(|h| h.storage_opt.as_ref())
                .and_then(|o| o.get("size").cloned()),
            labels: c
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default(),
            mount_id_memo: MountIdMemo::default(),
        }
    }

    /// The layer's mount id: the hash Docker ends the device name with and
    /// names the metadata file after (F3).
    pub fn mount_id(&self, root: &Path) -> Option<String> {
        if let Some((r, id)) = self.mount_id_memo.0.get() {
            if r == root {
                return id.clone();
            }
        }
        let id = self.read_mount_id(root);
        let _ = self.mount_id_memo.0.set((root.to_path_buf(), id.clone()));
        id
    }

    fn read_mount_id(&self, root: &Path) -> Option<String> {
        let file = root
            .join("image/devicemapper/layerdb/mounts")
            .join(&self.id)
            .join("mount-id");
        if let Ok(id) = std::fs::read_to_string(file) {
            let id = id.trim();
            if !id.is_empty() {
                return Some(id.to_string());
            }
        }
        // Same value, from the device name: docker-<maj>:<min>-<inode>-<hash>.
        self.device_name
            .as_deref()
            .and_then(|n| n.rsplit('-').next())
            .map(str::to_string)
    }
}

/// A connection to dockerd.
#[derive(Clone)]
pub struct DockerClient {
    docker: Docker,
    cache: Arc<cache::ViewCache>,
}

impl DockerClient {
    /// Connect to `host` (`unix:///path`), or DOCKER_HOST / the default
    /// socket, and agree on an API version (Docker 20.10 speaks 1.41).
    pub async fn connect(host: Option<&str>) -> Result<Self, AgentError> {
        let docker = match host {
            Some(h) => Docker::connect_with_unix(h, 120, bollard::API_DEFAULT_VERSION)?,
            None => Docker::connect_with_local_defaults()?,
        };
        let docker = docker.negotiate_version().await?;
        let cache = Arc::new(cache::ViewCache::default());
        tokio::spawn(cache::watch(docker.clone(), Arc::downgrade(&cache)));
        Ok(DockerClient { docker, cache })
    }

    /// A count that moves with every Docker event that may change a
    /// container's row (and every restart of dockerd's event stream).
    pub fn changes(&self) -> u64 {
        self.cache.changes()
    }

    /// Daemon facts: asked once per dockerd (they change only when it
    /// restarts, which the cache sees).
    pub async fn info(&self) -> Result<DaemonInfo, AgentError> {
        let (epoch, known) = self.cache.info();
        if let Some(info) = known {
            return Ok(info);
        }
        let info = self.docker.info().await?;
        let info = DaemonInfo::from_status(
            PathBuf::from(info.docker_root_dir.unwrap_or_default()),
            info.driver.unwrap_or_default(),
            &info.driver_status.unwrap_or_default(),
        );
        self.cache.store_info(epoch, &info);
        Ok(info)
    }

    /// One container by name or id (a unique id prefix works, as in the
    /// docker CLI).
    pub async fn container(&self, query: &str) -> Result<ContainerView, AgentError> {
        if query.is_empty() || query.contains('/') {
            return Err(AgentError::NotFound(query.to_string()));
        }
        match self.docker.inspect_container(query, None).await {
            Ok(c) => Ok(ContainerView::from_inspect(c)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(AgentError::NotFound(query.to_string())),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 400,
                message,
            }) if message.contains("ultiple") => Err(self.ambiguous(query).await),
            Err(e) => Err(e.into()),
        }
    }

    async fn ambiguous(&self, prefix: &str) -> AgentError {
        let candidates = match self.list().await {
            Ok(all) => all
                .into_iter()
                .filter(|c| c.id.starts_with(prefix))
                .map(|c| c.name)
                .collect(),
            Err(_) => vec![],
        };
        AgentError::Ambiguous {
            prefix: prefix.to_string(),
            candidates,
        }
    }

    /// Every container, running or not, as `docker ps -a` shows it now
    /// (one list call; only containers that changed are inspected): for
    /// people's lists.
    pub async fn list(&self) -> Result<Vec<ContainerView>, AgentError> {
        self.list_where(true, true).await
    }

    /// Every container as Docker's events left it (no call when nothing
    /// happened, but for a check of the views once a `cache::CHECK_EVERY`):
    /// for the loops that list every few seconds.
    pub async fn known(&self) -> Result<Vec<ContainerView>, AgentError> {
        self.list_where(true, false).await
    }

    /// Running (and paused) containers, as [`DockerClient::known`].
    pub async fn running(&self) -> Result<Vec<ContainerView>, AgentError> {
        self.list_where(false, false).await
    }

    async fn list_where(&self, all: bool, verify: bool) -> Result<Vec<ContainerView>, AgentError> {
        let pick = |v: &ContainerView| all || v.running;
        Ok(match self.update(verify).await? {
            Some(views) => views.into_iter().filter(|v| pick(v)).collect(),
            // Only the views asked for are copied (the refresh wants the
            // running ones).
            None => self.cache.views_where(pick),
        })
    }

    /// Every container as [`known`](Self::known) has them, handed to `f`
    /// in place instead of copied out: for a loop that only looks. The
    /// guard's sweep copied all 220 views every 5 s to pick the few
    /// pending ones, and the copies showed in the busy host's profile.
    pub async fn with_known<R>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = &ContainerView>) -> R,
    ) -> Result<R, AgentError> {
        Ok(match self.update(false).await? {
            Some(views) => f(&mut views.iter()),
            None => self.cache.with_views(f),
        })
    }

    /// Bring the views up to date: read what the plan says (with `verify`,
    /// also what changed since the views' last check). `Some`: read whole
    /// just now (the cache may not have kept them: dockerd restarted
    /// meanwhile); `None`: the cache holds them.
    async fn update(&self, verify: bool) -> Result<Option<Vec<ContainerView>>, AgentError> {
        let _one = self.cache.reading.lock().await;
        match self.cache.plan(Instant::now()) {
            cache::Plan::Everything { epoch } => {
                let started = Instant::now();
                let wall = cache::unix_nanos();
                let views = self.read_all().await?;
                self.cache.store_all(epoch, started, &views);
                self.cache.checked(epoch, wall, started);
                Ok(Some(views))
            }
            cache::Plan::Only {
                epoch,
                mut ids,
                check,
            } => {
                if verify || check {
                    match self.changed_since_check(epoch).await {
                        Ok(changed) => ids.extend(changed),
                        Err(e) => {
                            self.cache.redirty(ids);
                            return Err(e);
                        }
                    }
                    ids.sort();
                    ids.dedup();
                }
                let mut read = Vec::with_capacity(ids.len());
                for (i, id) in ids.iter().enumerate() {
                    match self.inspect_id(id).await {
                        Ok(view) => read.push((id.clone(), view)),
                        Err(e) => {
                            self.cache.redirty(ids[i..].iter().cloned());
                            return Err(e);
                        }
                    }
                }
                if self.cache.keep_some(epoch, read) {
                    Ok(None)
                } else {
                    // dockerd restarted meanwhile.
                    Ok(Some(self.read_all().await?))
                }
            }
        }
    }

    /// The containers a user's list (or a loop's, when the views are due
    /// their check: `cache::CHECK_EVERY`) reads again because Docker
    /// changed them since the views were last checked: those dockerd's
    /// ring of recent events names, or, when the ring cannot vouch for the
    /// whole time (it turned over, the views were never checked, the replay
    /// failed), those `docker ps -a` lists otherwise than the views.
    async fn changed_since_check(&self, epoch: u64) -> Result<Vec<String>, AgentError> {
        let until = cache::unix_nanos();
        let began = Instant::now();
        let from = match self.cache.replay_from() {
            (e, Some(from)) if e == epoch => Some(from),
            _ => None,
        };
        if let Some(from) = from {
            match self.replay(from, until).await {
                Ok(events) if events.len() < cache::REPLAY_COMPLETE_BELOW => {
                    let ids = self.cache.replayed(events.iter().filter_map(|e| {
                        if e.typ != Some(EventMessageTypeEnum::CONTAINER) {
                            return None;
                        }
                        let id = e.actor.as_ref()?.id.as_deref()?;
                        Some((id, e.action.as_deref().unwrap_or_default()))
                    }));
                    self.cache.checked(epoch, until, began);
                    tracing::debug!(
                        events = events.len(),
                        reread = ids.len(),
                        "checked the views against dockerd's kept events"
                    );
                    return Ok(ids);
                }
                Ok(events) => tracing::debug!(
                    events = events.len(),
                    "dockerd's event ring may have turned over: checking with its list"
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "replaying dockerd's events failed: checking with its list")
                }
            }
        }
        let listed = self.ps().await?;
        self.cache.checked(epoch, until, began);
        Ok(self.cache.verify(&listed))
    }

    /// dockerd's kept events stamped from `from` to `until` (nanoseconds),
    /// oldest first. Bounded in time: dockerd streams live events until
    /// `until` if its clock is behind the agent's.
    async fn replay(&self, from: i64, until: i64) -> Result<Vec<EventMessage>, AgentError> {
        const NANOS: i64 = 1_000_000_000;
        let stamp = |n: i64| format!("{}.{:09}", n.div_euclid(NANOS), n.rem_euclid(NANOS));
        let events = self.docker.events(Some(EventsOptions {
            since: Some(stamp(from)),
            until: Some(stamp(until)),
            filters: None,
        }));
        match tokio::time::timeout(REPLAY_TIMEOUT, events.try_collect()).await {
            Ok(read) => Ok(read?),
            Err(_) => Err(AgentError::Internal(format!(
                "dockerd's event replay took over {REPLAY_TIMEOUT:?}"
            ))),
        }
    }

    /// `docker ps -a`: ids, names and states.
    async fn ps(&self) -> Result<Vec<cache::Listed>, AgentError> {
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let summaries = self.docker.list_containers(Some(options)).await?;
        Ok(summaries
            .into_iter()
            .filter_map(|s| {
                // Links add "/other/alias" names; a container's own has one slash.
                let names = s.names.unwrap_or_default();
                let name = names
                    .iter()
                    .map(|n| n.trim_start_matches('/'))
                    .find(|n| !n.contains('/'))
                    .unwrap_or_default()
                    .to_string();
                Some(cache::Listed {
                    id: s.id?,
                    name,
                    state: s.state.map(|st| st.to_string()).unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Every container, inspected now.
    async fn read_all(&self) -> Result<Vec<ContainerView>, AgentError> {
        let mut out = Vec::new();
        for listed in self.ps().await? {
            out.extend(self.inspect_id(&listed.id).await?);
        }
        Ok(out)
    }

    /// One container by full id; `None`: removed.
    async fn inspect_id(&self, id: &str) -> Result<Option<ContainerView>, AgentError> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => Ok(Some(ContainerView::from_inspect(c))),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Container lifecycle events (start, die, destroy, ...).
    pub fn container_events(
        &self,
    ) -> impl Stream<Item = Result<EventMessage, bollard::errors::Error>> {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        self.docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_driver_status_of_docker_20_10() {
        let status: Vec<Vec<String>> = [
            ("Pool Name", "docker-8:0-1234-pool"),
            ("Pool Blocksize", "65.54kB"),
            ("Data file", "/dev/loop0"),
            ("Deferred Removal Enabled", "true"),
            ("Deferred Deletion Enabled", "false"),
        ]
        .iter()
        .map(|(k, v)| vec![k.to_string(), v.to_string()])
        .collect();
        let info =
            DaemonInfo::from_status("/var/lib/docker".into(), "devicemapper".into(), &status);
        assert_eq!(info.pool.as_deref(), Some("docker-8:0-1234-pool"));
        assert!(info.deferred_removal);
        let info = DaemonInfo::from_status("/x".into(), "overlay2".into(), &[]);
        assert_eq!(info.pool, None);
        assert!(!info.deferred_removal);
    }

    #[test]
    fn tells_overlay2_from_the_containerd_image_store() {
        let pairs = |p: &[(&str, &str)]| -> Vec<Vec<String>> {
            p.iter()
                .map(|(k, v)| vec![k.to_string(), v.to_string()])
                .collect()
        };
        let classic = pairs(&[("Backing Filesystem", "xfs"), ("Supports d_type", "true")]);
        let info = DaemonInfo::from_status("/x".into(), "overlay2".into(), &classic);
        assert_eq!(info.backing_fs.as_deref(), Some("xfs"));
        assert!(!info.containerd_snapshotter);
        // Docker 26 with the containerd image store on.
        let snap = pairs(&[("driver-type", "io.containerd.snapshotter.v1")]);
        let info = DaemonInfo::from_status("/x".into(), "overlayfs".into(), &snap);
        assert!(info.containerd_snapshotter);
    }

    #[test]
    fn mount_id_comes_from_layerdb_or_the_device_name() {
        let root = tempfile::tempdir().unwrap();
        let mut c = ContainerView {
            id: "cid".into(),
            name: "node".into(),
            state: "running".into(),
            running: true,
            driver: "devicemapper".into(),
            device_name: Some("docker-8:0-1234-abcdef".into()),
            device_id: Some(4),
            docker_size: Some(2 << 30),
            ..Default::default()
        };
        let fresh = |c: &ContainerView| ContainerView {
            mount_id_memo: MountIdMemo::default(),
            ..c.clone()
        };
        assert_eq!(c.mount_id(root.path()).as_deref(), Some("abcdef"));
        let dir = root.path().join("image/devicemapper/layerdb/mounts/cid");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mount-id"), "fromfile").unwrap();
        // Read once per view: the clones of this one keep its answer.
        assert_eq!(c.clone().mount_id(root.path()).as_deref(), Some("abcdef"));
        c = fresh(&c);
        assert_eq!(c.mount_id(root.path()).as_deref(), Some("fromfile"));
        c.id = "other".into();
        c.device_name = None;
        c = fresh(&c);
        assert_eq!(c.mount_id(root.path()), None);
    }
}
