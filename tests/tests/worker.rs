//! The worker against real RabbitMQ, MongoDB and Docker: runtimes, failures, limits, warm
//! containers, LRU eviction, duplicates, dead letters and cleanup.

use std::time::{Duration, Instant};

use schemas::{BillState, RunDoc, RunStatus, Runtime};
use tests::{eventually, run_doc, Sandbox};

const ADDER_PY: &str = r#"
import json
calls = 0
def handle(event, context):
    global calls
    calls += 1
    print("adding", event["a"], event["b"])
    return {"sum": event["a"] + event["b"], "run_id": context.run_id, "calls": calls}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_run_and_return_and_the_second_call_is_warm() {
    let mut sb = Sandbox::new("runtimes").await;
    let w = sb.start_worker(&[]).await;

    let mut inv = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", ADDER_PY)
        .await;
    inv.args = serde_json::json!({"a": 2, "b": 3});
    let r = sb.run_task(&w.id, inv.clone()).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.result.as_ref().unwrap()["sum"], 5);
    assert_eq!(r.result.as_ref().unwrap()["run_id"], inv.run_id.as_str());
    assert!(r.cold_start);
    assert!(r.logs.contains("adding 2 3"), "logs: {:?}", r.logs);
    assert!(r.billed_micros >= 1);

    // Warm: same container, the module stays loaded (its counter goes on).
    inv.run_id = uuid::Uuid::now_v7().to_string();
    let r2 = sb.run_task(&w.id, inv.clone()).await;
    assert_eq!(r2.status, RunStatus::Succeeded);
    assert!(!r2.cold_start, "second call must be warm");
    assert_eq!(r2.result.as_ref().unwrap()["calls"], 2);

    let node = sb
        .invocation(
            Runtime::Node,
            "index.js",
            "index.handle",
            "exports.handle = async (event, ctx) => { console.log('hi from node'); return {hello: event.name, fn: ctx.function}; };",
        )
        .await;
    let mut node = node;
    node.args = serde_json::json!({"name": "color"});
    let r = sb.run_task(&w.id, node).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(
        r.result.unwrap(),
        serde_json::json!({"hello": "color", "fn": "fn"})
    );
    assert!(r.logs.contains("hi from node"));

    let mut exec = sb
        .invocation(
            Runtime::Exec,
            "run.sh",
            "run.sh",
            "#!/bin/sh\nread -r x\necho \"log line\" >&2\necho \"{\\\"got\\\": $x}\"\n",
        )
        .await;
    exec.args = serde_json::json!({"n": 7});
    let r = sb.run_task(&w.id, exec.clone()).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.result.unwrap(), serde_json::json!({"got": {"n": 7}}));
    assert!(r.logs.contains("log line"));

    // The run records reach MongoDB (written in batches).
    let runs = sb
        .db
        .collection::<RunDoc>(schemas::names::collections::RUNS);
    let id = inv.run_id.clone();
    let doc = eventually(
        Duration::from_secs(10),
        "the run record is final",
        || async {
            runs.find_one(bson::doc! {"_id": &id})
                .await
                .ok()
                .flatten()
                .filter(|d| d.status == RunStatus::Succeeded)
        },
    )
    .await;
    assert!(!doc.cold_start);
    assert_eq!(doc.bill_state, BillState::Unbilled);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(doc.result_json.as_deref().unwrap()).unwrap()
            ["sum"],
        5
    );

    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_clearly() {
    let mut sb = Sandbox::new("failures").await;
    let w = sb.start_worker(&[]).await;

    let boom = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "def handle(e, c):\n    raise ValueError('bad input')\n",
        )
        .await;
    let r = sb.run_task(&w.id, boom).await;
    assert_eq!(r.status, RunStatus::Failed);
    let e = r.error.unwrap();
    assert_eq!(e.code, "function_error");
    assert!(e.message.contains("ValueError: bad input"), "{e:?}");
    assert!(r.billed_micros > 0, "function errors are billed");

    let missing = sb
        .invocation(Runtime::Python3, "main.py", "main.nope", "x = 1\n")
        .await;
    let r = sb.run_task(&w.id, missing).await;
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.error.unwrap().code, "function_load_error");

    let exit = sb
        .invocation(
            Runtime::Exec,
            "run.sh",
            "run.sh",
            "#!/bin/sh\necho oops >&2\nexit 3\n",
        )
        .await;
    let r = sb.run_task(&w.id, exit).await;
    assert_eq!(r.status, RunStatus::Failed);
    let e = r.error.unwrap();
    assert_eq!(e.code, "function_exit");
    assert!(e.message.contains('3'), "{e:?}");
    assert!(r.logs.contains("oops"));

    // Timeout: ends timed_out within timeout + 1 s, and the container is replaced.
    let mut slow = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "import time\ndef handle(e, c):\n    time.sleep(30)\n",
        )
        .await;
    slow.timeout_ms = 1000;
    // Accepted as the gateway accepts it; the worker marks it running once it has run 100 ms
    // (a run that ends sooner is only written when it ends).
    let mut pending = run_doc(&slow.user_id, RunStatus::Pending, 0);
    pending.id = slow.run_id.clone();
    sb.store_runs(&[pending]).await;
    let runs = sb
        .db
        .collection::<RunDoc>(schemas::names::collections::RUNS);
    let t0 = Instant::now();
    let (r, running) = tokio::join!(sb.run_task(&w.id, slow.clone()), async {
        eventually(
            Duration::from_secs(5),
            "the slow run is marked running",
            || async {
                runs.find_one(bson::doc! {"_id": &slow.run_id})
                    .await
                    .ok()
                    .flatten()
                    .filter(|d| d.status == RunStatus::Running)
            },
        )
        .await
    });
    let took = t0.elapsed();
    assert_eq!(running.worker_id.as_deref(), Some(w.id.as_str()));
    assert!(running.started_at_ms.is_some());
    assert_eq!(r.status, RunStatus::TimedOut, "{r:?}");
    assert_eq!(r.error.unwrap().code, "timeout");
    assert!(
        took < Duration::from_millis(2000) + Duration::from_millis(800),
        "took {took:?}"
    );
    slow.run_id = uuid::Uuid::now_v7().to_string();
    slow.timeout_ms = 1000;
    let r = sb.run_task(&w.id, slow).await;
    assert!(r.cold_start, "a timed-out container is not reused");

    // Memory hog: killed by the memory limit, reported as out of memory.
    let mut hog = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "def handle(e, c):\n    blocks = []\n    for i in range(64):\n        blocks.append('x' * (16 * 1024 * 1024))\n    return len(blocks)\n",
        )
        .await;
    hog.resources.memory_mb = 64;
    let r = sb.run_task(&w.id, hog).await;
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.code, "out_of_memory", "{e:?}");
    assert!(e.message.contains("64 MB"), "{e:?}");

    // Huge logs are capped to their last 64 KiB.
    let chatty = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", "def handle(e, c):\n    for i in range(20000):\n        print('line', i)\n    return 1\n")
        .await;
    let r = sb.run_task(&w.id, chatty).await;
    assert_eq!(r.status, RunStatus::Succeeded);
    assert!(
        r.logs.len() <= 64 * 1024 + 32,
        "{} bytes of logs",
        r.logs.len()
    );
    assert!(r.logs.contains("line 19999"));

    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_contains_fork_bombs_and_has_no_network() {
    let mut sb = Sandbox::new("sandbox").await;
    let w = sb.start_worker(&[]).await;

    let net = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            r#"
import socket
def handle(e, c):
    names = [n for _, n in socket.if_nameindex()]
    try:
        socket.create_connection(("192.0.2.1", 80), timeout=2)
        reached = True
    except OSError as err:
        reached = str(err)
    return {"interfaces": names, "reached": reached}
"#,
        )
        .await;
    let r = sb.run_task(&w.id, net).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    let v = r.result.unwrap();
    assert_eq!(v["interfaces"], serde_json::json!(["lo"]), "{v}");
    assert_ne!(v["reached"], serde_json::json!(true), "{v}");

    // Root filesystem is read-only and the user is not root.
    let who = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "import os\ndef handle(e, c):\n    try:\n        open('/etc/x', 'w')\n        ro = False\n    except OSError:\n        ro = True\n    open('/tmp/scratch', 'w').write('ok')\n    return {'uid': os.getuid(), 'ro': ro}\n",
        )
        .await;
    let r = sb.run_task(&w.id, who).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(
        r.result.unwrap(),
        serde_json::json!({"uid": 10001, "ro": true})
    );

    let mut bomb = sb
        .invocation(
            Runtime::Exec,
            "bomb.sh",
            "bomb.sh",
            "#!/bin/sh\nbomb() { bomb | bomb & }\nbomb\nsleep 5\n",
        )
        .await;
    bomb.timeout_ms = 3000;
    let r = sb.run_task(&w.id, bomb).await;
    assert_ne!(r.status, RunStatus::Succeeded, "{r:?}");

    // The worker is unharmed.
    let ok = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "def handle(e, c):\n    return 'alive'\n",
        )
        .await;
    let r = sb.run_task(&w.id, ok).await;
    assert_eq!(r.result.unwrap(), "alive");

    let id = w.id.clone();
    w.stop().await.unwrap();
    assert!(
        sb.containers_of(&id).await.is_empty(),
        "containers left after shutdown"
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_eviction_removes_the_least_recently_used_container() {
    let mut sb = Sandbox::new("lru").await;
    let w = sb.start_worker(&[("WORKER_MEMORY_MB", "256")]).await;
    let src = |tag: &str| format!("def handle(e, c):\n    return '{tag}'\n");
    let a = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", &src("a"))
        .await;
    let b = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", &src("b"))
        .await;
    let c = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", &src("c"))
        .await;
    let again = |inv: &schemas::InvocationMsg| {
        let mut i = inv.clone();
        i.run_id = uuid::Uuid::now_v7().to_string();
        i
    };
    assert!(sb.run_task(&w.id, a.clone()).await.cold_start);
    assert!(sb.run_task(&w.id, b.clone()).await.cold_start);
    assert!(!sb.run_task(&w.id, again(&a)).await.cold_start, "a is warm");
    // c needs room: b is the least recently used and goes.
    assert!(sb.run_task(&w.id, c.clone()).await.cold_start);
    let key_of = |i: &schemas::InvocationMsg| i.function_key();
    let (ka, kb, kc) = (key_of(&a), key_of(&b), key_of(&c));
    let wid = w.id.clone();
    eventually(
        Duration::from_secs(10),
        "b's container is removed",
        || async {
            let keys: Vec<String> = sb
                .containers_of(&wid)
                .await
                .into_iter()
                .filter_map(|c| {
                    c.labels
                        .and_then(|l| l.get(worker::docker::LABEL_FUNCTION).cloned())
                })
                .collect();
            (keys.len() == 2 && keys.contains(&ka) && keys.contains(&kc) && !keys.contains(&kb))
                .then_some(())
        },
    )
    .await;
    assert!(
        !sb.run_task(&w.id, again(&a)).await.cold_start,
        "a survived"
    );
    w.stop().await.unwrap();
    assert!(sb.containers_of(&wid).await.is_empty());
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_run_once_and_malformed_tasks_are_dead_lettered() {
    let mut sb = Sandbox::new("dups").await;
    let w = sb.start_worker(&[]).await;

    // Garbage first: dead-lettered, the worker keeps going.
    let q = sb.names.worker_queue(&w.id);
    sb.publish_raw(&q, b"{not json", "task").await;
    sb.publish_raw(&q, br#"{"v": 1, "epoch": 1}"#, "task").await;
    let dlq = sb.names.dead_letter_queue();
    eventually(
        Duration::from_secs(10),
        "two messages are dead-lettered",
        || async { (sb.queue_len(&dlq).await == 2).then_some(()) },
    )
    .await;

    let mut replies = sb.reply_queue().await;
    let mut inv = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "def handle(e, c):\n    return c.run_id\n",
        )
        .await;
    inv.reply_to = Some(replies.name.clone());
    sb.send_task(&w.id, &inv, 1).await;
    sb.send_task(&w.id, &inv, 1).await;
    let first = replies
        .next(Duration::from_secs(30))
        .await
        .expect("one result");
    assert_eq!(first.result.unwrap(), inv.run_id.as_str());
    assert!(
        replies.next(Duration::from_secs(2)).await.is_none(),
        "the duplicate ran"
    );

    // Fencing: after epoch 5, a task stamped 4 is not run; its invocation goes back to the
    // invocations queue for the current leader.
    let mut newer = inv.clone();
    newer.run_id = uuid::Uuid::now_v7().to_string();
    sb.send_task(&w.id, &newer, 5).await;
    assert!(replies.next(Duration::from_secs(30)).await.is_some());
    let mut stale = inv.clone();
    stale.run_id = uuid::Uuid::now_v7().to_string();
    sb.send_task(&w.id, &stale, 4).await;
    assert!(
        replies.next(Duration::from_secs(2)).await.is_none(),
        "a stale leader's task ran"
    );
    let invq = sb.names.invocations_queue();
    eventually(
        Duration::from_secs(5),
        "the fenced invocation is back in the invocations queue",
        || async { (sb.queue_len(&invq).await == 1).then_some(()) },
    )
    .await;

    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_reaps_what_a_crashed_one_left() {
    let mut sb = Sandbox::new("reap").await;
    let id = format!("w{}", tests::rand_id());
    let dir = std::env::temp_dir().join("colorfaas-tests").join(&id);
    // A real crash: a worker process killed with SIGKILL leaves its container behind and its
    // AMQP connection dies with it (an aborted in-process task would leave helper tasks alive).
    let mut crashed = sb.spawn_binary(
        "worker",
        &[
            ("WORKER_ID", &id),
            ("WORKER_DIR", &dir.to_string_lossy()),
            ("WORKER_HEARTBEAT", "200ms"),
            ("WORKER_ADDR", "127.0.0.1:0"),
        ],
    );
    let queue = sb.names.worker_queue(&id);
    eventually(
        Duration::from_secs(30),
        "the first worker consumes its queue",
        || async { (sb.queue_info(&queue).await?.consumer_count() > 0).then_some(()) },
    )
    .await;
    let inv = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "def handle(e, c):\n    return 1\n",
        )
        .await;
    sb.run_task(&id, inv).await;
    // With the default settings: a spare per runtime at start; the run took the python3 one
    // and the worker starts another. Spares and the function's container are all left.
    eventually(
        Duration::from_secs(30),
        "the function's container and three spares",
        || async { (sb.containers_of(&id).await.len() == 4).then_some(()) },
    )
    .await;
    tests::signal(&crashed, "KILL");
    crashed.wait().unwrap();
    eventually(
        Duration::from_secs(10),
        "the crashed worker's consumer is gone",
        || async { (sb.queue_info(&queue).await?.consumer_count() == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        sb.containers_of(&id).await.len(),
        4,
        "the crash left its containers"
    );
    // A kill right after the reply can beat the worker's ack: the task would then be
    // delivered again (at least once) and start a container on the new worker. Redelivery is
    // not what this test is about.
    sb.purge(&queue).await;
    // The new worker reaps before it consumes, and start_worker returns once it consumes.
    let w2 = sb.start_worker(&[("WORKER_ID", &id)]).await;
    assert!(
        sb.containers_of(&id).await.is_empty(),
        "the new worker consumed before reaping what the crashed one left"
    );
    w2.stop().await.unwrap();
    sb.cleanup().await;
}

/// One figure from a component's `/metrics`.
async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_containers_take_cold_starts_and_only_ever_hold_one_function() {
    let mut sb = Sandbox::new("spares").await;
    let w = sb
        .start_worker(&[
            ("WORKER_SPARES", "1"),
            ("WORKER_PREWARM", "python3,node"),
            ("WORKER_MEMORY_MB", "512"),
        ])
        .await;
    let wid = w.id.clone();
    let labels = |cs: Vec<bollard::models::ContainerSummary>| -> Vec<String> {
        cs.into_iter()
            .filter_map(|c| {
                c.labels
                    .and_then(|l| l.get(worker::docker::LABEL_FUNCTION).cloned())
            })
            .collect()
    };
    eventually(
        Duration::from_secs(30),
        "a python3 and a node spare are ready",
        || async {
            let ls = labels(sb.containers_of(&wid).await);
            (metric(w.addr, "colorfaas_worker_spare_containers").await == 2.0
                && ls.iter().any(|l| l.starts_with("spare/python3/"))
                && ls.iter().any(|l| l.starts_with("spare/node/")))
            .then_some(())
        },
    )
    .await;

    // A new function takes the python3 spare: its code, its module-load output, nothing else.
    let src = "import os\nprint('loading')\ndef handle(e, c):\n    try:\n        open('/code/x', 'w')\n        writable = True\n    except OSError:\n        writable = False\n    return {'files': sorted(os.listdir('/code')), 'writable': writable, 'fn': c.function}\n";
    let inv = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", src)
        .await;
    let r = sb.run_task(&wid, inv.clone()).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert!(r.cold_start);
    assert_eq!(
        r.result.unwrap(),
        serde_json::json!({"files": ["main.py"], "writable": false, "fn": "fn"})
    );
    assert!(r.logs.contains("loading"), "logs: {:?}", r.logs);
    assert_eq!(
        metric(w.addr, "colorfaas_worker_spare_cold_starts_total").await,
        1.0
    );
    // The worker starts a replacement spare.
    eventually(
        Duration::from_secs(30),
        "the python3 spare is replaced",
        || async {
            (metric(w.addr, "colorfaas_worker_spare_containers").await == 2.0
                && sb.containers_of(&wid).await.len() == 3)
                .then_some(())
        },
    )
    .await;
    // A second function gets the new spare, with only its own code in it.
    let other = sb
        .invocation(
            Runtime::Python3,
            "other.py",
            "other.handle",
            "import os\ndef handle(e, c):\n    return sorted(os.listdir('/code'))\n",
        )
        .await;
    let r = sb.run_task(&wid, other).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert!(r.cold_start);
    assert_eq!(r.result.unwrap(), serde_json::json!(["other.py"]));
    // Node takes its spare too; a handler that does not load fails like any load error.
    let node = sb
        .invocation(
            Runtime::Node,
            "index.js",
            "index.nope",
            "exports.handle = () => 1;",
        )
        .await;
    let r = sb.run_task(&wid, node).await;
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert_eq!(
        r.error.unwrap().code,
        schemas::run_error_codes::FUNCTION_LOAD
    );
    assert_eq!(
        metric(w.addr, "colorfaas_worker_spare_cold_starts_total").await,
        3.0
    );

    // Spares never stand in a function's way: a 384 MB function evicts idle ones, spares too.
    let mut big = sb
        .invocation(
            Runtime::Python3,
            "main.py",
            "main.handle",
            "def handle(e, c):\n    return 'big'\n",
        )
        .await;
    big.resources.memory_mb = 384;
    let r = sb.run_task(&wid, big).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.result.unwrap(), serde_json::json!("big"));

    // The first function is still correct after all that (warm or cold).
    let mut again = inv.clone();
    again.run_id = uuid::Uuid::now_v7().to_string();
    let r = sb.run_task(&wid, again).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");

    w.stop().await.unwrap();
    assert!(
        sb.containers_of(&wid).await.is_empty(),
        "no container, spare or not, outlives the worker"
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_writer_lingers_for_background_writes_not_for_waiting_ones() {
    use common::runstore::{RunWrite, RunWriter};
    let sb = Sandbox::new("linger").await;
    let runs = sb
        .db
        .collection::<RunDoc>(schemas::names::collections::RUNS);
    let stored = |id: String| {
        let runs = runs.clone();
        async move {
            runs.find_one(bson::doc! {"_id": id})
                .await
                .unwrap()
                .is_some()
        }
    };
    let linger = Duration::from_secs(3);
    let (writer, task) = RunWriter::spawn_with_linger(sb.db.clone(), linger);

    // A background write waits for company...
    let a = run_doc("u-linger", RunStatus::Succeeded, 0);
    writer.write(RunWrite::Finished(Box::new(a.clone()))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !stored(a.id.clone()).await,
        "a background write is held for the linger"
    );
    // ...but a durable write does not wait, and takes the queued one with it.
    let b = run_doc("u-linger", RunStatus::Pending, 0);
    let t = Instant::now();
    writer
        .write_durable(RunWrite::Pending(Box::new(b.clone())))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a durable write waited {:?}",
        t.elapsed()
    );
    assert!(stored(a.id.clone()).await && stored(b.id.clone()).await);

    // A lone background write lands once the linger is over, with nobody flushing.
    let c = run_doc("u-linger", RunStatus::Failed, 0);
    let t = Instant::now();
    writer.write(RunWrite::Finished(Box::new(c.clone()))).await;
    eventually(
        Duration::from_secs(10),
        "the lingering write lands",
        || async { stored(c.id.clone()).await.then_some(()) },
    )
    .await;
    assert!(t.elapsed() >= linger - Duration::from_millis(100));

    // Dropping the last handle stores what is left and ends the task.
    let d = run_doc("u-linger", RunStatus::Succeeded, 0);
    writer.write(RunWrite::Finished(Box::new(d.clone()))).await;
    drop(writer);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the writer ends when its handles are gone")
        .unwrap();
    assert!(stored(d.id.clone()).await);
    sb.cleanup().await;
}
