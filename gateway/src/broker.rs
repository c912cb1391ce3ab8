//! RabbitMQ for the gateway (and the portal's test invocations), on the shared connection
//! manager [`common::amqp::Link`]: on every connection it sets up this instance's exclusive
//! reply queue (sync results) and, in the gateway, a consumer of the shared callbacks queue, and
//! sets them up again after a reconnect. Callers never wait for a connection: when there is none
//! they get an error at once. A sync caller whose reply may have been lost with a connection is
//! told so ([`Wait::Lost`]) and reads the run record instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::amqp::{Link, LinkConfig, Session};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use schemas::names::AmqpNames;
use schemas::{InvocationMsg, ResultMsg};
use tokio::sync::{oneshot, watch};

use crate::callbacks::Callbacks;
use crate::metrics::Metrics;

pub use common::amqp::PublishError;

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

/// The gateway's side of RabbitMQ. Cheap to share (`Arc`).
pub struct Broker {
    link: Arc<Link>,
    reply_queue: String,
    publish_timeout: Duration,
    waiters: Mutex<HashMap<String, oneshot::Sender<ResultMsg>>>,
    /// Bumped whenever the reply consumer is lost: replies sent meanwhile are gone.
    replies_lost: watch::Sender<u64>,
    metrics: Metrics,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("reply_queue", &self.reply_queue)
            .finish()
    }
}

/// How a sync caller's wait ended.
#[derive(Debug)]
pub enum Wait {
    /// The result came.
    Reply(Box<ResultMsg>),
    /// The reply consumer was lost while waiting: a reply may have been dropped with it.
    Lost,
    /// Nothing within the wait.
    TimedOut,
}

/// A registered sync caller; dropping it (answered, timed out or the client went away)
/// forgets the registration.
pub struct ReplyWaiter {
    broker: Arc<Broker>,
    run_id: String,
    rx: Option<oneshot::Receiver<ResultMsg>>,
    lost: watch::Receiver<u64>,
}

impl ReplyWaiter {
    /// Waits up to `wait` for the result; `None` on timeout or a lost reply consumer.
    pub async fn wait(self, wait: Duration) -> Option<ResultMsg> {
        match self.wait_or_lost(wait).await {
            Wait::Reply(r) => Some(*r),
            Wait::Lost | Wait::TimedOut => None,
        }
    }

    /// Waits up to `wait` for the result, or until the reply consumer is lost.
    pub async fn wait_or_lost(mut self, wait: Duration) -> Wait {
        let Some(rx) = self.rx.take() else {
            return Wait::TimedOut;
        };
        let mut lost = self.lost.clone();
        tokio::select! {
            r = tokio::time::timeout(wait, rx) => match r {
                Ok(Ok(r)) => Wait::Reply(Box::new(r)),
                Ok(Err(_)) => Wait::Lost,
                Err(_) => Wait::TimedOut,
            },
            _ = lost.changed() => Wait::Lost,
        }
    }
}

impl Drop for ReplyWaiter {
    fn drop(&mut self) {
        self.broker.forget(&self.run_id);
    }
}

impl Broker {
    /// Starts the RabbitMQ link (the first connection is attempted at once, in the background).
    pub fn new(
        url: String,
        names: AmqpNames,
        instance_id: String,
        publish_timeout: Duration,
        metrics: Metrics,
    ) -> Arc<Broker> {
        let link = Link::spawn(LinkConfig::new(
            &url,
            &format!("gateway {instance_id}"),
            names.clone(),
        ));
        Arc::new(Broker {
            link,
            reply_queue: names.reply_queue(&instance_id),
            publish_timeout,
            waiters: Mutex::new(HashMap::new()),
            replies_lost: watch::channel(0).0,
            metrics,
        })
    }

    /// This instance's reply queue (the `reply_to` of its sync invocations).
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// The connection manager (for health reports).
    pub fn link(&self) -> &Link {
        &self.link
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
            lost: self.replies_lost.subscribe(),
        }
    }

    fn forget(&self, run_id: &str) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run_id);
    }

    /// Publishes an invocation to the invocations queue and waits for the broker's confirm,
    /// at most the publish timeout. An error means it may or may not have been queued.
    pub async fn publish_invocation(&self, inv: &InvocationMsg) -> Result<(), PublishError> {
        let body = serde_json::to_vec(inv).map_err(|e| PublishError::Failed(e.to_string()))?;
        let started = std::time::Instant::now();
        let outcome = self
            .link
            .publish_confirmed(
                "",
                &self.link.names().invocations_queue(),
                &body,
                common::amqp::props("invocation", true),
                self.publish_timeout,
            )
            .await;
        self.metrics.publish_waited(started.elapsed());
        outcome
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

    /// Sets up this instance's consumers on a new session.
    async fn setup(
        &self,
        s: &Session,
        callbacks_prefetch: Option<u16>,
    ) -> anyhow::Result<Consumers> {
        let reply_ch = s.conn.create_channel().await?;
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
        let mut c = Consumers {
            _reply_ch: reply_ch,
            replies,
            cb_ch: None,
            callbacks: None,
        };
        if let Some(prefetch) = callbacks_prefetch {
            let cb_ch = s.conn.create_channel().await?;
            cb_ch
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let callbacks = cb_ch
                .basic_consume(
                    self.link.names().callbacks_queue().as_str().into(),
                    "callbacks".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            c.cb_ch = Some(cb_ch);
            c.callbacks = Some(callbacks);
        }
        Ok(c)
    }

    fn replies_lost(&self) {
        self.replies_lost.send_modify(|n| *n += 1);
        self.metrics.amqp_connected.set(0);
    }

    /// The manager task: on every connection sets up the reply consumer (and the callbacks
    /// consumer when `callbacks` is given, the gateway's job alone), until the phase is
    /// `Stopped`; then waits for the callbacks being delivered (at most `drain`) and disconnects.
    pub async fn maintain(
        self: Arc<Self>,
        mut phase: watch::Receiver<Phase>,
        callbacks: Option<Arc<Callbacks>>,
        drain: Duration,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_generation = 0;
        'outer: loop {
            let s = tokio::select! {
                s = self.link.session() => s,
                _ = phase.wait_for(|p| *p == Phase::Stopped) => break 'outer,
            };
            let mut c = match self
                .setup(&s, callbacks.as_ref().map(|cb| cb.prefetch()))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "setting up the reply queue failed; reconnecting");
                    s.invalidate("gateway setup failed");
                    continue;
                }
            };
            if last_generation > 0 {
                self.metrics.amqp_reconnects.inc();
            }
            last_generation = s.generation;
            tracing::info!(
                reply_queue = self.reply_queue,
                generation = s.generation,
                "rabbitmq consumers ready; serving invocations"
            );
            self.metrics.amqp_connected.set(1);
            if *phase.borrow() != Phase::Running {
                c.stop_callbacks().await;
            }
            let lost = loop {
                tokio::select! {
                    d = c.replies.next() => match d {
                        Some(Ok(d)) => self.deliver_reply(&d),
                        Some(Err(e)) => break format!("reply consumer failed: {e}"),
                        None => break "reply consumer cancelled".to_owned(),
                    },
                    d = next_callback(&mut c.callbacks) => match (d, callbacks.as_ref()) {
                        (Some(Ok(d)), Some(cb)) => {
                            let cb = cb.clone();
                            tasks.spawn(async move { cb.handle(d).await });
                        }
                        (Some(Err(e)), _) => break format!("callbacks consumer failed: {e}"),
                        _ => {
                            tracing::warn!("the callbacks consumer was cancelled by the broker");
                            c.callbacks = None;
                        }
                    },
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    () = s.lost() => break "connection lost".to_owned(),
                    changed = phase.changed() => {
                        let now = if changed.is_err() { Phase::Stopped } else { *phase.borrow() };
                        match now {
                            Phase::Running => {}
                            Phase::Draining => c.stop_callbacks().await,
                            Phase::Stopped => {
                                c.stop_callbacks().await;
                                break 'outer;
                            }
                        }
                    }
                }
            };
            tracing::warn!(
                reason = lost,
                "lost the reply consumer; setting it up again"
            );
            s.invalidate(&lost);
            self.replies_lost();
        }
        finish(&mut tasks, drain).await;
        self.metrics.amqp_connected.set(0);
        self.link.close().await;
        tracing::debug!("rabbitmq manager stopped");
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

/// One session's consumers.
struct Consumers {
    _reply_ch: Channel,
    replies: lapin::Consumer,
    cb_ch: Option<Channel>,
    callbacks: Option<lapin::Consumer>,
}

impl Consumers {
    /// Stops taking callbacks (the ones being delivered go on).
    async fn stop_callbacks(&mut self) {
        if let (Some(_), Some(ch)) = (self.callbacks.take(), self.cb_ch.as_ref()) {
            if let Err(e) = ch
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
