//! The scheduler's records: users (queue, allocation, seat), classes of users by head demand,
//! workers (capacity, usage, warm keys), running tasks, and the fast hasher of its maps.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use schemas::Resources;

use super::frac::{arr, Frac, Vec3};
use super::{Task, WorkerStats};

/// A fast non-cryptographic hasher (FxHash's rotate-xor-multiply, with a final mix) for the
/// internal maps. Their keys are ids the platform generates (run, user, worker and function
/// ids), not chosen by an adversary, so hash flooding is not a concern; SipHash was a visible
/// share of the decision cost.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FastHasher(u64);

impl FastHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // Spread the high bits the multiply produced into the low bits the table indexes with.
        let x = self.0;
        (x ^ (x >> 29)).wrapping_mul(Self::K) ^ (x >> 32)
    }
}

pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
pub(super) type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

pub(super) const NONE: u32 = u32::MAX;

/// `Scheduler::tickets` value of a queued task.
pub(super) const QUEUED: u32 = u32::MAX;

/// A tracked class that fits on more workers than this goes back to unverified: counting is
/// only worth it for classes close to fitting nowhere.
pub(super) const TRACK_UP_TO: u32 = 4;

/// The order of users: lowest share, then fewer running tasks, then smaller id.
#[derive(Debug, Clone)]
pub(super) struct UserKey {
    pub(super) share: Frac,
    pub(super) running: u64,
    /// The id's first 8 bytes, big-endian, zero-padded: orders like the id when it differs.
    pub(super) id_prefix: u64,
    pub(super) id: Arc<str>,
    /// The user's slot; not part of the order (ids are unique).
    pub(super) ix: u32,
}

pub(super) fn id_prefix(id: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = id.len().min(8);
    b[..n].copy_from_slice(&id.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

impl Ord for UserKey {
    fn cmp(&self, o: &UserKey) -> Ordering {
        self.share
            .cmp(&o.share)
            .then(self.running.cmp(&o.running))
            .then(self.id_prefix.cmp(&o.id_prefix))
            .then_with(|| {
                // One slot holds one user at a time: same slot, same id.
                if self.ix == o.ix {
                    Ordering::Equal
                } else {
                    self.id.cmp(&o.id)
                }
            })
    }
}

impl PartialOrd for UserKey {
    fn partial_cmp(&self, o: &UserKey) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for UserKey {
    fn eq(&self, o: &UserKey) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for UserKey {}

#[derive(Debug)]
pub(super) struct User {
    pub(super) id: Arc<str>,
    pub(super) id_prefix: u64,
    /// `(ticket, task)`, FIFO.
    pub(super) queue: VecDeque<(u32, Task)>,
    pub(super) alloc: Resources,
    pub(super) running: u64,
    /// `(class, key)` the user sits in; `Some` exactly when the queue is not empty.
    pub(super) seat: Option<(u32, UserKey)>,
}

/// The users whose head task has this demand.
#[derive(Debug)]
pub(super) struct Class {
    pub(super) demand: Resources,
    pub(super) members: BTreeSet<UserKey>,
    /// `fits` is maintained (the class's head once fit nowhere).
    pub(super) tracked: bool,
    /// When tracked: the number of live workers whose free room holds `demand`.
    pub(super) fits: u32,
}

#[derive(Debug)]
pub(super) struct Worker {
    pub(super) id: Arc<str>,
    pub(super) capacity: Resources,
    pub(super) reported: Resources,
    pub(super) in_flight: Resources,
    pub(super) accepting: bool,
    pub(super) warm: FastSet<Arc<str>>,
    /// Slots of its running tasks (each knows its position here).
    pub(super) running: Vec<u32>,
    /// Position in id order (for ties).
    pub(super) rank: u32,
    /// Position of its leaf in the worker tree.
    pub(super) leaf: u32,
}

impl Worker {
    pub(super) fn allocated(&self) -> Resources {
        self.reported.plus(self.in_flight)
    }

    pub(super) fn free(&self) -> Resources {
        self.capacity.minus(self.allocated())
    }

    /// Free room if the worker is live.
    pub(super) fn live_free(&self) -> Option<Vec3> {
        self.accepting.then(|| arr(self.free()))
    }

    pub(super) fn stats(&self) -> WorkerStats {
        WorkerStats {
            capacity: self.capacity,
            reported: self.reported,
            in_flight: self.in_flight,
            accepting: self.accepting,
            running: self.running.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunState {
    InFlight,
    Reported,
    Dropped,
}

#[derive(Debug)]
pub(super) struct RunningEntry {
    pub(super) user: u32,
    pub(super) worker: u32,
    /// Index in the worker's `running`.
    pub(super) pos: u32,
    pub(super) ticket: u32,
    pub(super) task: Task,
    pub(super) warm: bool,
    pub(super) state: RunState,
    /// Learnt from a heartbeat, not dispatched by this scheduler.
    pub(super) adopted: bool,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::id_prefix;

    proptest! {
        /// The 8-byte prefix orders like the id whenever it differs.
        #[test]
        fn id_prefix_orders_like_the_id(a in "[a-c\\x00]{0,10}", b in "[a-c\\x00]{0,10}") {
            let (pa, pb) = (id_prefix(&a), id_prefix(&b));
            if pa != pb {
                prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
            }
        }
    }
}
