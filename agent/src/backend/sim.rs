//! The simulated backend: containers and their thin devices in memory,
//! behind the same trait as the real one and refusing exactly what it
//! refuses (it shares `plan_grow` and `health`). For controller and fleet
//! tests at scale; never the proof of a storage path.

use std::sync::Mutex;

use roomy_proto::format_bytes;
use roomy_proto::v1::{ContainerStorage, DevicemapperStorage, PoolStatus};

use crate::backend::shared::{check_backing, Backing};
use crate::backend::{
    health, plan_grow, ContainerRef, GrowAction, PoolGrowth, RepairOutcome, ResizeOutcome,
    SizeRequest, Sizes, StorageBackend,
};
use crate::error::AgentError;

/// Inodes (total, used) of every running sim container's filesystem.
const SIM_INODES: (u64, u64) = (1 << 20, 1000);

/// One simulated container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimContainer {
    /// Full id (64 hex digits in Docker; anything unique here).
    pub id: String,
    /// Name.
    pub name: String,
    /// Running or not.
    pub running: bool,
    /// Storage driver; anything but devicemapper is refused as in the real backend.
    pub driver: String,
    /// Sizes in every place.
    pub sizes: Sizes,
    /// Bytes used in the filesystem.
    pub used: u64,
}

struct SimState {
    containers: Vec<SimContainer>,
    pool_total: u64,
    pool_used: u64,
    /// Bytes per second every running container writes (fleet tests of
    /// policies); it stops when the filesystem is full, as ENOSPC would.
    fill_rate: u64,
    last_fill: std::time::Instant,
    /// Bytes the simulated writers wrote: the host's write counter.
    written: u64,
    /// `usage` calls: what the sampler's reads cost.
    usage_reads: u64,
    /// Lists that may keep rows ([`StorageBackend::list_kept_rows`]).
    kept_lists: u64,
    /// Resizes and repairs that changed something: the host's change count.
    changes: u64,
}

impl SimState {
    /// Bring the simulated writers up to now.
    fn fill(&mut self) {
        let now = std::time::Instant::now();
        let dt = now.duration_since(self.last_fill).as_secs_f64();
        self.last_fill = now;
        if self.fill_rate == 0 {
            return;
        }
        let wrote = (self.fill_rate as f64 * dt) as u64;
        for i in 0..self.containers.len() {
            if self.containers[i].running {
                self.write(i, wrote);
            }
        }
    }

    /// Container `i` writes `bytes`, up to full, as ENOSPC would stop it.
    fn write(&mut self, i: usize, bytes: u64) {
        let c = &mut self.containers[i];
        let n = bytes.min(c.sizes.fs.unwrap_or(0).saturating_sub(c.used));
        c.used += n;
        self.pool_used += n;
        self.written += n;
    }
}

/// The in-memory backend. Clones share the same host.
#[derive(Clone)]
pub struct SimBackend {
    state: std::sync::Arc<Mutex<SimState>>,
    pool_margin_percent: u64,
}

impl SimBackend {
    /// A host with these containers and a pool of `pool_total` bytes.
    pub fn new(containers: Vec<SimContainer>, pool_total: u64, pool_margin_percent: u64) -> Self {
        let pool_used = containers.iter().map(|c| c.used).sum();
        SimBackend {
            state: std::sync::Arc::new(Mutex::new(SimState {
                containers,
                pool_total,
                pool_used,
                fill_rate: 0,
                last_fill: std::time::Instant::now(),
                written: 0,
                usage_reads: 0,
                kept_lists: 0,
                changes: 0,
            })),
            pool_margin_percent,
        }
    }

    /// Every running container writes `bytes_per_second` until full.
    pub fn with_fill_rate(self, bytes_per_second: u64) -> Self {
        self.state.lock().expect("sim state poisoned").fill_rate = bytes_per_second;
        self
    }

    /// Container `id` writes `bytes` now (up to full).
    pub fn write(&self, id: &str, bytes: u64) {
        let mut state = self.lock();
        if let Some(i) = state.containers.iter().position(|c| c.id == id) {
            state.write(i, bytes);
        }
    }

    /// A container started now, as Docker's `start` event would tell the
    /// agent: it moves the change count.
    #[cfg(test)]
    pub fn start(&self, container: SimContainer) {
        let mut state = self.lock();
        state.pool_used += container.used;
        state.containers.push(container);
        state.changes += 1;
    }

    /// Container `id` takes `bytes` more without writing them (as
    /// `fallocate` does): the host's write counter does not move.
    #[cfg(test)]
    pub fn allocate(&self, id: &str, bytes: u64) {
        let mut state = self.lock();
        if let Some(c) = state.containers.iter_mut().find(|c| c.id == id) {
            c.used += bytes;
            state.pool_used += bytes;
        }
    }

    /// Container `id`'s disk and filesystem grown to `bytes` by hand
    /// (dmsetup and xfs_growfs): no event, no change count.
    #[cfg(test)]
    pub fn grow_by_hand(&self, id: &str, bytes: u64) {
        let mut state = self.lock();
        if let Some(c) = state.containers.iter_mut().find(|c| c.id == id) {
            c.sizes.table = Some(bytes);
            c.sizes.fs = Some(bytes);
        }
    }

    /// How many times a container's filesystem use was read.
    pub fn usage_reads(&self) -> u64 {
        self.lock().usage_reads
    }

    /// How many lists that may keep rows were asked for.
    pub fn kept_lists(&self) -> u64 {
        self.lock().kept_lists
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        let mut state = self.state.lock().expect("sim state poisoned");
        state.fill();
        state
    }

    /// `count` running 2 GiB xfs containers named `c0`, `c1`, ... each a
    /// quarter full, on a 100 GiB pool: a demo host for fleet tests.
    pub fn demo(host: &str, count: usize) -> Self {
        const G: u64 = 1 << 30;
        let containers = (0..count)
            .map(|i| SimContainer {
                id: format!("{:016x}{:048x}", fnv(host), i),
                name: format!("c{i}"),
                running: true,
                driver: "devicemapper".into(),
                sizes: Sizes {
                    table: Some(2 * G),
                    docker: 2 * G,
                    persisted: 2 * G,
                    fs: Some(2 * G),
                },
                used: G / 2,
            })
            .collect();
        SimBackend::new(containers, 100 * G, 10)
    }

    fn find<'a>(state: &'a mut SimState, query: &str) -> Result<&'a mut SimContainer, AgentError> {
        let exact = state
            .containers
            .iter()
            .position(|c| c.name == query || c.id == query);
        let index = match exact {
            Some(i) => i,
            None => {
                let matches: Vec<usize> = (0..state.containers.len())
                    .filter(|&i| !query.is_empty() && state.containers[i].id.starts_with(query))
                    .collect();
                match matches.as_slice() {
                    [i] => *i,
                    [] => return Err(AgentError::NotFound(query.to_string())),
                    many => {
                        return Err(AgentError::Ambiguous {
                            prefix: query.to_string(),
                            candidates: many
                                .iter()
                                .map(|&i| state.containers[i].name.clone())
                                .collect(),
                        })
                    }
                }
            }
        };
        Ok(&mut state.containers[index])
    }

    fn describe(c: &SimContainer) -> ContainerStorage {
        let (word, sentence) = health(&c.sizes, true);
        let fs = c.sizes.fs.unwrap_or(0);
        ContainerStorage {
            id: c.id.clone(),
            name: c.name.clone(),
            state: if c.running { "running" } else { "exited" }.into(),
            driver: c.driver.clone(),
            fs_type: "xfs".into(),
            fs_size_bytes: fs,
            fs_total_bytes: if c.running { fs } else { 0 },
            fs_used_bytes: if c.running { c.used } else { 0 },
            fs_avail_bytes: if c.running {
                fs.saturating_sub(c.used)
            } else {
                0
            },
            // As `usage` reads them: a row read whole and one with its use
            // read again say the same (the inventory stream sends rows
            // that differ).
            inodes_total: if c.running { SIM_INODES.0 } else { 0 },
            inodes_used: if c.running { SIM_INODES.1 } else { 0 },
            health: word as i32,
            health_message: sentence,
            ..Default::default()
        }
        // The sim plays a devicemapper host: its rows look like one.
        .with_devicemapper(DevicemapperStorage {
            device_name: format!("sim-{}", &c.id[..c.id.len().min(12)]),
            pool_name: "sim-pool".into(),
            device_active: c.sizes.table.is_some(),
            table_size_bytes: c.sizes.table.unwrap_or(0),
            docker_size_bytes: c.sizes.docker,
            persisted_size_bytes: c.sizes.persisted,
            ..Default::default()
        })
    }
}

impl SimBackend {
    fn pool(state: &SimState) -> PoolStatus {
        PoolStatus {
            name: "sim-pool".into(),
            data_used_bytes: state.pool_used,
            data_total_bytes: state.pool_total,
            metadata_total_bytes: 1 << 30,
            mode: "rw".into(),
            backing: "sim".into(),
            virtual_bytes: state.containers.iter().map(|c| c.sizes.current()).sum(),
            message: format!(
                "data {} of {}, rw",
                format_bytes(state.pool_used),
                format_bytes(state.pool_total)
            ),
            ..Default::default()
        }
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

impl StorageBackend for SimBackend {
    async fn running(&self) -> Result<Vec<ContainerStorage>, AgentError> {
        let state = self.lock();
        Ok(state
            .containers
            .iter()
            .filter(|c| c.running && c.driver == "devicemapper")
            .map(Self::describe)
            .collect())
    }

    fn usage(&self, container: &ContainerStorage) -> Option<crate::backend::Usage> {
        let mut state = self.lock();
        state.usage_reads += 1;
        let c = state
            .containers
            .iter()
            .find(|c| c.id == container.id && c.running)?;
        let total = c.sizes.fs.unwrap_or(0);
        Some(crate::backend::Usage {
            total,
            used: c.used,
            avail: total.saturating_sub(c.used),
            inodes_total: SIM_INODES.0,
            inodes_used: SIM_INODES.1,
        })
    }

    fn written_bound(&self) -> Option<u64> {
        Some(self.lock().written)
    }

    fn change_count(&self) -> u64 {
        self.lock().changes
    }

    /// The sim keeps no rows: every row is read, and the call counted.
    async fn list_kept_rows(&self) -> Result<Vec<ContainerStorage>, AgentError> {
        self.lock().kept_lists += 1;
        self.inspect(None).await
    }

    async fn inspect(
        &self,
        container: Option<&ContainerRef>,
    ) -> Result<Vec<ContainerStorage>, AgentError> {
        let mut state = self.lock();
        Ok(match container {
            Some(query) => vec![Self::describe(Self::find(&mut state, query.as_str())?)],
            None => state.containers.iter().map(Self::describe).collect(),
        })
    }

    async fn resize(
        &self,
        container: &ContainerRef,
        size: SizeRequest,
    ) -> Result<ResizeOutcome, AgentError> {
        // Test-only (`failpoints` feature): `ROOMY_FAILPOINT=sim-resize=pause`
        // keeps a resize in flight for 4 s, so the fleet tier can kill the
        // controller that routed it. Before the lock, and an async sleep:
        // the rest of the agent answers meanwhile.
        crate::failpoint::hit_async("sim-resize").await;
        let mut state = self.lock();
        let (total, used) = (state.pool_total, state.pool_used);
        let c = Self::find(&mut state, container.as_str())?;
        if c.driver != "devicemapper" {
            return Err(AgentError::WrongDriver {
                container: c.name.clone(),
                driver: c.driver.clone(),
                backend: "devicemapper".into(),
            });
        }
        let current = c.sizes.current();
        let target = plan_grow(&c.name, size, current)?;
        if target == current {
            return Ok(ResizeOutcome {
                action: GrowAction::Unchanged { size: current },
                message: format!(
                    "{} is already {}: nothing changed",
                    c.name,
                    format_bytes(current)
                ),
                container: Self::describe(c),
            });
        }
        let growth = target - current;
        let backing = Backing {
            name: "sim-pool".into(),
            free: total.saturating_sub(used),
            total,
        };
        check_backing(&backing, &c.name, growth, self.pool_margin_percent)?;
        c.sizes = Sizes {
            table: Some(target),
            docker: c.sizes.docker,
            persisted: target,
            fs: Some(target),
        };
        let outcome = ResizeOutcome {
            action: GrowAction::Grown {
                from: current,
                to: target,
            },
            message: format!(
                "grew {} from {} to {} {}",
                c.name,
                format_bytes(current),
                format_bytes(target),
                if c.running {
                    "online"
                } else {
                    "while stopped; it starts at the new size"
                }
            ),
            container: Self::describe(c),
        };
        state.changes += 1;
        Ok(outcome)
    }

    async fn inspect_pool(&self) -> Result<PoolStatus, AgentError> {
        let state = self.lock();
        Ok(Self::pool(&state))
    }

    fn pool_usage(&self, _last: &PoolStatus) -> Option<PoolStatus> {
        Some(Self::pool(&self.lock()))
    }

    async fn grow_pool(
        &self,
        growth: PoolGrowth,
        _seen: Option<PoolStatus>,
    ) -> Result<(PoolStatus, PoolStatus), AgentError> {
        use crate::backend::devicemapper::pool::plan;
        let mut state = self.lock();
        let before = Self::pool(&state);
        if let Some(total) = plan("data", growth.data, state.pool_total, 65536)? {
            state.pool_total = total;
        }
        plan("metadata", growth.metadata, 1 << 30, 4096)?;
        Ok((before, Self::pool(&state)))
    }

    async fn repair(&self, container: &ContainerRef) -> Result<RepairOutcome, AgentError> {
        let mut state = self.lock();
        let c = Self::find(&mut state, container.as_str())?;
        let before = Self::describe(c);
        if before.health() != roomy_proto::v1::Health::AtRisk {
            return Ok(RepairOutcome {
                repaired: false,
                message: format!(
                    "{} is {}: nothing to repair",
                    c.name,
                    before.health().word()
                ),
                container: before,
            });
        }
        let target = c.sizes.current();
        c.sizes.table = Some(target);
        c.sizes.persisted = target;
        let outcome = RepairOutcome {
            repaired: true,
            message: format!(
                "repaired {}: device active at {}",
                c.name,
                format_bytes(target)
            ),
            container: Self::describe(c),
        };
        state.changes += 1;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomy_proto::v1::Health;

    const G: u64 = 1 << 30;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A resize as the service runs it: words parsed, then the backend.
    async fn resize(sim: &SimBackend, c: &str, size: &str) -> Result<ResizeOutcome, AgentError> {
        let (c, size) = crate::service::parse_resize(c, size)?;
        sim.resize(&c, size).await
    }

    fn one(sim: &SimBackend, c: &str) -> ContainerStorage {
        block_on(sim.inspect(Some(&ContainerRef::parse(c).unwrap())))
            .unwrap()
            .remove(0)
    }

    #[test]
    fn grows_and_says_so() {
        let sim = SimBackend::demo("host1", 3);
        block_on(async {
            let out = resize(&sim, "c1", "4G").await.unwrap();
            assert_eq!(
                out.action,
                GrowAction::Grown {
                    from: 2 * G,
                    to: 4 * G
                }
            );
            assert_eq!(out.container.health(), Health::Pending);
            let again = resize(&sim, "c1", "4G").await.unwrap();
            assert_eq!(again.action, GrowAction::Unchanged { size: 4 * G });
            assert!(
                again.message.contains("nothing changed"),
                "{}",
                again.message
            );
            let all = sim.inspect(None).await.unwrap();
            assert_eq!(all.len(), 3);
        });
    }

    /// The table the real backends run on the VM tier too
    /// (tests/vm/refusals.tsv): the same refusals, codes and words, and
    /// nothing changed by any of them.
    #[test]
    fn refuses_what_the_real_backends_refuse() {
        let table = include_str!("../../../tests/vm/refusals.tsv");
        let sim = SimBackend::demo("host1", 3);
        let before = block_on(sim.inspect(None)).unwrap();
        let mut rows = 0;
        for line in table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let [c, size, code, fragment] = line.split('\t').collect::<Vec<_>>()[..] else {
                panic!("refusals.tsv: {line:?} is not 4 tab-separated fields");
            };
            let c = if c == "C" { "c0" } else { c };
            let err = block_on(resize(&sim, c, size)).expect_err(line);
            let status = tonic::Status::from(err);
            assert_eq!(
                format!("{:?}", status.code()),
                code,
                "{line}: {}",
                status.message()
            );
            assert!(
                status.message().contains(fragment),
                "{line}: {}",
                status.message()
            );
            rows += 1;
        }
        assert!(rows >= 8, "the table has {rows} rows");
        assert_eq!(
            block_on(sim.inspect(None)).unwrap(),
            before,
            "a refusal changed something"
        );
        assert_eq!(one(&sim, "c0").fs_size_bytes, 2 * G);
    }

    #[test]
    fn id_prefixes_resolve_or_say_which() {
        let sim = SimBackend::demo("h", 12);
        let c0 = one(&sim, "c0");
        block_on(async {
            let by = |text: &str| ContainerRef::parse(text).unwrap();
            // Ids differ only in the last hex digits: a short prefix is ambiguous.
            let err = sim.inspect(Some(&by(&c0.id[..16]))).await.unwrap_err();
            assert!(err.to_string().contains("c0, c1"), "{err}");
            assert_eq!(sim.inspect(Some(&by(&c0.id))).await.unwrap()[0].name, "c0");
        });
    }
}
