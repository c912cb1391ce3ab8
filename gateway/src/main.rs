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
    let addr = cfg.addr.clone();
    common::service::serve("gateway", cfg.threads, &addr, |listener| {
        gateway::run(cfg, listener, common::shutdown::signal())
    });
}
