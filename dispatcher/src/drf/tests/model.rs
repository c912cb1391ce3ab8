//! The scheduler against a brute-force reference that applies the documented rules by scanning
//! everything on every decision.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use schemas::{Resources, RunningTask};

use super::{r, rt, task};
use crate::drf::frac::{arr, dominant_share, headroom_after, le, Frac, Vec3};
use crate::drf::state::RunState;
use crate::drf::{Decision, Scheduler, Task, UserStats};

// ------------------------------------------------------------------------------------------
// A brute-force reference: the documented rules, scanning everything on every decision.

#[derive(Debug)]
struct NaiveWorker {
    cap: Resources,
    reported: Resources,
    accepting: bool,
    warm: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct NaiveUser {
    queue: VecDeque<Task>,
    alloc: Resources,
    running: u64,
}

#[derive(Debug)]
struct NaiveRun {
    user: String,
    worker: String,
    task: Task,
    warm: bool,
    state: RunState,
    adopted: bool,
}

#[derive(Debug, Default)]
struct Naive {
    workers: BTreeMap<String, NaiveWorker>,
    users: BTreeMap<String, NaiveUser>,
    running: BTreeMap<String, NaiveRun>,
}

impl Naive {
    fn in_flight(&self, w: &str) -> Resources {
        self.running
            .values()
            .filter(|x| x.worker == w && x.state == RunState::InFlight)
            .fold(Resources::default(), |a, x| a.plus(x.task.demand))
    }

    fn free(&self, w: &str) -> Resources {
        let nw = &self.workers[w];
        nw.cap.minus(nw.reported.plus(self.in_flight(w)))
    }

    fn total(&self) -> Vec3 {
        let t = self
            .workers
            .values()
            .filter(|w| w.accepting)
            .fold(Resources::default(), |a, w| a.plus(w.cap));
        arr(t)
    }

    fn queued(&self, id: &str) -> bool {
        self.users
            .values()
            .any(|u| u.queue.iter().any(|t| &*t.id == id))
    }

    fn gc(&mut self, u: &str) {
        if self
            .users
            .get(u)
            .is_some_and(|x| x.queue.is_empty() && x.running == 0)
        {
            self.users.remove(u);
        }
    }

    fn enqueue(&mut self, u: &str, t: Task) -> bool {
        if self.running.contains_key(&*t.id) || self.queued(&t.id) {
            return false;
        }
        self.users
            .entry(u.to_string())
            .or_default()
            .queue
            .push_back(t);
        true
    }

    fn next(&mut self) -> Option<Decision> {
        let total = self.total();
        let mut order: Vec<(Frac, u64, String)> = self
            .users
            .iter()
            .filter(|(_, u)| !u.queue.is_empty())
            .map(|(id, u)| (dominant_share(arr(u.alloc), total), u.running, id.clone()))
            .collect();
        order.sort();
        for (_, _, uid) in order {
            let head = self.users[&uid].queue.front().unwrap().clone();
            let d = arr(head.demand);
            let mut best: Option<(bool, Frac, std::cmp::Reverse<String>)> = None;
            for (wid, w) in &self.workers {
                let free = arr(self.free(wid));
                if !w.accepting || !le(d, free) {
                    continue;
                }
                let c = (
                    w.warm.contains(&*head.function_key),
                    headroom_after(free, arr(w.cap), d),
                    std::cmp::Reverse(wid.clone()),
                );
                if best.as_ref().is_none_or(|b| c > *b) {
                    best = Some(c);
                }
            }
            if let Some((warm, _, std::cmp::Reverse(wid))) = best {
                let u = self.users.get_mut(&uid).unwrap();
                let t = u.queue.pop_front().unwrap();
                u.alloc = u.alloc.plus(t.demand);
                u.running += 1;
                self.running.insert(
                    t.id.to_string(),
                    NaiveRun {
                        user: uid.clone(),
                        worker: wid.clone(),
                        task: t.clone(),
                        warm,
                        state: RunState::InFlight,
                        adopted: false,
                    },
                );
                return Some(Decision {
                    user: uid.into(),
                    task: t,
                    worker_id: wid.into(),
                    warm,
                });
            }
        }
        None
    }

    fn user_done(&mut self, u: &str, d: Resources) {
        let x = self.users.get_mut(u).unwrap();
        x.alloc = x.alloc.minus(d);
        x.running -= 1;
        self.gc(u);
    }

    fn release(&mut self, id: &str) -> Option<Decision> {
        let x = self.running.remove(id)?;
        let w = self.workers.get_mut(&x.worker).unwrap();
        if x.state == RunState::Reported {
            w.reported = w.reported.minus(x.task.demand);
        }
        self.user_done(&x.user, x.task.demand);
        Some(Decision {
            user: x.user.into(),
            task: x.task,
            worker_id: x.worker.into(),
            warm: x.warm,
        })
    }

    fn upsert(&mut self, id: &str, cap: Resources, warm: &[String]) {
        let w = self.workers.entry(id.to_string()).or_insert(NaiveWorker {
            cap,
            reported: Resources::default(),
            accepting: true,
            warm: BTreeSet::new(),
        });
        w.cap = cap;
        w.warm = warm.iter().cloned().collect();
    }

    fn remove(&mut self, id: &str) -> Vec<Decision> {
        if self.workers.remove(id).is_none() {
            return Vec::new();
        }
        let ids: Vec<String> = self
            .running
            .iter()
            .filter(|(_, x)| x.worker == id)
            .map(|(k, _)| k.clone())
            .collect();
        ids.iter()
            .map(|t| {
                let x = self.running.remove(t).unwrap();
                self.user_done(&x.user, x.task.demand);
                Decision {
                    user: x.user.into(),
                    task: x.task,
                    worker_id: x.worker.into(),
                    warm: x.warm,
                }
            })
            .collect()
    }

    fn report(&mut self, id: &str, allocated: Resources, listed: &[RunningTask]) {
        if !self.workers.contains_key(id) {
            return;
        }
        let mut forget = Vec::new();
        for (tid, x) in self.running.iter_mut().filter(|(_, x)| x.worker == id) {
            let on = listed.iter().any(|l| l.run_id == *tid);
            match (x.state, on) {
                (RunState::InFlight, true) | (RunState::Dropped, true) => {
                    x.state = RunState::Reported
                }
                (RunState::Reported, false) => {
                    x.state = RunState::Dropped;
                    if x.adopted {
                        forget.push(tid.clone());
                    }
                }
                _ => {}
            }
        }
        self.workers.get_mut(id).unwrap().reported = allocated;
        for l in listed {
            if !self.running.contains_key(&l.run_id) && !self.queued(&l.run_id) {
                let u = self.users.entry(l.user_id.clone()).or_default();
                u.alloc = u.alloc.plus(l.demand);
                u.running += 1;
                self.running.insert(
                    l.run_id.clone(),
                    NaiveRun {
                        user: l.user_id.clone(),
                        worker: id.to_string(),
                        task: Task::new(l.run_id.clone(), "", l.demand),
                        warm: false,
                        state: RunState::Reported,
                        adopted: true,
                    },
                );
            }
        }
        for t in forget {
            self.release(&t);
        }
    }

    fn user_stats(&self, u: &str) -> Option<UserStats> {
        self.users.get(u).map(|x| UserStats {
            allocation: x.alloc,
            running: x.running,
            pending: x.queue.len(),
        })
    }
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        user: u8,
        key: u8,
        demand: u8,
        id: u8,
    },
    Next,
    Drain,
    Release(u16),
    Upsert {
        worker: u8,
        cap: u8,
        warm: u8,
    },
    Remove(u8),
    Accepting(u8, bool),
    Report {
        worker: u8,
        mask: u16,
        extra: u8,
        ghost: Option<(u8, u8)>,
    },
}

const DEMANDS: [Resources; 6] = [
    r(500, 500, 100),
    r(1000, 250, 100),
    r(250, 1000, 0),
    r(1500, 1500, 300),
    r(100, 100, 900),
    r(3000, 200, 100),
];
const CAPS: [Resources; 5] = [
    r(2000, 2000, 1000),
    r(4000, 2000, 1000),
    r(3000, 6000, 2000),
    r(1000, 1000, 0),
    r(8000, 8000, 4000),
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..6u8, 0..4u8, 0..6u8, any::<u8>())
            .prop_map(|(user, key, demand, id)| Op::Enqueue { user, key, demand, id }),
        4 => Just(Op::Next),
        1 => Just(Op::Drain),
        3 => any::<u16>().prop_map(Op::Release),
        2 => (0..5u8, 0..5u8, any::<u8>())
            .prop_map(|(worker, cap, warm)| Op::Upsert { worker, cap, warm }),
        1 => (0..5u8).prop_map(Op::Remove),
        1 => (0..5u8, any::<bool>()).prop_map(|(w, a)| Op::Accepting(w, a)),
        2 => (0..5u8, any::<u16>(), 0..3u8, proptest::option::of((0..6u8, 0..6u8)))
            .prop_map(|(worker, mask, extra, ghost)| Op::Report { worker, mask, extra, ghost }),
    ]
}

/// User ids of the reference test: short, or sharing a prefix longer than 8 bytes so that
/// ordering ties fall through to the full id.
fn uid(u: u8, long: bool) -> String {
    if long {
        format!("tenant-0000-{u}")
    } else {
        format!("u{u}")
    }
}

fn check_same(s: &Scheduler, n: &Naive, long: bool) {
    assert_eq!(s.running_count(), n.running.len());
    assert_eq!(
        s.pending_count(),
        n.users.values().map(|u| u.queue.len()).sum::<usize>()
    );
    for u in 0..6 {
        let id = uid(u, long);
        assert_eq!(s.user_stats(&id), n.user_stats(&id), "user {id}");
    }
    for (id, w) in &n.workers {
        let st = s.worker_stats(id).expect("worker known");
        assert_eq!(st.capacity, w.cap);
        assert_eq!(st.reported, w.reported, "worker {id}");
        assert_eq!(st.in_flight, n.in_flight(id), "worker {id}");
        assert_eq!(st.accepting, w.accepting);
    }
    assert_eq!(arr(s.total_capacity()), n.total());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The indexed scheduler decides exactly like the brute-force reference, through
    /// enqueues, releases, heartbeats, capacity changes, drains and deaths.
    #[test]
            fn matches_brute_force_reference(
        ops in proptest::collection::vec(op(), 1..120),
        long in any::<bool>(),
    ) {
        let mut s = Scheduler::new();
        let mut n = Naive::default();
        let mut seq = 0u32;
        for op in ops {
            match op {
                Op::Enqueue { user, key, demand, id } => {
                    // Mostly fresh ids, sometimes a repeat of a recent one.
                    let tid = if id < 16 { format!("t{}", seq.saturating_sub(u32::from(id))) }
                        else { seq += 1; format!("t{seq}") };
                    let t = task(tid, &format!("f{key}"), DEMANDS[demand as usize]);
                                            let user = uid(user, long);
                    prop_assert_eq!(s.enqueue(&user, t.clone()).is_ok(), n.enqueue(&user, t));
                }
                Op::Next => prop_assert_eq!(s.next(), n.next()),
                Op::Drain => loop {
                    let (a, b) = (s.next(), n.next());
                    prop_assert_eq!(&a, &b);
                    if a.is_none() { break; }
                },
                Op::Release(i) => {
                    if !n.running.is_empty() {
                        let k = i as usize % n.running.len();
                        let id = n.running.keys().nth(k).unwrap().clone();
                        prop_assert_eq!(s.release(&id), n.release(&id));
                    }
                    prop_assert!(s.release("nope").is_none());
                }
                Op::Upsert { worker, cap, warm } => {
                    let keys: Vec<String> = (0..4).filter(|b| warm & (1 << b) != 0)
                        .map(|b| format!("f{b}")).collect();
                    let id = format!("w{worker}");
                    s.upsert_worker(&id, CAPS[cap as usize], &keys);
                    n.upsert(&id, CAPS[cap as usize], &keys);
                }
                Op::Remove(w) => {
                    let id = format!("w{w}");
                    prop_assert_eq!(s.remove_worker(&id), n.remove(&id));
                }
                Op::Accepting(w, a) => {
                    let id = format!("w{w}");
                    let known = n.workers.get_mut(&id).map(|x| x.accepting = a).is_some();
                    prop_assert_eq!(s.set_accepting(&id, a), known);
                }
                Op::Report { worker, mask, extra, ghost } => {
                    let id = format!("w{worker}");
                    let mut listed: Vec<RunningTask> = n.running.iter()
                        .filter(|(_, x)| x.worker == id)
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << (i % 16)) != 0)
                        .map(|(_, (tid, x))| rt(tid, &x.user, x.task.demand))
                        .collect();
                    if let Some((u, d)) = ghost {
                        let ghost = format!("ghost{d}");
                        listed.push(rt(&ghost, &uid(u, long), DEMANDS[d as usize]));
                    }
                    let allocated = listed.iter().fold(r(0, 0, 0), |a, t| a.plus(t.demand))
                        .plus(r(u64::from(extra) * 100, 0, 0));
                    let known = n.workers.contains_key(&id);
                    prop_assert_eq!(s.report_usage(&id, allocated, &listed), known);
                    n.report(&id, allocated, &listed);
                }
            }
                            check_same(&s, &n, long);
        }
    }
}
