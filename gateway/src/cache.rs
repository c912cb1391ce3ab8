//! A small bounded cache whose entries expire after a per-entry TTL, with single-flight loads
//! (concurrent misses of one key share one database round trip) and stale-while-revalidate: an
//! entry past its TTL but within the cache's grace is served as is while one background load
//! refreshes it, so a hot key never makes callers wait for the database. Time is tokio's clock,
//! so tests can pause it.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::time::Instant;

type Load<V> = Shared<BoxFuture<'static, Result<(V, Duration), String>>>;

enum Slot<V> {
    Ready {
        /// Fresh until then.
        until: Instant,
        value: V,
        /// A background refresh started once the entry went stale.
        refreshing: Option<Load<V>>,
    },
    Loading(Load<V>),
}

/// Entries keyed by `K`, each fresh for the TTL its loader chose and served stale for `grace`
/// more while it is reloaded (least recently used entries are dropped beyond the capacity).
/// A value is therefore never older than TTL + grace.
pub struct TtlCache<K: Hash + Eq, V> {
    slots: Mutex<lru::LruCache<K, Slot<V>>>,
    grace: Duration,
}

impl<K: Hash + Eq, V> std::fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TtlCache")
    }
}

impl<K, V> TtlCache<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone + Send + Sync + 'static,
{
    /// A cache without a stale grace: expired entries are reloaded before they are served.
    pub fn new(capacity: usize) -> Self {
        Self::with_grace(capacity, Duration::ZERO)
    }

    /// A cache that serves an expired entry for up to `grace` while it reloads it.
    pub fn with_grace(capacity: usize, grace: Duration) -> Self {
        TtlCache {
            slots: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
            )),
            grace,
        }
    }

    /// The cached value of `key` if it is fresh, or stale within the grace (then one
    /// background load refreshes it); else runs `load` (once for all concurrent callers), which
    /// returns the value and how long it stays fresh. Failed loads are not cached: a failed
    /// refresh leaves the stale value until the grace ends.
    pub async fn get_or_load<F, Fut>(&self, key: &K, load: F) -> Result<V, String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(V, Duration), String>> + Send + 'static,
    {
        let now = Instant::now();
        let fut = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            // A finished background refresh replaces the stale value.
            if let Some(Slot::Ready { refreshing, .. }) = slots.get_mut(key) {
                if let Some(done) = refreshing.as_ref().and_then(|r| r.peek().cloned()) {
                    *refreshing = None;
                    if let Ok((value, ttl)) = done {
                        slots.put(
                            key.clone(),
                            Slot::Ready {
                                until: now + ttl,
                                value,
                                refreshing: None,
                            },
                        );
                    }
                }
            }
            match slots.get_mut(key) {
                Some(Slot::Ready { until, value, .. }) if now < *until => return Ok(value.clone()),
                Some(Slot::Ready {
                    until,
                    value,
                    refreshing,
                }) if now < *until + self.grace => {
                    if refreshing.is_none() {
                        let f = load().boxed().shared();
                        // Driven in the background; its result is picked up by a later call.
                        tokio::spawn(f.clone());
                        *refreshing = Some(f);
                    }
                    return Ok(value.clone());
                }
                Some(Slot::Loading(f)) => f.clone(),
                Some(Slot::Ready {
                    refreshing: Some(f),
                    ..
                }) => {
                    // Too stale to serve, but a refresh is already on its way: share it.
                    let f = f.clone();
                    slots.put(key.clone(), Slot::Loading(f.clone()));
                    f
                }
                _ => {
                    let f = load().boxed().shared();
                    slots.put(key.clone(), Slot::Loading(f.clone()));
                    f
                }
            }
        };
        let res = fut.clone().await;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let ours = matches!(slots.peek(key), Some(Slot::Loading(f)) if f.ptr_eq(&fut));
        if ours {
            match &res {
                Ok((value, ttl)) => {
                    slots.put(
                        key.clone(),
                        Slot::Ready {
                            until: Instant::now() + *ttl,
                            value: value.clone(),
                            refreshing: None,
                        },
                    );
                }
                Err(_) => {
                    slots.pop(key);
                }
            }
        }
        res.map(|(v, _)| v)
    }

    /// The value of `key` if it is cached and fresh (no load, no change of LRU order).
    pub fn get_fresh(&self, key: &K) -> Option<V> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.peek(key) {
            Some(Slot::Ready { until, value, .. }) if Instant::now() < *until => {
                Some(value.clone())
            }
            _ => None,
        }
    }

    /// Caches `value` for `key`, fresh for `ttl`.
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).put(
            key,
            Slot::Ready {
                until: Instant::now() + ttl,
                value,
                refreshing: None,
            },
        );
    }

    /// Forgets `key`.
    pub fn invalidate(&self, key: &K) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop(key);
    }

    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    async fn get(
        c: &TtlCache<&'static str, Option<u32>>,
        loads: &Arc<AtomicUsize>,
        value: Option<u32>,
    ) -> Option<u32> {
        let loads = loads.clone();
        c.get_or_load(&"k", move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            // Positive entries live 3 s, negative ones 1 s.
            let ttl = if value.is_some() { 3 } else { 1 };
            Ok((value, Duration::from_secs(ttl)))
        })
        .await
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let c = TtlCache::new(10);
        let loads = Arc::new(AtomicUsize::new(0));
        assert_eq!(get(&c, &loads, Some(1)).await, Some(1));
        // Cached: a changed source is not seen yet.
        assert_eq!(get(&c, &loads, None).await, Some(1));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(3001)).await;
        assert_eq!(get(&c, &loads, None).await, None);
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        // The negative entry lives 1 s.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(get(&c, &loads, Some(2)).await, None);
        tokio::time::advance(Duration::from_millis(501)).await;
        assert_eq!(get(&c, &loads, Some(2)).await, Some(2));
        assert_eq!(loads.load(Ordering::SeqCst), 3);
        c.invalidate(&"k");
        assert_eq!(get(&c, &loads, Some(4)).await, Some(4));
        c.insert("k", Some(9), Duration::from_secs(1));
        assert_eq!(c.get_fresh(&"k"), Some(Some(9)));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(c.get_fresh(&"k"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_load_and_errors_are_not_cached() {
        let c: Arc<TtlCache<u8, u32>> = Arc::new(TtlCache::new(10));
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (c, loads) = (c.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_load(&1, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok((7, Duration::from_secs(1)))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);

        let r = c
            .get_or_load(&2, || async { Err("db down".to_owned()) })
            .await;
        assert_eq!(r, Err("db down".to_owned()));
        let r = c
            .get_or_load(&2, || async { Ok((5, Duration::from_secs(1))) })
            .await;
        assert_eq!(r, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_entries_are_served_while_one_background_load_refreshes_them() {
        let c: TtlCache<u8, u32> = TtlCache::with_grace(10, Duration::from_secs(3));
        let loads = Arc::new(AtomicUsize::new(0));
        let get = |value: u32| {
            let loads = loads.clone();
            c.get_or_load(&1, move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok((value, Duration::from_secs(2)))
            })
        };
        assert_eq!(get(1).await, Ok(1));
        // Stale: served at once, and one refresh starts however many callers come.
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(get(2).await, Ok(1));
        assert_eq!(get(3).await, Ok(1));
        tokio::task::yield_now().await;
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        // The refresh lands; the next call sees it, fresh again.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(get(4).await, Ok(2));
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        // Past TTL + grace with no refresh: the caller waits for a load.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(get(5).await, Ok(5));
        assert_eq!(loads.load(Ordering::SeqCst), 3);
        // A failed refresh keeps the stale value until the grace ends.
        tokio::time::advance(Duration::from_millis(2100)).await;
        let r = c
            .get_or_load(&1, || async {
                Err::<(u32, Duration), _>("db down".to_owned())
            })
            .await;
        assert_eq!(r, Ok(5));
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(get(6).await, Ok(6));
    }
}
