//! Running tasks: starting a user's head task on a worker, finishing one, tickets, the run
//! records linked to their workers, and adopting tasks a heartbeat lists.

use std::sync::Arc;

use schemas::{Resources, RunningTask};

use super::state::{RunState, RunningEntry, QUEUED};
use super::{Decision, Scheduler, Task};

impl Scheduler {
    /// Starts the head task of user `u` on worker `w`.
    pub(super) fn commit(&mut self, u: u32, w: u32, warm: bool) -> Decision {
        let user = self.users[u as usize].as_mut().expect("live user slot");
        let (ticket, task) = user.queue.pop_front().expect("seated user has a head");
        user.alloc = user.alloc.plus(task.demand);
        user.running += 1;
        let user_id = user.id.clone();
        self.pending -= 1;
        self.reseat(u);

        let worker = self.workers[w as usize].as_mut().expect("live worker slot");
        let before = worker.live_free();
        worker.in_flight = worker.in_flight.plus(task.demand);
        let worker_id = worker.id.clone();
        self.worker_changed(w, before);
        let slot = self.add_run(RunningEntry {
            user: u,
            worker: w,
            pos: 0,
            ticket,
            task: task.clone(),
            warm,
            state: RunState::InFlight,
            adopted: false,
        });
        debug_assert_eq!(self.tickets[ticket as usize], QUEUED);
        self.tickets[ticket as usize] = slot;
        Decision {
            user: user_id,
            task,
            worker_id,
            warm,
        }
    }

    /// Removes a running task and frees its demand.
    pub(super) fn finish_slot(&mut self, slot: u32) -> Decision {
        let e = self.take_run(slot);
        let worker = self.workers[e.worker as usize]
            .as_mut()
            .expect("live worker slot");
        let before = worker.live_free();
        match e.state {
            RunState::InFlight => worker.in_flight = worker.in_flight.minus(e.task.demand),
            RunState::Reported => worker.reported = worker.reported.minus(e.task.demand),
            RunState::Dropped => {}
        }
        let worker_id = worker.id.clone();
        self.worker_changed(e.worker, before);
        Decision {
            user: self.user_finished(e.user, e.task.demand),
            task: e.task,
            worker_id,
            warm: e.warm,
        }
    }

    pub(super) fn new_ticket(&mut self, value: u32) -> u32 {
        match self.free_tickets.pop() {
            Some(t) => {
                self.tickets[t as usize] = value;
                t
            }
            None => {
                self.tickets.push(value);
                (self.tickets.len() - 1) as u32
            }
        }
    }

    pub(super) fn run(&self, slot: u32) -> &RunningEntry {
        self.runs[slot as usize].as_ref().expect("live run slot")
    }

    /// Stores a running task and links it to its worker.
    pub(super) fn add_run(&mut self, mut e: RunningEntry) -> u32 {
        let slot = match self.free_runs.pop() {
            Some(s) => s,
            None => {
                self.runs.push(None);
                (self.runs.len() - 1) as u32
            }
        };
        let list = &mut self.workers[e.worker as usize]
            .as_mut()
            .expect("live worker slot")
            .running;
        e.pos = list.len() as u32;
        list.push(slot);
        self.runs[slot as usize] = Some(e);
        self.running += 1;
        slot
    }

    /// Removes a running task and unlinks it from its worker.
    pub(super) fn take_run(&mut self, slot: u32) -> RunningEntry {
        let e = self.runs[slot as usize].take().expect("live run slot");
        self.free_runs.push(slot);
        self.running -= 1;
        let list = &mut self.workers[e.worker as usize]
            .as_mut()
            .expect("live worker slot")
            .running;
        list.swap_remove(e.pos as usize);
        if let Some(&moved) = list.get(e.pos as usize) {
            self.runs[moved as usize]
                .as_mut()
                .expect("live run slot")
                .pos = e.pos;
        }
        e
    }

    /// Takes a finished task's demand off its user; returns the user id.
    pub(super) fn user_finished(&mut self, u: u32, demand: Resources) -> Arc<str> {
        let user = self.user_mut(u);
        user.alloc = user.alloc.minus(demand);
        user.running = user.running.saturating_sub(1);
        let id = user.id.clone();
        if user.seat.is_some() {
            self.reseat(u);
        }
        self.gc_user(u);
        id
    }

    /// Accounts a task a heartbeat lists but this scheduler never dispatched.
    pub(super) fn adopt(&mut self, w: u32, t: &RunningTask) {
        let u = self.user_slot(&t.user_id);
        let user = self.user_mut(u);
        user.alloc = user.alloc.plus(t.demand);
        user.running += 1;
        if user.seat.is_some() {
            self.reseat(u);
        }
        let ticket = self.new_ticket(QUEUED);
        let slot = self.add_run(RunningEntry {
            user: u,
            worker: w,
            pos: 0,
            ticket,
            task: Task::new(t.run_id.clone(), String::new(), t.demand),
            warm: false,
            state: RunState::Reported,
            adopted: true,
        });
        self.tickets[ticket as usize] = slot;
        self.tasks.insert(Arc::from(t.run_id.as_str()), ticket);
    }
}
