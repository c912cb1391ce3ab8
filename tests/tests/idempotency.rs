//! `Idempotency-Key` on `POST /v1/invoke/{fn}` through the real pipeline (gateway → RabbitMQ →
//! dispatcher → worker → container): a repeat answers the first run (sync: its answer; async:
//! 202 with its run id), another body is 409, bad keys are 400, keys are per user, two
//! gateways receiving one key at once start one run, and an entry orphaned by a gateway that
//! died before storing its run is taken over by the next repeat.

use std::time::Duration;

use bson::doc;
use schemas::names::collections;
use schemas::schedules::IdempotencyDoc;
use schemas::Runtime;
use serde_json::{json, Value};
use tests::{Component, Sandbox};

const NO_RATE_LIMIT: [(&str, &str); 2] = [
    ("GATEWAY_RATE_PER_SEC", "1000000"),
    ("GATEWAY_BURST", "1000000"),
];

/// Echoes its event with a fresh random token, so two runs never answer the same.
const PY: &str =
    "import uuid\ndef handle(event, context):\n    return {'event': event, 'token': uuid.uuid4().hex}\n";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Status, `X-Run-Id` and JSON body of an invocation.
async fn invoke(
    gw: &Component,
    key: &str,
    function: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut req = http()
        .post(format!("http://{}/v1/invoke/{function}", gw.addr))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let run_id = resp
        .headers()
        .get("x-run-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, run_id, body)
}

async fn runs_of(sb: &Sandbox, user_id: &str) -> u64 {
    sb.db
        .collection::<bson::Document>(collections::RUNS)
        .count_documents(doc! {"user_id": user_id})
        .await
        .unwrap()
}

async fn setup(sb: &mut Sandbox) -> (Component, Component, Component, String, String) {
    let (w, d, gw) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    let (user, key) = sb.seed_tenant(100_000_000).await;
    for name in ["echo", "other"] {
        sb.seed_function(&user, name, Runtime::Python3, "main.py", "main.handle", PY)
            .await;
    }
    (w, d, gw, user, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_answers_the_first_run_sync_and_async() {
    let mut sb = Sandbox::new("idem-repeat").await;
    let (w, d, gw, user, key) = setup(&mut sb).await;

    let sync = [("idempotency-key", "order-1")];
    let first = invoke(&gw, &key, "echo", r#"{"n": 1}"#, &sync).await;
    assert_eq!(first.0, 200, "{:?}", first.2);
    assert!(first.1.is_some());
    let again = invoke(&gw, &key, "echo", r#"{"n": 1}"#, &sync).await;
    assert_eq!(again, first, "a sync repeat answers the first run");
    assert_eq!(runs_of(&sb, &user).await, 1);

    let asy = [
        ("idempotency-key", "order-2"),
        ("x-invocation-type", "async"),
    ];
    let (s1, _, b1) = invoke(&gw, &key, "echo", r#"{"n": 2}"#, &asy).await;
    assert_eq!(s1, 202, "{b1}");
    let run_id = b1["run_id"].as_str().unwrap().to_owned();
    let (s2, _, b2) = invoke(&gw, &key, "echo", r#"{"n": 2}"#, &asy).await;
    assert_eq!((s2, b2["run_id"].as_str()), (202, Some(run_id.as_str())));
    // A sync repeat of the async run waits for it and answers its result.
    let (s3, rid, b3) = invoke(&gw, &key, "echo", r#"{"n": 2}"#, &[asy[0]]).await;
    assert_eq!((s3, rid.as_deref()), (200, Some(run_id.as_str())), "{b3}");
    assert_eq!(b3["event"], json!({"n": 2}));
    assert_eq!(runs_of(&sb, &user).await, 2);

    // Keys are per user: another user's same key is their own run.
    let (other, other_key) = sb.seed_tenant(100_000_000).await;
    sb.seed_function(
        &other,
        "echo",
        Runtime::Python3,
        "main.py",
        "main.handle",
        PY,
    )
    .await;
    let theirs = invoke(&gw, &other_key, "echo", r#"{"n": 1}"#, &sync).await;
    assert_eq!(theirs.0, 200);
    assert_ne!(theirs.1, first.1);

    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_body_is_409_and_bad_keys_are_400() {
    let mut sb = Sandbox::new("idem-409").await;
    let (w, d, gw, user, key) = setup(&mut sb).await;
    let asy = [("idempotency-key", "k-1"), ("x-invocation-type", "async")];
    let (s, _, b) = invoke(&gw, &key, "echo", r#"{"n": 1}"#, &asy).await;
    assert_eq!(s, 202, "{b}");
    for (function, body) in [("echo", r#"{"n": 2}"#), ("other", r#"{"n": 1}"#)] {
        let (s, _, b) = invoke(&gw, &key, function, body, &asy).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (409, Some("idempotency_conflict")),
            "{function} {body}: {b}"
        );
    }
    let long = "k".repeat(129);
    for bad in ["", "   ", long.as_str()] {
        let (s, _, b) = invoke(&gw, &key, "echo", "{}", &[("idempotency-key", bad)]).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("invalid_idempotency_key")),
            "{bad:?}: {b}"
        );
    }
    let max = "k".repeat(128);
    let (s, _, _) = invoke(
        &gw,
        &key,
        "echo",
        "{}",
        &[("idempotency-key", &max), ("x-invocation-type", "async")],
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(runs_of(&sb, &user).await, 2);
    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_sent_to_two_gateways_at_once_starts_one_run() {
    let mut sb = Sandbox::new("idem-race").await;
    let (w, d, gw1, user, key) = setup(&mut sb).await;
    let gw2 = sb.start_gateway(&NO_RATE_LIMIT).await;

    // Async: twenty at once, alternating gateways.
    let asy = [
        ("idempotency-key", "race-a"),
        ("x-invocation-type", "async"),
    ];
    let calls = (0..20).map(|i| {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        invoke(gw, &key, "echo", r#"{"n": 1}"#, &asy)
    });
    let answers = futures::future::join_all(calls).await;
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .map(|(s, _, b)| {
            assert_eq!(*s, 202, "{b}");
            b["run_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one run for one key: {ids:?}");

    // Sync: eight at once; every answer is the one run's.
    let sync = [("idempotency-key", "race-s")];
    let calls = (0..8).map(|i| {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        invoke(gw, &key, "echo", r#"{"n": 2}"#, &sync)
    });
    let answers = futures::future::join_all(calls).await;
    assert_eq!(answers[0].0, 200, "{:?}", answers[0].2);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(runs_of(&sb, &user).await, 2);

    gw2.stop().await.unwrap();
    gw1.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_orphaned_before_its_run_was_stored_is_taken_over() {
    let mut sb = Sandbox::new("idem-orphan").await;
    let (w, d, gw, user, key) = setup(&mut sb).await;
    let body = r#"{"n": 7}"#;
    // A gateway claimed the key 30 s ago and died before storing (or publishing) its run.
    let now = schemas::now_ms();
    let orphan = IdempotencyDoc {
        id: "orphan-entry".into(),
        user_id: user.clone(),
        key: "k-orphan".into(),
        request_hash: gateway::idempotency::request_hash("echo", body.as_bytes()),
        run_id: "never-stored".into(),
        created_at_ms: now - 30_000,
        expires_at_ms: now + 3_600_000,
        expires_at: bson::DateTime::from_millis(now + 3_600_000),
    };
    sb.db
        .collection::<IdempotencyDoc>(collections::IDEMPOTENCY_KEYS)
        .insert_one(&orphan)
        .await
        .unwrap();
    let (s, rid, b) = invoke(&gw, &key, "echo", body, &[("idempotency-key", "k-orphan")]).await;
    assert_eq!(
        s, 200,
        "the repeat runs the function instead of waiting forever: {b}"
    );
    assert_eq!(b["event"], json!({"n": 7}));
    let rid = rid.unwrap();
    assert_ne!(rid, "never-stored");
    // The key now answers that run.
    let again = invoke(&gw, &key, "echo", body, &[("idempotency-key", "k-orphan")]).await;
    assert_eq!(again.1.as_deref(), Some(rid.as_str()));
    assert_eq!(again.2, b);
    assert_eq!(runs_of(&sb, &user).await, 1);

    // An expired entry is absent: the key starts a new run.
    let expired = IdempotencyDoc {
        id: "expired-entry".into(),
        key: "k-expired".into(),
        run_id: rid.clone(),
        created_at_ms: now - 90_000_000,
        expires_at_ms: now - 3_600_000,
        expires_at: bson::DateTime::from_millis(now - 3_600_000),
        ..orphan
    };
    sb.db
        .collection::<IdempotencyDoc>(collections::IDEMPOTENCY_KEYS)
        .insert_one(&expired)
        .await
        .unwrap();
    let (s, fresh, _) = invoke(&gw, &key, "echo", body, &[("idempotency-key", "k-expired")]).await;
    assert_eq!(s, 200);
    assert_ne!(fresh.as_deref(), Some(rid.as_str()));
    assert_eq!(runs_of(&sb, &user).await, 2);

    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}
