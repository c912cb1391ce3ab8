//! The `billing-job` binary: one billing pass (or one every `--every`), printing
//! `billed N runs into M bills, total X micros`; exits 0, or 2 on bad configuration.

use clap::Parser;

#[tokio::main]
async fn main() {
    let flags = billing_job::Flags::parse();
    let env = common::config::process_env();
    common::telemetry::init(&env, "warn");
    let cfg = match billing_job::Config::from_env(&env, &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("billing-job: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let db = match common::mongo::connect(&cfg.mongodb_uri, &cfg.mongodb_db).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("billing-job: bad configuration: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = common::mongo::ensure_indexes(&db).await {
        eprintln!("billing-job: {e:#}");
        std::process::exit(1);
    }
    let report = |o: &billing_job::PassOutcome| match o {
        billing_job::PassOutcome::Billed(s) => println!("{s}"),
        billing_job::PassOutcome::Skipped(why) => println!("{why}; nothing billed"),
    };
    if let Err(e) = billing_job::run(cfg, db, common::shutdown::signal(), report).await {
        tracing::error!(error = %format!("{e:#}"), "billing failed");
        eprintln!("billing-job: {e:#}");
        std::process::exit(1);
    }
    // Everything is stored and the lease released: exit now rather than wait for the driver's
    // background tasks to wind down.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}
