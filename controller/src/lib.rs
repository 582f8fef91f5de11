//! roomy-controller: one place for the fleet. Knows the agents, fans
//! requests out, routes `HOST/CONTAINER` targets, authorizes by role and
//! keeps an audit log. Storage work is the agents'.
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod registry;
pub mod roles;
pub mod service;
pub mod store;

pub use error::ControllerError;
