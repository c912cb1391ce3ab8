//! The worker's housekeeping: removes idle containers past their TTL, and refreshes prices now
//! and then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accounts::Prices;
use tokio::sync::watch;

use crate::Inner;

/// Runs until `stop`.
pub(crate) async fn reaper_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let period = (inner.cfg.idle_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    let mut last_prices = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = common::shutdown::until_set(&mut stop) => return,
        }
        let expired = inner
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(Instant::now(), inner.cfg.idle_ttl);
        if !expired.is_empty() {
            inner.pool_changed.notify_waiters();
        }
        for c in expired {
            tracing::debug!(
                container = c.name,
                "removing an idle container past its TTL"
            );
            inner.containers.dispose(c).await;
        }
        if last_prices.elapsed() > Duration::from_secs(30) {
            last_prices = Instant::now();
            match Prices::load_or_seed(&inner.db).await {
                Ok(p) => *inner.prices.lock().unwrap_or_else(|e| e.into_inner()) = p,
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "refreshing prices failed"),
            }
        }
    }
}
