//! Test sandbox: each test gets its own MongoDB database and AMQP name prefix on the real local
//! services, starts components in-process on port 0, and cleans up after itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::config::Env;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use schemas::names::AmqpNames;
use schemas::{CodeKind, InvocationMsg, Mode, Resources, ResultMsg, Runtime, TaskMsg};

pub mod services;

pub const MONGODB_URI: &str = "mongodb://127.0.0.1:27017";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Installs a test log subscriber once (`RUST_LOG` picks the level; quiet by default).
pub fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// The `/metrics` text of a component serving HTTP at `addr`.
pub async fn metrics_text(addr: &std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("the component serves /metrics")
        .text()
        .await
        .expect("a /metrics body")
}

/// The value of an unlabelled metric in a component's `/metrics` (0 when absent).
pub async fn metric(addr: &std::net::SocketAddr, name: &str) -> f64 {
    metrics_text(addr)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A short random id.
pub fn rand_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// One test's slice of the shared services.
pub struct Sandbox {
    pub name: String,
    pub prefix: String,
    pub db_name: String,
    pub db: mongodb::Database,
    pub conn: Connection,
    pub ch: Channel,
    pub names: AmqpNames,
    workers: Vec<String>,
    mongodb_uri: String,
    amqp_url: String,
    _watchdog: Watchdog,
}

/// How long one test's sandbox may live before the whole test binary is ended (a hung test
/// must fail the suite, not hold CI until its time limit). `TEST_SANDBOX_DEADLINE_S` overrides.
const SANDBOX_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// Ends the test process when the sandbox outlives its deadline; dropping it (also while a
/// failed test unwinds) disarms it.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn arm(name: &str) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let deadline = std::env::var("TEST_SANDBOX_DEADLINE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(SANDBOX_DEADLINE);
        let (flag, name) = (done.clone(), name.to_owned());
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < deadline {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            if !flag.load(Ordering::SeqCst) {
                eprintln!(
                    "sandbox {name}: its test still runs after {deadline:?}; ending the test binary"
                );
                std::process::exit(124);
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Sandbox {
    /// A sandbox on the shared services ([`MONGODB_URI`], [`AMQP_URL`]).
    pub async fn new(name: &str) -> Sandbox {
        Sandbox::on(name, MONGODB_URI, AMQP_URL).await
    }

    /// A sandbox on other instances of MongoDB and RabbitMQ (e.g. ones a test kills, see
    /// [`services`]); every component it starts is pointed at them.
    pub async fn on(name: &str, mongodb_uri: &str, amqp_url: &str) -> Sandbox {
        init_logs();
        let id = rand_id();
        let prefix = format!("t-{name}-{id}");
        let db_name = format!("t_{id}");
        let db = common::mongo::connect(mongodb_uri, &db_name)
            .await
            .expect("MongoDB is up (run scripts/stack.sh)");
        let conn = common::amqp::connect(amqp_url, &format!("test {name}"))
            .await
            .expect("RabbitMQ is up (run scripts/stack.sh)");
        let ch = common::amqp::confirm_channel(&conn).await.unwrap();
        let names = AmqpNames::new(prefix.clone());
        common::amqp::declare_topology(&ch, &names).await.unwrap();
        Sandbox {
            name: name.to_owned(),
            prefix,
            db_name,
            db,
            conn,
            ch,
            names,
            workers: Vec::new(),
            mongodb_uri: mongodb_uri.to_owned(),
            amqp_url: amqp_url.to_owned(),
            _watchdog: Watchdog::arm(name),
        }
    }

    /// The environment a component of this sandbox reads.
    pub fn env(&self, extra: &[(&str, &str)]) -> Env {
        let mut env: Env = HashMap::from([
            ("MONGODB_URI".to_owned(), self.mongodb_uri.clone()),
            ("MONGODB_DB".to_owned(), self.db_name.clone()),
            ("AMQP_URL".to_owned(), self.amqp_url.clone()),
            ("COLORFAAS_AMQP_PREFIX".to_owned(), self.prefix.clone()),
        ]);
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }

    /// Starts a worker in-process. `extra` overrides its environment (e.g. `WORKER_MEMORY_MB`).
    pub async fn start_worker(&mut self, extra: &[(&str, &str)]) -> Component {
        let id = extra
            .iter()
            .find(|(k, _)| *k == "WORKER_ID")
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_else(|| format!("w{}", rand_id()));
        let dir = std::env::temp_dir().join("colorfaas-tests").join(&id);
        let dir = dir.to_string_lossy().into_owned();
        let mut all: Vec<(&str, &str)> = vec![
            ("WORKER_ID", &id),
            ("WORKER_DIR", &dir),
            ("WORKER_HEARTBEAT", "200ms"),
            // Tests count containers: spares only where a test asks for them.
            ("WORKER_SPARES", "0"),
            ("WORKER_PREWARM", ""),
        ];
        all.extend_from_slice(extra);
        let cfg = worker::Config::from_env(&self.env(&all), &worker::Flags::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        self.workers.push(id.clone());
        let (stop, task) = spawn_component(move |shutdown| worker::run(cfg, listener, shutdown));
        let c = Component {
            id,
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        // Ready when its queue has a consumer.
        let queue = self.names.worker_queue(&c.id);
        eventually(
            Duration::from_secs(30),
            "the worker consumes its queue",
            || async { (self.queue_info(&queue).await?.consumer_count() > 0).then_some(()) },
        )
        .await;
        c
    }

    /// Stores a code package in the shared code store.
    pub async fn store_code(&self, bytes: &[u8]) -> String {
        common::codestore::put(&self.db, bytes).await.unwrap()
    }

    /// An invocation of a single-file function.
    pub async fn invocation(
        &self,
        runtime: Runtime,
        filename: &str,
        handler: &str,
        source: &str,
    ) -> InvocationMsg {
        let sha = self.store_code(source.as_bytes()).await;
        InvocationMsg {
            v: schemas::MESSAGE_VERSION,
            run_id: uuid::Uuid::now_v7().to_string(),
            user_id: "u1".into(),
            function_id: format!("f-{}", &sha[..12]),
            function: "fn".into(),
            version: 1,
            runtime,
            handler: handler.into(),
            code_sha256: sha,
            code_kind: CodeKind::Single,
            filename: filename.into(),
            resources: Resources::new(500, 128, 64),
            timeout_ms: 5000,
            mode: Mode::Sync,
            args: serde_json::json!({}),
            reply_to: None,
            callback_url: None,
            created_at_ms: schemas::now_ms(),
            hold: None,
            retry: Default::default(),
            config: Default::default(),
        }
    }

    /// A private reply queue for results.
    pub async fn reply_queue(&self) -> Replies {
        let ch = self.conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let name = q.name().to_string();
        let consumer = ch
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Replies {
            name,
            consumer,
            _ch: ch,
        }
    }

    /// Publishes a task to a worker's queue (as the dispatcher would) with epoch `epoch`.
    pub async fn send_task(&self, worker_id: &str, inv: &InvocationMsg, epoch: u64) {
        let task = TaskMsg {
            v: schemas::MESSAGE_VERSION,
            epoch,
            worker_id: worker_id.to_owned(),
            dispatched_at_ms: schemas::now_ms(),
            invocation: inv.clone(),
        };
        self.publish_raw(
            &self.names.worker_queue(worker_id),
            &serde_json::to_vec(&task).unwrap(),
            "task",
        )
        .await;
    }

    /// Publishes raw bytes to a queue through the default exchange.
    pub async fn publish_raw(&self, queue: &str, body: &[u8], kind: &str) {
        common::amqp::publish_confirmed(&self.ch, "", queue, body, common::amqp::props(kind, true))
            .await
            .unwrap();
    }

    /// Runs `inv` on `worker_id` and waits for its result.
    pub async fn run_task(&self, worker_id: &str, mut inv: InvocationMsg) -> ResultMsg {
        let mut replies = self.reply_queue().await;
        inv.reply_to = Some(replies.name.clone());
        let timeout = Duration::from_millis(inv.timeout_ms + 30_000);
        self.send_task(worker_id, &inv, 1).await;
        replies.next(timeout).await.expect("a result")
    }

    /// Containers labelled with `worker_id`.
    pub async fn containers_of(&self, worker_id: &str) -> Vec<bollard::models::ContainerSummary> {
        let docker = bollard::Docker::connect_with_defaults().unwrap();
        docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_owned(),
                    vec![format!("{}={worker_id}", worker::docker::LABEL_WORKER)],
                )])),
                ..Default::default()
            }))
            .await
            .unwrap()
    }

    /// A queue's counts, or `None` when it does not exist. (A passive declare of a missing
    /// queue closes its channel, so each look uses a channel of its own.)
    pub async fn queue_info(&self, queue: &str) -> Option<lapin::Queue> {
        let ch = self.conn.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok();
        let _ = ch.close(200, "done".into()).await;
        q
    }

    /// Drops every ready message of a queue.
    pub async fn purge(&self, queue: &str) {
        let ch = self.conn.create_channel().await.unwrap();
        ch.queue_purge(queue.into(), Default::default())
            .await
            .unwrap();
        let _ = ch.close(200, "done".into()).await;
    }

    /// Counts messages in a queue (0 when it does not exist).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.queue_info(queue)
            .await
            .map_or(0, |q| q.message_count())
    }

    /// Deletes the sandbox's queues and database.
    pub async fn cleanup(self) {
        let mut queues = vec![
            self.names.invocations_queue(),
            self.names.dispatcher_results_queue(),
            self.names.callbacks_queue(),
            self.names.dead_letter_queue(),
        ];
        queues.extend(self.workers.iter().map(|w| self.names.worker_queue(w)));
        queues.extend(
            schemas::rules::RETRY_DELAYS_MS
                .iter()
                .map(|d| self.names.retry_queue(*d)),
        );
        for q in queues {
            let _ = self
                .ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for ex in [
            self.names.results_exchange(),
            self.names.heartbeats_exchange(),
            self.names.control_exchange(),
            self.names.dead_letter_exchange(),
        ] {
            let _ = self
                .ch
                .exchange_delete(ex.as_str().into(), Default::default())
                .await;
        }
        let _ = self.db.drop().await;
        let _ = self.conn.close(200, "test done".into()).await;
    }
}

/// Results arriving on a private queue.
pub struct Replies {
    pub name: String,
    consumer: lapin::Consumer,
    _ch: Channel,
}

impl Replies {
    pub async fn next(&mut self, timeout: Duration) -> Option<ResultMsg> {
        let d = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        d.ack(BasicAckOptions::default()).await.ok()?;
        Some(serde_json::from_slice(&d.data).expect("a result message"))
    }
}

/// How long a component may take to drain when stopped: longer than a worker's longest
/// drain (30 s for runs, 30 s for spares being made, 30 s for removing containers, 20 s for
/// its records, 5 s for each background task),
/// short enough that a hung stop fails its test instead of the suite's time limit.
pub const STOP_DEADLINE: Duration = Duration::from_secs(180);

/// A component running in-process.
pub struct Component {
    pub id: String,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Component {
    /// Sends the shutdown signal and waits for the component to drain; an error when it
    /// does not stop within [`STOP_DEADLINE`] (a drain must be bounded).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let task = self.task.take().expect("running");
        match tokio::time::timeout(STOP_DEADLINE, task).await {
            Ok(joined) => joined.context("component panicked")?,
            Err(_) => anyhow::bail!("{} did not stop within {STOP_DEADLINE:?}", self.id),
        }
    }

    /// Kills the component without draining (like SIGKILL for an in-process component).
    pub fn abort(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Spawns `f(shutdown)`; returns the shutdown trigger and the task.
pub fn spawn_component<F, Fut>(
    f: F,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        let _ = rx.await;
    });
    (tx, tokio::spawn(f(shutdown)))
}

/// A run of `user_id`; final ones finished a minute ago, costing `billed` micros.
pub fn run_doc(user_id: &str, status: schemas::RunStatus, billed: i64) -> schemas::RunDoc {
    let now = schemas::now_ms();
    let fin = status.is_final();
    let n = uuid::Uuid::new_v4().as_u128();
    schemas::RunDoc {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        function_id: "f1".into(),
        function: format!("fn-{}", n % 3),
        version: 1,
        status,
        args_json: "{}".into(),
        result_json: None,
        error: None,
        logs: String::new(),
        cold_start: false,
        duration_ms: if fin { 1 + (n % 5000) as u64 } else { 0 },
        resources: Resources::new(500, 128, 64),
        billed_micros: if fin { billed } else { 0 },
        bill_state: schemas::BillState::Unbilled,
        bill_id: None,
        worker_id: Some("w1".into()),
        epoch: 1,
        created_at_ms: now - 120_000,
        started_at_ms: fin.then_some(now - 90_000),
        finished_at_ms: fin.then_some(now - 60_000 + (n % 1000) as i64),
        hold: None,
        attempts: Vec::new(),
        next_attempt_at_ms: None,
        dead_letter: None,
        schedule_id: None,
    }
}

/// Polls `check` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if t0.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway's part of the sandbox: starting it, and seeding users, functions and API keys
/// straight into the sandbox's database (as the portal would).
impl Sandbox {
    /// Starts a gateway in-process on port 0. `extra` overrides its environment (e.g.
    /// `GATEWAY_RATE_PER_SEC`, or `AMQP_URL` to point it at a broker that is down). Ready when
    /// it answers HTTP and, unless `AMQP_URL` is overridden, when `/healthz` says 200 (it has
    /// connected to RabbitMQ and its reply queue is consumed).
    pub async fn start_gateway(&mut self, extra: &[(&str, &str)]) -> Component {
        let id = extra
            .iter()
            .find(|(k, _)| *k == "GATEWAY_ID")
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_else(|| format!("g{}", rand_id()));
        let mut all: Vec<(&str, &str)> = vec![("GATEWAY_ID", &id), ("GATEWAY_ADDR", "127.0.0.1:0")];
        all.extend_from_slice(extra);
        let cfg = gateway::Config::from_env(&self.env(&all), &gateway::Flags::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, task) = spawn_component(move |shutdown| gateway::run(cfg, listener, shutdown));
        let c = Component {
            id,
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        let own_broker = !extra.iter().any(|(k, _)| *k == "AMQP_URL");
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/healthz");
        eventually(Duration::from_secs(30), "the gateway is ready", || async {
            let r = client.get(&url).send().await.ok()?;
            (!own_broker || r.status() == 200).then_some(())
        })
        .await;
        c
    }

    /// Starts a portal in-process on port 0 against this sandbox's database and queues, with
    /// the test payment provider and a sign-up limit no test reaches by accident. `extra`
    /// overrides its environment (e.g. `FREE_CREDIT_MICROS`, `PORTAL_LOGIN_PER_ACCOUNT`,
    /// `PORTAL_PAYMENT_PROVIDER`). Ready when it answers HTTP and, unless `AMQP_URL` is
    /// overridden, when `/healthz` says 200 (MongoDB reachable, RabbitMQ connected).
    pub async fn start_portal(&mut self, extra: &[(&str, &str)]) -> Component {
        let id = extra
            .iter()
            .find(|(k, _)| *k == "PORTAL_ID")
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_else(|| format!("p{}", rand_id()));
        let mut all: Vec<(&str, &str)> = vec![
            ("PORTAL_ID", &id),
            ("PORTAL_ADDR", "127.0.0.1:0"),
            // Tests top up with the built-in test provider, named explicitly as it must be.
            ("PORTAL_PAYMENT_PROVIDER", "test"),
            // Tests register many users from 127.0.0.1; the sign-up limit test lowers this.
            ("PORTAL_SIGNUP_PER_HOUR", "100000"),
        ];
        all.extend_from_slice(extra);
        let cfg = portal::Config::from_env(&self.env(&all), &portal::Flags::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, task) = spawn_component(move |shutdown| portal::run(cfg, listener, shutdown));
        let c = Component {
            id,
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        let own_broker = !extra.iter().any(|(k, _)| *k == "AMQP_URL");
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/healthz");
        eventually(Duration::from_secs(30), "the portal is ready", || async {
            let r = client.get(&url).send().await.ok()?;
            (!own_broker || r.status() == 200).then_some(())
        })
        .await;
        c
    }

    /// Settles `micros` of finished runs on a user's counters the way the run writer does
    /// (`accounts::Settlement`), standing for runs finished (and billed) before a test seeds
    /// bills for them directly.
    pub async fn add_spent(&self, user_id: &str, micros: i64) {
        let mut s = accounts::Settlement::default();
        s.add(micros, None);
        let (filter, update) = s.statement(user_id);
        self.db
            .collection::<bson::Document>(schemas::names::collections::USERS)
            .update_one(filter, update)
            .await
            .expect("raising spent_micros");
    }

    /// Stores runs the way workers do (through the batched run writer, which also settles the
    /// users' counters): final runs as finishes, others as pending inserts.
    pub async fn store_runs(&self, runs: &[schemas::RunDoc]) {
        let (writer, task) = common::runstore::RunWriter::spawn(self.db.clone());
        for r in runs {
            let w = if r.status.is_final() {
                common::runstore::RunWrite::Finished(Box::new(r.clone()))
            } else {
                common::runstore::RunWrite::Pending(Box::new(r.clone()))
            };
            writer.write(w).await;
        }
        writer.flush().await;
        drop(writer);
        task.await.expect("the run writer ends");
    }

    /// Inserts a user with `balance_micros`; returns the user id.
    pub async fn seed_user(&self, balance_micros: i64) -> String {
        let id = format!("u{}", rand_id());
        let doc = schemas::UserDoc {
            id: id.clone(),
            email: format!("{id}@example.com"),
            name: format!("user {id}"),
            password_hash: "not-a-password".into(),
            balance_micros,
            spent_micros: 0,
            paid_micros: 0,
            created_at_ms: schemas::now_ms(),
        };
        self.db
            .collection::<schemas::UserDoc>(schemas::names::collections::USERS)
            .insert_one(&doc)
            .await
            .unwrap();
        id
    }

    /// Inserts an API key of `user_id` (stored hashed); returns `(key_id, secret)`.
    pub async fn seed_api_key(&self, user_id: &str) -> (String, String) {
        let secret = format!("cf_{}", uuid::Uuid::new_v4().simple());
        let doc = schemas::ApiKeyDoc {
            id: format!("k{}", rand_id()),
            user_id: user_id.to_owned(),
            label: "test".into(),
            key_hash: gateway::store::hash_key(&secret),
            created_at_ms: schemas::now_ms(),
        };
        self.db
            .collection::<schemas::ApiKeyDoc>(schemas::names::collections::API_KEYS)
            .insert_one(&doc)
            .await
            .unwrap();
        (doc.id, secret)
    }

    /// Deletes an API key (as `DELETE /api/v1/keys/{id}` does).
    pub async fn revoke_api_key(&self, key_id: &str) {
        self.db
            .collection::<schemas::ApiKeyDoc>(schemas::names::collections::API_KEYS)
            .delete_one(bson::doc! {"_id": key_id})
            .await
            .unwrap();
    }

    /// A single-file function of `user_id` with its code stored, not yet inserted: sync, no
    /// args schema, 500 millicores / 128 MB / 64 MB, 5 s timeout, no retries (tests of retries
    /// set `retries`; the contract's default is 2). Adjust, then
    /// [`Sandbox::insert_function`].
    pub async fn function_doc(
        &self,
        user_id: &str,
        name: &str,
        runtime: Runtime,
        filename: &str,
        handler: &str,
        source: &str,
    ) -> schemas::FunctionDoc {
        // A test must not seed a function no user could create (the gateway answers 404 for
        // names outside the contract's rule without looking them up).
        assert!(
            schemas::rules::valid_function_name(name),
            "{name:?} is not a valid function name"
        );
        let sha = self.store_code(source.as_bytes()).await;
        let now = schemas::now_ms();
        schemas::FunctionDoc {
            id: format!("f{}", rand_id()),
            user_id: user_id.to_owned(),
            name: name.to_owned(),
            runtime,
            handler: handler.to_owned(),
            filename: filename.to_owned(),
            description: String::new(),
            args_schema: Vec::new(),
            mode: Mode::Sync,
            resources: Resources::new(500, 128, 64),
            timeout_ms: 5000,
            version: 1,
            code_sha256: sha,
            code_size: source.len() as u64,
            code_kind: CodeKind::Single,
            created_at_ms: now,
            updated_at_ms: now,
            retries: 0,
            max_event_age_s: schemas::rules::DEFAULT_MAX_EVENT_AGE_S,
            config: Default::default(),
        }
    }

    /// Inserts (or replaces) a function document.
    pub async fn insert_function(&self, f: &schemas::FunctionDoc) {
        self.db
            .collection::<schemas::FunctionDoc>(schemas::names::collections::FUNCTIONS)
            .replace_one(bson::doc! {"_id": &f.id}, f)
            .upsert(true)
            .await
            .unwrap();
    }

    /// [`Sandbox::function_doc`] inserted as is.
    pub async fn seed_function(
        &self,
        user_id: &str,
        name: &str,
        runtime: Runtime,
        filename: &str,
        handler: &str,
        source: &str,
    ) -> schemas::FunctionDoc {
        let f = self
            .function_doc(user_id, name, runtime, filename, handler, source)
            .await;
        self.insert_function(&f).await;
        f
    }
}

/// Dispatchers: in-process, or as real processes that a test can SIGKILL / SIGSTOP.
impl Sandbox {
    /// Starts a dispatcher in-process.
    pub async fn start_dispatcher(&mut self, extra: &[(&str, &str)]) -> Component {
        let id = format!("d{}", rand_id());
        let mut all: Vec<(&str, &str)> = vec![
            ("DISPATCHER_ID", &id),
            ("DISPATCHER_NO_WORKER_GRACE", "30s"),
        ];
        all.extend_from_slice(extra);
        let cfg =
            dispatcher::Config::from_env(&self.env(&all), &dispatcher::Flags::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, task) =
            spawn_component(move |shutdown| dispatcher::run(cfg, listener, shutdown));
        Component {
            id,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts a workspace binary (built by `cargo build`) as a child process of this sandbox.
    pub fn spawn_binary(&self, name: &str, extra: &[(&str, &str)]) -> std::process::Child {
        self.binary_command(name, extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawning a binary")
    }

    /// Starts a dispatcher process with `id` on a free loopback port and waits (up to 30 s)
    /// until it leads when `lead`, or until it serves its metrics otherwise.
    pub async fn spawn_dispatcher(
        &self,
        id: &str,
        extra: &[(&str, &str)],
        lead: bool,
    ) -> std::process::Child {
        let port = services::free_port();
        let addr = format!("127.0.0.1:{port}");
        let env = [
            &[("DISPATCHER_ID", id), ("DISPATCHER_ADDR", addr.as_str())][..],
            extra,
        ]
        .concat();
        let child = self.spawn_binary("dispatcher", &env);
        let sock: std::net::SocketAddr = addr.parse().expect("a loopback address");
        let what = if lead {
            "to lead"
        } else {
            "to serve its metrics"
        };
        eventually(
            Duration::from_secs(30),
            &format!("dispatcher {id} {what}"),
            || async {
                let text = reqwest::get(format!("http://{sock}/metrics"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                let leading = text.lines().find_map(|l| {
                    l.strip_prefix("colorfaas_dispatcher_is_leader ")?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })?;
                (!lead || leading == 1.0).then_some(())
            },
        )
        .await;
        child
    }

    /// The command that runs a workspace binary (built by `cargo build`) with this sandbox's
    /// environment plus `extra` and the test's `RUST_LOG`; the caller adds redirections.
    pub fn binary_command(&self, name: &str, extra: &[(&str, &str)]) -> std::process::Command {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let bin = target.join("debug").join(name);
        assert!(
            bin.exists(),
            "{} is not built; run `cargo build --workspace` first",
            bin.display()
        );
        let mut cmd = std::process::Command::new(bin);
        cmd.env_clear().envs(self.env(extra)).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        cmd
    }

    /// Publishes an invocation as the gateway would.
    pub async fn publish_invocation(&self, inv: &InvocationMsg) {
        self.publish_raw(
            &self.names.invocations_queue(),
            &serde_json::to_vec(inv).unwrap(),
            "invocation",
        )
        .await;
    }
}

/// `http://<addr><path>` of an in-process component (e.g. the portal's `/api/v1/...`).
pub fn portal_url(c: &Component, path: &str) -> String {
    format!("http://{}{path}", c.addr)
}

/// Sends a signal to a child process.
pub fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} failed");
}

/// The whole pipeline (gateway → RabbitMQ → dispatcher → worker → container) and its tenants.
impl Sandbox {
    /// Starts a worker (environment `worker_env`), a dispatcher and a gateway (environment
    /// `gateway_env`) of this sandbox; returns `(worker, dispatcher, gateway)` once the worker
    /// consumes its queue, a dispatcher leads (consumes the invocations queue) and the gateway
    /// is healthy.
    pub async fn start_pipeline(
        &mut self,
        worker_env: &[(&str, &str)],
        gateway_env: &[(&str, &str)],
    ) -> (Component, Component, Component) {
        let w = self.start_worker(worker_env).await;
        let d = self.start_dispatcher(&[]).await;
        let gw = self.start_gateway(gateway_env).await;
        let queue = self.names.invocations_queue();
        eventually(
            Duration::from_secs(30),
            "a dispatcher leads and consumes the invocations",
            || async { (self.queue_info(&queue).await?.consumer_count() > 0).then_some(()) },
        )
        .await;
        (w, d, gw)
    }

    /// Seeds a user with `balance_micros` and an API key of theirs; returns
    /// `(user_id, api_key_secret)`.
    pub async fn seed_tenant(&self, balance_micros: i64) -> (String, String) {
        let user_id = self.seed_user(balance_micros).await;
        let (_, secret) = self.seed_api_key(&user_id).await;
        (user_id, secret)
    }
}
