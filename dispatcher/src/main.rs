//! The `dispatcher` binary: reads configuration, starts tracing, runs until SIGTERM.

use clap::Parser;

fn main() {
    let flags = dispatcher::Flags::parse();
    let env = common::config::process_env();
    common::telemetry::init(&env, "info,lapin=warn,zookeeper=warn");
    let cfg = match dispatcher::Config::from_env(&env, &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dispatcher: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match common::config::runtime(cfg.threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dispatcher: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&cfg.addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("dispatcher: cannot listen on {}: {e}", cfg.addr);
                std::process::exit(2);
            }
        };
        if let Err(e) = dispatcher::run(cfg, listener, common::shutdown::signal()).await {
            tracing::error!(error = %format!("{e:#}"), "dispatcher failed");
            eprintln!("dispatcher: {e:#}");
            std::process::exit(1);
        }
    });
}
