//! The devicemapper backend: containers on Docker's `devicemapper` storage
//! driver, each on a thin device in Docker's pool. This module observes a
//! container's storage in all the places its size lives (dm table, dockerd's
//! memory, Docker's metadata file, the filesystem); `resize` changes it and
//! `guard` keeps grown containers startable.
//!
//! Its whole protocol lives in this folder: `resize` (grow, repair,
//! recovery), `guard`, `pool` (the thin pool and its growth), `metadata`
//! (Docker's per-device files), `seen` (filesystem sizes as last read, so
//! `ls` need not activate stopped containers' devices) and `table` (dm
//! tables as values).

pub mod guard;
pub mod metadata;
pub mod pool;
pub mod resize;
pub mod seen;
pub mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use roomy_proto::v1::{ContainerStorage, DevicemapperStorage, PoolStatus};

use crate::backend::rows::RowCache;
use crate::backend::shared::{self, unmanaged, LockTable};
use crate::backend::{
    health, ContainerRef, PoolGrowth, RepairOutcome, ResizeOutcome, SizeRequest, Sizes,
    StorageBackend,
};
use crate::docker::{ContainerView, DaemonInfo, DockerClient};
use crate::error::AgentError;
use crate::journal::Journal;
use crate::sys::dm::{DevState, DeviceMapper};
use crate::sys::fs::{self, FsKind, Usage};
use guard::Guard;
use metadata::DeviceMetadata;
use table::ThinTable;

/// Settings of the devicemapper backend.
#[derive(Debug, Clone)]
pub struct ThinConfig {
    /// Where intent records and private mount points live.
    pub state_dir: PathBuf,
    /// Refuse growth that would leave the pool with less free data space
    /// than this share of its size.
    pub pool_margin_percent: u64,
}

/// The devicemapper backend.
#[derive(Clone)]
pub struct ThinBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) docker: DockerClient,
    pub(crate) dm: DeviceMapper,
    pub(crate) journal: Journal,
    pub(crate) guard: Guard,
    pub(crate) config: ThinConfig,
    pub(crate) locks: LockTable,
    pub(crate) rows: RowCache,
    pub(crate) seen: seen::Seen,
    pub(crate) provisioned: metadata::Provisioned,
    /// The mount table the refresh's last pass used, for the next
    /// ([`fs::Mounts::reuse`]).
    pub(crate) refresh_mounts: std::sync::Mutex<Option<Arc<fs::MountPoints>>>,
}

/// How a container is read: alone, or as one row of a list.
#[derive(Debug, Clone)]
pub(crate) enum FsRead {
    /// Alone (inspect of one container, resize, repair, the guard): a
    /// stopped container's filesystem size from the device itself, through
    /// a private activation if it is not active; mounts read afresh.
    Device,
    /// A row of a list (`ls`, the refresh): a stopped container's size as
    /// the agent last read it (no activation), mounts from one snapshot.
    Recorded(Arc<fs::Mounts>),
}

impl FsRead {
    /// For a list: the mounts read once.
    pub(crate) fn list() -> Self {
        FsRead::Recorded(Arc::new(fs::Mounts::read()))
    }
}

/// Everything known about one devicemapper container's disk.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    pub view: ContainerView,
    pub device: String,
    pub device_id: u64,
    pub mount_id: String,
    pub pool: String,
    pub meta: DeviceMetadata,
    pub sizes: Sizes,
    pub dev: Option<DevState>,
    pub table: Option<ThinTable>,
    pub mountpoint: Option<PathBuf>,
    pub fs_kind: Option<FsKind>,
    pub usage: Option<Usage>,
}

impl ThinBackend {
    /// Connect the backend to dockerd and device-mapper.
    pub fn new(docker: DockerClient, config: ThinConfig) -> Result<Self, AgentError> {
        let journal = Journal::open(&config.state_dir.join("intents"))?;
        let seen = seen::Seen::load(config.state_dir.join("fs-seen.json"));
        Ok(ThinBackend {
            inner: Arc::new(Inner {
                docker,
                dm: DeviceMapper::new()?,
                journal,
                guard: Guard::default(),
                config,
                locks: Default::default(),
                rows: Default::default(),
                seen,
                provisioned: Default::default(),
                refresh_mounts: Default::default(),
            }),
        })
    }

    /// A devicemapper container, or why not.
    pub(crate) async fn find(
        &self,
        query: &str,
    ) -> Result<(ContainerView, DaemonInfo), AgentError> {
        let view = self.inner.docker.container(query).await?;
        let info = self.inner.docker.info().await?;
        if view.driver != "devicemapper" || view.device_name.is_none() {
            return Err(AgentError::WrongDriver {
                container: view.name,
                driver: view.driver,
                backend: "devicemapper".into(),
            });
        }
        Ok((view, info))
    }

    /// Read a container's disk from every place its size lives. Blocking.
    pub(crate) fn observe(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
    ) -> Result<Observed, AgentError> {
        self.observe_with(view, info, FsRead::Device)
    }

    /// [`observe`](Self::observe), taking a stopped container's filesystem
    /// size from `read`.
    pub(crate) fn observe_with(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
        read: FsRead,
    ) -> Result<Observed, AgentError> {
        let device = view
            .device_name
            .clone()
            .ok_or_else(|| AgentError::WrongDriver {
                container: view.name.clone(),
                driver: view.driver.clone(),
                backend: "devicemapper".into(),
            })?;
        let pool = info
            .pool
            .clone()
            .ok_or_else(|| AgentError::Unsupported("dockerd reports no thin pool (Pool Name in docker info): is it on the devicemapper driver?".into()))?;
        let mount_id = view.mount_id(&info.root_dir).ok_or_else(|| {
            AgentError::Internal(format!("no mount id for container {}", view.name))
        })?;
        let meta = DeviceMetadata::new(&info.root_dir, &mount_id);
        let persisted = meta.size()?;
        let device_id = match view.device_id {
            Some(id) => id,
            None => meta.device_id()?,
        };
        let dm = &self.inner.dm;
        let dev = dm.state(&device)?;
        let mut out = Observed {
            view: view.clone(),
            device: device.clone(),
            device_id,
            mount_id,
            pool,
            meta,
            sizes: Sizes {
                table: None,
                docker: view.docker_size.unwrap_or(persisted),
                persisted,
                fs: None,
            },
            dev,
            table: None,
            mountpoint: None,
            fs_kind: None,
            usage: None,
        };
        // Docker's deferred removal can take the device away between two
        // reads (right after `docker stop`): while it goes, opening its node
        // fails with ENXIO though dm still lists it, for as long as someone
        // (udev's probe, say) holds it. Look again briefly; a stopped
        // container's device that still cannot be read is treated as not
        // active and read through a private activation instead.
        let mut active = false;
        let mut state = dev;
        for attempt in 0.. {
            let Some(st) = state else { break };
            match self.observe_active(&mut out, st, &read) {
                Ok(()) => {
                    out.dev = Some(st);
                    active = true;
                    break;
                }
                Err(e) if attempt >= 10 && view.running => return Err(e),
                Err(e) if attempt >= 10 => {
                    tracing::debug!(
                        device,
                        "stopped container's device unreadable while it goes ({e}); probing"
                    );
                    break;
                }
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    state = dm.state(&device)?;
                }
            }
        }
        let seen = &self.inner.seen;
        if active {
            // Just read from the device: what `ls` shows once it goes.
            if let (Some(kind), Some(bytes)) = (out.fs_kind, out.sizes.fs) {
                seen.put(&out.mount_id, out.device_id, kind, bytes);
            }
            return Ok(out);
        }
        out.dev = None;
        out.table = None;
        out.mountpoint = None;
        out.usage = None;
        out.fs_kind = None;
        out.sizes.table = None;
        out.sizes.fs = None;
        let recorded = match read {
            FsRead::Recorded(_) => seen.get(&out.mount_id, out.device_id),
            FsRead::Device => None,
        };
        if let Some((kind, bytes)) = recorded {
            out.fs_kind = Some(kind);
            out.sizes.fs = Some(bytes);
        } else if let Some(sb) = self.probe_superblock(&out)? {
            out.fs_kind = Some(sb.kind);
            out.sizes.fs = Some(sb.bytes());
            seen.put(&out.mount_id, out.device_id, sb.kind, sb.bytes());
        }
        Ok(out)
    }

    /// Read table and filesystem of an active device into `out`.
    fn observe_active(
        &self,
        out: &mut Observed,
        state: DevState,
        read: &FsRead,
    ) -> Result<(), AgentError> {
        let table = self.inner.dm.thin_table(&out.device)?;
        out.sizes.table = Some(table.bytes());
        out.table = Some(table);
        let node = fs::dev_node(state.dev);
        out.mountpoint = match read {
            FsRead::Recorded(mounts) => mounts.mountpoint_of(state.dev),
            FsRead::Device => self.mountpoint_of(state.dev),
        };
        match &out.mountpoint {
            Some(mp) => {
                if let Some(kind) = fs::mounted_kind(mp)? {
                    out.fs_kind = Some(kind);
                    out.sizes.fs = Some(fs::mounted_size(kind, mp, &node)?);
                }
                out.usage = fs::usage(mp).ok();
            }
            None => {
                if let Some(sb) = fs::read_superblock(&node, true)? {
                    out.fs_kind = Some(sb.kind);
                    out.sizes.fs = Some(sb.bytes());
                }
            }
        }
        Ok(())
    }

    /// Read the superblock of a device that is not active, through a
    /// short-lived read-only activation under a private name. dm-thin lets
    /// two devices map one thin id, so a concurrent `docker start` is safe.
    fn probe_superblock(&self, obs: &Observed) -> Result<Option<fs::Superblock>, AgentError> {
        // One probe at a time: the guard (on Docker's die event) and a
        // user's inspect can probe the same container at once, and each
        // would take the other's probe device for a leftover.
        static PROBING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = PROBING.lock().unwrap_or_else(|e| e.into_inner());
        // Said at info: each probe maps the thin device a second time, and
        // `ls` should cause one per container at most, ever (`seen`).
        tracing::info!(
            container = %obs.view.name,
            "reading a stopped container's filesystem size through a private activation"
        );
        let dm = &self.inner.dm;
        let pool_dev = dm.device_number(&obs.pool)?;
        let name = format!(
            "roomy-probe-{}",
            &obs.mount_id[..obs.mount_id.len().min(24)]
        );
        if dm.state(&name)?.is_some() {
            // Left by an agent killed mid-probe.
            dm.remove(&name)?;
        }
        let table = ThinTable::new(pool_dev, obs.device_id, obs.sizes.docker.max(4096))?;
        let dev = dm.create(&name, &table, true)?;
        let sb = fs::read_superblock(&fs::dev_node(dev), true);
        let removed = dm.remove(&name);
        let _ = std::fs::remove_file(crate::sys::dm::mapper_path(&name));
        let sb = sb?;
        // Gone already is what we wanted.
        if removed.is_err() && dm.state(&name)?.is_some() {
            removed?;
        }
        Ok(sb)
    }

    /// Whether the grown device outlives a stop/start: held open with
    /// deferred removal on (or watched by events where it is off) while
    /// running; left active, not marked for removal, while stopped.
    pub(crate) fn protected(&self, obs: &Observed, info: &DaemonInfo) -> bool {
        let held = self.inner.guard.holds(&obs.view.id);
        let covers = |s: u64| obs.sizes.fs.is_none_or(|fs| s >= fs);
        match obs.dev {
            _ if obs.view.running => held || !info.deferred_removal,
            Some(state) => (!state.deferred_remove || held) && obs.sizes.table.is_some_and(covers),
            None => false,
        }
    }

    /// The wire form of an observation.
    pub(crate) fn describe(&self, obs: &Observed, info: &DaemonInfo) -> ContainerStorage {
        let (word, sentence) = health(&obs.sizes, self.protected(obs, info));
        let usage = obs.usage.unwrap_or_default();
        ContainerStorage {
            id: obs.view.id.clone(),
            name: obs.view.name.clone(),
            state: obs.view.state.clone(),
            driver: obs.view.driver.clone(),
            fs_type: obs
                .fs_kind
                .map(|k| k.name().to_string())
                .unwrap_or_default(),
            fs_size_bytes: obs.sizes.fs.unwrap_or(0),
            fs_total_bytes: usage.total,
            fs_used_bytes: usage.used,
            fs_avail_bytes: usage.avail,
            inodes_total: usage.inodes_total,
            inodes_used: usage.inodes_used,
            health: word as i32,
            health_message: sentence,
            labels: obs.view.labels.clone(),
            mountpoint: obs
                .mountpoint
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ..Default::default()
        }
        .with_devicemapper(DevicemapperStorage {
            device_name: obs.device.clone(),
            device_id: obs.device_id,
            pool_name: obs.pool.clone(),
            device_active: obs.dev.is_some(),
            table_size_bytes: obs.sizes.table.unwrap_or(0),
            docker_size_bytes: obs.sizes.docker,
            persisted_size_bytes: obs.sizes.persisted,
            guarded: self.inner.guard.holds(&obs.view.id),
        })
    }

    /// One container's row, read on the calling (blocking) thread.
    fn row(
        &self,
        view: &ContainerView,
        info: &DaemonInfo,
        read: &FsRead,
    ) -> Result<ContainerStorage, AgentError> {
        if view.driver != "devicemapper" || view.device_name.is_none() {
            return Ok(unmanaged(view, "devicemapper"));
        }
        let obs = self.observe_with(view, info, read.clone())?;
        Ok(self.describe(&obs, info))
    }

    /// The mount table for the rows of a listing that keeps rows (the
    /// refresh, the inventory's lists): the last such listing's while its
    /// answers hold (its first miss reads it again), or read now.
    fn kept_mounts(&self) -> Arc<fs::Mounts> {
        let kept = self.refresh_mounts().clone();
        Arc::new(kept.map_or_else(fs::Mounts::read, fs::Mounts::reuse))
    }

    /// Where `dev` is mounted, for a read of one container (a resize, a
    /// repair, the guard): the kept table's answer checked against the
    /// mount point's own device, else the table read again and kept.
    /// Why: a policy growth read the whole mount table three times (its
    /// observation, its filesystem step, the guard's reconcile), 440
    /// lines the kernel formats each time on a host of 200 containers.
    pub(crate) fn mountpoint_of(&self, dev: devicemapper::Device) -> Option<PathBuf> {
        let mounts = self.kept_mounts();
        let found = mounts.mountpoint_of(dev);
        self.keep_mounts(&mounts);
        found
    }

    /// Keep `mounts`, as a listing left it, for the next.
    fn keep_mounts(&self, mounts: &fs::Mounts) {
        *self.refresh_mounts() = Some(mounts.points());
    }

    fn refresh_mounts(&self) -> std::sync::MutexGuard<'_, Option<Arc<fs::MountPoints>>> {
        self.inner
            .refresh_mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Private mount point for growing a stopped container's filesystem.
    pub(crate) fn scratch_dir(&self, mount_id: &str) -> PathBuf {
        self.scratch_root().join(mount_id)
    }

    /// Where every scratch mount lives (swept at start).
    pub(crate) fn scratch_root(&self) -> PathBuf {
        self.inner.config.state_dir.join("mnt")
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.config.state_dir
    }
}

impl StorageBackend for ThinBackend {
    async fn running(&self) -> Result<Vec<ContainerStorage>, AgentError> {
        let info = self.inner.docker.info().await?;
        let rows = &self.inner.rows;
        let pass = rows.pass(Instant::now());
        let views = self.inner.docker.running().await?;
        let (mut out, unread) = rows.split(&pass, &views, "devicemapper");
        if unread.is_empty() {
            return Ok(out);
        }
        // The mount table only when a row must be read (as overlay2's
        // backing read).
        let mounts = self.kept_mounts();
        let read = FsRead::Recorded(mounts.clone());
        // Every row in one trip to the blocking pool, not one each: each
        // trip is two thread wake-ups, and under emulation those showed.
        let views: Vec<ContainerView> = unread.into_iter().cloned().collect();
        let this = self.clone();
        let read_rows = shared::on_blocking_thread(move || {
            Ok(views
                .into_iter()
                // A container that stops or vanishes mid-read is simply
                // left out until the next refresh.
                .filter_map(|view| {
                    let row = this.row(&view, &info, &read).ok()?;
                    Some((view, row))
                })
                .collect::<Vec<_>>())
        })
        .await?;
        self.keep_mounts(&mounts);
        for (view, row) in read_rows {
            rows.put(&pass, &view, &row);
            out.push(row);
        }
        Ok(out)
    }

    fn usage(&self, container: &ContainerStorage) -> Option<crate::backend::Usage> {
        if container.mountpoint.is_empty() {
            return None;
        }
        fs::usage(Path::new(&container.mountpoint)).ok()
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
        // One container asked for by name is read from its device; a list
        // takes stopped containers' sizes as last read (`seen`).
        let read = match container {
            Some(_) => FsRead::Device,
            None => FsRead::list(),
        };
        let live = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let (this, seen) = (self.clone(), Arc::clone(&live));
        let rows = shared::inspect_rows(&self.inner.docker, container, move |view| {
            if let Some(id) = view.mount_id(&info.root_dir) {
                seen.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
            }
            this.row(view, &info, &read)
        })
        .await?;
        if container.is_none() {
            self.inner
                .seen
                .retain(&live.lock().unwrap_or_else(|e| e.into_inner()));
        }
        Ok(rows)
    }

    async fn list_kept_rows(&self) -> Result<Vec<ContainerStorage>, AgentError> {
        let info = self.inner.docker.info().await?;
        let views = self.inner.docker.known().await?;
        let mounts = self.kept_mounts();
        let (this, read) = (self.clone(), FsRead::Recorded(mounts.clone()));
        let rows = shared::rows_keeping(views, &self.inner.rows, "devicemapper", move |view| {
            this.row(view, &info, &read)
        })
        .await?;
        self.keep_mounts(&mounts);
        Ok(rows)
    }

    async fn resize(
        &self,
        container: &ContainerRef,
        size: SizeRequest,
    ) -> Result<ResizeOutcome, AgentError> {
        self.resize_container(container.as_str(), size).await
    }

    async fn repair(&self, container: &ContainerRef) -> Result<RepairOutcome, AgentError> {
        self.repair_container(container.as_str()).await
    }

    async fn inspect_pool(&self) -> Result<PoolStatus, AgentError> {
        let info = self.inner.docker.info().await?;
        let this = self.clone();
        shared::on_blocking_thread(move || this.pool_status(&info)).await
    }

    async fn grow_pool(
        &self,
        growth: PoolGrowth,
        seen: Option<PoolStatus>,
    ) -> Result<(PoolStatus, PoolStatus), AgentError> {
        let t0 = Instant::now();
        // A policy's sample already holds what docker info and vgs would
        // say (0.3-1 s each under load, seen in bench-policy).
        let known = match seen {
            Some(s) => Known::Seen(s),
            None => Known::Asked(self.inner.docker.info().await?),
        };
        let this = self.clone();
        // One pool change at a time.
        let _serialized = self.inner.locks.lock("pool").await;
        shared::on_blocking_thread(move || {
            let dm = &this.inner.dm;
            let ms = |t: Instant| t.elapsed().as_millis() as u64;
            let info_ms = ms(t0);
            let t1 = Instant::now();
            let (name, virtual_bytes) = match &known {
                Known::Seen(s) => (s.name.clone(), s.virtual_bytes),
                Known::Asked(info) => (this.pool_name(info)?, this.virtual_bytes(info)),
            };
            let pool = pool::Pool::read(dm, &name)?;
            // Read once: the status before and the space check share it.
            let free = match &known {
                Known::Seen(s) => s.backing_free_bytes,
                Known::Asked(_) => pool.backing_free(),
            };
            let before = pool.status(virtual_bytes, free);
            let check_ms = ms(t1);
            let data = pool::plan("data", growth.data, pool.usage.data_total, pool.block_bytes)?;
            let meta = pool::plan(
                "metadata",
                growth.metadata,
                pool.usage.meta_total * 4096,
                4096,
            )?;
            if data.is_some() || meta.is_some() {
                let t2 = Instant::now();
                dm.grow_loop_pool(&pool, data, meta, free)?;
                tracing::info!(pool = %pool.name, ?data, ?meta, info_ms, check_ms, grow_ms = ms(t2), "pool grown");
            }
            let after = pool::Pool::read(dm, &name)?;
            Ok((before, after.status(virtual_bytes, after.backing_free())))
        })
        .await
    }

    fn pool_usage(&self, last: &PoolStatus) -> Option<PoolStatus> {
        let pool = pool::Pool::read(&self.inner.dm, &last.name).ok()?;
        Some(pool.status(last.virtual_bytes, last.backing_free_bytes))
    }
}

/// Where a pool growth takes the pool's name and backing figures from.
enum Known {
    /// The caller's recent sample.
    Seen(PoolStatus),
    /// Docker, asked now.
    Asked(DaemonInfo),
}

impl ThinBackend {
    fn pool_name(&self, info: &DaemonInfo) -> Result<String, AgentError> {
        info.pool
            .clone()
            .ok_or_else(|| AgentError::Unsupported("dockerd reports no thin pool (Pool Name in docker info): is it on the devicemapper driver?".into()))
    }

    /// The pool, with the sum of its thin devices' sizes from Docker's
    /// metadata files (deleted ones excluded). Blocking.
    fn pool_status(&self, info: &DaemonInfo) -> Result<PoolStatus, AgentError> {
        let pool = pool::Pool::read(&self.inner.dm, &self.pool_name(info)?)?;
        Ok(pool.status(self.virtual_bytes(info), pool.backing_free()))
    }

    /// Sum of the sizes of the pool's thin devices, from Docker's metadata.
    fn virtual_bytes(&self, info: &DaemonInfo) -> u64 {
        self.inner.provisioned.sizes(&info.root_dir).sum
    }
}
