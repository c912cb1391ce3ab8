//! The Color FaaS SDK: the `colorfaas` CLI (log in, scaffold, run locally in the runtime image,
//! deploy, invoke, read runs and logs, manage keys and bills) and its function templates.

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod ignore;
pub mod local;
pub mod manifest;
pub mod output;
pub mod package;
pub mod templates;

pub use error::{exit, CliError};

/// Runs the CLI with the process's arguments and environment; returns the exit code.
pub fn main() -> i32 {
    cli::run(std::env::args_os().collect(), std::env::vars().collect())
}
