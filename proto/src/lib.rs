//! Roomy's contract (`roomy.proto`, package `roomy.v1`) and the small
//! vocabulary that every Roomy binary shares: sizes and `HOST/CONTAINER`
//! targets as people write them, and mutual TLS.
#![warn(missing_docs)]

pub mod metrics;
pub mod policy;
pub mod signal;
pub mod size;
pub mod target;
pub mod tls;

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
