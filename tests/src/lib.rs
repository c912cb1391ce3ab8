//! Test sandbox: each test gets its own MongoDB database and AMQP name prefix on the real local
//! services, starts components in-process on port 0, and cleans up after itself.

use std::collections::HashMap;
use std::future::Future;
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
}

impl Sandbox {
    pub async fn new(name: &str) -> Sandbox {
        init_logs();
        let id = rand_id();
        let prefix = format!("t-{name}-{id}");
        let db_name = format!("t_{id}");
        let db = common::mongo::connect(MONGODB_URI, &db_name)
            .await
            .expect("MongoDB is up (run scripts/stack.sh)");
        let conn = common::amqp::connect(AMQP_URL, &format!("test {name}"))
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
        }
    }

    /// The environment a component of this sandbox reads.
    pub fn env(&self, extra: &[(&str, &str)]) -> Env {
        let mut env: Env = HashMap::from([
            ("MONGODB_URI".to_owned(), MONGODB_URI.to_owned()),
            ("MONGODB_DB".to_owned(), self.db_name.clone()),
            ("AMQP_URL".to_owned(), AMQP_URL.to_owned()),
            ("COLORFAAS_AMQP_PREFIX".to_owned(), self.prefix.clone()),
        ]);
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }

    /// Starts a worker in-process. `extra` overrides its environment (e.g. `WORKER_MEMORY_MB`).
    pub async fn start_worker(&mut self, extra: &[(&str, &str)]) -> Component {
        let id = format!("w{}", rand_id());
        let dir = std::env::temp_dir().join("colorfaas-tests").join(&id);
        let dir = dir.to_string_lossy().into_owned();
        let mut all: Vec<(&str, &str)> = vec![
            ("WORKER_ID", &id),
            ("WORKER_DIR", &dir),
            ("WORKER_HEARTBEAT", "200ms"),
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
            || async {
                let q = self
                    .ch
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .ok()?;
                (q.consumer_count() > 0).then_some(())
            },
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

    /// Counts messages in a queue.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(0)
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

/// A component running in-process.
pub struct Component {
    pub id: String,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Component {
    /// Sends the shutdown signal and waits for the component to drain.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .context("component panicked")?
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
