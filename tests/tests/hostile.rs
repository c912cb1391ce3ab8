//! Hostile functions through the whole pipeline (gateway → RabbitMQ → dispatcher → worker →
//! Docker), each asserting how its run ends, that it is billed by the worker's clock, that the
//! worker stays healthy and serves the next call, and that another tenant's calls keep
//! succeeding meanwhile; then containers killed or removed from outside (`docker kill`,
//! `docker rm -f`), idle containers frozen, and logs kept by runs that are killed.
//! Latencies and the host's disk growth are printed, never asserted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemas::{Resources, Runtime};
use serde_json::{json, Value};
use tests::{eventually, Sandbox};

const NO_RATE_LIMIT: [(&str, &str); 2] = [
    ("GATEWAY_RATE_PER_SEC", "1000000"),
    ("GATEWAY_BURST", "1000000"),
];
const ECHO_PY: &str = "def handle(event, context):\n    return event\n";
/// The hostile suite's worker: small enough that one function can ask for all of it...
const WORKER_MB: u64 = 1024;
/// ...but for the other tenant's warm container and the probe's.
const BIG_MB: u64 = WORKER_MB - 256;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A sync call: HTTP status, body, and the run id (header or body).
async fn call(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    function: &str,
    args: &Value,
) -> (u16, Value, String) {
    let resp = client
        .post(format!("http://{gw}/v1/invoke/{function}"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-invocation-type", "sync")
        .body(args.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let header_id = resp
        .headers()
        .get("x-run-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let run_id = header_id
        .or_else(|| body["run_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{function}: no run id in {status} {body}"));
    (status, body, run_id)
}

/// An async call: its run id.
async fn call_async(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    function: &str,
    args: &Value,
) -> String {
    let resp = client
        .post(format!("http://{gw}/v1/invoke/{function}"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-invocation-type", "async")
        .body(args.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    body["run_id"].as_str().unwrap().to_owned()
}

/// `GET /v1/runs/{id}` once it is in `status` (or any final state when `None`).
async fn run_in(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    run_id: &str,
    status: Option<&str>,
) -> Value {
    eventually(
        Duration::from_secs(60),
        "the run reaches its state",
        || async {
            let r = client
                .get(format!("http://{gw}/v1/runs/{run_id}"))
                .bearer_auth(key)
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            let s = v["status"].as_str()?;
            let done = match status {
                Some(want) => s == want,
                None => !matches!(s, "pending" | "running"),
            };
            done.then_some(v)
        },
    )
    .await
}

/// The price of `ms` of a run of `r` (the worker's prices: the seeded defaults).
fn cost(ms: u64, r: Resources) -> i64 {
    common::pricing::Prices::default().run_cost(ms, r)
}

/// A function of tenant `user` with non-default resources and timeout.
#[allow(clippy::too_many_arguments)]
async fn deploy(
    sb: &Sandbox,
    user: &str,
    name: &str,
    runtime: Runtime,
    filename: &str,
    handler: &str,
    source: &str,
    resources: Resources,
    timeout_ms: u64,
) {
    let mut f = sb
        .function_doc(user, name, runtime, filename, handler, source)
        .await;
    f.resources = resources;
    f.timeout_ms = timeout_ms;
    sb.insert_function(&f).await;
}

/// Another tenant calling its warm function in a loop while the attacks run.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>, hdrhistogram::Histogram<u64>)>,
}

impl Bystander {
    fn start(client: reqwest::Client, gw: SocketAddr, key: String) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let (mut n, mut failures) = (0usize, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                let t = Instant::now();
                let (status, body, _) = call(&client, gw, &key, "echo", &json!({"n": n})).await;
                let _ = h.record(t.elapsed().as_micros() as u64);
                if status != 200 || body != json!({"n": n}) {
                    failures.push(format!("{status} {body}"));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, failures, h)
        });
        Bystander { stop, task }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let (n, failures, h) = self.task.await.unwrap();
        println!(
            "bystander: {n} calls, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
        assert!(n > 0, "the other tenant made no call");
        assert!(
            failures.is_empty(),
            "the other tenant's calls failed: {failures:?}"
        );
    }
}

/// Bytes of a container's Docker log, rotated files included.
fn log_bytes(log_path: &str) -> u64 {
    let path = std::path::Path::new(log_path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let name = name.to_string_lossy().into_owned();
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Bytes of this host's disk that the suite can grow: the worker's folder, the worker's
/// containers' writable layers and Docker logs.
async fn disk_of(worker_dir: &std::path::Path, worker_id: &str, sb: &Sandbox) -> (u64, u64) {
    fn du(p: &std::path::Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if !meta.is_dir() {
            return meta.len();
        }
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    }
    let docker = bollard::Docker::connect_with_defaults().unwrap();
    let mut container_bytes = 0;
    for c in sb.containers_of(worker_id).await {
        let Some(id) = c.id else { continue };
        if let Ok(info) = docker
            .inspect_container(
                &id,
                Some(bollard::query_parameters::InspectContainerOptions { size: true }),
            )
            .await
        {
            container_bytes += info.size_rw.unwrap_or(0).max(0) as u64;
            container_bytes += log_bytes(info.log_path.as_deref().unwrap_or_default());
        }
    }
    (du(worker_dir), container_bytes)
}

/// The worker answers `/healthz` and serves tenant A's next call; returns that call's latency.
async fn still_serving(
    client: &reqwest::Client,
    gw: SocketAddr,
    worker: SocketAddr,
    key: &str,
) -> Duration {
    let health = client
        .get(format!("http://{worker}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "the worker is unhealthy");
    let t = Instant::now();
    let (status, body, _) = call(client, gw, key, "probe", &json!({"ok": 1})).await;
    assert_eq!((status, body), (200, json!({"ok": 1})));
    t.elapsed()
}

const IMPORT_LOOP: &str =
    "print('importing forever')\nwhile True:\n    pass\n\ndef handle(e, c):\n    return 1\n";

const TIMER_TAMPER: &str = r#"
import sys, time
def handle(e, c):
    sys.modules['__main__']._perf_ns = lambda: 0
    time.sleep(1.5)
    return 'slept'
"#;

const FORK_BOMB: &str = r#"
import os
def handle(e, c):
    print('forking')
    while True:
        try:
            os.fork()
        except OSError:
            pass
"#;

const MEMORY_HOG: &str = r#"
import time
def handle(e, c):
    print('about to allocate')
    time.sleep(0.3)
    blocks = []
    while True:
        blocks.append(b'x' * (16 * 1024 * 1024))
"#;

const GIGABYTE_OUT: &str = r#"
import os, sys
def handle(e, c):
    chunk = b'o' * (1 << 20)
    for _ in range(512):
        os.write(1, chunk)
    text = 'p' * (1 << 20)
    for _ in range(512):
        sys.stdout.write(text)
    print('END-OF-GIGABYTE')
    return 'done'
"#;

const FLOOD_AFTER_RETURN: &str = r#"
import os, threading
started = []
def flood():
    chunk = b'z' * 65536
    while True:
        os.write(2, chunk)
def handle(e, c):
    if not started:
        started.append(1)
        threading.Thread(target=flood, daemon=True).start()
    return 'returned'
"#;

const BIG_RESULT: &str = "def handle(e, c):\n    return 'x' * 100_000_000\n";

const DEEP_JSON: &str =
    "def handle(e, c):\n    x = []\n    for _ in range(e['depth']):\n        x = [x]\n    return x\n";

/// Writes a forged answer (or garbage) straight onto the agent's socket, then hangs.
const FORGE: &str = r#"
import base64, sys, time
def handle(e, c):
    sys.modules['__main__']._conn.sendall(base64.b64decode(e['bytes']))
    time.sleep(30)
"#;

/// Closes the agent's connection to the worker, then hangs.
const HANG_UP: &str = r#"
import socket, sys, time
def handle(e, c):
    sys.modules['__main__']._conn.shutdown(socket.SHUT_RDWR)
    time.sleep(30)
"#;

const HUGE_ERROR: &str = "def handle(e, c):\n    raise ValueError('e' * 10_000_000)\n";

const WRITE_EVERYWHERE: &str = r#"
import os
def handle(e, c):
    out = {}
    try:
        with open('/run/colorfaas/fill', 'wb') as f:
            for _ in range(1024):
                f.write(b'r' * 1024)
                f.flush()
        out['run'] = 'wrote 1 MB'
    except OSError:
        out['run'] = os.path.getsize('/run/colorfaas/fill')
    for path in ('/code/planted', '/planted', '/run/colorfaas/agent.sock'):
        try:
            with open(path, 'w') as f:
                f.write('x')
            out[path] = 'written'
        except OSError as err:
            out[path] = type(err).__name__
    n = 0
    try:
        with open('/tmp/fill', 'wb') as f:
            while True:
                f.write(b't' * (1 << 20))
                f.flush()
                n += 1
    except OSError:
        pass
    out['tmp_mb'] = n
    return out
"#;

const SPIN_AFTER_RETURN: &str = r#"
import threading, time
state = {'n': 0}
def spin():
    while True:
        state['n'] += 1
def handle(e, c):
    if e.get('start'):
        threading.Thread(target=spin, daemon=True).start()
        time.sleep(0.05)
    return state['n']
"#;

const EXEC_ESCAPE: &str = r#"#!/usr/bin/python3
import json, os, sys, time
event = sys.stdin.read()
if 'spawn' in event:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for fd in (0, 1, 2):
                os.close(fd)
            while True:
                time.sleep(0.01)
        os._exit(0)
    os.wait()
    print(json.dumps('spawned'))
else:
    others = []
    for p in os.listdir('/proc'):
        if not p.isdigit() or int(p) in (1, os.getpid()):
            continue
        try:
            state = open('/proc/%s/stat' % p).read().rsplit(') ', 1)[1].split()[0]
        except OSError:
            continue
        if state != 'Z':
            others.append(int(p))
    print(json.dumps(others))
"#;

/// A forged frame, base64-encoded for the FORGE function.
fn forged(bytes: &[u8]) -> Value {
    use base64::Engine as _;
    json!({"bytes": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// One attack's run: checks its end, its error code and that it was billed at least `min_ms`
/// of the worker's clock; returns the run.
#[allow(clippy::too_many_arguments)]
async fn attack(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    function: &str,
    args: Value,
    http_status: u16,
    status: &str,
    code: Option<&str>,
    min_ms: u64,
    resources: Resources,
) -> Value {
    let t = Instant::now();
    let (got, body, run_id) = call(client, gw, key, function, &args).await;
    let took = t.elapsed();
    let run = run_in(client, gw, key, &run_id, None).await;
    assert_eq!(got, http_status, "{function}: {body}");
    assert_eq!(run["status"], status, "{function}: {run}");
    assert_eq!(run["error"]["code"].as_str(), code, "{function}: {run}");
    let ms = run["duration_ms"].as_u64().unwrap();
    let billed = run["billed_micros"].as_i64().unwrap();
    assert!(
        ms >= min_ms.max(1),
        "{function}: billed {ms} ms, ran at least {min_ms} ms"
    );
    assert!(
        billed >= cost(ms, resources) && billed > 0,
        "{function}: {billed} micros for {ms} ms"
    );
    println!(
        "attack {function}: {got} {status} {} after {:.0} ms; billed {ms} ms = {billed} micros; {}",
        code.unwrap_or("-"),
        took.as_secs_f64() * 1000.0,
        run["error"]["message"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(140)
            .collect::<String>()
    );
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_functions_are_contained_billed_and_the_worker_keeps_serving() {
    let mut sb = Sandbox::new("hostile").await;
    let worker_id = format!("w{}", tests::rand_id());
    let worker_dir = std::env::temp_dir()
        .join("colorfaas-tests")
        .join(&worker_id);
    let mb = WORKER_MB.to_string();
    let (w, d, gw) = sb
        .start_pipeline(
            &[("WORKER_ID", &worker_id), ("WORKER_MEMORY_MB", &mb)],
            &NO_RATE_LIMIT,
        )
        .await;
    let (attacker, key) = sb.seed_tenant(1_000_000_000_000).await;
    let (other, other_key) = sb.seed_tenant(1_000_000_000_000).await;
    let small = Resources::new(500, 128, 64);
    let py = Runtime::Python3;
    sb.seed_function(&attacker, "probe", py, "main.py", "main.handle", ECHO_PY)
        .await;
    sb.seed_function(&other, "echo", py, "main.py", "main.handle", ECHO_PY)
        .await;
    let fns: [(&str, &str, Resources, u64); 14] = [
        (
            "import_loop",
            IMPORT_LOOP,
            Resources::new(500, BIG_MB, 64),
            2000,
        ),
        ("timer", TIMER_TAMPER, small, 10_000),
        ("fork_bomb", FORK_BOMB, small, 2000),
        (
            "memory_hog",
            MEMORY_HOG,
            Resources::new(500, 64, 16),
            20_000,
        ),
        (
            "gigabyte",
            GIGABYTE_OUT,
            Resources::new(1000, 128, 64),
            120_000,
        ),
        ("flood", FLOOD_AFTER_RETURN, small, 5000),
        (
            "big_result",
            BIG_RESULT,
            Resources::new(1000, 512, 64),
            30_000,
        ),
        ("deep", DEEP_JSON, small, 5000),
        ("forge", FORGE, small, 10_000),
        ("hang_up", HANG_UP, small, 10_000),
        ("huge_error", HUGE_ERROR, small, 10_000),
        (
            "everywhere",
            WRITE_EVERYWHERE,
            Resources::new(500, 128, 32),
            20_000,
        ),
        ("spin", SPIN_AFTER_RETURN, small, 5000),
        ("big_probe", ECHO_PY, Resources::new(500, BIG_MB, 64), 5000),
    ];
    for (name, src, r, timeout) in fns {
        deploy(
            &sb,
            &attacker,
            name,
            py,
            "main.py",
            "main.handle",
            src,
            r,
            timeout,
        )
        .await;
    }
    deploy(
        &sb,
        &attacker,
        "escape",
        Runtime::Exec,
        "run.py",
        "run.py",
        EXEC_ESCAPE,
        small,
        10_000,
    )
    .await;
    let client = http();
    let (gw_addr, w_addr) = (gw.addr, w.addr);
    // Warm both tenants' functions, then start the other tenant's traffic.
    still_serving(&client, gw_addr, w_addr, &key).await;
    assert_eq!(
        call(&client, gw_addr, &other_key, "echo", &json!({"n": -1}))
            .await
            .0,
        200
    );
    let disk_before = disk_of(&worker_dir, &worker_id, &sb).await;
    let bystander = Bystander::start(client.clone(), gw_addr, other_key.clone());
    let next_call = Mutex::new(Vec::new());
    let serving = |what: &'static str| {
        let (client, key, next_call) = (&client, &key, &next_call);
        async move {
            let t = still_serving(client, gw_addr, w_addr, key).await;
            next_call.lock().unwrap().push((what, t));
        }
    };

    // 1. A module whose import never returns, asking for all the worker's free memory: the load
    //    counts against the timeout; the container is killed and its memory comes back (a
    //    function of the same size runs next).
    let run = attack(
        &client,
        gw_addr,
        &key,
        "import_loop",
        json!({}),
        504,
        "timed_out",
        Some("timeout"),
        2000,
        Resources::new(500, BIG_MB, 64),
    )
    .await;
    assert!(
        run["logs"].as_str().unwrap().contains("importing forever"),
        "{run}"
    );
    let (status, _, _) = call(&client, gw_addr, &key, "big_probe", &json!({})).await;
    assert_eq!(status, 200, "the timed-out container's memory came back");
    serving("import_loop").await;

    // 2. The function rewrites the agent's timer: billed by the worker's clock anyway.
    attack(
        &client,
        gw_addr,
        &key,
        "timer",
        json!({}),
        200,
        "succeeded",
        None,
        1500,
        small,
    )
    .await;
    serving("timer").await;

    // 3. Fork bomb: bounded by the pids limit, ended by the timeout.
    // Its output before the kill is kept.
    let run = attack(
        &client,
        gw_addr,
        &key,
        "fork_bomb",
        json!({}),
        504,
        "timed_out",
        Some("timeout"),
        2000,
        small,
    )
    .await;
    assert!(run["logs"].as_str().unwrap().contains("forking"), "{run}");
    serving("fork_bomb").await;

    // 4. Memory hog: OOM-killed, billed, and its logs kept.
    let run = attack(
        &client,
        gw_addr,
        &key,
        "memory_hog",
        json!({}),
        502,
        "failed",
        Some("out_of_memory"),
        300,
        Resources::new(500, 64, 16),
    )
    .await;
    assert!(
        run["logs"].as_str().unwrap().contains("about to allocate"),
        "{run}"
    );
    serving("memory_hog").await;

    // 5. 1 GB to stdout (half through fd 1, half through sys.stdout): logs keep the last 64 KiB.
    let run = attack(
        &client,
        gw_addr,
        &key,
        "gigabyte",
        json!({}),
        200,
        "succeeded",
        None,
        1,
        Resources::new(1000, 128, 64),
    )
    .await;
    let logs = run["logs"].as_str().unwrap();
    assert!(
        logs.len() <= 64 * 1024 + 64
            && logs.starts_with("[truncated]")
            && logs.contains("END-OF-GIGABYTE"),
        "{} bytes of logs",
        logs.len()
    );
    serving("gigabyte").await;

    // 6. os.write(2, …) flood from a thread left running after the call returned.
    attack(
        &client,
        gw_addr,
        &key,
        "flood",
        json!({}),
        200,
        "succeeded",
        None,
        1,
        small,
    )
    .await;
    let run = attack(
        &client,
        gw_addr,
        &key,
        "flood",
        json!({}),
        200,
        "succeeded",
        None,
        1,
        small,
    )
    .await;
    assert!(run["logs"].as_str().unwrap().len() <= 64 * 1024 + 64);
    serving("flood").await;

    // 7. A 100 MB result.
    let run = attack(
        &client,
        gw_addr,
        &key,
        "big_result",
        json!({}),
        502,
        "failed",
        Some("bad_result"),
        1,
        Resources::new(1000, 512, 64),
    )
    .await;
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{run}"
    );
    serving("big_result").await;

    // 8. JSON nested 10,000 deep (the agent refuses it) and 500 deep (the worker does).
    attack(
        &client,
        gw_addr,
        &key,
        "deep",
        json!({"depth": 10_000}),
        502,
        "failed",
        Some("bad_result"),
        1,
        small,
    )
    .await;
    let run = attack(
        &client,
        gw_addr,
        &key,
        "deep",
        json!({"depth": 500}),
        502,
        "failed",
        Some("bad_result"),
        1,
        small,
    )
    .await;
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deeply"),
        "{run}"
    );
    serving("deep").await;

    // 9. Forged frames on the agent's socket: invalid UTF-8, garbage lengths, a log-frame flood,
    //    an unknown error kind.
    let invalid_utf8 =
        frame(b"{\"ok\":true,\"result\":\"\xff\xfe\",\"logs\":\"\",\"duration_us\":1}");
    let huge = [&[0x7f, 0xff, 0xff, 0xff][..], &[b'x'; 64]].concat();
    let log_flood = [&[0xff, 0xff, 0xff, 0xff][..], &[b'y'; 64]].concat();
    let unknown_kind = frame(
        br#"{"ok":false,"error":{"kind":"platform","message":"not me"},"logs":"","duration_us":1}"#,
    );
    for (what, bytes) in [
        ("invalid UTF-8", invalid_utf8),
        ("a 2 GB length", huge),
        ("a log-frame flood", log_flood),
        ("an unknown error kind", unknown_kind),
    ] {
        let run = attack(
            &client,
            gw_addr,
            &key,
            "forge",
            forged(&bytes),
            502,
            "failed",
            Some("bad_result"),
            1,
            small,
        )
        .await;
        assert!(
            run["error"]["message"]
                .as_str()
                .unwrap()
                .contains("invalid answer"),
            "{what}: {run}"
        );
    }
    // A forged `bad_request` (the worker's requests are well formed): the function's failure.
    let bad_request = frame(
        br#"{"ok":false,"error":{"kind":"bad_request","message":"forged"},"logs":"","duration_us":1}"#,
    );
    let run = attack(
        &client,
        gw_addr,
        &key,
        "forge",
        forged(&bad_request),
        502,
        "failed",
        Some("function_error"),
        1,
        small,
    )
    .await;
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused its request"),
        "{run}"
    );
    serving("forge").await;

    // 9b. The function closes its runtime's connection: its failure, billed.
    let run = attack(
        &client,
        gw_addr,
        &key,
        "hang_up",
        json!({}),
        502,
        "failed",
        Some("function_error"),
        1,
        small,
    )
    .await;
    assert!(
        run["error"]["message"].as_str().unwrap().contains("closed"),
        "{run}"
    );
    serving("hang_up").await;

    // 9c. A 10 MB exception message: cut to 4 KiB, billed.
    let run = attack(
        &client,
        gw_addr,
        &key,
        "huge_error",
        json!({}),
        502,
        "failed",
        Some("function_error"),
        1,
        small,
    )
    .await;
    let message = run["error"]["message"].as_str().unwrap();
    assert!(
        message.len() <= 4200 && message.starts_with("ValueError: eee"),
        "{} bytes",
        message.len()
    );
    assert!(run["logs"].as_str().unwrap().len() <= 64 * 1024 + 64);
    serving("huge_error").await;

    // 10. Writing into /run/colorfaas, /code, / and the agent's socket; filling /tmp.
    let run = attack(
        &client,
        gw_addr,
        &key,
        "everywhere",
        json!({}),
        200,
        "succeeded",
        None,
        1,
        Resources::new(500, 128, 32),
    )
    .await;
    let out = &run["result"];
    assert!(out["run"].as_u64().is_some_and(|n| n <= 64 * 1024), "{out}");
    assert_eq!(out["/code/planted"], "OSError", "{out}");
    assert_eq!(out["/planted"], "OSError", "{out}");
    assert!(out["tmp_mb"].as_u64().is_some_and(|n| n <= 32), "{out}");
    serving("everywhere").await;

    // 11. A thread still computing after return: the idle container is frozen.
    attack(
        &client,
        gw_addr,
        &key,
        "spin",
        json!({"start": true}),
        200,
        "succeeded",
        None,
        50,
        small,
    )
    .await;
    let (frozen, idle_cpu) = frozen_and_idle_cpu(&sb, &worker_id, "spin").await;
    println!(
        "spin: idle container frozen = {frozen}; CPU used in 1 s idle: {:.1} ms",
        idle_cpu as f64 / 1e6
    );
    assert!(frozen, "the idle container is not frozen");
    attack(
        &client,
        gw_addr,
        &key,
        "spin",
        json!({}),
        200,
        "succeeded",
        None,
        1,
        small,
    )
    .await;
    serving("spin").await;

    // 12. An exec call whose grandchild escapes with setsid: nothing is left afterwards.
    attack(
        &client,
        gw_addr,
        &key,
        "escape",
        json!({"op": "spawn"}),
        200,
        "succeeded",
        None,
        1,
        small,
    )
    .await;
    let run = attack(
        &client,
        gw_addr,
        &key,
        "escape",
        json!({"op": "list"}),
        200,
        "succeeded",
        None,
        1,
        small,
    )
    .await;
    assert_eq!(run["result"], json!([]), "processes left behind: {run}");
    serving("escape").await;

    bystander.finish().await;
    for (what, t) in next_call.lock().unwrap().iter() {
        println!("next call after {what}: {:.1} ms", t.as_secs_f64() * 1000.0);
    }
    let disk_after = disk_of(&worker_dir, &worker_id, &sb).await;
    println!(
        "host disk: worker folder {} -> {} bytes; containers' writable layers + logs {} -> {} bytes",
        disk_before.0, disk_after.0, disk_before.1, disk_after.1
    );
    assert!(
        disk_after.1 < disk_before.1 + 1024 * 1024,
        "containers grew the host's disk"
    );

    let docker = bollard::Docker::connect_with_defaults().unwrap();
    for c in sb.containers_of(&worker_id).await {
        let info = docker
            .inspect_container(c.id.as_deref().unwrap(), None)
            .await
            .unwrap();
        let log = info.log_path.unwrap_or_default();
        let size = log_bytes(&log);
        assert!(
            size <= 2 * 64 * 1024 + 4096,
            "{log}: {size} bytes of container log"
        );
    }
    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

/// Whether the idle container of `function` is frozen, and the CPU time (ns) it used over one
/// second of idleness.
async fn frozen_and_idle_cpu(sb: &Sandbox, worker_id: &str, function: &str) -> (bool, u64) {
    let function_id = function_id(sb, function).await;
    let docker = bollard::Docker::connect_with_defaults().unwrap();
    let key = format!("{function_id}@1");
    let id = eventually(
        Duration::from_secs(10),
        "the function's container exists",
        || async {
            sb.containers_of(worker_id).await.into_iter().find_map(|c| {
                let labels = c.labels?;
                (labels.get(worker::docker::LABEL_FUNCTION) == Some(&key)).then_some(c.id?)
            })
        },
    )
    .await;
    let pid = docker
        .inspect_container(&id, None)
        .await
        .unwrap()
        .state
        .unwrap()
        .pid
        .unwrap() as u32;
    let freezer = worker::freezer::Freezer::of_pid(pid).expect("the container's freezer");
    let frozen = eventually(
        Duration::from_secs(10),
        "the idle container is frozen",
        || async { freezer.is_frozen().then_some(true) },
    )
    .await;
    let cpu = |id: String| {
        let docker = docker.clone();
        async move {
            let mut s = docker.stats(
                &id,
                Some(bollard::query_parameters::StatsOptions {
                    stream: false,
                    one_shot: true,
                }),
            );
            use futures::StreamExt as _;
            s.next()
                .await
                .and_then(Result::ok)
                .and_then(|s| s.cpu_stats?.cpu_usage?.total_usage)
                .unwrap_or(0)
        }
    };
    let before = cpu(id.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // a measurement window, not a wait
    let after = cpu(id).await;
    (frozen, after.saturating_sub(before))
}

/// The ids of `worker_id`'s running containers labelled `key` (a function key or a spare key).
async fn running_with_label(sb: &Sandbox, worker_id: &str, key: &str) -> Vec<String> {
    sb.containers_of(worker_id)
        .await
        .into_iter()
        .filter(|c| {
            let label = c
                .labels
                .as_ref()
                .and_then(|l| l.get(worker::docker::LABEL_FUNCTION));
            label.map(String::as_str) == Some(key)
                && c.state.as_ref().is_some_and(|s| s.to_string() == "running")
        })
        .filter_map(|c| c.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_killed_from_outside_fail_unbilled_and_are_not_handed_out() {
    let mut sb = Sandbox::new("killed").await;
    let worker_id = format!("w{}", tests::rand_id());
    let (w, d, gw) = sb
        .start_pipeline(&[("WORKER_ID", &worker_id)], &NO_RATE_LIMIT)
        .await;
    let (user, key) = sb.seed_tenant(1_000_000_000_000).await;
    let slow = "import time\ndef handle(e, c):\n    if e.get('sleep'):\n        print('going to sleep')\n        open('/tmp/asleep', 'w').close()\n        time.sleep(e['sleep'])\n    return 'awake'\n";
    deploy(
        &sb,
        &user,
        "slow",
        Runtime::Python3,
        "main.py",
        "main.handle",
        slow,
        Resources::DEFAULT,
        60_000,
    )
    .await;
    let function_key = format!("{}@1", function_id(&sb, "slow").await);
    let docker = bollard::Docker::connect_with_defaults().unwrap();
    let client = http();

    // A busy container killed from outside: the run fails as the platform's, unbilled, and
    // keeps what it printed.
    let run_id = call_async(&client, gw.addr, &key, "slow", &json!({"sleep": 30})).await;
    run_in(&client, gw.addr, &key, &run_id, Some("running")).await;
    // Its container, once the function is asleep in it (it leaves a mark in its /tmp).
    let busy = eventually(
        Duration::from_secs(30),
        "the function sleeps in its container",
        || async {
            let id = running_with_label(&sb, &worker_id, &function_key)
                .await
                .pop()?;
            let pid = docker.inspect_container(&id, None).await.ok()?.state?.pid?;
            std::path::Path::new(&format!("/proc/{pid}/root/tmp/asleep"))
                .exists()
                .then_some(id)
        },
    )
    .await;
    docker
        .kill_container(
            &busy,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    let run = run_in(&client, gw.addr, &key, &run_id, None).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "platform_container_lost", "{run}");
    assert_eq!(run["billed_micros"], 0, "{run}");
    assert!(
        run["logs"].as_str().unwrap().contains("going to sleep"),
        "{run}"
    );
    let (status, body, _) = call(&client, gw.addr, &key, "slow", &json!({})).await;
    assert_eq!((status, body), (200, json!("awake")));

    // An idle (frozen) warm container removed from outside: noticed without a call, and the
    // next call is served by a new container.
    let warm = eventually(Duration::from_secs(10), "one warm container", || async {
        let ids = running_with_label(&sb, &worker_id, &function_key).await;
        (ids.len() == 1).then(|| ids[0].clone())
    })
    .await;
    docker
        .remove_container(
            &warm,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the worker notices the lost container",
        || async {
            (metric(w.addr, "colorfaas_worker_idle_containers_lost_total").await >= 1.0)
                .then_some(())
        },
    )
    .await;
    let (status, body, run_id) = call(&client, gw.addr, &key, "slow", &json!({})).await;
    assert_eq!((status, body), (200, json!("awake")));
    let run = run_in(&client, gw.addr, &key, &run_id, None).await;
    assert_eq!(run["cold_start"], true, "{run}");

    // One killed (not removed) while idle: the same.
    let warm = running_with_label(&sb, &worker_id, &function_key)
        .await
        .pop()
        .unwrap();
    docker
        .kill_container(
            &warm,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the worker notices the killed container",
        || async {
            (metric(w.addr, "colorfaas_worker_idle_containers_lost_total").await >= 2.0)
                .then_some(())
        },
    )
    .await;
    let (status, _, run_id) = call(&client, gw.addr, &key, "slow", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        run_in(&client, gw.addr, &key, &run_id, None).await["cold_start"],
        true
    );

    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_killed_from_outside_is_replaced() {
    let mut sb = Sandbox::new("spare-killed").await;
    let w = sb
        .start_worker(&[("WORKER_SPARES", "1"), ("WORKER_PREWARM", "python3")])
        .await;
    let r = Resources::DEFAULT;
    let spare_key = format!(
        "spare/python3/{}m/{}MB/{}MB",
        r.cpu_millicores, r.memory_mb, r.disk_mb
    );
    let docker = bollard::Docker::connect_with_defaults().unwrap();
    eventually(Duration::from_secs(30), "a spare is ready", || async {
        (metric(w.addr, "colorfaas_worker_spare_containers").await >= 1.0).then_some(())
    })
    .await;
    let spare = running_with_label(&sb, &w.id, &spare_key)
        .await
        .pop()
        .unwrap();
    docker
        .kill_container(
            &spare,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "another spare replaces it",
        || async {
            let ids = running_with_label(&sb, &w.id, &spare_key).await;
            let ready = metric(w.addr, "colorfaas_worker_spare_containers").await >= 1.0;
            (ready && !ids.is_empty() && ids.iter().all(|id| *id != spare)).then_some(())
        },
    )
    .await;
    // And it serves a cold start.
    let mut inv = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", ECHO_PY)
        .await;
    inv.resources = r;
    inv.args = json!({"x": 1});
    let res = sb.run_task(&w.id, inv).await;
    assert_eq!(res.result, Some(json!({"x": 1})), "{res:?}");
    w.stop().await.unwrap();
    sb.cleanup().await;
}

async fn function_id(sb: &Sandbox, name: &str) -> String {
    sb.db
        .collection::<schemas::FunctionDoc>(schemas::names::collections::FUNCTIONS)
        .find_one(bson::doc! {"name": name})
        .await
        .unwrap()
        .unwrap()
        .id
}

async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
