//! Async retries, max event age and dead letters (contract v1.1), through the real pipeline:
//! portal API → gateway → RabbitMQ (delay queues) → dispatcher → worker → Docker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tests::{eventually, portal_url, Component, Sandbox};

const FAILS_PY: &str = "def handle(event, context):\n    raise ValueError('always fails')\n";
const ECHO_PY: &str = "def handle(event, context):\n    return {'got': event}\n";

const NO_RATE_LIMIT: [(&str, &str); 3] = [
    ("GATEWAY_RATE_PER_SEC", "1000000"),
    ("GATEWAY_BURST", "1000000"),
    // The callback receiver below listens on loopback.
    ("GATEWAY_CALLBACK_ALLOW", "127.0.0.1/32"),
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A logged-in JSON API client of one portal.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// Registers and logs in a fresh user.
    async fn new_user(portal: &Component, tag: &str) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = portal_url(portal, "/api/v1");
        let email = format!("{tag}-{}@example.com", tests::rand_id());
        let mut api = Api {
            http,
            base,
            token: String::new(),
        };
        let (s, v) = api
            .send(
                reqwest::Method::POST,
                "/users",
                Some(&json!({"email": email, "name": tag, "password": "correct horse"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = api
            .send(
                reqwest::Method::POST,
                "/sessions",
                Some(&json!({"email": email, "password": "correct horse"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        api.token = v["token"].as_str().unwrap().to_owned();
        api
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    async fn api_key(&self) -> String {
        let (s, v) = self.post("/keys", &json!({"label": "retries"})).await;
        assert_eq!(s, 201, "{v}");
        v["key"].as_str().unwrap().to_owned()
    }

    /// Creates (or with `put`, replaces) an async python3 function.
    async fn function(&self, name: &str, source: &str, extra: Value, put: bool) -> Value {
        let mut spec = json!({
            "name": name, "runtime": "python3", "handler": "main.handle",
            "code_base64": b64(source.as_bytes()), "filename": "main.py",
            "mode": "async", "timeout_ms": 2000,
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let (s, v) = if put {
            self.send(
                reqwest::Method::PUT,
                &format!("/functions/{name}"),
                Some(&spec),
            )
            .await
        } else {
            self.post("/functions", &spec).await
        };
        assert_eq!(s, if put { 200 } else { 201 }, "{v}");
        v
    }

    /// The run once it is final.
    async fn final_run(&self, run_id: &str, within: Duration) -> Value {
        eventually(within, "the run is final", || async {
            let (s, v) = self.get(&format!("/runs/{run_id}")).await;
            assert_eq!(s, 200, "{v}");
            matches!(
                v["status"].as_str(),
                Some("succeeded" | "failed" | "timed_out")
            )
            .then_some(v)
        })
        .await
    }
}

/// An async invocation through the gateway; returns the run id.
async fn invoke_async(
    gw: &Component,
    key: &str,
    function: &str,
    args: &Value,
    hook: Option<&str>,
) -> String {
    let mut rb = reqwest::Client::new()
        .post(format!("http://{}/v1/invoke/{function}", gw.addr))
        .bearer_auth(key)
        .header("x-invocation-type", "async")
        .body(args.to_string());
    if let Some(h) = hook {
        rb = rb.header("x-callback-url", h);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    v["run_id"].as_str().unwrap().to_owned()
}

/// The stored record of a run (its times in milliseconds).
async fn stored(sb: &Sandbox, run_id: &str) -> schemas::RunDoc {
    sb.db
        .collection::<schemas::RunDoc>(schemas::names::collections::RUNS)
        .find_one(bson::doc! {"_id": run_id})
        .await
        .unwrap()
        .unwrap()
}

/// A callback receiver counting the POSTs per run id, with the bodies.
type Hooks = Arc<Mutex<HashMap<String, Vec<Value>>>>;

fn callback_receiver() -> (String, Hooks) {
    use warp::Filter;
    let hooks: Hooks = Arc::default();
    let h = hooks.clone();
    let route = warp::path!("hook")
        .and(warp::post())
        .and(warp::body::json())
        .map(move |posted: Value| {
            let id = posted["run_id"].as_str().unwrap_or_default().to_owned();
            h.lock().unwrap().entry(id).or_default().push(posted);
            warp::reply()
        });
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}/hook"), hooks)
}

/// `retries: 2`: three attempts ~1 s and ~4 s apart under one run id, each billed, one
/// callback for the final outcome, then a dead letter; redriven after a fix, it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_async_run_is_retried_then_dead_lettered_and_redriven() {
    let mut sb = Sandbox::new("retries-3").await;
    let (w, d, gw) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    let portal = sb.start_portal(&[]).await;
    let api = Api::new_user(&portal, "retry").await;
    let key = api.api_key().await;
    let f = api
        .function("flaky", FAILS_PY, json!({"retries": 2}), false)
        .await;
    assert_eq!(f["retries"], 2, "{f}");
    assert_eq!(f["max_event_age_s"], 21_600, "the default: {f}");
    let (hook, hooks) = callback_receiver();

    let run_id = invoke_async(&gw, &key, "flaky", &json!({"n": 7}), Some(&hook)).await;
    // While a retry waits the run is pending with `next_attempt_at`.
    let waiting = eventually(Duration::from_secs(30), "a retry waits", || async {
        let (_, v) = api.get(&format!("/runs/{run_id}")).await;
        (v["status"] == "pending" && !v["attempts"].as_array()?.is_empty()).then_some(v)
    })
    .await;
    assert!(waiting["next_attempt_at"].is_string(), "{waiting}");
    assert!(
        hooks.lock().unwrap().is_empty(),
        "no callback before the final outcome"
    );

    let run = api.final_run(&run_id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "function_error", "{run}");
    assert!(run.get("next_attempt_at").is_none(), "{run}");
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3],
        "{run}"
    );
    for a in attempts {
        assert_eq!(a["status"], "failed", "{a}");
        assert!(
            a["billed_micros"].as_i64().unwrap() > 0,
            "every attempt is billed: {a}"
        );
    }
    // In order, and each retry waited at least its back-off after the attempt before it.
    let doc = stored(&sb, &run_id).await;
    for (i, backoff) in [(1usize, 1_000i64), (2, 4_000)] {
        let (before, this) = (&doc.attempts[i - 1], &doc.attempts[i]);
        let gap = this.started_at_ms.unwrap() - before.finished_at_ms;
        assert!(
            gap >= backoff,
            "attempt {} started {gap} ms after the one before",
            i + 1
        );
    }
    let sum: i64 = attempts
        .iter()
        .map(|a| a["billed_micros"].as_i64().unwrap())
        .sum();
    assert_eq!(
        run["billed_micros"].as_i64().unwrap(),
        sum,
        "billed = the sum: {run}"
    );

    // One callback, for the final outcome.
    let posted = eventually(Duration::from_secs(30), "the callback arrives", || async {
        hooks.lock().unwrap().get(&run_id).cloned()
    })
    .await;
    assert_eq!(posted[0]["status"], "failed");
    assert_eq!(
        posted[0]["attempts"].as_array().unwrap().len(),
        3,
        "{}",
        posted[0]
    );

    // The dead letter.
    let (s, list) = api.get("/dead-letters").await;
    assert_eq!(s, 200, "{list}");
    let dl = list
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["run_id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no dead letter for {run_id}: {list}"))
        .clone();
    assert_eq!(dl["function"], "flaky");
    assert_eq!(dl["attempts"], 3);
    assert_eq!(dl["error"]["code"], "function_error");
    assert_eq!(dl["args"], json!({"n": 7}));
    assert!(dl["failed_at"].is_string());

    // Fixed (a new version), redriven: a new run with the same args succeeds.
    let f2 = api.function("flaky", ECHO_PY, json!({}), true).await;
    assert_eq!(f2["version"], 2);
    assert_eq!(f2["retries"], 2, "a PUT without retries keeps them: {f2}");
    let (s, v) = api
        .post(&format!("/dead-letters/{run_id}/redrive"), &json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    let new_id = v["run_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, run_id);
    let again = api.final_run(&new_id, Duration::from_secs(60)).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["version"], 2);
    assert_eq!(again["result"], json!({"got": {"n": 7}}));
    assert_eq!(again["attempts"].as_array().unwrap().len(), 1);
    // Redriven: gone from the list; a second redrive or a delete is a 404.
    let (_, list) = api.get("/dead-letters").await;
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["run_id"] == run_id.as_str()),
        "{list}"
    );
    let (s, _) = api
        .post(&format!("/dead-letters/{run_id}/redrive"), &json!({}))
        .await;
    assert_eq!(s, 404);
    // Still exactly one callback for the first run, seconds after its final outcome.
    assert_eq!(
        hooks.lock().unwrap()[&run_id].len(),
        1,
        "callbacks fire once"
    );

    // Money: the user's spent counter holds exactly the two runs' bills, nothing is still
    // reserved.
    let user_id = api.get("/account").await.1["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let want = sum + again["billed_micros"].as_i64().unwrap();
    eventually(Duration::from_secs(30), "both runs are settled", || async {
        let c = accounts::credit::counters(&sb.db, &user_id).await.ok()?;
        (c.spent == want && c.reserved == 0).then_some(())
    })
    .await;

    portal.stop().await.unwrap();
    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

/// `retries: 0`: one attempt, then a dead letter; the dead-letter API's errors (404 for
/// unknown ids and for another user's dead letters) and delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_zero_is_one_attempt_and_dead_letters_are_private() {
    let mut sb = Sandbox::new("retries-0").await;
    let (w, d, gw) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    let portal = sb.start_portal(&[]).await;
    let api = Api::new_user(&portal, "once").await;
    let other = Api::new_user(&portal, "other").await;
    let key = api.api_key().await;

    // Bad specs.
    for bad in [
        json!({"retries": 3}),
        json!({"max_event_age_s": 59}),
        json!({"max_event_age_s": 21_601}),
    ] {
        let mut spec = json!({
            "name": "bad", "runtime": "python3", "handler": "main.handle",
            "code_base64": b64(FAILS_PY.as_bytes()), "filename": "main.py",
        });
        for (k, v) in bad.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let (s, v) = api.post("/functions", &spec).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    }

    api.function("once", FAILS_PY, json!({"retries": 0}), false)
        .await;
    let run_id = invoke_async(&gw, &key, "once", &json!({}), None).await;
    let run = api.final_run(&run_id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["attempts"].as_array().unwrap().len(), 1, "{run}");
    assert_eq!(run["billed_micros"], run["attempts"][0]["billed_micros"]);

    let (s, list) = api.get("/dead-letters").await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["run_id"], run_id.as_str());
    assert_eq!(list[0]["attempts"], 1);

    // Another user sees none and cannot touch it; unknown ids are 404.
    let (s, theirs) = other.get("/dead-letters").await;
    assert_eq!((s, theirs), (200, json!([])));
    for (who, id) in [(&other, run_id.as_str()), (&api, "no-such-run")] {
        let (s, v) = who
            .post(&format!("/dead-letters/{id}/redrive"), &json!({}))
            .await;
        assert_eq!(s, 404, "{v}");
        assert_eq!(v["error"]["code"], "not_found");
        let (s, _) = who.delete(&format!("/dead-letters/{id}")).await;
        assert_eq!(s, 404);
    }
    // Without a session: 401.
    let anon = Api {
        token: "nope".into(),
        ..api.clone()
    };
    assert_eq!(anon.get("/dead-letters").await.0, 401);

    // The page lists it with its error and args; its forms need the session's CSRF token.
    let page_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = format!("{}={}", portal::pages::web::SESSION_COOKIE, api.token);
    let html = page_client
        .get(portal_url(&portal, "/dead-letters"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(&run_id), "{html}");
    assert!(html.contains("function_error"), "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();
    let post = |body: String| {
        page_client
            .post(portal_url(
                &portal,
                &format!("/dead-letters/{run_id}/delete"),
            ))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(post("csrf=wrong".into()).await.unwrap().status(), 403);
    assert_eq!(
        api.get("/dead-letters").await.1.as_array().unwrap().len(),
        1
    );
    let r = post(format!("csrf={csrf}")).await.unwrap();
    assert_eq!(r.status(), 303, "deleted through the page's form");
    assert_eq!(api.get("/dead-letters").await.1, json!([]));
    let (s, _) = api.delete(&format!("/dead-letters/{run_id}")).await;
    assert_eq!(s, 404, "deleted already");
    // The run itself stays.
    assert_eq!(
        api.get(&format!("/runs/{run_id}")).await.1["status"],
        "failed"
    );

    portal.stop().await.unwrap();
    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

/// An event that waited longer than `max_event_age_s` (no worker had room) is not run: it is
/// dead-lettered unrun, not billed, and its reservation released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_older_than_max_event_age_is_dead_lettered_unrun() {
    let mut sb = Sandbox::new("retries-age").await;
    // A dispatcher and a gateway, but no worker yet: the event waits.
    let d = sb.start_dispatcher(&[]).await;
    let gw = sb.start_gateway(&NO_RATE_LIMIT).await;
    // The test knob lowers the smallest max_event_age_s from 60 s to 1 s.
    let portal = sb.start_portal(&[("PORTAL_MIN_EVENT_AGE_S", "1")]).await;
    let api = Api::new_user(&portal, "aged").await;
    let key = api.api_key().await;
    let f = api
        .function("aged", ECHO_PY, json!({"max_event_age_s": 1}), false)
        .await;
    assert_eq!(f["max_event_age_s"], 1);
    let run_id = invoke_async(&gw, &key, "aged", &json!({"x": 1}), None).await;
    let user_id = api.get("/account").await.1["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = accounts::credit::counters(&sb.db, &user_id).await.unwrap();
    assert!(c.reserved > 0, "the event is reserved while it waits");
    // Until the event is older than its max age (the clock is the condition).
    let created = eventually(Duration::from_secs(10), "the run is stored", || async {
        sb.db
            .collection::<schemas::RunDoc>(schemas::names::collections::RUNS)
            .find_one(bson::doc! {"_id": &run_id})
            .await
            .ok()?
            .map(|d| d.created_at_ms)
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the event is older than 1 s",
        || async {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            (now - created > 1_500).then_some(())
        },
    )
    .await;
    let w = sb.start_worker(&[]).await;
    let run = api.final_run(&run_id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "event_expired", "{run}");
    assert_eq!(run["attempts"], json!([]), "not run: {run}");
    assert_eq!(run["billed_micros"], 0);
    assert!(run.get("started_at").is_none(), "{run}");
    let (_, list) = api.get("/dead-letters").await;
    assert_eq!(list[0]["run_id"], run_id.as_str(), "{list}");
    assert_eq!(list[0]["error"]["code"], "event_expired");
    eventually(
        Duration::from_secs(30),
        "the reservation is released",
        || async {
            let c = accounts::credit::counters(&sb.db, &user_id).await.ok()?;
            (c.reserved == 0 && c.spent == 0).then_some(())
        },
    )
    .await;
    portal.stop().await.unwrap();
    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

/// Figure (not a check): the latency of accepting an async invocation (202) for a function
/// with `retries: 0` and one with `retries: 2`, interleaved, through the gateway over HTTP.
/// Run: `cargo test -p tests --test retries -- --ignored --nocapture acceptance_latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it explicitly"]
async fn acceptance_latency_with_and_without_retries() {
    let mut sb = Sandbox::new("retries-fig").await;
    // No dispatcher: acceptance is the gateway's work (reserve, record, publish confirmed).
    let gw = sb.start_gateway(&NO_RATE_LIMIT).await;
    let (user, key) = sb.seed_tenant(1_000_000_000_000).await;
    for (name, retries) in [("r0", 0), ("r2", 2)] {
        let mut f = sb
            .function_doc(
                &user,
                name,
                schemas::Runtime::Python3,
                "main.py",
                "main.handle",
                ECHO_PY,
            )
            .await;
        f.retries = retries;
        f.mode = schemas::Mode::Async;
        sb.insert_function(&f).await;
    }
    let client = reqwest::Client::new();
    let n = 1000;
    let mut hist: HashMap<&str, hdrhistogram::Histogram<u64>> = HashMap::new();
    for i in 0..(2 * n + 100) {
        let name = if i % 2 == 0 { "r0" } else { "r2" };
        let t0 = std::time::Instant::now();
        let resp = client
            .post(format!("http://{}/v1/invoke/{name}", gw.addr))
            .bearer_auth(&key)
            .body("{}")
            .send()
            .await
            .unwrap();
        let us = t0.elapsed().as_micros() as u64;
        assert_eq!(resp.status(), 202);
        if i >= 100 {
            hist.entry(name)
                .or_insert_with(|| hdrhistogram::Histogram::new(3).unwrap())
                .record(us)
                .unwrap();
        }
    }
    for name in ["r0", "r2"] {
        let h = &hist[name];
        println!(
            "FIGURE async acceptance, retries {}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms",
            &name[1..],
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.9) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
    gw.stop().await.unwrap();
    sb.cleanup().await;
}

/// The next retry the broker has made due (it waits in the invocations queue: no dispatcher).
async fn take_retry(sb: &Sandbox) -> schemas::InvocationMsg {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let invq = sb.names.invocations_queue();
    let got = eventually(Duration::from_secs(20), "a retry is due", || async {
        sb.ch
            .basic_get(invq.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
    })
    .await;
    got.delivery.ack(BasicAckOptions::default()).await.unwrap();
    serde_json::from_slice(&got.delivery.data).unwrap()
}

/// Crash safety: a redelivered task of an attempt whose record is already stored is not run
/// again — its retry is published again instead — and a repeated delivery of the final attempt
/// changes nothing: no attempt runs twice, none is skipped, each is billed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_attempts_never_run_twice_or_skip_one() {
    let mut sb = Sandbox::new("retries-redeliver").await;
    // No dispatcher: retries land in the invocations queue, where the test takes them.
    let w1 = sb.start_worker(&[]).await;
    let mut inv = sb
        .invocation(
            schemas::Runtime::Python3,
            "main.py",
            "main.handle",
            FAILS_PY,
        )
        .await;
    inv.mode = schemas::Mode::Async;
    inv.retry.retries = 1;
    inv.retry.max_event_age_s = Some(3600);
    let invq = sb.names.invocations_queue();
    // Attempt 1 fails on the first worker: stored pending, its retry waits in the broker.
    sb.send_task(&w1.id, &inv, 1).await;
    let second = take_retry(&sb).await;
    assert_eq!(second.retry.attempt, 2);
    assert_eq!(second.retry.attempts.len(), 1);
    let doc = stored(&sb, &inv.run_id).await;
    assert_eq!(doc.status, schemas::RunStatus::Pending);
    assert_eq!(doc.attempts.len(), 1);
    // That worker is gone; another takes over (a crash between storing and acking leaves the
    // task to be redelivered to someone else).
    w1.stop().await.unwrap();
    let w = sb.start_worker(&[]).await;
    let wq = sb.names.worker_queue(&w.id);
    let send_repeat = |inv: schemas::InvocationMsg| {
        let task = schemas::TaskMsg {
            v: schemas::MESSAGE_VERSION,
            epoch: 1,
            worker_id: w.id.clone(),
            dispatched_at_ms: schemas::now_ms(),
            invocation: inv,
        };
        let (ch, wq) = (&sb.ch, wq.clone());
        async move {
            let props = common::amqp::mark_repeat(common::amqp::props("task", true));
            common::amqp::publish_confirmed(
                ch,
                "",
                &wq,
                &serde_json::to_vec(&task).unwrap(),
                props,
            )
            .await
            .unwrap();
        }
    };
    let duplicates =
        || async { tests::metric(&w.addr, "colorfaas_worker_duplicate_tasks_total").await };

    // Attempt 1 delivered again: not run; the retry is published again.
    let before = duplicates().await;
    send_repeat(inv.clone()).await;
    let again = take_retry(&sb).await;
    assert_eq!(again.retry.attempt, 2);
    assert_eq!(again.retry.attempts, second.retry.attempts);
    assert!(duplicates().await > before);
    assert_eq!(
        stored(&sb, &inv.run_id).await.attempts,
        doc.attempts,
        "attempt 1 ran twice"
    );

    // Attempt 2 (the last) fails: final, a dead letter, two attempts billed once each.
    sb.send_task(&w.id, &second, 1).await;
    let last = eventually(Duration::from_secs(30), "the run is final", || async {
        let d = stored(&sb, &inv.run_id).await;
        d.status.is_final().then_some(d)
    })
    .await;
    assert_eq!(
        last.attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(last.dead_letter.is_some());
    let sum: i64 = last.attempts.iter().map(|a| a.billed_micros).sum();
    assert_eq!(last.billed_micros, sum);

    // The duplicate attempt 2, as a broker redelivery and as a plain repeat: nothing changes.
    let before = duplicates().await;
    send_repeat(again.clone()).await;
    sb.send_task(&w.id, &again, 1).await;
    eventually(
        Duration::from_secs(20),
        "both duplicates are handled",
        || async {
            (duplicates().await >= before + 2.0 && sb.queue_len(&wq).await == 0).then_some(())
        },
    )
    .await;
    let after = stored(&sb, &inv.run_id).await;
    assert_eq!(after.attempts, last.attempts, "attempt 2 ran twice");
    assert_eq!(after.billed_micros, last.billed_micros);
    assert_eq!(
        sb.queue_len(&invq).await,
        0,
        "no retry after the last attempt"
    );

    w.stop().await.unwrap();
    sb.cleanup().await;
}
