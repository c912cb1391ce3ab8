//! Schedules benchmark (a program that prints figures): how late the leader's firing loop
//! starts scheduled runs. It stores `SCHEDULES` (default 10,000) `rate(1 minute)` schedules
//! of one user, their ticks spread evenly over the next minute (one tick per schedule per
//! minute), runs the real firing loop (`dispatcher::schedules`, against the local MongoDB and
//! RabbitMQ) for one round of ticks and prints the lateness of each run — the time from its
//! tick until its record is stored, its invocation confirmed by RabbitMQ and its schedule
//! moved on — as p50 / p99 / max. `BURST=1` puts every tick on the same instant instead (the
//! worst case: `cron(* * * * *)` on every schedule).
//!
//! Needs the local stack (`scripts/stack.sh`). Run:
//! `cargo bench -p dispatcher --bench schedules` (or `SCHEDULES=1000 BURST=1 cargo bench ...`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::amqp::{Link, LinkConfig};
use dispatcher::schedules::{self, Ctx, Fired};
use schemas::names::{collections, AmqpNames};
use schemas::schedules::ScheduleDoc;
use schemas::{CodeKind, FunctionDoc, Mode, Resources, Runtime, UserDoc};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const MONGODB_URI: &str = "mongodb://127.0.0.1:27017";

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn seed(db: &mongodb::Database, n: usize, burst: bool) -> i64 {
    let now = schemas::now_ms();
    let user = UserDoc {
        id: "bench-user".into(),
        email: "bench@example.com".into(),
        name: "bench".into(),
        password_hash: "-".into(),
        balance_micros: i64::MAX / 4,
        spent_micros: 0,
        paid_micros: 0,
        created_at_ms: now,
    };
    db.collection::<UserDoc>(collections::USERS)
        .insert_one(&user)
        .await
        .unwrap();
    let f = FunctionDoc {
        id: "bench-fn".into(),
        user_id: user.id.clone(),
        name: "noop".into(),
        runtime: Runtime::Python3,
        handler: "main.handle".into(),
        filename: "main.py".into(),
        description: String::new(),
        args_schema: Vec::new(),
        mode: Mode::Async,
        resources: Resources::new(50, 64, 16),
        timeout_ms: 100,
        version: 1,
        code_sha256: "0".repeat(64),
        code_size: 1,
        code_kind: CodeKind::Single,
        created_at_ms: now,
        updated_at_ms: now,
        retries: 0,
        max_event_age_s: schemas::rules::DEFAULT_MAX_EVENT_AGE_S,
        config: Default::default(),
    };
    db.collection::<FunctionDoc>(collections::FUNCTIONS)
        .insert_one(&f)
        .await
        .unwrap();
    // The first ticks start 5 s from now (after the loop is up), spread over one minute.
    let start = (now / 1000 + 5) * 1000;
    let docs: Vec<ScheduleDoc> = (0..n)
        .map(|i| {
            let tick = if burst {
                start
            } else {
                start + (i as i64 * 60_000) / n as i64
            };
            ScheduleDoc {
                id: format!("s{i:06}"),
                user_id: user.id.clone(),
                function_id: f.id.clone(),
                function: f.name.clone(),
                expression: "rate(1 minute)".into(),
                args_json: "{}".into(),
                enabled: true,
                next_tick_ms: tick,
                anchor_ms: tick,
                created_at_ms: now,
                updated_at_ms: now,
            }
        })
        .collect();
    for part in docs.chunks(2000) {
        db.collection::<ScheduleDoc>(collections::SCHEDULES)
            .insert_many(part)
            .await
            .unwrap();
    }
    start
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_num("THREADS", 1))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let n = env_num("SCHEDULES", 10_000);
    let burst = std::env::var("BURST").is_ok_and(|v| v == "1");
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let db = common::mongo::connect(MONGODB_URI, &format!("bench_sched_{id}"))
        .await
        .unwrap();
    common::mongo::ensure_indexes(&db).await.unwrap();
    let names = AmqpNames::new(format!("bench-sched-{id}"));
    let link = Link::spawn(LinkConfig::new(AMQP_URL, "schedules bench", names.clone()));
    let session = tokio::time::timeout(Duration::from_secs(10), link.session())
        .await
        .expect("RabbitMQ is up (scripts/stack.sh)");
    let t0 = Instant::now();
    let first = seed(&db, n, burst).await;
    println!(
        "seeded {n} schedules in {:?} ({})",
        t0.elapsed(),
        if burst {
            "every tick at the same instant"
        } else {
            "ticks spread over one minute"
        }
    );

    let lateness = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000, 3).unwrap(),
    ));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let seen = lateness.clone();
    let observer: schedules::Observer = Box::new(move |f: &Fired| {
        if let Fired::Ran { late_ms, .. } = f {
            seen.lock()
                .unwrap()
                .record((*late_ms).max(1) as u64)
                .unwrap();
            let _ = done_tx.send(());
        }
    });
    let firing = schedules::start(Arc::new(Ctx {
        db: db.clone(),
        link: link.clone(),
        prices: accounts::PriceBook::new(),
        limits: accounts::Limits {
            max_queued: i64::MAX,
            max_sync: i64::MAX,
        },
        min_schedule_ms: 1000,
        functions: Default::default(),
        observer: Some(observer),
    }));
    let mut fired = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while fired < n {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(())) => fired += 1,
            _ => break,
        }
    }
    drop(firing);
    let h = lateness.lock().unwrap().clone();
    println!(
        "fired {fired} of {n} ticks (first tick {} s after seeding began)",
        (first - schemas::now_ms() + t0.elapsed().as_millis() as i64) / 1000
    );
    println!(
        "lateness (tick → record stored, invocation confirmed, schedule moved on): p50 {} ms, p99 {} ms, max {} ms",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    let _ = session
        .conn
        .create_channel()
        .await
        .unwrap()
        .queue_delete(
            names.invocations_queue().as_str().into(),
            Default::default(),
        )
        .await;
    link.close().await;
    db.drop().await.unwrap();
}
