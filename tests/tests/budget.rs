//! Never spending more than you have (contract v1.1, "Budget and limits"), against the real
//! gateway, RabbitMQ, MongoDB and — where runs must finish — the dispatcher, a worker and Docker:
//! accepting an invocation reserves its worst case, one micro cannot start two worst-case runs,
//! a finished run keeps only its real cost, a run never published releases its reservation,
//! per-user limits hold across keys while other users are served, and accounts from before the
//! counters are initialised from their runs and bills.

use std::time::Duration;

use accounts::credit::{counters, Counters};
use bson::doc;
use futures::StreamExt;
use schemas::names::collections;
use schemas::{FunctionDoc, Resources, RunDoc, RunStatus, Runtime};
use serde_json::Value;
use tests::{eventually, Component, Sandbox};

const NO_RATE_LIMIT: [(&str, &str); 2] = [
    ("GATEWAY_RATE_PER_SEC", "1000000"),
    ("GATEWAY_BURST", "1000000"),
];
const ECHO_PY: &str = "def handle(event, context):\n    return event\n";
const SLOW_PY: &str =
    "import time\n\ndef handle(event, context):\n    time.sleep(1.5)\n    return {\"slept\": True}\n";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1000)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn invoke(
    client: &reqwest::Client,
    gw: &Component,
    key: &str,
    function: &str,
    mode: &str,
) -> reqwest::Response {
    client
        .post(format!("http://{}/v1/invoke/{function}", gw.addr))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-invocation-type", mode)
        .body("{}")
        .send()
        .await
        .unwrap()
}

/// Status, error code (if any) and body.
async fn answer(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code, body)
}

/// A python3 function of `user_id` with these resources and timeout.
async fn function(
    sb: &Sandbox,
    user_id: &str,
    name: &str,
    source: &str,
    resources: Resources,
    timeout_ms: u64,
) -> FunctionDoc {
    let mut f = sb
        .function_doc(
            user_id,
            name,
            Runtime::Python3,
            "main.py",
            "main.handle",
            source,
        )
        .await;
    f.resources = resources;
    f.timeout_ms = timeout_ms;
    sb.insert_function(&f).await;
    f
}

async fn user_counters(sb: &Sandbox, user_id: &str) -> Counters {
    counters(&sb.db, user_id).await.unwrap()
}

async fn run(sb: &Sandbox, run_id: &str) -> Option<RunDoc> {
    sb.db
        .collection::<RunDoc>(collections::RUNS)
        .find_one(doc! {"_id": run_id})
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_micro_of_credit_cannot_start_two_worst_case_runs() {
    let mut sb = Sandbox::new("budget-1micro").await;
    // No dispatcher: whatever is accepted stays in flight.
    let gw = sb.start_gateway(&NO_RATE_LIMIT).await;
    let (user, key) = sb.seed_tenant(1).await;
    let f = function(&sb, &user, "tiny", ECHO_PY, Resources::new(50, 64, 16), 100).await;
    // 100 ms at the smallest resources, plus the request, rounds up to one micro.
    assert_eq!(
        accounts::Prices::default().worst_case(f.timeout_ms, f.resources),
        1
    );
    let client = http();
    let (status, _, _) = answer(invoke(&client, &gw, &key, "tiny", "async").await).await;
    assert_eq!(status, 202);
    let c = user_counters(&sb, &user).await;
    assert_eq!((c.reserved, c.queued, c.available()), (1, 1, 0));
    for mode in ["async", "sync"] {
        let (status, code, body) = answer(invoke(&client, &gw, &key, "tiny", mode).await).await;
        assert_eq!(
            (status, code.as_str()),
            (402, "insufficient_credit"),
            "{mode}: {body}"
        );
    }
    // Nothing more was reserved by the refused ones.
    assert_eq!(user_counters(&sb, &user).await, c);

    gw.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_keeps_only_its_real_cost() {
    let mut sb = Sandbox::new("budget-release").await;
    let (w, d, gw) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    let (user, key) = sb.seed_tenant(1_000_000).await;
    let r = Resources::new(500, 128, 64);
    let slow = function(&sb, &user, "slow", SLOW_PY, r, 10_000).await;
    function(&sb, &user, "echo", ECHO_PY, r, 10_000).await;
    let worst = accounts::Prices::default().worst_case(slow.timeout_ms, r);
    let before = user_counters(&sb, &user).await.available();
    assert_eq!(before, 1_000_000);
    let client = http();

    // Async: reserved at acceptance.
    let (status, _, body) = answer(invoke(&client, &gw, &key, "slow", "async").await).await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    let during = user_counters(&sb, &user).await;
    // The counters were read before the run's status: if it is not final now, it was not
    // settled when they were read.
    if !run(&sb, &run_id).await.is_some_and(|d| d.status.is_final()) {
        assert_eq!((during.reserved, during.queued), (worst, 1));
        assert_eq!(during.available(), before - worst);
    }
    let done = eventually(
        Duration::from_secs(90),
        "the run ends and is settled",
        || async {
            let d = run(&sb, &run_id).await?;
            let c = user_counters(&sb, &user).await;
            (d.status.is_final() && c.queued == 0).then_some((d, c))
        },
    )
    .await;
    let (doc, after) = done;
    assert_eq!(doc.status, RunStatus::Succeeded, "{:?}", doc.error);
    assert!(
        doc.billed_micros > 0 && doc.billed_micros < worst,
        "{}",
        doc.billed_micros
    );
    assert_eq!(doc.hold.map(|h| h.reserved_micros), Some(worst));
    assert_eq!((after.reserved, after.sync), (0, 0));
    assert_eq!(after.available(), before - doc.billed_micros);

    // Sync: the same, and the sync slot is given back.
    let resp = invoke(&client, &gw, &key, "echo", "sync").await;
    let billed: i64 = resp.headers()["x-billed-micros"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let settled = eventually(
        Duration::from_secs(30),
        "the sync run is settled",
        || async {
            let c = user_counters(&sb, &user).await;
            (c.queued == 0 && c.sync == 0 && c.reserved == 0).then_some(c)
        },
    )
    .await;
    assert!(billed > 0);
    assert_eq!(settled.available(), after.available() - billed);

    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_never_published_releases_its_reservation() {
    let mut sb = Sandbox::new("budget-unpublished").await;
    let (user, key) = sb.seed_tenant(1_000).await;
    let f = function(
        &sb,
        &user,
        "echo",
        ECHO_PY,
        Resources::new(500, 128, 64),
        5_000,
    )
    .await;
    let worst = accounts::Prices::default().worst_case(f.timeout_ms, f.resources);

    // RabbitMQ unreachable: refused with 503 after the reservation; the request gives it back.
    let gw = sb
        .start_gateway(&[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")])
        .await;
    let client = http();
    for mode in ["async", "sync"] {
        let (status, code, _) = answer(invoke(&client, &gw, &key, "echo", mode).await).await;
        assert_eq!((status, code.as_str()), (503, "unavailable"), "{mode}");
    }
    eventually(
        Duration::from_secs(10),
        "the refused invocations' reservations are released",
        || async {
            let c = user_counters(&sb, &user).await;
            (c.reserved == 0 && c.queued == 0 && c.sync == 0).then_some(())
        },
    )
    .await;
    gw.stop().await.unwrap();

    // A publish that failed after it was tried: the gateway stores the run as failed by the
    // platform with its hold (`gateway::unpublished_doc`); storing it releases the reservation,
    // once, however often it is stored.
    let held = accounts::reserve(&sb.db, &user, worst, false, &accounts::Limits::default())
        .await
        .unwrap();
    let mut inv = sb
        .invocation(Runtime::Python3, "main.py", "main.handle", ECHO_PY)
        .await;
    inv.user_id = user.clone();
    inv.hold = Some(held.hold());
    held.hand_over();
    let c = user_counters(&sb, &user).await;
    assert_eq!(
        (c.reserved, c.queued, c.available()),
        (worst, 1, 1_000 - worst)
    );
    let d = gateway::unpublished_doc(&inv, "RabbitMQ did not confirm the invocation");
    assert_eq!((d.status, d.billed_micros), (RunStatus::Failed, 0));
    sb.store_runs(std::slice::from_ref(&d)).await;
    sb.store_runs(&[d]).await;
    let c = user_counters(&sb, &user).await;
    assert_eq!(
        (c.reserved, c.queued, c.spent, c.available()),
        (0, 0, 0, 1_000)
    );

    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_queued_limit_gets_429_while_another_is_served() {
    const LIMIT: usize = 25;
    const CALLS: usize = 1_000;
    let mut sb = Sandbox::new("budget-limit").await;
    // No dispatcher: accepted runs stay unfinished, so the limit stays reached.
    let limit = LIMIT.to_string();
    let gw = sb
        .start_gateway(&[
            NO_RATE_LIMIT[0],
            NO_RATE_LIMIT[1],
            ("GATEWAY_USER_MAX_QUEUED", &limit),
        ])
        .await;
    let (busy, key_a) = sb.seed_tenant(1_000_000_000).await;
    let (_, key_b) = sb.seed_api_key(&busy).await;
    let (calm, key_calm) = sb.seed_tenant(1_000_000_000).await;
    let r = Resources::new(500, 128, 64);
    function(&sb, &busy, "echo", ECHO_PY, r, 5_000).await;
    function(&sb, &calm, "echo", ECHO_PY, r, 5_000).await;
    let client = http();

    // 1,000 at once, over two keys of the same user, while the other user invokes too.
    let burst = futures::stream::iter(0..CALLS)
        .map(|i| {
            let (client, gw) = (&client, &gw);
            let key = if i % 2 == 0 { &key_a } else { &key_b };
            async move {
                let resp = invoke(client, gw, key, "echo", "async").await;
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let (status, code, _) = answer(resp).await;
                (status, code, retry_after)
            }
        })
        .buffer_unordered(CALLS)
        .collect::<Vec<_>>();
    let other = async {
        let mut served = Vec::new();
        for _ in 0..5 {
            let (status, code, _) =
                answer(invoke(&client, &gw, &key_calm, "echo", "async").await).await;
            served.push((status, code));
        }
        served
    };
    let (answers, served) = tokio::join!(burst, other);
    assert!(
        served.iter().all(|(s, _)| *s == 202),
        "the other user is served: {served:?}"
    );
    let accepted = answers.iter().filter(|(s, _, _)| *s == 202).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(accepted, LIMIT, "{answers:?}");
    assert_eq!(limited.len(), CALLS - LIMIT);
    for (_, code, retry_after) in limited {
        assert_eq!(code, "user_limit");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    let c = user_counters(&sb, &busy).await;
    assert_eq!(c.queued, LIMIT as i64);
    assert_eq!(user_counters(&sb, &calm).await.queued, 5);

    gw.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_calls_over_the_user_limit_get_429_async_ones_are_still_accepted() {
    let mut sb = Sandbox::new("budget-sync").await;
    let gw = sb
        .start_gateway(&[
            NO_RATE_LIMIT[0],
            NO_RATE_LIMIT[1],
            ("GATEWAY_USER_MAX_SYNC", "1"),
            ("GATEWAY_SYNC_GRACE", "500ms"),
        ])
        .await;
    let (user, key) = sb.seed_tenant(1_000_000).await;
    function(
        &sb,
        &user,
        "echo",
        ECHO_PY,
        Resources::new(500, 128, 64),
        2_000,
    )
    .await;
    let client = http();
    // No dispatcher: the first sync call waits, then answers 504; its run never ends.
    let first = {
        let (client, gw, key) = (client.clone(), &gw, key.clone());
        let addr = gw.addr;
        tokio::spawn(async move {
            let resp = client
                .post(format!("http://{addr}/v1/invoke/echo"))
                .bearer_auth(&key)
                .header("x-invocation-type", "sync")
                .body("{}")
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        })
    };
    eventually(
        Duration::from_secs(10),
        "the first sync call is in flight",
        || async { (user_counters(&sb, &user).await.sync == 1).then_some(()) },
    )
    .await;
    let (status, code, _) = answer(invoke(&client, &gw, &key, "echo", "sync").await).await;
    assert_eq!((status, code.as_str()), (429, "user_limit"));
    let (status, _, _) = answer(invoke(&client, &gw, &key, "echo", "async").await).await;
    assert_eq!(status, 202);
    assert_eq!(first.await.unwrap(), 504);
    // Its run has not ended: the slot is still taken.
    let (status, code, _) = answer(invoke(&client, &gw, &key, "echo", "sync").await).await;
    assert_eq!((status, code.as_str()), (429, "user_limit"));

    gw.stop().await.unwrap();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_from_before_the_counters_is_initialised_from_its_runs_and_bills() {
    let sb = Sandbox::new("budget-migrate").await;
    let user = sb.seed_user(10_000).await;
    let run = |status, billed| tests::run_doc(&user, status, billed);
    // Runs finished and billed, one bill paid; more finished since; some not finished.
    sb.store_runs(&[
        run(RunStatus::Succeeded, 700),
        run(RunStatus::TimedOut, 300),
    ])
    .await;
    let summary = billing_job::bill_once(&sb.db, &billing_job::BillOptions::default())
        .await
        .unwrap();
    assert_eq!(summary.total_micros, 1_000);
    let bill_id = sb
        .db
        .collection::<schemas::BillDoc>(collections::BILLS)
        .find_one(doc! {"user_id": &user})
        .await
        .unwrap()
        .unwrap()
        .id;
    accounts::pay_bill(&sb.db, &user, &bill_id).await.unwrap();
    sb.store_runs(&[
        run(RunStatus::Failed, 30),
        run(RunStatus::Succeeded, 4),
        run(RunStatus::Running, 0),
    ])
    .await;
    let counted = user_counters(&sb, &user).await;
    assert_eq!(counted.available(), 10_000 - 1_000 - 34);

    // The same account as it was before the counters existed.
    let users = sb.db.collection::<bson::Document>(collections::USERS);
    users
        .update_one(
            doc! {"_id": &user},
            doc! {"$unset": {"spent_micros": "", "paid_micros": "", "available_micros": "",
            "reserved_micros": "", "queued_runs": "", "sync_runs": "",
            "counters_version": ""}},
        )
        .await
        .unwrap();
    assert_eq!(
        accounts::available_credit(&sb.db, &user).await.unwrap(),
        counted.available()
    );
    let u = users.find_one(doc! {"_id": &user}).await.unwrap().unwrap();
    assert_eq!(
        (
            schemas::lenient::int(u.get("spent_micros")),
            schemas::lenient::int(u.get("paid_micros"))
        ),
        (1_034, 1_000)
    );
    // And it reserves against them like any other.
    let held = accounts::reserve(&sb.db, &user, 8_966, false, &accounts::Limits::default())
        .await
        .unwrap();
    assert!(matches!(
        accounts::reserve(&sb.db, &user, 1, false, &accounts::Limits::default()).await,
        Err(accounts::ReserveError::InsufficientCredit {
            available_micros: 0,
            needed_micros: 1
        })
    ));
    drop(held);
    eventually(
        Duration::from_secs(10),
        "a dropped reservation is released",
        || async { (user_counters(&sb, &user).await.reserved == 0).then_some(()) },
    )
    .await;
    sb.cleanup().await;
}

/// A settlement batch id made `ago` in the past (batch ids are UUID v7: they carry their time).
fn batch_id(ago: Duration) -> String {
    let at = std::time::SystemTime::now() - ago;
    let d = at.duration_since(std::time::UNIX_EPOCH).unwrap();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, d.as_secs(), d.subsec_nanos());
    uuid::Uuid::new_v7(ts).to_string()
}

/// A final run of `user_id` costing `cost`, marked as settled by batch `batch` but not settled:
/// what a run writer that died between storing it and settling it leaves.
async fn unsettled_run(
    sb: &Sandbox,
    user_id: &str,
    cost: i64,
    hold: schemas::Hold,
    batch: &str,
) -> String {
    let mut d = tests::run_doc(user_id, RunStatus::Succeeded, cost);
    d.hold = Some(hold);
    let mut raw = bson::to_document(&d).unwrap();
    raw.insert(common::runstore::SETTLE, batch);
    sb.db
        .collection::<bson::Document>(collections::RUNS)
        .insert_one(raw)
        .await
        .unwrap();
    d.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_dead_writer_left_unsettled_are_settled_once() {
    let sb = Sandbox::new("budget-recover").await;
    let user = sb.seed_user(1_000_000).await;
    let limits = accounts::Limits::default();
    let mut holds = Vec::new();
    for _ in 0..3 {
        let r = accounts::reserve(&sb.db, &user, 500, false, &limits)
            .await
            .unwrap();
        holds.push(r.hold());
        r.hand_over();
    }
    let before = user_counters(&sb, &user).await;
    assert_eq!((before.reserved, before.queued), (1500, 3));

    // Batch `old`: the writer died after marking its runs, before touching the user.
    let old = batch_id(Duration::from_secs(120));
    let a = unsettled_run(&sb, &user, 120, holds[0], &old).await;
    // Batch `half`: the writer died after settling the user, before unmarking the run.
    let half = batch_id(Duration::from_secs(120));
    let b = unsettled_run(&sb, &user, 80, holds[1], &half).await;
    let mut s = accounts::Settlement::default();
    s.add(80, Some(&holds[1]));
    let settled = std::collections::HashMap::from([(user.clone(), s)]);
    let statements = accounts::hold::settle_statements(&settled, &half);
    common::wire::update(&sb.db, collections::USERS, statements, "test")
        .await
        .unwrap();
    // Batch `young`: a live writer may be between its steps; it is left alone.
    let young = batch_id(Duration::ZERO);
    let c = unsettled_run(&sb, &user, 10, holds[2], &young).await;

    assert_eq!(common::runstore::recover(&sb.db).await.unwrap(), 2);
    let after = user_counters(&sb, &user).await;
    assert_eq!(
        after.spent,
        before.spent + 200,
        "each old batch counted once"
    );
    assert_eq!(
        (after.reserved, after.queued),
        (500, 1),
        "young batch untouched"
    );
    assert_eq!(after.available(), after.formula());
    for (id, marked) in [(&a, false), (&b, false), (&c, true)] {
        let raw = sb
            .db
            .collection::<bson::Document>(collections::RUNS)
            .find_one(doc! {"_id": id})
            .await
            .unwrap()
            .unwrap();
        assert_eq!(raw.contains_key(common::runstore::SETTLE), marked, "{id}");
    }
    let u = sb
        .db
        .collection::<bson::Document>(collections::USERS)
        .find_one(doc! {"_id": &user})
        .await
        .unwrap()
        .unwrap();
    let listed = u
        .get_array(accounts::hold::SETTLING)
        .map(|l| l.len())
        .unwrap_or(0);
    assert_eq!(listed, 0, "settled batches are forgotten: {u}");

    // Again: nothing changes.
    assert_eq!(common::runstore::recover(&sb.db).await.unwrap(), 0);
    assert_eq!(user_counters(&sb, &user).await, after);
    sb.cleanup().await;
}
