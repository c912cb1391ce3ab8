//! No user reaches inside the platform, against the real services: callbacks never connect to
//! loopback, private or metadata addresses (literals, credentials, names resolving to
//! 127.0.0.1, redirects), sign-ups are rate-limited per address, unauthenticated requests are
//! refused before their bodies are read, names that cannot exist are 404, and top-ups need a
//! payment provider that is configured by name.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use schemas::names;
use schemas::{ResultMsg, RunStatus};
use serde_json::{json, Value};
use tests::{eventually, portal_url, Component, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn url(c: &Component, path: &str) -> String {
    format!("http://{}{path}", c.addr)
}

/// A loopback listener that counts the connections made to it; each is answered with
/// `answer` (raw HTTP) once its request head has arrived.
async fn trap(answer: &'static str) -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, n)
}

/// The `colorfaas_gateway_callbacks_total` count of `outcome`.
async fn callbacks(gw: &Component, outcome: &str) -> u64 {
    let text = http()
        .get(url(gw, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("colorfaas_gateway_callbacks_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// A finished run's result whose callback goes to `url`, published as a worker would.
async fn publish_result(sb: &Sandbox, user_id: &str, callback: &str) {
    let now = schemas::now_ms();
    let r = ResultMsg {
        v: schemas::MESSAGE_VERSION,
        run_id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        function_id: "f1".into(),
        function: "echo".into(),
        version: 1,
        worker_id: "w".into(),
        epoch: 1,
        status: RunStatus::Succeeded,
        result: Some(json!({"ok": true})),
        error: None,
        logs: String::new(),
        duration_ms: 3,
        cold_start: false,
        billed_micros: 1,
        resources: schemas::Resources::new(500, 128, 64),
        started_at_ms: Some(now - 3),
        finished_at_ms: now,
        callback_url: Some(callback.to_owned()),
        hold: None,
    };
    common::amqp::publish_confirmed(
        &sb.ch,
        &sb.names.results_exchange(),
        names::RK_RESULT_CALLBACK,
        &serde_json::to_vec(&r).unwrap(),
        common::amqp::props("result", true),
    )
    .await
    .unwrap();
}

async fn invoke_async(gw: &Component, key: &str, callback: &str) -> (u16, Value) {
    let resp = http()
        .post(url(gw, "/v1/invoke/echo"))
        .bearer_auth(key)
        .header("x-invocation-type", "async")
        .header("x-callback-url", callback)
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_never_reach_loopback_private_or_metadata_addresses() {
    let mut sb = Sandbox::new("edge-ssrf").await;
    let gw = sb
        .start_gateway(&[("GATEWAY_CALLBACK_BACKOFF", "50ms")])
        .await;
    let (user_id, key) = sb.seed_tenant(1_000_000).await;
    sb.seed_function(
        &user_id,
        "echo",
        schemas::Runtime::Python3,
        "main.py",
        "main.handle",
        "def handle(e, c):\n    return e\n",
    )
    .await;
    let (port, connections) = trap("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;

    // Refused at acceptance: credentials (RabbitMQ's management API as guest), loopback,
    // private, link-local metadata, unique-local and other spellings of loopback.
    for bad in [
        "http://guest:guest@127.0.0.1:15672/api/bindings/%2f".to_owned(),
        "http://guest:guest@example.com/hook".to_owned(),
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://2130706433:{port}/hook"),
        "http://10.0.0.1/hook".to_owned(),
        "http://192.168.1.1/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://100.64.0.1/hook".to_owned(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
    ] {
        let (status, body) = invoke_async(&gw, &key, &bad).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_callback_url")),
            "{bad}: {body}"
        );
    }
    let (_, body) = invoke_async(&gw, &key, "http://guest:guest@127.0.0.1:15672/").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("credentials"),
        "{body}"
    );
    // A name is accepted (it is checked on the connection) ...
    let by_name = format!("http://localhost:{port}/hook");
    assert_eq!(invoke_async(&gw, &key, &by_name).await.0, 202);

    // ... and at delivery a name resolving to 127.0.0.1 is refused, as are literals that reach
    // the callbacks queue (from an older gateway, or any other way).
    for target in [
        by_name.clone(),
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://user:pass@127.0.0.1:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1:80/".to_owned(),
    ] {
        publish_result(&sb, &user_id, &target).await;
    }
    eventually(
        Duration::from_secs(20),
        "five callbacks are refused",
        || async { (callbacks(&gw, "refused").await >= 5).then_some(()) },
    )
    .await;
    assert_eq!(callbacks(&gw, "refused").await, 5);
    assert_eq!(
        callbacks(&gw, "gave_up").await,
        0,
        "refusals are not retried"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing connected");
    // Acknowledged, not left to be redelivered.
    let q = sb.names.callbacks_queue();
    eventually(
        Duration::from_secs(10),
        "the callbacks queue is empty",
        || async { (sb.queue_len(&q).await == 0).then_some(()) },
    )
    .await;

    gw.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_receivers_get_callbacks_but_no_credentials_or_redirects() {
    let mut sb = Sandbox::new("edge-allow").await;
    let gw = sb
        .start_gateway(&[
            ("GATEWAY_CALLBACK_ALLOW", "127.0.0.1/32"),
            ("GATEWAY_CALLBACK_BACKOFF", "50ms"),
            ("GATEWAY_CALLBACK_ATTEMPTS", "2"),
        ])
        .await;
    let user_id = sb.seed_user(1_000_000).await;
    let (trap_port, trapped) = trap("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    // A receiver that redirects every callback to the trap.
    let redirect: &'static str = Box::leak(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{trap_port}/stolen\r\ncontent-length: 0\r\n\r\n"
        )
        .into_boxed_str(),
    );
    let (redirect_port, redirected) = trap(redirect).await;

    // Credentials are refused whatever the allow-list says.
    publish_result(
        &sb,
        &user_id,
        &format!("http://guest:guest@127.0.0.1:{trap_port}/hook"),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the callback is refused",
        || async { (callbacks(&gw, "refused").await == 1).then_some(()) },
    )
    .await;
    // A redirect is not followed: the receiver is asked twice (two attempts), the trap never.
    publish_result(
        &sb,
        &user_id,
        &format!("http://127.0.0.1:{redirect_port}/hook"),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the callback is given up",
        || async { (callbacks(&gw, "gave_up").await == 1).then_some(()) },
    )
    .await;
    assert_eq!(redirected.load(Ordering::SeqCst), 2);
    assert_eq!(
        trapped.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
    // The allowed receiver itself is reached.
    publish_result(&sb, &user_id, &format!("http://127.0.0.1:{trap_port}/hook")).await;
    eventually(
        Duration::from_secs(20),
        "the callback is delivered",
        || async { (callbacks(&gw, "delivered").await == 1).then_some(()) },
    )
    .await;
    assert_eq!(trapped.load(Ordering::SeqCst), 1);

    gw.stop().await.unwrap();
    sb.cleanup().await;
}

/// Sends a request head announcing a `len`-byte body and no body; the status line of the
/// answer (which must come without the body being sent).
async fn head_only(c: &Component, head: &str, len: usize) -> String {
    let mut s = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    let req = format!("{head}\r\nhost: x\r\ncontent-length: {len}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("answered without the body being sent")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_are_refused_before_their_bodies_are_read() {
    let mut sb = Sandbox::new("edge-unread").await;
    let gw = sb.start_gateway(&[]).await;
    let portal = sb.start_portal(&[]).await;
    let six_mib = 6 * 1024 * 1024;
    let line = head_only(&gw, "POST /v1/invoke/echo HTTP/1.1", six_mib).await;
    assert!(line.contains(" 401 "), "{line}");
    let line = head_only(
        &gw,
        "POST /v1/invoke/echo HTTP/1.1\r\nauthorization: Bearer cf_nope",
        six_mib,
    )
    .await;
    assert!(line.contains(" 401 "), "{line}");
    for path in ["/api/v1/functions", "/api/v1/functions/echo/test"] {
        let line = head_only(&portal, &format!("POST {path} HTTP/1.1"), six_mib).await;
        assert!(line.contains(" 401 "), "{path}: {line}");
    }
    let line = head_only(&portal, "PUT /api/v1/functions/echo HTTP/1.1", six_mib).await;
    assert!(line.contains(" 401 "), "{line}");
    // The pages' uploads: an anonymous one is sent to the login page, unread.
    for path in ["/functions", "/functions/echo/edit"] {
        let line = head_only(
            &portal,
            &format!("POST {path} HTTP/1.1\r\ncontent-type: multipart/form-data; boundary=x"),
            20 * 1024 * 1024,
        )
        .await;
        assert!(
            line.contains(" 303 ") || line.contains(" 302 "),
            "{path}: {line}"
        );
    }
    gw.stop().await.unwrap();
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_cannot_exist_are_404() {
    let mut sb = Sandbox::new("edge-names").await;
    let gw = sb.start_gateway(&[]).await;
    let (_, key) = sb.seed_tenant(1_000_000).await;
    for name in [
        "Upper",
        "a_b",
        "-lead",
        &"a".repeat(51),
        "a%20b",
        "caf%C3%A9",
    ] {
        let resp = http()
            .post(url(&gw, &format!("/v1/invoke/{name}")))
            .bearer_auth(&key)
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{name}"
        );
    }
    gw.stop().await.unwrap();
    sb.cleanup().await;
}

async fn register(portal: &Component, email: &str) -> reqwest::Response {
    http()
        .post(portal_url(portal, "/api/v1/users"))
        .json(&json!({"email": email, "name": "Ada", "password": "correct horse"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_are_rate_limited_per_address() {
    let mut sb = Sandbox::new("edge-signup").await;
    let portal = sb.start_portal(&[("PORTAL_SIGNUP_PER_HOUR", "3")]).await;
    // Bad input does not use up the allowance.
    let resp = http()
        .post(portal_url(&portal, "/api/v1/users"))
        .json(&json!({"email": "nope", "name": "Ada", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    for i in 0..3 {
        let resp = register(&portal, &format!("ada{i}@example.com")).await;
        assert_eq!(resp.status(), 201);
    }
    let resp = register(&portal, "ada3@example.com").await;
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1200).contains(&wait), "{wait}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].is_string());
    // Nothing was created for the refused one.
    let n = sb
        .db
        .collection::<bson::Document>(names::collections::USERS)
        .count_documents(bson::doc! {"email": "ada3@example.com"})
        .await
        .unwrap();
    assert_eq!(n, 0);

    // The registration page shares the budget: 429 with the form again.
    let page = http()
        .get(portal_url(&portal, "/register"))
        .send()
        .await
        .unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = cookie.split_once('=').unwrap().1.to_owned();
    let resp = http()
        .post(portal_url(&portal, "/register"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "Bob"),
            ("email", "bob@example.com"),
            ("password", "correct horse"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let html = resp.text().await.unwrap();
    assert!(html.contains("Too many accounts"), "{html}");
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

async fn login(portal: &Component, email: &str) -> String {
    let v: Value = http()
        .post(portal_url(portal, "/api/v1/sessions"))
        .json(&json!({"email": email, "password": "correct horse"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().unwrap().to_owned()
}

async fn topup(portal: &Component, token: &str) -> (u16, Value) {
    let resp = http()
        .post(portal_url(portal, "/api/v1/account/topups"))
        .bearer_auth(token)
        .json(&json!({
            "amount_micros": 5_000_000,
            "card_number": "4242424242424242",
            "card_expiry": "12/99",
            "card_cvc": "123",
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_ups_need_a_payment_provider_named_in_the_configuration() {
    let mut sb = Sandbox::new("edge-pay").await;
    // Without a provider, top-ups are 503 and no money appears.
    let portal = sb.start_portal(&[("PORTAL_PAYMENT_PROVIDER", "")]).await;
    assert_eq!(register(&portal, "pay@example.com").await.status(), 201);
    let token = login(&portal, "pay@example.com").await;
    let (status, body) = topup(&portal, &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("payments_unavailable")),
        "{body}"
    );
    let account: Value = http()
        .get(portal_url(&portal, "/api/v1/account"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["balance_micros"], 1_000_000, "{account}");
    portal.stop().await.unwrap();

    // Named explicitly, the test provider takes a Luhn-valid card.
    let portal = sb
        .start_portal(&[("PORTAL_PAYMENT_PROVIDER", "test")])
        .await;
    let (status, body) = topup(&portal, &token).await;
    assert_eq!(
        (status, body["balance_micros"].as_i64()),
        (201, Some(6_000_000))
    );
    portal.stop().await.unwrap();
    sb.cleanup().await;
}
