//! The dispatcher process: follows worker heartbeats always (a hot standby knows the cluster),
//! and while it leads, consumes invocations, schedules them with DRF and publishes each as a
//! task stamped with its fencing epoch to the chosen worker's queue, acking the invocation only
//! after the broker confirmed the task.
//!
//! Worker failure: a worker missing `missed_beats` heartbeats is dead. Its queue is drained —
//! the tasks it never started and, since workers ack only after publishing a result, those it
//! had started — and each invocation goes back to the invocations queue, to run elsewhere
//! (**re-run**, never failed; at most one final record, see `common::runstore`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::amqp;
use common::metrics::{Registry, Value};
use common::runstore::{finished_doc, RunWrite, RunWriter};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::Acker;
use lapin::{Channel, Connection, Consumer};
use schemas::names::{self, AmqpNames};
use schemas::run_error_codes as codes;
use schemas::{
    EpochMsg, HeartbeatMsg, InvocationMsg, ResultMsg, RunError, RunStatus, TaskMsg, MESSAGE_VERSION,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::drf::{Scheduler, Task};
use crate::election::{self, ElectionConfig, Role};

struct Metrics {
    registry: Registry,
    dispatched: Value,
    dead_lettered: Value,
    failed_no_capacity: Value,
    requeued_from_dead: Value,
    is_leader: Value,
    pending: Value,
    live_workers: Value,
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::default();
        Metrics {
            dispatched: r.counter(
                "colorfaas_dispatcher_tasks_dispatched_total",
                "tasks published to worker queues",
                &[],
            ),
            dead_lettered: r.counter(
                "colorfaas_dispatcher_dead_lettered_total",
                "unreadable invocation messages dead-lettered",
                &[],
            ),
            failed_no_capacity: r.counter(
                "colorfaas_dispatcher_no_capacity_total",
                "invocations failed because no worker can hold them",
                &[],
            ),
            requeued_from_dead: r.counter(
                "colorfaas_dispatcher_requeued_total",
                "tasks taken back from dead workers",
                &[],
            ),
            is_leader: r.gauge(
                "colorfaas_dispatcher_is_leader",
                "1 while this dispatcher leads",
                &[],
            ),
            pending: r.gauge(
                "colorfaas_dispatcher_pending",
                "invocations held, waiting for capacity",
                &[],
            ),
            live_workers: r.gauge(
                "colorfaas_dispatcher_live_workers",
                "workers with a recent heartbeat",
                &[],
            ),
            registry: r,
        }
    }
}

struct WorkerSeen {
    last: Instant,
    interval: Duration,
    beat: HeartbeatMsg,
}

/// An invocation the leader holds until it is dispatched.
struct Held {
    inv: InvocationMsg,
    acker: Acker,
}

/// What exists only while leading.
struct Leadership {
    epoch: u64,
    ch: Channel,
    invocations: Consumer,
    results: Consumer,
}

struct Dispatcher {
    cfg: Config,
    names: AmqpNames,
    conn: Connection,
    publisher: Channel,
    writer: RunWriter,
    sched: Scheduler,
    workers: HashMap<String, WorkerSeen>,
    held: HashMap<String, Held>,
    /// Run ids dispatched by this leader and not finished yet.
    running: HashSet<String>,
    no_workers_since: Option<Instant>,
    metrics: Arc<Metrics>,
    leading: Arc<AtomicBool>,
    /// Tasks the broker did not confirm: their allocation is released by the main loop.
    unconfirmed: tokio::sync::mpsc::UnboundedSender<String>,
}

/// Runs a dispatcher until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(dispatcher = cfg.id, backends = %cfg.backends, zk = cfg.zk_connect, session_timeout = ?cfg.session_timeout, threads = cfg.threads, "dispatcher starting");
    let names = cfg.backends.names();
    let db = common::mongo::connect(&cfg.backends.mongodb_uri, &cfg.backends.mongodb_db).await?;
    let (writer, writer_task) = RunWriter::spawn(db.clone());

    // A short AMQP heartbeat: if this process is paused, the broker soon returns the
    // invocations it held to the queue for the next leader.
    let url = if cfg.backends.amqp_url.contains('?') {
        cfg.backends.amqp_url.clone()
    } else {
        format!("{}?heartbeat=3", cfg.backends.amqp_url)
    };
    let conn = amqp::connect(&url, &format!("dispatcher {}", cfg.id)).await?;
    let setup = conn.create_channel().await?;
    amqp::declare_topology(&setup, &names).await?;
    let hb_queue = format!("{}.dispatcher.heartbeats.{}", names.prefix, cfg.id);
    setup
        .queue_declare(
            hb_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the heartbeat queue")?;
    setup
        .queue_bind(
            hb_queue.as_str().into(),
            names.heartbeats_exchange().as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut heartbeats = setup
        .basic_consume(
            hb_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let publisher = amqp::confirm_channel(&conn).await?;

    let (role_tx, mut roles) = watch::channel(Role::Follower);
    let stop_election = Arc::new(AtomicBool::new(false));
    let election = election::spawn(
        ElectionConfig {
            zk_connect: cfg.zk_connect.clone(),
            namespace: names.prefix.clone(),
            candidate_id: cfg.id.clone(),
            session_timeout: cfg.session_timeout,
        },
        role_tx,
        stop_election.clone(),
    );

    let metrics = Arc::new(Metrics::new());
    let leading = Arc::new(AtomicBool::new(false));
    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let http = tokio::spawn(serve_http(
        listener,
        metrics.clone(),
        leading.clone(),
        conn.status().clone(),
        db,
        stop.clone(),
    ));

    let (unconfirmed, mut unconfirmed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut d = Dispatcher {
        unconfirmed,
        cfg,
        names,
        conn,
        publisher,
        writer: writer.clone(),
        sched: Scheduler::new(),
        workers: HashMap::new(),
        held: HashMap::new(),
        running: HashSet::new(),
        no_workers_since: Some(Instant::now()),
        metrics,
        leading,
    };
    let mut lead: Option<Leadership> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    enum Ev {
        Stop,
        Role(Option<Role>),
        Beat(Option<Result<Delivery, lapin::Error>>),
        Invocation(Option<Result<Delivery, lapin::Error>>),
        Result(Option<Result<Delivery, lapin::Error>>),
        Unconfirmed(Option<String>),
        Tick,
    }
    let result: anyhow::Result<()> = loop {
        let ev = {
            let (inv_c, res_c) = match lead.as_mut() {
                Some(l) => (Some(&mut l.invocations), Some(&mut l.results)),
                None => (None, None),
            };
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => Ev::Stop,
                changed = roles.changed() => Ev::Role(changed.ok().map(|_| *roles.borrow_and_update())),
                hb = heartbeats.next() => Ev::Beat(hb),
                inv = next_of(inv_c) => Ev::Invocation(inv),
                res = next_of(res_c) => Ev::Result(res),
                u = unconfirmed_rx.recv() => Ev::Unconfirmed(u),
                _ = tick.tick() => Ev::Tick,
            }
        };
        match ev {
            Ev::Stop => break Ok(()),
            Ev::Role(None) => break Err(anyhow::anyhow!("the election thread stopped")),
            Ev::Role(Some(Role::Leader { epoch })) => {
                if lead.as_ref().map(|l| l.epoch) != Some(epoch) {
                    d.step_down(&mut lead).await;
                    match d.take_lead(epoch).await {
                        Ok(l) => lead = Some(l),
                        Err(e) => break Err(e.context("taking the lead")),
                    }
                }
            }
            Ev::Role(Some(Role::Follower)) => d.step_down(&mut lead).await,
            Ev::Beat(Some(Ok(delivery))) => d.on_heartbeat(&delivery.data),
            Ev::Beat(Some(Err(e))) => {
                break Err(anyhow::Error::new(e).context("consuming heartbeats"))
            }
            Ev::Beat(None) => break Err(anyhow::anyhow!("the heartbeat consumer ended")),
            Ev::Invocation(Some(Ok(delivery))) => d.on_invocation(delivery).await,
            Ev::Result(Some(Ok(delivery))) => d.on_result(delivery).await,
            Ev::Invocation(other) | Ev::Result(other) => {
                tracing::warn!(error = ?other.and_then(Result::err), "a leader consumer ended; stepping down");
                d.step_down(&mut lead).await;
            }
            Ev::Unconfirmed(Some(run_id)) => {
                d.running.remove(&run_id);
                let _ = d.sched.release(&run_id);
            }
            Ev::Unconfirmed(None) => {}
            Ev::Tick => d.on_tick(lead.is_some()).await,
        }
        if let Some(l) = &lead {
            d.dispatch(l.epoch).await;
        }
    };

    d.step_down(&mut lead).await;
    stop_election.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || election.join()).await;
    writer.flush().await;
    let _ = d.conn.close(200, "dispatcher stopping".into()).await;
    drop(d);
    drop(writer);
    let _ = writer_task.await;
    let _ = http.await;
    tracing::info!("dispatcher stopped");
    result
}

/// The next delivery of an optional consumer; pending forever when there is none.
async fn next_of(c: Option<&mut Consumer>) -> Option<Result<Delivery, lapin::Error>> {
    match c {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

impl Dispatcher {
    async fn take_lead(&mut self, epoch: u64) -> anyhow::Result<Leadership> {
        let id = self.cfg.id.clone();
        // Announce the epoch to every worker queue before the first task.
        let msg = EpochMsg {
            v: MESSAGE_VERSION,
            epoch,
            leader_id: id.clone(),
        };
        amqp::publish_confirmed(
            &self.publisher,
            &self.names.control_exchange(),
            "",
            &serde_json::to_vec(&msg)?,
            amqp::props("epoch", true),
        )
        .await
        .context("announcing the epoch")?;
        let ch = self
            .conn
            .create_channel()
            .await
            .context("opening the leader channel")?;
        ch.basic_qos(self.cfg.prefetch, BasicQosOptions::default())
            .await?;
        let invocations = ch
            .basic_consume(
                self.names.invocations_queue().as_str().into(),
                format!("dispatcher-{id}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("consuming invocations")?;
        let results = ch
            .basic_consume(
                self.names.dispatcher_results_queue().as_str().into(),
                format!("dispatcher-{id}-results").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("consuming results")?;
        self.leading.store(true, Ordering::SeqCst);
        self.metrics.is_leader.set(1);
        tracing::info!(dispatcher = id, epoch, "leading: dispatching invocations");
        Ok(Leadership {
            epoch,
            ch,
            invocations,
            results,
        })
    }

    /// Stops dispatching at once: held invocations go back to the queue (the channel closes).
    async fn step_down(&mut self, lead: &mut Option<Leadership>) {
        let Some(l) = lead.take() else { return };
        self.leading.store(false, Ordering::SeqCst);
        self.metrics.is_leader.set(0);
        tracing::warn!(
            dispatcher = self.cfg.id,
            epoch = l.epoch,
            held = self.held.len(),
            "stepping down"
        );
        let _ = l.ch.close(200, "stepping down".into()).await;
        // Forget held invocations (the broker has them again); keep the workers.
        self.held.clear();
        self.running.clear();
        self.reset_scheduler();
        self.metrics.pending.set(0);
    }

    /// A scheduler with no queued work, knowing the workers from their latest heartbeats.
    fn reset_scheduler(&mut self) {
        self.sched = Scheduler::new();
        for w in self.workers.values() {
            self.sched.apply_heartbeat(&w.beat);
        }
    }

    fn on_heartbeat(&mut self, data: &[u8]) {
        let hb: HeartbeatMsg = match serde_json::from_slice(data) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed heartbeat");
                return;
            }
        };
        let interval = Duration::from_millis(hb.interval_ms.clamp(50, 60_000));
        if let Some(seen) = self.workers.get(&hb.worker_id) {
            // A restarted worker starts its sequence again: order by send time then.
            if hb.seq <= seen.beat.seq && hb.sent_at_ms <= seen.beat.sent_at_ms {
                return;
            }
        } else {
            tracing::info!(worker_id = hb.worker_id, capacity = ?hb.capacity, "worker joined");
        }
        self.sched.apply_heartbeat(&hb);
        self.workers.insert(
            hb.worker_id.clone(),
            WorkerSeen {
                last: Instant::now(),
                interval,
                beat: hb,
            },
        );
        self.no_workers_since = None;
    }

    async fn on_invocation(&mut self, d: Delivery) {
        let inv: InvocationMsg = match serde_json::from_slice(&d.data) {
            Ok(i) => i,
            Err(e) => {
                return self
                    .dead_letter(&d.acker, d.data.len(), &e.to_string())
                    .await
            }
        };
        if inv.v != MESSAGE_VERSION {
            return self
                .dead_letter(
                    &d.acker,
                    d.data.len(),
                    &format!("version {} is not {MESSAGE_VERSION}", inv.v),
                )
                .await;
        }
        if self.held.contains_key(&inv.run_id) || self.running.contains(&inv.run_id) {
            tracing::info!(
                run_id = inv.run_id,
                "duplicate invocation; already held or running"
            );
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            return;
        }
        if !self.workers.is_empty() && !self.sched.fits_anywhere_ever(inv.resources) {
            let msg = format!(
                "no worker can ever hold this function's demand ({} millicores, {} MB memory, {} MB disk)",
                inv.resources.cpu_millicores, inv.resources.memory_mb, inv.resources.disk_mb
            );
            self.fail(&inv, codes::PLATFORM_NO_CAPACITY, &msg, 0).await;
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            return;
        }
        let task = Task::new(inv.run_id.clone(), inv.function_key(), inv.resources);
        match self.sched.enqueue(&inv.user_id, task) {
            Ok(()) => {
                self.held.insert(
                    inv.run_id.clone(),
                    Held {
                        inv,
                        acker: d.acker,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(run_id = inv.run_id, error = %e, "cannot hold an invocation; returning it to the queue");
                let _ = d
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
        }
        self.metrics.pending.set(self.held.len() as i64);
    }

    async fn on_result(&mut self, d: Delivery) {
        match serde_json::from_slice::<ResultMsg>(&d.data) {
            Ok(r) => {
                self.running.remove(&r.run_id);
                let _ = self.sched.release(&r.run_id);
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
            Err(e) => {
                self.dead_letter(&d.acker, d.data.len(), &format!("malformed result: {e}"))
                    .await
            }
        }
    }

    async fn dead_letter(&self, acker: &Acker, bytes: usize, why: &str) {
        self.metrics.dead_lettered.inc();
        tracing::warn!(
            dispatcher = self.cfg.id,
            bytes,
            reason = why,
            "dead-lettering a malformed message"
        );
        let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
    }

    /// Publishes what DRF picks, as long as something fits.
    async fn dispatch(&mut self, epoch: u64) {
        while let Some(decision) = self.sched.next() {
            let Some(held) = self.held.remove(&*decision.task.id) else {
                // Not ours to send (it was released meanwhile).
                let _ = self.sched.release(&decision.task.id);
                continue;
            };
            let task = TaskMsg {
                v: MESSAGE_VERSION,
                epoch,
                worker_id: decision.worker_id.to_string(),
                dispatched_at_ms: schemas::now_ms(),
                invocation: held.inv,
            };
            let body = match serde_json::to_vec(&task) {
                Ok(b) => b,
                Err(_) => continue,
            };
            let queue = self.names.worker_queue(&decision.worker_id);
            let publish = self
                .publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    amqp::props("task", true),
                )
                .await;
            let run_id = task.invocation.run_id.clone();
            match publish {
                Ok(confirm) => {
                    self.metrics.dispatched.inc();
                    self.running.insert(run_id.clone());
                    tracing::debug!(
                        run_id,
                        worker_id = &*decision.worker_id,
                        epoch,
                        user = &*decision.user,
                        "dispatched"
                    );
                    // Ack the invocation only once the task is confirmed; pipelined.
                    let acker = held.acker;
                    let unconfirmed = self.unconfirmed.clone();
                    tokio::spawn(async move {
                        match confirm.await {
                            Ok(lapin::Confirmation::Ack(None)) => {
                                let _ = acker.ack(BasicAckOptions::default()).await;
                            }
                            other => {
                                tracing::warn!(run_id, outcome = ?other.map(|c| c.is_ack()), "a task was not confirmed or not routable; returning its invocation");
                                let _ = unconfirmed.send(run_id.clone());
                                let _ = acker
                                    .nack(BasicNackOptions {
                                        requeue: true,
                                        ..Default::default()
                                    })
                                    .await;
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(run_id, error = %e, "publishing a task failed; returning its invocation");
                    let _ = self.sched.release(&run_id);
                    let _ = held
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                }
            }
        }
        self.metrics.pending.set(self.held.len() as i64);
    }

    async fn on_tick(&mut self, leading: bool) {
        let now = Instant::now();
        let missed = self.cfg.missed_beats.max(1);
        let dead: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                now.duration_since(w.last) > w.interval * missed + Duration::from_millis(100)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            self.workers.remove(&id);
            let lost = self.sched.remove_worker(&id);
            for d in &lost {
                self.running.remove(&*d.task.id);
            }
            tracing::warn!(
                worker_id = id,
                running = lost.len(),
                "worker missed its heartbeats; declaring it dead"
            );
            if leading {
                if let Err(e) = self.take_back(&id).await {
                    tracing::error!(worker_id = id, error = %format!("{e:#}"), "taking back a dead worker's tasks failed");
                }
            }
        }
        self.metrics.live_workers.set(self.workers.len() as i64);
        if self.workers.is_empty() {
            let since = *self.no_workers_since.get_or_insert(now);
            if leading
                && now.duration_since(since) > self.cfg.no_worker_grace
                && !self.held.is_empty()
            {
                self.fail_all_held("no worker is alive to run it").await;
            }
        }
        if leading && !self.workers.is_empty() {
            // Tasks that no live worker can ever hold (e.g. the big worker died) fail fast.
            for (_user, task) in self.sched.drain_unrunnable() {
                if let Some(h) = self.held.remove(&*task.id) {
                    let msg = "no live worker can hold this function's demand".to_owned();
                    self.fail(&h.inv, codes::PLATFORM_NO_CAPACITY, &msg, 0)
                        .await;
                    let _ = h.acker.ack(BasicAckOptions::default()).await;
                }
            }
        }
    }

    async fn fail_all_held(&mut self, why: &str) {
        self.reset_scheduler();
        let held: Vec<Held> = self.held.drain().map(|(_, h)| h).collect();
        for h in held {
            self.fail(&h.inv, codes::PLATFORM_NO_CAPACITY, why, 0).await;
            let _ = h.acker.ack(BasicAckOptions::default()).await;
        }
        self.metrics.pending.set(0);
    }

    /// Ends a run as failed by the platform (not billed): result to the caller and the results
    /// exchange, and the final record.
    async fn fail(&self, inv: &InvocationMsg, code: &str, message: &str, epoch: u64) {
        self.metrics.failed_no_capacity.inc();
        tracing::warn!(
            run_id = inv.run_id,
            function = inv.function,
            code,
            message,
            "failing an invocation"
        );
        let r = ResultMsg {
            v: MESSAGE_VERSION,
            run_id: inv.run_id.clone(),
            user_id: inv.user_id.clone(),
            function_id: inv.function_id.clone(),
            function: inv.function.clone(),
            version: inv.version,
            worker_id: String::new(),
            epoch,
            status: RunStatus::Failed,
            result: None,
            error: Some(RunError::new(code, message)),
            logs: String::new(),
            duration_ms: 0,
            cold_start: false,
            billed_micros: 0,
            resources: inv.resources,
            started_at_ms: None,
            finished_at_ms: schemas::now_ms(),
            callback_url: inv.callback_url.clone(),
            hold: inv.hold,
        };
        let body = serde_json::to_vec(&r).unwrap_or_default();
        if let Some(reply_to) = &inv.reply_to {
            let _ = self
                .publisher
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    amqp::props("result", false).with_correlation_id(inv.run_id.as_str().into()),
                )
                .await;
        }
        let key = if inv.callback_url.is_some() {
            names::RK_RESULT_CALLBACK
        } else {
            names::RK_RESULT_PLAIN
        };
        if let Err(e) = amqp::publish_confirmed(
            &self.publisher,
            &self.names.results_exchange(),
            key,
            &body,
            amqp::props("result", true),
        )
        .await
        {
            tracing::warn!(run_id = inv.run_id, error = %format!("{e:#}"), "publishing a failure result failed");
        }
        self.writer
            .write(RunWrite::Finished(Box::new(finished_doc(
                &r,
                inv.args.to_string(),
                inv.created_at_ms,
            ))))
            .await;
    }

    /// Moves every task in a dead worker's queue back to the invocations queue.
    async fn take_back(&mut self, worker_id: &str) -> anyhow::Result<()> {
        let queue = self.names.worker_queue(worker_id);
        let ch = self.conn.create_channel().await?;
        let mut n = 0;
        loop {
            let got = match ch
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                Ok(g) => g,
                // The queue does not exist (the channel is closed by the broker): nothing to do.
                Err(_) => break,
            };
            let Some(msg) = got else { break };
            let d = msg.delivery;
            if amqp::kind_of(&d.properties).as_deref() == Some("task") {
                match serde_json::from_slice::<TaskMsg>(&d.data) {
                    Ok(t) => {
                        let body = serde_json::to_vec(&t.invocation)?;
                        amqp::publish_confirmed(
                            &self.publisher,
                            "",
                            &self.names.invocations_queue(),
                            &body,
                            amqp::props("invocation", true),
                        )
                        .await?;
                        n += 1;
                    }
                    Err(e) => {
                        tracing::warn!(worker_id, error = %e, "dropping an unreadable task from a dead worker's queue")
                    }
                }
            }
            d.acker.ack(BasicAckOptions::default()).await?;
        }
        if n > 0 {
            self.metrics.requeued_from_dead.add(n);
            tracing::warn!(
                worker_id,
                tasks = n,
                "returned a dead worker's tasks to the invocations queue"
            );
        }
        let _ = ch
            .queue_delete(
                queue.as_str().into(),
                QueueDeleteOptions {
                    if_empty: true,
                    if_unused: true,
                    ..Default::default()
                },
            )
            .await;
        let _ = ch.close(200, "done".into()).await;
        Ok(())
    }
}

/// Serves `/healthz` (MongoDB and RabbitMQ reachable; says whether this one leads) and
/// `/metrics`.
async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    leading: Arc<AtomicBool>,
    amqp_status: lapin::ConnectionStatus,
    db: mongodb::Database,
    stop: watch::Receiver<bool>,
) {
    let health = move || -> common::ops::HealthFuture {
        let (db, amqp_status, leading) = (db.clone(), amqp_status.clone(), leading.clone());
        Box::pin(async move {
            let mongo = common::mongo::ping(&db).await.is_ok();
            let amqp = amqp_status.connected();
            let body = serde_json::json!({"mongodb": mongo, "rabbitmq": amqp, "leader": leading.load(Ordering::SeqCst)});
            (mongo && amqp, body)
        })
    };
    common::ops::serve(listener, metrics.registry.clone(), health, stop).await;
}
