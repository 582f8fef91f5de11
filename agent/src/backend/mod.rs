//! The storage backend trait the gRPC service calls and the values its
//! mutations return. One folder per backend (`devicemapper/`, `overlay2/`)
//! and the in-memory `sim`; what they all share (grow-only planning, the
//! backing-space check, health words) is in `shared`, so the simulated
//! backend refuses exactly what the real ones refuse.

pub mod devicemapper;
pub mod overlay2;
pub mod rows;
pub mod shared;
pub mod sim;

use std::fmt;
use std::future::Future;

use roomy_proto::v1::{ContainerStorage, PoolStatus};
pub use roomy_proto::SizeRequest;

use crate::error::AgentError;
pub use crate::sys::fs::Usage;
pub use shared::{health, plan_grow, Sizes};

/// A container as a client names it: its name, or a unique prefix of its
/// id. Checked once, where a request comes in; backends resolve it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef(String);

impl ContainerRef {
    /// What Docker allows in names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, with or
    /// without the leading `/` Docker shows) and ids; anything else is
    /// refused before anything is looked up.
    pub fn parse(text: &str) -> Result<Self, AgentError> {
        let name = text.strip_prefix('/').unwrap_or(text);
        let ok = name.len() <= 255
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(AgentError::BadContainerName(text.to_string()));
        }
        Ok(ContainerRef(name.to_string()))
    }

    /// The name or id prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a pool growth asks for, per side; `None` leaves that side alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGrowth {
    /// Data: `8G` or `+4G`.
    pub data: Option<SizeRequest>,
    /// Metadata: `1G` or `+64M`.
    pub metadata: Option<SizeRequest>,
}

impl PoolGrowth {
    /// From the request's two strings (empty: leave that side alone).
    pub fn parse(data: &str, metadata: &str) -> Result<Self, AgentError> {
        let side = |text: &str| -> Result<Option<SizeRequest>, AgentError> {
            let text = text.trim();
            Ok(if text.is_empty() {
                None
            } else {
                Some(text.parse()?)
            })
        };
        Ok(PoolGrowth {
            data: side(data)?,
            metadata: side(metadata)?,
        })
    }
}

/// What a resize did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowAction {
    /// Already at the size asked for: nothing changed.
    Unchanged {
        /// The size it has.
        size: u64,
    },
    /// Grown.
    Grown {
        /// Size before.
        from: u64,
        /// Size after.
        to: u64,
    },
}

/// A resize's answer.
#[derive(Debug, Clone)]
pub struct ResizeOutcome {
    /// What was done.
    pub action: GrowAction,
    /// One sentence for people.
    pub message: String,
    /// The container afterwards.
    pub container: ContainerStorage,
}

/// A repair's answer.
#[derive(Debug, Clone)]
pub struct RepairOutcome {
    /// Whether anything was changed.
    pub repaired: bool,
    /// One sentence for people.
    pub message: String,
    /// The container afterwards.
    pub container: ContainerStorage,
}

/// A storage backend: one per storage driver. Handlers call these and
/// nothing else; only backends touch the kernel and Docker.
pub trait StorageBackend: Send + Sync + 'static {
    /// Storage of one container (`Some(name or id)`) or all (`None`).
    fn inspect(
        &self,
        container: Option<&ContainerRef>,
    ) -> impl Future<Output = Result<Vec<ContainerStorage>, AgentError>> + Send;

    /// Every container's row, as `inspect(None)` lists them, except that
    /// a running container's row may be the one the backend kept since
    /// its last change (a Docker event about it, a resize or repair, its
    /// size moving), up to its time to live (`rows::ROW_TTL`), and the
    /// containers are Docker's as its events left them. What changes use
    /// is not read again either. For the inventory stream's lists after a
    /// change; people's lists read everything (`inspect`). Default: that.
    fn list_kept_rows(
        &self,
    ) -> impl Future<Output = Result<Vec<ContainerStorage>, AgentError>> + Send {
        self.inspect(None)
    }

    /// Grow a container to `size` (`16G`, `+4G`). Grow only; serialized per
    /// container; nothing changes when refused.
    fn resize(
        &self,
        container: &ContainerRef,
        size: SizeRequest,
    ) -> impl Future<Output = Result<ResizeOutcome, AgentError>> + Send;

    /// Make an `at_risk` container startable again.
    fn repair(
        &self,
        container: &ContainerRef,
    ) -> impl Future<Output = Result<RepairOutcome, AgentError>> + Send;

    /// The thin pool under the containers.
    fn inspect_pool(&self) -> impl Future<Output = Result<PoolStatus, AgentError>> + Send;

    /// Grow the pool's data and/or metadata. Returns the pool before and
    /// after. `seen`: the pool as the caller read it a moment ago (the
    /// policy engine's sample); a backend may take its name and backing
    /// figures from it instead of asking Docker and LVM again before
    /// acting, the kernel's numbers are always read afresh.
    fn grow_pool(
        &self,
        growth: PoolGrowth,
        seen: Option<PoolStatus>,
    ) -> impl Future<Output = Result<(PoolStatus, PoolStatus), AgentError>> + Send;

    /// The running containers this backend manages, for the policy
    /// sampler: called every few seconds, so it never probes stopped
    /// containers' devices.
    fn running(&self) -> impl Future<Output = Result<Vec<ContainerStorage>, AgentError>> + Send;

    /// Usage of a running container's filesystem now (statvfs: cheap, the
    /// sampler calls it every 250 ms). `None` when it is not mounted.
    fn usage(&self, container: &ContainerStorage) -> Option<Usage>;

    /// An upper bound on the bytes written into this backend's
    /// filesystems since some fixed moment, never decreasing: the sampler
    /// leaves a filesystem unread while less has been written since its
    /// last read than could bring it to its policy's trigger. `None`: no
    /// such bound, every filesystem is read at every pass.
    fn written_bound(&self) -> Option<u64> {
        None
    }

    /// A count that moves whenever something this backend knows of may
    /// have changed a container's row other than its use: a Docker event
    /// (created, started, stopped, renamed, removed), an ended resize or
    /// repair. Never decreases within the process. The inventory stream
    /// lists the containers again when it moved; use it follows through
    /// [`StorageBackend::written_bound`].
    fn change_count(&self) -> u64;

    /// The policy sampler saw this running container's filesystem size
    /// (statvfs's total: a filesystem or quota grown by hand) differ from
    /// its listed row's, with no resize of Roomy's under way: what the
    /// backend keeps of it is stale. It reads the row again at the next
    /// listing, and moves [`StorageBackend::change_count`].
    fn size_moved(&self, container_id: &str) {
        let _ = container_id;
    }

    /// The pool's use now, re-read from the kernel alone on top of `last`
    /// (from [`StorageBackend::inspect_pool`]), which keeps what costs a
    /// Docker round trip or a process: the sampler calls it every 250 ms
    /// while a pool policy is in force. `None` where there is no such read.
    fn pool_usage(&self, last: &PoolStatus) -> Option<PoolStatus> {
        let _ = last;
        None
    }
}
