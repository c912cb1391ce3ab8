//! The dispatcher process: follows worker heartbeats always (a hot standby knows the cluster),
//! and while it leads, consumes invocations, schedules them with DRF and publishes each as a
//! task stamped with its fencing epoch to the chosen worker's queue, acking the invocation only
//! after the broker confirmed the task.
//!
//! Leading needs both ZooKeeper and RabbitMQ: losing either stops dispatching at once (held
//! invocations go back to the queue with the channel). Without RabbitMQ the dispatcher also
//! leaves the election, so a standby that can dispatch takes over; it joins again once the
//! link is back (`common::amqp::Link` reconnects by itself).
//!
//! Worker failure: a worker missing `missed_beats` heartbeats (counted only while this
//! dispatcher itself is connected) is dead. Its queue is drained — the tasks it never started
//! and, since workers ack only after publishing a result, those it had started — and each
//! invocation goes back to the invocations queue, marked as a repeat, to run elsewhere
//! (**re-run**, never failed; at most one final record, see `common::runstore`).

mod leader;
mod limited;
mod workers;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::amqp::{Link, LinkConfig, Session};
use common::metrics::{Registry, Value};
use common::runstore::RunWriter;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Consumer};
use schemas::names::AmqpNames;
use schemas::{HeartbeatMsg, InvocationMsg};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::drf::Scheduler;
use crate::election::{self, ElectionConfig, Role};

struct Metrics {
    registry: Registry,
    dispatched: Value,
    dead_lettered: Value,
    failed_no_capacity: Value,
    throttled: Value,
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
            throttled: r.counter(
                "colorfaas_dispatcher_concurrency_refused_total",
                "sync invocations refused because their function was at its max_concurrency",
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
    /// It may have been dispatched before: the worker checks the run's record first.
    repeat: bool,
}

/// What exists only while leading.
struct Leadership {
    epoch: u64,
    ch: lapin::Channel,
    invocations: Consumer,
    results: Consumer,
}

struct Dispatcher {
    cfg: Config,
    names: AmqpNames,
    link: Arc<Link>,
    /// The RabbitMQ session everything runs on; `None` while the link is down.
    session: Option<Arc<Session>>,
    writer: RunWriter,
    sched: Scheduler,
    /// Runs active and parked per function (`max_concurrency`).
    limiter: crate::limits::Limiter,
    workers: HashMap<String, WorkerSeen>,
    held: HashMap<String, Held>,
    /// Run ids dispatched by this leader and not finished yet.
    running: HashSet<String>,
    no_workers_since: Option<Instant>,
    metrics: Arc<Metrics>,
    leading: Arc<AtomicBool>,
    /// Tasks the broker did not confirm: their allocation is released by the main loop.
    unconfirmed: tokio::sync::mpsc::UnboundedSender<String>,
    db: mongodb::Database,
    /// Fires the schedules while this dispatcher leads (`crate::schedules`).
    firing: Option<crate::schedules::Firing>,
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
    let mut link_cfg = LinkConfig::new(
        &cfg.backends.amqp_url,
        &format!("dispatcher {}", cfg.id),
        names.clone(),
    );
    link_cfg.heartbeat_s = 3;
    let link = Link::spawn(link_cfg);

    let (role_tx, roles) = watch::channel(Role::Follower);
    let (eligible_tx, eligible_rx) = watch::channel(false);
    let stop_election = Arc::new(AtomicBool::new(false));
    let (election, progress) = election::spawn(
        ElectionConfig {
            zk_connect: cfg.zk_connect.clone(),
            namespace: names.prefix.clone(),
            candidate_id: cfg.id.clone(),
            session_timeout: cfg.session_timeout,
        },
        role_tx,
        stop_election.clone(),
        eligible_rx,
    )
    .context("starting the election thread")?;

    let metrics = Arc::new(Metrics::new());
    let leading = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let http = tokio::spawn(serve_http(
        listener,
        metrics.clone(),
        leading.clone(),
        link.clone(),
        db.clone(),
        stop.clone(),
    ));

    let (unconfirmed, unconfirmed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut d = Dispatcher {
        unconfirmed,
        cfg,
        names,
        link: link.clone(),
        session: None,
        writer: writer.clone(),
        sched: Scheduler::new(),
        limiter: crate::limits::Limiter::new(),
        workers: HashMap::new(),
        held: HashMap::new(),
        running: HashSet::new(),
        no_workers_since: Some(Instant::now()),
        metrics,
        leading,
        db,
        firing: None,
    };
    let result = d
        .event_loop(stop, roles, eligible_tx, unconfirmed_rx, progress)
        .await;

    let mut lead = None;
    d.step_down(&mut lead).await;
    stop_election.store(true, Ordering::SeqCst);
    // Not waited for long: a thread stuck in the ZooKeeper client never ends.
    let joined = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || election.join()),
    )
    .await;
    if joined.is_err() {
        tracing::warn!("the election thread did not stop; leaving it");
    }
    writer.drain(common::runstore::SHUTDOWN_DRAIN).await;
    link.close().await;
    drop(d);
    drop(writer);
    let _ = writer_task.await;
    let _ = http.await;
    tracing::info!("dispatcher stopped");
    result
}

/// What woke the event loop.
enum Ev {
    Stop,
    Role(Option<Role>),
    Connected(Arc<Session>),
    Lost,
    Beat(Option<Result<Delivery, lapin::Error>>),
    Invocation(Option<Result<Delivery, lapin::Error>>),
    Result(Option<Result<Delivery, lapin::Error>>),
    Unconfirmed(Option<String>),
    Tick,
}

/// The next delivery of an optional consumer; pending forever when there is none.
async fn next_of(c: Option<&mut Consumer>) -> Option<Result<Delivery, lapin::Error>> {
    match c {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Resolves when `s` is lost; pending forever when there is no session.
async fn lost(s: Option<&Arc<Session>>) {
    match s {
        Some(s) => s.lost().await,
        None => std::future::pending().await,
    }
}

impl Dispatcher {
    /// Runs until `stop`; an error means the dispatcher cannot go on (it exits non-zero).
    async fn event_loop(
        &mut self,
        mut stop: watch::Receiver<bool>,
        mut roles: watch::Receiver<Role>,
        eligible: watch::Sender<bool>,
        mut unconfirmed_rx: tokio::sync::mpsc::UnboundedReceiver<String>,
        election: election::Progress,
    ) -> anyhow::Result<()> {
        // The ZooKeeper client blocks without a timeout when its connection is in a bad state;
        // an election thread silent this long will not come back by itself.
        let stall_limit = (self.cfg.session_timeout * 5).max(Duration::from_secs(30));
        let mut lead: Option<Leadership> = None;
        let mut heartbeats: Option<Consumer> = None;
        let mut role = Role::Follower;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let link = self.link.clone();
        loop {
            let ev = {
                let (inv_c, res_c) = match lead.as_mut() {
                    Some(l) => (Some(&mut l.invocations), Some(&mut l.results)),
                    None => (None, None),
                };
                let connecting = self.session.is_none();
                tokio::select! {
                    biased;
                    () = common::shutdown::until_set(&mut stop) => Ev::Stop,
                    changed = roles.changed() => Ev::Role(changed.ok().map(|_| *roles.borrow_and_update())),
                    s = link.session(), if connecting => Ev::Connected(s),
                    () = lost(self.session.as_ref()) => Ev::Lost,
                    hb = next_of(heartbeats.as_mut()) => Ev::Beat(hb),
                    inv = next_of(inv_c) => Ev::Invocation(inv),
                    res = next_of(res_c) => Ev::Result(res),
                    u = unconfirmed_rx.recv() => Ev::Unconfirmed(u),
                    _ = tick.tick() => Ev::Tick,
                }
            };
            match ev {
                Ev::Stop => return Ok(()),
                Ev::Role(None) => anyhow::bail!("the election thread stopped"),
                Ev::Role(Some(r)) => {
                    role = r;
                    self.follow_role(role, &mut lead).await;
                }
                Ev::Connected(s) => match self.subscribe_heartbeats(&s).await {
                    Ok(c) => {
                        heartbeats = Some(c);
                        self.connected(s);
                        eligible.send_replace(true);
                        self.follow_role(role, &mut lead).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "subscribing to heartbeats failed; reconnecting");
                        s.invalidate("subscribing to heartbeats failed");
                    }
                },
                Ev::Lost => {
                    self.disconnected(&mut lead, "connection lost").await;
                    heartbeats = None;
                    eligible.send_replace(false);
                }
                Ev::Beat(Some(Ok(delivery))) => self.on_heartbeat(&delivery.data),
                Ev::Invocation(Some(Ok(delivery))) => self.on_invocation(delivery).await,
                Ev::Result(Some(Ok(delivery))) => self.on_result(delivery).await,
                Ev::Beat(other) | Ev::Invocation(other) | Ev::Result(other) => {
                    // A consumer failed or was cancelled: rebuild everything on a new session.
                    let why = format!("a consumer ended: {:?}", other.and_then(Result::err));
                    if let Some(s) = &self.session {
                        s.invalidate(&why);
                    }
                    self.disconnected(&mut lead, &why).await;
                    heartbeats = None;
                    eligible.send_replace(false);
                }
                Ev::Unconfirmed(Some(run_id)) => {
                    self.running.remove(&run_id);
                    let _ = self.sched.release(&run_id);
                    self.run_ended(&run_id);
                }
                Ev::Unconfirmed(None) => {}
                Ev::Tick => {
                    let stalled = election.stalled_for();
                    if stalled > stall_limit {
                        self.step_down(&mut lead).await;
                        anyhow::bail!(
                            "the zookeeper client is stuck (the election made no progress for {} s); exiting so that this dispatcher is restarted",
                            stalled.as_secs()
                        );
                    }
                    self.on_tick(lead.is_some()).await
                }
            }
            if let Some(l) = &lead {
                self.dispatch(l.epoch).await;
            }
        }
    }

    /// Leads when elected and connected; follows otherwise.
    async fn follow_role(&mut self, role: Role, lead: &mut Option<Leadership>) {
        match role {
            Role::Leader { epoch } if self.session.is_some() => {
                if lead.as_ref().map(|l| l.epoch) != Some(epoch) {
                    self.step_down(lead).await;
                    match self.take_lead(epoch).await {
                        Ok(l) => *lead = Some(l),
                        Err(e) => {
                            // Most likely the connection went meanwhile: the loss is handled
                            // as its own event, and the election is left until it is back.
                            tracing::warn!(epoch, error = %format!("{e:#}"), "taking the lead failed");
                            if let Some(s) = &self.session {
                                s.invalidate("taking the lead failed");
                            }
                        }
                    }
                }
            }
            _ => self.step_down(lead).await,
        }
    }

    /// A new RabbitMQ session: workers get a fresh grace period (they could not beat while we
    /// were away), and this dispatcher may lead again.
    fn connected(&mut self, s: Arc<Session>) {
        tracing::info!(
            dispatcher = self.cfg.id,
            generation = s.generation,
            "connected; following heartbeats and joining the election"
        );
        let now = Instant::now();
        for w in self.workers.values_mut() {
            w.last = now;
        }
        self.session = Some(s);
    }

    /// The session is gone: stop dispatching at once and leave the election until it is back.
    async fn disconnected(&mut self, lead: &mut Option<Leadership>, why: &str) {
        if self.session.take().is_some() {
            tracing::warn!(
                dispatcher = self.cfg.id,
                reason = why,
                "lost rabbitmq; not dispatching and out of the election until it is back"
            );
        }
        self.step_down(lead).await;
    }

    /// Declares this dispatcher's heartbeat queue and consumes it.
    async fn subscribe_heartbeats(&self, s: &Session) -> anyhow::Result<Consumer> {
        let hb_queue = format!(
            "{}.dispatcher.heartbeats.{}",
            self.names.prefix, self.cfg.id
        );
        let ch = s.conn.create_channel().await?;
        ch.queue_declare(
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
        ch.queue_bind(
            hb_queue.as_str().into(),
            self.names.heartbeats_exchange().as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let c = ch
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
        Ok(c)
    }
}

/// Serves `/healthz` (MongoDB and RabbitMQ reachable; says whether this one leads) and
/// `/metrics`.
async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    leading: Arc<AtomicBool>,
    link: Arc<Link>,
    db: mongodb::Database,
    stop: watch::Receiver<bool>,
) {
    let health = move || -> common::ops::HealthFuture {
        let (db, link, leading) = (db.clone(), link.clone(), leading.clone());
        Box::pin(async move {
            let mongo = common::mongo::ping(&db).await.is_ok();
            let amqp = link.state();
            let body = serde_json::json!({
                "mongodb": mongo,
                "rabbitmq": amqp.connected,
                "rabbitmq_error": amqp.last_error,
                "leader": leading.load(Ordering::SeqCst),
            });
            (mongo && amqp.connected, body)
        })
    };
    common::ops::serve(listener, metrics.registry.clone(), health, stop).await;
}
