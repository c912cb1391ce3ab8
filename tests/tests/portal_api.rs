//! The portal's JSON API (`/api/v1`) against real MongoDB and RabbitMQ: every row of the
//! contract's portal table with its success and error statuses, isolation between users (404),
//! hostile code uploads, concurrent payments of one bill, and a full flow through the real
//! pipeline (worker + dispatcher + Docker) and the billing job.

use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use bson::doc;
use schemas::names::collections;
use schemas::{BillDoc, BillItem, BillState, BillStatus, Resources, RunDoc, RunStatus};
use serde_json::{json, Value};
use tests::{eventually, portal_url, Component, Sandbox};

const GOOD_CARD: &str = "4242424242424242";
const DECLINED_CARD: &str = "4000000000000002";
const ADDER_PY: &str = "def handle(event, context):\n    print('adding', event)\n    return {'sum': event['num1'] + event['num2']}\n";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A JSON API client of one portal, optionally logged in.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(portal: &Component) -> Api {
        Api {
            // No pooled connections: after answering an oversized upload early (413) the
            // server closes the connection while the client may still be writing the body,
            // and a request sent next on that pooled connection fails with a broken pipe.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            base: portal_url(portal, "/api/v1"),
            token: None,
        }
    }

    fn as_user(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (s, _, v) = self.send_full(method, path, body).await;
        (s, v)
    }

    async fn send_full(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Registers and logs in a fresh user; returns the logged-in client and the user id.
    async fn new_user(&self, tag: &str) -> (Api, String) {
        let email = format!("{tag}-{}@example.com", tests::rand_id());
        let (s, v) = self
            .post(
                "/users",
                &json!({"email": email, "name": format!("User {tag}"), "password": "correct horse"}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let user_id = v["user_id"].as_str().unwrap().to_owned();
        let (s, v) = self
            .post(
                "/sessions",
                &json!({"email": email, "password": "correct horse"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["user_id"], user_id.as_str());
        (self.as_user(v["token"].as_str().unwrap()), user_id)
    }
}

/// Asserts an error answer: status, the contract's body, and the code.
fn assert_error(got: (u16, Value), status: u16, code: &str) -> Value {
    let (s, v) = got;
    assert_eq!(s, status, "expected {status} {code}, got {s}: {v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v
}

fn adder_spec(name: &str) -> Value {
    json!({
        "name": name,
        "runtime": "python3",
        "handler": "main.handle",
        "code_base64": b64(ADDER_PY.as_bytes()),
        "filename": "main.py",
        "description": "adds two numbers",
        "args_schema": {"num1": "int", "num2": "int"},
        "mode": "sync",
        "resources": {"cpu_millicores": 500, "memory_mb": 128, "disk_mb": 64},
        "timeout_ms": 10000
    })
}

fn with(mut spec: Value, key: &str, v: Value) -> Value {
    spec[key] = v;
    spec
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn tar_gz_of(build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    build(&mut b);
    b.into_inner().unwrap().finish().unwrap()
}

fn package_spec(name: &str, runtime: &str, handler: &str, bytes: &[u8]) -> Value {
    json!({
        "name": name,
        "runtime": runtime,
        "handler": handler,
        "code_base64": b64(bytes),
        "timeout_ms": 3000
    })
}

async fn start(name: &str, extra: &[(&str, &str)]) -> (Sandbox, Component, Api) {
    let mut sb = Sandbox::new(name).await;
    let portal = sb.start_portal(extra).await;
    let api = Api::new(&portal);
    (sb, portal, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accounts_and_sessions() {
    let (sb, portal, api) = start("pa-auth", &[("FREE_CREDIT_MICROS", "2500000")]).await;

    // Register: 201, then every 400 and the 409.
    let email = format!("Ada-{}@Example.com", tests::rand_id());
    let (s, v) = api
        .post(
            "/users",
            &json!({"email": email, "name": "Ada", "password": "12345678"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let user_id = v["user_id"].as_str().unwrap().to_owned();
    let e = assert_error(
        api.post(
            "/users",
            &json!({"email": "not-an-email", "name": "X", "password": "12345678"}),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_eq!(e["error"]["field"], "email");
    let e = assert_error(
        api.post(
            "/users",
            &json!({"email": "b@example.com", "name": "X", "password": "1234567"}),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_eq!(e["error"]["field"], "password");
    assert_error(
        api.post(
            "/users",
            &json!({"email": email.to_uppercase(), "name": "Y", "password": "abcdefgh"}),
        )
        .await,
        409,
        "email_taken",
    );
    assert_error(
        api.post("/users", &json!("nope")).await,
        400,
        "invalid_json",
    );

    // The password is stored as an Argon2id PHC string only.
    let stored: schemas::UserDoc = sb
        .db
        .collection(collections::USERS)
        .find_one(doc! {"_id": &user_id})
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored.password_hash.starts_with("$argon2id$"),
        "{}",
        stored.password_hash
    );
    assert!(!stored.password_hash.contains("12345678"));

    // Log in (the email in any case); wrong password or unknown email → 401.
    let (s, v) = api
        .post(
            "/sessions",
            &json!({"email": email.to_lowercase(), "password": "12345678"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user_id"], user_id.as_str());
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 32, "a token of at least 128 bits: {token}");
    assert_error(
        api.post(
            "/sessions",
            &json!({"email": email, "password": "wrong-password"}),
        )
        .await,
        401,
        "invalid_credentials",
    );
    assert_error(
        api.post(
            "/sessions",
            &json!({"email": "nobody@example.com", "password": "12345678"}),
        )
        .await,
        401,
        "invalid_credentials",
    );
    // Only the token's SHA-256 is stored.
    let sessions: Vec<schemas::SessionDoc> = {
        use futures::TryStreamExt;
        sb.db
            .collection(collections::SESSIONS)
            .find(doc! {"user_id": &user_id})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].token_hash,
        common::codestore::sha256_hex(token.as_bytes())
    );
    assert!(sessions[0].expires_at_ms > schemas::now_ms() + 86_400_000);
    assert!(sessions[0].csrf.len() >= 16);

    // The account, with the configured free credit.
    let me = api.as_user(&token);
    let (s, v) = me.get("/account").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user_id"], user_id.as_str());
    assert_eq!(v["email"], email.to_lowercase().as_str());
    assert_eq!(v["name"], "Ada");
    assert_eq!(v["balance_micros"], 2_500_000);

    // 401 without or with a bad token, on every authenticated row.
    let nobody = api.as_user("not-a-session");
    for (m, path) in [
        ("GET", "/account"),
        ("GET", "/keys"),
        ("POST", "/keys"),
        ("DELETE", "/keys/k1"),
        ("GET", "/functions"),
        ("POST", "/functions"),
        ("GET", "/functions/x"),
        ("PUT", "/functions/x"),
        ("DELETE", "/functions/x"),
        ("POST", "/functions/x/test"),
        ("GET", "/runs"),
        ("GET", "/runs/r1"),
        ("POST", "/account/topups"),
        ("GET", "/account/history"),
        ("GET", "/bills"),
        ("POST", "/bills/b1/payments"),
        ("DELETE", "/sessions"),
    ] {
        let m: reqwest::Method = m.parse().unwrap();
        let body = (m == reqwest::Method::POST || m == reqwest::Method::PUT).then(|| json!({}));
        assert_error(
            api.send(m.clone(), path, body.as_ref()).await,
            401,
            "unauthorized",
        );
        assert_error(
            nobody.send(m, path, body.as_ref()).await,
            401,
            "unauthorized",
        );
    }

    // An expired session is refused (and forgotten).
    let old_token = "expired-session-token-0123456789abcdef";
    let expired = schemas::SessionDoc {
        token_hash: common::codestore::sha256_hex(old_token.as_bytes()),
        user_id: user_id.clone(),
        csrf: "c".repeat(32),
        created_at_ms: schemas::now_ms() - 10_000,
        expires_at_ms: schemas::now_ms() - 1,
    };
    sb.db
        .collection::<schemas::SessionDoc>(collections::SESSIONS)
        .insert_one(&expired)
        .await
        .unwrap();
    assert_error(
        api.as_user(old_token).get("/account").await,
        401,
        "unauthorized",
    );
    let left = sb
        .db
        .collection::<bson::Document>(collections::SESSIONS)
        .count_documents(doc! {"_id": &expired.token_hash})
        .await
        .unwrap();
    assert_eq!(left, 0);

    // Logout: 204, then the token is dead.
    let (s, _) = me.delete("/sessions").await;
    assert_eq!(s, 204);
    assert_error(me.get("/account").await, 401, "unauthorized");
    assert_error(me.delete("/sessions").await, 401, "unauthorized");

    // Pricing needs no login; unknown routes and methods are JSON errors.
    let (s, v) = api.get("/pricing").await;
    assert_eq!(s, 200, "{v}");
    let resources: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["resource"].as_str().unwrap())
        .collect();
    assert_eq!(resources, ["cpu", "memory", "disk", "request"]);
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["price_micros_per_unit"].is_i64() && p["unit"].is_string()));
    assert_error(api.get("/nothing-here").await, 404, "no_route");
    assert_error(api.get("/users").await, 405, "method_not_allowed");

    portal.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_are_rate_limited_per_account() {
    let (sb, portal, api) = start("pa-limit", &[("PORTAL_LOGIN_PER_ACCOUNT", "3")]).await;
    let (_, _) = api.new_user("first").await; // one login used by another account
    let email = format!("target-{}@example.com", tests::rand_id());
    let (s, _) = api
        .post(
            "/users",
            &json!({"email": email, "name": "T", "password": "right-password"}),
        )
        .await;
    assert_eq!(s, 201);
    for _ in 0..3 {
        assert_error(
            api.post(
                "/sessions",
                &json!({"email": email, "password": "wrong-password"}),
            )
            .await,
            401,
            "invalid_credentials",
        );
    }
    // The fourth attempt is refused before the password is checked, even the right one.
    let (s, h, v) = api
        .send_full(
            reqwest::Method::POST,
            "/sessions",
            Some(&json!({"email": email, "password": "right-password"})),
        )
        .await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // Other accounts are not affected.
    api.new_user("second").await;
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_are_rate_limited_per_address() {
    let (sb, portal, api) = start("pa-limit-addr", &[("PORTAL_LOGIN_PER_ADDRESS", "4")]).await;
    // Four attempts on four different accounts from one address...
    for i in 0..4 {
        assert_error(
            api.post(
                "/sessions",
                &json!({"email": format!("nobody{i}@example.com"), "password": "whatever1"}),
            )
            .await,
            401,
            "invalid_credentials",
        );
    }
    // ...and the fifth, on yet another account, is refused.
    assert_error(
        api.post(
            "/sessions",
            &json!({"email": "someone-else@example.com", "password": "whatever1"}),
        )
        .await,
        429,
        "rate_limited",
    );
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys() {
    let (sb, portal, api) = start("pa-keys", &[]).await;
    let (a, a_id) = api.new_user("a").await;
    let (b, _) = api.new_user("b").await;

    let (s, v) = a.post("/keys", &json!({"label": "ci"})).await;
    assert_eq!(s, 201, "{v}");
    let key_id = v["key_id"].as_str().unwrap().to_owned();
    let secret = v["key"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32);
    let (s, v) = a.get("/keys").await;
    assert_eq!(s, 200);
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["key_id"], key_id.as_str());
    assert_eq!(list[0]["label"], "ci");
    assert!(list[0]["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(!v.to_string().contains(&secret), "the secret is shown once");
    // Stored hashed, as the gateway looks it up.
    let stored: schemas::ApiKeyDoc = sb
        .db
        .collection(collections::API_KEYS)
        .find_one(doc! {"_id": &key_id})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.key_hash, gateway::store::hash_key(&secret));
    assert_eq!(stored.user_id, a_id);

    // B sees nothing of A's and cannot revoke it.
    let (_, v) = b.get("/keys").await;
    assert_eq!(v, json!([]));
    assert_error(b.delete(&format!("/keys/{key_id}")).await, 404, "not_found");
    let (s, _) = a.delete(&format!("/keys/{key_id}")).await;
    assert_eq!(s, 204);
    assert_error(a.delete(&format!("/keys/{key_id}")).await, 404, "not_found");
    let (_, v) = a.get("/keys").await;
    assert_eq!(v, json!([]));
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn functions_crud_and_validation() {
    let (sb, portal, api) = start("pa-fn", &[]).await;
    let (a, _) = api.new_user("a").await;
    let (b, _) = api.new_user("b").await;

    let (s, v) = a.post("/functions", &adder_spec("adder")).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "adder");
    assert_eq!(v["version"], 1);
    assert_eq!(v["runtime"], "python3");
    assert_eq!(v["args_schema"], json!({"num1": "int", "num2": "int"}));
    assert_eq!(v["resources"]["memory_mb"], 128);
    assert_eq!(v["mode"], "sync");
    assert!(v.get("code_base64").is_none(), "the code is not echoed");
    assert_eq!(
        v["status"],
        json!({"pending": 0, "running": 0, "succeeded": 0, "failed": 0, "timed_out": 0, "last_run_at": null})
    );
    let sha = v["code_sha256"].as_str().unwrap().to_owned();
    assert_eq!(
        common::codestore::get(&sb.db, &sha).await.unwrap(),
        ADDER_PY.as_bytes(),
        "the code is in the shared store"
    );
    let (s, _) = a
        .post(
            "/functions",
            &with(
                adder_spec("subtractor"),
                "description",
                json!("<script>x</script>"),
            ),
        )
        .await;
    assert_eq!(s, 201);

    // 409: the name is taken (for this user only: B may use it).
    assert_error(
        a.post("/functions", &adder_spec("adder")).await,
        409,
        "name_taken",
    );
    let (s, _) = b.post("/functions", &adder_spec("adder")).await;
    assert_eq!(s, 201);

    // 400s, each naming its field.
    for (spec, field) in [
        (
            with(adder_spec("Bad_Name"), "name", json!("Bad_Name")),
            "name",
        ),
        (with(adder_spec("-x"), "name", json!("-x")), "name"),
        (with(adder_spec("x1"), "runtime", json!("ruby")), "runtime"),
        (
            with(adder_spec("x2"), "args_schema", json!({"a": "date"})),
            "args_schema",
        ),
        (with(adder_spec("x3"), "mode", json!("later")), "mode"),
        (
            with(adder_spec("x4"), "timeout_ms", json!(10)),
            "timeout_ms",
        ),
        (
            with(
                adder_spec("x5"),
                "resources",
                json!({"memory_mb": 1_000_000}),
            ),
            "resources.memory_mb",
        ),
        (
            with(adder_spec("x6"), "resources", json!({"cpu_millicores": 1})),
            "resources.cpu_millicores",
        ),
        (
            with(adder_spec("x7"), "handler", json!("handle")),
            "handler",
        ),
        (
            with(adder_spec("x8"), "handler", json!("other.handle")),
            "handler",
        ),
        (
            with(adder_spec("x9"), "code_base64", json!("!!not base64!!")),
            "code_base64",
        ),
        (
            with(adder_spec("x10"), "code_base64", Value::Null),
            "code_base64",
        ),
        (
            with(adder_spec("x11"), "filename", json!("../main.py")),
            "filename",
        ),
    ] {
        let e = assert_error(a.post("/functions", &spec).await, 400, "invalid_request");
        assert_eq!(e["error"]["field"], field, "{spec}: {e}");
    }
    assert_error(
        a.post(
            "/functions",
            &with(adder_spec("x12"), "timeout_ms", json!("soon")),
        )
        .await,
        400,
        "invalid_json",
    );

    // 413: more than 20 MiB of code.
    let big = vec![b'#'; schemas::limits::CODE_BYTES + 1];
    assert_error(
        a.post(
            "/functions",
            &with(adder_spec("big"), "code_base64", json!(b64(&big))),
        )
        .await,
        413,
        "payload_too_large",
    );
    assert_error(
        a.put(
            "/functions/adder",
            &with(adder_spec("adder"), "code_base64", json!(b64(&big))),
        )
        .await,
        413,
        "payload_too_large",
    );

    // 413: test args over the sync limit (6 MiB), as at the gateway.
    let huge_args = json!({"num1": "x".repeat(7 << 20)});
    assert_error(
        a.post("/functions/adder/test", &huge_args).await,
        413,
        "payload_too_large",
    );

    // List with search, and one function.
    let (s, v) = a.get("/functions").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["adder", "subtractor"]);
    let (_, v) = a.get("/functions?q=btr").await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "subtractor");
    assert_eq!(v[0]["description"], "<script>x</script>");
    assert!(v[0]["status"].is_object());
    let (_, v) = a.get("/functions?q=zzz").await;
    assert_eq!(v, json!([]));
    let (s, v) = a.get("/functions/adder").await;
    assert_eq!(s, 200);
    assert_eq!(v["description"], "adds two numbers");

    // Update: version + 1; without code the stored code is kept; a new file replaces it.
    let mut spec = adder_spec("adder");
    spec.as_object_mut().unwrap().remove("code_base64");
    spec["description"] = json!("v2");
    spec["mode"] = json!("async");
    let (s, v) = a.put("/functions/adder", &spec).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["version"].as_i64(), v["description"].as_str()),
        (Some(2), Some("v2"))
    );
    assert_eq!(v["mode"], "async");
    assert_eq!(v["code_sha256"], sha.as_str());
    let new_code = "def handle(event, context):\n    return 2\n";
    let (s, v) = a
        .put(
            "/functions/adder",
            &with(
                adder_spec("adder"),
                "code_base64",
                json!(b64(new_code.as_bytes())),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], 3);
    assert_ne!(v["code_sha256"], sha.as_str());
    let (s, v) = a.get("/functions/adder/versions").await;
    assert_eq!(s, 200);
    let versions: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    let e = assert_error(
        a.put(
            "/functions/adder",
            &with(adder_spec("renamed"), "name", json!("renamed")),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_eq!(e["error"]["field"], "name");
    assert_error(
        a.put(
            "/functions/adder",
            &with(adder_spec("adder"), "runtime", json!("cobol")),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        a.put("/functions/nope", &adder_spec("nope")).await,
        404,
        "not_found",
    );

    // Isolation: B's "adder" is B's; A's "subtractor" does not exist for B.
    let (_, v) = b.get("/functions/adder").await;
    assert_eq!(v["version"], 1);
    assert_error(b.get("/functions/subtractor").await, 404, "not_found");
    assert_error(
        b.put("/functions/subtractor", &adder_spec("subtractor"))
            .await,
        404,
        "not_found",
    );
    assert_error(b.delete("/functions/subtractor").await, 404, "not_found");
    assert_error(
        b.post("/functions/subtractor/test", &json!({})).await,
        404,
        "not_found",
    );
    let (_, v) = b.get("/functions").await;
    assert_eq!(v.as_array().unwrap().len(), 1);

    // Delete: 204, then 404 everywhere.
    let (s, _) = a.delete("/functions/subtractor").await;
    assert_eq!(s, 204);
    assert_error(a.get("/functions/subtractor").await, 404, "not_found");
    assert_error(a.delete("/functions/subtractor").await, 404, "not_found");
    assert_error(
        a.post("/functions/subtractor/test", &json!({})).await,
        404,
        "not_found",
    );
    let (_, v) = a.get("/functions").await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    // The name can be used again.
    let (s, v) = a.post("/functions", &adder_spec("subtractor")).await;
    assert_eq!(s, 201);
    assert_eq!(v["version"], 1);

    portal.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_uploads_are_refused() {
    let (sb, portal, api) = start(
        "pa-upload",
        &[
            ("PORTAL_MAX_UNPACKED_BYTES", "4194304"),
            ("PORTAL_MAX_PACKAGE_ENTRIES", "50"),
        ],
    )
    .await;
    let (a, _) = api.new_user("a").await;
    let main = b"def handle(e, c):\n    return 1\n" as &[u8];

    // Good packages: a .zip with a package module, a .tar.gz with an executable.
    let zip_ok = zip_of(&[("lib/__init__.py", b""), ("lib/main.py", main)]);
    let (s, v) = a
        .post(
            "/functions",
            &package_spec("zipped", "python3", "lib.main.handle", &zip_ok),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["code_kind"], "zip");
    let tgz_ok = tar_gz_of(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(21);
        h.set_mode(0o755);
        b.append_data(&mut h, "bin/run", &b"#!/bin/sh\ncat; echo\n "[..21])
            .unwrap();
    });
    let (s, v) = a
        .post(
            "/functions",
            &package_spec("tarred", "exec", "bin/run", &tgz_ok),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["code_kind"], "tar.gz");
    let node_zip = zip_of(&[("index.js", b"exports.handle = async () => 1;")]);
    let (s, v) = a
        .post(
            "/functions",
            &package_spec("noded", "node", "index.handle", &node_zip),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // Hostile ones: each a 400 saying why.
    let zip_traversal = zip_of(&[("../../etc/cron.d/evil", b"x"), ("main.py", main)]);
    let zip_absolute = zip_of(&[("/etc/evil.py", b"x"), ("main.py", main)]);
    let zip_symlink = {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.add_symlink(
            "main.py",
            "/etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        w.finish().unwrap().into_inner()
    };
    let tgz_symlink = tar_gz_of(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "main.py", "/etc/passwd").unwrap();
    });
    let tgz_traversal = tar_gz_of(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        // `append_data` refuses `..`; write the raw name as an attacker would.
        h.as_old_mut().name[..12].copy_from_slice(b"../escape.py");
        h.set_cksum();
        b.append(&h, &b"x\n"[..]).unwrap();
    });
    let zeros = vec![0u8; 8 << 20];
    let zip_bomb = zip_of(&[("main.py", &zeros)]);
    assert!(
        zip_bomb.len() < 64 * 1024,
        "a real bomb: {} bytes",
        zip_bomb.len()
    );
    let tgz_bomb = tar_gz_of(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(zeros.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "main.py", &zeros[..]).unwrap();
    });
    let names: Vec<String> = (0..60).map(|i| format!("f{i}.py")).collect();
    let many: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), b"" as &[u8])).collect();
    let zip_many = zip_of(&many);
    let zip_no_handler = zip_of(&[("other.py", main)]);
    for (what, bytes, expect) in [
        ("zip traversal", &zip_traversal, "traversal"),
        ("zip absolute path", &zip_absolute, "absolute"),
        ("zip symlink", &zip_symlink, "link"),
        ("tar.gz symlink", &tgz_symlink, "link"),
        ("tar.gz traversal", &tgz_traversal, "traversal"),
        ("zip bomb", &zip_bomb, "bomb"),
        ("tar.gz bomb", &tgz_bomb, "bomb"),
        ("zip with too many entries", &zip_many, "entries"),
        ("missing handler", &zip_no_handler, "main.py"),
    ] {
        let e = assert_error(
            a.post(
                "/functions",
                &package_spec("hostile", "python3", "main.handle", bytes),
            )
            .await,
            400,
            "invalid_request",
        );
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(expect), "{what}: {msg}");
    }
    // A single file whose name does not match the handler's module.
    let e = assert_error(
        a.post(
            "/functions",
            &with(
                with(adder_spec("single"), "filename", json!("app.py")),
                "handler",
                json!("main.handle"),
            ),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_eq!(e["error"]["field"], "handler");
    // An exec handler that is not in the package.
    let e = assert_error(
        a.post(
            "/functions",
            &package_spec("tarred2", "exec", "bin/missing", &tgz_ok),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_eq!(e["error"]["field"], "handler");
    // None of them was stored.
    let (_, v) = a.get("/functions").await;
    assert_eq!(v.as_array().unwrap().len(), 3);
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

fn run_doc(user_id: &str, function: &str, status: RunStatus, at: i64, micros: i64) -> RunDoc {
    RunDoc {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        function_id: format!("f-{function}"),
        function: function.to_owned(),
        version: 1,
        status,
        args_json: r#"{"x":1}"#.into(),
        result_json: (status == RunStatus::Succeeded).then(|| "2".to_owned()),
        error: None,
        logs: "log line\n".into(),
        cold_start: false,
        duration_ms: 12,
        resources: Resources::new(500, 128, 64),
        billed_micros: micros,
        bill_state: BillState::Unbilled,
        bill_id: None,
        worker_id: None,
        epoch: 1,
        created_at_ms: at,
        started_at_ms: Some(at),
        finished_at_ms: status.is_final().then_some(at + 12),
        hold: None,
        attempts: Vec::new(),
        next_attempt_at_ms: None,
        dead_letter: None,
        schedule_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_are_listed_newest_first_and_scoped() {
    let (sb, portal, api) = start("pa-runs", &[]).await;
    let (a, a_id) = api.new_user("a").await;
    let (b, _) = api.new_user("b").await;
    let (s, _) = a.post("/functions", &adder_spec("adder")).await;
    assert_eq!(s, 201);
    let t0 = schemas::now_ms() - 60_000;
    let runs = vec![
        run_doc(&a_id, "adder", RunStatus::Succeeded, t0, 3),
        run_doc(&a_id, "adder", RunStatus::Failed, t0 + 1000, 4),
        run_doc(&a_id, "other", RunStatus::Succeeded, t0 + 2000, 5),
        run_doc(&a_id, "adder", RunStatus::Running, t0 + 3000, 0),
        run_doc(&a_id, "adder", RunStatus::TimedOut, t0 + 4000, 6),
    ];
    sb.db
        .collection::<RunDoc>(collections::RUNS)
        .insert_many(&runs)
        .await
        .unwrap();

    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, v) = a.get("/runs").await;
    assert_eq!(s, 200);
    let want: Vec<String> = runs.iter().rev().map(|r| r.id.clone()).collect();
    assert_eq!(ids(&v), want, "newest first");
    let (_, v) = a.get("/runs?function=adder").await;
    assert_eq!(v.as_array().unwrap().len(), 4);
    let (_, v) = a.get("/runs?function=adder&status=failed").await;
    assert_eq!(ids(&v), [runs[1].id.clone()]);
    let (_, v) = a.get("/runs?limit=2").await;
    assert_eq!(ids(&v), want[..2].to_vec());
    let e = assert_error(a.get("/runs?status=done").await, 400, "invalid_request");
    assert_eq!(e["error"]["field"], "status");
    assert_error(a.get("/runs?limit=0").await, 400, "invalid_request");
    // Pages: `before` continues after a run, in the same order, to the end; with filters too.
    let (_, p1) = a.get("/runs?limit=2").await;
    let (_, p2) = a
        .get(&format!("/runs?limit=2&before={}", ids(&p1)[1]))
        .await;
    let (_, p3) = a
        .get(&format!("/runs?limit=2&before={}", ids(&p2)[1]))
        .await;
    let paged: Vec<String> = [ids(&p1), ids(&p2), ids(&p3)].concat();
    assert_eq!(paged, want, "three pages cover the list once, in order");
    let (_, v) = a
        .get(&format!("/runs?function=adder&before={}", runs[3].id))
        .await;
    assert_eq!(ids(&v), [runs[1].id.clone(), runs[0].id.clone()]);
    let (_, v) = a.get(&format!("/runs?before={}", runs[0].id)).await;
    assert_eq!(v, json!([]), "nothing after the oldest");
    let e = assert_error(
        a.get("/runs?before=no-such-run").await,
        400,
        "invalid_request",
    );
    assert_eq!(e["error"]["field"], "before");
    // Another user's run is no page marker either.
    assert_error(
        b.get(&format!("/runs?before={}", runs[2].id)).await,
        400,
        "invalid_request",
    );
    // Versions: run 2 of `adder` is version 2.
    sb.db
        .collection::<RunDoc>(collections::RUNS)
        .update_one(doc! {"_id": &runs[4].id}, doc! {"$set": {"version": 2}})
        .await
        .unwrap();
    let (_, v) = a.get("/runs?function=adder&version=2").await;
    assert_eq!(ids(&v), [runs[4].id.clone()]);
    let (_, v) = a.get("/runs?function=adder&version=1").await;
    assert_eq!(v.as_array().unwrap().len(), 3);
    let e = assert_error(a.get("/runs?version=zero").await, 400, "invalid_request");
    assert_eq!(e["error"]["field"], "version");

    let (s, v) = a.get(&format!("/runs/{}", runs[0].id)).await;
    assert_eq!(s, 200);
    for k in [
        "run_id",
        "function",
        "version",
        "status",
        "args",
        "result",
        "logs",
        "cold_start",
        "duration_ms",
        "billed_micros",
        "created_at",
        "started_at",
        "finished_at",
    ] {
        assert!(v.get(k).is_some(), "run has {k}: {v}");
    }
    assert_eq!(v["args"], json!({"x": 1}));
    assert_eq!(v["result"], 2);
    assert_eq!(v["status"], "succeeded");

    // The status summary of the function counts its runs.
    let (_, v) = a.get("/functions/adder").await;
    assert_eq!(
        (
            v["status"]["succeeded"].as_u64(),
            v["status"]["failed"].as_u64(),
            v["status"]["running"].as_u64(),
            v["status"]["timed_out"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(1))
    );
    assert!(v["status"]["last_run_at"].as_str().is_some());

    // B sees none of it.
    let (_, v) = b.get("/runs").await;
    assert_eq!(v, json!([]));
    assert_error(
        b.get(&format!("/runs/{}", runs[0].id)).await,
        404,
        "not_found",
    );
    assert_error(a.get("/runs/no-such-run").await, 404, "not_found");
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

fn bill_doc(user_id: &str, amount_micros: i64) -> BillDoc {
    let now = schemas::now_ms();
    let items = vec![
        BillItem {
            run_id: format!("r{}", tests::rand_id()),
            function: "adder".into(),
            duration_ms: 10,
            cpu_millicores: 500,
            memory_mb: 128,
            disk_mb: 64,
            amount_micros: amount_micros - 1,
        },
        BillItem {
            run_id: format!("r{}", tests::rand_id()),
            function: "adder".into(),
            duration_ms: 1,
            cpu_millicores: 500,
            memory_mb: 128,
            disk_mb: 64,
            amount_micros: 1,
        },
    ];
    BillDoc {
        id: format!("b{}", tests::rand_id()),
        user_id: user_id.to_owned(),
        created_at_ms: now,
        period_start_ms: now - 3_600_000,
        period_end_ms: now,
        amount_micros,
        status: BillStatus::Unpaid,
        items,
        paid_at_ms: None,
    }
}

async fn insert_bill(sb: &Sandbox, b: &BillDoc) {
    sb.db
        .collection::<BillDoc>(collections::BILLS)
        .insert_one(b)
        .await
        .unwrap();
}

fn topup(amount: i64, card: &str, expiry: &str, cvc: &str) -> Value {
    json!({"amount_micros": amount, "card_number": card, "card_expiry": expiry, "card_cvc": cvc})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topups_bills_and_payments() {
    let (sb, portal, api) = start("pa-money", &[("FREE_CREDIT_MICROS", "1000000")]).await;
    let (a, a_id) = api.new_user("a").await;
    let (b, _) = api.new_user("b").await;

    // Top-ups: 201 with the new balance; 400 for bad cards and amounts; 402 declined.
    let (s, v) = a
        .post(
            "/account/topups",
            &topup(4_000_000, GOOD_CARD, "12/39", "123"),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["balance_micros"], 5_000_000);
    assert_error(
        a.post(
            "/account/topups",
            &topup(1_000, DECLINED_CARD, "12/39", "123"),
        )
        .await,
        402,
        "card_declined",
    );
    assert_error(
        a.post(
            "/account/topups",
            &topup(1_000, "4242424242424241", "12/39", "123"),
        )
        .await,
        400,
        "invalid_card",
    );
    assert_error(
        a.post("/account/topups", &topup(1_000, GOOD_CARD, "01/20", "123"))
            .await,
        400,
        "invalid_card",
    );
    assert_error(
        a.post("/account/topups", &topup(1_000, GOOD_CARD, "12/39", "1"))
            .await,
        400,
        "invalid_card",
    );
    for amount in [0, -5] {
        assert_error(
            a.post("/account/topups", &topup(amount, GOOD_CARD, "12/39", "123"))
                .await,
            400,
            "invalid_amount",
        );
    }
    let (_, v) = a.get("/account").await;
    assert_eq!(
        v["balance_micros"], 5_000_000,
        "failed top-ups change nothing"
    );

    // Bills: listed, paid once (200 then 409), 402 when too expensive, others' → 404.
    let small = bill_doc(&a_id, 1_500_000);
    let huge = bill_doc(&a_id, 50_000_000);
    insert_bill(&sb, &small).await;
    insert_bill(&sb, &huge).await;
    let (s, v) = a.get("/bills").await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().unwrap().len(), 2);
    for bill in v.as_array().unwrap() {
        let sum: i64 = bill["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["amount_micros"].as_i64().unwrap())
            .sum();
        assert_eq!(bill["amount_micros"].as_i64().unwrap(), sum);
        assert_eq!(bill["status"], "unpaid");
        for k in ["bill_id", "created_at", "period_start", "period_end"] {
            assert!(bill[k].is_string(), "{k}: {bill}");
        }
    }
    let (_, v) = b.get("/bills").await;
    assert_eq!(v, json!([]));
    assert_error(
        b.post(&format!("/bills/{}/payments", small.id), &json!({}))
            .await,
        404,
        "not_found",
    );
    assert_error(
        a.post("/bills/no-such-bill/payments", &json!({})).await,
        404,
        "not_found",
    );
    assert_error(
        a.post(&format!("/bills/{}/payments", huge.id), &json!({}))
            .await,
        402,
        "insufficient_balance",
    );
    let (s, v) = a
        .post(&format!("/bills/{}/payments", small.id), &json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "paid");
    assert_eq!(v["bill_id"], small.id.as_str());
    assert_error(
        a.post(&format!("/bills/{}/payments", small.id), &json!({}))
            .await,
        409,
        "already_paid",
    );
    let (_, v) = a.get("/account").await;
    assert_eq!(v["balance_micros"], 3_500_000);

    // Concurrent payments of one bill: exactly one 200, the others 409; paid once.
    let contested = bill_doc(&a_id, 1_000_000);
    insert_bill(&sb, &contested).await;
    let path = format!("/bills/{}/payments", contested.id);
    let tries = futures::future::join_all((0..8).map(|_| {
        let a = a.clone();
        let path = path.clone();
        async move { a.post(&path, &json!({})).await }
    }))
    .await;
    let oks = tries.iter().filter(|(s, _)| *s == 200).count();
    let conflicts = tries
        .iter()
        .filter(|(s, v)| *s == 409 && v["error"]["code"] == "already_paid")
        .count();
    assert_eq!((oks, conflicts), (1, 7), "{tries:?}");
    let (_, v) = a.get("/account").await;
    assert_eq!(v["balance_micros"], 2_500_000, "deducted exactly once");

    // History: newest first, top-up with last 4 digits only, two payments.
    let (s, v) = a.get("/account/history").await;
    assert_eq!(s, 200);
    let h = v.as_array().unwrap();
    let kinds: Vec<&str> = h.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["bill_payment", "bill_payment", "topup"], "{v}");
    assert_eq!(h[2]["amount_micros"], 4_000_000);
    assert_eq!(h[2]["account_last4"], "4242");
    assert_eq!(h[0]["bill_id"], contested.id.as_str());
    assert!(h[0]["at"].as_str().unwrap().ends_with('Z'));
    assert!(!v.to_string().contains(GOOD_CARD));
    let (_, v) = b.get("/account/history").await;
    assert_eq!(v, json!([]));
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_metrics() {
    let (sb, portal, api) = start("pa-ops", &[]).await;
    let http = reqwest::Client::new();
    let r = http
        .get(portal_url(&portal, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["mongodb"].as_bool(), v["rabbitmq"].as_bool()),
        (Some(true), Some(true))
    );
    let _ = api.get("/pricing").await;
    let text = http
        .get(portal_url(&portal, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("colorfaas_portal_requests_total{route=\"api_account\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("colorfaas_portal_amqp_connected 1"), "{text}");
    portal.stop().await.unwrap();

    // With RabbitMQ unreachable, /healthz says 503.
    let mut sb = sb;
    let down = sb
        .start_portal(&[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")])
        .await;
    let r = http
        .get(portal_url(&down, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["rabbitmq"], false);
    down.stop().await.unwrap();
    sb.cleanup().await;
}

/// Register → log in → create a function → test it through the real pipeline → the runs list
/// shows it → the billing job bills it → pay the bill → the history shows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_flow_through_the_pipeline_and_billing() {
    let mut sb = Sandbox::new("pa-flow").await;
    let worker = sb.start_worker(&[("WORKER_MEMORY_MB", "1024")]).await;
    let dispatcher = sb.start_dispatcher(&[]).await;
    let portal = sb.start_portal(&[]).await;
    let queue = sb.names.invocations_queue();
    eventually(
        Duration::from_secs(30),
        "a dispatcher leads and consumes the invocations",
        || async { (sb.queue_info(&queue).await?.consumer_count() > 0).then_some(()) },
    )
    .await;
    let api = Api::new(&portal);
    let (a, _) = api.new_user("flow").await;
    let (s, v) = a.post("/functions", &adder_spec("adder")).await;
    assert_eq!(s, 201, "{v}");
    let fail_py = "def handle(event, context):\n    raise ValueError('no thanks')\n";
    let (s, v) = a
        .post(
            "/functions",
            &json!({"name": "failer", "runtime": "python3", "handler": "main.handle",
                    "code_base64": b64(fail_py.as_bytes()), "filename": "main.py", "timeout_ms": 10000}),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // Test it: the answer of a sync invoke, headers included.
    let (s, h, v) = a
        .send_full(
            reqwest::Method::POST,
            "/functions/adder/test",
            Some(&json!({"num1": 2, "num2": 40})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"sum": 42}));
    let run_id = h["x-run-id"].to_str().unwrap().to_owned();
    assert!(h["x-duration-ms"].to_str().unwrap().parse::<u64>().is_ok());
    assert!(["true", "false"].contains(&h["x-cold-start"].to_str().unwrap()));
    let billed: i64 = h["x-billed-micros"].to_str().unwrap().parse().unwrap();
    assert!(billed > 0);
    // Args that do not match the schema, and malformed JSON: 400 as at the gateway.
    assert_error(
        a.post("/functions/adder/test", &json!({"num1": "two"}))
            .await,
        400,
        "invalid_args",
    );
    let (s, _, v) = {
        let r = a
            .http
            .post(format!("{}/functions/adder/test", a.base))
            .bearer_auth(a.token.as_deref().unwrap())
            .body("{\"num1\": ")
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, (), r.json::<Value>().await.unwrap())
    };
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    // A failing function: 502 with the run id.
    let (s, v) = a.post("/functions/failer/test", &json!({})).await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["error"]["code"], "function_error");
    let failed_run = v["run_id"].as_str().unwrap().to_owned();

    // The runs list shows both, newest first, with logs.
    let runs = eventually(
        Duration::from_secs(20),
        "both runs are stored as finished",
        || async {
            let (_, v) = a.get("/runs").await;
            let arr = v.as_array()?.clone();
            (arr.len() == 2
                && arr
                    .iter()
                    .all(|r| r["status"] != "pending" && r["status"] != "running"))
            .then_some(arr)
        },
    )
    .await;
    assert_eq!(runs[0]["run_id"], failed_run.as_str());
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[1]["run_id"], run_id.as_str());
    assert_eq!(runs[1]["status"], "succeeded");
    assert_eq!(runs[1]["result"], json!({"sum": 42}));
    assert_eq!(runs[1]["billed_micros"], billed);
    assert!(
        runs[1]["logs"].as_str().unwrap().contains("adding"),
        "{}",
        runs[1]
    );
    let (_, v) = a.get("/functions/adder").await;
    assert_eq!(v["status"]["succeeded"], 1);

    // The billing job bills both runs into one bill whose amount is the sum of its items.
    let summary = billing_job::bill_once(&sb.db, &billing_job::BillOptions::default())
        .await
        .unwrap();
    assert_eq!((summary.runs, summary.bills), (2, 1));
    let (_, v) = a.get("/bills").await;
    let bills = v.as_array().unwrap();
    assert_eq!(bills.len(), 1);
    let bill = &bills[0];
    let items = bill["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let sum: i64 = items
        .iter()
        .map(|i| i["amount_micros"].as_i64().unwrap())
        .sum();
    assert_eq!(bill["amount_micros"].as_i64().unwrap(), sum);
    assert_eq!(bill["status"], "unpaid");
    assert!(items
        .iter()
        .any(|i| i["run_id"] == run_id.as_str() && i["amount_micros"] == billed));
    let bill_id = bill["bill_id"].as_str().unwrap().to_owned();
    let (_, v) = a.get(&format!("/runs/{run_id}")).await;
    assert_eq!(v["bill_id"], bill_id.as_str());

    // Top up, pay, and see both in the history.
    let (s, _) = a
        .post(
            "/account/topups",
            &topup(2_000_000, GOOD_CARD, "12/39", "1234"),
        )
        .await;
    assert_eq!(s, 201);
    let (_, before) = a.get("/account").await;
    let (s, v) = a
        .post(&format!("/bills/{bill_id}/payments"), &json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "paid");
    let (_, after) = a.get("/account").await;
    assert_eq!(
        before["balance_micros"].as_i64().unwrap() - sum,
        after["balance_micros"].as_i64().unwrap()
    );
    let (_, v) = a.get("/account/history").await;
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["bill_payment", "topup"]);
    assert_eq!(v[0]["amount_micros"].as_i64().unwrap(), sum);
    assert_eq!(v[0]["bill_id"], bill_id.as_str());

    // Deleting the function keeps its runs and its (paid) bill.
    let (s, _) = a.delete("/functions/adder").await;
    assert_eq!(s, 204);
    let (_, v) = a.get("/runs").await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (_, v) = a.get(&format!("/runs/{run_id}")).await;
    assert_eq!(v["status"], "succeeded");
    let (_, v) = a.get("/bills").await;
    assert_eq!(v[0]["bill_id"], bill_id.as_str());
    assert_eq!(v[0]["status"], "paid");
    assert_error(
        a.post("/functions/adder/test", &json!({"num1": 1, "num2": 2}))
            .await,
        404,
        "not_found",
    );

    // The budget cap: with no credit left, a test invocation is refused with 402.
    let (b, b_id) = api.new_user("broke").await;
    sb.db
        .collection::<bson::Document>(collections::USERS)
        .update_one(doc! {"_id": &b_id}, doc! {"$set": {"balance_micros": 0i64}})
        .await
        .unwrap();
    let (s, _) = b.post("/functions", &adder_spec("adder")).await;
    assert_eq!(s, 201);
    assert_error(
        b.post("/functions/adder/test", &json!({"num1": 1, "num2": 2}))
            .await,
        402,
        "insufficient_credit",
    );

    portal.stop().await.unwrap();
    dispatcher.stop().await.unwrap();
    worker.stop().await.unwrap();
    sb.cleanup().await;
}

/// The counts a brute-force read of every run gives.
async fn counted_now(sb: &Sandbox, user_id: &str) -> Vec<(String, [u64; 5])> {
    use futures::TryStreamExt as _;
    let runs: Vec<RunDoc> = sb
        .db
        .collection::<RunDoc>(collections::RUNS)
        .find(doc! {"user_id": user_id})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut m = std::collections::BTreeMap::<String, [u64; 5]>::new();
    for r in runs {
        let i = RunStatus::ALL.iter().position(|s| *s == r.status).unwrap();
        m.entry(r.function).or_default()[i] += 1;
    }
    m.into_iter().collect()
}

fn as_rows(c: &portal::pages::data::UserCounts) -> Vec<(String, [u64; 5])> {
    c.iter()
        .map(|(f, n)| {
            let mut a = [0u64; 5];
            for (i, s) in RunStatus::ALL.iter().enumerate() {
                a[i] = match s {
                    RunStatus::Pending => n.pending,
                    RunStatus::Running => n.running,
                    RunStatus::Succeeded => n.succeeded,
                    RunStatus::Failed => n.failed,
                    RunStatus::TimedOut => n.timed_out,
                };
            }
            (f.clone(), a)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_agree_with_the_runs_at_every_read() {
    let sb = Sandbox::new("pa-counts").await;
    let runs = sb.db.collection::<RunDoc>(collections::RUNS);
    let now = schemas::now_ms();
    let (user, other) = ("user-counts", "user-other");
    // Old runs (before the snapshot's margin), open and final, and recent ones.
    let mut open: Vec<String> = Vec::new();
    for (i, at) in [now - 3_600_000, now - 120_000, now - 1_000, now]
        .iter()
        .enumerate()
    {
        for (f, status) in [
            ("adder", RunStatus::Succeeded),
            ("adder", RunStatus::Pending),
            ("echo", RunStatus::Running),
            ("echo", RunStatus::Failed),
            ("echo", RunStatus::TimedOut),
        ] {
            let d = run_doc(user, f, status, at + i as i64, 10);
            if !status.is_final() {
                open.push(d.id.clone());
            }
            runs.insert_one(&d).await.unwrap();
        }
        runs.insert_one(run_doc(other, "adder", RunStatus::Succeeded, *at, 10))
            .await
            .unwrap();
    }
    let cache = portal::pages::data::StatusCache::default();
    let first = cache.get(&sb.db, user).await.unwrap();
    assert_eq!(as_rows(&first), counted_now(&sb, user).await);
    assert_eq!(first["adder"].pending, 4, "{first:?}");
    // Rounds of changes between reads: open runs end (old and new ones), new runs arrive,
    // also ones created a little in the past (stored late); each read agrees with a full count.
    for round in 0..4 {
        let end = open.split_off(open.len() / 2);
        for (k, id) in end.iter().enumerate() {
            let status = [RunStatus::Succeeded, RunStatus::Failed, RunStatus::TimedOut][k % 3];
            runs.update_one(doc! {"_id": id}, doc! {"$set": {"status": status.as_str()}})
                .await
                .unwrap();
        }
        let now = schemas::now_ms();
        for (f, status, at) in [
            ("adder", RunStatus::Pending, now),
            ("echo", RunStatus::Running, now - 30_000),
            ("new-fn", RunStatus::Succeeded, now - 5_000),
        ] {
            let d = run_doc(user, f, status, at, 10);
            if !status.is_final() {
                open.push(d.id.clone());
            }
            runs.insert_one(&d).await.unwrap();
        }
        let got = cache.get(&sb.db, user).await.unwrap();
        assert_eq!(as_rows(&got), counted_now(&sb, user).await, "round {round}");
    }
    assert!(cache.get(&sb.db, other).await.unwrap()["adder"].succeeded == 4);
    sb.cleanup().await;
}
