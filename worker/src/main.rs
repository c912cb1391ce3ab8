//! The `worker` binary: reads configuration, starts tracing, runs the worker until SIGTERM.

use clap::Parser;

fn main() {
    let flags = worker::Flags::parse();
    let env = common::config::process_env();
    common::telemetry::init(&env, "info,lapin=warn");
    let cfg = match worker::Config::from_env(&env, &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match common::config::runtime(cfg.threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("worker: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&cfg.addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("worker: cannot listen on {}: {e}", cfg.addr);
                std::process::exit(2);
            }
        };
        if let Err(e) = worker::run(cfg, listener, common::shutdown::signal()).await {
            tracing::error!(error = %format!("{e:#}"), "worker failed");
            eprintln!("worker: {e:#}");
            std::process::exit(1);
        }
    });
}
