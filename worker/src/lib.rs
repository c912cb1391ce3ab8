//! The worker: consumes its own task queue, runs each task in a warm Docker container (or a new
//! one), publishes the result, writes run records in batches, and beats its heart so the
//! dispatcher knows its capacity and warm functions.

pub mod agent;
pub mod code;
pub mod config;
mod consume;
pub mod docker;
pub mod events;
mod exec;
pub mod fnenv;
pub mod freezer;
mod heartbeat;
pub mod pool;
mod reaper;
mod retry;

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accounts::Prices;
use anyhow::Context as _;
use common::amqp::{Link, LinkConfig};
use common::metrics::{Registry, Value};
use common::runstore::RunWriter;
use schemas::names::AmqpNames;
use schemas::{RunStatus, RunningTask};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

pub use config::{Config, Flags};

use crate::code::CodeCache;
use crate::docker::{Container, Containers};
use crate::exec::{execute, want_spare, SPARE_PREFIX};
use crate::pool::WarmPool;

/// How many recent run ids the worker remembers to run a redelivered task only once.
const SEEN_RUNS: usize = 100_000;

/// A run still going after this long is recorded as `running`; one that ends sooner is
/// written once, finished (saves a database write per short invocation).
pub(crate) const RUNNING_RECORD_AFTER: Duration = Duration::from_millis(100);

/// What the worker knows of a run it was given.
pub(crate) enum RunState {
    /// Running here; every delivery of it is acknowledged when it ends.
    Running { ackers: Vec<lapin::Acker> },
    /// Finished here: its record is stored and its result published.
    Done,
}

struct Metrics {
    registry: Registry,
    cold_starts: Value,
    spare_starts: Value,
    warm_containers: Value,
    spare_containers: Value,
    dead_lettered: Value,
    fenced: Value,
    duplicates: Value,
    retried: Value,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::default();
        Metrics {
            cold_starts: registry.counter(
                "colorfaas_worker_cold_starts_total",
                "containers started for a run",
                &[],
            ),
            spare_starts: registry.counter(
                "colorfaas_worker_spare_cold_starts_total",
                "cold starts served by a spare container (part of cold_starts)",
                &[],
            ),
            warm_containers: registry.gauge(
                "colorfaas_worker_idle_containers",
                "idle warm containers",
                &[],
            ),
            spare_containers: registry.gauge(
                "colorfaas_worker_spare_containers",
                "spare containers ready for a cold start",
                &[],
            ),
            dead_lettered: registry.counter(
                "colorfaas_worker_dead_lettered_total",
                "unreadable task messages sent to the dead-letter queue",
                &[],
            ),
            fenced: registry.counter(
                "colorfaas_worker_fenced_tasks_total",
                "tasks refused for a stale leader epoch",
                &[],
            ),
            duplicates: registry.counter(
                "colorfaas_worker_duplicate_tasks_total",
                "redelivered tasks that were not run again",
                &[],
            ),
            retried: registry.counter(
                "colorfaas_worker_retries_total",
                "async attempts sent to a delay queue to run again (retries and platform re-runs)",
                &[],
            ),
            registry,
        }
    }

    fn run_finished(&self, status: RunStatus) {
        self.registry
            .counter(
                "colorfaas_worker_runs_total",
                "finished runs by status",
                &[("status", status.as_str())],
            )
            .inc();
    }
}

pub(crate) struct Inner {
    cfg: Config,
    names: AmqpNames,
    containers: Containers,
    code: CodeCache,
    db: mongodb::Database,
    pool: Mutex<WarmPool<Container>>,
    pool_changed: Notify,
    /// Spare containers being started, per spare key.
    making: Mutex<HashMap<String, usize>>,
    writer: RunWriter,
    prices: Mutex<Prices>,
    link: Arc<Link>,
    running: Mutex<HashMap<String, RunningTask>>,
    /// Recent runs, so a redelivered task is run once.
    runs: Mutex<lru::LruCache<String, RunState>>,
    max_epoch: AtomicU64,
    accepting: AtomicBool,
    /// Set when the drain timeout passes: results still unpublished are given up.
    give_up: watch::Sender<bool>,
    metrics: Metrics,
}

/// Runs the worker until `shutdown` resolves, then drains: stops taking tasks, finishes the
/// running ones, removes its containers and flushes its run records. RabbitMQ may come and go
/// meanwhile (see `consume.rs`); the worker exits with an error only when it cannot recover.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let worker_id = cfg.worker_id.clone();
    tracing::info!(worker_id, backends = %cfg.backends, capacity = ?cfg.capacity, dir = %cfg.work_dir.display(), threads = cfg.threads, secrets_key = %common::secrets::describe(cfg.secrets_key.as_ref()), "worker starting");

    let docker = bollard::Docker::connect_with_defaults().context("connecting to Docker")?;
    docker
        .ping()
        .await
        .context("the Docker engine is not reachable")?;
    let code_root = cfg.work_dir.join("code");
    for d in ["slots", "code"].map(|d| cfg.work_dir.join(d)) {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let containers = Containers::new(
        docker,
        &worker_id,
        &cfg.work_dir,
        cfg.pids_limit,
        cfg.allow_network,
    );
    containers.check_images().await?;
    let reaped = containers.reap_all().await?;
    if reaped > 0 {
        tracing::info!(
            worker_id,
            reaped,
            "removed containers left by a previous run"
        );
    }

    let db = common::mongo::connect(&cfg.backends.mongodb_uri, &cfg.backends.mongodb_db).await?;
    common::mongo::ensure_indexes(&db).await?;
    let prices = Prices::load_or_seed(&db).await?;
    let (writer, writer_task) = RunWriter::spawn_with_linger(db.clone(), cfg.record_linger);

    let names = cfg.backends.names();
    let link = Link::spawn(LinkConfig::new(
        &cfg.backends.amqp_url,
        &format!("worker {worker_id}"),
        names.clone(),
    ));

    let inner = Arc::new(Inner {
        pool: Mutex::new(WarmPool::new(cfg.capacity.memory_mb)),
        pool_changed: Notify::new(),
        making: Mutex::new(HashMap::new()),
        code: CodeCache::new(code_root, db.clone()),
        db,
        containers,
        writer: writer.clone(),
        prices: Mutex::new(prices),
        link,
        running: Mutex::new(HashMap::new()),
        runs: Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(SEEN_RUNS).expect("non-zero"),
        )),
        max_epoch: AtomicU64::new(0),
        accepting: AtomicBool::new(true),
        give_up: watch::channel(false).0,
        metrics: Metrics::new(),
        names,
        cfg,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let http = tokio::spawn(serve_http(inner.clone(), listener, stop_rx.clone()));
    let beats = tokio::spawn(heartbeat::heartbeat_loop(inner.clone(), stop_rx.clone()));
    let reaper = tokio::spawn(reaper::reaper_loop(inner.clone(), stop_rx.clone()));
    let watcher = tokio::spawn(exec::watch_containers(inner.clone(), stop_rx.clone()));
    tracing::info!(worker_id, "worker ready");
    for &rt in &inner.cfg.prewarm {
        want_spare(&inner, rt, schemas::Resources::DEFAULT);
    }

    let (mut tasks, outcome) = consume::consume_loop(inner.clone(), stop_rx.clone()).await;

    // Drain: take nothing new, let running tasks finish (their results wait for RabbitMQ if it
    // is away), give back what was not started.
    inner.accepting.store(false, Ordering::SeqCst);
    let drained = tokio::time::timeout(inner.cfg.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            worker_id,
            left = tasks.len(),
            "drain timeout; abandoning running tasks"
        );
        inner.give_up.send_replace(true);
        tasks.abort_all();
    }
    // Spares still starting remove themselves once they see the worker is not accepting.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let notified = inner.pool_changed.notified();
            if inner
                .making
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                break;
            }
            notified.await;
        }
    })
    .await;
    // Every later step is bounded too: a Docker or broker call that hangs must not keep a
    // stopping worker alive (containers left behind carry the worker's label and are removed
    // by the next start's reap).
    let idle = inner.pool.lock().unwrap_or_else(|e| e.into_inner()).drain();
    let remove = async {
        for c in idle {
            inner.containers.dispose(c).await;
        }
        if let Err(e) = inner.containers.reap_all().await {
            tracing::warn!(worker_id, error = %format!("{e:#}"), "removing containers at shutdown failed");
        }
    };
    if tokio::time::timeout(STOP_STEP * 6, remove).await.is_err() {
        tracing::warn!(
            worker_id,
            "removing containers at shutdown took too long; leaving the rest"
        );
    }
    let _ = tokio::time::timeout(STOP_STEP, heartbeat::publish_heartbeat(&inner, u64::MAX)).await;
    writer.drain(common::runstore::SHUTDOWN_DRAIN).await;
    for (what, task) in [
        ("heartbeats", beats),
        ("reaper", reaper),
        ("watcher", watcher),
        ("http", http),
    ] {
        join_within(what, task).await;
    }
    if tokio::time::timeout(STOP_STEP, inner.link.close())
        .await
        .is_err()
    {
        tracing::warn!(worker_id, "closing the broker connection took too long");
    }
    drop(writer);
    drop(inner);
    join_within("run writer", writer_task).await;
    tracing::info!(worker_id, "worker stopped");
    outcome
}

/// How long one step of a worker's stop may take (container removal: six of them).
const STOP_STEP: Duration = Duration::from_secs(5);

/// Waits up to [`STOP_STEP`] for a background task to end at shutdown, then aborts it.
async fn join_within(what: &str, mut task: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(STOP_STEP, &mut task).await.is_err() {
        tracing::warn!(task = what, "a task did not stop in time; aborting it");
        task.abort();
    }
}

/// Sets the idle and spare container gauges; returns the warm function keys.
pub(crate) fn pool_gauges(inner: &Inner, p: &WarmPool<Container>) -> Vec<String> {
    let (spare_keys, warm): (Vec<String>, Vec<String>) = p
        .warm_keys()
        .into_iter()
        .partition(|k| k.starts_with(SPARE_PREFIX));
    let spares: usize = spare_keys.iter().map(|k| p.count(k)).sum();
    inner
        .metrics
        .warm_containers
        .set((p.idle_count() - spares) as i64);
    inner.metrics.spare_containers.set(spares as i64);
    warm
}

/// Serves `/healthz` (Docker, MongoDB and RabbitMQ reachable; names what is down) and
/// `/metrics`.
async fn serve_http(inner: Arc<Inner>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let registry = inner.metrics.registry.clone();
    let health = move || -> common::ops::HealthFuture {
        let inner = inner.clone();
        Box::pin(async move {
            let docker = inner.containers.docker().ping().await.is_ok();
            let mongo = common::mongo::ping(&inner.db).await.is_ok() && !inner.writer.is_failing();
            let amqp = inner.link.state();
            (
                docker && mongo && amqp.connected,
                serde_json::json!({
                    "docker": docker,
                    "mongodb": mongo,
                    "rabbitmq": amqp.connected,
                    "rabbitmq_error": amqp.last_error,
                    "record_backlog": inner.writer.backlog(),
                    "accepting": inner.accepting.load(Ordering::SeqCst),
                }),
            )
        })
    };
    common::ops::serve(listener, registry, health, stop).await;
}
