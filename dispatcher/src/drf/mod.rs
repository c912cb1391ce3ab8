//! The dispatcher's Dominant Resource Fairness scheduling core (Ghodsi et al., NSDI 2011): pure
//! data structures, no I/O, no clock, no randomness — the same calls give the same decisions.
//!
//! # Rules
//!
//! * **Live workers** are the known workers that accept work (see [`Scheduler::set_accepting`]).
//!   The **total capacity** is the sum of their capacities.
//! * A user's **dominant share** is the largest, over CPU, memory and disk, of the user's running
//!   allocation divided by the total capacity of that resource; a resource with total capacity 0
//!   is ignored. Shares are compared exactly, as fractions (cross-multiplied in `u128`).
//! * **Who goes next**: among users with queued tasks, the user with the lowest dominant share
//!   whose *head* task (queues are FIFO per user) fits on some live worker right now. Ties: fewer
//!   running tasks, then the lexicographically smaller user id. A user whose head fits nowhere is
//!   skipped; it does not block the others.
//! * **Fits**: `allocated + demand <= capacity` on every resource, where a worker's allocated is
//!   its reported usage plus what was dispatched to it and not reported yet (below).
//! * **Placement**: among the live workers the task fits on, those with the task's function key
//!   warm win if there is any. Among the remaining candidates, the one with the most *headroom
//!   after placement*: `min over resources (free - demand) / capacity` (resources with capacity
//!   0 ignored), compared exactly; ties go to the smaller worker id.
//!
//! # Worker accounting and heartbeats
//!
//! A worker's allocated is `reported + in_flight`. `reported` is the heartbeat's `allocated`;
//! `in_flight` is the sum of demands dispatched by [`Scheduler::next`] that no heartbeat has
//! listed in its `running` yet. Each running task is in one of three states:
//!
//! * *in flight*: dispatched, not in any report yet (counted in `in_flight`);
//! * *reported*: listed by the latest report (counted in `reported`);
//! * *dropped*: listed once, missing from the latest report: the worker finished it but its
//!   result was not released yet (counted nowhere, the report already excludes it).
//!
//! [`Scheduler::report_usage`] (or [`Scheduler::apply_heartbeat`]) moves tasks between the
//! states and replaces `reported`; [`Scheduler::release`] subtracts a finished task from
//! wherever it is counted. The caller must drop heartbeats older than one already applied (by
//! `seq`). A stale report can only over-count, which delays work; it never over-commits. Tasks
//! a report lists that this scheduler never dispatched (a new leader after failover) are
//! *adopted*: charged to their user and to the worker, and forgotten (released) as soon as a
//! later report stops listing them, since their result may have been handled elsewhere.
//!
//! # Code map
//!
//! `frac` exact fractions and resource vectors; `state` the records of users, classes, workers
//! and running tasks; `class_tree` the tournament tree over classes; `worker_tree` the segment
//! tree over workers; `scheduler` the [`Scheduler`] and its public calls; `capacity` total
//! capacity, worker changes and placement; `users` seating users in classes; `runs` starting,
//! finishing and adopting tasks. `tests` holds the behaviour tests, a brute-force reference the
//! scheduler is checked against (`tests/model.rs`) and the fairness properties
//! (`tests/fairness.rs`).
//!
//! # Use
//!
//! * Workers: [`Scheduler::apply_heartbeat`] for each heartbeat (or its parts:
//!   [`Scheduler::upsert_worker`], [`Scheduler::set_accepting`], [`Scheduler::report_usage`]);
//!   [`Scheduler::remove_worker`] when one is declared dead, which hands back its lost tasks.
//! * Work: [`Scheduler::enqueue`] per invocation (check [`Scheduler::fits_anywhere_ever`] first
//!   to fail fast what no worker can ever hold), then [`Scheduler::next`] until it returns
//!   `None`; [`Scheduler::release`] with the run id when a result comes back.
//! * Reporting: [`Scheduler::pending_count`], [`Scheduler::user_share`],
//!   [`Scheduler::user_stats`], [`Scheduler::worker_stats`].
//!
//! # How it stays fast
//!
//! Users are grouped into *classes* by the demand of their head task; a class keeps its users
//! ordered by `(share, running, id)` and is represented by its first user. A new class is
//! *unverified*: when it comes first, placing its head is tried; if the head fits nowhere, the
//! class (all its users at once) becomes *tracked* and from then on carries the exact number of
//! live workers it fits on, zero at that moment. Every change of a worker's free room (a
//! placement, a release, a heartbeat, a join, a death) updates the counts of the tracked
//! classes its old or new room can hold, walking a tournament tree over classes pruned by each
//! subtree's component-wise minimum demand. A tracked class whose count passes a small
//! threshold goes back to unverified, so only classes close to fitting nowhere are counted.
//! The tree's root holds the best unverified class and the best tracked class that fits
//! somewhere: the next user is found in O(1), and a user whose head fits nowhere costs nothing
//! until room appears.
//!
//! Workers sit in a segment tree holding, per subtree, the component-wise maximum free room,
//! the minimum and maximum capacity, the maximum headroom and the smallest id rank; placement is
//! an exact branch and bound over it. Leaves are sorted by capacity, then id, so subtrees of
//! same-sized machines give tight bounds and a search is usually a few root-to-leaf walks. The
//! warm workers of a function key are found through a map and scanned.
//!
//! Per decision, with U users, C distinct head demands and W workers: O(log U) to re-key the
//! user in its class, O(log C) tree updates, the worker search (O(log W) typically, O(W) at
//! worst), the warm workers of the key, and the tracked classes the changed worker's room can
//! hold (bounded by C; small in practice, since they are the classes that fit on at most a few
//! workers). Changing the set of live workers or their capacities changes every share: the
//! trees are then rebuilt on the next decision, O(U log U + W log W).

mod capacity;
mod class_tree;
mod frac;
mod runs;
mod scheduler;
mod state;
#[cfg(test)]
mod tests;
mod users;
mod worker_tree;

use std::fmt;
use std::sync::Arc;

use schemas::Resources;

pub use scheduler::Scheduler;

/// One invocation to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Unique among the queued and running tasks of the scheduler (the run id). Shared, like
    /// the key: the scheduler keeps the task in its own records without copying the strings.
    pub id: Arc<str>,
    /// `function_id@version`, the key of warm containers.
    pub function_key: Arc<str>,
    pub demand: Resources,
}

impl Task {
    pub fn new(
        id: impl Into<Arc<str>>,
        function_key: impl Into<Arc<str>>,
        demand: Resources,
    ) -> Self {
        Self {
            id: id.into(),
            function_key: function_key.into(),
            demand,
        }
    }
}

/// A task placed on a worker: what [`Scheduler::next`] decided, and what [`Scheduler::release`]
/// and [`Scheduler::remove_worker`] hand back when it stops counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Shared with the scheduler's own record: no copy per decision.
    pub user: Arc<str>,
    pub task: Task,
    pub worker_id: Arc<str>,
    /// The worker had the task's function key warm when the task was placed.
    pub warm: bool,
}

/// Why [`Scheduler::enqueue`] refused a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueError {
    /// A task with this id is already queued or running (a redelivered message).
    DuplicateTaskId(String),
}

impl fmt::Display for EnqueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnqueueError::DuplicateTaskId(id) => {
                write!(f, "task {id} is already queued or running")
            }
        }
    }
}

impl std::error::Error for EnqueueError {}

/// A user's standing, for reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserStats {
    /// Sum of the demands of the user's running tasks.
    pub allocation: Resources,
    pub running: u64,
    pub pending: usize,
}

/// A worker's accounting, for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    pub capacity: Resources,
    /// Usage from the latest heartbeat (minus releases since).
    pub reported: Resources,
    /// Dispatched here and not listed by a heartbeat yet.
    pub in_flight: Resources,
    pub accepting: bool,
    pub running: usize,
}

impl WorkerStats {
    /// What the scheduler considers used: `reported + in_flight`.
    pub fn allocated(&self) -> Resources {
        self.reported.plus(self.in_flight)
    }

    /// Room left for new tasks.
    pub fn free(&self) -> Resources {
        self.capacity.minus(self.allocated())
    }
}
