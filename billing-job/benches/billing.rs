//! Billing benchmark (a program that prints figures): seeds N finished runs of U users into a
//! fresh database, measures the floor — a bare streaming scan of those runs plus bulk updates of
//! them, what any billing must at least do — then runs the real `billing-job` binary over them as
//! a child process and reports its throughput, its peak resident memory (`VmHWM`, polled from
//! `/proc/<pid>/status`) and the ratio to the floor. Checks the bills afterwards.
//!
//! Needs MongoDB (`scripts/stack.sh`). Run:
//! `cargo bench -p billing-job --bench billing -- --runs 1000000 --users 1000`
//! (defaults: 1,000,000 runs, 1,000 users; `BILLING_BENCH_RUNS` / `BILLING_BENCH_USERS` too).

use std::time::{Duration, Instant};

use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::Database;

const SEED_BATCH: usize = 10_000;
const FLOOR_CHUNK: usize = 5_000;

fn arg(name: &str, env: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
        .map(|v| v.replace('_', "").parse().expect("a number"))
        .unwrap_or(default)
}

fn run_doc(i: u64, users: u64, now: i64) -> Document {
    let duration = 1 + (i * 7919) % 3000;
    let status = match i % 10 {
        0 => "failed",
        1 => "timed_out",
        _ => "succeeded",
    };
    doc! {
        "_id": format!("r{i:012}-{:08x}", (i.wrapping_mul(2_654_435_761)) as u32),
        "user_id": format!("u{:05}", (i * 48_271) % users),
        "function_id": format!("f{}", i % 7),
        "function": format!("fn-{}", i % 7),
        "version": 1_i64,
        "status": status,
        "args_json": "{}",
        "result_json": "{\"ok\":true}",
        "logs": "",
        "cold_start": false,
        "duration_ms": duration as i64,
        "resources": {"cpu_millicores": 500_i64, "memory_mb": 128_i64, "disk_mb": 64_i64},
        "billed_micros": (1 + duration * 10) as i64,
        "bill_state": "unbilled",
        "worker_id": "w1",
        "epoch": 1_i64,
        "created_at_ms": now - 60_000,
        "started_at_ms": now - 50_000,
        "finished_at_ms": now - 40_000 + (i % 1000) as i64,
    }
}

async fn seed(db: &Database, runs: u64, users: u64) -> i64 {
    let now = schemas::now_ms();
    let mut total: i64 = 0;
    let mut i = 0;
    while i < runs {
        let end = (i + SEED_BATCH as u64).min(runs);
        let docs: Vec<Document> = (i..end)
            .map(|k| {
                let d = run_doc(k, users, now);
                total += d.get_i64("billed_micros").unwrap();
                d
            })
            .collect();
        let reply = db
            .run_command(doc! {"insert": "runs", "documents": docs, "ordered": false})
            .await
            .expect("seeding runs");
        assert!(reply.get("writeErrors").is_none(), "seeding: {reply}");
        i = end;
    }
    total
}

/// A bare streaming scan of the billable runs plus one bulk update per chunk of them.
async fn floor(db: &Database, cutoff: i64) -> u64 {
    let mut cur = db
        .collection::<Document>("runs")
        .find(doc! {
            "bill_state": "unbilled",
            "status": {"$in": ["succeeded", "failed", "timed_out"]},
            "finished_at_ms": {"$lte": cutoff},
        })
        .projection(doc! {
            "user_id": 1, "function": 1, "duration_ms": 1, "resources": 1,
            "billed_micros": 1, "finished_at_ms": 1,
        })
        .batch_size(FLOOR_CHUNK as u32)
        .await
        .expect("floor scan");
    let mut ids: Vec<String> = Vec::with_capacity(FLOOR_CHUNK);
    let mut n = 0;
    let flush = |ids: Vec<String>| async move {
        let reply = db
            .run_command(doc! {
                "update": "runs",
                "updates": [{"q": {"_id": {"$in": ids}}, "u": {"$set": {"floor_mark": 1_i32}}, "multi": true}],
                "ordered": false,
            })
            .await
            .expect("floor update");
        assert!(reply.get("writeErrors").is_none(), "floor: {reply}");
    };
    while let Some(d) = cur.try_next().await.expect("floor scan") {
        ids.push(d.get_str("_id").unwrap().to_owned());
        n += 1;
        if ids.len() == FLOOR_CHUNK {
            flush(std::mem::take(&mut ids)).await;
        }
    }
    if !ids.is_empty() {
        flush(ids).await;
    }
    n
}

struct JobRun {
    elapsed: Duration,
    peak_rss_kb: u64,
    stdout: String,
    stderr: String,
}

/// Runs the `billing-job` binary and polls its peak RSS until it exits.
async fn billing_job(db_name: &str, uri: &str) -> JobRun {
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_billing-job"))
        .env("MONGODB_URI", uri)
        .env("MONGODB_DB", db_name)
        .env("RUST_LOG", "warn,billing_job=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning billing-job");
    let pid = child.id().expect("a pid").to_string();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut s)
            .await
            .ok();
        s
    });
    let err = tokio::spawn(async move {
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s)
            .await
            .ok();
        s
    });
    let mut peak = 0;
    let status = loop {
        if let Some(kb) = billing_job::proc_status_kb(&pid, "VmHWM:") {
            peak = peak.max(kb);
        }
        tokio::select! {
            s = child.wait() => break s.expect("waiting for billing-job"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let elapsed = t0.elapsed();
    let stdout = out.await.unwrap();
    let stderr = err.await.unwrap();
    assert!(status.success(), "billing-job failed: {status}\n{stderr}");
    JobRun {
        elapsed,
        peak_rss_kb: peak,
        stdout,
        stderr,
    }
}

#[tokio::main]
async fn main() {
    let runs = arg("--runs", "BILLING_BENCH_RUNS", 1_000_000);
    let users = arg("--users", "BILLING_BENCH_USERS", 1_000).max(1);
    let uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let db_name = format!(
        "bench_billing_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let db = common::mongo::connect(&uri, &db_name)
        .await
        .expect("MongoDB is up");
    common::mongo::ensure_indexes(&db).await.expect("indexes");
    println!("billing benchmark: {runs} finished runs of {users} users, database {db_name}");

    let t = Instant::now();
    let seeded_micros = seed(&db, runs, users).await;
    let s = t.elapsed().as_secs_f64();
    println!(
        "seeding:  {runs} runs in {s:.1} s ({:.0} runs/s; not part of the figures below)",
        runs as f64 / s
    );

    let cutoff = schemas::now_ms();
    let t = Instant::now();
    let scanned = floor(&db, cutoff).await;
    let floor_s = t.elapsed().as_secs_f64();
    assert_eq!(scanned, runs, "the floor scan saw every run");
    let floor_rate = runs as f64 / floor_s;
    println!(
        "floor:    scan + bulk update of {runs} runs in {floor_s:.1} s = {floor_rate:.0} runs/s"
    );

    let job = billing_job(&db_name, &uri).await;
    let job_s = job.elapsed.as_secs_f64();
    let rate = runs as f64 / job_s;
    let summary = job.stdout.trim();
    println!(
        "billing:  {runs} runs in {job_s:.1} s = {rate:.0} runs/s (process start to exit), peak RSS {:.1} MB",
        job.peak_rss_kb as f64 / 1024.0
    );
    println!("          job said: {summary}");
    for l in job
        .stderr
        .lines()
        .filter(|l| l.contains("pass took") || l.contains("pass done"))
    {
        println!("          {l}");
    }
    println!("ratio:    billing / floor = {:.2}", rate / floor_rate);

    // The bills are right.
    let bills = db.collection::<Document>("bills");
    let n_bills = bills.count_documents(doc! {}).await.unwrap();
    let agg: Vec<Document> = bills
        .aggregate(vec![
            doc! {"$group": {"_id": null, "t": {"$sum": "$amount_micros"}}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let billed_total = agg.first().map(|d| match d.get("t") {
        Some(bson::Bson::Int64(v)) => *v,
        Some(bson::Bson::Int32(v)) => i64::from(*v),
        Some(bson::Bson::Double(v)) => *v as i64,
        _ => 0,
    });
    let unbilled = db
        .collection::<Document>("runs")
        .count_documents(doc! {"bill_state": "unbilled"})
        .await
        .unwrap();
    let expected = format!("billed {runs} runs into {n_bills} bills, total {seeded_micros} micros");
    println!(
        "check:    {n_bills} bills, sum {billed_total:?} (seeded {seeded_micros}), {unbilled} runs left unbilled: {}",
        if summary == expected && unbilled == 0 && billed_total == Some(seeded_micros) {
            "OK"
        } else {
            "MISMATCH"
        }
    );
    let rss_ok = job.peak_rss_kb <= 100 * 1024;
    let speed_ok = rate >= 50_000.0 || rate >= 0.5 * floor_rate;
    println!(
        "targets:  peak RSS <= 100 MB: {}; >= 50,000 runs/s or >= 0.5 x floor: {}",
        if rss_ok { "met" } else { "NOT met" },
        if speed_ok { "met" } else { "NOT met" }
    );
    if std::env::var("BENCH_KEEP").is_err() {
        let _ = db.drop().await;
    }
}
