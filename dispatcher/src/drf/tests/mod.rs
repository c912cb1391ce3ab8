//! Behaviour tests of the scheduler through its public calls; `model` checks it against a
//! brute-force reference, `fairness` checks DRF's properties on random instances.

mod fairness;
mod model;

use std::sync::Arc;

use schemas::{HeartbeatMsg, Resources, RunningTask};

use super::{Decision, EnqueueError, Scheduler, Task};

const fn r(cpu: u64, mem: u64, disk: u64) -> Resources {
    Resources::new(cpu, mem, disk)
}

fn task(id: impl Into<Arc<str>>, key: &str, demand: Resources) -> Task {
    Task::new(id, key, demand)
}

/// Schedules until nothing fits; returns the decisions.
fn drain(s: &mut Scheduler) -> Vec<Decision> {
    std::iter::from_fn(|| s.next()).collect()
}

fn running_of(s: &Scheduler, user: &str) -> u64 {
    s.user_stats(user).map_or(0, |u| u.running)
}

#[test]
fn drf_matches_paper_example() {
    // Ghodsi et al., section 4: <9 CPU, 18 GB>; A's tasks <1 CPU, 4 GB>, B's <3 CPU, 1 GB>.
    let mut s = Scheduler::new();
    s.upsert_worker("w", r(9000, 18 * 1024, 1_000_000), [] as [&str; 0]);
    for i in 0..20 {
        s.enqueue("A", task(format!("a{i}"), "fa", r(1000, 4096, 0)))
            .unwrap();
        s.enqueue("B", task(format!("b{i}"), "fb", r(3000, 1024, 0)))
            .unwrap();
    }
    let order: Vec<String> = drain(&mut s)
        .into_iter()
        .map(|d| d.user.to_string())
        .collect();
    assert_eq!(order, ["A", "B", "A", "B", "A"]);
    assert_eq!(running_of(&s, "A"), 3);
    assert_eq!(running_of(&s, "B"), 2);
    assert!((s.user_share("A") - 2.0 / 3.0).abs() < 1e-12);
    assert!((s.user_share("B") - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(s.pending_count(), 35);
}

#[test]
fn ties_go_to_fewer_running_then_smaller_id() {
    let mut s = Scheduler::new();
    s.upsert_worker("w", r(10_000, 10_000, 10_000), [] as [&str; 0]);
    for i in 0..3 {
        s.enqueue("b", task(format!("b{i}"), "f", r(2000, 2000, 2000)))
            .unwrap();
        s.enqueue("a", task(format!("a{i}"), "f", r(1000, 1000, 1000)))
            .unwrap();
    }
    let order: Vec<String> = (0..4).map(|_| s.next().unwrap().user.to_string()).collect();
    // 0 = 0: id. Then a 1/10 vs b 0. Then a 1/10 < b 2/10. Then 2/10 = 2/10 and b runs
    // fewer tasks (1 < 2).
    assert_eq!(order, ["a", "b", "a", "b"]);
}

#[test]
fn shares_of_different_resources_tie_exactly() {
    let mut s = Scheduler::new();
    s.upsert_worker("w", r(3000, 6000, 0), [] as [&str; 0]);
    s.enqueue("y", task("y1", "f", r(1000, 0, 0))).unwrap();
    s.enqueue("z", task("z1", "f", r(0, 2000, 0))).unwrap();
    assert_eq!(&*s.next().unwrap().user, "y");
    assert_eq!(&*s.next().unwrap().user, "z");
    // Both now hold exactly 1/3 with one task each: the id decides.
    s.enqueue("z", task("z2", "f", r(0, 2000, 0))).unwrap();
    s.enqueue("y", task("y2", "f", r(1000, 0, 0))).unwrap();
    assert_eq!(&*s.next().unwrap().user, "y");
}

#[test]
fn blocked_user_is_skipped_until_room_appears() {
    let mut s = Scheduler::new();
    s.upsert_worker("w", r(4000, 4000, 4000), [] as [&str; 0]);
    s.enqueue("a", task("a1", "f", r(1000, 100, 100))).unwrap();
    s.enqueue("a", task("a2", "f", r(3000, 100, 100))).unwrap();
    for i in 0..10 {
        s.enqueue("b", task(format!("b{i}"), "f", r(1000, 100, 100)))
            .unwrap();
    }
    assert_eq!(&*s.next().unwrap().task.id, "a1");
    // a (1/4) is never above b from now on, but its head needs 3000 and does not fit: b
    // runs.
    let rest: Vec<String> = drain(&mut s)
        .into_iter()
        .map(|d| d.task.id.to_string())
        .collect();
    assert_eq!(rest, ["b0", "b1", "b2"]);
    // Freeing 1000 is not enough for a2; b takes it again.
    s.release("b0").unwrap();
    assert_eq!(&*s.next().unwrap().task.id, "b3");
    assert!(s.next().is_none());
    // Freeing 3000 lets a, now the lowest share, run its big task.
    s.release("b1").unwrap();
    s.release("b2").unwrap();
    s.release("a1").unwrap();
    let d = s.next().unwrap();
    assert_eq!((d.user.as_ref(), &*d.task.id), ("a", "a2"));
    assert!(s.next().is_none());
}

#[test]
fn task_that_fits_nowhere_ever_is_reported_and_drained() {
    let mut s = Scheduler::new();
    s.upsert_worker("small", r(1000, 1000, 1000), [] as [&str; 0]);
    s.upsert_worker("big", r(8000, 8000, 8000), [] as [&str; 0]);
    assert!(s.fits_anywhere_ever(r(8000, 1, 1)));
    assert!(!s.fits_anywhere_ever(r(8001, 1, 1)));
    assert!(!s.fits_anywhere_ever(r(8000, 8000, 8001)));
    s.enqueue("a", task("huge", "f", r(6000, 6000, 6000)))
        .unwrap();
    s.enqueue("a", task("tiny", "f", r(10, 10, 10))).unwrap();
    s.remove_worker("big");
    assert!(!s.fits_anywhere_ever(r(6000, 6000, 6000)));
    assert!(s.next().is_none(), "the huge head holds the queue");
    let gone = s.drain_unrunnable();
    assert_eq!(
        gone,
        [("a".to_string(), task("huge", "f", r(6000, 6000, 6000)))]
    );
    assert_eq!(s.pending_count(), 1);
    assert_eq!(&*s.next().unwrap().task.id, "tiny");
}

#[test]
fn warm_workers_win_then_headroom_then_id() {
    let mut s = Scheduler::new();
    s.upsert_worker("big", r(16_000, 16_000, 16_000), [] as [&str; 0]);
    s.upsert_worker("warm", r(2000, 2000, 2000), ["f@1"]);
    s.enqueue("u", task("t1", "f@1", r(1000, 1000, 1000)))
        .unwrap();
    s.enqueue("u", task("t2", "f@1", r(1000, 1000, 1000)))
        .unwrap();
    s.enqueue("u", task("t3", "f@1", r(1000, 1000, 1000)))
        .unwrap();
    s.enqueue("u", task("t4", "g@1", r(1000, 1000, 1000)))
        .unwrap();
    let placed: Vec<(String, bool)> = drain(&mut s)
        .into_iter()
        .map(|d| (d.worker_id.to_string(), d.warm))
        .collect();
    assert_eq!(
        placed,
        [
            ("warm".to_string(), true),
            ("warm".to_string(), true),
            ("big".to_string(), false),
            ("big".to_string(), false),
        ]
    );

    // Cold placement: the most headroom after placement, measured per resource fraction.
    let mut s = Scheduler::new();
    s.upsert_worker("a", r(4000, 1000, 1000), [] as [&str; 0]);
    s.upsert_worker("b", r(2000, 2000, 2000), [] as [&str; 0]);
    s.enqueue("u", task("t", "f", r(500, 500, 0))).unwrap();
    // a: min(3500/4000, 500/1000) = 1/2; b: min(1500/2000, 1500/2000) = 3/4.
    assert_eq!(&*s.next().unwrap().worker_id, "b");

    // Equal headroom: the smaller id, whatever the join order.
    let mut s = Scheduler::new();
    for id in ["w3", "w1", "w2"] {
        s.upsert_worker(id, r(1000, 1000, 1000), [] as [&str; 0]);
    }
    s.enqueue("u", task("t", "f", r(100, 100, 100))).unwrap();
    assert_eq!(&*s.next().unwrap().worker_id, "w1");

    // Among warm workers, headroom decides too.
    let mut s = Scheduler::new();
    s.upsert_worker("x", r(1000, 1000, 1000), ["f"]);
    s.upsert_worker("y", r(3000, 3000, 3000), ["f"]);
    s.upsert_worker("z", r(9000, 9000, 9000), [] as [&str; 0]);
    s.enqueue("u", task("t", "f", r(500, 500, 500))).unwrap();
    let d = s.next().unwrap();
    assert_eq!((d.worker_id.as_ref(), d.warm), ("y", true));
}

#[test]
fn dead_worker_is_removed_with_its_tasks() {
    let mut s = Scheduler::new();
    s.upsert_worker("w1", r(2000, 2000, 2000), [] as [&str; 0]);
    s.upsert_worker("w2", r(2000, 2000, 2000), [] as [&str; 0]);
    for i in 0..5 {
        s.enqueue("u", task(format!("t{i}"), "f", r(1000, 1000, 1000)))
            .unwrap();
    }
    let placed = drain(&mut s);
    assert_eq!(placed.len(), 4);
    assert!((s.user_share("u") - 1.0).abs() < 1e-12);
    let lost = s.remove_worker("w1");
    let lost_ids: Vec<&str> = lost.iter().map(|d| &*d.task.id).collect();
    assert_eq!(lost_ids, ["t0", "t2"]);
    assert!(lost
        .iter()
        .all(|d| d.worker_id.as_ref() == "w1" && d.user.as_ref() == "u"));
    assert_eq!(s.total_capacity(), r(2000, 2000, 2000));
    assert_eq!(s.user_stats("u").unwrap().allocation, r(2000, 2000, 2000));
    assert_eq!(s.running_count(), 2);
    assert!(s.worker_stats("w1").is_none());
    assert!(s.next().is_none(), "w2 is full and w1 is gone");
    assert!(s.remove_worker("w1").is_empty());
    s.release("t1").unwrap();
    assert_eq!(&*s.next().unwrap().worker_id, "w2");
    // A release of a task lost with its worker is unknown now.
    assert!(s.release("t0").is_none());
}

#[test]
fn release_frees_user_and_worker() {
    let mut s = Scheduler::new();
    s.upsert_worker("w", r(1000, 1000, 1000), [] as [&str; 0]);
    s.enqueue("u", task("t1", "f", r(600, 600, 600))).unwrap();
    s.enqueue("v", task("t2", "f", r(600, 600, 600))).unwrap();
    assert_eq!(&*s.next().unwrap().task.id, "t1");
    assert!(s.next().is_none());
    assert_eq!(s.worker_stats("w").unwrap().in_flight, r(600, 600, 600));
    let rel = s.release("t1").unwrap();
    assert_eq!((rel.user.as_ref(), rel.worker_id.as_ref()), ("u", "w"));
    assert!(s.release("t1").is_none());
    assert!(s.user_stats("u").is_none(), "an idle user is forgotten");
    assert_eq!(
        s.worker_stats("w").unwrap().allocated(),
        Resources::default()
    );
    assert_eq!(&*s.next().unwrap().task.id, "t2");
    assert_eq!(s.user_share("v"), 0.6);
}

#[test]
fn duplicate_task_ids_are_refused() {
    let mut s = Scheduler::new();
    s.upsert_worker("w", r(1000, 1000, 1000), [] as [&str; 0]);
    s.enqueue("u", task("t", "f", r(1, 1, 1))).unwrap();
    assert_eq!(
        s.enqueue("v", task("t", "f", r(1, 1, 1))),
        Err(EnqueueError::DuplicateTaskId("t".into()))
    );
    s.next().unwrap();
    assert!(s.enqueue("u", task("t", "f", r(1, 1, 1))).is_err());
    s.release("t").unwrap();
    s.enqueue("u", task("t", "f", r(1, 1, 1))).unwrap();
}

#[test]
fn non_accepting_worker_gets_nothing_and_leaves_the_total() {
    let mut s = Scheduler::new();
    s.upsert_worker("a", r(1000, 1000, 1000), [] as [&str; 0]);
    s.upsert_worker("b", r(1000, 1000, 1000), [] as [&str; 0]);
    assert!(s.set_accepting("a", false));
    assert!(!s.set_accepting("nope", false));
    assert_eq!(s.total_capacity(), r(1000, 1000, 1000));
    for i in 0..3 {
        s.enqueue("u", task(format!("t{i}"), "f", r(1000, 1000, 1000)))
            .unwrap();
    }
    assert_eq!(&*s.next().unwrap().worker_id, "b");
    assert!(s.next().is_none());
    s.set_accepting("a", true);
    assert_eq!(&*s.next().unwrap().worker_id, "a");
}

fn rt(id: &str, user: &str, demand: Resources) -> RunningTask {
    RunningTask {
        run_id: id.into(),
        user_id: user.into(),
        demand,
        function_id: String::new(),
    }
}

#[test]
fn heartbeats_reconcile_in_flight_reported_and_dropped() {
    let d = r(100, 100, 100);
    let mut s = Scheduler::new();
    s.upsert_worker("w", r(1000, 1000, 1000), [] as [&str; 0]);
    for i in 0..3 {
        s.enqueue("u", task(format!("t{i}"), "f", d)).unwrap();
    }
    drain(&mut s);
    let st = s.worker_stats("w").unwrap();
    assert_eq!((st.reported, st.in_flight), (r(0, 0, 0), r(300, 300, 300)));

    // The worker started t0 and t1; t2 is still in its queue. Its own 50 are overhead.
    s.report_usage("w", r(250, 250, 250), &[rt("t0", "u", d), rt("t1", "u", d)]);
    let st = s.worker_stats("w").unwrap();
    assert_eq!((st.reported, st.in_flight), (r(250, 250, 250), d));

    // t0 finished; the next beat no longer lists it before its result arrives.
    s.report_usage("w", r(150, 150, 150), &[rt("t1", "u", d)]);
    assert_eq!(s.worker_stats("w").unwrap().allocated(), r(250, 250, 250));
    s.release("t0").unwrap();
    assert_eq!(s.worker_stats("w").unwrap().allocated(), r(250, 250, 250));
    // t1's result arrives before the beat that drops it: taken off the report right away.
    s.release("t1").unwrap();
    assert_eq!(s.worker_stats("w").unwrap().allocated(), r(150, 150, 150));
    // t2 ran and finished between two beats: never reported, released from in flight.
    s.release("t2").unwrap();
    assert_eq!(s.worker_stats("w").unwrap().allocated(), r(50, 50, 50));
    assert_eq!(s.running_count(), 0);
}

#[test]
fn heartbeats_adopt_unknown_tasks_until_they_stop_listing_them() {
    let mut s = Scheduler::new();
    let hb = HeartbeatMsg {
        v: 1,
        worker_id: "w".into(),
        seq: 1,
        sent_at_ms: 0,
        interval_ms: 1000,
        capacity: r(1000, 1000, 1000),
        allocated: r(500, 500, 500),
        running: vec![rt("old", "x", r(500, 500, 500))],
        warm: vec!["f".into()],
        accepting: true,
        epoch: 1,
    };
    s.apply_heartbeat(&hb);
    assert_eq!(s.running_count(), 1);
    assert_eq!(s.user_stats("x").unwrap().allocation, r(500, 500, 500));
    assert_eq!(s.worker_stats("w").unwrap().allocated(), r(500, 500, 500));
    // x already holds half the cluster: y goes first, on the warm worker.
    s.enqueue("x", task("x1", "f", r(100, 100, 100))).unwrap();
    s.enqueue("y", task("y1", "f", r(100, 100, 100))).unwrap();
    let d = s.next().unwrap();
    assert_eq!((d.user.as_ref(), d.warm), ("y", true));
    // The adopted task ended: forgotten with the beat that stops listing it.
    let hb2 = HeartbeatMsg {
        seq: 2,
        allocated: r(100, 100, 100),
        running: vec![rt("y1", "y", r(100, 100, 100))],
        ..hb
    };
    s.apply_heartbeat(&hb2);
    assert_eq!(s.running_count(), 1);
    assert_eq!(s.user_stats("x").unwrap().allocation, Resources::default());
    assert!(s.release("old").is_none());
    assert_eq!(s.worker_stats("w").unwrap().allocated(), r(100, 100, 100));
    // Draining: nothing new.
    s.apply_heartbeat(&HeartbeatMsg {
        seq: 3,
        accepting: false,
        ..hb2
    });
    assert!(s.next().is_none());
    assert_eq!(s.total_capacity(), Resources::default());
}

#[test]
fn capacity_change_and_new_worker_unblock() {
    let mut s = Scheduler::new();
    s.upsert_worker("w", r(1000, 1000, 1000), [] as [&str; 0]);
    s.enqueue("u", task("big", "f", r(2000, 100, 100))).unwrap();
    assert!(s.next().is_none());
    s.upsert_worker("w", r(2000, 1000, 1000), [] as [&str; 0]);
    assert_eq!(&*s.next().unwrap().task.id, "big");
    s.enqueue("u", task("big2", "f", r(2000, 100, 100)))
        .unwrap();
    assert!(s.next().is_none());
    s.upsert_worker("v", r(4000, 4000, 4000), ["f"]);
    let d = s.next().unwrap();
    assert_eq!((&*d.task.id, d.worker_id.as_ref()), ("big2", "v"));
}
