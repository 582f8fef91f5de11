//! The agent's one error type, and the one table that maps it to gRPC
//! status codes. Messages name the thing and the next step.

use roomy_proto::{format_bytes, SizeError};

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No container by that name or id.
    #[error(
        "no container {0:?} on this host: check the name with `docker ps -a` or `roomyctl ls`"
    )]
    NotFound(String),

    /// An id prefix that matches several containers.
    #[error("{prefix:?} matches several containers ({}): give more of the id or the name", candidates.join(", "))]
    Ambiguous {
        /// What was asked for.
        prefix: String,
        /// Names of the matches.
        candidates: Vec<String>,
    },

    /// Not a container name or id: refused before anything is looked up.
    #[error(
        "{0:?} is not a container name or id: Docker names are letters, digits, '_', '.' and '-'"
    )]
    BadContainerName(String),

    /// A container on a storage driver this agent does not manage.
    #[error("container {container} uses the {driver} storage driver, and this agent serves dockerd's {backend} containers; Roomy grows devicemapper and overlay2 (on XFS with prjquota) containers")]
    WrongDriver {
        /// Container name.
        container: String,
        /// Its storage driver.
        driver: String,
        /// The driver this agent serves.
        backend: String,
    },

    /// A setup Roomy cannot grow containers on (a daemon without a thin
    /// pool, overlay2 without project quotas, the containerd image store).
    #[error("{0}")]
    Unsupported(String),

    /// An overlay2 container created without `--storage-opt size`: there
    /// is no limit to raise.
    #[error("container {container} was created without --storage-opt size, so it has no disk limit: it can already fill {backing} ({} free); to give it one, recreate it with --storage-opt size=SIZE", format_bytes(*free))]
    NoLimit {
        /// Container name.
        container: String,
        /// The backing filesystem's mount point.
        backing: String,
        /// Its free space.
        free: u64,
    },

    /// A size string that is not a size.
    #[error("{0}")]
    Size(#[from] SizeError),

    /// A size that is a number but not one the kernel can take.
    #[error("{0}")]
    InvalidSize(String),

    /// A request below the current size: Roomy only grows.
    #[error("container {container} is {} and Roomy only grows: ask for more than {}, e.g. +1G", format_bytes(*current), format_bytes(*current))]
    Shrink {
        /// Container name.
        container: String,
        /// Its current size.
        current: u64,
        /// What was asked for.
        requested: u64,
    },

    /// The pool could not back the growth with its safety margin left.
    #[error("pool {pool} has {} free of {}; growing {container} by {} would leave less than the {margin_percent}% safety margin: grow the pool first, or free space in it", format_bytes(*free), format_bytes(*total), format_bytes(*growth))]
    PoolTooFull {
        /// Pool name.
        pool: String,
        /// Container name.
        container: String,
        /// Free data bytes in the pool.
        free: u64,
        /// Pool data bytes in total.
        total: u64,
        /// Bytes the growth may need.
        growth: u64,
        /// The agent's margin, percent of the pool.
        margin_percent: u64,
    },

    /// The filesystem under a pool's backing file lacks the space.
    #[error("{file} can grow by {} at most (free space of its filesystem), the request needs {}: free space there or ask for less", format_bytes(*free), format_bytes(*growth))]
    BackingFull {
        /// The backing file.
        file: String,
        /// Free bytes under it.
        free: u64,
        /// Bytes the growth needs.
        growth: u64,
    },

    /// A pool request below the pool's size.
    #[error("the pool's {what} is {} and Roomy only grows: ask for more than {}", format_bytes(*current), format_bytes(*current))]
    PoolShrink {
        /// "data" or "metadata".
        what: String,
        /// Its current size.
        current: u64,
    },

    /// The pool is not in a state that takes writes.
    #[error("pool {pool} is {mode}: repair or grow the pool before growing containers on it")]
    PoolUnhealthy {
        /// Pool name.
        pool: String,
        /// Its mode word.
        mode: String,
    },

    /// The pool's metadata must be checked before it takes a new size: with
    /// `needs_check` set (or the pool failed) dm-thin ignores a grow, logs
    /// "unable to grow ... until repaired" and reports success.
    #[error("pool {pool} is {mode}: the kernel ignores a new size until its metadata is repaired; stop Docker, run thin_check (then thin_repair) on the pool's metadata as the README's \"A pool that needs a check\" shows, then grow it")]
    PoolNeedsRepair {
        /// Pool name.
        pool: String,
        /// Its mode word.
        mode: String,
    },

    /// A dm table Roomy refuses to rewrite.
    #[error("device {device} does not have the table Roomy expects ({why}); it was left as it is")]
    UnexpectedTable {
        /// Device name.
        device: String,
        /// What was unexpected.
        why: String,
    },

    /// The Docker daemon did not answer.
    #[error("docker: {0}: is dockerd running, and is --docker-host right?")]
    Docker(String),

    /// The Docker daemon answered, with an error.
    #[error("dockerd refused ({status}): {message}")]
    DockerRefused {
        /// HTTP status of dockerd's answer.
        status: u16,
        /// dockerd's message.
        message: String,
    },

    /// An XFS quota call failed.
    #[error("XFS project quota {op} on {path}: {detail}")]
    Quota {
        /// The operation (get, set, ...).
        op: &'static str,
        /// The filesystem or directory.
        path: String,
        /// What the kernel said.
        detail: String,
    },

    /// A device-mapper ioctl failed.
    #[error("device-mapper {op} on {device} failed: {detail}")]
    Kernel {
        /// The operation (load, resume, create, ...).
        op: &'static str,
        /// Device name.
        device: String,
        /// What the kernel said.
        detail: String,
    },

    /// Reading or growing a filesystem failed.
    #[error("filesystem on {device}: {detail}")]
    Filesystem {
        /// Device name.
        device: String,
        /// What failed.
        detail: String,
    },

    /// Docker's metadata file could not be read or written.
    #[error("docker metadata {path}: {detail}")]
    Metadata {
        /// Path of the file.
        path: String,
        /// What failed.
        detail: String,
    },

    /// An I/O error on one of the agent's own files.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },

    /// Anything else; a bug if seen.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    /// An I/O error with its path.
    pub fn io(
        what: &'static str,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        AgentError::Io {
            what,
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// A device-mapper error on a device.
    pub fn kernel(op: &'static str, device: &str, err: impl std::fmt::Display) -> Self {
        AgentError::Kernel {
            op,
            device: device.to_string(),
            detail: err.to_string(),
        }
    }

    /// A filesystem error on a device.
    pub fn fs(device: &str, detail: impl std::fmt::Display) -> Self {
        AgentError::Filesystem {
            device: device.to_string(),
            detail: detail.to_string(),
        }
    }
}

impl From<bollard::errors::Error> for AgentError {
    fn from(err: bollard::errors::Error) -> Self {
        match err {
            // dockerd is up and said no: not a reason to call it unreachable.
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => AgentError::DockerRefused {
                status: status_code,
                message,
            },
            other => AgentError::Docker(other.to_string()),
        }
    }
}

impl AgentError {
    /// The one place where agent errors become gRPC codes.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            AgentError::NotFound(_) => Code::NotFound,
            AgentError::Ambiguous { .. }
            | AgentError::BadContainerName(_)
            | AgentError::WrongDriver { .. }
            | AgentError::Size(_)
            | AgentError::InvalidSize(_)
            | AgentError::Shrink { .. }
            | AgentError::PoolShrink { .. } => Code::InvalidArgument,
            AgentError::PoolTooFull { .. }
            | AgentError::BackingFull { .. }
            | AgentError::PoolUnhealthy { .. }
            | AgentError::PoolNeedsRepair { .. }
            | AgentError::Unsupported(_)
            | AgentError::NoLimit { .. }
            | AgentError::UnexpectedTable { .. } => Code::FailedPrecondition,
            // Only this one tells a client "try again": nothing was done.
            AgentError::Docker(_) => Code::Unavailable,
            AgentError::DockerRefused { status: 404, .. } => Code::NotFound,
            // Conflict: e.g. the container is being removed.
            AgentError::DockerRefused { status: 409, .. } => Code::FailedPrecondition,
            AgentError::DockerRefused { .. } => Code::Internal,
            AgentError::Kernel { .. }
            | AgentError::Filesystem { .. }
            | AgentError::Metadata { .. }
            | AgentError::Quota { .. }
            | AgentError::Io { .. }
            | AgentError::Internal(_) => Code::Internal,
        }
    }
}

impl From<AgentError> for tonic::Status {
    fn from(err: AgentError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn refusals_map_to_the_codes_clients_act_on() {
        let cases = [
            (AgentError::NotFound("x".into()), Code::NotFound),
            (
                AgentError::Shrink {
                    container: "node".into(),
                    current: 4 << 30,
                    requested: 1 << 30,
                },
                Code::InvalidArgument,
            ),
            (
                AgentError::Size(SizeError::Unparsable("x".into())),
                Code::InvalidArgument,
            ),
            (
                AgentError::WrongDriver {
                    container: "c".into(),
                    driver: "btrfs".into(),
                    backend: "overlay2".into(),
                },
                Code::InvalidArgument,
            ),
            (
                AgentError::BadContainerName("a b".into()),
                Code::InvalidArgument,
            ),
            (
                AgentError::Unsupported("x".into()),
                Code::FailedPrecondition,
            ),
            (
                AgentError::NoLimit {
                    container: "c".into(),
                    backing: "/var/lib/docker".into(),
                    free: 1,
                },
                Code::FailedPrecondition,
            ),
            (
                AgentError::DockerRefused {
                    status: 500,
                    message: "boom".into(),
                },
                Code::Internal,
            ),
            (
                AgentError::DockerRefused {
                    status: 409,
                    message: "removal in progress".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                AgentError::PoolTooFull {
                    pool: "p".into(),
                    container: "c".into(),
                    free: 1,
                    total: 2,
                    growth: 3,
                    margin_percent: 10,
                },
                Code::FailedPrecondition,
            ),
            (
                AgentError::PoolNeedsRepair {
                    pool: "p".into(),
                    mode: "needs_check".into(),
                },
                Code::FailedPrecondition,
            ),
            (AgentError::Docker("down".into()), Code::Unavailable),
        ];
        for (err, code) in cases {
            assert_eq!(tonic::Status::from(err).code(), code);
        }
    }

    #[test]
    fn shrink_message_names_sizes_and_next_step() {
        let msg = AgentError::Shrink {
            container: "node".into(),
            current: 4 << 30,
            requested: 1 << 30,
        }
        .to_string();
        assert_eq!(
            msg,
            "container node is 4 GiB and Roomy only grows: ask for more than 4 GiB, e.g. +1G"
        );
    }
}
