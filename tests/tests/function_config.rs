//! Function configuration (contract v1.1) against the real services: `env` and `secrets`
//! (validation rows, write-only, kept on `PUT`, removed with `null`, sealed in MongoDB, in the
//! handler's environment for python3, node and exec, never in an API answer, a page, a log line
//! or the database in clear), `max_concurrency` (sync calls over it answered 429 with
//! `Retry-After`, async runs over it waiting, never more running at once on the worker side),
//! and the upload checks (syntax errors, a missing handler, node parse errors, the handler
//! inferred from a single file's name).

use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use schemas::names::collections;
use serde_json::{json, Value};
use tests::{eventually, portal_url, Component, Sandbox};

const KEY: &str = "5f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100";
const SECRET: &str = "pa55-Wh1sper-7c1d9e";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Everything every in-process component of this test binary logs (debug level included).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,lapin=info,mongodb=info,hyper=info,bollard=info,warp=info,reqwest=info",
            ))
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A JSON API client of the portal, logged in.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn new_user(portal: &Component) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = portal_url(portal, "/api/v1");
        let email = format!("cfg-{}@example.com", tests::rand_id());
        let r = http
            .post(format!("{base}/users"))
            .json(&json!({"email": email, "name": "Config", "password": "correct horse"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = http
            .post(format!("{base}/sessions"))
            .json(&json!({"email": email, "password": "correct horse"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Api {
            http,
            base,
            token: v["token"].as_str().unwrap().to_owned(),
        }
    }

    /// Status and body text (scanned for secrets by the callers).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, String) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (s, text) = self.send(method, path, body).await;
        assert!(!text.contains(SECRET), "a secret in an API answer: {text}");
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json(reqwest::Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json(reqwest::Method::PUT, path, Some(body)).await
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.json(reqwest::Method::GET, path, None).await
    }
}

fn spec(name: &str, runtime: &str, filename: &str, handler: &str, source: &str) -> Value {
    json!({
        "name": name, "runtime": runtime, "handler": handler, "filename": filename,
        "code_base64": b64(source.as_bytes()), "timeout_ms": 20000,
        "resources": {"cpu_millicores": 100, "memory_mb": 128, "disk_mb": 16},
    })
}

fn with(mut v: Value, key: &str, x: Value) -> Value {
    v[key] = x;
    v
}

fn assert_invalid(got: (u16, Value), code: &str, field: &str) {
    let (s, v) = got;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["field"], field, "{v}");
}

const PY_ENV: &str = "import hashlib, os\ndef handle(event, context):\n    return {'greeting': os.environ.get('GREETING'), 'secret_sha': hashlib.sha256(os.environ['DB_PASSWORD'].encode()).hexdigest()}\n";
const NODE_ENV: &str = "const crypto = require('crypto');\nexports.handle = () => ({greeting: process.env.GREETING, secret_sha: crypto.createHash('sha256').update(process.env.DB_PASSWORD).digest('hex')});\n";
const EXEC_ENV: &str = "#!/bin/sh\nprintf '{\"greeting\": \"%s\", \"secret_len\": %d}' \"$GREETING\" \"${#DB_PASSWORD}\"\n";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Every document of every collection of the sandbox's database, as text.
async fn database_text(sb: &Sandbox) -> String {
    let mut out = String::new();
    for c in [
        collections::FUNCTIONS,
        collections::FUNCTION_VERSIONS,
        collections::RUNS,
    ] {
        let mut cur = sb
            .db
            .collection::<bson::Document>(c)
            .find(bson::doc! {})
            .await
            .unwrap();
        while let Some(d) = cur.next().await {
            out.push_str(&format!("{}\n", d.unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn env_and_secrets_rows_and_never_in_clear() {
    let logs = captured_logs();
    let mut sb = Sandbox::new("cfg-rows").await;
    let portal = sb.start_portal(&[("COLORFAAS_SECRETS_KEY", KEY)]).await;
    let a = Api::new_user(&portal).await;
    let base = spec("envy", "python3", "main.py", "main.handle", PY_ENV);

    // Validation rows.
    let bad_env: [(Value, &str); 6] = [
        (json!({"env": {"lower": "x"}}), "env"),
        (json!({"env": {"COLORFAAS_RUN_ID": "x"}}), "env"),
        (json!({"env": {"A": 1}}), "env"),
        (json!({"env": {"A": "x".repeat(4096)}}), "env"),
        (json!({"secrets": {"9BAD": SECRET}}), "secrets"),
        (json!({"secrets": {"BIG": "x".repeat(4097)}}), "secrets"),
    ];
    for (extra, field) in bad_env {
        let mut s = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        assert_invalid(a.post("/functions", &s).await, "invalid_request", field);
    }
    for bad in [json!(0), json!(-2), json!("2"), json!(1001)] {
        let s = with(base.clone(), "max_concurrency", bad);
        assert_invalid(
            a.post("/functions", &s).await,
            "invalid_request",
            "max_concurrency",
        );
    }
    let both = with(
        with(base.clone(), "env", json!({"TOKEN": "a"})),
        "secrets",
        json!({"TOKEN": SECRET}),
    );
    assert_invalid(a.post("/functions", &both).await, "invalid_request", "env");

    // Created: env and secret names shown, the value never.
    let mut s = with(
        base.clone(),
        "env",
        json!({"GREETING": "hello", "LOG_LEVEL": "debug"}),
    );
    s["secrets"] = json!({"DB_PASSWORD": SECRET, "API_TOKEN": "tok-123456"});
    s["max_concurrency"] = json!(3);
    let (st, v) = a.post("/functions", &s).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["env"], json!({"GREETING": "hello", "LOG_LEVEL": "debug"}));
    assert_eq!(v["secret_names"], json!(["API_TOKEN", "DB_PASSWORD"]));
    assert_eq!(v["max_concurrency"], 3);
    assert!(v.get("secrets").is_none(), "{v}");
    let (_, got) = a.get("/functions/envy").await;
    assert_eq!(got["secret_names"], json!(["API_TOKEN", "DB_PASSWORD"]));
    let (_, list) = a.get("/functions").await;
    assert_eq!(list[0]["secret_names"], json!(["API_TOKEN", "DB_PASSWORD"]));

    // PUT without `secrets` keeps them (and without env/max_concurrency keeps those too);
    // `{"NAME": null}` removes one; `env: {}` clears; `max_concurrency: null` lifts the limit.
    let (st, v) = a.put("/functions/envy", &base).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["version"].as_u64(),
            &v["secret_names"],
            v["max_concurrency"].as_u64()
        ),
        (Some(2), &json!(["API_TOKEN", "DB_PASSWORD"]), Some(3))
    );
    assert_eq!(v["env"]["GREETING"], "hello");
    let mut p = with(base.clone(), "secrets", json!({"API_TOKEN": null}));
    p["env"] = json!({});
    p["max_concurrency"] = Value::Null;
    let (st, v) = a.put("/functions/envy", &p).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["secret_names"], json!(["DB_PASSWORD"]));
    assert_eq!(
        (&v["env"], &v["max_concurrency"]),
        (&json!({}), &Value::Null)
    );
    assert_invalid(
        a.put(
            "/functions/envy",
            &with(base.clone(), "secrets", json!({"X": 5})),
        )
        .await,
        "invalid_request",
        "secrets",
    );

    // Without a configured key, setting a secret is refused (503), never stored in clear.
    let keyless = sb.start_portal(&[]).await;
    let k = Api::new_user(&keyless).await;
    let (st, v) = k
        .post(
            "/functions",
            &with(
                spec("nokey", "python3", "main.py", "main.handle", PY_ENV),
                "secrets",
                json!({"DB_PASSWORD": SECRET}),
            ),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );

    // The function page shows the names, never the value.
    let page = reqwest::Client::new()
        .get(portal_url(&portal, "/functions/envy"))
        .header("cookie", format!("cf_session={}", a.token))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("envy") && html.contains("DB_PASSWORD") && !html.contains(SECRET));

    // The database holds the secret sealed only; the logs never saw it.
    let db = database_text(&sb).await;
    assert!(db.contains("DB_PASSWORD") && db.contains("v1:"), "{db}");
    assert!(!db.contains(SECRET) && !db.contains("tok-123456"));
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("function created"), "logs are captured");
    assert!(!text.contains(SECRET) && !text.contains("tok-123456"));
    sb.cleanup().await;
}

/// Portal + pipeline with the secrets key; a user with an API key.
async fn start_all(name: &str) -> (Sandbox, Vec<Component>, Api, String, String) {
    let mut sb = Sandbox::new(name).await;
    let key_env = [("COLORFAAS_SECRETS_KEY", KEY)];
    let (w, d, gw) = sb
        .start_pipeline(
            &[("COLORFAAS_SECRETS_KEY", KEY), ("WORKER_MEMORY_MB", "2048")],
            &[
                ("GATEWAY_USER_MAX_SYNC", "100"),
                ("GATEWAY_USER_MAX_QUEUED", "1000"),
            ],
        )
        .await;
    let portal = sb
        .start_portal(&[key_env[0], ("FREE_CREDIT_MICROS", "1000000000")])
        .await;
    let a = Api::new_user(&portal).await;
    let (s, v) = a.post("/keys", &json!({"label": "cfg"})).await;
    assert_eq!(s, 201, "{v}");
    let api_key = v["key"].as_str().unwrap().to_owned();
    let gw_url = format!("http://{}", gw.addr);
    (sb, vec![w, d, gw, portal], a, api_key, gw_url)
}

async fn invoke(
    http: &reqwest::Client,
    gw: &str,
    key: &str,
    f: &str,
    mode: &str,
) -> reqwest::Response {
    http.post(format!("{gw}/v1/invoke/{f}"))
        .bearer_auth(key)
        .header("x-invocation-type", mode)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handlers_read_env_and_secrets() {
    let logs = captured_logs();
    let (sb, _c, a, key, gw) = start_all("cfg-env").await;
    let http = reqwest::Client::new();
    let cases = [
        ("py-env", "python3", "main.py", "main.handle", PY_ENV),
        ("node-env", "node", "main.js", "main.handle", NODE_ENV),
        ("exec-env", "exec", "run.sh", "run.sh", EXEC_ENV),
    ];
    for (name, runtime, file, handler, src) in cases {
        let mut s = spec(name, runtime, file, handler, src);
        s["env"] = json!({"GREETING": format!("hello from {runtime}")});
        s["secrets"] = json!({"DB_PASSWORD": SECRET});
        let (st, v) = a.post("/functions", &s).await;
        assert_eq!(st, 201, "{v}");
        let r = invoke(&http, &gw, &key, name, "sync").await;
        assert_eq!(r.status(), 200, "{name}");
        let text = r.text().await.unwrap();
        assert!(!text.contains(SECRET));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["greeting"], format!("hello from {runtime}"), "{v}");
        if runtime == "exec" {
            assert_eq!(v["secret_len"], SECRET.len(), "{v}");
        } else {
            assert_eq!(v["secret_sha"], sha256_hex(SECRET), "{v}");
        }
    }
    // A new version without the secret: its containers do not have it (none reused).
    let (st, v) = a
        .put(
            "/functions/py-env",
            &with(
                spec(
                    "py-env",
                    "python3",
                    "main.py",
                    "main.handle",
                    "import os\ndef handle(e, c):\n    return os.environ.get('DB_PASSWORD')\n",
                ),
                "secrets",
                json!({"DB_PASSWORD": null}),
            ),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let v: Value = eventually(Duration::from_secs(30), "the new version serves", || {
        let (http, gw, key) = (&http, &gw, &key);
        async move {
            let r = invoke(http, gw, key, "py-env", "sync").await;
            let v: Value = r.json().await.ok()?;
            (!v.is_object()).then_some(v)
        }
    })
    .await;
    assert_eq!(v, Value::Null);
    // Runs' API answers and the database never hold the secret in clear; nor do the logs.
    let (_, runs) = a.get("/runs?limit=50").await;
    assert!(runs.as_array().is_some_and(|r| r.len() >= 4), "{runs}");
    let db = database_text(&sb).await;
    assert!(!db.contains(SECRET));
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("worker starting") && text.contains("fingerprint"));
    assert!(!text.contains(SECRET), "a secret in the logs");
    sb.cleanup().await;
}

/// Most runs of `function` whose worker-side intervals [started, finished] overlap.
async fn max_overlap(sb: &Sandbox, function: &str) -> (usize, usize) {
    let mut cur = sb
        .db
        .collection::<schemas::RunDoc>(collections::RUNS)
        .find(bson::doc! {"function": function})
        .await
        .unwrap();
    let mut edges = Vec::new();
    let mut ran = 0;
    while let Some(r) = cur.next().await {
        let r = r.unwrap();
        if let (Some(s), Some(f)) = (r.started_at_ms, r.finished_at_ms) {
            if r.status == schemas::RunStatus::Succeeded {
                ran += 1;
                edges.push((s, 1i32));
                edges.push((f, -1));
            }
        }
    }
    // Ends sort before starts at the same millisecond.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    (most as usize, ran)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrency_refuses_sync_and_queues_async() {
    let _ = captured_logs();
    let (sb, _c, a, key, gw) = start_all("cfg-conc").await;
    let sleepy =
        "import time\ndef handle(event, context):\n    time.sleep(1.5)\n    return 'done'\n";
    let s = with(
        spec("slow", "python3", "main.py", "main.handle", sleepy),
        "max_concurrency",
        json!(2),
    );
    let (st, v) = a.post("/functions", &s).await;
    assert_eq!(st, 201, "{v}");

    // 20 concurrent sync calls: at most 2 run, the rest are 429 concurrency_limit.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .unwrap();
    let calls = (0..20).map(|_| {
        let (http, gw, key) = (http.clone(), gw.clone(), key.clone());
        tokio::spawn(async move {
            let r = invoke(&http, &gw, &key, "slow", "sync").await;
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|h| h.to_str().unwrap().to_owned());
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry, v)
        })
    });
    let answers: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(ok + limited.len(), 20, "{answers:?}");
    assert!(ok >= 2 && !limited.is_empty(), "{answers:?}");
    for (_, retry, v) in &limited {
        assert_eq!(v["error"]["code"], "concurrency_limit", "{v}");
        assert!(retry
            .as_deref()
            .and_then(|r| r.parse::<u64>().ok())
            .is_some_and(|n| n >= 1));
    }
    let (most, ran) = max_overlap(&sb, "slow").await;
    assert_eq!(ran, ok);
    assert!(most <= 2, "{most} runs at once on the worker");

    // An async batch over the limit: all complete, never more than 2 at once.
    let before = ran;
    for _ in 0..6 {
        let r = invoke(&http, &gw, &key, "slow", "async").await;
        assert_eq!(r.status(), 202);
    }
    eventually(
        Duration::from_secs(60),
        "the async batch completes",
        || async {
            let (_, ran) = max_overlap(&sb, "slow").await;
            (ran == before + 6).then_some(())
        },
    )
    .await;
    let (most, _) = max_overlap(&sb, "slow").await;
    assert!(most <= 2, "{most} runs at once on the worker");
    // The limiter did queue them (6 runs of 1.5 s, 2 at a time): some overlapped.
    assert_eq!(most, 2);
    eprintln!(
        "max_concurrency 2: 20 sync calls → {ok} ran, {} answered 429; 6 async ran at most {most} at once",
        limited.len()
    );

    // The metric buckets counted every finished run (throttled ones apart), per window.
    let want = (20 + 6) as u64;
    for window in ["1h", "24h", "7d"] {
        let got = eventually(
            Duration::from_secs(20),
            "the buckets count every run",
            || {
                let a = &a;
                async move {
                    let (s, v) = a
                        .get(&format!("/functions/slow/metrics?window={window}"))
                        .await;
                    assert_eq!(s, 200, "{v}");
                    let sum = |k: &str| {
                        v["buckets"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|b| b[k].as_u64().unwrap())
                            .sum::<u64>()
                    };
                    (sum("invocations") == want).then(|| {
                        (
                            v.clone(),
                            sum("succeeded"),
                            sum("throttled"),
                            sum("cold_starts"),
                        )
                    })
                }
            },
        )
        .await;
        let (v, succeeded, throttled, cold) = got;
        assert_eq!(v["window"], window);
        let n = v["buckets"].as_array().unwrap().len();
        assert_eq!(
            n,
            [60, 24, 168][["1h", "24h", "7d"]
                .iter()
                .position(|w| *w == window)
                .unwrap()]
        );
        assert_eq!(
            (succeeded, throttled),
            ((ok + 6) as u64, limited.len() as u64),
            "{v}"
        );
        assert!(cold >= 2, "{v}");
        let p50s: Vec<u64> = v["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["duration_ms_p50"].as_u64())
            .collect();
        assert!(
            !p50s.is_empty() && p50s.iter().all(|p| (1_500..=5_000).contains(p)),
            "{v}"
        );
    }
    // The function page charts them, server-rendered.
    let page = reqwest::Client::new()
        .get(format!(
            "{}/functions/slow",
            a.base.trim_end_matches("/api/v1")
        ))
        .header("cookie", format!("cf_session={}", a.token))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"charts\"") && html.matches("<svg").count() >= 3);
    assert!(
        html.contains(&format!("<title>{want}</title>")),
        "the bar of the last hour"
    );
    assert!(html.contains(&format!("{} not succeeded", limited.len())));
    let (s, v) = a.get("/functions/slow/metrics?window=2h").await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("window")),
        "{v}"
    );
    let (s, _) = a.get("/functions/nope/metrics").await;
    assert_eq!(s, 404);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_are_checked_without_running_them() {
    let _ = captured_logs();
    let mut sb = Sandbox::new("cfg-upload").await;
    let portal = sb.start_portal(&[]).await;
    let a = Api::new_user(&portal).await;
    let check = |got: (u16, Value), file: &str, line: Option<u64>, words: &str| {
        let (s, v) = got;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_code", "{v}");
        let msg = v["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.starts_with(file), "{msg}");
        if let Some(l) = line {
            assert!(msg.contains(&format!("line {l}")), "{msg}");
        }
        assert!(msg.contains(words), "{msg}");
    };
    // A python syntax error names the file and line.
    let broken = "def handle(event, context):\n    return {'a': 1\n\nx = 2\n";
    check(
        a.post(
            "/functions",
            &spec("broken", "python3", "main.py", "main.handle", broken),
        )
        .await,
        "main.py",
        Some(2),
        "",
    );
    // No handler function in the module (and a module that would crash if imported is only read).
    let no_handle = "import sys\nsys.exit(3)\ndef other(event, context):\n    return 1\n";
    check(
        a.post(
            "/functions",
            &spec("nohandle", "python3", "main.py", "main.handle", no_handle),
        )
        .await,
        "main.py",
        None,
        "'handle'",
    );
    // Inside a package: the handler's module is checked.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("pkg/mod.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(b"def handle(e, c):\n  return (\n").unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    let pkg = json!({"name": "zipped", "runtime": "python3", "handler": "pkg.mod.handle", "code_base64": b64(&bytes)});
    check(a.post("/functions", &pkg).await, "pkg/mod.py", None, "");
    // A node parse error.
    let js = "const a = 1;\nexports.handle = (e => e;\n";
    check(
        a.post(
            "/functions",
            &spec("badjs", "node", "main.js", "main.handle", js),
        )
        .await,
        "main.js",
        Some(2),
        "SyntaxError",
    );
    // A single file's handler inferred from its name; a mismatching one refused.
    let adder = "def handle(event, context):\n    return event['a'] + event['b']\n";
    let mut s = spec("adder", "python3", "adder.py", "", adder);
    s.as_object_mut().unwrap().remove("handler");
    let (st, v) = a.post("/functions", &s).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["handler"], "adder.handle");
    let (st, v) = a
        .post(
            "/functions",
            &spec("adder2", "python3", "adder.py", "main.handle", adder),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("handler")),
        "{v}"
    );
    let good_js = "exports.handle = (e) => e;\n";
    let (st, v) = a
        .post("/functions", &spec("echo", "node", "echo.js", "", good_js))
        .await;
    assert_eq!(
        (st, v["handler"].as_str()),
        (201, Some("echo.handle")),
        "{v}"
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_counts_running_runs_from_heartbeats() {
    let _ = captured_logs();
    let (mut sb, mut c, a, key, gw) = start_all("cfg-failover").await;
    let standby = sb.start_dispatcher(&[]).await;
    let sleepy = "import time\ndef handle(event, context):\n    time.sleep(6)\n    return 'done'\n";
    let s = with(
        spec("one", "python3", "main.py", "main.handle", sleepy),
        "max_concurrency",
        json!(1),
    );
    let (st, v) = a.post("/functions", &s).await;
    assert_eq!(st, 201, "{v}");
    let http = reqwest::Client::new();
    // One run in progress under the first leader.
    let first = {
        let (http, gw, key) = (http.clone(), gw.clone(), key.clone());
        tokio::spawn(async move {
            invoke(&http, &gw, &key, "one", "sync")
                .await
                .status()
                .as_u16()
        })
    };
    eventually(Duration::from_secs(20), "the first run runs", || async {
        let (_, runs) = a.get("/runs?function=one").await;
        (runs[0]["status"] == "running").then_some(())
    })
    .await;
    // The leader goes; the standby leads, knowing only what the workers' heartbeats say.
    let leader = c.remove(1);
    leader.stop().await.unwrap();
    let queue = sb.names.invocations_queue();
    eventually(Duration::from_secs(30), "the standby leads", || async {
        (sb.queue_info(&queue).await?.consumer_count() > 0).then_some(())
    })
    .await;
    let r = invoke(&http, &gw, &key, "one", "sync").await;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let first_status = first.await.unwrap();
    assert_eq!(first_status, 200);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("concurrency_limit")),
        "{v}"
    );
    // Once it is done, the function takes calls again.
    let r = invoke(&http, &gw, &key, "one", "sync").await;
    assert_eq!(r.status(), 200);
    standby.stop().await.unwrap();
    sb.cleanup().await;
}
