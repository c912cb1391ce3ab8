//! The worker: consumes its own task queue, runs each task in a warm Docker container (or a new
//! one), publishes the result, writes run records in batches, and beats its heart so the
//! dispatcher knows its capacity and warm functions.

pub mod agent;
pub mod code;
pub mod config;
pub mod docker;
pub mod pool;

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accounts::Prices;
use anyhow::Context as _;
use common::amqp;
use common::metrics::{Registry, Value};
use common::runstore::{finished_doc, RunWrite, RunWriter};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use schemas::names::{self, AmqpNames};
use schemas::run_error_codes as codes;
use schemas::{
    EpochMsg, HeartbeatMsg, InvocationMsg, ResultMsg, RunError, RunStatus, RunningTask, TaskMsg,
    MESSAGE_VERSION,
};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

pub use config::{Config, Flags};

use crate::agent::{AgentContext, CallError};
use crate::code::CodeCache;
use crate::docker::{Container, Containers, Load, Spec};
use crate::pool::{Grant, WarmPool};

/// How many recent run ids the worker remembers to run a redelivered task only once.
const SEEN_RUNS: usize = 100_000;

/// A run still going after this long is recorded as `running`; one that ends sooner is
/// written once, finished (saves a database write per short invocation).
const RUNNING_RECORD_AFTER: Duration = Duration::from_millis(100);

/// Pool keys of spare containers start with this (function keys never do: they are ids).
const SPARE_PREFIX: &str = "spare/";

/// The pool key of spare containers of a runtime and size.
fn spare_key(runtime: schemas::Runtime, r: schemas::Resources) -> String {
    format!(
        "{SPARE_PREFIX}{}/{}m/{}MB/{}MB",
        runtime.as_str(),
        r.cpu_millicores,
        r.memory_mb,
        r.disk_mb
    )
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

struct Inner {
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
    publisher: Channel,
    running: Mutex<HashMap<String, RunningTask>>,
    seen: Mutex<lru::LruCache<String, ()>>,
    max_epoch: AtomicU64,
    accepting: AtomicBool,
    amqp_conn: lapin::Connection,
    metrics: Metrics,
}

/// Runs the worker until `shutdown` resolves, then drains: stops taking tasks, finishes the
/// running ones, removes its containers and flushes its run records.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let worker_id = cfg.worker_id.clone();
    tracing::info!(worker_id, backends = %cfg.backends, capacity = ?cfg.capacity, dir = %cfg.work_dir.display(), threads = cfg.threads, "worker starting");

    let docker = bollard::Docker::connect_with_defaults().context("connecting to Docker")?;
    docker
        .ping()
        .await
        .context("the Docker engine is not reachable")?;
    let code_root = cfg.work_dir.join("code");
    for d in ["sock", "slots", "code"].map(|d| cfg.work_dir.join(d)) {
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
    let conn = amqp::connect(&cfg.backends.amqp_url, &format!("worker {worker_id}")).await?;
    let consume_ch = conn
        .create_channel()
        .await
        .context("opening the task channel")?;
    amqp::declare_topology(&consume_ch, &names).await?;
    let queue = amqp::declare_worker_queue(&consume_ch, &names, &worker_id).await?;
    consume_ch
        .basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let publisher = amqp::confirm_channel(&conn).await?;

    let inner = Arc::new(Inner {
        pool: Mutex::new(WarmPool::new(cfg.capacity.memory_mb)),
        pool_changed: Notify::new(),
        making: Mutex::new(HashMap::new()),
        code: CodeCache::new(code_root, db.clone()),
        db,
        containers,
        writer: writer.clone(),
        prices: Mutex::new(prices),
        publisher,
        running: Mutex::new(HashMap::new()),
        seen: Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(SEEN_RUNS).expect("non-zero"),
        )),
        max_epoch: AtomicU64::new(0),
        accepting: AtomicBool::new(true),
        amqp_conn: conn,
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
    let beats = tokio::spawn(heartbeat_loop(inner.clone(), stop_rx.clone()));
    let reaper = tokio::spawn(reaper_loop(inner.clone(), stop_rx.clone()));

    let mut consumer = consume_ch
        .basic_consume(
            queue.as_str().into(),
            worker_id.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("consuming the task queue")?;
    tracing::info!(worker_id, queue, "worker ready");
    for &rt in &inner.cfg.prewarm {
        want_spare(&inner, rt, schemas::Resources::DEFAULT);
    }

    let mut tasks = tokio::task::JoinSet::new();
    let mut stop = stop_rx.clone();
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            d = consumer.next() => match d {
                Some(Ok(delivery)) => { tasks.spawn(handle(inner.clone(), delivery)); }
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("consuming tasks")),
                None => break Err(anyhow::anyhow!("the task consumer was cancelled by the broker")),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = stop.wait_for(|s| *s) => break Ok(()),
        }
    };

    // Drain: take nothing new, let running tasks finish, give back what was not started.
    inner.accepting.store(false, Ordering::SeqCst);
    let _ = consume_ch
        .basic_cancel(worker_id.as_str().into(), BasicCancelOptions::default())
        .await;
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
        tasks.abort_all();
    }
    let _ = consume_ch.close(200, "worker stopping".into()).await;
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
    let idle = inner.pool.lock().unwrap_or_else(|e| e.into_inner()).drain();
    for c in idle {
        inner.containers.remove(&c.id, &c.name).await;
    }
    if let Err(e) = inner.containers.reap_all().await {
        tracing::warn!(worker_id, error = %format!("{e:#}"), "removing containers at shutdown failed");
    }
    publish_heartbeat(&inner, u64::MAX).await;
    writer.flush().await;
    let _ = beats.await;
    let _ = reaper.await;
    let _ = http.await;
    let _ = inner.amqp_conn.close(200, "worker stopped".into()).await;
    drop(writer);
    drop(inner);
    let _ = writer_task.await;
    tracing::info!(worker_id, "worker stopped");
    outcome
}

/// One delivery from the task queue.
async fn handle(inner: Arc<Inner>, d: Delivery) {
    let worker_id = &inner.cfg.worker_id;
    if amqp::kind_of(&d.properties).as_deref() == Some("epoch") {
        match serde_json::from_slice::<EpochMsg>(&d.data) {
            Ok(m) => {
                let before = inner.max_epoch.fetch_max(m.epoch, Ordering::SeqCst);
                if m.epoch > before {
                    tracing::info!(
                        worker_id,
                        epoch = m.epoch,
                        leader = m.leader_id,
                        "new leader epoch"
                    );
                }
                ack(&d).await;
            }
            Err(e) => dead_letter(&inner, &d, &format!("malformed epoch message: {e}")).await,
        }
        return;
    }
    let task: TaskMsg = match serde_json::from_slice(&d.data) {
        Ok(t) => t,
        Err(e) => return dead_letter(&inner, &d, &format!("malformed task message: {e}")).await,
    };
    if task.v != MESSAGE_VERSION {
        return dead_letter(
            &inner,
            &d,
            &format!("task message version {} is not {MESSAGE_VERSION}", task.v),
        )
        .await;
    }
    let run_id = task.invocation.run_id.clone();
    // Fencing: a task from a leader older than one we have heard from is not run; its
    // invocation goes back to the invocations queue for the current leader.
    let seen_epoch = inner.max_epoch.fetch_max(task.epoch, Ordering::SeqCst);
    if task.epoch < seen_epoch {
        inner.metrics.fenced.inc();
        tracing::warn!(
            worker_id,
            run_id,
            epoch = task.epoch,
            current = seen_epoch,
            "refusing a task from a stale leader"
        );
        match requeue_invocation(&inner, &task.invocation).await {
            Ok(()) => ack(&d).await,
            Err(e) => {
                tracing::error!(worker_id, run_id, error = %format!("{e:#}"), "returning a fenced invocation failed; leaving it queued");
                let _ = d.reject(BasicRejectOptions { requeue: true }).await;
            }
        }
        return;
    }
    if inner
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .put(run_id.clone(), ())
        .is_some()
    {
        inner.metrics.duplicates.inc();
        tracing::info!(
            worker_id,
            run_id,
            "duplicate delivery of a run; not running it again"
        );
        ack(&d).await;
        return;
    }

    let inv = &task.invocation;
    let started_at_ms = schemas::now_ms();
    inner
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            run_id.clone(),
            RunningTask {
                run_id: run_id.clone(),
                user_id: inv.user_id.clone(),
                demand: inv.resources,
            },
        );
    // A run that ends quickly gets one record, its final one; a longer one is first marked
    // running (with this worker and epoch), so readers see it moving.
    let result = {
        let exec = execute(&inner, &task, started_at_ms);
        tokio::pin!(exec);
        tokio::select! {
            biased;
            r = &mut exec => r,
            () = tokio::time::sleep(RUNNING_RECORD_AFTER) => {
                inner
                    .writer
                    .write(RunWrite::Started {
                        run_id: run_id.clone(),
                        worker_id: worker_id.clone(),
                        epoch: task.epoch,
                        started_at_ms,
                    })
                    .await;
                exec.await
            }
        }
    };
    inner
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&run_id);
    inner.metrics.run_finished(result.status);
    tracing::debug!(
        worker_id,
        run_id,
        function = inv.function,
        status = result.status.as_str(),
        duration_ms = result.duration_ms,
        cold = result.cold_start,
        "run finished"
    );

    if let Err(e) = publish_result(&inner, inv, &result).await {
        // Not acked: the task will be redelivered (here, or elsewhere if this worker dies)
        // and its result published then; the record below keeps the outcome meanwhile.
        tracing::error!(worker_id, run_id, error = %format!("{e:#}"), "publishing a result failed");
        inner
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop(&run_id);
        let _ = d.reject(BasicRejectOptions { requeue: true }).await;
    } else {
        ack(&d).await;
    }
    inner
        .writer
        .write(RunWrite::Finished(Box::new(finished_doc(
            &result,
            inv.args.to_string(),
            inv.created_at_ms,
        ))))
        .await;
}

async fn ack(d: &Delivery) {
    if let Err(e) = d.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "acknowledging a delivery failed");
    }
}

async fn dead_letter(inner: &Inner, d: &Delivery, why: &str) {
    inner.metrics.dead_lettered.inc();
    tracing::warn!(
        worker_id = inner.cfg.worker_id,
        bytes = d.data.len(),
        reason = why,
        "dead-lettering a task message"
    );
    if let Err(e) = d.reject(BasicRejectOptions { requeue: false }).await {
        tracing::warn!(error = %e, "rejecting a delivery failed");
    }
}

async fn requeue_invocation(inner: &Inner, inv: &InvocationMsg) -> anyhow::Result<()> {
    let body = serde_json::to_vec(inv)?;
    amqp::publish_confirmed(
        &inner.publisher,
        "",
        &inner.names.invocations_queue(),
        &body,
        amqp::props("invocation", true),
    )
    .await
}

/// Sends the result to the sync caller (if any) first, then to the results exchange with a
/// publisher confirm. Only results with a callback are persistent: they are the callback's sole
/// record. A plain result only lets dispatchers release the run's allocation, which their
/// heartbeat reconciliation also does if a broker restart drops it; the run record is written
/// by this worker either way.
async fn publish_result(inner: &Inner, inv: &InvocationMsg, r: &ResultMsg) -> anyhow::Result<()> {
    let body = serde_json::to_vec(r).context("encoding the result")?;
    if let Some(reply_to) = &inv.reply_to {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(inv.run_id.as_str().into());
        // Best effort: the caller may be gone; the results exchange has the result anyway.
        if let Err(e) = inner
            .publisher
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
        {
            tracing::warn!(run_id = inv.run_id, error = %e, "replying to the sync caller failed");
        }
    }
    let key = if r.callback_url.is_some() {
        names::RK_RESULT_CALLBACK
    } else {
        names::RK_RESULT_PLAIN
    };
    amqp::publish_confirmed(
        &inner.publisher,
        &inner.names.results_exchange(),
        key,
        &body,
        amqp::props("result", r.callback_url.is_some())
            .with_correlation_id(inv.run_id.as_str().into()),
    )
    .await
}

/// What came out of the container.
struct Outcome {
    status: RunStatus,
    result: Option<serde_json::Value>,
    error: Option<RunError>,
    logs: String,
    duration_ms: u64,
    cold_start: bool,
}

impl Outcome {
    fn failed(status: RunStatus, error: RunError, duration_ms: u64, cold_start: bool) -> Outcome {
        Outcome {
            status,
            result: None,
            error: Some(error),
            logs: String::new(),
            duration_ms,
            cold_start,
        }
    }
}

async fn execute(inner: &Arc<Inner>, task: &TaskMsg, started_at_ms: i64) -> ResultMsg {
    let inv = &task.invocation;
    let o = run_in_container(inner, inv).await;
    let platform = o.error.as_ref().is_some_and(RunError::is_platform);
    let billed = if platform {
        0
    } else {
        let prices = *inner.prices.lock().unwrap_or_else(|e| e.into_inner());
        accounts::pricing::bill(&prices, o.duration_ms, inv.resources, inv.hold.as_ref())
    };
    ResultMsg {
        v: MESSAGE_VERSION,
        run_id: inv.run_id.clone(),
        user_id: inv.user_id.clone(),
        function_id: inv.function_id.clone(),
        function: inv.function.clone(),
        version: inv.version,
        worker_id: inner.cfg.worker_id.clone(),
        epoch: task.epoch,
        status: o.status,
        result: o.result,
        error: o.error,
        logs: tail(o.logs, schemas::limits::LOG_TAIL_BYTES),
        duration_ms: o.duration_ms,
        cold_start: o.cold_start,
        billed_micros: billed,
        resources: inv.resources,
        started_at_ms: Some(started_at_ms),
        finished_at_ms: schemas::now_ms(),
        callback_url: inv.callback_url.clone(),
        hold: inv.hold,
    }
}

/// Keeps the last `max` bytes of `s` (on a character boundary).
fn tail(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[truncated]\n{}", &s[start..])
}

/// Sets the idle and spare container gauges; returns the warm function keys.
fn pool_gauges(inner: &Inner, p: &WarmPool<Container>) -> Vec<String> {
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

/// Takes a warm container for the function, else a spare, else room to start one (waiting
/// while busy containers hold the worker's memory).
async fn acquire(
    inner: &Inner,
    key: &str,
    spare_key: Option<&str>,
    memory_mb: u64,
) -> Grant<Container> {
    loop {
        let notified = inner.pool_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut p = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(g) = p.try_acquire(key, spare_key, memory_mb) {
                pool_gauges(inner, &p);
                return g;
            }
        }
        notified.await;
    }
}

fn release(inner: &Inner, key: &str, c: Container) {
    let mb = c.memory_mb;
    {
        let mut p = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        p.release(key, c, mb, Instant::now());
        pool_gauges(inner, &p);
    }
    inner.pool_changed.notify_waiters();
}

/// Removes a container that must not serve again, in the background.
fn discard(inner: &Inner, c: Container) {
    inner
        .pool
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .discard(c.memory_mb);
    inner.pool_changed.notify_waiters();
    let containers = inner.containers.clone();
    tokio::spawn(async move { containers.remove(&c.id, &c.name).await });
}

/// Starts a spare container of a runtime and size in the background, unless enough are ready
/// or starting, or it would not fit without evicting a warm container.
fn want_spare(inner: &Arc<Inner>, runtime: schemas::Runtime, resources: schemas::Resources) {
    if inner.cfg.spares == 0 || !inner.accepting.load(Ordering::SeqCst) {
        return;
    }
    let key = spare_key(runtime, resources);
    {
        let mut making = inner.making.lock().unwrap_or_else(|e| e.into_inner());
        let mut pool = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let now = pool.count(&key) + making.get(&key).copied().unwrap_or(0);
        if now >= inner.cfg.spares || !pool.try_reserve(resources.memory_mb) {
            return;
        }
        *making.entry(key.clone()).or_default() += 1;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let started = inner
            .containers
            .start(&Spec {
                key: &key,
                runtime,
                resources,
            })
            .await;
        match started {
            Ok(c) if inner.accepting.load(Ordering::SeqCst) => {
                tracing::debug!(container = c.name, key, "spare container ready");
                release(&inner, &key, c);
            }
            Ok(c) => {
                inner
                    .pool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .discard(resources.memory_mb);
                inner.containers.remove(&c.id, &c.name).await;
            }
            Err(e) => {
                inner
                    .pool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .discard(resources.memory_mb);
                tracing::warn!(key, error = %format!("{e:#}"), "starting a spare container failed");
            }
        }
        {
            let mut making = inner.making.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = making.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    making.remove(&key);
                }
            }
        }
        inner.pool_changed.notify_waiters();
    });
}

/// A container serving the function: warm, else a spare given the function, else a new one.
/// `Err` is the run's outcome when none can be had.
async fn obtain(
    inner: &Arc<Inner>,
    inv: &InvocationMsg,
    code_dir: &std::path::Path,
) -> Result<(Container, bool), Outcome> {
    let key = inv.function_key();
    let resources = schemas::Resources {
        memory_mb: inv.resources.memory_mb.max(16),
        ..inv.resources
    };
    let spare = (inner.cfg.spares > 0).then(|| spare_key(inv.runtime, resources));
    let load = Load {
        handler: &inv.handler,
        function: &inv.function,
        version: inv.version,
        code_dir,
    };
    let platform = |msg: String| {
        Outcome::failed(
            RunStatus::Failed,
            RunError::new(codes::PLATFORM_WORKER, msg),
            0,
            false,
        )
    };
    // A spare that turns out dead is discarded and the next option tried.
    for _ in 0..3 {
        match acquire(inner, &key, spare.as_deref(), resources.memory_mb).await {
            Grant::Warm(c) => return Ok((c, false)),
            Grant::Spare(mut c) => {
                want_spare(inner, inv.runtime, resources);
                match c.load(&load).await {
                    Ok(()) => {
                        inner.metrics.cold_starts.inc();
                        inner.metrics.spare_starts.inc();
                        return Ok((c, true));
                    }
                    Err(e) => {
                        tracing::warn!(run_id = inv.run_id, function = inv.function, container = c.name, error = %format!("{e:#}"), "a spare container could not take the function");
                        discard(inner, c);
                    }
                }
            }
            Grant::Cold { evicted } => {
                for old in evicted {
                    tracing::debug!(container = old.name, "evicting an idle container");
                    let containers = inner.containers.clone();
                    tokio::spawn(async move { containers.remove(&old.id, &old.name).await });
                }
                let spec = Spec {
                    key: &key,
                    runtime: inv.runtime,
                    resources,
                };
                let started = match inner.containers.start(&spec).await {
                    Ok(mut c) => match c.load(&load).await {
                        Ok(()) => Ok(c),
                        Err(e) => {
                            inner.containers.remove(&c.id, &c.name).await;
                            Err(e)
                        }
                    },
                    Err(e) => Err(e),
                };
                want_spare(inner, inv.runtime, resources);
                return match started {
                    Ok(c) => {
                        inner.metrics.cold_starts.inc();
                        Ok((c, true))
                    }
                    Err(e) => {
                        inner
                            .pool
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .discard(resources.memory_mb);
                        inner.pool_changed.notify_waiters();
                        tracing::error!(run_id = inv.run_id, function = inv.function, error = %format!("{e:#}"), "starting a container failed");
                        Err(platform(format!(
                            "the function's container could not start: {e:#}"
                        )))
                    }
                };
            }
        }
    }
    Err(platform(
        "no container could take the function (spare containers kept failing)".to_owned(),
    ))
}

async fn run_in_container(inner: &Arc<Inner>, inv: &InvocationMsg) -> Outcome {
    let platform = |code: &str, msg: String| {
        Outcome::failed(RunStatus::Failed, RunError::new(code, msg), 0, false)
    };
    if !inv.resources.fits_in(inner.cfg.capacity) {
        return platform(
            codes::PLATFORM_NO_CAPACITY,
            format!(
                "the function asks for {:?}, more than this worker has ({:?})",
                inv.resources, inner.cfg.capacity
            ),
        );
    }
    let code_dir = match inner
        .code
        .ensure(&inv.code_sha256, inv.code_kind, &inv.filename)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(run_id = inv.run_id, function = inv.function, error = %format!("{e:#}"), "fetching code failed");
            return platform(
                codes::PLATFORM_WORKER,
                format!("the function's code could not be fetched: {e:#}"),
            );
        }
    };
    let key = inv.function_key();
    let (mut c, cold) = match obtain(inner, inv, &code_dir).await {
        Ok(got) => got,
        Err(outcome) => return outcome,
    };

    let deadline_ms = schemas::now_ms() + inv.timeout_ms as i64;
    let ctx = AgentContext {
        run_id: &inv.run_id,
        function: &inv.function,
        version: inv.version,
        deadline_ms,
        memory_mb: inv.resources.memory_mb,
    };
    let t0 = Instant::now();
    let call = tokio::time::timeout(
        Duration::from_millis(inv.timeout_ms.max(1)),
        c.conn.call(&inv.run_id, &inv.args, ctx),
    )
    .await;
    let wall_ms = (t0.elapsed().as_micros() as u64).div_ceil(1000).max(1);
    match call {
        Ok(Ok(resp)) => {
            let duration_ms = resp.duration_us.div_ceil(1000).max(1);
            release(inner, &key, c);
            if resp.ok {
                Outcome {
                    status: RunStatus::Succeeded,
                    result: Some(resp.result.unwrap_or(serde_json::Value::Null)),
                    error: None,
                    logs: resp.logs,
                    duration_ms,
                    cold_start: cold,
                }
            } else {
                let e = resp.error.unwrap_or(agent::AgentError {
                    kind: "exception".into(),
                    message: "the function failed".into(),
                });
                let code = match e.kind.as_str() {
                    "exit" => codes::FUNCTION_EXIT,
                    "bad_result" => codes::BAD_RESULT,
                    "load" => codes::FUNCTION_LOAD,
                    "bad_request" => codes::PLATFORM_WORKER,
                    _ => codes::FUNCTION_ERROR,
                };
                Outcome {
                    status: RunStatus::Failed,
                    result: None,
                    error: Some(RunError::new(code, e.message)),
                    logs: resp.logs,
                    duration_ms,
                    cold_start: cold,
                }
            }
        }
        Ok(Err(CallError::Gone(_))) => {
            let oom = inner
                .containers
                .was_oom_killed(&c.id)
                .await
                .unwrap_or(false);
            discard(inner, c);
            let error = if oom {
                RunError::new(
                    codes::OUT_OF_MEMORY,
                    format!(
                        "the function ran out of memory (limit {} MB) and was killed",
                        inv.resources.memory_mb
                    ),
                )
            } else {
                RunError::new(
                    codes::FUNCTION_ERROR,
                    "the function's runtime crashed".to_owned(),
                )
            };
            Outcome::failed(RunStatus::Failed, error, wall_ms, cold)
        }
        Ok(Err(e @ CallError::Protocol(_))) => {
            discard(inner, c);
            Outcome::failed(
                RunStatus::Failed,
                RunError::new(codes::PLATFORM_WORKER, e.to_string()),
                wall_ms,
                cold,
            )
        }
        Err(_) => {
            // The container is killed and replaced: its state is unknown mid-call.
            discard(inner, c);
            Outcome::failed(
                RunStatus::TimedOut,
                RunError::new(
                    codes::TIMEOUT,
                    format!("the function ran past its timeout of {} ms", inv.timeout_ms),
                ),
                inv.timeout_ms,
                cold,
            )
        }
    }
}

async fn publish_heartbeat(inner: &Inner, seq: u64) {
    let (running, allocated) = {
        let r = inner.running.lock().unwrap_or_else(|e| e.into_inner());
        let allocated = r
            .values()
            .fold(schemas::Resources::default(), |a, t| a.plus(t.demand));
        (r.values().cloned().collect::<Vec<_>>(), allocated)
    };
    let warm = {
        let p = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool_gauges(inner, &p)
    };
    let msg = HeartbeatMsg {
        v: MESSAGE_VERSION,
        worker_id: inner.cfg.worker_id.clone(),
        seq,
        sent_at_ms: schemas::now_ms(),
        interval_ms: inner.cfg.heartbeat.as_millis() as u64,
        capacity: inner.cfg.capacity,
        allocated,
        running,
        warm,
        accepting: inner.accepting.load(Ordering::SeqCst),
        epoch: inner.max_epoch.load(Ordering::SeqCst),
    };
    let body = match serde_json::to_vec(&msg) {
        Ok(b) => b,
        Err(_) => return,
    };
    if let Err(e) = inner
        .publisher
        .basic_publish(
            inner.names.heartbeats_exchange().as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            amqp::props("heartbeat", false),
        )
        .await
    {
        tracing::warn!(worker_id = inner.cfg.worker_id, error = %e, "publishing a heartbeat failed");
    }
}

async fn heartbeat_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(inner.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        seq += 1;
        publish_heartbeat(&inner, seq).await;
    }
}

/// Removes idle containers past their TTL, and refreshes prices now and then.
async fn reaper_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let period = (inner.cfg.idle_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    let mut last_prices = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let expired = inner
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(Instant::now(), inner.cfg.idle_ttl);
        if !expired.is_empty() {
            inner.pool_changed.notify_waiters();
        }
        for c in expired {
            tracing::debug!(
                container = c.name,
                "removing an idle container past its TTL"
            );
            inner.containers.remove(&c.id, &c.name).await;
        }
        if last_prices.elapsed() > Duration::from_secs(30) {
            last_prices = Instant::now();
            match Prices::load_or_seed(&inner.db).await {
                Ok(p) => *inner.prices.lock().unwrap_or_else(|e| e.into_inner()) = p,
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "refreshing prices failed"),
            }
        }
    }
}

/// Serves `/healthz` (Docker, MongoDB and RabbitMQ reachable) and `/metrics`.
async fn serve_http(inner: Arc<Inner>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let registry = inner.metrics.registry.clone();
    let health = move || -> common::ops::HealthFuture {
        let inner = inner.clone();
        Box::pin(async move {
            let docker = inner.containers.docker().ping().await.is_ok();
            let mongo = common::mongo::ping(&inner.db).await.is_ok();
            let amqp = inner.amqp_conn.status().connected();
            (
                docker && mongo && amqp,
                serde_json::json!({"docker": docker, "mongodb": mongo, "rabbitmq": amqp}),
            )
        })
    };
    common::ops::serve(listener, registry, health, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abc".into(), 10), "abc");
        let s = "é".repeat(10);
        let t = tail(s, 5);
        assert!(t.starts_with("[truncated]\n"));
        assert!(t.ends_with('é'));
    }
}
