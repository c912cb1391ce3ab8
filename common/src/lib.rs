//! Plumbing every Color FaaS service shares: configuration from an injected environment map,
//! tracing, shutdown signals, the binaries' runtime and serve loop, MongoDB and RabbitMQ
//! connections and topology, the code store, the batched run-record writer (which settles
//! finished runs' money through `accounts`), the JSON error body and Prometheus text.

pub mod amqp;
pub mod codestore;
pub mod config;
pub mod error_body;
pub mod fnmetrics;
pub mod metrics;
pub mod mongo;
pub mod ops;
pub mod runstore;
pub mod schedule;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod wire;
