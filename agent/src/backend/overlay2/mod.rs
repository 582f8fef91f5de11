//! The overlay2 backend: containers on Docker's overlay2 driver whose data
//! root is XFS mounted with `prjquota`, each sized by the project quota of
//! its layer directory (DESIGN.md F11, F12). The quota's hard limit is the
//! container's disk: `df /` inside shows it, raising it grows the container
//! at once, running or stopped, and XFS keeps it on disk across restarts,
//! remounts and reboots (Docker sets it once, at create, and never again).
//!
//! Its whole protocol lives in this folder: this module observes a
//! container (layer directory, project id, limit and use from the quota,
//! what Docker recorded), `resize` grows it and finishes what a killed agent
//! left, `backing` is the filesystem under the layers, this backend's pool.

pub mod backing;
pub mod resize;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use roomy_proto::v1::{ContainerStorage, Health, Overlay2Storage, PoolStatus};
use roomy_proto::{format_bytes, ByteSize};

use crate::backend::rows::RowCache;
use crate::backend::shared::{self, unmanaged, LockTable};
use crate::backend::{
    ContainerRef, PoolGrowth, RepairOutcome, ResizeOutcome, SizeRequest, StorageBackend, Usage,
};
use crate::docker::{ContainerView, DaemonInfo, DockerClient};
use crate::error::AgentError;
use crate::journal::Journal;
use crate::sys::fs::{self, MountEntry};
use crate::sys::quota::{self, Project, ProjectQuota, QuotaFs, QuotaState};

/// The driver name Docker reports for this backend.
pub const DRIVER: &str = "overlay2";

/// Settings of the overlay2 backend.
#[derive(Debug, Clone)]
pub struct Overlay2Config {
    /// Where intent records live.
    pub state_dir: PathBuf,
    /// Refuse growth that would leave the backing filesystem with less free
    /// space than this share of its size.
    pub pool_margin_percent: u64,
}

/// The overlay2 backend.
#[derive(Clone)]
pub struct Overlay2Backend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) docker: DockerClient,
    pub(crate) journal: Journal,
    pub(crate) config: Overlay2Config,
    pub(crate) locks: LockTable,
    pub(crate) rows: RowCache,
    /// Quota doors by overlay2 directory: opened once, kept for the
    /// sampler's calls every 250 ms.
    doors: Mutex<HashMap<PathBuf, Arc<QuotaFs>>>,
}

/// The filesystem under Docker's overlay2 directory.
#[derive(Debug, Clone)]
pub(crate) struct BackingFs {
    /// `<data root>/overlay2`.
    pub home: PathBuf,
    /// Its mount.
    pub mount: MountEntry,
    /// statvfs of it.
    pub usage: Usage,
}

/// Everything known about one overlay2 container's disk.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    pub view: ContainerView,
    pub layer_dir: PathBuf,
    pub project: Project,
    /// `None` when the layer directory has no project (created without a
    /// size).
    pub quota: Option<ProjectQuota>,
    /// `HostConfig.StorageOpt.size` in bytes.
    pub docker_size: Option<u64>,
    pub backing: BackingFs,
}

impl Observed {
    /// The size Roomy grows: the project's hard limit; 0 for none.
    pub fn limit(&self) -> u64 {
        self.quota.map_or(0, |q| q.hard_bytes)
    }
}

impl Overlay2Backend {
    /// Connect the backend to dockerd.
    pub fn new(docker: DockerClient, config: Overlay2Config) -> Result<Self, AgentError> {
        let journal = Journal::open(&config.state_dir.join("intents"))?;
        Ok(Overlay2Backend {
            inner: Arc::new(Inner {
                docker,
                journal,
                config,
                locks: LockTable::default(),
                rows: RowCache::default(),
                doors: Mutex::default(),
            }),
        })
    }

    /// Refuse daemons whose containers this backend cannot size.
    pub(crate) fn check_daemon(info: &DaemonInfo) -> Result<(), AgentError> {
        if info.containerd_snapshotter {
            return Err(AgentError::Unsupported(format!(
                "dockerd uses the containerd image store (driver {}, io.containerd.snapshotter.v1): its overlayfs snapshotter ignores --storage-opt size, so containers there have no disk limit to grow; Roomy grows containers of the overlay2 graph driver: set \"features\": {{\"containerd-snapshotter\": false}} in daemon.json",
                info.driver
            )));
        }
        Ok(())
    }

    /// An overlay2 container, or why not.
    pub(crate) async fn find(
        &self,
        query: &str,
    ) -> Result<(ContainerView, DaemonInfo), AgentError> {
        let info = self.inner.docker.info().await?;
        Self::check_daemon(&info)?;
        let view = self.inner.docker.container(query).await?;
        if view.driver != DRIVER || view.upper_dir.is_none() {
            return Err(AgentError::WrongDriver {
                container: view.name,
                driver: view.driver,
                backend: DRIVER.into(),
            });
        }
        Ok((view, info))
    }

    /// The quota door of the filesystem under `home`.
    pub(crate) fn door(&self, home: &Path) -> Result<Arc<QuotaFs>, AgentError> {
        let mut doors = self.inner.doors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(door) = doors.get(home) {
            return Ok(door.clone());
        }
        let door = Arc::new(QuotaFs::open(home, &self.inner.config.state_dir)?);
        doors.insert(home.to_path_buf(), door.clone());
        Ok(door)
    }

    /// The filesystem under Docker's layers, refused unless it is XFS with
    /// project quotas enforced. Blocking.
    pub(crate) fn backing(&self, info: &DaemonInfo) -> Result<BackingFs, AgentError> {
        let home = info.root_dir.join(DRIVER);
        let mount = fs::mount_of(&home)?;
        if mount.fstype != "xfs" {
            return Err(AgentError::Unsupported(format!(
                "Docker's overlay2 directory {} is on {} ({}), and overlay2 sizes containers only on XFS with project quotas: put Docker's data root on XFS mounted with -o prjquota",
                home.display(),
                mount.fstype,
                mount.point.display()
            )));
        }
        // ESRCH and friends: quotas are not even accounted.
        let state = self.door(&home)?.state().unwrap_or(QuotaState {
            accounting: false,
            enforcing: false,
        });
        if !state.enforcing {
            return Err(AgentError::Unsupported(format!(
                "{} is XFS mounted without project quota enforcement ({}): Docker gives its containers no size and Roomy cannot raise one; add prjquota to its mount options (fstab), remount, and create containers with --storage-opt size=SIZE",
                mount.point.display(),
                if state.accounting {
                    "pqnoenforce"
                } else {
                    "no prjquota"
                }
            )));
        }
        let usage = fs::usage(&mount.point)?;
        Ok(BackingFs { home, mount, usage })
    }

    /// Read a container's disk. Blocking.
    pub(crate) fn observe(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
    ) -> Result<Observed, AgentError> {
        let backing = self.backing(info)?;
        self.observe_on(view, backing)
    }

    /// [`observe`](Self::observe) on the backing filesystem as read for a
    /// whole list. Blocking.
    fn observe_on(&self, view: &ContainerView, backing: BackingFs) -> Result<Observed, AgentError> {
        let upper = view.upper_dir.as_deref().ok_or_else(|| {
            AgentError::Internal(format!("dockerd names no UpperDir for {}", view.name))
        })?;
        // The project sits on the layer directory, not on diff/ (F12).
        let layer_dir = upper.parent().unwrap_or(upper).to_path_buf();
        let project = quota::project_of(&layer_dir)?;
        let quota = match project.id {
            0 => None,
            id => Some(self.door(&backing.home)?.get(id)?),
        };
        let docker_size = view
            .storage_size
            .as_deref()
            .and_then(|s| s.parse::<ByteSize>().ok())
            .map(|b| b.0);
        Ok(Observed {
            view: view.clone(),
            layer_dir,
            project,
            quota,
            docker_size,
            backing,
        })
    }

    /// [`observe_on`](Self::observe_on) the backing filesystem a list
    /// read, or [`observe`](Self::observe) reading it now. Blocking.
    fn observe_maybe_on(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
        backing: Option<&BackingFs>,
    ) -> Result<Observed, AgentError> {
        match backing {
            Some(b) => self.observe_on(view, b.clone()),
            None => self.observe(view, info),
        }
    }

    /// The backing filesystem, read once for the rows of a list (a read per
    /// row was a mountinfo read, a stat and two quotactls per container).
    /// `None` when it cannot be read: each row then says why.
    pub(crate) async fn list_backing(&self, info: &DaemonInfo) -> Option<Arc<BackingFs>> {
        let (this, info) = (self.clone(), info.clone());
        shared::on_blocking_thread(move || this.backing(&info))
            .await
            .ok()
            .map(Arc::new)
    }

    /// [`observe`](Self::observe) off the runtime's threads; on `backing`
    /// when a list read it.
    pub(crate) async fn observe_blocking(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
        backing: Option<&Arc<BackingFs>>,
    ) -> Result<Observed, AgentError> {
        let (this, view, info) = (self.clone(), view.clone(), info.clone());
        let backing = backing.map(|b| BackingFs::clone(b));
        shared::on_blocking_thread(move || this.observe_maybe_on(&view, &info, backing.as_ref()))
            .await
    }

    /// The wire form of an observation.
    pub(crate) fn describe(obs: &Observed) -> ContainerStorage {
        let limit = obs.limit();
        let q = obs.quota.unwrap_or_default();
        let backing = &obs.backing;
        let stale = obs.docker_size.is_some_and(|d| d != limit) && limit > 0;
        let sentence = match (limit, obs.docker_size) {
            (0, _) => format!(
                "no limit: created without --storage-opt size, it can fill {} ({} free); recreate it with --storage-opt size=SIZE to give it one",
                backing.mount.point.display(),
                format_bytes(backing.usage.avail)
            ),
            (_, Some(d)) if stale => format!(
                "{} (XFS project {}); Docker still records size={} from create, which it never re-applies: the limit lasts",
                format_bytes(limit),
                obs.project.id,
                format_bytes(d)
            ),
            _ => format!("{} (XFS project {})", format_bytes(limit), obs.project.id),
        };
        // No limit: the container sees the whole backing filesystem.
        let (total, avail, inodes_total) = if limit > 0 {
            (
                limit,
                limit.saturating_sub(q.used_bytes),
                if q.inode_limit > 0 {
                    q.inode_limit
                } else {
                    backing.usage.inodes_total
                },
            )
        } else {
            (
                backing.usage.total,
                backing.usage.avail,
                backing.usage.inodes_total,
            )
        };
        let view = &obs.view;
        ContainerStorage {
            id: view.id.clone(),
            name: view.name.clone(),
            state: view.state.clone(),
            driver: view.driver.clone(),
            fs_type: backing.mount.fstype.clone(),
            fs_size_bytes: limit,
            fs_total_bytes: total,
            fs_used_bytes: q.used_bytes,
            fs_avail_bytes: avail,
            inodes_total,
            inodes_used: q.used_inodes,
            health: Health::Ok as i32,
            health_message: sentence,
            labels: view.labels.clone(),
            mountpoint: view
                .merged_dir
                .as_ref()
                .filter(|_| view.running)
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            detail: Some(roomy_proto::v1::container_storage::Detail::Overlay2(
                Overlay2Storage {
                    project_id: obs.project.id,
                    layer_dir: obs.layer_dir.display().to_string(),
                    limit_bytes: limit,
                    quota_used_bytes: q.used_bytes,
                    quota_used_inodes: q.used_inodes,
                    docker_size_bytes: obs.docker_size.unwrap_or(0),
                    docker_size_stale: stale,
                    backing_mount: backing.mount.point.display().to_string(),
                    backing_fs: backing.mount.fstype.clone(),
                    backing_free_bytes: backing.usage.avail,
                },
            )),
            ..Default::default()
        }
    }

    /// [`row`](Self::row) off the runtime's threads (the refresh's rows).
    async fn inspect_one(
        &self,
        view: ContainerView,
        info: &DaemonInfo,
        backing: Option<&Arc<BackingFs>>,
    ) -> Result<ContainerStorage, AgentError> {
        let (this, info, backing) = (self.clone(), info.clone(), backing.cloned());
        shared::on_blocking_thread(move || this.row(&view, &info, backing.as_deref())).await
    }

    /// One container's row, read on the calling (blocking) thread: from the
    /// list's one read of the backing filesystem when there is one.
    fn row(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
        backing: Option<&BackingFs>,
    ) -> Result<ContainerStorage, AgentError> {
        if view.driver != DRIVER || view.upper_dir.is_none() {
            return Ok(unmanaged(view, DRIVER));
        }
        Ok(Self::describe(&self.observe_maybe_on(view, info, backing)?))
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.config.state_dir
    }
}

impl StorageBackend for Overlay2Backend {
    async fn running(&self) -> Result<Vec<ContainerStorage>, AgentError> {
        let info = self.inner.docker.info().await?;
        Self::check_daemon(&info)?;
        let rows = &self.inner.rows;
        let pass = rows.pass(std::time::Instant::now());
        let views = self.inner.docker.running().await?;
        let (mut out, unread) = rows.split(&pass, &views, DRIVER);
        let backing = if unread.is_empty() {
            None
        } else {
            self.list_backing(&info).await
        };
        for view in unread {
            // A container that stops or vanishes mid-read is left out
            // until the next refresh.
            if let Ok(row) = self
                .inspect_one(view.clone(), &info, backing.as_ref())
                .await
            {
                rows.put(&pass, view, &row);
                out.push(row);
            }
        }
        Ok(out)
    }

    /// One quotactl: what XFS counts for the project, exact (the sampler
    /// calls this every 250 ms).
    fn usage(&self, container: &ContainerStorage) -> Option<Usage> {
        let d = container.overlay2()?;
        if d.project_id == 0 || d.limit_bytes == 0 {
            return None;
        }
        let home = PathBuf::from(&d.layer_dir).parent()?.to_path_buf();
        let q = self.door(&home).ok()?.get(d.project_id).ok()?;
        Some(Usage {
            total: q.hard_bytes,
            used: q.used_bytes,
            avail: q.hard_bytes.saturating_sub(q.used_bytes),
            inodes_total: if q.inode_limit > 0 {
                q.inode_limit
            } else {
                container.inodes_total
            },
            inodes_used: q.used_inodes,
        })
    }

    fn written_bound(&self) -> Option<u64> {
        // The host's counters: every container's writes are among them.
        crate::sys::vmstat::written_bound().ok()
    }

    fn change_count(&self) -> u64 {
        // Both counters only grow, so their sum does.
        self.inner.docker.changes() + self.inner.rows.generation()
    }

    fn size_moved(&self, container_id: &str) {
        self.inner.rows.changed(container_id);
    }

    async fn inspect(
        &self,
        container: Option<&ContainerRef>,
    ) -> Result<Vec<ContainerStorage>, AgentError> {
        let info = self.inner.docker.info().await?;
        Self::check_daemon(&info)?;
        let backing = match container {
            Some(_) => None,
            None => self.list_backing(&info).await,
        };
        let this = self.clone();
        shared::inspect_rows(&self.inner.docker, container, move |view| {
            this.row(view, &info, backing.as_deref())
        })
        .await
    }

    async fn list_kept_rows(&self) -> Result<Vec<ContainerStorage>, AgentError> {
        let info = self.inner.docker.info().await?;
        Self::check_daemon(&info)?;
        let views = self.inner.docker.known().await?;
        let backing = self.list_backing(&info).await;
        let this = self.clone();
        shared::rows_keeping(views, &self.inner.rows, DRIVER, move |view| {
            this.row(view, &info, backing.as_deref())
        })
        .await
    }

    async fn resize(
        &self,
        container: &ContainerRef,
        size: SizeRequest,
    ) -> Result<ResizeOutcome, AgentError> {
        self.resize_container(container.as_str(), size).await
    }

    /// Nothing to repair: the limit lives in one place only (XFS), so no
    /// start can find it at another size.
    async fn repair(&self, container: &ContainerRef) -> Result<RepairOutcome, AgentError> {
        let (view, info) = self.find(container.as_str()).await?;
        let obs = self.observe_blocking(&view, &info, None).await?;
        Ok(RepairOutcome {
            repaired: false,
            message: format!(
                "{} is ok: an overlay2 limit lives only in XFS, nothing to repair",
                view.name
            ),
            container: Self::describe(&obs),
        })
    }

    async fn inspect_pool(&self) -> Result<PoolStatus, AgentError> {
        let info = self.inner.docker.info().await?;
        Self::check_daemon(&info)?;
        let limits = self.limits(&info).await?;
        let this = self.clone();
        shared::on_blocking_thread(move || this.pool_status(&info, limits)).await
    }

    async fn grow_pool(
        &self,
        growth: PoolGrowth,
        _seen: Option<PoolStatus>,
    ) -> Result<(PoolStatus, PoolStatus), AgentError> {
        self.grow_backing(growth).await
    }
}
