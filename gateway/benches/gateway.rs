//! Gateway benchmark (a program that prints figures): sync latency and throughput through the
//! whole pipeline (HTTP → gateway → RabbitMQ → dispatcher → worker → warm container and back),
//! async acceptance rate (while the pipeline runs what it accepts, and again with the dispatcher
//! stopped so that accepting is all that happens), the floor (a direct round trip to a warm agent), and where the time
//! and the CPU go (each hop measured alone; CPU seconds per component; what an async acceptance
//! waited on, from the gateway's own stage histograms).
//!
//! The gateway runs as its own process (this package's release binary); the worker and the
//! dispatcher run in this process on runtimes of their own, so their CPU can be told apart.
//! Everything lives under a private AMQP prefix and database, removed at the end.
//!
//! Needs the local stack (`scripts/stack.sh`). Run: `cargo bench -p gateway --bench gateway`.
//! Knobs (environment): `GATEWAY_BENCH_SECS` (sustained sync phase, default 60),
//! `GATEWAY_BENCH_CLIENTS` (its concurrent clients, default 32), `GATEWAY_BENCH_ASYNC_SECS`
//! (default 10), `GATEWAY_BENCH_ASYNC_CLIENTS` (default 64), `GATEWAY_BENCH_SEQ` (sequential
//! calls per latency figure, default 3000), `GATEWAY_BENCH_WORKER_MB` (default 1024).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use schemas::names::{collections, AmqpNames};
use schemas::{
    CodeKind, FunctionDoc, InvocationMsg, Mode, Resources, ResultMsg, RunStatus, Runtime, TaskMsg,
};

const MONGODB_URI: &str = "mongodb://127.0.0.1:27017";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NOOP: &str = "def handle(e, c): return None\n";

fn env_or<T: FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hist() -> Histogram<u64> {
    Histogram::new(3).unwrap()
}

/// A quantile in milliseconds (the histograms hold microseconds).
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting: ticks per component, read from /proc.
// ---------------------------------------------------------------------------------------------

/// `utime + stime` of a `/proc/.../stat` text.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks by component, and the machine's busy and total ticks.
#[derive(Debug, Default, Clone)]
struct CpuSample {
    groups: BTreeMap<String, u64>,
    busy: u64,
    total: u64,
}

fn cpu_sample(gateway_pid: u32) -> CpuSample {
    let mut s = CpuSample::default();
    // This process, by thread name (the runtimes are named).
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let p = t.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let Some(ticks) = std::fs::read_to_string(p.join("stat"))
                .ok()
                .and_then(|st| stat_ticks(&st))
            else {
                continue;
            };
            let comm = comm.trim();
            let group = if comm.starts_with("cf-worker") {
                "worker (in-process)"
            } else if comm.starts_with("cf-dispatch") || ["election", "event", "io"].contains(&comm)
            {
                "dispatcher (in-process)"
            } else if comm.starts_with("lapin") {
                "AMQP I/O threads (in-proc.)"
            } else {
                "bench client"
            };
            *s.groups.entry(group.to_owned()).or_default() += ticks;
        }
    }
    let me = std::process::id();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Some(ticks) = std::fs::read_to_string(p.path().join("stat"))
                .ok()
                .and_then(|st| stat_ticks(&st))
            else {
                continue;
            };
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            let group = if pid == gateway_pid {
                "gateway"
            } else if cmd.contains("beam.smp") {
                "rabbitmq"
            } else if cmd.contains("nx-27017") || cmd.contains("mongod") {
                "mongodb"
            } else if cmd.contains("/opt/colorfaas/agent") {
                "containers (agents)"
            } else if cmd.contains("dockerd") || cmd.contains("containerd") {
                "docker"
            } else if cmd.contains("zookeeper") {
                "zookeeper"
            } else if cmd.is_empty() {
                "kernel threads"
            } else {
                ""
            };
            let group = if group.is_empty() {
                // Anything else (e.g. another build on the machine), by process name.
                let st = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
                let name = st
                    .split_once('(')
                    .and_then(|(_, r)| r.rsplit_once(')'))
                    .map_or("?", |(n, _)| n);
                format!("other: {name}")
            } else {
                group.to_owned()
            };
            *s.groups.entry(group).or_default() += ticks;
        }
    }
    if let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        s.total = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        s.busy = s.total.saturating_sub(idle);
    }
    s
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// "component: CPU ms per 1000 invocations" lines for what happened between two samples.
fn cpu_report(a: &CpuSample, b: &CpuSample, invocations: u64, secs: f64) -> Vec<String> {
    let tck = clk_tck();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut rows: Vec<(u64, &str)> = b
        .groups
        .iter()
        .map(|(g, t)| {
            (
                t.saturating_sub(a.groups.get(g).copied().unwrap_or(0)),
                g.as_str(),
            )
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    let busy = b.busy.saturating_sub(a.busy) as f64 / b.total.saturating_sub(a.total).max(1) as f64;
    let mut out = vec![format!(
        "machine busy {:.0}% of {cores:.0} cores over {secs:.1} s; CPU per invocation by component:",
        busy * 100.0
    )];
    for (ticks, g) in rows {
        let cpu_s = ticks as f64 / tck;
        if cpu_s < 0.05 {
            continue;
        }
        out.push(format!(
            "  {g:<28} {:>7.1} µs/inv  ({:>4.0}% of a core)",
            cpu_s * 1e6 / invocations.max(1) as f64,
            cpu_s / secs * 100.0
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The platform under test.
// ---------------------------------------------------------------------------------------------

struct Platform {
    names: AmqpNames,
    db: mongodb::Database,
    conn: lapin::Connection,
    dir: std::path::PathBuf,
    worker_id: String,
    func: FunctionDoc,
    user_id: String,
    key: String,
    gateway: tokio::process::Child,
    gateway_pid: u32,
    gateway_url: String,
    stops: Vec<(&'static str, StopSignal, Running)>,
    /// The dispatcher's environment (to start it again after stopping it).
    dispatcher_env: common::config::Env,
}

/// Starts a component in-process on `rt`: `run` gets a listener on a free port and the future
/// that the returned [`StopSignal`] resolves.
fn spawn_component<F, Fut>(rt: &tokio::runtime::Handle, run: F) -> (StopSignal, Running)
where
    F: FnOnce(tokio::net::TcpListener, futures::future::BoxFuture<'static, ()>) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        run(
            l,
            Box::pin(async move {
                let _ = rx.await;
            }),
        )
        .await
    });
    (tx, task)
}

/// Starts a dispatcher in-process on `rt`.
fn spawn_dispatcher(
    rt: &tokio::runtime::Handle,
    env: &common::config::Env,
) -> (StopSignal, Running) {
    let cfg = dispatcher::Config::from_env(env, &dispatcher::Flags::default()).unwrap();
    spawn_component(rt, move |l, stop| dispatcher::run(cfg, l, stop))
}

/// Ends an in-process component.
type StopSignal = tokio::sync::oneshot::Sender<()>;
/// An in-process component's task.
type Running = tokio::task::JoinHandle<anyhow::Result<()>>;

fn component_env(prefix: &str, db: &str, extra: &[(&str, String)]) -> common::config::Env {
    let mut env: common::config::Env = HashMap::from([
        ("MONGODB_URI".to_owned(), MONGODB_URI.to_owned()),
        ("MONGODB_DB".to_owned(), db.to_owned()),
        ("AMQP_URL".to_owned(), AMQP_URL.to_owned()),
        ("COLORFAAS_AMQP_PREFIX".to_owned(), prefix.to_owned()),
    ]);
    for (k, v) in extra {
        env.insert((*k).to_owned(), v.clone());
    }
    env
}

/// A queue's consumer count (0 when it does not exist).
async fn consumers(conn: &lapin::Connection, queue: &str) -> u32 {
    let Ok(ch) = conn.create_channel().await else {
        return 0;
    };
    let n = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_or(0, |q| q.consumer_count());
    let _ = ch.close(200, "done".into()).await;
    n
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !check().await {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_platform(
    worker_rt: &tokio::runtime::Handle,
    dispatcher_rt: &tokio::runtime::Handle,
    gateway_threads: usize,
) -> Platform {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("bench-gw-{id}");
    let db_name = format!("bench_gw_{id}");
    let names = AmqpNames::new(prefix.clone());
    let db = common::mongo::connect(MONGODB_URI, &db_name)
        .await
        .expect("MongoDB is up (scripts/stack.sh)");
    let conn = common::amqp::connect(AMQP_URL, "gateway bench")
        .await
        .expect("RabbitMQ is up (scripts/stack.sh)");
    let ch = conn.create_channel().await.unwrap();
    common::amqp::declare_topology(&ch, &names).await.unwrap();

    // A user with a big balance, a hashed API key and a no-op function, as the portal stores them.
    let now = schemas::now_ms();
    let user_id = format!("ubench{id}");
    db.collection::<schemas::UserDoc>(collections::USERS)
        .insert_one(schemas::UserDoc {
            id: user_id.clone(),
            email: format!("{user_id}@example.com"),
            name: "bench".into(),
            password_hash: "not-a-password".into(),
            balance_micros: 1_000_000_000_000_000,
            spent_micros: 0,
            paid_micros: 0,
            created_at_ms: now,
        })
        .await
        .unwrap();
    let key = format!("cf_{}", uuid::Uuid::new_v4().simple());
    db.collection::<schemas::ApiKeyDoc>(collections::API_KEYS)
        .insert_one(schemas::ApiKeyDoc {
            id: format!("kbench{id}"),
            user_id: user_id.clone(),
            label: "bench".into(),
            key_hash: gateway::store::hash_key(&key),
            created_at_ms: now,
        })
        .await
        .unwrap();
    let sha = common::codestore::put(&db, NOOP.as_bytes()).await.unwrap();
    let func = FunctionDoc {
        id: format!("fbench{id}"),
        user_id: user_id.clone(),
        name: "noop".into(),
        runtime: Runtime::Python3,
        handler: "main.handle".into(),
        filename: "main.py".into(),
        description: String::new(),
        args_schema: Vec::new(),
        mode: Mode::Sync,
        resources: Resources::new(100, 128, 16),
        timeout_ms: 10_000,
        version: 1,
        code_sha256: sha,
        code_size: NOOP.len() as u64,
        code_kind: CodeKind::Single,
        created_at_ms: now,
        updated_at_ms: now,
        retries: 0,
        max_event_age_s: schemas::rules::DEFAULT_MAX_EVENT_AGE_S,
        config: Default::default(),
    };
    db.collection::<FunctionDoc>(collections::FUNCTIONS)
        .insert_one(&func)
        .await
        .unwrap();

    let mut stops = Vec::new();
    // The worker, in this process on its own runtime.
    let dir = std::env::temp_dir().join(format!("colorfaas-gw-bench-{id}"));
    let worker_id = format!("wgb{id}");
    let worker_mb: u64 = env_or("GATEWAY_BENCH_WORKER_MB", 1024);
    let wenv = component_env(
        &prefix,
        &db_name,
        &[
            ("WORKER_ID", worker_id.clone()),
            (
                "WORKER_DIR",
                dir.join("worker").to_string_lossy().into_owned(),
            ),
            ("WORKER_MEMORY_MB", worker_mb.to_string()),
            ("WORKER_PREFETCH", "256".into()),
        ],
    );
    let wcfg = worker::Config::from_env(&wenv, &worker::Flags::default()).unwrap();
    let (tx, task) = spawn_component(worker_rt, move |l, stop| worker::run(wcfg, l, stop));
    stops.push(("worker", tx, task));
    // The dispatcher, likewise.
    let denv = component_env(&prefix, &db_name, &[("DISPATCHER_ID", format!("dgb{id}"))]);
    let (tx, task) = spawn_dispatcher(dispatcher_rt, &denv);
    stops.push(("dispatcher", tx, task));
    // The gateway, as its own process (release binary), rate limits out of the way.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut genv = component_env(
        &prefix,
        &db_name,
        &[
            ("GATEWAY_ADDR", format!("127.0.0.1:{port}")),
            ("GATEWAY_ID", format!("ggb{id}")),
            ("GATEWAY_RATE_PER_SEC", "10000000".into()),
            ("GATEWAY_BURST", "10000000".into()),
            // The async phase without a dispatcher accepts far more runs than ever finish.
            ("GATEWAY_USER_MAX_QUEUED", "1000000000".into()),
            ("GATEWAY_USER_MAX_SYNC", "1000000000".into()),
            ("RUST_LOG", "warn".into()),
        ],
    );
    genv.insert("GATEWAY_THREADS".to_owned(), gateway_threads.to_string());
    let gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .envs(&genv)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the gateway binary");
    let gateway_pid = gateway.id().unwrap();
    let gateway_url = format!("http://127.0.0.1:{port}");

    let probe = reqwest::Client::new();
    wait_for("the gateway is healthy", || async {
        probe
            .get(format!("{gateway_url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let wq = names.worker_queue(&worker_id);
    wait_for("the worker consumes its queue", || async {
        consumers(&conn, &wq).await > 0
    })
    .await;
    let iq = names.invocations_queue();
    wait_for("a dispatcher leads", || async {
        consumers(&conn, &iq).await > 0
    })
    .await;
    Platform {
        names,
        db,
        conn,
        dir,
        worker_id,
        func,
        user_id,
        key,
        gateway,
        gateway_pid,
        gateway_url,
        stops,
        dispatcher_env: denv,
    }
}

impl Platform {
    /// Stops the dispatcher: accepted invocations then wait in RabbitMQ.
    async fn stop_dispatcher(&mut self) {
        let i = self
            .stops
            .iter()
            .position(|(name, _, _)| *name == "dispatcher")
            .expect("a dispatcher runs");
        let (_, tx, task) = self.stops.remove(i);
        let _ = tx.send(());
        let stopped = tokio::time::timeout(Duration::from_secs(60), task).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "the dispatcher stops: {stopped:?}"
        );
    }

    /// Starts the dispatcher again and waits until it leads.
    async fn start_dispatcher(&mut self, rt: &tokio::runtime::Handle) {
        let (tx, task) = spawn_dispatcher(rt, &self.dispatcher_env);
        self.stops.push(("dispatcher", tx, task));
        let iq = self.names.invocations_queue();
        wait_for("a dispatcher leads again", || async {
            consumers(&self.conn, &iq).await > 0
        })
        .await;
    }

    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.gateway_pid.to_string())
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.gateway.wait()).await;
        // Dispatcher first (no new tasks), then the worker (removes its containers).
        for (name, tx, task) in self.stops.into_iter().rev() {
            let _ = tx.send(());
            match tokio::time::timeout(Duration::from_secs(60), task).await {
                Ok(Ok(Ok(()))) => {}
                other => eprintln!("{name} did not stop cleanly: {other:?}"),
            }
        }
        let ch = self.conn.create_channel().await.unwrap();
        for q in [
            self.names.worker_queue(&self.worker_id),
            self.names.invocations_queue(),
            self.names.dispatcher_results_queue(),
            self.names.callbacks_queue(),
            self.names.dead_letter_queue(),
        ] {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        for ex in [
            self.names.results_exchange(),
            self.names.heartbeats_exchange(),
            self.names.control_exchange(),
            self.names.dead_letter_exchange(),
        ] {
            let _ = ch
                .exchange_delete(ex.as_str().into(), Default::default())
                .await;
        }
        let _ = self.db.drop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = self.conn.close(200, "bench done".into()).await;
    }

    /// An invocation of the no-op function, answered to `reply_to`.
    fn invocation(&self, reply_to: &str) -> InvocationMsg {
        let f = &self.func;
        InvocationMsg {
            v: schemas::MESSAGE_VERSION,
            run_id: uuid::Uuid::now_v7().to_string(),
            user_id: self.user_id.clone(),
            function_id: f.id.clone(),
            function: f.name.clone(),
            version: f.version,
            runtime: f.runtime,
            handler: f.handler.clone(),
            code_sha256: f.code_sha256.clone(),
            code_kind: f.code_kind,
            filename: f.filename.clone(),
            resources: f.resources,
            timeout_ms: f.timeout_ms,
            mode: Mode::Sync,
            args: serde_json::json!({}),
            reply_to: Some(reply_to.to_owned()),
            callback_url: None,
            created_at_ms: schemas::now_ms(),
            hold: None,
            retry: Default::default(),
            config: Default::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.
// ---------------------------------------------------------------------------------------------

/// One invocation through the gateway: `Ok(cold_start)` on 200 (sync) or 202 (async), else
/// what went wrong.
async fn invoke(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    mode: &'static str,
) -> Result<bool, String> {
    let resp = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-invocation-type", mode)
        .body("{}")
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = resp.status().as_u16();
    let cold = resp
        .headers()
        .get("x-cold-start")
        .is_some_and(|v| v == "true");
    let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    match (mode, status) {
        ("sync", 200) | ("async", 202) => Ok(cold),
        _ => {
            // Errors are counted by status and the contract's error code.
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Err(format!("HTTP {status} {code}").trim_end().to_owned())
        }
    }
}

/// What a fixed-duration load phase measured.
#[derive(Debug)]
struct Load {
    ok: u64,
    /// Successes per second in each tenth of the phase.
    windows: Vec<f64>,
    errors: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    secs: f64,
}

/// `clients` loops invoking for `secs` seconds.
async fn load(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    mode: &'static str,
    clients: usize,
    secs: f64,
) -> Load {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let step = Duration::from_secs_f64(secs / 10.0);
            let mut windows = Vec::new();
            let mut last = 0;
            for _ in 0..10 {
                tokio::time::sleep(step).await;
                let now = done.load(Ordering::Relaxed);
                windows.push((now - last) as f64 / step.as_secs_f64());
                last = now;
            }
            windows
        })
    };
    let loops: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.to_owned(), key.to_owned());
            let done = done.clone();
            tokio::spawn(async move {
                let mut h = hist();
                let mut ok = 0u64;
                let mut errors = BTreeMap::<String, u64>::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    match invoke(&client, &url, &key, mode).await {
                        Ok(_) => {
                            ok += 1;
                            done.fetch_add(1, Ordering::Relaxed);
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                        Err(e) => *errors.entry(e).or_default() += 1,
                    }
                }
                (ok, errors, h)
            })
        })
        .collect();
    let mut out = Load {
        ok: 0,
        windows: Vec::new(),
        errors: BTreeMap::new(),
        latency: hist(),
        secs: 0.0,
    };
    for l in loops {
        let (ok, errors, h) = l.await.unwrap();
        out.ok += ok;
        for (e, n) in errors {
            *out.errors.entry(e).or_default() += n;
        }
        out.latency.add(h).unwrap();
    }
    out.secs = t0.elapsed().as_secs_f64();
    out.windows = sampler.await.unwrap();
    out
}

fn windows(l: &Load) -> String {
    let w: Vec<String> = l.windows.iter().map(|r| format!("{r:.0}")).collect();
    w.join(" ")
}

/// The gateway's budget check (one conditional update reserving an invocation's worst case on
/// the user's counters; released again here), then what summing the user's finished unbilled
/// runs would cost instead (what initialising the counters of an older account does once), and
/// how many runs that sum has to look at.
async fn credit_check_cost(p: &Platform) -> (f64, f64, u64) {
    use bson::doc;
    let mut check = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let r = accounts::reserve(&p.db, &p.user_id, 1, false, &accounts::Limits::default()).await;
        check = check.min(t.elapsed().as_secs_f64() * 1000.0);
        let r = r.expect("the bench user can reserve");
        let hold = r.hold();
        r.hand_over();
        accounts::hold::release(&p.db, &p.user_id, &hold)
            .await
            .expect("releasing the reservation");
    }
    let runs = p.db.collection::<bson::Document>(collections::RUNS);
    let n = runs
        .count_documents(doc! {"user_id": &p.user_id})
        .await
        .unwrap_or(0);
    let finals: Vec<&str> = RunStatus::FINAL.iter().map(|s| s.as_str()).collect();
    let filter = doc! {
        "bill_state": bson::to_bson(&schemas::BillState::Unbilled).unwrap(),
        "user_id": &p.user_id,
        "status": {"$in": finals},
    };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let pipeline = vec![
            doc! {"$match": filter.clone()},
            doc! {"$group": {"_id": bson::Bson::Null, "total": {"$sum": "$billed_micros"}}},
        ];
        if let Ok(cur) = runs.aggregate(pipeline).await {
            let _ = cur.try_collect::<Vec<_>>().await;
        }
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
    }
    (check, best, n)
}

/// A private reply queue and its consumer.
async fn reply_queue(conn: &lapin::Connection) -> (lapin::Channel, String, lapin::Consumer) {
    let ch = conn.create_channel().await.unwrap();
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
    (ch, q.name().to_string(), consumer)
}

async fn next_result(consumer: &mut lapin::Consumer) -> ResultMsg {
    let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a result in time")
        .expect("the consumer is open")
        .expect("a delivery");
    let r: ResultMsg = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    r
}

/// Sequential round trips without the gateway: `to_worker` publishes tasks straight to the
/// worker's queue (stamped `epoch`), else invocations to the dispatcher. Publishes are
/// confirmed, as the gateway's are.
async fn direct_sequential(
    p: &Platform,
    to_worker: Option<u64>,
    n: usize,
    warmup: usize,
) -> (Histogram<u64>, u64) {
    let (_rch, reply, mut consumer) = reply_queue(&p.conn).await;
    let ch = common::amqp::confirm_channel(&p.conn).await.unwrap();
    let mut h = hist();
    let mut epoch = 0;
    for i in 0..n + warmup {
        let inv = p.invocation(&reply);
        let t = Instant::now();
        match to_worker {
            Some(epoch) => {
                let task = TaskMsg {
                    v: schemas::MESSAGE_VERSION,
                    epoch,
                    worker_id: p.worker_id.clone(),
                    dispatched_at_ms: schemas::now_ms(),
                    invocation: inv,
                };
                common::amqp::publish_confirmed(
                    &ch,
                    "",
                    &p.names.worker_queue(&p.worker_id),
                    &serde_json::to_vec(&task).unwrap(),
                    common::amqp::props("task", true),
                )
                .await
                .unwrap();
            }
            None => {
                common::amqp::publish_confirmed(
                    &ch,
                    "",
                    &p.names.invocations_queue(),
                    &serde_json::to_vec(&inv).unwrap(),
                    common::amqp::props("invocation", true),
                )
                .await
                .unwrap();
            }
        }
        let r = next_result(&mut consumer).await;
        epoch = r.epoch;
        if i >= warmup {
            h.record(t.elapsed().as_micros() as u64).unwrap();
        }
    }
    (h, epoch)
}

/// Throughput without the gateway: invocations published to the dispatcher, `inflight` at a
/// time, for `secs`.
async fn direct_throughput(p: &Platform, inflight: usize, secs: f64) -> f64 {
    let (_rch, reply, mut consumer) = reply_queue(&p.conn).await;
    let ch = p.conn.create_channel().await.unwrap();
    let queue = p.names.invocations_queue();
    let send = |ch: &lapin::Channel| {
        let body = serde_json::to_vec(&p.invocation(&reply)).unwrap();
        let ch = ch.clone();
        let queue = queue.clone();
        async move {
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                common::amqp::props("invocation", true),
            )
            .await
            .unwrap();
        }
    };
    for _ in 0..inflight {
        send(&ch).await;
    }
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let mut done = 0u64;
    while Instant::now() < until {
        next_result(&mut consumer).await;
        done += 1;
        send(&ch).await;
    }
    let rate = done as f64 / t0.elapsed().as_secs_f64();
    for _ in 0..inflight {
        next_result(&mut consumer).await;
    }
    rate
}

/// The floor: a direct round trip to a warm agent of the same function, no queue, no worker.
async fn floor(p: &Platform, n: usize) -> Histogram<u64> {
    let docker = bollard::Docker::connect_with_defaults().unwrap();
    let dir = p.dir.join("floor");
    let containers =
        worker::docker::Containers::new(docker, &format!("{}f", p.worker_id), &dir, 64, false);
    let code_dir = dir.join("code");
    worker::code::unpack(NOOP.as_bytes(), CodeKind::Single, "main.py", &code_dir).unwrap();
    let spec = worker::docker::Spec {
        key: "floor@1",
        runtime: Runtime::Python3,
        resources: p.func.resources,
    };
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
    let mut h = hist();
    for i in 0..n + 200 {
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
            h.record(t.elapsed().as_micros() as u64).unwrap();
        }
    }
    containers.remove(&c.id, &c.name).await;
    h
}

/// How long one group commit of 64 pending run records takes (the batched writer the gateway
/// waits on before answering 202), with the runs collection as it is now.
async fn insert_probe(p: &Platform) -> f64 {
    let (writer, task) = common::runstore::RunWriter::spawn(p.db.clone());
    let docs: Vec<_> = (0..64)
        .map(|_| {
            let mut inv = p.invocation("probe");
            inv.user_id = "probe".into();
            common::runstore::RunWrite::Pending(Box::new(common::runstore::pending_doc(&inv)))
        })
        .collect();
    // One write first, so the 64 below go as one batch.
    let mut inv = p.invocation("probe");
    inv.user_id = "probe".into();
    writer
        .write_durable(common::runstore::RunWrite::Pending(Box::new(
            common::runstore::pending_doc(&inv),
        )))
        .await
        .unwrap();
    let t = Instant::now();
    futures::future::join_all(docs.into_iter().map(|d| writer.write_durable(d))).await;
    let took = t.elapsed().as_secs_f64() * 1000.0;
    drop(writer);
    let _ = task.await;
    took
}

/// Sums and counts of the gateway's two acceptance-stage histograms, read from its `/metrics`:
/// publish → broker confirm, and an async run's pending-record write.
#[derive(Debug, Default, Clone, Copy)]
struct Stages {
    publish: (f64, f64),
    record: (f64, f64),
}

async fn stages(client: &reqwest::Client, p: &Platform) -> Stages {
    let text = client
        .get(format!("{}/metrics", p.gateway_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Stages {
        publish: (
            value("colorfaas_gateway_publish_confirm_seconds_sum"),
            value("colorfaas_gateway_publish_confirm_seconds_count"),
        ),
        record: (
            value("colorfaas_gateway_pending_record_seconds_sum"),
            value("colorfaas_gateway_pending_record_seconds_count"),
        ),
    }
}

/// The mean wait of each stage between two readings, as a report line.
fn stage_report(a: Stages, b: Stages) -> String {
    let mean = |x: (f64, f64), y: (f64, f64)| {
        let n = y.1 - x.1;
        if n > 0.0 {
            format!("{:.2} ms", (y.0 - x.0) / n * 1000.0)
        } else {
            "-".to_owned()
        }
    };
    format!(
        "acceptance waited (both at once; the slower sets the latency): broker confirm {} mean, pending record stored {} mean",
        mean(a.publish, b.publish),
        mean(a.record, b.record)
    )
}

/// The number of run records stored.
async fn runs_stored(p: &Platform) -> u64 {
    p.db.collection::<bson::Document>(collections::RUNS)
        .estimated_document_count()
        .await
        .unwrap_or(0)
}

/// Waits until an async run accepted now has succeeded: the backlog before it has drained
/// (one user's invocations are dispatched in order).
async fn drain(client: &reqwest::Client, p: &Platform, url: &str) -> f64 {
    let t0 = Instant::now();
    let resp = client
        .post(url)
        .bearer_auth(&p.key)
        .header("x-invocation-type", "async")
        .body("{}")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    let run_url = format!(
        "{}/v1/runs/{}",
        p.gateway_url,
        body["run_id"].as_str().unwrap()
    );
    loop {
        let run: serde_json::Value = client
            .get(&run_url)
            .bearer_auth(&p.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        if run["status"] == "succeeded" {
            return t0.elapsed().as_secs_f64();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the async backlog did not drain: {run}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn runtime(name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// A component's runtime built the way its binary builds it (`common::service::runtime` with
/// the configured threads), driven by a thread of its own until dropped.
struct ComponentRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ComponentRuntime {
    fn new(name: &str, threads: usize) -> ComponentRuntime {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = common::service::runtime(threads).unwrap();
                handle_tx.send(rt.handle().clone()).unwrap();
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .unwrap();
        ComponentRuntime {
            handle: handle_rx.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ComponentRuntime {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(std::thread::JoinHandle::join);
    }
}

/// Runtime threads of the components, from this process's environment (`WORKER_THREADS`,
/// `DISPATCHER_THREADS`, `GATEWAY_THREADS`) through each component's own configuration.
struct Threads {
    worker: usize,
    dispatcher: usize,
    gateway: usize,
}

impl Threads {
    fn from_process_env() -> Threads {
        let env = common::config::process_env();
        Threads {
            worker: worker::Config::from_env(
                &threads_env(&env, "WORKER_THREADS"),
                &Default::default(),
            )
            .unwrap()
            .threads,
            dispatcher: dispatcher::Config::from_env(
                &threads_env(&env, "DISPATCHER_THREADS"),
                &Default::default(),
            )
            .unwrap()
            .threads,
            gateway: gateway::Config::from_env(
                &threads_env(&env, "GATEWAY_THREADS"),
                &Default::default(),
            )
            .unwrap()
            .threads,
        }
    }
}

/// Only `key` of `env` (the other variables would configure the component otherwise).
fn threads_env(env: &common::config::Env, key: &str) -> common::config::Env {
    env.iter()
        .filter(|(k, _)| *k == key)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn main() {
    let threads = Threads::from_process_env();
    let worker_rt = ComponentRuntime::new("cf-worker", threads.worker);
    let dispatcher_rt = ComponentRuntime::new("cf-dispatch", threads.dispatcher);
    let client_rt = runtime("cf-client", 2);
    client_rt.block_on(bench(&worker_rt.handle, &dispatcher_rt.handle, &threads));
    drop(worker_rt);
    drop(dispatcher_rt);
}

async fn bench(
    worker_rt: &tokio::runtime::Handle,
    dispatcher_rt: &tokio::runtime::Handle,
    threads: &Threads,
) {
    let secs: f64 = env_or("GATEWAY_BENCH_SECS", 60.0);
    let clients: usize = env_or("GATEWAY_BENCH_CLIENTS", 32);
    let async_secs: f64 = env_or("GATEWAY_BENCH_ASYNC_SECS", 10.0);
    let async_clients: usize = env_or("GATEWAY_BENCH_ASYNC_CLIENTS", 64);
    let seq: usize = env_or("GATEWAY_BENCH_SEQ", 3000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut p = start_platform(worker_rt, dispatcher_rt, threads.gateway).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("{}/v1/invoke/{}", p.gateway_url, p.func.name);
    let mut out: Vec<String> = Vec::new();

    // Cold start, then warm up.
    let t = Instant::now();
    let cold = invoke(&client, &url, &p.key, "sync").await.unwrap();
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(cold, "the first call is a cold start");
    for _ in 0..300 {
        assert!(!invoke(&client, &url, &p.key, "sync").await.unwrap());
    }

    // 1. Sync latency, sequential, through the gateway.
    let mut sync = hist();
    for _ in 0..seq {
        let t = Instant::now();
        let cold = invoke(&client, &url, &p.key, "sync").await.unwrap();
        assert!(!cold);
        sync.record(t.elapsed().as_micros() as u64).unwrap();
    }
    // The same round trip without the gateway (dispatcher + worker), and without the
    // dispatcher (worker only, tasks stamped with the leader's epoch).
    let (via_dispatcher, epoch) = direct_sequential(&p, None, seq, 200).await;
    let (via_worker, _) = direct_sequential(&p, Some(epoch), seq, 200).await;
    // 2. The floor.
    let floor = floor(&p, seq).await;

    // 3. Async acceptance, then let the backlog it leaves run (not measured).
    let runs_before_async = runs_stored(&p).await;
    let probe_before = insert_probe(&p).await;
    let s0 = stages(&client, &p).await;
    let a = cpu_sample(p.gateway_pid);
    let acc = load(&client, &url, &p.key, "async", async_clients, async_secs).await;
    let b = cpu_sample(p.gateway_pid);
    let acc_stages = stage_report(s0, stages(&client, &p).await);
    let acc_cpu = cpu_report(&a, &b, acc.ok, acc.secs);
    let drained_secs = drain(&client, &p, &url).await;
    // 3b. The same while nothing executes (dispatcher stopped): what accepting alone costs,
    // the backlog waiting in RabbitMQ; then the dispatcher is back and the backlog runs.
    p.stop_dispatcher().await;
    let s0 = stages(&client, &p).await;
    let a = cpu_sample(p.gateway_pid);
    let burst = load(&client, &url, &p.key, "async", async_clients, async_secs).await;
    let b = cpu_sample(p.gateway_pid);
    let burst_stages = stage_report(s0, stages(&client, &p).await);
    let burst_cpu = cpu_report(&a, &b, burst.ok, burst.secs);
    p.start_dispatcher(dispatcher_rt).await;
    let burst_drained = drain(&client, &p, &url).await;

    // 4. Sustained sync throughput. Warm several containers first (not measured).
    let _ = load(&client, &url, &p.key, "sync", clients, 3.0).await;
    let a = cpu_sample(p.gateway_pid);
    let tput = load(&client, &url, &p.key, "sync", clients, secs).await;
    let b = cpu_sample(p.gateway_pid);
    let tput_cpu = cpu_report(&a, &b, tput.ok, tput.secs);
    let (check_ms, credit_ms, user_runs) = credit_check_cost(&p).await;
    let probe_after = insert_probe(&p).await;
    let runs_after = runs_stored(&p).await;
    // 5. The same load without the gateway.
    let direct_secs = (secs / 6.0).clamp(3.0, 10.0);
    let a = cpu_sample(p.gateway_pid);
    let t0 = Instant::now();
    let direct_rate = direct_throughput(&p, clients, direct_secs).await;
    let direct_elapsed = t0.elapsed().as_secs_f64();
    let b = cpu_sample(p.gateway_pid);
    let direct_cpu = cpu_report(&a, &b, (direct_rate * direct_secs) as u64, direct_elapsed);

    // Report.
    let rate = tput.ok as f64 / tput.secs;
    let errors: u64 = tput.errors.values().sum();
    let acc_rate = acc.ok as f64 / acc.secs;
    let acc_errors: u64 = acc.errors.values().sum();
    let (p50, p99) = (ms(&sync, 0.5), ms(&sync, 0.99));
    out.push(format!(
        "gateway benchmark: no-op python3 function (100 mCPU, 128 MB), worker {} MB, {cores} cores shared by everything",
        env_or("GATEWAY_BENCH_WORKER_MB", 1024u64)
    ));
    out.push(format!(
        "  runtime threads: worker {}, dispatcher {}, gateway {} (WORKER_THREADS, DISPATCHER_THREADS, GATEWAY_THREADS)",
        threads.worker, threads.dispatcher, threads.gateway,
    ));
    out.push(format!(
        "  cold start through the gateway (1 call): {cold_ms:.0} ms"
    ));
    out.push(format!(
        "  {:<44} {:>9} {:>9}   {}",
        "sequential round trips (n per row)", "p50 ms", "p99 ms", "target"
    ));
    out.push(format!(
        "  {:<44} {:>9.3} {:>9.3}   p50 <= 3 ms: {}, p99 <= 15 ms: {}",
        format!("sync via gateway (n={seq})"),
        p50,
        p99,
        verdict(p50 <= 3.0),
        verdict(p99 <= 15.0)
    ));
    for (name, h) in [
        (
            "invocation -> dispatcher -> worker -> reply",
            &via_dispatcher,
        ),
        ("task -> worker -> reply (no dispatcher)", &via_worker),
        ("floor: direct agent round trip", &floor),
    ] {
        out.push(format!(
            "  {name:<44} {:>9.3} {:>9.3}",
            ms(h, 0.5),
            ms(h, 0.99)
        ));
    }
    out.push(format!(
        "  ratio sync p50 / floor p50: {:.1}x",
        p50 / ms(&floor, 0.5)
    ));
    out.push(format!(
        "  p50 breakdown: container {:.3} ms + worker {:.3} ms + dispatcher hop {:.3} ms + gateway/HTTP {:.3} ms",
        ms(&floor, 0.5),
        ms(&via_worker, 0.5) - ms(&floor, 0.5),
        ms(&via_dispatcher, 0.5) - ms(&via_worker, 0.5),
        p50 - ms(&via_dispatcher, 0.5)
    ));
    out.push(format!(
        "  async acceptance, {async_clients} clients, {:.0} s: {acc_rate:.0} accepted/s, {acc_errors} errors {:?} (target >= 3000/s: {}); latency p50 {:.2} ms p99 {:.2} ms",
        acc.secs,
        acc.errors,
        verdict(acc_rate >= 3000.0 && acc_errors == 0),
        ms(&acc.latency, 0.5),
        ms(&acc.latency, 0.99)
    ));
    out.push(format!(
        "    accepted/s by tenth of the run: {}",
        windows(&acc)
    ));
    out.push(format!("    {acc_stages}"));
    out.extend(acc_cpu.iter().map(|l| format!("    {l}")));
    out.push(format!(
        "    MongoDB: one group commit of 64 pending runs took {probe_before:.0} ms with {runs_before_async} runs stored; the backlog then drained in {drained_secs:.1} s"
    ));
    let burst_rate = burst.ok as f64 / burst.secs;
    out.push(format!(
        "  async acceptance while nothing executes (dispatcher stopped, runs wait in RabbitMQ), {async_clients} clients, {:.0} s: {burst_rate:.0} accepted/s, {} errors {:?}; latency p50 {:.2} ms p99 {:.2} ms; the backlog then ran in {burst_drained:.1} s",
        burst.secs,
        burst.errors.values().sum::<u64>(),
        burst.errors,
        ms(&burst.latency, 0.5),
        ms(&burst.latency, 0.99)
    ));
    out.push(format!("    {burst_stages}"));
    out.extend(burst_cpu.iter().map(|l| format!("    {l}")));
    out.push(format!(
        "  sustained sync, {clients} clients, {:.0} s: {rate:.0} invocations/s, {errors} errors {:?} (target >= 1000/s, 0 errors: {}); latency p50 {:.2} ms p99 {:.2} ms",
        tput.secs,
        tput.errors,
        verdict(rate >= 1000.0 && errors == 0),
        ms(&tput.latency, 0.5),
        ms(&tput.latency, 0.99)
    ));
    out.push(format!(
        "    invocations/s by tenth of the run: {}",
        windows(&tput)
    ));
    out.extend(tput_cpu.iter().map(|l| format!("    {l}")));
    out.push(format!(
        "    after it: budget check (reserving on the user's counters) {check_ms:.1} ms, where summing the user's {user_runs} runs would take {credit_ms:.0} ms; group commit of 64 pending runs {probe_after:.0} ms with {runs_after} runs stored"
    ));
    out.push(format!(
        "  same load without the gateway ({clients} in flight straight to the invocations queue, {direct_secs:.0} s): {direct_rate:.0} invocations/s"
    ));
    out.extend(direct_cpu.iter().map(|l| format!("    {l}")));

    p.stop().await;
    println!("{}", out.join("\n"));
}
