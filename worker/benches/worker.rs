//! Worker benchmark (a program that prints figures): warm latency and cold start from publish to
//! result (from a spare container, and with none: container create -> result), warm latency
//! with idle containers frozen between calls (the default) and not (`WORKER_FREEZE_IDLE=0`),
//! warm throughput with 2 containers, the worker's idle memory with 10 warm containers, and the
//! floors — a direct round trip to a warm agent with no queue in between, a freeze + thaw of a
//! container (cgroup freezer, and Docker's pause + unpause), and Docker's own create + start.
//!
//! Needs the local stack (`scripts/stack.sh`). Run: `cargo bench -p worker --bench worker`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use schemas::names::AmqpNames;
use schemas::{CodeKind, InvocationMsg, Mode, Resources, ResultMsg, Runtime, TaskMsg};

const MONGODB_URI: &str = "mongodb://127.0.0.1:27017";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn pct(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

struct Bench {
    names: AmqpNames,
    worker_id: String,
    ch: lapin::Channel,
    reply: String,
    consumer: lapin::Consumer,
    db: mongodb::Database,
}

impl Bench {
    async fn invocation(&self, source: &str) -> InvocationMsg {
        self.invocation_sized(source, Resources::DEFAULT).await
    }

    async fn invocation_sized(&self, source: &str, resources: Resources) -> InvocationMsg {
        let sha = common::codestore::put(&self.db, source.as_bytes())
            .await
            .unwrap();
        InvocationMsg {
            v: 1,
            run_id: String::new(),
            user_id: "bench".into(),
            function_id: format!("f{}", &sha[..12]),
            function: "noop".into(),
            version: 1,
            runtime: Runtime::Python3,
            handler: "main.handle".into(),
            code_sha256: sha,
            code_kind: CodeKind::Single,
            filename: "main.py".into(),
            resources,
            timeout_ms: 10_000,
            mode: Mode::Sync,
            args: serde_json::json!({}),
            reply_to: Some(self.reply.clone()),
            callback_url: None,
            created_at_ms: schemas::now_ms(),
            hold: None,
            retry: Default::default(),
            config: Default::default(),
        }
    }

    async fn send(&self, inv: &InvocationMsg) {
        let mut inv = inv.clone();
        inv.run_id = uuid::Uuid::now_v7().to_string();
        let task = TaskMsg {
            v: 1,
            epoch: 1,
            worker_id: self.worker_id.clone(),
            dispatched_at_ms: schemas::now_ms(),
            invocation: inv,
        };
        let body = serde_json::to_vec(&task).unwrap();
        self.ch
            .basic_publish(
                "".into(),
                self.names.worker_queue(&self.worker_id).as_str().into(),
                BasicPublishOptions::default(),
                &body,
                common::amqp::props("task", true),
            )
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> ResultMsg {
        let d = tokio::time::timeout(Duration::from_secs(60), self.consumer.next())
            .await
            .expect("result in time")
            .unwrap()
            .unwrap();
        let r: ResultMsg = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(r.status, schemas::RunStatus::Succeeded, "{r:?}");
        r
    }

    async fn call(&mut self, inv: &InvocationMsg) -> (Duration, ResultMsg) {
        let t0 = Instant::now();
        self.send(inv).await;
        let r = self.recv().await;
        (t0.elapsed(), r)
    }
}

/// One gauge from the worker's `/metrics`.
async fn metric(addr: &str, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
}

/// Waits until the worker has a spare of the default size ready for every runtime.
async fn spares_ready(addr: &str) {
    let t0 = Instant::now();
    while metric(addr, "colorfaas_worker_spare_containers").await < Some(3.0) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no spare container became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a worker consumes its queue.
async fn wait_consumer(conn: &lapin::Connection, queue: &str) {
    let t0 = Instant::now();
    loop {
        // A passive declare of a missing queue closes its channel: use a fresh one each time.
        let probe = conn.create_channel().await.unwrap();
        let ok = probe
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.consumer_count() > 0)
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "worker did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("bench-{id}");
    let db_name = format!("bench_{id}");
    let worker_id = format!("wb{id}");
    let names = AmqpNames::new(prefix.clone());
    let db = common::mongo::connect(MONGODB_URI, &db_name).await.unwrap();
    let conn = common::amqp::connect(AMQP_URL, "worker bench")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    common::amqp::declare_topology(&ch, &names).await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Replies are consumed as the gateway consumes them: no acks (the result is received
    // once the delivery arrives).
    let consumer = ch
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The worker as its own process, so its memory can be read alone.
    let dir = std::env::temp_dir().join(format!("colorfaas-bench-{id}"));
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let base: HashMap<&str, String> = HashMap::from([
        ("MONGODB_URI", MONGODB_URI.to_owned()),
        ("MONGODB_DB", db_name.clone()),
        ("AMQP_URL", AMQP_URL.to_owned()),
        ("COLORFAAS_AMQP_PREFIX", prefix.clone()),
        ("WORKER_PREFETCH", "256".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ]);
    let spawn = |wid: &str, sub: &str, extra: &[(&'static str, &str)]| {
        let mut env = base.clone();
        env.insert("WORKER_ID", wid.to_owned());
        env.insert("WORKER_DIR", dir.join(sub).to_string_lossy().into_owned());
        for (k, v) in extra {
            env.insert(k, (*v).to_owned());
        }
        tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .envs(&env)
            .kill_on_drop(true)
            .spawn()
            .expect("starting the worker binary")
    };
    let mut child = spawn(
        &worker_id,
        "main",
        &[("WORKER_ADDR", &addr), ("WORKER_MEMORY_MB", "8192")],
    );
    let pid = child.id().unwrap();
    wait_consumer(&conn, &names.worker_queue(&worker_id)).await;
    let ch = conn.create_channel().await.unwrap();
    let mut b = Bench {
        names,
        worker_id,
        ch,
        reply: q.name().to_string(),
        consumer,
        db: db.clone(),
    };

    // Cold starts from a spare: 10 distinct functions of the default size, each first call,
    // arriving once the worker has its spares ready again (it starts one per runtime and size
    // when it starts, and a new one whenever a cold start takes one).
    let mut cold = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut funcs = Vec::new();
    for i in 0..10 {
        let inv = b
            .invocation(&format!(
                "# fn {i} {id}\ndef handle(e, c):\n    return None\n"
            ))
            .await;
        spares_ready(&addr).await;
        let (d, r) = b.call(&inv).await;
        assert!(r.cold_start);
        cold.record(d.as_micros() as u64).unwrap();
        funcs.push(inv);
    }
    let spare_starts = metric(&addr, "colorfaas_worker_spare_cold_starts_total")
        .await
        .unwrap_or(0.0);
    // Cold starts with no spare of the size: container create -> result.
    let mut scratch = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for i in 0..10 {
        let inv = b
            .invocation_sized(
                &format!("# big {i} {id}\ndef handle(e, c):\n    return None\n"),
                Resources::new(500, 130 + i, 64),
            )
            .await;
        let (d, r) = b.call(&inv).await;
        assert!(r.cold_start);
        scratch.record(d.as_micros() as u64).unwrap();
    }
    // Warm those 10 once more, then read the worker's idle memory.
    for inv in &funcs {
        let (_, r) = b.call(inv).await;
        assert!(!r.cold_start);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_kb = rss_kb(pid);

    // Warm latency, sequential, one function.
    let noop = funcs[0].clone();
    for _ in 0..200 {
        b.call(&noop).await;
    }
    let mut warm = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..3000 {
        let (d, r) = b.call(&noop).await;
        assert!(!r.cold_start);
        warm.record(d.as_micros() as u64).unwrap();
    }

    // Warm latency with idle containers not frozen: a worker of its own, same function.
    let main_worker = b.worker_id.clone();
    let thawed_worker = format!("{main_worker}n");
    let mut thawed_child = spawn(
        &thawed_worker,
        "thawed",
        &[
            ("WORKER_ADDR", "127.0.0.1:0"),
            ("WORKER_FREEZE_IDLE", "0"),
            ("WORKER_SPARES", "0"),
            ("WORKER_PREWARM", ""),
        ],
    );
    wait_consumer(&conn, &b.names.worker_queue(&thawed_worker)).await;
    b.worker_id = thawed_worker.clone();
    for _ in 0..200 {
        b.call(&noop).await;
    }
    let mut warm_thawed = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..3000 {
        let (d, r) = b.call(&noop).await;
        assert!(!r.cold_start);
        warm_thawed.record(d.as_micros() as u64).unwrap();
    }
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(thawed_child.id().unwrap().to_string())
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), thawed_child.wait()).await;
    b.worker_id = main_worker.clone();

    // Throughput with 2 warm containers of one function: keep 64 tasks in flight, on a worker
    // with room for exactly 2 containers of it (more would be started otherwise).
    let tput_worker = format!("{main_worker}t");
    let mut tput_child = spawn(
        &tput_worker,
        "tput",
        &[
            ("WORKER_ADDR", "127.0.0.1:0"),
            ("WORKER_MEMORY_MB", "256"),
            ("WORKER_SPARES", "0"),
            ("WORKER_PREWARM", ""),
        ],
    );
    wait_consumer(&conn, &b.names.worker_queue(&tput_worker)).await;
    b.worker_id = tput_worker.clone();
    let two = funcs[1].clone();
    for _ in 0..2 {
        b.send(&two).await;
    }
    for _ in 0..2 {
        b.recv().await;
    }
    let total = 20_000;
    let inflight = 64;
    let t0 = Instant::now();
    let (mut sent, mut got) = (0, 0);
    while sent < inflight {
        b.send(&two).await;
        sent += 1;
    }
    while got < total {
        b.recv().await;
        got += 1;
        if sent < total {
            b.send(&two).await;
            sent += 1;
        }
    }
    let tput = total as f64 / t0.elapsed().as_secs_f64();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(tput_child.id().unwrap().to_string())
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), tput_child.wait()).await;
    b.worker_id = main_worker;

    // The floor: a direct round trip to a warm agent, no queue, no worker.
    let docker = bollard::Docker::connect_with_defaults().unwrap();
    let floor_dir = dir.join("floor");
    let containers = worker::docker::Containers::new(
        docker,
        &format!("{}f", b.worker_id),
        &floor_dir,
        64,
        false,
    );
    let code_dir = floor_dir.join("code");
    worker::code::unpack(
        b"def handle(e, c):\n    return None\n",
        CodeKind::Single,
        "main.py",
        &code_dir,
    )
    .unwrap();
    let spec = worker::docker::Spec {
        key: "floor@1",
        runtime: Runtime::Python3,
        resources: Resources::new(1000, 128, 16),
    };
    // Docker alone: create + start a blank container until its agent listens.
    let mut docker_start = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..5 {
        let t = Instant::now();
        let c = containers.start(&spec).await.unwrap();
        docker_start.record(t.elapsed().as_micros() as u64).unwrap();
        containers.remove(&c.id, &c.name).await;
    }
    let mut c = containers.start(&spec).await.unwrap();
    c.load(&worker::docker::Load {
        handler: "main.handle",
        function: "noop",
        version: 1,
        code_dir: &code_dir,
        env: &Default::default(),
    })
    .await
    .unwrap();
    let args = serde_json::json!({});
    let mut floor = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for i in 0..3200 {
        let ctx = worker::agent::AgentContext {
            run_id: "r",
            function: "noop",
            version: 1,
            deadline_ms: 0,
            memory_mb: 128,
        };
        let t = Instant::now();
        let r = c.conn.call("r", &args, ctx).await.unwrap();
        assert!(r.ok);
        if i >= 200 {
            floor.record(t.elapsed().as_micros() as u64).unwrap();
        }
    }
    // A freeze + thaw of the idle container: the cgroup freezer (what the worker does), and
    // Docker's pause + unpause (its fallback).
    let mut freeze_cgroup = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..1000 {
        let t = Instant::now();
        containers.freeze(&mut c).await.unwrap();
        containers.thaw(&mut c).await.unwrap();
        freeze_cgroup
            .record(t.elapsed().as_micros() as u64)
            .unwrap();
    }
    let mut pause_docker = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..50 {
        let t = Instant::now();
        containers.docker().pause_container(&c.id).await.unwrap();
        containers.docker().unpause_container(&c.id).await.unwrap();
        pause_docker.record(t.elapsed().as_micros() as u64).unwrap();
    }
    containers.remove(&c.id, &c.name).await;

    // Stop the worker cleanly (SIGTERM) and check it left nothing behind.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;

    println!("worker benchmark (no-op python3 function, this machine)");
    println!(
        "  cold start from a spare, publish -> result:  p50 {:8.2} ms   p99 {:8.2} ms   (n=10, {spare_starts} took a spare)",
        pct(&cold, 0.5),
        pct(&cold, 0.99)
    );
    println!(
        "  cold start, no spare (create -> result):   p50 {:8.2} ms   p99 {:8.2} ms   (n=10)",
        pct(&scratch, 0.5),
        pct(&scratch, 0.99)
    );
    println!(
        "  floor, Docker create + start + agent up:   p50 {:8.2} ms   p99 {:8.2} ms   (n=5)",
        pct(&docker_start, 0.5),
        pct(&docker_start, 0.99)
    );
    println!(
        "  warm latency, frozen when idle, publish -> result: p50 {:8.3} ms   p99 {:8.3} ms   (n=3000)",
        pct(&warm, 0.5),
        pct(&warm, 0.99)
    );
    println!(
        "  warm latency, not frozen (WORKER_FREEZE_IDLE=0): p50 {:8.3} ms   p99 {:8.3} ms   (n=3000)",
        pct(&warm_thawed, 0.5),
        pct(&warm_thawed, 0.99)
    );
    println!(
        "  floor, direct agent round trip:  p50 {:8.3} ms   p99 {:8.3} ms   (n=3000)",
        pct(&floor, 0.5),
        pct(&floor, 0.99)
    );
    println!(
        "  floor, freeze + thaw (cgroup freezer): p50 {:8.3} ms   p99 {:8.3} ms   (n=1000)",
        pct(&freeze_cgroup, 0.5),
        pct(&freeze_cgroup, 0.99)
    );
    println!(
        "  floor, docker pause + unpause:         p50 {:8.3} ms   p99 {:8.3} ms   (n=50)",
        pct(&pause_docker, 0.5),
        pct(&pause_docker, 0.99)
    );
    println!(
        "  overhead ratio (warm p50 / floor p50): {:.1}x",
        pct(&warm, 0.5) / pct(&floor, 0.5)
    );
    println!("  warm throughput, 2 containers, 64 in flight: {tput:.0} invocations/s (n={total})");
    println!(
        "  worker RSS at idle with 10 warm containers: {:.1} MB",
        idle_rss_kb as f64 / 1024.0
    );

    let _ = db.drop().await;
    for q in [
        b.names.worker_queue(&b.worker_id),
        b.names.worker_queue(&tput_worker),
        b.names.worker_queue(&thawed_worker),
        b.names.invocations_queue(),
        b.names.dispatcher_results_queue(),
        b.names.callbacks_queue(),
        b.names.dead_letter_queue(),
    ] {
        let _ =
            b.ch.queue_delete(q.as_str().into(), Default::default())
                .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
