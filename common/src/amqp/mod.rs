//! RabbitMQ connections and the shared topology. Every component declares what it uses with the
//! same arguments, so declarations are idempotent whichever component starts first. Components
//! hold their connection through [`Link`] (`link.rs`), which keeps it up by itself.

mod link;

pub use link::{Backoff, Link, LinkConfig, LinkState, PublishError, Session};

use anyhow::Context as _;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use schemas::names::{self, AmqpNames};

/// Opens a connection named `name` (shown in the management UI).
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let conn = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        Connection::connect(url, props),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out connecting to RabbitMQ"))?
    .with_context(|| {
        format!(
            "connecting to RabbitMQ at {}",
            crate::config::redact_url(url)
        )
    })?;
    Ok(conn)
}

/// A channel in publisher-confirm mode.
pub async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let ch = conn.create_channel().await.context("opening a channel")?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    Ok(ch)
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Arguments of every queue whose unreadable messages go to the dead-letter exchange.
pub fn dead_lettered_args(names: &AmqpNames) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names.dead_letter_exchange().into()),
    );
    args
}

/// Declares the exchanges and the shared queues (invocations, dispatcher results, callbacks,
/// dead letters). Worker queues are declared by [`declare_worker_queue`].
pub async fn declare_topology(ch: &Channel, names: &AmqpNames) -> anyhow::Result<()> {
    let ex = |name: String, kind: ExchangeKind| async move {
        ch.exchange_declare(
            name.as_str().into(),
            kind,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring exchange {name}"))
    };
    ex(names.results_exchange(), ExchangeKind::Topic).await?;
    ex(names.heartbeats_exchange(), ExchangeKind::Fanout).await?;
    ex(names.control_exchange(), ExchangeKind::Fanout).await?;
    ex(names.dead_letter_exchange(), ExchangeKind::Fanout).await?;

    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(
        names.dead_letter_queue().as_str().into(),
        durable,
        FieldTable::default(),
    )
    .await
    .context("declaring the dead-letter queue")?;
    ch.queue_bind(
        names.dead_letter_queue().as_str().into(),
        names.dead_letter_exchange().as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .context("binding the dead-letter queue")?;

    declare_retry_queues(ch, names, durable).await?;
    for (queue, key) in [
        (names.invocations_queue(), None),
        (names.dispatcher_results_queue(), Some(names::RK_RESULT_ALL)),
        (names.callbacks_queue(), Some(names::RK_RESULT_CALLBACK)),
    ] {
        ch.queue_declare(queue.as_str().into(), durable, dead_lettered_args(names))
            .await
            .with_context(|| format!("declaring queue {queue}"))?;
        if let Some(key) = key {
            ch.queue_bind(
                queue.as_str().into(),
                names.results_exchange().as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding queue {queue}"))?;
        }
    }
    Ok(())
}

/// Declares the delay queues of async retries (`rules::RETRY_DELAYS_MS`): a message published
/// to one waits there its delay (the queue's message TTL), then the broker dead-letters it into
/// the invocations queue, where it is dispatched like any invocation. So a waiting retry is
/// held by the broker, durable, not by a process that may die.
async fn declare_retry_queues(
    ch: &Channel,
    names: &AmqpNames,
    durable: QueueDeclareOptions,
) -> anyhow::Result<()> {
    for delay_ms in schemas::rules::RETRY_DELAYS_MS {
        let queue = names.retry_queue(delay_ms);
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay_ms as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(names.invocations_queue().into()),
        );
        ch.queue_declare(queue.as_str().into(), durable, args)
            .await
            .with_context(|| format!("declaring the retry queue {queue}"))?;
    }
    Ok(())
}

/// Declares a worker's durable task queue and binds it to the control exchange.
pub async fn declare_worker_queue(
    ch: &Channel,
    names: &AmqpNames,
    worker_id: &str,
) -> anyhow::Result<String> {
    let queue = names.worker_queue(worker_id);
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        dead_lettered_args(names),
    )
    .await
    .with_context(|| format!("declaring worker queue {queue}"))?;
    ch.queue_bind(
        queue.as_str().into(),
        names.control_exchange().as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("binding worker queue {queue}"))?;
    Ok(queue)
}

/// Message properties: JSON, persistent when `persistent`, with a `kind` header.
pub fn props(kind: &str, persistent: bool) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        names::HEADER_KIND.into(),
        AMQPValue::LongString(kind.into()),
    );
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(if persistent { 2 } else { 1 })
        .with_headers(headers)
}

/// The `kind` header of a delivery, if any.
pub fn kind_of(props: &BasicProperties) -> Option<String> {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(names::HEADER_KIND))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        })
}

/// Publishes and waits for the broker's confirm (the channel must be in confirm mode).
/// A nack is an error.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> anyhow::Result<()> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            payload,
            properties,
        )
        .await
        .context("publishing")?
        .await
        .context("waiting for the publisher confirm")?;
    anyhow::ensure!(!confirm.is_nack(), "the broker refused the message (nack)");
    Ok(())
}

/// True when a delivery may have been handled before: redelivered by the broker, or marked as
/// a repeat by whoever published it again ([`names::HEADER_REDELIVERED`]).
pub fn is_repeat(redelivered: bool, props: &BasicProperties) -> bool {
    redelivered
        || props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(names::HEADER_REDELIVERED))
            .is_some_and(|v| matches!(v, AMQPValue::Boolean(true)))
}

/// Marks message properties as a possible repeat ([`is_repeat`] reads it).
pub fn mark_repeat(props: BasicProperties) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(names::HEADER_REDELIVERED.into(), AMQPValue::Boolean(true));
    props.with_headers(headers)
}
