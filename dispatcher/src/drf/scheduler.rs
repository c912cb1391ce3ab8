//! The [`Scheduler`]: its state and its public calls (workers, heartbeats, enqueue, next,
//! release, reporting).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use schemas::{HeartbeatMsg, Resources, RunningTask};

use super::capacity::unindex_warm;
use super::class_tree::{class_key, ClassTree};
use super::frac::{arr, dominant_share, le, Vec3};
use super::state::{Class, FastMap, FastSet, RunState, RunningEntry, User, Worker, NONE, QUEUED};
use super::worker_tree::WorkerTree;
use super::{Decision, EnqueueError, Task, UserStats, WorkerStats};

/// The DRF scheduler. See the module documentation for the rules.
#[derive(Default)]
pub struct Scheduler {
    pub(super) workers: Vec<Option<Worker>>,
    pub(super) worker_ix: FastMap<Arc<str>, u32>,
    pub(super) free_workers: Vec<u32>,
    /// Function key → workers that have it warm.
    pub(super) warm_index: FastMap<Arc<str>, Vec<u32>>,
    /// Sum of the capacities of live workers.
    pub(super) total: Vec3,
    pub(super) wtree: WorkerTree,
    /// Worker slot of each leaf of the worker tree.
    pub(super) leaf_slot: Vec<u32>,
    /// The worker tree's leaf order must be rebuilt (a worker joined, left or was resized).
    pub(super) layout_dirty: bool,
    /// The total changed: every user's share must be recomputed.
    pub(super) shares_dirty: bool,

    pub(super) users: Vec<Option<User>>,
    pub(super) user_ix: FastMap<Arc<str>, u32>,
    pub(super) free_users: Vec<u32>,

    pub(super) classes: Vec<Option<Class>>,
    pub(super) class_ix: FastMap<Resources, u32>,
    pub(super) free_classes: Vec<u32>,
    pub(super) ctree: ClassTree,

    /// Every queued or running task id → its ticket.
    pub(super) tasks: FastMap<Arc<str>, u32>,
    /// Per ticket: `QUEUED`, or the task's slot in `runs`. Queued tasks carry their ticket, so
    /// starting one needs no lookup by id.
    pub(super) tickets: Vec<u32>,
    pub(super) free_tickets: Vec<u32>,
    pub(super) runs: Vec<Option<RunningEntry>>,
    pub(super) free_runs: Vec<u32>,
    pub(super) running: usize,
    pub(super) pending: usize,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("workers", &self.worker_ix.len())
            .field("users", &self.user_ix.len())
            .field("classes", &self.class_ix.len())
            .field("pending", &self.pending)
            .field("running", &self.running)
            .field("total", &self.total_capacity())
            .finish()
    }
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    // ----- workers ----------------------------------------------------------------------------

    /// Adds a worker (accepting, nothing reported yet) or updates its capacity, and replaces its
    /// set of warm function keys.
    pub fn upsert_worker<I, S>(&mut self, id: &str, capacity: Resources, warm: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let w = match self.worker_ix.get(id) {
            Some(&w) => {
                let worker = self.workers[w as usize].as_mut().expect("indexed worker");
                if worker.capacity != capacity {
                    let (old_cap, before, accepting) =
                        (worker.capacity, worker.live_free(), worker.accepting);
                    worker.capacity = capacity;
                    if accepting {
                        self.sub_total(old_cap);
                        self.add_total(capacity);
                    }
                    self.layout_dirty = true;
                    self.worker_changed(w, before);
                }
                w
            }
            None => {
                let arc: Arc<str> = Arc::from(id);
                let worker = Worker {
                    id: arc.clone(),
                    capacity,
                    reported: Resources::default(),
                    in_flight: Resources::default(),
                    accepting: true,
                    warm: FastSet::default(),
                    running: Vec::new(),
                    rank: 0,
                    leaf: 0,
                };
                let w = match self.free_workers.pop() {
                    Some(w) => {
                        self.workers[w as usize] = Some(worker);
                        w
                    }
                    None => {
                        self.workers.push(Some(worker));
                        (self.workers.len() - 1) as u32
                    }
                };
                self.worker_ix.insert(arc, w);
                self.add_total(capacity);
                self.layout_dirty = true;
                self.ctree
                    .recount(&mut self.classes, None, Some(arr(capacity)));
                w
            }
        };
        self.set_warm(w, warm);
    }

    /// Stops (`false`) or resumes (`true`) placing work on a worker, e.g. while it drains. A
    /// worker that does not accept is not live: it counts in neither placement nor total
    /// capacity, but its running tasks stay accounted. Returns false for an unknown worker.
    pub fn set_accepting(&mut self, id: &str, accepting: bool) -> bool {
        let Some(&w) = self.worker_ix.get(id) else {
            return false;
        };
        let worker = self.workers[w as usize].as_mut().expect("indexed worker");
        if worker.accepting == accepting {
            return true;
        }
        let (before, capacity) = (worker.live_free(), worker.capacity);
        worker.accepting = accepting;
        if accepting {
            self.add_total(capacity);
        } else {
            self.sub_total(capacity);
        }
        self.worker_changed(w, before);
        true
    }

    /// Applies a heartbeat's usage report: `allocated` replaces the reported usage, and the
    /// `running` list moves this worker's tasks between in flight, reported and dropped (see
    /// the module documentation). Unknown running tasks are adopted. Returns false for an
    /// unknown worker.
    pub fn report_usage(
        &mut self,
        id: &str,
        allocated: Resources,
        running: &[RunningTask],
    ) -> bool {
        let Some(&w) = self.worker_ix.get(id) else {
            return false;
        };
        let listed: HashSet<&str> = running.iter().map(|t| t.run_id.as_str()).collect();
        let worker = self.workers[w as usize].as_mut().expect("indexed worker");
        let before = worker.live_free();
        let mut forget = Vec::new();
        for &slot in &worker.running {
            let e = self.runs[slot as usize]
                .as_mut()
                .expect("worker's task runs");
            match (e.state, listed.contains(&*e.task.id)) {
                (RunState::InFlight, true) => {
                    e.state = RunState::Reported;
                    worker.in_flight = worker.in_flight.minus(e.task.demand);
                }
                (RunState::Reported, false) => {
                    e.state = RunState::Dropped;
                    if e.adopted {
                        forget.push(slot);
                    }
                }
                (RunState::Dropped, true) => e.state = RunState::Reported,
                _ => {}
            }
        }
        worker.reported = allocated;
        for t in running {
            if !self.tasks.contains_key(t.run_id.as_str()) {
                self.adopt(w, t);
            }
        }
        self.worker_changed(w, before);
        for slot in forget {
            let run = self.run(slot);
            let (id, ticket) = (run.task.id.clone(), run.ticket);
            self.tasks.remove(&*id);
            self.free_tickets.push(ticket);
            self.finish_slot(slot);
        }
        true
    }

    /// Everything a heartbeat says: capacity, warm keys, accepting, usage.
    pub fn apply_heartbeat(&mut self, hb: &HeartbeatMsg) {
        self.upsert_worker(&hb.worker_id, hb.capacity, &hb.warm);
        self.set_accepting(&hb.worker_id, hb.accepting);
        self.report_usage(&hb.worker_id, hb.allocated, &hb.running);
    }

    /// Forgets a dead worker. Its running tasks are released and returned (sorted by task id)
    /// so the caller can fail or re-queue them.
    pub fn remove_worker(&mut self, id: &str) -> Vec<Decision> {
        let Some(w) = self.worker_ix.remove(id) else {
            return Vec::new();
        };
        let worker = self.workers[w as usize].take().expect("indexed worker");
        self.ctree
            .recount(&mut self.classes, worker.live_free(), None);
        self.free_workers.push(w);
        if worker.accepting {
            self.sub_total(worker.capacity);
        }
        for key in &worker.warm {
            unindex_warm(&mut self.warm_index, key, w);
        }
        self.layout_dirty = true;
        let mut lost: Vec<Decision> = worker
            .running
            .iter()
            .map(|&slot| {
                let e = self.runs[slot as usize].take().expect("worker's task runs");
                self.free_runs.push(slot);
                self.running -= 1;
                self.tasks.remove(&*e.task.id);
                self.free_tickets.push(e.ticket);
                Decision {
                    user: self.user_finished(e.user, e.task.demand),
                    task: e.task,
                    worker_id: worker.id.clone(),
                    warm: e.warm,
                }
            })
            .collect();
        lost.sort_by(|a, b| a.task.id.cmp(&b.task.id));
        lost
    }

    /// Whether some live worker's total capacity (not its free room) holds `demand`: false
    /// means a task with this demand cannot run until a bigger worker joins.
    pub fn fits_anywhere_ever(&self, demand: Resources) -> bool {
        let d = arr(demand);
        if self.layout_dirty {
            self.workers
                .iter()
                .flatten()
                .any(|w| w.accepting && le(d, arr(w.capacity)))
        } else {
            self.wtree.any_capacity(1, d)
        }
    }

    // ----- users and tasks ----------------------------------------------------------------------

    /// Appends a task to a user's queue. Refuses a task id already queued or running.
    pub fn enqueue(&mut self, user: &str, task: Task) -> Result<(), EnqueueError> {
        let ticket = self.new_ticket(QUEUED);
        match self.tasks.entry(task.id.clone()) {
            Entry::Occupied(_) => {
                self.free_tickets.push(ticket);
                return Err(EnqueueError::DuplicateTaskId(task.id.to_string()));
            }
            Entry::Vacant(v) => {
                v.insert(ticket);
            }
        }
        let u = self.user_slot(user);
        let q = &mut self.user_mut(u).queue;
        q.push_back((ticket, task));
        let first = q.len() == 1;
        self.pending += 1;
        if first {
            self.reseat(u);
        }
        Ok(())
    }

    /// Decides the next task to start and where, and accounts it as running (the user's
    /// allocation and the worker's in-flight grow). `None` when no queued head task fits.
    // Not an iterator: `None` means "nothing fits right now", and later calls may decide more.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Decision> {
        self.refresh();
        loop {
            let c = self.ctree.best(&self.classes);
            if c == NONE {
                return None;
            }
            let u = class_key(&self.classes, c).ix;
            let (_, head) = self.user(u).queue.front().expect("seated user has a head");
            if let Some((w, warm)) = self.place_anywhere(arr(head.demand), &head.function_key) {
                return Some(self.commit(u, w, warm));
            }
            // Fits nowhere: track the class from now on, with the count it has: zero.
            let class = self.class_mut(c);
            debug_assert!(!class.tracked, "a placeable class must fit somewhere");
            class.tracked = true;
            class.fits = 0;
            self.ctree.update(&self.classes, c);
        }
    }

    /// A task finished (or failed, or timed out): frees its demand on its user and its worker.
    /// Returns what was released; `None` for a task not running here.
    pub fn release(&mut self, task_id: &str) -> Option<Decision> {
        let (id, ticket) = self.tasks.remove_entry(task_id)?;
        let slot = self.tickets[ticket as usize];
        if slot == QUEUED {
            self.tasks.insert(id, ticket);
            return None;
        }
        self.free_tickets.push(ticket);
        Some(self.finish_slot(slot))
    }

    /// Removes the queued tasks whose demand fits no live worker's capacity (see
    /// [`Scheduler::fits_anywhere_ever`]), e.g. after the only big worker left. Such a task
    /// would otherwise hold its user's queue forever. Returns them as `(user, task)`, by user id
    /// then queue order. Do not call it while no worker has joined yet.
    pub fn drain_unrunnable(&mut self) -> Vec<(String, Task)> {
        self.refresh();
        let mut demands: HashMap<Resources, bool> = HashMap::new();
        for u in self.users.iter().flatten() {
            for (_, t) in &u.queue {
                demands.entry(t.demand).or_insert(false);
            }
        }
        for (d, ok) in demands.iter_mut() {
            *ok = self.fits_anywhere_ever(*d);
        }
        let mut out = Vec::new();
        for u in 0..self.users.len() as u32 {
            let Some(user) = self.users[u as usize].as_mut() else {
                continue;
            };
            if user.queue.iter().all(|(_, t)| demands[&t.demand]) {
                continue;
            }
            let (keep, gone): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut user.queue)
                .into_iter()
                .partition(|(_, t)| demands[&t.demand]);
            user.queue = keep;
            let name = String::from(&*user.id);
            for (ticket, t) in gone {
                self.tasks.remove(&*t.id);
                self.free_tickets.push(ticket);
                self.pending -= 1;
                out.push((name.clone(), t));
            }
            self.reseat(u);
            self.gc_user(u);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    // ----- reporting ----------------------------------------------------------------------------

    /// Queued tasks, all users.
    pub fn pending_count(&self) -> usize {
        self.pending
    }

    /// Running tasks (dispatched or adopted, not released).
    pub fn running_count(&self) -> usize {
        self.running
    }

    /// A user's dominant share of the current total capacity, for reporting (0 if unknown).
    pub fn user_share(&self, user: &str) -> f64 {
        self.user_ix.get(user).map_or(0.0, |&u| {
            dominant_share(arr(self.user(u).alloc), self.total).to_f64()
        })
    }

    pub fn user_stats(&self, user: &str) -> Option<UserStats> {
        self.user_ix.get(user).map(|&u| {
            let user = self.user(u);
            UserStats {
                allocation: user.alloc,
                running: user.running,
                pending: user.queue.len(),
            }
        })
    }

    pub fn worker_stats(&self, id: &str) -> Option<WorkerStats> {
        self.worker_ix.get(id).map(|&w| self.worker(w).stats())
    }

    /// Sum of the capacities of the live workers.
    pub fn total_capacity(&self) -> Resources {
        Resources::new(self.total[0], self.total[1], self.total[2])
    }

    // ----- internals: accessors -----------------------------------------------------------------

    pub(super) fn user(&self, u: u32) -> &User {
        self.users[u as usize].as_ref().expect("live user slot")
    }

    pub(super) fn user_mut(&mut self, u: u32) -> &mut User {
        self.users[u as usize].as_mut().expect("live user slot")
    }

    pub(super) fn worker(&self, w: u32) -> &Worker {
        self.workers[w as usize].as_ref().expect("live worker slot")
    }

    pub(super) fn worker_mut(&mut self, w: u32) -> &mut Worker {
        self.workers[w as usize].as_mut().expect("live worker slot")
    }

    pub(super) fn class_mut(&mut self, c: u32) -> &mut Class {
        self.classes[c as usize].as_mut().expect("live class slot")
    }
}
