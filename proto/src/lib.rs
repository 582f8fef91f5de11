//! Roomy's contract (`roomy.proto`, package `roomy.v1`) and the small
//! vocabulary that comes with it: sizes and `HOST/CONTAINER` targets as
//! people write them. What the binaries share beyond the contract has its
//! own crates: `roomy-policy` (the decision function), `roomy-tls` and
//! `roomy-certs` (mutual TLS; issuing), `roomy-metrics`, `roomy-daemon`.
#![warn(missing_docs)]

pub mod inventory;
pub mod size;
pub mod target;

/// Generated types and services of `roomy.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("roomy.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("roomy_descriptor");
}

pub use size::{format_bytes, ByteSize, SizeError, SizeRequest};

/// The largest response a Roomy client decodes. tonic's default, 4 MiB,
/// is about 16,000 containers in one list: a fleet `ls` of 10,000 hosts
/// with 10 containers each is 26 MB, and was refused with "decoded message
/// length too large". 256 MiB holds about a million rows.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
pub use target::{valid_host_name, Target, TargetError};

impl v1::Health {
    /// The word users see in tables and JSON: `ok`, `pending`, `at_risk`.
    pub fn word(self) -> &'static str {
        match self {
            v1::Health::Unspecified => "unknown",
            v1::Health::Ok => "ok",
            v1::Health::Pending => "pending",
            v1::Health::AtRisk => "at_risk",
            v1::Health::Unmanaged => "unmanaged",
        }
    }
}

impl v1::EventKind {
    /// The word events, metrics and webhooks use.
    pub fn word(self) -> &'static str {
        match self {
            v1::EventKind::Unspecified => "unknown",
            v1::EventKind::Grown => "grown",
            v1::EventKind::WouldGrow => "would_grow",
            v1::EventKind::Skipped => "skipped",
            v1::EventKind::Failed => "failed",
            v1::EventKind::Health => "health",
        }
    }
}

impl v1::Policy {
    /// The policy's kind, container when unspecified (or unknown to this
    /// build).
    pub fn target_kind(&self) -> v1::PolicyKind {
        match v1::PolicyKind::try_from(self.kind) {
            Ok(v1::PolicyKind::Pool) => v1::PolicyKind::Pool,
            _ => v1::PolicyKind::Container,
        }
    }
}

impl v1::ContainerStorage {
    /// Attaches devicemapper's detail, and copies it into the deprecated flat
    /// fields that clients of earlier releases read (the one place that
    /// writes them).
    #[allow(deprecated)]
    pub fn with_devicemapper(mut self, dm: v1::DevicemapperStorage) -> Self {
        self.device_name = dm.device_name.clone();
        self.device_id = dm.device_id;
        self.pool_name = dm.pool_name.clone();
        self.device_active = dm.device_active;
        self.table_size_bytes = dm.table_size_bytes;
        self.docker_size_bytes = dm.docker_size_bytes;
        self.persisted_size_bytes = dm.persisted_size_bytes;
        self.guarded = dm.guarded;
        self.detail = Some(v1::container_storage::Detail::Devicemapper(dm));
        self
    }

    /// devicemapper's detail, when the row is one of its containers.
    pub fn devicemapper(&self) -> Option<&v1::DevicemapperStorage> {
        match &self.detail {
            Some(v1::container_storage::Detail::Devicemapper(d)) => Some(d),
            _ => None,
        }
    }

    /// overlay2's detail, when the row is one of its containers.
    pub fn overlay2(&self) -> Option<&v1::Overlay2Storage> {
        match &self.detail {
            Some(v1::container_storage::Detail::Overlay2(d)) => Some(d),
            _ => None,
        }
    }

    /// What a grow starts from and caps count: the largest size the
    /// container has anywhere (the filesystem or an overlay2 project's
    /// limit; for devicemapper also the table, dockerd and Docker's metadata,
    /// so a grow still pending counts).
    pub fn size_bytes(&self) -> u64 {
        let dm = self.devicemapper().map_or(0, |d| {
            d.table_size_bytes
                .max(d.docker_size_bytes)
                .max(d.persisted_size_bytes)
        });
        dm.max(self.fs_size_bytes)
    }
}
