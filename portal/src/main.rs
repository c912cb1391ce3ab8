//! The `portal` binary: reads configuration, starts tracing, serves the pages and the JSON API
//! until SIGTERM or Ctrl-C, then drains.

use clap::Parser;

#[tokio::main]
async fn main() {
    let flags = portal::Flags::parse();
    let env = common::config::process_env();
    common::telemetry::init(&env, "info,lapin=warn");
    let cfg = match portal::Config::from_env(&env, &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portal: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&cfg.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("portal: cannot listen on {}: {e}", cfg.addr);
            std::process::exit(2);
        }
    };
    if let Err(e) = portal::run(cfg, listener, common::shutdown::signal()).await {
        tracing::error!(error = %format!("{e:#}"), "portal failed");
        eprintln!("portal: {e:#}");
        std::process::exit(1);
    }
}
