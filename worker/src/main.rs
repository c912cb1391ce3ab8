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
    let addr = cfg.addr.clone();
    common::service::serve("worker", cfg.threads, &addr, |listener| {
        worker::run(cfg, listener, common::shutdown::signal())
    });
}
