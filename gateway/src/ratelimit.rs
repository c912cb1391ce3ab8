//! Per-API-key rate limiting with `governor` (GCRA): a sustained rate and a burst, on tokio's
//! clock so tests can pause time.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// Tokio's (pausable) monotonic clock, as time elapsed since the limiter was made.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A keyed limiter: each API key id has its own bucket.
pub struct KeyLimiter {
    limiter: RateLimiter<String, DashMapStateStore<String>, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
}

impl std::fmt::Debug for KeyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLimiter")
    }
}

impl KeyLimiter {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> KeyLimiter {
        let clock = TokioClock::default();
        let quota = Quota::per_second(per_second).allow_burst(burst);
        KeyLimiter {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes one request from `key`'s bucket, or says how many whole seconds (at least 1) to
    /// wait: the `Retry-After` value.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                retry_after_secs(wait)
            })
    }

    /// Drops the state of keys whose buckets are full again (call now and then).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }
}

/// A wait rounded up to whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_sustained_rate_per_key() {
        // 2 per second, bursts of 3.
        let l = KeyLimiter::new(nz(2), nz(3));
        for _ in 0..3 {
            assert_eq!(l.check("a"), Ok(()));
        }
        assert_eq!(l.check("a"), Err(1));
        // Another key has its own bucket.
        assert_eq!(l.check("b"), Ok(()));
        // One cell comes back every 500 ms.
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(l.check("a").is_err());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(l.check("a"), Ok(()));
        assert!(l.check("a").is_err());
        // After a full replenish the whole burst is available again, and idle keys are pruned.
        tokio::time::advance(Duration::from_secs(2)).await;
        l.prune();
        assert_eq!(l.tracked_keys(), 0);
        for _ in 0..3 {
            assert_eq!(l.check("a"), Ok(()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_rates_ask_for_a_longer_wait() {
        // One request every 5 s, no burst.
        let l = KeyLimiter::new(nz(1), nz(1));
        let l = KeyLimiter {
            limiter: RateLimiter::dashmap_with_clock(
                Quota::with_period(Duration::from_secs(5)).unwrap(),
                l.clock.clone(),
            ),
            clock: l.clock,
        };
        assert_eq!(l.check("k"), Ok(()));
        assert_eq!(l.check("k"), Err(5));
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(l.check("k"), Err(3));
    }
}
