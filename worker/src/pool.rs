//! The warm-container pool: idle containers in an LRU (`lru` crate) keyed by function + version,
//! and a memory budget covering every container the worker has (idle, busy, or starting).
//! Spare containers (started before any function claimed them) are idle entries under their
//! own key, so they share the budget, the LRU and the idle TTL with warm ones.
//! Pure bookkeeping, no I/O: the caller starts and removes the containers this hands out or
//! evicts.

use std::time::{Duration, Instant};

use lru::LruCache;

/// An idle container as the pool sees it.
#[derive(Debug)]
struct Idle<T> {
    item: T,
    memory_mb: u64,
    idle_since: Instant,
}

/// What `try_acquire` grants.
#[derive(Debug)]
pub enum Grant<T> {
    /// A warm container of the function: use it, then `release` or `discard` it.
    Warm(T),
    /// A spare container of the function's runtime and size: give it the function, then
    /// `release` or `discard` it.
    Spare(T),
    /// Room (already reserved) to start a new container; the `evicted` idle containers must be
    /// removed by the caller. Later `release` or `discard` the new container.
    Cold { evicted: Vec<T> },
}

/// The pool's state. Wrap it in a mutex; it never blocks.
#[derive(Debug)]
pub struct WarmPool<T> {
    idle: LruCache<String, Vec<Idle<T>>>,
    capacity_mb: u64,
    /// Memory of every container that exists or is being started.
    used_mb: u64,
    /// Memory of the idle containers (part of `used_mb`).
    idle_mb: u64,
    idle_count: usize,
}

impl<T> WarmPool<T> {
    pub fn new(capacity_mb: u64) -> Self {
        WarmPool {
            idle: LruCache::unbounded(),
            capacity_mb,
            used_mb: 0,
            idle_mb: 0,
            idle_count: 0,
        }
    }

    pub fn used_mb(&self) -> u64 {
        self.used_mb
    }

    pub fn idle_count(&self) -> usize {
        self.idle_count
    }

    /// Keys that have at least one idle container, most recently used first.
    pub fn warm_keys(&self) -> Vec<String> {
        self.idle.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Idle containers under `key`.
    pub fn count(&self, key: &str) -> usize {
        self.idle.peek(key).map_or(0, Vec::len)
    }

    /// A warm container for `key`, else a spare under `spare_key`, else room for a new one of
    /// `memory_mb` (evicting least recently used idle containers as needed), else `None`: busy
    /// containers hold the memory, so wait for a `release` or `discard` and try again.
    pub fn try_acquire(
        &mut self,
        key: &str,
        spare_key: Option<&str>,
        memory_mb: u64,
    ) -> Option<Grant<T>> {
        if let Some(item) = self.take_idle(key) {
            return Some(Grant::Warm(item));
        }
        if let Some(item) = spare_key.and_then(|k| self.take_idle(k)) {
            return Some(Grant::Spare(item));
        }
        let busy_mb = self.used_mb - self.idle_mb;
        if busy_mb + memory_mb > self.capacity_mb {
            return None;
        }
        let mut evicted = Vec::new();
        while self.used_mb + memory_mb > self.capacity_mb {
            let victim = self
                .pop_least_recent()
                .expect("idle memory covers the shortfall");
            self.used_mb -= victim.memory_mb;
            evicted.push(victim.item);
        }
        self.used_mb += memory_mb;
        Some(Grant::Cold { evicted })
    }

    /// Reserves `memory_mb` for a new container only if it fits without evicting anything
    /// (spares never push out warm containers). Later `release` or `discard` it.
    pub fn try_reserve(&mut self, memory_mb: u64) -> bool {
        if self.used_mb + memory_mb > self.capacity_mb {
            return false;
        }
        self.used_mb += memory_mb;
        true
    }

    /// The most recently released idle container under `key` (it is the hottest).
    fn take_idle(&mut self, key: &str) -> Option<T> {
        let list = self.idle.get_mut(key)?;
        let idle = list.pop()?;
        if list.is_empty() {
            self.idle.pop(key);
        }
        self.idle_count -= 1;
        self.idle_mb -= idle.memory_mb;
        Some(idle.item)
    }

    /// Removes the least recently used idle container (the oldest one of the least recently
    /// used function).
    fn pop_least_recent(&mut self) -> Option<Idle<T>> {
        let key = self.idle.peek_lru()?.0.clone();
        let list = self.idle.peek_mut(&key)?;
        let victim = list.remove(0);
        if list.is_empty() {
            self.idle.pop(&key);
        }
        self.idle_count -= 1;
        self.idle_mb -= victim.memory_mb;
        Some(victim)
    }

    /// Returns a healthy container to the pool after a run; it becomes the most recent.
    pub fn release(&mut self, key: &str, item: T, memory_mb: u64, now: Instant) {
        let idle = Idle {
            item,
            memory_mb,
            idle_since: now,
        };
        match self.idle.get_mut(key) {
            Some(list) => list.push(idle),
            None => {
                self.idle.push(key.to_owned(), vec![idle]);
            }
        }
        self.idle_count += 1;
        self.idle_mb += memory_mb;
    }

    /// Takes out the idle container `pred` picks (e.g. one that died while idle) and its key, as
    /// if acquired: its memory stays reserved until `discard`.
    pub fn take_where(&mut self, pred: impl Fn(&T) -> bool) -> Option<(String, T)> {
        let (key, at) = self.idle.iter().find_map(|(k, list)| {
            list.iter()
                .position(|i| pred(&i.item))
                .map(|at| (k.clone(), at))
        })?;
        let list = self.idle.peek_mut(&key)?;
        let idle = list.remove(at);
        if list.is_empty() {
            self.idle.pop(&key);
        }
        self.idle_count -= 1;
        self.idle_mb -= idle.memory_mb;
        Some((key, idle.item))
    }

    /// Forgets a container that is gone or being removed (crashed, timed out, failed to start).
    pub fn discard(&mut self, memory_mb: u64) {
        self.used_mb = self.used_mb.saturating_sub(memory_mb);
    }

    /// Takes out the idle containers unused for `ttl` or longer.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<T> {
        let mut out = Vec::new();
        let keys: Vec<String> = self.idle.iter().map(|(k, _)| k.clone()).collect();
        for key in keys {
            let Some(list) = self.idle.peek_mut(&key) else {
                continue;
            };
            let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|i| now.duration_since(i.idle_since) >= ttl);
            *list = keep;
            if list.is_empty() {
                self.idle.pop(&key);
            }
            for i in old {
                self.idle_count -= 1;
                self.idle_mb -= i.memory_mb;
                self.used_mb -= i.memory_mb;
                out.push(i.item);
            }
        }
        out
    }

    /// Takes out every idle container (shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(i) = self.pop_least_recent() {
            self.used_mb -= i.memory_mb;
            out.push(i.item);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warm(p: &mut WarmPool<&'static str>, key: &str, mb: u64) -> &'static str {
        match p.try_acquire(key, None, mb) {
            Some(Grant::Warm(i)) => i,
            other => panic!("expected warm, got {other:?}"),
        }
    }

    fn cold(p: &mut WarmPool<&'static str>, key: &str, mb: u64) -> Vec<&'static str> {
        match p.try_acquire(key, None, mb) {
            Some(Grant::Cold { evicted }) => evicted,
            other => panic!("expected cold, got {other:?}"),
        }
    }

    #[test]
    fn second_call_is_warm() {
        let mut p = WarmPool::new(512);
        let t = Instant::now();
        assert!(cold(&mut p, "f@1", 128).is_empty());
        p.release("f@1", "c1", 128, t);
        assert_eq!(warm(&mut p, "f@1", 128), "c1");
        assert_eq!(p.used_mb(), 128);
        assert!(
            cold(&mut p, "f@2", 128).is_empty(),
            "a new version is a new key"
        );
    }

    #[test]
    fn evicts_least_recently_used_function_first() {
        let mut p = WarmPool::new(384);
        let t = Instant::now();
        for (k, c) in [("a@1", "ca"), ("b@1", "cb"), ("c@1", "cc")] {
            cold(&mut p, k, 128);
            p.release(k, c, 128, t);
        }
        // Use a: b becomes the least recently used.
        let a = warm(&mut p, "a@1", 128);
        p.release("a@1", a, 128, t);
        assert_eq!(cold(&mut p, "d@1", 128), vec!["cb"]);
        assert_eq!(p.used_mb(), 384);
        assert_eq!(p.idle_count(), 2);
        // A big one evicts both remaining idle containers, least recent first.
        p.discard(128);
        assert_eq!(cold(&mut p, "e@1", 384), vec!["cc", "ca"]);
    }

    #[test]
    fn waits_when_busy_containers_hold_the_memory() {
        let mut p = WarmPool::<&str>::new(256);
        cold(&mut p, "a@1", 128);
        cold(&mut p, "a@1", 128);
        assert!(p.try_acquire("a@1", None, 128).is_none());
        assert!(
            p.try_acquire("b@1", None, 512).is_none(),
            "larger than the whole worker"
        );
        p.discard(128);
        cold(&mut p, "a@1", 128);
    }

    #[test]
    fn a_spare_serves_a_cold_function_and_never_evicts_warm_ones() {
        let mut p = WarmPool::new(384);
        let t = Instant::now();
        assert!(p.try_reserve(128));
        p.release("spare/python3", "s1", 128, t);
        assert_eq!(p.count("spare/python3"), 1);
        // A warm container of the function comes first.
        cold(&mut p, "a@1", 128);
        p.release("a@1", "ca", 128, t);
        match p.try_acquire("a@1", Some("spare/python3"), 128) {
            Some(Grant::Warm("ca")) => {}
            other => panic!("expected warm, got {other:?}"),
        }
        p.release("a@1", "ca", 128, t);
        // A new function takes the spare: no new memory, nothing evicted.
        match p.try_acquire("b@1", Some("spare/python3"), 128) {
            Some(Grant::Spare("s1")) => {}
            other => panic!("expected the spare, got {other:?}"),
        }
        assert_eq!(p.used_mb(), 256);
        assert_eq!(p.count("spare/python3"), 0);
        // Room for one more spare, but not two: spares do not evict.
        assert!(p.try_reserve(128));
        assert!(!p.try_reserve(128));
        p.release("spare/python3", "s2", 128, t);
        // A cold start may evict a spare like any idle container (a is older).
        p.discard(128); // b finished and went away
        assert_eq!(cold(&mut p, "c@1", 256), vec!["ca"]);
        assert_eq!(p.warm_keys(), vec!["spare/python3".to_owned()]);
    }

    #[test]
    fn a_dead_idle_container_is_taken_out_by_identity() {
        let mut p = WarmPool::new(512);
        let t = Instant::now();
        cold(&mut p, "a@1", 128);
        cold(&mut p, "a@1", 128);
        p.release("a@1", "a1", 128, t);
        p.release("a@1", "a2", 128, t);
        assert!(p.take_where(|c| *c == "zz").is_none());
        assert_eq!(p.take_where(|c| *c == "a1"), Some(("a@1".to_owned(), "a1")));
        assert_eq!((p.idle_count(), p.count("a@1"), p.used_mb()), (1, 1, 256));
        p.discard(128);
        assert_eq!(p.take_where(|c| *c == "a2"), Some(("a@1".to_owned(), "a2")));
        assert!(p.warm_keys().is_empty());
        p.discard(128);
        assert_eq!(p.used_mb(), 0);
    }

    #[test]
    fn idle_ttl_expires_only_old_containers() {
        let mut p = WarmPool::new(1024);
        let t0 = Instant::now();
        cold(&mut p, "a@1", 100);
        cold(&mut p, "a@1", 100);
        p.release("a@1", "old", 100, t0);
        p.release("a@1", "new", 100, t0 + Duration::from_secs(50));
        let gone = p.expire(t0 + Duration::from_secs(60), Duration::from_secs(30));
        assert_eq!(gone, vec!["old"]);
        assert_eq!(p.used_mb(), 100);
        assert_eq!(p.drain(), vec!["new"]);
        assert_eq!(p.used_mb(), 0);
        assert!(p.warm_keys().is_empty());
    }
}
