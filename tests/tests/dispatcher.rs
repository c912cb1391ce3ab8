//! The dispatcher against real ZooKeeper, RabbitMQ, MongoDB and Docker workers: the pipeline,
//! failover without loss, dead workers, fairness, malformed input and impossible demands.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use schemas::{InvocationMsg, Resources, ResultMsg, RunStatus, Runtime};
use tests::{eventually, Sandbox};

const ECHO: &str = "def handle(e, c):\n    return e\n";

async fn echo(sb: &Sandbox, reply_to: &str) -> InvocationMsg {
    let mut inv = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", ECHO)
        .await;
    inv.reply_to = Some(reply_to.to_owned());
    inv
}

fn fresh(inv: &InvocationMsg, n: u64) -> InvocationMsg {
    let mut i = inv.clone();
    i.run_id = uuid::Uuid::now_v7().to_string();
    i.args = serde_json::json!({ "n": n });
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_flow_through_the_leader_to_a_worker() {
    let mut sb = Sandbox::new("pipeline").await;
    let w = sb.start_worker(&[]).await;
    let d = sb.start_dispatcher(&[]).await;
    let mut replies = sb.reply_queue().await;
    let inv = echo(&sb, &replies.name).await;
    for n in 0..20 {
        sb.publish_invocation(&fresh(&inv, n)).await;
    }
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let r = replies
            .next(Duration::from_secs(60))
            .await
            .expect("a result");
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        assert!(r.epoch >= 1, "tasks carry the leader's epoch");
        seen.insert(r.result.unwrap()["n"].as_u64().unwrap());
    }
    assert_eq!(seen.len(), 20);

    // Malformed invocations are dead-lettered; the leader goes on.
    sb.publish_raw(
        &sb.names.invocations_queue(),
        b"\xff not json",
        "invocation",
    )
    .await;
    let dlq = sb.names.dead_letter_queue();
    eventually(
        Duration::from_secs(10),
        "the malformed invocation is dead-lettered",
        || async { (sb.queue_len(&dlq).await == 1).then_some(()) },
    )
    .await;

    // A demand no worker can ever hold fails fast with a clear error.
    let mut huge = fresh(&inv, 99);
    huge.resources = Resources::new(500, 1_000_000, 64);
    let t0 = Instant::now();
    sb.publish_invocation(&huge).await;
    let r = replies
        .next(Duration::from_secs(10))
        .await
        .expect("a fast failure");
    assert_eq!(r.run_id, huge.run_id);
    assert_eq!(r.status, RunStatus::Failed);
    let e = r.error.unwrap();
    assert_eq!(e.code, "platform_no_capacity");
    assert!(e.message.contains("1000000 MB"), "{e:?}");
    assert_eq!(r.billed_micros, 0);
    assert!(t0.elapsed() < Duration::from_secs(5));

    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_nothing_and_runs_nothing_twice() {
    let mut sb = Sandbox::new("failover").await;
    let w = sb.start_worker(&[]).await;
    let fast = [("DISPATCHER_ZK_SESSION_TIMEOUT", "2s")];
    // d1 wins the election before d2 joins.
    let mut d1 = sb.spawn_dispatcher("d1", &fast, true).await;
    let mut d2 = sb.spawn_dispatcher("d2", &fast, false).await;

    let mut replies = sb.reply_queue().await;
    let inv = echo(&sb, &replies.name).await;
    let total = 200u64;
    let mut results: HashMap<u64, u32> = HashMap::new();
    let mut killed_at = None;
    let mut first_after_kill = None;
    for n in 0..total {
        sb.publish_invocation(&fresh(&inv, n)).await;
        if n == 60 {
            tests::signal(&d1, "KILL");
            killed_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while (results.len() as u64) < total {
        let r = replies
            .next(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("lost invocations: {} of {total} came back", results.len()));
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        if r.epoch > 1 && first_after_kill.is_none() {
            first_after_kill = Some(Instant::now());
        }
        *results
            .entry(r.result.unwrap()["n"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert!(
        replies.next(Duration::from_secs(2)).await.is_none(),
        "an invocation ran twice"
    );
    assert!(results.values().all(|&c| c == 1));
    let took = first_after_kill.expect("the standby dispatched") - killed_at.unwrap();
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    let _ = d1.wait();
    tests::signal(&d2, "TERM");
    let _ = d2.wait();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_queued_tasks_run_elsewhere() {
    let mut sb = Sandbox::new("deadworker").await;
    // Worker A is a real process we can kill; it is small so work spreads.
    let a_id = format!("wa{}", tests::rand_id());
    let a_dir = std::env::temp_dir().join("colorfaas-tests").join(&a_id);
    let mut a = sb.spawn_binary(
        "worker",
        &[
            ("WORKER_ID", &a_id),
            ("WORKER_DIR", &a_dir.to_string_lossy()),
            ("WORKER_ADDR", "127.0.0.1:0"),
            ("WORKER_HEARTBEAT", "300ms"),
            ("WORKER_MEMORY_MB", "512"),
        ],
    );
    let b = sb
        .start_worker(&[("WORKER_HEARTBEAT", "300ms"), ("WORKER_MEMORY_MB", "512")])
        .await;
    let d = sb.start_dispatcher(&[]).await;
    let mut replies = sb.reply_queue().await;
    let mut inv = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "import time\ndef handle(e, c):\n    time.sleep(0.3)\n    return e\n",
        )
        .await;
    inv.reply_to = Some(replies.name.clone());
    let a_queue = sb.names.worker_queue(&a_id);
    eventually(Duration::from_secs(30), "worker A is up", || async {
        (sb.queue_info(&a_queue).await?.consumer_count() > 0).then_some(())
    })
    .await;
    let total = 24u64;
    for n in 0..total {
        sb.publish_invocation(&fresh(&inv, n)).await;
    }
    // Kill A once it is running tasks (its first result is in), while it still holds more.
    // Each task's executions, told apart by worker and start time: a result may come twice
    // (a task A finished but did not ack is taken back, and its stored result is sent again,
    // which the caller drops), but one run must not be executed twice.
    let mut got: HashMap<u64, HashSet<(String, i64)>> = HashMap::new();
    let record = |r: ResultMsg, got: &mut HashMap<u64, HashSet<(String, i64)>>| {
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        let started = r.started_at_ms.expect("a worker run has a start");
        got.entry(r.result.unwrap()["n"].as_u64().unwrap())
            .or_default()
            .insert((r.worker_id, started));
    };
    loop {
        let r = replies
            .next(Duration::from_secs(60))
            .await
            .expect("worker A runs tasks");
        let from_a = r.worker_id == a_id;
        record(r, &mut got);
        if from_a {
            break;
        }
    }
    tests::signal(&a, "KILL");
    let _ = a.wait();
    while (got.len() as u64) < total {
        let r = replies
            .next(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("lost tasks: {} of {total} came back", got.len()));
        record(r, &mut got);
    }
    while let Some(r) = replies.next(Duration::from_secs(2)).await {
        record(r, &mut got);
    }
    assert!(
        got.values().all(|e| e.len() == 1),
        "a task ran twice: {got:?}"
    );
    // A held tasks when it died, and the dispatcher took them back.
    let requeued = tests::metric(&d.addr, "colorfaas_dispatcher_requeued_total").await;
    assert!(requeued > 0.0, "the dead worker held no tasks to take back");
    // Clean up what the killed worker left.
    let docker = bollard::Docker::connect_with_defaults().unwrap();
    for c in sb.containers_of(&a_id).await {
        let _ = docker
            .remove_container(
                &c.id.unwrap(),
                Some(bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
    d.stop().await.unwrap();
    b.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flooding_users_converge_to_the_drf_allocation() {
    let mut sb = Sandbox::new("drf").await;
    // One worker: 4 vCPU, 2 GB. User A: <1 vCPU, 128 MB>; user B: <250 m, 512 MB>.
    // DRF: A gets x tasks, B gets y with x/4 = y/4 (dominant shares equal: cpu for A, mem for B)
    // and x*1000 + y*250 <= 4000, x*128 + y*512 <= 2048 → x = 3, y = 3.
    let w = sb
        .start_worker(&[
            ("WORKER_CPU_MILLICORES", "4000"),
            ("WORKER_MEMORY_MB", "2048"),
            ("WORKER_HEARTBEAT", "200ms"),
        ])
        .await;
    let mut replies = sb.reply_queue().await;
    let src = "import time\ndef handle(e, c):\n    time.sleep(0.8)\n    return e\n";
    let mut a = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", src)
        .await;
    a.user_id = "user-a".into();
    a.resources = Resources::new(1000, 128, 16);
    a.reply_to = Some(replies.name.clone());
    let mut b = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            &format!("{src}# b\n"),
        )
        .await;
    b.user_id = "user-b".into();
    b.resources = Resources::new(250, 512, 16);
    b.reply_to = Some(replies.name.clone());
    // All of A's invocations are queued before any of B's: a first-come scheduler would run
    // A's 30 first; DRF interleaves the two users from the start.
    let per_user = 30u64;
    for n in 0..per_user {
        sb.publish_invocation(&fresh(&a, n)).await;
    }
    for n in 0..per_user {
        sb.publish_invocation(&fresh(&b, n)).await;
    }
    // The dispatcher starts with the whole backlog queued, so what it runs first is its choice.
    let d = sb.start_dispatcher(&[]).await;
    // While both users have work queued, the completion rates are the running shares: 3
    // tasks each of equal duration → equal counts. The first completions (cold starts) and the
    // tail (one user may run out first) are left out of the window. A first-come scheduler
    // gives A 24 of the 30; a 4-to-2 split of the slots gives A 20.
    let window = 7..=6 + per_user;
    let mut done = 0;
    let mut counts: HashMap<String, u64> = HashMap::new();
    while done < 2 * per_user {
        let r = replies
            .next(Duration::from_secs(60))
            .await
            .expect("results keep coming");
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        done += 1;
        if window.contains(&done) {
            *counts.entry(r.user_id.clone()).or_default() += 1;
        }
    }
    let ca = counts.get("user-a").copied().unwrap_or(0);
    let cb = counts.get("user-b").copied().unwrap_or(0);
    eprintln!("completions in the window: A {ca}, B {cb}");
    assert_eq!(
        ca + cb,
        per_user,
        "every completion in the window is counted"
    );
    assert!(
        (11..=19).contains(&ca),
        "completions in the window: A {ca} vs B {cb}"
    );
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_cannot_dispatch_after_its_session_expired() {
    let mut sb = Sandbox::new("fencing").await;
    let w = sb.start_worker(&[("WORKER_MEMORY_MB", "256")]).await;
    // d1's AMQP connection outlives its pause (long AMQP heartbeat), so it still holds its
    // invocations when it wakes up: only fencing can stop what it sends then.
    let amqp_long = format!("{}?heartbeat=120", tests::AMQP_URL);
    let mut d1 = sb
        .spawn_dispatcher(
            "d1",
            &[
                ("DISPATCHER_ZK_SESSION_TIMEOUT", "2s"),
                ("AMQP_URL", &amqp_long),
            ],
            true,
        )
        .await;
    let mut d2 = sb
        .spawn_dispatcher("d2", &[("DISPATCHER_ZK_SESSION_TIMEOUT", "2s")], false)
        .await;
    let mut replies = sb.reply_queue().await;
    let mut inv = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "import time\ndef handle(e, c):\n    time.sleep(1)\n    return e\n",
        )
        .await;
    inv.reply_to = Some(replies.name.clone());
    // 2 run at a time on the worker; d1 holds the rest.
    let total = 8u64;
    for n in 0..total {
        sb.publish_invocation(&fresh(&inv, n)).await;
    }
    // d1 has taken every invocation off the queue (2 dispatched, the rest held).
    let queue = sb.names.invocations_queue();
    tests::eventually(
        Duration::from_secs(30),
        "d1 holds the invocations",
        || async {
            let q = sb.queue_info(&queue).await?;
            (q.message_count() == 0).then_some(())
        },
    )
    .await;
    tests::signal(&d1, "STOP");
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    tests::signal(&d1, "CONT");
    let resumed_ms = schemas::now_ms();
    let mut counts: HashMap<u64, u32> = HashMap::new();
    // Epochs of the runs that started after d1 woke up. d1 still held most invocations then
    // (its AMQP connection outlived the pause, so nobody else could take them): at least one
    // run starts after it resumed, and none of those may carry d1's stale epoch.
    let mut after: Vec<u64> = Vec::new();
    while (counts.len() as u64) < total {
        let r = replies
            .next(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("lost invocations: {} of {total}", counts.len()));
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        if r.started_at_ms.expect("a worker run has a start") >= resumed_ms {
            after.push(r.epoch);
        }
        *counts
            .entry(r.result.unwrap()["n"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert!(
        replies.next(Duration::from_secs(2)).await.is_none(),
        "an invocation ran twice"
    );
    assert!(counts.values().all(|&c| c == 1));
    assert!(
        !after.is_empty(),
        "no run started after the paused leader woke up"
    );
    assert!(
        after.iter().all(|&e| e > 1),
        "a task of the paused leader ran: epochs {after:?}"
    );
    assert!(stopped.elapsed() > Duration::from_secs(5));
    tests::signal(&d1, "TERM");
    tests::signal(&d2, "TERM");
    let _ = d1.wait();
    let _ = d2.wait();
    w.stop().await.unwrap();
    sb.cleanup().await;
}
