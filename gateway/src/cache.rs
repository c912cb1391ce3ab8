//! A small bounded cache whose entries expire after a per-entry TTL, with single-flight loads:
//! concurrent misses of one key share one database round trip. Time is tokio's clock, so tests
//! can pause it.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::time::Instant;

type Load<V> = Shared<BoxFuture<'static, Result<(V, Duration), String>>>;

enum Slot<V> {
    Ready { until: Instant, value: V },
    Loading(Load<V>),
}

/// Entries keyed by `K`, each kept for the TTL its loader chose (least recently used entries
/// are dropped beyond the capacity).
pub struct TtlCache<K: Hash + Eq, V> {
    slots: Mutex<lru::LruCache<K, Slot<V>>>,
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
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            slots: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
            )),
        }
    }

    /// The cached value of `key` if it has not expired; else runs `load` (once for all
    /// concurrent callers), which returns the value and how long to keep it. Failed loads are
    /// not cached.
    pub async fn get_or_load<F, Fut>(&self, key: &K, load: F) -> Result<V, String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(V, Duration), String>> + Send + 'static,
    {
        let fut = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(key) {
                Some(Slot::Ready { until, value }) if Instant::now() < *until => {
                    return Ok(value.clone())
                }
                Some(Slot::Loading(f)) => f.clone(),
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
            // Positive entries live 3 s, negative ones 1 s (like API keys).
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
}
