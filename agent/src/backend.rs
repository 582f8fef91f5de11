//! The storage backend trait the gRPC service calls, the values its
//! mutations return, and the rules every backend shares (grow-only
//! planning, health), kept pure so they are tested without a kernel.

use std::future::Future;

use roomy_proto::v1::{ContainerStorage, Health, PoolStatus};
use roomy_proto::{format_bytes, ByteSize, SizeRequest};

use crate::error::AgentError;
pub use crate::fs::Usage;

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
        container: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ContainerStorage>, AgentError>> + Send;

    /// Grow a container to `size` ("16G", "+4G"). Grow only; serialized per
    /// container; nothing changes when refused.
    fn resize(
        &self,
        container: &str,
        size: &str,
    ) -> impl Future<Output = Result<ResizeOutcome, AgentError>> + Send;

    /// Make an `at_risk` container startable again.
    fn repair(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<RepairOutcome, AgentError>> + Send;

    /// The thin pool under the containers.
    fn inspect_pool(&self) -> impl Future<Output = Result<PoolStatus, AgentError>> + Send;

    /// Grow the pool's data and/or metadata ("8G", "+4G"; empty: leave it).
    /// Returns the pool before and after.
    fn grow_pool(
        &self,
        data: &str,
        metadata: &str,
    ) -> impl Future<Output = Result<(PoolStatus, PoolStatus), AgentError>> + Send;

    /// The running containers this backend manages, for the policy
    /// sampler: called every few seconds, so it never probes stopped
    /// containers' devices.
    fn running(&self) -> impl Future<Output = Result<Vec<ContainerStorage>, AgentError>> + Send;

    /// Usage of a running container's filesystem now (statvfs: cheap, the
    /// sampler calls it every 250 ms). `None` when it is not mounted.
    fn usage(&self, container: &ContainerStorage) -> Option<Usage>;
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
}

/// The size a request asks for, or why it is refused. Shared by every
/// backend so that the simulated one refuses exactly what the real one does.
pub fn plan_grow(container: &str, request: &str, current: u64) -> Result<u64, AgentError> {
    let request: SizeRequest = request.parse()?;
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
    crate::table::bytes_to_sectors(target)?;
    Ok(target)
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

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn plans_growth_and_refuses_the_rest() {
        assert_eq!(plan_grow("c", "4G", 2 * G).unwrap(), 4 * G);
        assert_eq!(plan_grow("c", "+2G", 2 * G).unwrap(), 4 * G);
        assert_eq!(
            plan_grow("c", "2G", 2 * G).unwrap(),
            2 * G,
            "same size is a no-op, not an error"
        );
        assert!(matches!(
            plan_grow("c", "1G", 2 * G),
            Err(AgentError::Shrink { .. })
        ));
        assert!(matches!(
            plan_grow("c", "0", 2 * G),
            Err(AgentError::Size(_))
        ));
        assert!(matches!(
            plan_grow("c", "lots", 2 * G),
            Err(AgentError::Size(_))
        ));
        assert!(matches!(
            plan_grow("c", "4294967297", 2 * G),
            Err(AgentError::InvalidSize(_))
        ));
        assert!(matches!(
            plan_grow("c", "+16777215T", 1 << 41),
            Err(AgentError::InvalidSize(_))
        ));
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
}
