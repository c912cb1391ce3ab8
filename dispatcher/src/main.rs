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
    let addr = cfg.addr.clone();
    common::service::serve("dispatcher", cfg.threads, &addr, |listener| {
        dispatcher::run(cfg, listener, common::shutdown::signal())
    });
}
