//! Dispatcher benchmark (a program that prints figures): the latency the dispatcher hop adds
//! (invocation published → task delivered on the worker's queue), measured beside the floor (a
//! bare RabbitMQ publish → consume), and failover time (leader SIGKILLed → first task
//! dispatched by the new leader), median of 5.
//!
//! Needs the local stack (`scripts/stack.sh`). Run: `cargo bench -p dispatcher --bench hop`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use schemas::names::AmqpNames;
use schemas::{CodeKind, HeartbeatMsg, InvocationMsg, Mode, Resources, Runtime, TaskMsg};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn pct(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn invocation(n: u64) -> InvocationMsg {
    InvocationMsg {
        v: 1,
        run_id: uuid::Uuid::now_v7().to_string(),
        user_id: format!("u{}", n % 4),
        function_id: "f".into(),
        function: "noop".into(),
        version: 1,
        runtime: Runtime::Python3,
        handler: "main.handle".into(),
        code_sha256: "0".repeat(64),
        code_kind: CodeKind::Single,
        filename: "main.py".into(),
        resources: Resources::new(1, 1, 1),
        timeout_ms: 1000,
        mode: Mode::Async,
        args: serde_json::json!({}),
        reply_to: None,
        callback_url: None,
        created_at_ms: schemas::now_ms(),
        hold: None,
        retry: Default::default(),
        config: Default::default(),
    }
}

/// A fake worker: beats every 200 ms with a huge capacity; returns its task consumer.
async fn fake_worker(conn: &lapin::Connection, names: &AmqpNames, id: &str) -> lapin::Consumer {
    let ch = conn.create_channel().await.unwrap();
    let q = common::amqp::declare_worker_queue(&ch, names, id)
        .await
        .unwrap();
    let consumer = ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let beat_ch = conn.create_channel().await.unwrap();
    let (names, id) = (names.clone(), id.to_owned());
    tokio::spawn(async move {
        let mut seq = 0;
        loop {
            seq += 1;
            let hb = HeartbeatMsg {
                v: 1,
                worker_id: id.clone(),
                seq,
                sent_at_ms: schemas::now_ms(),
                interval_ms: 200,
                capacity: Resources::new(u32::MAX as u64, u32::MAX as u64, u32::MAX as u64),
                allocated: Resources::default(),
                running: vec![],
                warm: vec![],
                accepting: true,
                epoch: 0,
            };
            let body = serde_json::to_vec(&hb).unwrap();
            if beat_ch
                .basic_publish(
                    names.heartbeats_exchange().as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    common::amqp::props("heartbeat", false),
                )
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    consumer
}

async fn publish_inv(ch: &lapin::Channel, names: &AmqpNames, inv: &InvocationMsg) {
    ch.basic_publish(
        "".into(),
        names.invocations_queue().as_str().into(),
        BasicPublishOptions::default(),
        &serde_json::to_vec(inv).unwrap(),
        common::amqp::props("invocation", true),
    )
    .await
    .unwrap();
}

async fn next_task(c: &mut lapin::Consumer, timeout: Duration) -> Option<TaskMsg> {
    loop {
        let d = tokio::time::timeout(timeout, c.next()).await.ok()??.ok()?;
        if common::amqp::kind_of(&d.properties).as_deref() == Some("task") {
            return serde_json::from_slice(&d.data).ok();
        }
    }
}

fn spawn_dispatcher(prefix: &str, id: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .env("COLORFAAS_AMQP_PREFIX", prefix)
        .env("DISPATCHER_ID", id)
        .env("DISPATCHER_ADDR", "127.0.0.1:0")
        .env("DISPATCHER_ZK_SESSION_TIMEOUT", "2s")
        .env("MONGODB_DB", format!("bench_{}", prefix.replace('-', "_")))
        .env("RUST_LOG", "error")
        .spawn()
        .expect("starting the dispatcher binary")
}

#[tokio::main]
async fn main() {
    let conn = common::amqp::connect(AMQP_URL, "dispatcher bench")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();

    // Floor: a bare publish → consume round trip on one queue.
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
    let mut c = ch
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
    let body = serde_json::to_vec(&invocation(0)).unwrap();
    let mut floor = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for i in 0..3200 {
        let t = Instant::now();
        ch.basic_publish(
            "".into(),
            q.name().as_str().into(),
            BasicPublishOptions::default(),
            &body,
            common::amqp::props("invocation", true),
        )
        .await
        .unwrap();
        c.next().await.unwrap().unwrap();
        if i >= 200 {
            floor.record(t.elapsed().as_micros() as u64).unwrap();
        }
    }

    // The dispatcher hop, with an in-process leader.
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let names = AmqpNames::new(prefix.clone());
    common::amqp::declare_topology(&ch, &names).await.unwrap();
    let mut tasks = fake_worker(&conn, &names, "wbench").await;
    // The dispatcher binary, on the runtime its configuration gives it, as in production.
    let mut dispatcher = spawn_dispatcher(&prefix, "dbench");
    // Warm up until the leader dispatches.
    loop {
        publish_inv(&ch, &names, &invocation(0)).await;
        if next_task(&mut tasks, Duration::from_millis(500))
            .await
            .is_some()
        {
            break;
        }
    }
    while next_task(&mut tasks, Duration::from_millis(300))
        .await
        .is_some()
    {}
    let mut hop = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for i in 0..3200u64 {
        let inv = invocation(i);
        let t = Instant::now();
        publish_inv(&ch, &names, &inv).await;
        let task = next_task(&mut tasks, Duration::from_secs(10))
            .await
            .expect("a task");
        assert_eq!(task.invocation.run_id, inv.run_id);
        if i >= 200 {
            hop.record(t.elapsed().as_micros() as u64).unwrap();
        }
    }
    let _ = dispatcher.kill();
    let _ = dispatcher.wait();

    // Failover, median of 5: SIGKILL the leader, time until the standby's first task.
    let mut failovers = Vec::new();
    for round in 0..5 {
        let prefix = format!(
            "bench-fo{round}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let names = AmqpNames::new(prefix.clone());
        common::amqp::declare_topology(&ch, &names).await.unwrap();
        let mut tasks = fake_worker(&conn, &names, "wfo").await;
        let mut d1 = spawn_dispatcher(&prefix, "d1");
        let first_epoch = loop {
            publish_inv(&ch, &names, &invocation(0)).await;
            if let Some(t) = next_task(&mut tasks, Duration::from_millis(500)).await {
                break t.epoch;
            }
        };
        let mut d2 = spawn_dispatcher(&prefix, "d2");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        while next_task(&mut tasks, Duration::from_millis(100))
            .await
            .is_some()
        {}
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(d1.id().to_string())
            .status();
        let killed = Instant::now();
        let took = loop {
            publish_inv(&ch, &names, &invocation(1)).await;
            if let Some(t) = next_task(&mut tasks, Duration::from_millis(10)).await {
                if t.epoch > first_epoch {
                    break killed.elapsed();
                }
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no failover");
        };
        failovers.push(took);
        let _ = d1.wait();
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(d2.id().to_string())
            .status();
        let _ = d2.wait();
        for qn in [
            names.invocations_queue(),
            names.worker_queue("wfo"),
            names.dispatcher_results_queue(),
            names.callbacks_queue(),
            names.dead_letter_queue(),
        ] {
            let _ = ch
                .queue_delete(qn.as_str().into(), Default::default())
                .await;
        }
    }
    failovers.sort();

    println!("dispatcher benchmark (this machine)");
    println!(
        "  floor, bare publish -> consume:        p50 {:7.3} ms  p99 {:7.3} ms  (n=3000)",
        pct(&floor, 0.5),
        pct(&floor, 0.99)
    );
    println!(
        "  invocation -> task on worker queue:    p50 {:7.3} ms  p99 {:7.3} ms  (n=3000)",
        pct(&hop, 0.5),
        pct(&hop, 0.99)
    );
    println!(
        "  added by the dispatcher hop (p50):     {:7.3} ms",
        pct(&hop, 0.5) - pct(&floor, 0.5)
    );
    println!(
        "  failover, leader SIGKILL -> first task by the new leader: median {:.2} s  (all: {})",
        failovers[2].as_secs_f64(),
        failovers
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for qn in [
        names.invocations_queue(),
        names.worker_queue("wbench"),
        names.dispatcher_results_queue(),
        names.callbacks_queue(),
        names.dead_letter_queue(),
    ] {
        let _ = ch
            .queue_delete(qn.as_str().into(), Default::default())
            .await;
    }
}
