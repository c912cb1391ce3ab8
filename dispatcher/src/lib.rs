//! The dispatcher: a ZooKeeper-elected leader that schedules invocations across users with DRF
//! and routes them to per-worker queues.

pub mod config;
pub mod drf;
pub mod election;
pub mod limits;
pub mod schedules;
pub mod service;

pub use config::{Config, Flags};
pub use service::run;
