//! The `gateway` binary: reads configuration, starts tracing, serves the invoke endpoint until
//! SIGTERM or Ctrl-C, then drains.

use clap::Parser;

fn main() {
    let flags = gateway::Flags::parse();
    let env = common::config::process_env();
    common::telemetry::init(&env, "info,lapin=warn");
    let cfg = match gateway::Config::from_env(&env, &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match common::config::runtime(cfg.threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&cfg.addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("gateway: cannot listen on {}: {e}", cfg.addr);
                std::process::exit(2);
            }
        };
        if let Err(e) = gateway::run(cfg, listener, common::shutdown::signal()).await {
            tracing::error!(error = %format!("{e:#}"), "gateway failed");
            eprintln!("gateway: {e:#}");
            std::process::exit(1);
        }
    });
}
