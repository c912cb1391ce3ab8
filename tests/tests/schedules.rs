//! Schedules through real services: the portal's API (validation 400s, other users' 404s,
//! pause/resume), the leading dispatcher firing ticks (one run per tick, `trigger: "schedule"`),
//! a paused schedule firing nothing, a tick the account cannot cover recorded as refused, and
//! a `rate(1 seconds)` schedule (the minimum lowered by configuration) across a SIGKILL of the
//! leading dispatcher process: no tick twice, none lost (missed ticks run late, once each).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bson::doc;
use futures::TryStreamExt;
use schemas::names::collections;
use schemas::{RunDoc, RunStatus, Runtime};
use serde_json::{json, Value};
use tests::{eventually, portal_url, Component, Sandbox};

const PY: &str = "def handle(event, context):\n    return event\n";
const ONE_SECOND: [(&str, &str); 1] = [("DISPATCHER_MIN_SCHEDULE", "1s")];

/// A logged-in JSON API client.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(portal: &Component) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: portal_url(portal, "/api/v1"),
            token: None,
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            assert!(
                v["error"]["code"].is_string(),
                "error body of a {status}: {text}"
            );
        }
        (status, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(&body.to_string()))
            .await
    }
    async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PATCH, path, Some(&body.to_string()))
            .await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Registers and logs in a fresh user: the logged-in client and the user id.
    async fn new_user(&self, tag: &str) -> (Api, String) {
        let email = format!("{tag}-{}@example.com", tests::rand_id());
        let creds = json!({"email": email, "name": tag, "password": "correct horse"});
        let (s, v) = self.post("/users", &creds).await;
        assert_eq!(s, 201, "{v}");
        let user_id = v["user_id"].as_str().unwrap().to_owned();
        let (s, v) = self.post("/sessions", &creds).await;
        assert_eq!(s, 200, "{v}");
        let api = Api {
            token: Some(v["token"].as_str().unwrap().to_owned()),
            ..self.clone()
        };
        (api, user_id)
    }
}

fn code(got: &(u16, Value)) -> (u16, Option<&str>) {
    (got.0, got.1["error"]["code"].as_str())
}

/// The runs a schedule started, by tick time.
async fn runs_of(sb: &Sandbox, schedule_id: &str) -> Vec<RunDoc> {
    sb.db
        .collection::<RunDoc>(collections::RUNS)
        .find(doc! {"schedule_id": schedule_id})
        .sort(doc! {"created_at_ms": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn schedule(api: &Api, function: &str, body: Value) -> String {
    let got = api
        .post(&format!("/functions/{function}/schedules"), &body)
        .await;
    assert_eq!(got.0, 201, "{}", got.1);
    got.1["schedule_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_api_validates_and_keeps_users_apart() {
    let mut sb = Sandbox::new("sched-api").await;
    let portal = sb.start_portal(&[]).await;
    let api = Api::new(&portal);
    let (alice, alice_id) = api.new_user("alice").await;
    let (bob, _) = api.new_user("bob").await;
    let mut f = sb
        .function_doc(
            &alice_id,
            "adder",
            Runtime::Python3,
            "main.py",
            "main.handle",
            PY,
        )
        .await;
    f.args_schema = vec![("n".into(), schemas::ArgType::Int)];
    sb.insert_function(&f).await;

    // The default minimum is one minute.
    for bad in [
        json!({"expression": "rate(30 seconds)"}),
        json!({"expression": "rate(1 seconds)"}),
        json!({"expression": "every minute"}),
        json!({"expression": "rate(0 minutes)"}),
        json!({"expression": "rate(5 weeks)"}),
        json!({"expression": "cron(* * * *)"}),
        json!({"expression": "cron(61 * * * *)"}),
        json!({}),
        json!({"expression": "rate(1 minute)", "args": {"n": "not an int"}}),
    ] {
        let got = alice.post("/functions/adder/schedules", &bad).await;
        assert_eq!(
            code(&got),
            (400, Some("invalid_request")),
            "{bad}: {}",
            got.1
        );
    }
    let got = alice
        .send(
            reqwest::Method::POST,
            "/functions/adder/schedules",
            Some("{not json"),
        )
        .await;
    assert_eq!(code(&got), (400, Some("invalid_json")));

    let (s, created) = alice
        .post(
            "/functions/adder/schedules",
            &json!({"expression": "cron(*/5 * * * *)", "args": {"n": 2}}),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["function"], "adder");
    assert_eq!(created["expression"], "cron(*/5 * * * *)");
    assert_eq!(created["args"], json!({"n": 2}));
    assert_eq!(created["enabled"], true);
    let next = created["next_run_at"].as_str().unwrap();
    assert!(next.ends_with(":00.000Z") && next.contains('T'), "{next}");
    let id = created["schedule_id"].as_str().unwrap();

    let (s, list) = alice.get("/functions/adder/schedules").await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(list[0], created);

    // Paused: no next run; resumed: one again.
    let (s, paused) = alice
        .patch(&format!("/schedules/{id}"), &json!({"enabled": false}))
        .await;
    assert_eq!(
        (s, paused["enabled"].as_bool()),
        (200, Some(false)),
        "{paused}"
    );
    assert!(paused["next_run_at"].is_null());
    let (s, resumed) = alice
        .patch(&format!("/schedules/{id}"), &json!({"enabled": true}))
        .await;
    assert_eq!((s, resumed["enabled"].as_bool()), (200, Some(true)));
    assert!(resumed["next_run_at"].is_string());
    let got = alice.patch(&format!("/schedules/{id}"), &json!({})).await;
    assert_eq!(code(&got), (400, Some("invalid_request")));

    // Other users' schedules and functions are 404, like missing ones.
    for got in [
        bob.get("/functions/adder/schedules").await,
        bob.post(
            "/functions/adder/schedules",
            &json!({"expression": "rate(1 hour)"}),
        )
        .await,
        bob.patch(&format!("/schedules/{id}"), &json!({"enabled": false}))
            .await,
        bob.delete(&format!("/schedules/{id}")).await,
        alice.get("/functions/nope/schedules").await,
        alice.delete("/schedules/no-such-schedule").await,
        alice
            .patch("/schedules/no-such-schedule", &json!({"enabled": true}))
            .await,
    ] {
        assert_eq!(code(&got), (404, Some("not_found")), "{}", got.1);
    }
    let unauthenticated = api.get("/functions/adder/schedules").await;
    assert_eq!(unauthenticated.0, 401);

    assert_eq!(alice.delete(&format!("/schedules/{id}")).await.0, 204);
    assert_eq!(
        code(&alice.delete(&format!("/schedules/{id}")).await),
        (404, Some("not_found"))
    );
    let (_, list) = alice.get("/functions/adder/schedules").await;
    assert_eq!(list, json!([]));

    portal.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_fires_enabled_schedules_only_and_refuses_ticks_without_credit() {
    let mut sb = Sandbox::new("sched-fire").await;
    let portal = sb.start_portal(&ONE_SECOND).await;
    let d = sb.start_dispatcher(&ONE_SECOND).await;
    let api = Api::new(&portal);
    let (alice, alice_id) = api.new_user("alice").await;
    sb.seed_function(
        &alice_id,
        "echo",
        Runtime::Python3,
        "main.py",
        "main.handle",
        PY,
    )
    .await;
    let every_second = |enabled: bool| json!({"expression": "rate(1 second)", "args": {"hello": "world"}, "enabled": enabled});
    let paused = schedule(&alice, "echo", every_second(false)).await;
    let active = schedule(&alice, "echo", every_second(true)).await;

    let fired = eventually(
        Duration::from_secs(30),
        "the active schedule fires 3 ticks",
        || async {
            let runs = runs_of(&sb, &active).await;
            (runs.len() >= 3).then_some(runs)
        },
    )
    .await;
    assert!(
        runs_of(&sb, &paused).await.is_empty(),
        "a paused schedule fired"
    );
    let ticks: Vec<i64> = fired.iter().map(|r| r.created_at_ms).collect();
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 1000), "{ticks:?}");
    for r in &fired {
        assert_eq!(
            r.id,
            common::schedule::tick_run_id(&active, r.created_at_ms)
        );
        assert_eq!(r.args_json, r#"{"hello":"world"}"#);
    }
    // The run, as the API shows it.
    let (s, run) = alice.get(&format!("/runs/{}", fired[0].id)).await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(
        (run["trigger"].as_str(), run["schedule_id"].as_str()),
        (Some("schedule"), Some(active.as_str()))
    );

    // Pausing stops it (a tick already being fired may still land); resuming the other one
    // shows the leader still fires.
    let (s, _) = alice
        .patch(&format!("/schedules/{active}"), &json!({"enabled": false}))
        .await;
    assert_eq!(s, 200);
    let at_pause = runs_of(&sb, &active).await.len();
    alice
        .patch(&format!("/schedules/{paused}"), &json!({"enabled": true}))
        .await;
    eventually(
        Duration::from_secs(30),
        "the resumed schedule fires 3 ticks",
        || async { (runs_of(&sb, &paused).await.len() >= 3).then_some(()) },
    )
    .await;
    let after = runs_of(&sb, &active).await.len();
    assert!(
        after <= at_pause + 1,
        "the paused schedule went on firing: {at_pause} then {after}"
    );

    // A user without credit: the tick is recorded as refused (failed, not billed), not run.
    let broke = sb.seed_user(0).await;
    sb.seed_function(
        &broke,
        "echo",
        Runtime::Python3,
        "main.py",
        "main.handle",
        PY,
    )
    .await;
    let now = schemas::now_ms();
    let s = schemas::schedules::ScheduleDoc {
        id: format!("s{}", tests::rand_id()),
        user_id: broke.clone(),
        function_id: sb
            .db
            .collection::<schemas::FunctionDoc>(collections::FUNCTIONS)
            .find_one(doc! {"user_id": &broke})
            .await
            .unwrap()
            .unwrap()
            .id,
        function: "echo".into(),
        expression: "rate(1 second)".into(),
        args_json: "{}".into(),
        enabled: true,
        next_tick_ms: now + 1000,
        anchor_ms: now,
        created_at_ms: now,
        updated_at_ms: now,
    };
    sb.db
        .collection::<schemas::schedules::ScheduleDoc>(collections::SCHEDULES)
        .insert_one(&s)
        .await
        .unwrap();
    let refused = eventually(
        Duration::from_secs(30),
        "a refused tick is recorded",
        || async { runs_of(&sb, &s.id).await.into_iter().next() },
    )
    .await;
    assert_eq!(refused.status, RunStatus::Failed);
    assert_eq!(
        refused.error.as_ref().map(|e| e.code.as_str()),
        Some(schemas::schedules::SCHEDULE_REFUSED)
    );
    assert_eq!(refused.billed_micros, 0);
    assert_eq!(refused.bill_state, schemas::BillState::Exempt);

    d.stop().await.unwrap();
    portal.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_each_tick_once_across_a_leader_sigkill() {
    let mut sb = Sandbox::new("sched-failover").await;
    let w = sb.start_worker(&[]).await;
    let portal = sb.start_portal(&ONE_SECOND).await;
    let env = |id: &'static str| {
        vec![
            ("DISPATCHER_ZK_SESSION_TIMEOUT", "2s"),
            ("DISPATCHER_MIN_SCHEDULE", "1s"),
            ("DISPATCHER_ID", id),
            ("DISPATCHER_ADDR", "127.0.0.1:0"),
        ]
    };
    let mut d1 = sb.spawn_binary("dispatcher", &env("d1"));
    let queue = sb.names.invocations_queue();
    eventually(Duration::from_secs(30), "d1 leads", || async {
        (sb.queue_info(&queue).await?.consumer_count() > 0).then_some(())
    })
    .await;
    let mut d2 = sb.spawn_binary("dispatcher", &env("d2"));

    let api = Api::new(&portal);
    let (alice, alice_id) = api.new_user("alice").await;
    sb.seed_function(
        &alice_id,
        "echo",
        Runtime::Python3,
        "main.py",
        "main.handle",
        PY,
    )
    .await;
    let id = schedule(&alice, "echo", json!({"expression": "rate(1 seconds)"})).await;
    eventually(
        Duration::from_secs(30),
        "3 ticks before the kill",
        || async { (runs_of(&sb, &id).await.len() >= 3).then_some(()) },
    )
    .await;
    tests::signal(&d1, "KILL");
    let killed_at = schemas::now_ms();
    let _ = d1.wait();
    eventually(
        Duration::from_secs(60),
        "the new leader fires ticks after the kill",
        || async {
            let runs = runs_of(&sb, &id).await;
            (runs
                .iter()
                .filter(|r| r.created_at_ms > killed_at + 3000)
                .count()
                >= 3)
                .then_some(())
        },
    )
    .await;
    assert_eq!(alice.delete(&format!("/schedules/{id}")).await.0, 204);

    // Every run finishes (it was published, not only recorded), each tick once, none missing.
    let runs = eventually(
        Duration::from_secs(60),
        "every scheduled run is final",
        || async {
            let runs = runs_of(&sb, &id).await;
            runs.iter().all(|r| r.status.is_final()).then_some(runs)
        },
    )
    .await;
    let mut per_tick: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &runs {
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        *per_tick.entry(r.created_at_ms).or_default() += 1;
    }
    assert!(
        per_tick.values().all(|&n| n == 1),
        "a tick ran twice: {per_tick:?}"
    );
    let ticks: Vec<i64> = per_tick.keys().copied().collect();
    let gaps: Vec<_> = ticks.windows(2).filter(|w| w[1] - w[0] != 1000).collect();
    assert!(
        gaps.is_empty(),
        "ticks lost around the failover: {gaps:?} in {ticks:?}"
    );
    assert!(ticks.first().unwrap() < &killed_at && ticks.last().unwrap() > &(killed_at + 3000));
    let ids: HashSet<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), runs.len());

    tests::signal(&d2, "TERM");
    let _ = d2.wait();
    portal.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}
