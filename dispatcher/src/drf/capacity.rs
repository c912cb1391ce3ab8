//! Total capacity, what a change of a worker's free room updates, the warm-key index, the
//! rebuilds after membership or capacity changes, and placing a task on the best worker.

use std::collections::HashSet;
use std::sync::Arc;

use schemas::Resources;

use super::frac::{arr, dominant_share, headroom_after, le, Frac, Vec3};
use super::state::FastMap;
use super::worker_tree::WorkerNode;
use super::Scheduler;

pub(super) fn unindex_warm(index: &mut FastMap<Arc<str>, Vec<u32>>, key: &str, w: u32) {
    if let Some(v) = index.get_mut(key) {
        v.retain(|&x| x != w);
        if v.is_empty() {
            index.remove(key);
        }
    }
}

impl Scheduler {
    // ----- internals: capacity ------------------------------------------------------------------

    pub(super) fn add_total(&mut self, r: Resources) {
        if r != Resources::default() {
            let a = arr(r);
            for (t, x) in self.total.iter_mut().zip(a) {
                *t = t.saturating_add(x);
            }
            self.shares_dirty = true;
        }
    }

    pub(super) fn sub_total(&mut self, r: Resources) {
        if r != Resources::default() {
            let a = arr(r);
            for (t, x) in self.total.iter_mut().zip(a) {
                *t = t.saturating_sub(x);
            }
            self.shares_dirty = true;
        }
    }

    /// After any change of a live worker's capacity, usage or accepting, given its free room
    /// before (`None`: was not live): updates its leaf and the tracked classes' counts.
    pub(super) fn worker_changed(&mut self, w: u32, before: Option<Vec3>) {
        let worker = self.worker(w);
        let after = worker.live_free();
        if !self.layout_dirty {
            let (leaf, node) = (worker.leaf as usize, WorkerNode::of(worker));
            self.wtree.set(leaf, node);
        }
        self.ctree.recount(&mut self.classes, before, after);
    }

    pub(super) fn set_warm<I, S>(&mut self, w: u32, warm: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let items: Vec<S> = warm.into_iter().collect();
        let new: HashSet<&str> = items.iter().map(AsRef::as_ref).collect();
        let worker = self.workers[w as usize].as_mut().expect("live worker slot");
        if new.len() == worker.warm.len() && new.iter().all(|k| worker.warm.contains(*k)) {
            return;
        }
        let gone: Vec<Arc<str>> = worker
            .warm
            .iter()
            .filter(|k| !new.contains(&***k))
            .cloned()
            .collect();
        for k in gone {
            worker.warm.remove(&k);
            unindex_warm(&mut self.warm_index, &k, w);
        }
        let mut added: Vec<&str> = new
            .into_iter()
            .filter(|k| !worker.warm.contains(*k))
            .collect();
        added.sort_unstable();
        for k in added {
            let arc: Arc<str> = Arc::from(k);
            worker.warm.insert(arc.clone());
            self.warm_index.entry(arc).or_default().push(w);
        }
    }

    /// Rebuilds what membership or total-capacity changes made stale.
    pub(super) fn refresh(&mut self) {
        if self.layout_dirty {
            let mut order: Vec<u32> = self.worker_ix.values().copied().collect();
            order.sort_by(|&a, &b| self.worker(a).id.cmp(&self.worker(b).id));
            for (rank, &w) in order.iter().enumerate() {
                self.worker_mut(w).rank = rank as u32;
            }
            order.sort_by_key(|&w| (arr(self.worker(w).capacity), self.worker(w).rank));
            for (leaf, &w) in order.iter().enumerate() {
                self.worker_mut(w).leaf = leaf as u32;
            }
            let workers = &self.workers;
            self.wtree.rebuild(
                order
                    .iter()
                    .map(|&w| WorkerNode::of(workers[w as usize].as_ref().expect("worker"))),
            );
            self.leaf_slot = order;
            self.layout_dirty = false;
        }
        if self.shares_dirty {
            for class in self.classes.iter_mut().flatten() {
                class.members.clear();
            }
            for u in self.users.iter_mut().flatten() {
                if let Some((c, key)) = u.seat.as_mut() {
                    key.share = dominant_share(arr(u.alloc), self.total);
                    self.classes[*c as usize]
                        .as_mut()
                        .expect("seated class")
                        .members
                        .insert(key.clone());
                }
            }
            self.ctree.rebuild(&self.classes);
            self.shares_dirty = false;
        }
    }

    // ----- internals: placement -----------------------------------------------------------------

    /// Best live worker for `demand` (warm for `key` first), with whether it is warm.
    pub(super) fn place_anywhere(&self, demand: Vec3, key: &str) -> Option<(u32, bool)> {
        let mut best: Option<(Frac, u32)> = None;
        for &w in self.warm_index.get(key).map_or(&[][..], Vec::as_slice) {
            let worker = self.worker(w);
            let free = arr(worker.free());
            if !worker.accepting || !le(demand, free) {
                continue;
            }
            let h = headroom_after(free, arr(worker.capacity), demand);
            let better =
                best.is_none_or(|(bh, bw)| h > bh || (h == bh && worker.id < self.worker(bw).id));
            if better {
                best = Some((h, w));
            }
        }
        if let Some((_, w)) = best {
            return Some((w, true));
        }
        let leaf = self.wtree.best_fit(demand)?;
        Some((self.leaf_slot[leaf], false))
    }
}
