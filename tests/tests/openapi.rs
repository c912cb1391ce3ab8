//! The OpenAPI documents are true: the gateway serves `GET /openapi.json` and the portal
//! `GET /api/v1/openapi.json` (the files embedded in the binaries); every documented operation
//! answers one of its documented statuses, and nothing else is served (other methods, longer
//! paths and the contract's endpoints that do not exist yet answer 404 or 405). Then
//! schemathesis (installed by `scripts/stack.sh`) fuzzes both services, with a worker running
//! the functions: no 5xx, every status documented, every body and content type as documented.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tests::{eventually, portal_url, Component, Sandbox};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// `(path template, method)` of every documented operation.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                out.push((path.clone(), m.to_owned()));
            }
        }
    }
    out
}

/// Every `$ref` in `v` resolves inside `doc`.
fn check_refs(doc: &Value, v: &Value, seen: &mut usize) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let ptr = r.strip_prefix('#').expect("local $ref");
                assert!(doc.pointer(ptr).is_some(), "{r} does not resolve");
                *seen += 1;
            }
            for x in m.values() {
                check_refs(doc, x, seen);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x, seen)),
        _ => {}
    }
}

/// Checks the document's shape: OpenAPI 3, operations with ids and responses, refs resolve.
fn check_document(doc: &Value) {
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "an OpenAPI 3 document"
    );
    let ops = operations(doc);
    assert!(ops.len() >= 4, "{ops:?}");
    let mut ids = BTreeSet::new();
    for (path, m) in &ops {
        let op = &doc["paths"][path][m];
        let id = op["operationId"].as_str().expect("operationId");
        assert!(ids.insert(id.to_owned()), "operationId {id} twice");
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{m} {path} has responses");
    }
    let mut refs = 0;
    check_refs(doc, doc, &mut refs);
    assert!(refs > 0);
}

/// The documented statuses of an operation (resolving response `$ref`s is not needed).
fn statuses(doc: &Value, path: &str, method: &str) -> BTreeSet<u16> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().expect("numeric statuses"))
        .collect()
}

/// A concrete path for a template: every `{param}` becomes `value`.
fn fill(template: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}').unwrap() + i;
        out.push_str(value);
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

/// Status and error code of a request (with a `{}` JSON body when `body`).
async fn send(base: &str, method: &str, path: &str, token: &str, body: bool) -> (u16, String) {
    let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut rb = http()
        .request(m, format!("{base}{path}"))
        .bearer_auth(token);
    if body {
        rb = rb.header("content-type", "application/json").body("{}");
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
    (status, code)
}

/// Path segments a route could plausibly use: the documents' own and the contract's.
const WORDS: [&str; 24] = [
    "users",
    "sessions",
    "keys",
    "functions",
    "versions",
    "test",
    "runs",
    "account",
    "topups",
    "history",
    "bills",
    "payments",
    "pricing",
    "dead-letters",
    "redrive",
    "schedules",
    "metrics",
    "openapi.json",
    "invoke",
    "healthz",
    "v1",
    "api",
    "admin",
    "logs",
];

/// Whether `path` is an instance of the `template` (`{param}` matches any one segment).
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')))
}

/// Whether an answer says "no such route" (as opposed to a route whose object is missing).
fn unserved((status, code): &(u16, String)) -> bool {
    *status == 405 || (*status == 404 && code == "no_route")
}

/// Every documented operation answers a documented status; nothing undocumented is served
/// under `scope` (other methods on documented paths, documented paths and `scope` one segment
/// longer, and `extra`).
async fn check_routes(
    doc: &Value,
    scope: &str,
    base: &str,
    token: &str,
    fresh_token: impl Fn() -> futures::future::BoxFuture<'static, String>,
    extra: &[&str],
) {
    let mut checked = 0;
    for (template, method) in operations(doc) {
        let path = fill(&template, "no-such-thing");
        let documented = statuses(doc, &template, &method);
        // Ending a session ends the token: give it one of its own.
        let tok = if (template.as_str(), method.as_str()) == ("/api/v1/sessions", "delete") {
            fresh_token().await
        } else {
            token.to_owned()
        };
        let has_body = doc["paths"][&template][&method]
            .get("requestBody")
            .is_some();
        let (got, _) = send(base, &method, &path, &tok, has_body).await;
        assert!(
            documented.contains(&got),
            "{method} {path} answered {got}, not one of the documented {documented:?}"
        );
        checked += 1;
    }
    let paths: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let documented: BTreeSet<String> = paths.iter().map(|p| fill(p, "no-such-thing")).collect();
    // Every documented path (and the root) one word longer, and the given extras.
    let mut probes: BTreeSet<String> = extra.iter().map(|p| (*p).to_owned()).collect();
    for p in documented
        .iter()
        .map(String::as_str)
        .chain([scope])
        .filter(|p| p.starts_with(scope))
    {
        for w in WORDS {
            probes.insert(format!("{p}/{w}"));
        }
    }
    for template in &paths {
        let item = &doc["paths"][template];
        for m in METHODS {
            if item.get(m).is_none() {
                let path = fill(template, "no-such-thing");
                let got = send(base, m, &path, token, false).await;
                assert!(
                    unserved(&got),
                    "{m} {path} is not documented but answered {got:?}"
                );
                checked += 1;
            }
        }
    }
    let mut asks = Vec::new();
    for path in &probes {
        for m in METHODS {
            if !paths
                .iter()
                .any(|t| matches(t, path) && doc["paths"][t].get(m).is_some())
            {
                asks.push((m, path.clone()));
            }
        }
    }
    // Many requests: sixteen at a time.
    let answers: Vec<_> = futures::stream::iter(asks)
        .map(|(m, path)| async move {
            let got = send(base, m, &path, token, false).await;
            (m, path, got)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (m, path, got) in answers {
        assert!(
            unserved(&got),
            "{m} {path} is not documented but answered {got:?}"
        );
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}

/// Registers and logs in a user; the session token.
async fn session(portal: &Component, email: &str) -> String {
    let r = http()
        .post(portal_url(portal, "/api/v1/users"))
        .json(&json!({"email": email, "name": "Fuzz", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 201 || r.status() == 409, "{}", r.status());
    login(portal.addr, email).await
}

async fn login(addr: std::net::SocketAddr, email: &str) -> String {
    let v: Value = http()
        .post(format!("http://{addr}/api/v1/sessions"))
        .json(&json!({"email": email, "password": "correct horse"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_are_served_and_true_to_the_routes() {
    let mut sb = Sandbox::new("openapi-routes").await;
    let gw = sb.start_gateway(&[]).await;
    let portal = sb.start_portal(&[]).await;

    // Served, and the same as the files embedded in the binaries.
    let served: Value = http()
        .get(format!("http://{}/openapi.json", gw.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        served,
        serde_json::from_str::<Value>(gateway::OPENAPI).unwrap()
    );
    check_document(&served);
    let resp = http()
        .get(portal_url(&portal, "/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let pdoc: Value = resp.json().await.unwrap();
    assert_eq!(
        pdoc,
        serde_json::from_str::<Value>(portal::api::OPENAPI).unwrap()
    );
    check_document(&pdoc);

    // The contract's endpoints that are not built yet must not be served undocumented.
    let not_yet = [
        "/api/v1/dead-letters",
        "/api/v1/dead-letters/no-such-thing/redrive",
        "/api/v1/functions/no-such-thing/schedules",
        "/api/v1/schedules/no-such-thing",
        "/api/v1/functions/no-such-thing/metrics",
        "/api/v1/admin",
    ]
    .into_iter()
    .filter(|p| {
        !operations(&pdoc)
            .iter()
            .any(|(t, _)| fill(t, "no-such-thing") == *p)
    })
    .collect::<Vec<_>>();
    let token = session(&portal, "routes@example.com").await;
    let addr = portal.addr;
    check_routes(
        &pdoc,
        "/api/v1",
        &format!("http://{addr}"),
        &token,
        move || Box::pin(login(addr, "routes@example.com")),
        &not_yet,
    )
    .await;

    let (_, key) = sb.seed_tenant(1_000_000).await;
    check_routes(
        &served,
        "",
        &format!("http://{}", gw.addr),
        &key,
        || Box::pin(async { String::new() }),
        &["/v1", "/v1/invoke", "/v1/runs", "/openapi.yaml"],
    )
    .await;

    gw.stop().await.unwrap();
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

/// The schemathesis CLI `scripts/stack.sh` installs (`SCHEMATHESIS` overrides).
fn schemathesis() -> PathBuf {
    if let Ok(p) = std::env::var("SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let state = std::env::var("COLORFAAS_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".stack"));
    state.join("schemathesis/bin/schemathesis")
}

/// Longest a schemathesis run may take.
const FUZZ_LIMIT: Duration = Duration::from_secs(300);

/// Runs schemathesis against one service; panics with its report unless it passes.
async fn fuzz(what: &str, schema: &str, base: &str, headers: &[String], extra: &[&str]) {
    let bin = schemathesis();
    assert!(
        bin.exists(),
        "{} is missing: run `bash scripts/stack.sh` (it installs schemathesis)",
        bin.display()
    );
    // A fixed seed and a bounded number of cases per operation: the same run every time, in
    // well under FUZZ_LIMIT (`SCHEMATHESIS_MAX_EXAMPLES` / `SCHEMATHESIS_SEED` explore further).
    let max_examples = std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "40".into());
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    // A run that breaks inside schemathesis itself (a "Runtime Error" of its generator, with no
    // failed check) says nothing about the service: run once more, then judge.
    let mut attempt = 0;
    let (out, report) = loop {
        attempt += 1;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("run")
        .arg(schema)
        .args(["--url", base])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &max_examples, "--seed", &seed, "--workers", "2"])
        .args(["--request-timeout", "20", "--no-color"])
        .args(["--suppress-health-check", "all"])
        // See tests/schemathesis/colorfaas_hooks.py (a workaround inside Hypothesis).
        .env("SCHEMATHESIS_HOOKS", "colorfaas_hooks")
        .env(
            "PYTHONPATH",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis"),
        )
        .kill_on_drop(true);
        for h in headers {
            cmd.args(["-H", h]);
        }
        // Every exchange is kept for a look after a failure.
        let reports = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/schemathesis")
            .join(what);
        cmd.args(["--report", "har", "--report-dir"]).arg(&reports);
        cmd.args(extra);
        let started = Instant::now();
        let out = tokio::time::timeout(FUZZ_LIMIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("schemathesis on the {what} ran past {FUZZ_LIMIT:?}"))
            .expect("schemathesis runs");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "schemathesis on the {what} took {:.1} s:\n{report}",
            started.elapsed().as_secs_f64()
        );
        let tool_error = !out.status.success()
            && !report.contains("FAILURES")
            && report.contains("Runtime Error");
        if !(tool_error && attempt < 2) {
            break (out, report);
        }
        println!("schemathesis broke inside itself; running it again");
    };
    assert!(
        out.status.success(),
        "schemathesis found problems in the {what}:\n{report}"
    );
}

const ECHO: &str = "def handle(event, context):\n    return event\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_and_no_undocumented_answers() {
    let mut sb = Sandbox::new("openapi-fuzz").await;
    let (_w, _d, gw) = sb
        .start_pipeline(&[], &[("GATEWAY_CALLBACK_ATTEMPTS", "1")])
        .await;
    // Sign-ups and logins are rate-limited as in production: the fuzzer meets the 429s.
    let portal = sb.start_portal(&[("PORTAL_SIGNUP_PER_HOUR", "20")]).await;
    let token = session(&portal, "fuzz@example.com").await;
    let user: Value = http()
        .get(portal_url(&portal, "/api/v1/account"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = user["user_id"].as_str().unwrap().to_owned();
    // Plenty of credit, the functions the documents' examples name, a key to revoke and a
    // bill to pay.
    sb.db
        .collection::<bson::Document>(schemas::names::collections::USERS)
        .update_one(
            bson::doc! {"_id": &user_id},
            bson::doc! {"$inc": {"balance_micros": 1_000_000_000_000_i64}},
        )
        .await
        .unwrap();
    for name in ["echo", "scratch"] {
        let mut f = sb
            .function_doc(
                &user_id,
                name,
                schemas::Runtime::Python3,
                "main.py",
                "main.handle",
                ECHO,
            )
            .await;
        f.timeout_ms = 10_000;
        sb.insert_function(&f).await;
    }
    let key_doc = schemas::ApiKeyDoc {
        id: "k-scratch".into(),
        user_id: user_id.clone(),
        label: "scratch".into(),
        key_hash: gateway::store::hash_key("cf_scratch"),
        created_at_ms: schemas::now_ms(),
    };
    sb.db
        .collection::<schemas::ApiKeyDoc>(schemas::names::collections::API_KEYS)
        .insert_one(&key_doc)
        .await
        .unwrap();
    let (_, api_key) = sb.seed_api_key(&user_id).await;
    let now = schemas::now_ms();
    let bill = schemas::BillDoc {
        id: "b-seeded".into(),
        user_id: user_id.clone(),
        created_at_ms: now,
        period_start_ms: now - 3_600_000,
        period_end_ms: now,
        amount_micros: 1234,
        status: schemas::BillStatus::Unpaid,
        items: vec![schemas::BillItem {
            run_id: "r-seeded".into(),
            function: "echo".into(),
            duration_ms: 10,
            cpu_millicores: 500,
            memory_mb: 128,
            disk_mb: 64,
            amount_micros: 1234,
        }],
        paid_at_ms: None,
    };
    sb.db
        .collection::<schemas::BillDoc>(schemas::names::collections::BILLS)
        .insert_one(&bill)
        .await
        .unwrap();
    // The worker has run the function once (the fuzzer's calls are then warm).
    eventually(Duration::from_secs(90), "echo runs", || async {
        let r = http()
            .post(format!("http://{}/v1/invoke/echo", gw.addr))
            .bearer_auth(&api_key)
            .body("{}")
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // The gateway first: the portal's fuzzing may delete the function the gateway's calls use.
    fuzz(
        "gateway",
        &format!("http://{}/openapi.json", gw.addr),
        &format!("http://{}", gw.addr),
        &[format!("Authorization: Bearer {api_key}")],
        &[],
    )
    .await;
    fuzz(
        "portal",
        &portal_url(&portal, "/api/v1/openapi.json"),
        &format!("http://{}", portal.addr),
        &[format!("Authorization: Bearer {token}")],
        // Logging out would end the fuzzer's own session; the route test covers it.
        &["--exclude-operation-id", "logout"],
    )
    .await;
    gw.stop().await.unwrap();
    portal.stop().await.unwrap();
    sb.cleanup().await;
}
