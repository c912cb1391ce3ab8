//! Per-function concurrency limits (`max_concurrency`, contract v1.1), kept by the leader
//! beside DRF rather than inside it: a run over its function's limit never enters the DRF
//! queues, so it cannot sit at the head of its user's queue and hold back that user's other
//! functions or anyone else. Pure bookkeeping, no I/O.
//!
//! * A run is **active** from its admission until its result reaches the leader (or it is
//!   handed back: unconfirmed publish, dead worker, failure). Counting until the result — not
//!   until the worker finished — can only over-count, so a function never has more than its
//!   limit running on workers.
//! * Over the limit, a **sync** run is refused (the caller gets 429 `concurrency_limit`) and an
//!   **async** run is **parked** (FIFO per function) until an active run of the function ends.
//! * **Failover**: worker heartbeats list their running runs with their function; a run the
//!   leader did not admit itself is **adopted** as active (the new leader's count starts from
//!   what workers run), and forgotten when its result arrives or a later heartbeat of its worker
//!   no longer lists it. Standbys keep the latest heartbeats, so a new leader counts from its
//!   first invocation. A task the old leader published that no worker has started yet is not
//!   in any heartbeat: for that moment a new leader may admit up to that many runs too many.
//! * Every run is tracked (limited or not), so a limit set by a new version also counts the
//!   runs of older versions still active.

use std::collections::{HashMap, HashSet, VecDeque};

use schemas::RunningTask;

/// What to do with a new run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Under the limit (or none): schedule it.
    Go,
    /// Async over the limit: hold it until a slot frees.
    Park,
    /// Sync over the limit: answer 429.
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Active,
    Adopted { worker: String },
    Parked,
}

#[derive(Debug, Default)]
struct Function {
    limit: Option<u32>,
    active: usize,
    parked: VecDeque<String>,
}

/// The leader's per-function counts.
#[derive(Debug, Default)]
pub struct Limiter {
    functions: HashMap<String, Function>,
    /// run id → (function id, state).
    runs: HashMap<String, (String, State)>,
    /// Adopted runs by worker.
    adopted: HashMap<String, HashSet<String>>,
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter::default()
    }

    /// Decides a new run of `function_id`, whose current limit is `limit`.
    pub fn admit(
        &mut self,
        run_id: &str,
        function_id: &str,
        limit: Option<u32>,
        sync: bool,
    ) -> Admission {
        if self.runs.contains_key(run_id) {
            return Admission::Go;
        }
        let f = self.functions.entry(function_id.to_owned()).or_default();
        f.limit = limit;
        let full = limit.is_some_and(|l| f.active >= l as usize);
        let (admission, state) = match (full, sync) {
            (false, _) => {
                f.active += 1;
                (Admission::Go, State::Active)
            }
            (true, true) => return Admission::Refuse,
            (true, false) => {
                f.parked.push_back(run_id.to_owned());
                (Admission::Park, State::Parked)
            }
        };
        self.runs
            .insert(run_id.to_owned(), (function_id.to_owned(), state));
        admission
    }

    /// A run ended (result, handed back, failed) or a parked one was dropped; returns the
    /// parked runs that may start now (already counted active).
    pub fn finish(&mut self, run_id: &str) -> Vec<String> {
        let Some((function_id, state)) = self.runs.remove(run_id) else {
            return Vec::new();
        };
        match state {
            State::Parked => {
                if let Some(f) = self.functions.get_mut(&function_id) {
                    f.parked.retain(|r| r != run_id);
                }
                self.tidy(&function_id);
                return Vec::new();
            }
            State::Adopted { worker } => {
                if let Some(set) = self.adopted.get_mut(&worker) {
                    set.remove(run_id);
                }
            }
            State::Active => {}
        }
        if let Some(f) = self.functions.get_mut(&function_id) {
            f.active = f.active.saturating_sub(1);
        }
        let ready = self.unpark(&function_id);
        self.tidy(&function_id);
        ready
    }

    /// A worker's heartbeat: adopts the runs it lists that are not known, forgets adopted runs
    /// of this worker it no longer lists. Returns the parked runs that may start now.
    pub fn observe(&mut self, worker_id: &str, running: &[RunningTask]) -> Vec<String> {
        let listed: HashSet<&str> = running.iter().map(|t| t.run_id.as_str()).collect();
        let gone: Vec<String> = self
            .adopted
            .get(worker_id)
            .map(|set| {
                set.iter()
                    .filter(|r| !listed.contains(r.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut ready = Vec::new();
        for r in gone {
            ready.extend(self.finish(&r));
        }
        for t in running {
            if t.function_id.is_empty() || self.runs.contains_key(&t.run_id) {
                continue;
            }
            self.functions
                .entry(t.function_id.clone())
                .or_default()
                .active += 1;
            self.runs.insert(
                t.run_id.clone(),
                (
                    t.function_id.clone(),
                    State::Adopted {
                        worker: worker_id.to_owned(),
                    },
                ),
            );
            self.adopted
                .entry(worker_id.to_owned())
                .or_default()
                .insert(t.run_id.clone());
        }
        ready
    }

    /// A dead worker's adopted runs end (its own admitted runs are finished by the caller).
    pub fn forget_worker(&mut self, worker_id: &str) -> Vec<String> {
        self.observe(worker_id, &[])
    }

    /// Runs of `function_id` active now (admitted or adopted).
    pub fn active(&self, function_id: &str) -> usize {
        self.functions.get(function_id).map_or(0, |f| f.active)
    }

    /// Runs of `function_id` waiting for a slot.
    pub fn parked(&self, function_id: &str) -> usize {
        self.functions
            .get(function_id)
            .map_or(0, |f| f.parked.len())
    }

    fn unpark(&mut self, function_id: &str) -> Vec<String> {
        let Some(f) = self.functions.get_mut(function_id) else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        while f.limit.is_none_or(|l| f.active < l as usize) {
            let Some(r) = f.parked.pop_front() else { break };
            f.active += 1;
            if let Some(entry) = self.runs.get_mut(&r) {
                entry.1 = State::Active;
            }
            ready.push(r);
        }
        ready
    }

    fn tidy(&mut self, function_id: &str) {
        if self
            .functions
            .get(function_id)
            .is_some_and(|f| f.active == 0 && f.parked.is_empty())
        {
            self.functions.remove(function_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Resources;

    fn rt(run: &str, f: &str) -> RunningTask {
        RunningTask {
            run_id: run.into(),
            user_id: "u".into(),
            demand: Resources::new(100, 64, 16),
            function_id: f.into(),
        }
    }

    #[test]
    fn sync_over_the_limit_is_refused_async_parked_in_order() {
        let mut l = Limiter::new();
        assert_eq!(l.admit("a", "f", Some(2), true), Admission::Go);
        assert_eq!(l.admit("b", "f", Some(2), false), Admission::Go);
        assert_eq!(l.admit("c", "f", Some(2), true), Admission::Refuse);
        assert_eq!(l.admit("d", "f", Some(2), false), Admission::Park);
        assert_eq!(l.admit("e", "f", Some(2), false), Admission::Park);
        // Other functions are not held back.
        assert_eq!(l.admit("x", "g", Some(1), true), Admission::Go);
        assert_eq!(l.admit("y", "h", None, true), Admission::Go);
        assert_eq!((l.active("f"), l.parked("f")), (2, 2));
        assert_eq!(l.finish("a"), vec!["d".to_owned()]);
        assert_eq!(l.active("f"), 2);
        // A parked run dropped (failed) frees nothing.
        assert!(l.finish("e").is_empty());
        assert_eq!(l.parked("f"), 0);
        assert!(l.finish("b").is_empty());
        assert!(l.finish("d").is_empty());
        assert_eq!(l.active("f"), 0);
        assert!(l.finish("unknown").is_empty());
    }

    #[test]
    fn a_new_leader_counts_from_heartbeats() {
        let mut l = Limiter::new();
        assert!(l
            .observe("w1", &[rt("r1", "f"), rt("r2", "f"), rt("old", "")])
            .is_empty());
        assert_eq!(l.active("f"), 2);
        assert_eq!(l.admit("s", "f", Some(2), true), Admission::Refuse);
        assert_eq!(l.admit("p", "f", Some(2), false), Admission::Park);
        // Listed again: not counted twice. Then r1 ends (not listed any more).
        assert!(l.observe("w1", &[rt("r1", "f"), rt("r2", "f")]).is_empty());
        assert_eq!(l.observe("w1", &[rt("r2", "f")]), vec!["p".to_owned()]);
        // r2's result arrives: forgotten once only.
        assert!(l.finish("r2").is_empty());
        assert!(l.observe("w1", &[]).is_empty());
        assert_eq!(l.active("f"), 1);
        // A dead worker's adopted runs end.
        l.observe("w2", &[rt("r9", "f")]);
        assert_eq!(l.active("f"), 2);
        l.forget_worker("w2");
        assert_eq!(l.active("f"), 1);
    }

    #[test]
    fn raising_the_limit_starts_parked_runs_as_slots_free() {
        let mut l = Limiter::new();
        assert_eq!(l.admit("a", "f", Some(1), false), Admission::Go);
        assert_eq!(l.admit("b", "f", Some(1), false), Admission::Park);
        assert_eq!(l.admit("c", "f", Some(1), false), Admission::Park);
        // A new version lifts the limit: its runs go, and the next slot frees everything.
        assert_eq!(l.admit("d", "f", None, false), Admission::Go);
        assert_eq!(l.finish("a"), vec!["b".to_owned(), "c".to_owned()]);
        assert_eq!(l.active("f"), 3);
    }
}
