//! The one RabbitMQ connection manager every component uses. A [`Link`] keeps a connection up
//! by itself: when the broker goes away (restart, kill, network) it notices, tells its users,
//! and reconnects with capped, jittered back-off, declaring the shared topology again on every
//! new connection. Each connection is a [`Session`]; components build their consumers on a
//! session and rebuild them on the next one (`Link::session` waits for it).
//!
//! Publishing with confirms ([`Session::publish_confirmed`], [`Link::publish_confirmed`]) never
//! reports success it did not get: a confirm still outstanding when the connection dies is
//! `Unconfirmed`, and the caller either publishes again on the next session or fails its own
//! caller clearly. Fire-and-forget messages (heartbeats, sync replies) go on a second channel
//! without confirms, so no confirm is ever left waiting for nobody.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use schemas::names::AmqpNames;
use tokio::sync::watch;

/// How a link connects.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `amqp://…` (a `heartbeat` query parameter is added when absent).
    pub url: String,
    /// Shown in the management UI.
    pub name: String,
    /// The shared topology, declared on every connection.
    pub names: AmqpNames,
    /// AMQP heartbeat in seconds: how fast a silent broker is noticed.
    pub heartbeat_s: u16,
    /// Back-off between attempts: starts at `min`, doubles, never above `max`; each wait is
    /// jittered to 50–100 % of its value so a fleet does not reconnect in lockstep.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl LinkConfig {
    /// Defaults: heartbeat 5 s, back-off 100 ms → 2 s.
    pub fn new(url: &str, name: &str, names: AmqpNames) -> LinkConfig {
        LinkConfig {
            url: url.to_owned(),
            name: name.to_owned(),
            names,
            heartbeat_s: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }

    fn url_with_heartbeat(&self) -> String {
        if self.url.contains("heartbeat=") {
            self.url.clone()
        } else if self.url.contains('?') {
            format!("{}&heartbeat={}", self.url, self.heartbeat_s)
        } else {
            format!("{}?heartbeat={}", self.url, self.heartbeat_s)
        }
    }
}

/// Why a publish did not get a positive confirm.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ is unreachable")]
    NotConnected,
    #[error("the connection to RabbitMQ was lost before the broker confirmed the message")]
    Unconfirmed,
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue took the message (unroutable)")]
    Unroutable,
    #[error("RabbitMQ did not confirm the message within {0:?}")]
    Timeout(Duration),
    #[error("publishing failed: {0}")]
    Failed(String),
}

impl PublishError {
    /// True when publishing again on a new connection may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PublishError::NotConnected
                | PublishError::Unconfirmed
                | PublishError::Timeout(_)
                | PublishError::Failed(_)
        )
    }
}

/// One connection of a link, with a confirm-mode channel for messages that must not be lost
/// and a plain channel for fire-and-forget ones.
pub struct Session {
    pub conn: Connection,
    /// Publisher confirms on: use [`Session::publish_confirmed`].
    pub publisher: Channel,
    /// No confirms: heartbeats, sync replies.
    pub plain: Channel,
    /// 1 for the first connection, +1 for every reconnect.
    pub generation: u64,
    dead: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("generation", &self.generation)
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Session {
    /// True until the connection or one of its two channels is found dead, or a user gave it up.
    pub fn is_alive(&self) -> bool {
        self.dead.borrow().is_none()
            && self.conn.status().connected()
            && self.publisher.status().connected()
            && self.plain.status().connected()
    }

    /// Resolves once this session is dead (at once if it already is).
    pub async fn lost(&self) {
        let mut rx = self.dead.subscribe();
        let _ = rx.wait_for(|d| d.is_some()).await;
    }

    /// Gives this session up (e.g. a consumer of the user failed): the link reconnects.
    pub fn invalidate(&self, why: &str) {
        self.dead.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(why.to_owned());
                true
            } else {
                false
            }
        });
    }

    /// Publishes on the confirm channel and waits for the broker's answer; with `mandatory`, a
    /// message no queue takes is [`PublishError::Unroutable`]. A connection lost while waiting
    /// is [`PublishError::Unconfirmed`], never success.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        self.publish_pipelined(exchange, routing_key, payload, properties, mandatory)
            .await?
            .await
    }

    /// Publishes on the confirm channel and returns the wait for the broker's answer (as
    /// [`Session::publish_confirmed`]), so that many publishes can be in flight at once.
    pub async fn publish_pipelined(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<
        impl std::future::Future<Output = Result<(), PublishError>> + Send + 'static,
        PublishError,
    > {
        if !self.is_alive() {
            return Err(PublishError::NotConnected);
        }
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                payload,
                properties,
            )
            .await
            .map_err(|e| {
                self.invalidate(&format!("publishing failed: {e}"));
                PublishError::Unconfirmed
            })?;
        let mut dead = self.dead.subscribe();
        Ok(async move {
            tokio::select! {
                c = confirm => match c {
                    Ok(Confirmation::Ack(None)) => Ok(()),
                    Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Unroutable),
                    Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
                    Ok(Confirmation::NotRequested) | Err(_) => Err(PublishError::Unconfirmed),
                },
                () = async { let _ = dead.wait_for(|d| d.is_some()).await.map(drop); } => {
                    Err(PublishError::Unconfirmed)
                }
            }
        })
    }

    /// Publishes without waiting for anything (best effort: lost with the connection).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        if !self.is_alive() {
            return Err(PublishError::NotConnected);
        }
        self.plain
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .map(drop)
            .map_err(|e| PublishError::Failed(e.to_string()))
    }
}

/// What a link reports about itself (for `/healthz` and `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Why the last attempt or connection failed, when not connected.
    pub last_error: Option<String>,
}

/// A self-healing RabbitMQ connection. Cheap to share (`Arc`).
pub struct Link {
    cfg: LinkConfig,
    current: watch::Sender<Option<Arc<Session>>>,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("name", &self.cfg.name)
            .finish()
    }
}

impl Link {
    /// Starts the manager task; the first connection is attempted at once.
    pub fn spawn(cfg: LinkConfig) -> Arc<Link> {
        let (current, _) = watch::channel(None);
        let (stop, _) = watch::channel(false);
        let link = Arc::new(Link {
            cfg,
            current,
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop,
        });
        tokio::spawn(link.clone().maintain());
        link
    }

    /// Like [`Link::spawn`], then waits up to `wait` for the first connection; an error says
    /// why it could not be made (the link keeps trying either way).
    pub async fn connect(cfg: LinkConfig, wait: Duration) -> anyhow::Result<Arc<Link>> {
        let link = Link::spawn(cfg);
        if tokio::time::timeout(wait, link.session()).await.is_err() {
            let why = link.state().last_error.unwrap_or_default();
            link.close().await;
            anyhow::bail!(
                "could not connect to RabbitMQ at {} within {wait:?}: {why}",
                crate::config::redact_url(&link.cfg.url)
            );
        }
        Ok(link)
    }

    /// The topology names this link declares.
    pub fn names(&self) -> &AmqpNames {
        &self.cfg.names
    }

    /// The live session, if there is one now.
    pub fn current(&self) -> Option<Arc<Session>> {
        self.current.borrow().clone().filter(|s| s.is_alive())
    }

    /// Waits for a live session.
    pub async fn session(&self) -> Arc<Session> {
        let mut rx = self.current.subscribe();
        loop {
            if let Some(s) = rx.borrow_and_update().clone().filter(|s| s.is_alive()) {
                return s;
            }
            if rx.changed().await.is_err() {
                // The link is gone: nothing will ever come.
                std::future::pending::<()>().await;
            }
        }
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Connection state for health and metrics.
    pub fn state(&self) -> LinkState {
        let connected = self.is_connected();
        LinkState {
            connected,
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error: if connected {
                None
            } else {
                self.last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            },
        }
    }

    /// Publishes with a confirm on the current session, waiting at most `timeout` for it.
    /// Does not wait for a connection: none now is [`PublishError::NotConnected`].
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let s = self.current().ok_or(PublishError::NotConnected)?;
        tokio::time::timeout(
            timeout,
            s.publish_confirmed(exchange, routing_key, payload, properties, false),
        )
        .await
        .unwrap_or(Err(PublishError::Timeout(timeout)))
    }

    /// Publishes with a confirm, waiting for a connection and publishing again after every
    /// transient failure, until confirmed or `stop` becomes true (then the last error).
    pub async fn publish_until_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), PublishError> {
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        loop {
            let s = tokio::select! {
                s = self.session() => s,
                () = crate::shutdown::until_set(&mut stop) => return Err(PublishError::NotConnected),
            };
            match s
                .publish_confirmed(exchange, routing_key, payload, properties.clone(), false)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    tracing::debug!(error = %e, "publishing again after a transient failure");
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_wait()) => {}
                () = crate::shutdown::until_set(&mut stop) => return Err(PublishError::Unconfirmed),
            }
        }
    }

    /// Stops reconnecting and closes the current connection.
    pub async fn close(&self) {
        self.stop.send_replace(true);
        let s = self.current.send_replace(None);
        if let Some(s) = s {
            s.invalidate("closed");
            let _ = s.conn.close(200, "closing".into()).await;
        }
    }

    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    async fn establish(&self, generation: u64) -> anyhow::Result<Session> {
        let conn = super::connect(&self.cfg.url_with_heartbeat(), &self.cfg.name).await?;
        let setup = async {
            let publisher = super::confirm_channel(&conn).await?;
            super::declare_topology(&publisher, &self.cfg.names).await?;
            let plain = conn.create_channel().await?;
            anyhow::Ok((publisher, plain))
        };
        match setup.await {
            Ok((publisher, plain)) => Ok(Session {
                conn,
                publisher,
                plain,
                generation,
                dead: watch::channel(None).0,
            }),
            Err(e) => {
                let _ = conn.close(200, "setup failed".into()).await;
                Err(e)
            }
        }
    }

    /// The manager: connect, watch the session until it dies, reconnect; until closed.
    async fn maintain(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let mut failures = 0u32;
        let mut generation = 0u64;
        while !*stop.borrow() {
            let attempt = tokio::select! {
                a = self.establish(generation + 1) => a,
                () = crate::shutdown::until_set(&mut stop) => break,
            };
            let session = match attempt {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    failures += 1;
                    let msg = format!("{e:#}");
                    // The first failure, then now and then, not at every retry.
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(
                            link = self.cfg.name,
                            error = msg,
                            failures,
                            "rabbitmq is unreachable; retrying"
                        );
                    }
                    self.set_error(msg);
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_wait()) => {}
                        () = crate::shutdown::until_set(&mut stop) => break,
                    }
                    continue;
                }
            };
            generation += 1;
            if generation > 1 {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                link = self.cfg.name,
                generation,
                after_failures = failures,
                "connected to rabbitmq"
            );
            failures = 0;
            backoff.reset();
            self.current.send_replace(Some(session.clone()));
            let why = watch_session(&session, &mut stop).await;
            session.invalidate(&why);
            self.current.send_if_modified(|c| match c {
                Some(s) if Arc::ptr_eq(s, &session) => {
                    *c = None;
                    true
                }
                _ => false,
            });
            if *stop.borrow() {
                let _ = session.conn.close(200, "closing".into()).await;
                break;
            }
            tracing::warn!(
                link = self.cfg.name,
                generation,
                reason = why,
                "lost rabbitmq; reconnecting"
            );
            self.set_error(why);
            let _ = session.conn.close(200, "reconnecting".into()).await;
        }
        tracing::debug!(link = self.cfg.name, "rabbitmq link stopped");
    }
}

/// Waits until the session dies (an error event, a closed connection or channel, a user's
/// `invalidate`) or the link stops; returns why.
async fn watch_session(s: &Session, stop: &mut watch::Receiver<bool>) -> String {
    let mut events = s.conn.events_listener();
    let mut dead = s.dead.subscribe();
    // lapin does not always report a broken connection as an event: poll its status too.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                // A channel's soft error (e.g. deleting a queue in use) closes that channel
                // only: its user sees it; the connection goes on.
                Some(lapin::Event::Error(e)) if e.is_amqp_soft_error() && s.conn.status().connected() => {
                    tracing::debug!(error = %e, "a channel error on a live connection");
                }
                Some(lapin::Event::Error(e)) => return format!("connection error: {e}"),
                Some(_) => {}
                None => return "the connection's event stream ended".to_owned(),
            },
            why = dead.wait_for(|d| d.is_some()) => {
                return why.map(|d| d.clone().unwrap_or_default()).unwrap_or_default();
            }
            _ = tick.tick() => {
                if !s.conn.status().connected() {
                    return "connection closed".to_owned();
                }
                if !s.publisher.status().connected() || !s.plain.status().connected() {
                    return "a channel was closed".to_owned();
                }
            }
            () = crate::shutdown::until_set(stop) => return "closing".to_owned(),
        }
    }
}

/// Capped exponential back-off with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Backoff {
            min,
            max,
            next: min,
            seed,
        }
    }

    /// The next wait: the current step jittered to 50–100 %, then the step doubles (capped).
    pub fn next_wait(&mut self) -> Duration {
        // xorshift64: enough randomness to spread a fleet's retries.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let wait = self.next.mul_f64(frac);
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps = [100u64, 200, 400, 800, 800, 800];
        for step in steps {
            let w = b.next_wait().as_millis() as u64;
            assert!(
                (step / 2..=step).contains(&w),
                "wait {w} ms outside 50–100 % of {step}"
            );
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn heartbeat_is_added_to_urls_without_one() {
        let names = AmqpNames::new("x");
        let c = LinkConfig::new("amqp://h:5672/%2f", "t", names.clone());
        assert_eq!(c.url_with_heartbeat(), "amqp://h:5672/%2f?heartbeat=5");
        let c = LinkConfig::new("amqp://h/%2f?frame_max=0", "t", names.clone());
        assert_eq!(
            c.url_with_heartbeat(),
            "amqp://h/%2f?frame_max=0&heartbeat=5"
        );
        let c = LinkConfig::new("amqp://h/%2f?heartbeat=3", "t", names);
        assert_eq!(c.url_with_heartbeat(), "amqp://h/%2f?heartbeat=3");
    }
}
