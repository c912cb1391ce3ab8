//! The `portal` binary: reads configuration, starts tracing, serves the pages and the JSON API
//! until SIGTERM or Ctrl-C, then drains.

use clap::Parser;

fn main() {
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
    let addr = cfg.addr.clone();
    common::service::serve(
        "portal",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        &addr,
        |listener| portal::run(cfg, listener, common::shutdown::signal()),
    );
}
