//! Roomy's contract (`roomy.proto`, package `roomy.v1`) and the small
//! vocabulary that comes with it: sizes and `HOST/CONTAINER` targets as
//! people write them. What the binaries share beyond the contract has its
//! own crates: `roomy-policy` (the decision function), `roomy-tls` and
//! `roomy-certs` (mutual TLS; issuing), `roomy-metrics`, `roomy-daemon`.
#![warn(missing_docs)]

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
