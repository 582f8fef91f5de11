//! roomy-agent: the per-host service that inspects Docker containers'
//! storage and grows it online. See docs/ARCHITECTURE.md for the map.
#![warn(missing_docs)]

pub mod backend;
pub mod devmapper;
pub mod docker;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod fs;
pub mod guard;
pub mod journal;
pub mod metadata;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod resize;
pub mod service;
pub mod sim;
pub mod sync;
pub mod table;
pub mod thin;

pub use backend::StorageBackend;
pub use error::AgentError;
pub use service::AgentService;
pub use sim::SimBackend;
pub use thin::{ThinBackend, ThinConfig};
