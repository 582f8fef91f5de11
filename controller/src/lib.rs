//! roomy-controller: one place for the fleet. Knows the agents, fans
//! requests out, routes `HOST/CONTAINER` targets, authorizes by role,
//! keeps an audit log, and distributes policies to the agents that enforce
//! them (collecting their events). Storage work is the agents'.
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod distribute;
pub mod error;
pub mod inventory;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod reopen;
pub mod retention;
pub mod roles;
pub mod service;
pub mod store;
pub mod webhook;

pub use error::ControllerError;
