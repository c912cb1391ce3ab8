//! Tracing setup for binaries: `RUST_LOG` filter, compact human output or JSON (`LOG_FORMAT=json`).

use crate::config::Env;

/// Installs the global subscriber. Call once from `main`.
pub fn init(env: &Env, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(
        env.get("RUST_LOG")
            .map(String::as_str)
            .unwrap_or(default_filter),
    )
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = builder.try_init();
}
