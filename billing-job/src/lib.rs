//! The batch billing job: turns finished, unbilled runs into one bill per user, crash-safe and
//! idempotent (`billing`). The money itself — prices, credit, top-ups, bill payments — is the
//! `accounts` crate's.

pub mod billing;
pub mod config;
pub mod lease;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use billing::{bill_once, BillOptions, Progress, Summary, DRAFTS, LEASE_NAME};
pub use config::{Config, Flags};
pub use lease::LeaseHeld;

/// What one pass of [`run`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassOutcome {
    Billed(Summary),
    /// Another job holds the lease; nothing was done.
    Skipped(String),
}

/// Runs one pass, or one every `cfg.every` until `shutdown` resolves, calling `report` after
/// each pass. Progress goes to stderr every `progress_every` runs. A shutdown during a pass lets
/// it finish the bills it has started.
pub async fn run(
    cfg: Config,
    db: mongodb::Database,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    mut report: impl FnMut(&PassOutcome),
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let (stopped_tx, mut stopped_rx) = tokio::sync::watch::channel(false);
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.store(true, Ordering::SeqCst);
            let _ = stopped_tx.send(true);
        });
    }
    let mut opts = cfg.options.clone();
    opts.stop = Some(stop.clone());
    opts.progress = Some(Arc::new(|p: &Progress| {
        let secs = p.elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "billing-job: {} runs into {} bills so far, total {} micros ({:.0} runs/s)",
            p.runs,
            p.bills,
            p.total_micros,
            p.runs as f64 / secs
        );
    }));
    loop {
        let t0 = Instant::now();
        match bill_once(&db, &opts).await {
            Ok(s) => {
                if opts.progress_every > 0 && s.runs >= opts.progress_every {
                    let secs = t0.elapsed().as_secs_f64();
                    eprintln!(
                        "billing-job: pass took {secs:.1} s ({:.0} runs/s), peak RSS {} MB",
                        s.runs as f64 / secs.max(1e-9),
                        peak_rss_kb().unwrap_or(0) / 1024
                    );
                }
                report(&PassOutcome::Billed(s));
            }
            Err(e) => match e.downcast_ref::<LeaseHeld>() {
                Some(h) => report(&PassOutcome::Skipped(h.to_string())),
                None if cfg.every.is_some() => {
                    tracing::error!(error = %format!("{e:#}"), "billing pass failed; trying again next time");
                    eprintln!("billing-job: pass failed: {e:#}");
                }
                None => return Err(e),
            },
        }
        let Some(every) = cfg.every else {
            return Ok(());
        };
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped_rx.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// This process's peak resident memory (`VmHWM`), in kB.
pub fn peak_rss_kb() -> Option<u64> {
    proc_status_kb("self", "VmHWM:")
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn proc_status_kb(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
