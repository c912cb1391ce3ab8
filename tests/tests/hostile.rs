//! Hostile functions through the whole pipeline (gateway → RabbitMQ → dispatcher → worker →
//! Docker), each asserting how its run ends, that it is billed by the worker's clock, that the
//! worker stays healthy and serves the next call, and that another tenant's calls keep
//! succeeding meanwhile; then containers killed or removed from outside (`docker kill`,
//! `docker rm -f`), idle containers frozen, and logs kept by runs that are killed.
//! Latencies and the host's disk growth are printed, never asserted.

#[path = "hostile/functions.rs"]
mod functions;
#[path = "hostile/support.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use functions::*;
use schemas::{Resources, Runtime};
use serde_json::{json, Value};
use support::*;
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
const SMALL: Resources = Resources {
    cpu_millicores: 500,
    memory_mb: 128,
    disk_mb: 64,
};

/// One attack run's context: the pipeline, the attacker's key and its functions' resources.
struct Ctx {
    sb: Sandbox,
    client: reqwest::Client,
    gw: SocketAddr,
    worker: SocketAddr,
    worker_id: String,
    key: String,
    resources: HashMap<&'static str, Resources>,
    next_call: Mutex<Vec<(&'static str, Duration)>>,
}

impl Ctx {
    /// Runs `function(args)`; checks `expect` ("<http status> <run status> <error code or
    /// ->"), and that it was billed for at least `min_ms` of the worker's clock. Returns the run.
    async fn attack(&self, function: &str, args: Value, expect: &str, min_ms: u64) -> Value {
        let want: Vec<&str> = expect.split(' ').collect();
        let t = Instant::now();
        let (got, body, run_id) = call(&self.client, self.gw, &self.key, function, &args).await;
        let took = t.elapsed();
        let run = run_in(&self.client, self.gw, &self.key, &run_id, None).await;
        let code = run["error"]["code"].as_str().unwrap_or("-");
        assert_eq!(got.to_string(), want[0], "{function}: {body}");
        assert_eq!(
            (run["status"].as_str(), code),
            (Some(want[1]), want[2]),
            "{function}: {run}"
        );
        let ms = run["duration_ms"].as_u64().unwrap();
        let billed = run["billed_micros"].as_i64().unwrap();
        let price = accounts::Prices::default().run_cost(ms, self.resources[function]);
        assert!(
            ms >= min_ms.max(1),
            "{function}: billed {ms} ms, ran at least {min_ms} ms"
        );
        assert!(
            billed >= price && billed > 0,
            "{function}: {billed} micros for {ms} ms"
        );
        let message: String = run["error"]["message"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(140)
            .collect();
        println!(
            "attack {function}: {expect} after {:.0} ms; billed {ms} ms = {billed} micros; {message}",
            took.as_secs_f64() * 1000.0
        );
        run
    }

    /// The worker answers `/healthz` and serves the attacker's next call of another function.
    async fn still_serving(&self, after: &'static str) {
        let health = self
            .client
            .get(format!("http://{}/healthz", self.worker))
            .send()
            .await;
        assert_eq!(
            health.unwrap().status(),
            200,
            "the worker is unhealthy after {after}"
        );
        let t = Instant::now();
        let (status, body, _) =
            call(&self.client, self.gw, &self.key, "probe", &json!({"ok": 1})).await;
        assert_eq!((status, body), (200, json!({"ok": 1})), "after {after}");
        self.next_call.lock().unwrap().push((after, t.elapsed()));
    }

    /// Bytes of host disk the suite can grow: the worker's folder, and its containers' writable
    /// layers and Docker logs.
    async fn disk(&self) -> (u64, u64) {
        let dir = std::env::temp_dir()
            .join("colorfaas-tests")
            .join(&self.worker_id);
        let docker = bollard::Docker::connect_with_defaults().unwrap();
        let mut container_bytes = 0;
        for c in self.sb.containers_of(&self.worker_id).await {
            let opts = bollard::query_parameters::InspectContainerOptions { size: true };
            if let Ok(info) = docker
                .inspect_container(c.id.as_deref().unwrap_or_default(), Some(opts))
                .await
            {
                container_bytes += info.size_rw.unwrap_or(0).max(0) as u64;
                let log = log_bytes(info.log_path.as_deref().unwrap_or_default());
                assert!(
                    log <= 2 * 64 * 1024 + 4096,
                    "{log} bytes of a container's log"
                );
                container_bytes += log;
            }
        }
        (du(&dir), container_bytes)
    }
}

/// A forged frame for the FORGE function (base64).
fn forged(body: &[u8], raw: bool) -> Value {
    use base64::Engine as _;
    let mut f = if raw {
        Vec::new()
    } else {
        (body.len() as u32).to_be_bytes().to_vec()
    };
    f.extend_from_slice(body);
    json!({"bytes": base64::engine::general_purpose::STANDARD.encode(f)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_functions_are_contained_billed_and_the_worker_keeps_serving() {
    let mut sb = Sandbox::new("hostile").await;
    let worker_id = format!("w{}", tests::rand_id());
    let mb = WORKER_MB.to_string();
    let worker_env = [("WORKER_ID", worker_id.as_str()), ("WORKER_MEMORY_MB", &mb)];
    let (w, d, gw) = sb.start_pipeline(&worker_env, &NO_RATE_LIMIT).await;
    let (attacker, key) = sb.seed_tenant(1_000_000_000_000).await;
    let (other, other_key) = sb.seed_tenant(1_000_000_000_000).await;
    let fns: [(&str, &str, Resources, u64); 15] = [
        ("probe", ECHO_PY, SMALL, 5000),
        (
            "import-loop",
            IMPORT_LOOP,
            Resources::new(500, BIG_MB, 64),
            2000,
        ),
        ("big-probe", ECHO_PY, Resources::new(500, BIG_MB, 64), 5000),
        ("timer", TIMER_TAMPER, SMALL, 10_000),
        ("fork-bomb", FORK_BOMB, SMALL, 2000),
        (
            "memory-hog",
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
        ("flood", FLOOD_AFTER_RETURN, SMALL, 5000),
        (
            "big-result",
            BIG_RESULT,
            Resources::new(1000, 512, 64),
            30_000,
        ),
        ("deep", DEEP_JSON, SMALL, 5000),
        ("forge", FORGE, SMALL, 10_000),
        ("hang-up", HANG_UP, SMALL, 10_000),
        ("huge-error", HUGE_ERROR, SMALL, 10_000),
        (
            "everywhere",
            WRITE_EVERYWHERE,
            Resources::new(500, 128, 32),
            20_000,
        ),
        ("spin", SPIN_AFTER_RETURN, SMALL, 5000),
    ];
    let mut resources = HashMap::from([("escape", SMALL)]);
    for (name, src, r, timeout_ms) in fns {
        let py = Runtime::Python3;
        let mut f = sb
            .function_doc(&attacker, name, py, "main.py", "main.handle", src)
            .await;
        (f.resources, f.timeout_ms) = (r, timeout_ms);
        sb.insert_function(&f).await;
        resources.insert(name, r);
    }
    let f = sb.function_doc(
        &attacker,
        "escape",
        Runtime::Exec,
        "run.py",
        "run.py",
        EXEC_ESCAPE,
    );
    sb.insert_function(&f.await).await;
    sb.seed_function(
        &other,
        "echo",
        Runtime::Python3,
        "main.py",
        "main.handle",
        ECHO_PY,
    )
    .await;
    let client = http();
    let ctx = Ctx {
        sb,
        client: client.clone(),
        gw: gw.addr,
        worker: w.addr,
        worker_id,
        key,
        resources,
        next_call: Mutex::new(Vec::new()),
    };
    // Warm both tenants' functions, then start the other tenant's traffic.
    ctx.still_serving("the start (a cold start)").await;
    assert_eq!(
        call(&client, gw.addr, &other_key, "echo", &json!({"n": -1}))
            .await
            .0,
        200
    );
    let disk_before = ctx.disk().await;
    let bystander = Bystander::start(client, gw.addr, other_key);

    time_and_memory(&ctx).await;
    output(&ctx).await;
    protocol(&ctx).await;
    sandbox(&ctx).await;

    bystander.finish().await;
    for (after, t) in ctx.next_call.lock().unwrap().iter() {
        println!(
            "next call after {after}: {:.1} ms",
            t.as_secs_f64() * 1000.0
        );
    }
    let disk_after = ctx.disk().await;
    println!(
        "host disk: worker folder {} -> {} bytes; containers' writable layers + logs {} -> {} bytes",
        disk_before.0, disk_after.0, disk_before.1, disk_after.1
    );
    assert!(
        disk_after.1 < disk_before.1 + 1024 * 1024,
        "containers grew the host's disk"
    );
    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    ctx.sb.cleanup().await;
}

/// Attacks on time and memory: an endless import, the agent's timer, a fork bomb, a memory hog.
async fn time_and_memory(ctx: &Ctx) {
    // A module whose import never returns, asking for all the worker's free memory: the load
    // counts against the timeout, its output is kept, and once the container is killed its
    // memory comes back (a function of the same size runs next).
    let run = ctx
        .attack("import-loop", json!({}), "504 timed_out timeout", 2000)
        .await;
    assert!(
        run["logs"].as_str().unwrap().contains("importing forever"),
        "{run}"
    );
    let (status, _, _) = call(&ctx.client, ctx.gw, &ctx.key, "big-probe", &json!({})).await;
    assert_eq!(status, 200, "the timed-out container's memory came back");
    ctx.still_serving("import-loop").await;

    // The function rewrites the agent's timer: billed by the worker's clock anyway.
    ctx.attack("timer", json!({}), "200 succeeded -", 1500)
        .await;
    ctx.still_serving("timer").await;

    // Fork bomb: bounded by the pids limit, ended by the timeout; its output is kept.
    let run = ctx
        .attack("fork-bomb", json!({}), "504 timed_out timeout", 2000)
        .await;
    assert!(run["logs"].as_str().unwrap().contains("forking"), "{run}");
    ctx.still_serving("fork-bomb").await;

    // Memory hog: OOM-killed, billed, and what it printed kept.
    let run = ctx
        .attack("memory-hog", json!({}), "502 failed out_of_memory", 300)
        .await;
    assert!(
        run["logs"].as_str().unwrap().contains("about to allocate"),
        "{run}"
    );
    ctx.still_serving("memory-hog").await;
}

/// Attacks with output: 1 GB to stdout, a flood after returning, a 100 MB result, deep JSON.
async fn output(ctx: &Ctx) {
    // 1 GB to stdout (half through fd 1, half through sys.stdout): the last 64 KiB are kept.
    let run = ctx
        .attack("gigabyte", json!({}), "200 succeeded -", 1)
        .await;
    let logs = run["logs"].as_str().unwrap();
    let bounded = logs.len() <= 64 * 1024 + 64 && logs.starts_with("[truncated]");
    assert!(
        bounded && logs.contains("END-OF-GIGABYTE"),
        "{} bytes of logs",
        logs.len()
    );
    ctx.still_serving("gigabyte").await;

    // os.write(2, …) flood from a thread left running after the call returned (frozen while
    // idle; during the next call it lands in that call's bounded logs, never in Docker's).
    ctx.attack("flood", json!({}), "200 succeeded -", 1).await;
    let run = ctx.attack("flood", json!({}), "200 succeeded -", 1).await;
    assert!(run["logs"].as_str().unwrap().len() <= 64 * 1024 + 64);
    ctx.still_serving("flood").await;

    let run = ctx
        .attack("big-result", json!({}), "502 failed bad_result", 1)
        .await;
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{run}"
    );
    ctx.still_serving("big-result").await;

    // JSON nested 10,000 deep (the agent refuses it) and 500 deep (the worker does).
    let deep = |n: u32| json!({"depth": n});
    ctx.attack("deep", deep(10_000), "502 failed bad_result", 1)
        .await;
    let run = ctx
        .attack("deep", deep(500), "502 failed bad_result", 1)
        .await;
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deeply"),
        "{run}"
    );
    ctx.still_serving("deep").await;
}

/// Attacks on the agent protocol: forged frames, a closed connection, a huge error message.
async fn protocol(ctx: &Ctx) {
    let cases: [(&str, Value); 4] = [
        (
            "invalid UTF-8",
            forged(
                b"{\"ok\":true,\"result\":\"\xff\xfe\",\"logs\":\"\",\"duration_us\":1}",
                false,
            ),
        ),
        (
            "a 2 GB length",
            forged(&[&[0x7f, 0xff, 0xff, 0xff][..], &[b'x'; 64]].concat(), true),
        ),
        (
            "a log-frame flood",
            forged(&[&[0xff, 0xff, 0xff, 0xff][..], &[b'y'; 64]].concat(), true),
        ),
        (
            "an unknown error kind",
            forged(
                br#"{"ok":false,"error":{"kind":"platform","message":"not me"}}"#,
                false,
            ),
        ),
    ];
    for (what, bytes) in cases {
        let run = ctx.attack("forge", bytes, "502 failed bad_result", 1).await;
        let message = run["error"]["message"].as_str().unwrap();
        assert!(message.contains("invalid answer"), "{what}: {run}");
    }
    // A forged `bad_request` (the worker's requests are well formed): the function's failure.
    let forged_kind = forged(
        br#"{"ok":false,"error":{"kind":"bad_request","message":"forged"}}"#,
        false,
    );
    let run = ctx
        .attack("forge", forged_kind, "502 failed function_error", 1)
        .await;
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused its request"),
        "{run}"
    );
    ctx.still_serving("forge").await;

    // The function closes its runtime's connection: its failure, billed.
    let run = ctx
        .attack("hang-up", json!({}), "502 failed function_error", 1)
        .await;
    assert!(
        run["error"]["message"].as_str().unwrap().contains("closed"),
        "{run}"
    );
    ctx.still_serving("hang-up").await;

    // A 10 MB exception message: cut to 4 KiB.
    let run = ctx
        .attack("huge-error", json!({}), "502 failed function_error", 1)
        .await;
    let message = run["error"]["message"].as_str().unwrap();
    assert!(
        message.len() <= 4200 && message.starts_with("ValueError: eee"),
        "{} bytes",
        message.len()
    );
    assert!(run["logs"].as_str().unwrap().len() <= 64 * 1024 + 64);
    ctx.still_serving("huge-error").await;
}

/// Attacks on the sandbox: writes everywhere, a thread computing after return, an exec
/// grandchild that escapes with setsid.
async fn sandbox(ctx: &Ctx) {
    let run = ctx
        .attack("everywhere", json!({}), "200 succeeded -", 1)
        .await;
    let out = &run["result"];
    assert!(out["run"].as_u64().is_some_and(|n| n <= 64 * 1024), "{out}");
    assert_eq!(
        (&out["/code/planted"], &out["/planted"]),
        (&json!("OSError"), &json!("OSError"))
    );
    assert!(out["tmp_mb"].as_u64().is_some_and(|n| n <= 32), "{out}");
    ctx.still_serving("everywhere").await;

    // A thread still computing after return: the idle container is frozen.
    ctx.attack("spin", json!({"start": true}), "200 succeeded -", 50)
        .await;
    let (frozen, idle_cpu_ns) = frozen_and_idle_cpu(ctx, "spin").await;
    println!(
        "spin: idle container frozen: {frozen}; CPU used in 1 s idle: {:.1} ms",
        idle_cpu_ns as f64 / 1e6
    );
    assert!(frozen, "the idle container is not frozen");
    ctx.attack("spin", json!({}), "200 succeeded -", 1).await;
    ctx.still_serving("spin").await;

    // An exec call whose grandchild escapes with setsid: nothing is left afterwards.
    ctx.attack("escape", json!({"op": "spawn"}), "200 succeeded -", 1)
        .await;
    let run = ctx
        .attack("escape", json!({"op": "list"}), "200 succeeded -", 1)
        .await;
    assert_eq!(run["result"], json!([]), "processes left behind: {run}");
    ctx.still_serving("escape").await;
}

/// Whether the idle container of `function` is frozen, and the CPU time (ns) it used over one
/// second of idleness.
async fn frozen_and_idle_cpu(ctx: &Ctx, function: &str) -> (bool, u64) {
    let key = format!("{}@1", function_id(&ctx.sb, function).await);
    let id = eventually(
        Duration::from_secs(10),
        "the function's container",
        || async {
            running_with_label(&ctx.sb, &ctx.worker_id, &key)
                .await
                .pop()
        },
    )
    .await;
    let docker = bollard::Docker::connect_with_defaults().unwrap();
    let info = docker.inspect_container(&id, None).await.unwrap();
    let pid = info.state.and_then(|s| s.pid).unwrap() as u32;
    let freezer = worker::freezer::Freezer::of_pid(pid).expect("the container's freezer");
    eventually(
        Duration::from_secs(10),
        "the idle container is frozen",
        || async { freezer.is_frozen().then_some(()) },
    )
    .await;
    let cpu = || async {
        use futures::StreamExt as _;
        let opts = bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        };
        let stats = docker.stats(&id, Some(opts)).next().await;
        stats
            .and_then(Result::ok)
            .and_then(|s| s.cpu_stats?.cpu_usage?.total_usage)
            .unwrap_or(0)
    };
    let before = cpu().await;
    tokio::time::sleep(Duration::from_secs(1)).await; // a measurement window, not a wait
    let after = cpu().await;
    (freezer.is_frozen(), after.saturating_sub(before))
}

/// The id of a container of `function_key` on the worker whose function is asleep in it (it
/// leaves a mark in its /tmp).
async fn asleep_in(
    sb: &Sandbox,
    docker: &bollard::Docker,
    worker_id: &str,
    function_key: &str,
) -> String {
    eventually(
        Duration::from_secs(30),
        "the function sleeps in its container",
        || async {
            for id in running_with_label(sb, worker_id, function_key).await {
                let pid = docker.inspect_container(&id, None).await.ok()?.state?.pid?;
                if std::path::Path::new(&format!("/proc/{pid}/root/tmp/asleep")).exists() {
                    return Some(id);
                }
            }
            None
        },
    )
    .await
}

async fn kill(docker: &bollard::Docker, id: &str) {
    docker
        .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_killed_from_outside_fail_unbilled_and_are_not_handed_out() {
    let mut sb = Sandbox::new("killed").await;
    let worker_id = format!("w{}", tests::rand_id());
    let (w, d, gw) = sb
        .start_pipeline(&[("WORKER_ID", &worker_id)], &NO_RATE_LIMIT)
        .await;
    let (user, key) = sb.seed_tenant(1_000_000_000_000).await;
    let mut f = sb
        .function_doc(
            &user,
            "slow",
            Runtime::Python3,
            "main.py",
            "main.handle",
            SLEEPER,
        )
        .await;
    f.timeout_ms = 60_000;
    sb.insert_function(&f).await;
    let function_key = format!("{}@1", f.id);
    let docker = bollard::Docker::connect_with_defaults().unwrap();
    let client = http();
    let lost = || async { metric(w.addr, "colorfaas_worker_idle_containers_lost_total").await };

    // A busy container killed from outside, under a sync call: the run fails as the
    // platform's (503), unbilled, and keeps what it printed.
    let sync_call = {
        let (client, key, addr) = (client.clone(), key.clone(), gw.addr);
        tokio::spawn(async move { call(&client, addr, &key, "slow", &json!({"sleep": 30})).await })
    };
    let busy = asleep_in(&sb, &docker, &worker_id, &function_key).await;
    kill(&docker, &busy).await;
    let (status, body, run_id) = sync_call.await.unwrap();
    assert_eq!(status, 503, "{body}");
    let run = run_in(&client, gw.addr, &key, &run_id, None).await;
    assert_eq!(
        (&run["status"], &run["error"]["code"]),
        (&json!("failed"), &json!("platform_container_lost")),
        "{run}"
    );
    assert_eq!(run["billed_micros"], 0, "{run}");
    assert!(
        run["logs"].as_str().unwrap().contains("going to sleep"),
        "{run}"
    );
    // The same under an async run: it is run again without using up an attempt, and only
    // the run that finished is billed.
    let run_id = call_async(&client, gw.addr, &key, &json!({"sleep": 2})).await;
    let busy = asleep_in(&sb, &docker, &worker_id, &function_key).await;
    kill(&docker, &busy).await;
    let run = eventually(Duration::from_secs(60), "the async run ends", || async {
        let r = run_in(&client, gw.addr, &key, &run_id, None).await;
        (r["status"] != json!("pending") && r["status"] != json!("running")).then_some(r)
    })
    .await;
    assert_eq!(
        (&run["status"], &run["result"]),
        (&json!("succeeded"), &json!("awake")),
        "{run}"
    );
    let attempts = run["attempts"].as_array().expect("attempts");
    assert_eq!(
        attempts.len(),
        1,
        "a platform failure uses no attempt: {run}"
    );
    assert_eq!(run["billed_micros"], attempts[0]["billed_micros"], "{run}");
    let (status, body, _) = call(&client, gw.addr, &key, "slow", &json!({})).await;
    assert_eq!((status, body), (200, json!("awake")));

    // An idle (frozen) warm container removed, then one killed, from outside: each noticed
    // without a call, and the next call is served by a new container.
    for (n, remove) in [(1.0, true), (2.0, false)] {
        let warm = eventually(Duration::from_secs(10), "one warm container", || async {
            let ids = running_with_label(&sb, &worker_id, &function_key).await;
            (ids.len() == 1).then(|| ids[0].clone())
        })
        .await;
        if remove {
            let opts = bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            docker.remove_container(&warm, Some(opts)).await.unwrap();
        } else {
            docker
                .kill_container(
                    &warm,
                    None::<bollard::query_parameters::KillContainerOptions>,
                )
                .await
                .unwrap();
        }
        eventually(Duration::from_secs(10), "the worker notices", || async {
            (lost().await >= n).then_some(())
        })
        .await;
        let (status, _, run_id) = call(&client, gw.addr, &key, "slow", &json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(
            run_in(&client, gw.addr, &key, &run_id, None).await["cold_start"],
            true
        );
    }
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
    let spares = || async { metric(w.addr, "colorfaas_worker_spare_containers").await };
    eventually(Duration::from_secs(30), "a spare is ready", || async {
        (spares().await >= 1.0).then_some(())
    })
    .await;
    let spare = running_with_label(&sb, &w.id, &spare_key)
        .await
        .pop()
        .unwrap();
    let docker = bollard::Docker::connect_with_defaults().unwrap();
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
            let ready = spares().await >= 1.0;
            (ready && !ids.is_empty() && ids.iter().all(|id| *id != spare)).then_some(())
        },
    )
    .await;
    // And it serves a cold start.
    let mut inv = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", ECHO_PY)
        .await;
    (inv.resources, inv.args) = (r, json!({"x": 1}));
    let res = sb.run_task(&w.id, inv).await;
    assert_eq!(res.result, Some(json!({"x": 1})), "{res:?}");
    w.stop().await.unwrap();
    sb.cleanup().await;
}
