//! Page benchmark: server time of the task page for a user with 100 functions and 10,000 runs,
//! and the page weight of the function list. Needs the stack (`bash scripts/stack.sh`).
//!
//! `cargo bench -p portal --bench pages [-- --functions 100 --runs 10000 --requests 200]`
//!
//! It starts a portal in-process on a scratch database, registers a user through the JSON API,
//! seeds the functions and runs straight into MongoDB with the `schemas` types, then times page
//! requests over a keep-alive loopback connection (so each figure is the server's time plus a
//! loopback round trip) and drops the database.

use std::time::{Duration, Instant};

use schemas::names::collections;
use schemas::{
    BillState, CodeKind, FunctionDoc, Mode, Resources, RunDoc, RunError, RunStatus, Runtime,
};
use serde_json::{json, Value};

const MONGODB_URI: &str = "mongodb://127.0.0.1:27017";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Times `n` GETs of `path`; returns the sorted latencies and the last body.
async fn time_get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, String)> {
    let mut v = Vec::with_capacity(n);
    let mut body = String::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let r = client
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await?;
        let status = r.status();
        body = r.text().await?;
        v.push(t0.elapsed());
        anyhow::ensure!(status == 200, "GET {path}: {status}: {body}");
    }
    v.sort();
    Ok((v, body))
}

fn report(what: &str, v: &[Duration]) {
    println!(
        "{what:<44} p50 {:>9}  p90 {:>9}  p99 {:>9}  max {:>9}  (n={})",
        ms(pct(v, 0.5)),
        ms(pct(v, 0.9)),
        ms(pct(v, 0.99)),
        ms(pct(v, 1.0)),
        v.len()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n_functions = arg("--functions", 100);
    let n_runs = arg("--runs", 10_000);
    let n_requests = arg("--requests", 200);
    let db_name = format!(
        "bench_pages_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let env: common::config::Env = [
        ("MONGODB_URI", MONGODB_URI),
        ("MONGODB_DB", db_name.as_str()),
        ("AMQP_URL", AMQP_URL),
        ("COLORFAAS_AMQP_PREFIX", db_name.as_str()),
        ("PORTAL_ADDR", "127.0.0.1:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let cfg = portal::Config::from_env(&env, &portal::Flags::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(portal::run(cfg, listener, async move {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(4)
        .build()?;
    let t0 = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "the portal did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A user through the API; functions and runs straight into the database.
    let email = format!("{db_name}@example.com");
    let r: Value = client
        .post(format!("{base}/api/v1/users"))
        .json(&json!({"email": email, "name": "Bench", "password": "bench-password"}))
        .send()
        .await?
        .json()
        .await?;
    let user_id = r["user_id"].as_str().unwrap_or_default().to_owned();
    let s: Value = client
        .post(format!("{base}/api/v1/sessions"))
        .json(&json!({"email": email, "password": "bench-password"}))
        .send()
        .await?
        .json()
        .await?;
    let token = s["token"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        !user_id.is_empty() && !token.is_empty(),
        "login failed: {r} {s}"
    );
    let cookie = format!("cf_session={token}");
    let db = common::mongo::connect(MONGODB_URI, &db_name).await?;
    let now = schemas::now_ms();
    let functions: Vec<FunctionDoc> = (0..n_functions)
        .map(|i| FunctionDoc {
            id: format!("f{i:04}"),
            user_id: user_id.clone(),
            name: format!("fn-{i:03}"),
            runtime: Runtime::Python3,
            handler: "main.handle".into(),
            filename: "main.py".into(),
            description: format!("function number {i}, which adds two numbers"),
            args_schema: vec![
                ("num1".into(), schemas::ArgType::Int),
                ("num2".into(), schemas::ArgType::Int),
            ],
            mode: Mode::Sync,
            resources: Resources::new(500, 128, 64),
            timeout_ms: 3000,
            version: 1,
            code_sha256: "0".repeat(64),
            code_size: 64,
            code_kind: CodeKind::Single,
            created_at_ms: now,
            updated_at_ms: now,
            retries: schemas::rules::DEFAULT_RETRIES,
            max_event_age_s: schemas::rules::DEFAULT_MAX_EVENT_AGE_S,
            config: Default::default(),
        })
        .collect();
    if !functions.is_empty() {
        db.collection::<FunctionDoc>(collections::FUNCTIONS)
            .insert_many(&functions)
            .await?;
    }
    let t_seed = Instant::now();
    let statuses = RunStatus::ALL;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n_runs {
        let f = &functions[i % functions.len().max(1)];
        // Mostly finished runs; a few pending / running, like a live account.
        let status = if i % 97 == 0 {
            statuses[i % 2]
        } else {
            statuses[2 + i % 3]
        };
        batch.push(RunDoc {
            id: format!("r{i:06}"),
            user_id: user_id.clone(),
            function_id: f.id.clone(),
            function: f.name.clone(),
            version: 1,
            status,
            args_json: r#"{"num1": 1, "num2": 2}"#.into(),
            result_json: (status == RunStatus::Succeeded).then(|| r#"{"sum": 3}"#.into()),
            error: (status == RunStatus::Failed)
                .then(|| RunError::new("function_error", "ValueError: bad input")),
            logs: "adding 1 and 2\n".repeat(4),
            cold_start: i % 10 == 0,
            duration_ms: 5 + (i % 200) as u64,
            resources: f.resources,
            billed_micros: 3 + (i % 7) as i64,
            bill_state: BillState::Unbilled,
            bill_id: None,
            worker_id: Some("w1".into()),
            epoch: 1,
            created_at_ms: now - (n_runs - i) as i64 * 1000,
            started_at_ms: Some(now - (n_runs - i) as i64 * 1000 + 2),
            finished_at_ms: status
                .is_final()
                .then_some(now - (n_runs - i) as i64 * 1000 + 20),
            hold: None,
            attempts: Vec::new(),
            next_attempt_at_ms: None,
            dead_letter: None,
            schedule_id: None,
        });
        if batch.len() == 1000 {
            db.collection::<RunDoc>(collections::RUNS)
                .insert_many(&batch)
                .await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        db.collection::<RunDoc>(collections::RUNS)
            .insert_many(&batch)
            .await?;
    }
    println!(
        "seeded {n_functions} functions and {n_runs} runs in {:.1} s (database {db_name})",
        t_seed.elapsed().as_secs_f64()
    );

    // The task page: the first view counts all the user's runs (the snapshot); later views
    // read only what changed since the previous one (see `portal::pages::data`).
    let (first, _) = time_get(&client, &base, "/tasks", &cookie, 1).await?;
    println!(
        "{:<44} {}",
        "GET /tasks, first view (counts computed)",
        ms(first[0])
    );
    let cache = portal::pages::data::StatusCache::default();
    let t_count = Instant::now();
    let counts = cache.get(&db, &user_id).await?;
    println!(
        "{:<44} {} ({} functions; once per user every 10 min, not per view)",
        &format!("status snapshot of {n_runs} runs"),
        ms(t_count.elapsed()),
        counts.len()
    );
    let t_count = Instant::now();
    cache.get(&db, &user_id).await?;
    println!(
        "{:<44} {}",
        "status counts from the snapshot",
        ms(t_count.elapsed())
    );
    let (tasks, body) = time_get(&client, &base, "/tasks", &cookie, n_requests).await?;
    anyhow::ensure!(
        body.contains("fn-000") && body.contains("runs-table"),
        "the task page lacks its tables"
    );
    report(
        &format!("GET /tasks ({n_functions} functions, {n_runs} runs)"),
        &tasks,
    );
    let (live, _) = time_get(&client, &base, "/tasks/live", &cookie, n_requests).await?;
    report("GET /tasks/live (refresh fragment)", &live);
    let (search, _) = time_get(&client, &base, "/tasks?q=fn-04", &cookie, n_requests).await?;
    report("GET /tasks?q=fn-04 (search, 10 matches)", &search);
    let (one, _) = time_get(&client, &base, "/tasks?q=fn-042", &cookie, n_requests).await?;
    report("GET /tasks?q=fn-042 (at most one function)", &one);
    let (list, list_body) = time_get(&client, &base, "/functions", &cookie, n_requests).await?;
    report(&format!("GET /functions ({n_functions} functions)"), &list);
    let mid = format!("/functions/fn-{:03}", n_functions / 2);
    let (detail, _) = time_get(&client, &base, &mid, &cookie, n_requests / 2).await?;
    report(&format!("GET {mid} (detail)"), &detail);

    let css = client
        .get(format!("{base}/static/style.css"))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let js = client
        .get(format!("{base}/static/app.js"))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    println!(
        "page weight of /functions ({n_functions} functions): HTML {} B + CSS {} B = {:.1} KB (no images, no script); the task page adds {} B of script",
        list_body.len(),
        css,
        (list_body.len() + css) as f64 / 1024.0,
        js
    );
    let p50 = pct(&tasks, 0.5);
    println!(
        "target: task page p50 <= 20 ms: {}; function list <= 100 KB: {}",
        if p50 <= Duration::from_millis(20) {
            "met"
        } else {
            "NOT met"
        },
        if list_body.len() + css <= 100 * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );

    let _ = stop_tx.send(());
    let _ = server.await;
    db.drop().await?;
    Ok(())
}
