//! The segment tree over workers (leaves sorted by capacity, then id): the live worker a demand
//! fits on with the most headroom after placement, by branch and bound.
//!
//! The small functions the scheduler calls from other files are `#[inline]`: without it they
//! would not be inlined across codegen units, and every placement and release would pay calls
//! it did not pay when the scheduler was one file (measured: `benches/drf.rs` under callgrind).

use std::cmp::Ordering;

use super::frac::{arr, headroom, le, Frac, Vec3};
use super::state::Worker;

#[derive(Debug, Clone, Copy)]
pub(super) struct WorkerNode {
    pub(super) live: bool,
    pub(super) max_free: Vec3,
    pub(super) min_cap: Vec3,
    pub(super) max_cap: Vec3,
    pub(super) max_head: Frac,
    /// Smallest id rank of the live workers below.
    pub(super) min_rank: u32,
}

pub(super) const WORKER_DEAD: WorkerNode = WorkerNode {
    live: false,
    max_free: [0; 3],
    min_cap: [u64::MAX; 3],
    max_cap: [0; 3],
    max_head: Frac::ZERO,
    min_rank: u32::MAX,
};

impl WorkerNode {
    #[inline]
    pub(super) fn of(w: &Worker) -> WorkerNode {
        if !w.accepting {
            return WORKER_DEAD;
        }
        let (free, cap) = (arr(w.free()), arr(w.capacity));
        WorkerNode {
            live: true,
            max_free: free,
            min_cap: cap,
            max_cap: cap,
            max_head: headroom(free, cap),
            min_rank: w.rank,
        }
    }

    #[inline]
    pub(super) fn merge(a: &WorkerNode, b: &WorkerNode) -> WorkerNode {
        match (a.live, b.live) {
            (false, _) => *b,
            (_, false) => *a,
            _ => WorkerNode {
                live: true,
                max_free: [
                    a.max_free[0].max(b.max_free[0]),
                    a.max_free[1].max(b.max_free[1]),
                    a.max_free[2].max(b.max_free[2]),
                ],
                min_cap: [
                    a.min_cap[0].min(b.min_cap[0]),
                    a.min_cap[1].min(b.min_cap[1]),
                    a.min_cap[2].min(b.min_cap[2]),
                ],
                max_cap: [
                    a.max_cap[0].max(b.max_cap[0]),
                    a.max_cap[1].max(b.max_cap[1]),
                    a.max_cap[2].max(b.max_cap[2]),
                ],
                max_head: a.max_head.max(b.max_head),
                min_rank: a.min_rank.min(b.min_rank),
            },
        }
    }

    /// Field by field equality (fractions by representation).
    #[inline]
    pub(super) fn same(&self, o: &WorkerNode) -> bool {
        self.live == o.live
            && self.max_free == o.max_free
            && self.min_cap == o.min_cap
            && self.max_cap == o.max_cap
            && self.max_head.num == o.max_head.num
            && self.max_head.den == o.max_head.den
            && self.min_rank == o.min_rank
    }

    /// If `demand` may fit somewhere below: an upper bound of the headroom after placement.
    /// At a leaf the bound is exact.
    #[inline]
    pub(super) fn bound(&self, demand: Vec3) -> Option<Frac> {
        if !self.live || !le(demand, self.max_free) {
            return None;
        }
        let mut ub = self.max_head;
        for ((f, d), c) in self.max_free.into_iter().zip(demand).zip(self.min_cap) {
            if c > 0 {
                ub = ub.min(Frac::new(f - d, c));
            }
        }
        Some(ub)
    }
}

#[derive(Debug, Default)]
pub(super) struct WorkerTree {
    pub(super) cap: usize,
    pub(super) nodes: Vec<WorkerNode>,
}

impl WorkerTree {
    pub(super) fn rebuild(&mut self, leaves: impl ExactSizeIterator<Item = WorkerNode>) {
        self.cap = leaves.len().max(1).next_power_of_two();
        self.nodes = vec![WORKER_DEAD; 2 * self.cap];
        for (i, n) in leaves.enumerate() {
            self.nodes[self.cap + i] = n;
        }
        for i in (1..self.cap).rev() {
            self.nodes[i] = WorkerNode::merge(&self.nodes[2 * i], &self.nodes[2 * i + 1]);
        }
    }

    #[inline]
    pub(super) fn set(&mut self, leaf: usize, node: WorkerNode) {
        let mut i = self.cap + leaf;
        self.nodes[i] = node;
        while i > 1 {
            i /= 2;
            let merged = WorkerNode::merge(&self.nodes[2 * i], &self.nodes[2 * i + 1]);
            if merged.same(&self.nodes[i]) {
                break;
            }
            self.nodes[i] = merged;
        }
    }

    /// The leaf of the live worker `demand` fits on with the most headroom after placement
    /// (ties: the smaller id).
    #[inline]
    pub(super) fn best_fit(&self, demand: Vec3) -> Option<usize> {
        let mut best = None;
        if let Some(ub) = self.nodes.get(1).and_then(|n| n.bound(demand)) {
            self.search(1, ub, demand, &mut best);
        }
        best.map(|(_, _, leaf)| leaf)
    }

    /// `best` is `(headroom, id rank, leaf)`.
    pub(super) fn search(
        &self,
        i: usize,
        ub: Frac,
        demand: Vec3,
        best: &mut Option<(Frac, u32, usize)>,
    ) {
        let n = &self.nodes[i];
        if let Some((bh, brank, _)) = *best {
            match ub.cmp(&bh) {
                Ordering::Less => return,
                Ordering::Equal if n.min_rank > brank => return,
                _ => {}
            }
        }
        if i >= self.cap {
            // The bound is exact at a leaf, and the pruning above made it a strict improvement.
            *best = Some((ub, n.min_rank, i - self.cap));
            return;
        }
        let (l, r) = (2 * i, 2 * i + 1);
        let (bl, br) = (self.nodes[l].bound(demand), self.nodes[r].bound(demand));
        match (bl, br) {
            (Some(ul), Some(ur)) if ur > ul => {
                self.search(r, ur, demand, best);
                self.search(l, ul, demand, best);
            }
            _ => {
                if let Some(ul) = bl {
                    self.search(l, ul, demand, best);
                }
                if let Some(ur) = br {
                    self.search(r, ur, demand, best);
                }
            }
        }
    }

    /// Whether some live worker's capacity holds `demand`.
    pub(super) fn any_capacity(&self, i: usize, demand: Vec3) -> bool {
        let Some(n) = self.nodes.get(i) else {
            return false;
        };
        if !n.live || !le(demand, n.max_cap) {
            return false;
        }
        i >= self.cap || self.any_capacity(2 * i, demand) || self.any_capacity(2 * i + 1, demand)
    }
}
