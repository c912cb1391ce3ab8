//! End to end through the real pipeline — gateway → RabbitMQ → dispatcher → worker → Docker
//! container — with nothing stood in: the three runtimes, two users at once, 200 async
//! invocations, 300 concurrent sync calls, and a gateway restart under async traffic.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use schemas::{Mode, Resources, Runtime};
use serde_json::{json, Value};
use tests::{eventually, Sandbox};

/// Enough budget that no test here is ever rate limited.
const NO_RATE_LIMIT: [(&str, &str); 2] = [
    ("GATEWAY_RATE_PER_SEC", "1000000"),
    ("GATEWAY_BURST", "1000000"),
];

const ECHO_PY: &str = "def handle(event, context):\n    return event\n";

/// A keep-alive client that may hold `conns` connections to one host.
fn http(conns: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn invoke(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    function: &str,
    args: &Value,
    mode: Mode,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("http://{gw}/v1/invoke/{function}"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-invocation-type", mode.as_str())
        .body(args.to_string())
        .send()
        .await
}

/// A sync call that must succeed: its result and headers.
async fn call_ok(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    function: &str,
    args: &Value,
) -> (Value, reqwest::header::HeaderMap) {
    let resp = invoke(client, gw, key, function, args, Mode::Sync)
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{function}({args}): {body}");
    (body, headers)
}

/// An async call that must be accepted: its run id.
async fn accepted(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    function: &str,
    args: &Value,
) -> String {
    let resp = invoke(client, gw, key, function, args, Mode::Async)
        .await
        .unwrap();
    let status = resp.status();
    let location = resp.headers().get("location").cloned();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 202, "{function}({args}): {body}");
    let run_id = body["run_id"].as_str().expect("a run id").to_owned();
    assert_eq!(
        location.unwrap().to_str().unwrap(),
        format!("/v1/runs/{run_id}")
    );
    run_id
}

/// `GET /v1/runs/{run_id}`: status and body.
async fn get_run(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    run_id: &str,
) -> (u16, Value) {
    let resp = client
        .get(format!("http://{gw}/v1/runs/{run_id}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls `GET /v1/runs/{id}` until every run is `succeeded` with its expected result; panics on
/// a run that ended otherwise, or after `deadline`. A run not stored yet (404, a sync run whose
/// pending record is still being written) counts as not finished.
async fn await_results(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    expected: HashMap<String, Value>,
    deadline: Duration,
) {
    let t0 = Instant::now();
    let mut left = expected;
    loop {
        let ids: Vec<String> = left.keys().cloned().collect();
        let answers: Vec<(String, u16, Value)> = futures::stream::iter(ids)
            .map(|id| async move {
                let (status, run) = get_run(client, gw, key, &id).await;
                (id, status, run)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (id, status, run) in answers {
            match (status, run["status"].as_str()) {
                (200, Some("succeeded")) => {
                    let want = left.remove(&id).unwrap();
                    assert_eq!(run["result"], want, "run {id}: {run}");
                    assert_eq!(run["run_id"], id.as_str());
                }
                (200, Some("pending" | "running")) | (404, _) => {}
                _ => panic!("run {id} answered {status}: {run}"),
            }
        }
        if left.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < deadline,
            "{} runs not succeeded after {deadline:?}, e.g. {:?}",
            left.len(),
            left.keys().next()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python3_node_and_exec_functions_through_the_gateway() {
    let mut sb = Sandbox::new("pl-runtimes").await;
    let (w, d, gw) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    let (user, key) = sb.seed_tenant(1_000_000_000).await;
    sb.seed_function(
        &user,
        "py",
        Runtime::Python3,
        "main.py",
        "main.handle",
        "def handle(event, context):\n    return {'double': event['x'] * 2, 'fn': context.function}\n",
    )
    .await;
    sb.seed_function(
        &user,
        "js",
        Runtime::Node,
        "index.js",
        "index.handle",
        "exports.handle = async (event, ctx) => ({inc: event.x + 1, fn: ctx.function});",
    )
    .await;
    sb.seed_function(
        &user,
        "sh",
        Runtime::Exec,
        "run.sh",
        "run.sh",
        "#!/bin/sh\nread -r x\necho \"{\\\"got\\\": $x}\"\n",
    )
    .await;
    let client = http(4);
    type Expected = fn(i64) -> Value;
    let cases: [(&str, Expected); 3] = [
        ("py", |x| json!({"double": x * 2, "fn": "py"})),
        ("js", |x| json!({"inc": x + 1, "fn": "js"})),
        ("sh", |x| json!({"got": {"x": x}})),
    ];
    for (function, want) in cases {
        for (x, cold) in [(20, "true"), (21, "false")] {
            let (body, h) = call_ok(&client, gw.addr, &key, function, &json!({"x": x})).await;
            assert_eq!(body, want(x), "{function}");
            assert_eq!(h["x-cold-start"], cold, "{function}, call with x={x}");
            assert!(h["x-run-id"].to_str().unwrap().len() >= 32);
            let billed: i64 = h["x-billed-micros"].to_str().unwrap().parse().unwrap();
            assert!(billed >= 1, "{function}: billed {billed}");
        }
    }

    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_at_once_get_their_own_results_and_see_only_their_own_runs() {
    let mut sb = Sandbox::new("pl-users").await;
    let (w, d, gw) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    // Both name their function `who`; each function says whose it is.
    let mut tenants = Vec::new();
    for owner in ["alice", "bob"] {
        let (user, key) = sb.seed_tenant(1_000_000_000).await;
        let src = format!(
            "def handle(event, context):\n    return {{'owner': '{owner}', 'n': event['n']}}\n"
        );
        sb.seed_function(
            &user,
            "who",
            Runtime::Python3,
            "main.py",
            "main.handle",
            &src,
        )
        .await;
        tenants.push((owner, key));
    }
    let client = http(32);

    // Each user: 20 sync calls and 20 async ones, 8 at a time, both users at once.
    let traffic = |owner: &'static str, key: String| {
        let client = client.clone();
        let addr = gw.addr;
        async move {
            let calls = futures::stream::iter(0..40)
                .map(|n| {
                    let (client, key) = (client.clone(), key.clone());
                    async move {
                        let args = json!({"n": n});
                        let want = json!({"owner": owner, "n": n});
                        if n % 2 == 0 {
                            let (body, h) = call_ok(&client, addr, &key, "who", &args).await;
                            assert_eq!(body, want);
                            (h["x-run-id"].to_str().unwrap().to_owned(), want)
                        } else {
                            (accepted(&client, addr, &key, "who", &args).await, want)
                        }
                    }
                })
                .buffer_unordered(8)
                .collect::<HashMap<String, Value>>()
                .await;
            (key, calls)
        }
    };
    let ((alice_key, alice_runs), (bob_key, bob_runs)) = tokio::join!(
        traffic(tenants[0].0, tenants[0].1.clone()),
        traffic(tenants[1].0, tenants[1].1.clone())
    );
    assert_eq!((alice_runs.len(), bob_runs.len()), (40, 40));

    // Every run is stored and readable by its owner, with the owner's result ...
    await_results(
        &client,
        gw.addr,
        &alice_key,
        alice_runs.clone(),
        Duration::from_secs(60),
    )
    .await;
    await_results(
        &client,
        gw.addr,
        &bob_key,
        bob_runs.clone(),
        Duration::from_secs(60),
    )
    .await;
    // ... and invisible to the other user.
    for (runs, other) in [(&alice_runs, &bob_key), (&bob_runs, &alice_key)] {
        for id in runs.keys() {
            let (status, body) = get_run(&client, gw.addr, other, id).await;
            assert_eq!(status, 404, "another user's run {id}: {body}");
            assert_eq!(body["error"]["code"], "not_found");
        }
    }

    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_async_invocations_all_succeed() {
    let mut sb = Sandbox::new("pl-async").await;
    let (w, d, gw) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    let (user, key) = sb.seed_tenant(1_000_000_000).await;
    let mut f = sb
        .function_doc(
            &user,
            "square",
            Runtime::Python3,
            "main.py",
            "main.handle",
            "def handle(event, context):\n    return {'i': event['i'], 'sq': event['i'] ** 2}\n",
        )
        .await;
    f.mode = Mode::Async;
    f.resources = Resources::new(250, 128, 16);
    f.timeout_ms = 30_000;
    sb.insert_function(&f).await;
    let client = http(32);

    let runs: HashMap<String, Value> = futures::stream::iter(0..200i64)
        .map(|i| {
            let (client, key) = (&client, &key);
            async move {
                let run_id = accepted(client, gw.addr, key, "square", &json!({"i": i})).await;
                (run_id, json!({"i": i, "sq": i * i}))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(runs.len(), 200, "run ids are unique");
    await_results(&client, gw.addr, &key, runs, Duration::from_secs(90)).await;

    // Every finished run's cost was added to the user's spent counter, once, and its
    // reservation released: the budget cap reads them instead of summing runs.
    let docs: Vec<bson::Document> = sb
        .db
        .collection::<bson::Document>(schemas::names::collections::RUNS)
        .find(bson::doc! {"user_id": &user})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 200);
    let total: i64 = docs
        .iter()
        .map(|d| common::wire::int(d.get("billed_micros")))
        .sum();
    assert!(total >= 200, "every run costs at least a micro: {total}");
    eventually(
        Duration::from_secs(10),
        "spent_micros counts every run and nothing stays reserved",
        || async {
            let c = accounts::credit::counters(&sb.db, &user).await.unwrap();
            (c.spent == total && c.reserved == 0 && c.queued == 0).then_some(())
        },
    )
    .await;

    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_sync_calls_each_get_their_own_answer() {
    let mut sb = Sandbox::new("pl-sync300").await;
    let (w, d, gw) = sb
        .start_pipeline(&[("WORKER_MEMORY_MB", "1024")], &NO_RATE_LIMIT)
        .await;
    let (user, key) = sb.seed_tenant(1_000_000_000).await;
    let mut f = sb
        .function_doc(
            &user,
            "echo",
            Runtime::Python3,
            "main.py",
            "main.handle",
            ECHO_PY,
        )
        .await;
    // Up to 8 containers at once on the worker (1024 MB / 128 MB, 2000 mCPU / 250 mCPU); calls
    // queued behind the cold starts must not time out.
    f.resources = Resources::new(250, 128, 16);
    f.timeout_ms = 30_000;
    sb.insert_function(&f).await;
    let client = http(320);
    call_ok(&client, gw.addr, &key, "echo", &json!({"warm": "up"})).await;

    let tag = tests::rand_id();
    let t0 = Instant::now();
    let answers = futures::future::join_all((0..300).map(|i| {
        let (client, key, tag) = (&client, &key, &tag);
        async move {
            let args = json!({"i": i, "tag": tag, "pad": "x".repeat(i)});
            let (body, h) = call_ok(client, gw.addr, key, "echo", &args).await;
            assert_eq!(body, args, "call {i} got someone else's answer");
            h["x-run-id"].to_str().unwrap().to_owned()
        }
    }))
    .await;
    let elapsed = t0.elapsed();
    let distinct: HashSet<&String> = answers.iter().collect();
    assert_eq!(distinct.len(), 300, "every call is its own run");
    eprintln!("300 concurrent sync calls answered in {elapsed:?}");

    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_under_async_traffic_loses_no_accepted_run() {
    let mut sb = Sandbox::new("pl-restart").await;
    let (w, d, gw1) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    let (user, key) = sb.seed_tenant(1_000_000_000).await;
    let mut f = sb
        .function_doc(
            &user,
            "echo",
            Runtime::Python3,
            "main.py",
            "main.handle",
            ECHO_PY,
        )
        .await;
    f.mode = Mode::Async;
    f.resources = Resources::new(250, 128, 16);
    f.timeout_ms = 30_000;
    sb.insert_function(&f).await;
    let client = http(8);

    // Four publishers invoke against whichever gateway is current, without pause, and keep
    // every run id that was answered 202. Anything else (503 while draining, a refused or
    // closed connection while no gateway listens) is a run that was not accepted.
    let (addr_tx, addr_rx) = tokio::sync::watch::channel(gw1.addr);
    let accepted_runs = Arc::new(Mutex::new(HashMap::<String, Value>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let (client, key, addr_rx) = (client.clone(), key.clone(), addr_rx.clone());
            let (runs, refused, stop, next) = (
                accepted_runs.clone(),
                refused.clone(),
                stop.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let args = json!({"i": i});
                    let addr = *addr_rx.borrow();
                    let resp = invoke(&client, addr, &key, "echo", &args, Mode::Async).await;
                    match resp {
                        Ok(r) if r.status() == 202 => {
                            let body: Value = r.json().await.unwrap();
                            let id = body["run_id"].as_str().unwrap().to_owned();
                            runs.lock().unwrap().insert(id, args);
                        }
                        Ok(r) => {
                            let status = r.status().as_u16();
                            assert!(
                                status == 503,
                                "only 503 is expected while restarting, got {status}"
                            );
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            // No gateway listens: do not spin.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect();

    let accepted_count = || accepted_runs.lock().unwrap().len();
    eventually(
        Duration::from_secs(60),
        "100 runs are accepted by the first gateway",
        || async { (accepted_count() >= 100).then_some(()) },
    )
    .await;
    // Graceful stop while the publishers keep going, then a new gateway.
    gw1.stop().await.unwrap();
    let before_restart = accepted_count();
    let gw2 = sb.start_gateway(&NO_RATE_LIMIT).await;
    addr_tx.send(gw2.addr).unwrap();
    eventually(
        Duration::from_secs(60),
        "100 more runs are accepted by the second gateway",
        || async { (accepted_count() >= before_restart + 100).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        p.await.unwrap();
    }
    let runs = accepted_runs.lock().unwrap().clone();
    eprintln!(
        "{} runs accepted, {} refused during the restart",
        runs.len(),
        refused.load(Ordering::SeqCst)
    );
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the restart was noticed"
    );
    await_results(&client, gw2.addr, &key, runs, Duration::from_secs(90)).await;

    gw2.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

/// Contract v1.1, read after answer: once a sync call is answered, or a callback is POSTed, the
/// run reads back final with the same result, duration and cost — never `pending`/`running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_back_final_the_moment_it_is_answered() {
    let mut sb = Sandbox::new("pl-read-after").await;
    let gw_env = [
        NO_RATE_LIMIT[0],
        NO_RATE_LIMIT[1],
        // The callback receiver below listens on loopback.
        ("GATEWAY_CALLBACK_ALLOW", "127.0.0.1/32"),
    ];
    let (w, d, gw) = sb.start_pipeline(&[], &gw_env).await;
    let (user, key) = sb.seed_tenant(1_000_000_000).await;
    sb.seed_function(
        &user,
        "echo",
        Runtime::Python3,
        "main.py",
        "main.handle",
        ECHO_PY,
    )
    .await;
    let client = http(4);

    for i in 0..30 {
        let args = json!({"i": i});
        let (body, headers) = call_ok(&client, gw.addr, &key, "echo", &args).await;
        let header = |h: &str| headers[h].to_str().unwrap().to_owned();
        let run_id = header("x-run-id");
        let (status, run) = get_run(&client, gw.addr, &key, &run_id).await;
        assert_eq!(status, 200, "{run}");
        assert_eq!(run["status"], "succeeded", "sync run {i} read back: {run}");
        assert_eq!(run["result"], body);
        assert_eq!(run["duration_ms"].to_string(), header("x-duration-ms"));
        assert_eq!(run["billed_micros"].to_string(), header("x-billed-micros"));
    }

    // Callbacks: the receiver reads the run back as soon as the callback arrives.
    let reads: Arc<Mutex<Vec<(String, Value, Value)>>> = Arc::default();
    let hook = {
        use warp::Filter;
        let (reads, client, key, gw) = (reads.clone(), client.clone(), key.clone(), gw.addr);
        let route = warp::path!("hook")
            .and(warp::post())
            .and(warp::body::json())
            .then(move |posted: Value| {
                let (reads, client, key) = (reads.clone(), client.clone(), key.clone());
                async move {
                    let id = posted["run_id"].as_str().unwrap_or_default().to_owned();
                    let (_, run) = get_run(&client, gw, &key, &id).await;
                    reads.lock().unwrap().push((id, posted, run));
                    warp::reply()
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        format!("http://{addr}/hook")
    };
    let mut ids = HashSet::new();
    for i in 0..10 {
        let resp = client
            .post(format!("http://{}/v1/invoke/echo", gw.addr))
            .bearer_auth(&key)
            .header("x-invocation-type", "async")
            .header("x-callback-url", &hook)
            .body(json!({"c": i}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        ids.insert(body["run_id"].as_str().unwrap().to_owned());
    }
    let reads = eventually(Duration::from_secs(60), "every callback arrives", || {
        let reads = reads.clone();
        let want = ids.len();
        async move {
            let r = reads.lock().unwrap().clone();
            (r.len() >= want).then_some(r)
        }
    })
    .await;
    for (id, posted, run) in reads {
        assert!(ids.contains(&id), "a callback for an unknown run {id}");
        assert_eq!(
            run["status"], "succeeded",
            "run {id} read at its callback: {run}"
        );
        assert_eq!(run["result"], posted["result"]);
    }

    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}
