//! RabbitMQ for the gateway: a manager task keeps one connection with a confirm-mode publisher
//! channel, this instance's exclusive reply queue (sync results) and a consumer of the shared
//! callbacks queue, and re-establishes all of them by itself when the broker goes away. Callers
//! never wait for a connection: when there is none they get an error at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use schemas::names::AmqpNames;
use schemas::{InvocationMsg, ResultMsg};
use tokio::sync::{oneshot, watch};

use crate::callbacks::Callbacks;
use crate::metrics::Metrics;

/// Where the gateway is in its life; the manager follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// Shutting down: no new callbacks are taken; sync calls in flight still get their replies.
    Draining,
    /// Everything in flight is done: finish the callbacks being delivered and disconnect.
    Stopped,
}

/// Why an invocation could not be handed to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ is unreachable")]
    NotConnected,
    #[error("RabbitMQ did not confirm the invocation within {0:?}")]
    Timeout(Duration),
    #[error("publishing the invocation failed: {0}")]
    Failed(String),
}

struct Link {
    conn: Connection,
    publisher: Channel,
}

/// The gateway's side of RabbitMQ. Cheap to share (`Arc`).
pub struct Broker {
    url: String,
    names: AmqpNames,
    instance_id: String,
    reply_queue: String,
    publish_timeout: Duration,
    link: Mutex<Option<Arc<Link>>>,
    waiters: Mutex<HashMap<String, oneshot::Sender<ResultMsg>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("reply_queue", &self.reply_queue)
            .finish()
    }
}

/// A registered sync caller; dropping it (answered, timed out or the client went away)
/// forgets the registration.
pub struct ReplyWaiter {
    broker: Arc<Broker>,
    run_id: String,
    rx: Option<oneshot::Receiver<ResultMsg>>,
}

impl ReplyWaiter {
    /// Waits up to `wait` for the result; `None` on timeout.
    pub async fn wait(mut self, wait: Duration) -> Option<ResultMsg> {
        let rx = self.rx.take()?;
        tokio::time::timeout(wait, rx).await.ok()?.ok()
    }
}

impl Drop for ReplyWaiter {
    fn drop(&mut self) {
        self.broker.forget(&self.run_id);
    }
}

impl Broker {
    pub fn new(
        url: String,
        names: AmqpNames,
        instance_id: String,
        publish_timeout: Duration,
        metrics: Metrics,
    ) -> Arc<Broker> {
        Arc::new(Broker {
            reply_queue: names.reply_queue(&instance_id),
            url,
            names,
            instance_id,
            publish_timeout,
            link: Mutex::new(None),
            waiters: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// This instance's reply queue (the `reply_to` of its sync invocations).
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    fn current(&self) -> Option<Arc<Link>> {
        let link = self
            .link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        link.conn.status().connected().then_some(link)
    }

    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Sync calls waiting for their result.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Registers a sync caller of `run_id` (before publishing its invocation).
    pub fn register(self: &Arc<Self>, run_id: &str) -> ReplyWaiter {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run_id.to_owned(), tx);
        ReplyWaiter {
            broker: self.clone(),
            run_id: run_id.to_owned(),
            rx: Some(rx),
        }
    }

    fn forget(&self, run_id: &str) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run_id);
    }

    /// Publishes an invocation to the invocations queue and waits for the broker's confirm,
    /// at most the publish timeout.
    pub async fn publish_invocation(&self, inv: &InvocationMsg) -> Result<(), PublishError> {
        let link = self.current().ok_or(PublishError::NotConnected)?;
        let body = serde_json::to_vec(inv).map_err(|e| PublishError::Failed(e.to_string()))?;
        let queue = self.names.invocations_queue();
        let publish = common::amqp::publish_confirmed(
            &link.publisher,
            "",
            &queue,
            &body,
            common::amqp::props("invocation", true),
        );
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.publish_timeout, publish).await;
        self.metrics.publish_waited(started.elapsed());
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError::Failed(format!("{e:#}"))),
            Err(_) => Err(PublishError::Timeout(self.publish_timeout)),
        }
    }

    fn deliver_reply(&self, d: &Delivery) {
        let r: ResultMsg = match serde_json::from_slice(&d.data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, bytes = d.data.len(), "ignoring an unreadable reply");
                return;
            }
        };
        let waiter = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&r.run_id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(r);
            }
            None => tracing::debug!(run_id = r.run_id, "a reply came for nobody waiting"),
        }
    }

    /// Connects and sets everything up: topology, publisher, reply queue and callbacks
    /// consumers.
    async fn establish(&self, callbacks_prefetch: u16) -> anyhow::Result<Session> {
        let conn =
            common::amqp::connect(&self.url, &format!("gateway {}", self.instance_id)).await?;
        let setup = async {
            let publisher = common::amqp::confirm_channel(&conn).await?;
            common::amqp::declare_topology(&publisher, &self.names).await?;
            let reply_ch = conn.create_channel().await?;
            reply_ch
                .queue_declare(
                    self.reply_queue.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let replies = reply_ch
                .basic_consume(
                    self.reply_queue.as_str().into(),
                    "replies".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let cb_ch = conn.create_channel().await?;
            cb_ch
                .basic_qos(callbacks_prefetch, BasicQosOptions::default())
                .await?;
            let callbacks = cb_ch
                .basic_consume(
                    self.names.callbacks_queue().as_str().into(),
                    "callbacks".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            anyhow::Ok((publisher, reply_ch, replies, cb_ch, callbacks))
        };
        match setup.await {
            Ok((publisher, reply_ch, replies, cb_ch, callbacks)) => Ok(Session {
                link: Arc::new(Link { conn, publisher }),
                _reply_ch: reply_ch,
                replies,
                cb_ch,
                callbacks: Some(callbacks),
            }),
            Err(e) => {
                let _ = conn.close(200, "setup failed".into()).await;
                Err(e)
            }
        }
    }

    /// The manager task: keeps the connection up until the phase is `Stopped`, then waits for
    /// the callbacks being delivered (at most `drain`) and disconnects.
    pub async fn maintain(
        self: Arc<Self>,
        mut phase: watch::Receiver<Phase>,
        callbacks: Arc<Callbacks>,
        drain: Duration,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        let mut ever_connected = false;
        'outer: loop {
            if *phase.borrow() == Phase::Stopped {
                break;
            }
            let mut s = match self.establish(callbacks.prefetch()).await {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    // Log the first failure and then now and then, not at every retry.
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %format!("{e:#}"), failures, "RabbitMQ is unreachable; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = phase.wait_for(|p| *p == Phase::Stopped) => break 'outer,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if ever_connected {
                self.metrics.amqp_reconnects.inc();
            }
            ever_connected = true;
            tracing::info!(
                reply_queue = self.reply_queue,
                "connected to RabbitMQ; serving invocations"
            );
            failures = 0;
            backoff = Duration::from_millis(100);
            *self.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.link.clone());
            self.metrics.amqp_connected.set(1);
            if *phase.borrow() != Phase::Running {
                s.stop_callbacks().await;
            }

            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let lost = loop {
                tokio::select! {
                    d = s.replies.next() => match d {
                        Some(Ok(d)) => self.deliver_reply(&d),
                        Some(Err(e)) => break format!("reply consumer failed: {e}"),
                        None => break "reply consumer cancelled".to_owned(),
                    },
                    d = next_callback(&mut s.callbacks) => match d {
                        Some(Ok(d)) => {
                            let cb = callbacks.clone();
                            tasks.spawn(async move { cb.handle(d).await });
                        }
                        Some(Err(e)) => break format!("callbacks consumer failed: {e}"),
                        None => {
                            tracing::warn!("the callbacks consumer was cancelled by the broker");
                            s.callbacks = None;
                        }
                    },
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    _ = tick.tick() => {
                        if !s.link.conn.status().connected() {
                            break "connection closed".to_owned();
                        }
                    }
                    changed = phase.changed() => {
                        let now = if changed.is_err() { Phase::Stopped } else { *phase.borrow() };
                        match now {
                            Phase::Running => {}
                            Phase::Draining => s.stop_callbacks().await,
                            Phase::Stopped => {
                                s.stop_callbacks().await;
                                finish(&mut tasks, drain).await;
                                *self.link.lock().unwrap_or_else(|e| e.into_inner()) = None;
                                self.metrics.amqp_connected.set(0);
                                let _ = s.link.conn.close(200, "gateway stopped".into()).await;
                                break 'outer;
                            }
                        }
                    }
                }
            };
            tracing::warn!(reason = lost, "lost RabbitMQ; reconnecting");
            *self.link.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.metrics.amqp_connected.set(0);
            let _ = s.link.conn.close(200, "reconnecting".into()).await;
        }
        finish(&mut tasks, drain).await;
        tracing::debug!("RabbitMQ manager stopped");
    }
}

/// Waits for callback deliveries in progress, at most `drain`; unfinished ones are left
/// unacknowledged, so the broker hands them to another gateway.
async fn finish(tasks: &mut tokio::task::JoinSet<()>, drain: Duration) {
    if tasks.is_empty() {
        return;
    }
    let done = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} });
    if done.await.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "callbacks still being delivered at shutdown; leaving them queued"
        );
        tasks.abort_all();
    }
}

async fn next_callback(c: &mut Option<lapin::Consumer>) -> Option<Result<Delivery, lapin::Error>> {
    match c {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// One connection's consumers.
struct Session {
    link: Arc<Link>,
    _reply_ch: Channel,
    replies: lapin::Consumer,
    cb_ch: Channel,
    callbacks: Option<lapin::Consumer>,
}

impl Session {
    /// Stops taking callbacks (the ones being delivered go on).
    async fn stop_callbacks(&mut self) {
        if self.callbacks.take().is_some() {
            if let Err(e) = self
                .cb_ch
                .basic_cancel("callbacks".into(), BasicCancelOptions::default())
                .await
            {
                tracing::debug!(error = %e, "cancelling the callbacks consumer failed");
            }
        }
    }
}

/// Acknowledges a delivery, logging a failure (the message is then redelivered).
pub async fn ack(d: &Delivery) {
    if let Err(e) = d.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "acknowledging a delivery failed");
    }
}

/// Sends a delivery to the dead-letter queue.
pub async fn dead_letter(d: &Delivery) {
    if let Err(e) = d.reject(BasicRejectOptions { requeue: false }).await {
        tracing::warn!(error = %e, "rejecting a delivery failed");
    }
}
