//! roomy-agent: the per-host service that inspects Docker containers'
//! storage and grows it online. See docs/ARCHITECTURE.md for the map:
//! `backend/` holds one folder per storage backend behind one trait,
//! `sys/` the kernel doors they share; the policy engine, event buffer and
//! Sync stream sit beside them and reach storage only through the trait.
#![warn(missing_docs)]

pub mod backend;
pub mod beat;
pub mod docker;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod inventory;
pub mod journal;
pub mod metrics;
pub mod policy;
pub mod service;
pub mod sync;
pub mod sys;

pub use backend::devicemapper::{ThinBackend, ThinConfig};
pub use backend::overlay2::{Overlay2Backend, Overlay2Config};
pub use backend::sim::SimBackend;
pub use backend::StorageBackend;
pub use error::AgentError;
pub use service::AgentService;
