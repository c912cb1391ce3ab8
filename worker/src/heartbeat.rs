//! The worker's heartbeats: every interval, its capacity, what it runs and which functions it
//! holds warm, to the heartbeats exchange (fire and forget: a lost beat is replaced by the next;
//! while RabbitMQ is away none are sent and they resume on the next connection).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::amqp;
use schemas::{HeartbeatMsg, MESSAGE_VERSION};
use tokio::sync::watch;

use crate::Inner;

/// Publishes one heartbeat; `seq` orders them (`u64::MAX` says goodbye).
pub(crate) async fn publish_heartbeat(inner: &Inner, seq: u64) -> Result<(), amqp::PublishError> {
    let (running, allocated) = {
        let r = inner.running.lock().unwrap_or_else(|e| e.into_inner());
        let allocated = r
            .values()
            .fold(schemas::Resources::default(), |a, t| a.plus(t.demand));
        (r.values().cloned().collect::<Vec<_>>(), allocated)
    };
    let warm = {
        let p = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        crate::pool_gauges(inner, &p)
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
    let body = serde_json::to_vec(&msg).map_err(|e| amqp::PublishError::Failed(e.to_string()))?;
    let s = inner
        .link
        .current()
        .ok_or(amqp::PublishError::NotConnected)?;
    s.publish(
        &inner.names.heartbeats_exchange(),
        "",
        &body,
        amqp::props("heartbeat", false),
    )
    .await
}

/// Beats until `stop`. A failure is logged once per outage, not once per beat.
pub(crate) async fn heartbeat_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(inner.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    // Not "failing" before the first beat went out: the link may still be connecting.
    let mut failing = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = common::shutdown::until_set(&mut stop) => return,
        }
        seq += 1;
        match publish_heartbeat(&inner, seq).await {
            Ok(()) if failing => {
                failing = false;
                if seq > 1 {
                    tracing::info!(worker_id = inner.cfg.worker_id, seq, "heartbeats resumed");
                }
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(worker_id = inner.cfg.worker_id, error = %e, "heartbeats paused until rabbitmq is back");
            }
            Err(_) => {}
        }
    }
}
