//! What the dispatcher knows of its workers: heartbeats (capacity, warm functions, liveness),
//! dead workers and taking their tasks back.

use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use schemas::run_error_codes as codes;
use schemas::{HeartbeatMsg, TaskMsg};

use common::amqp;

use super::{Dispatcher, WorkerSeen};
use crate::drf::Scheduler;

impl Dispatcher {
    /// A scheduler with no queued work, knowing the workers from their latest heartbeats.
    pub(super) fn reset_scheduler(&mut self) {
        self.sched = Scheduler::new();
        for w in self.workers.values() {
            self.sched.apply_heartbeat(&w.beat);
        }
    }

    pub(super) fn on_heartbeat(&mut self, data: &[u8]) {
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
        let ready = self.limiter.observe(&hb.worker_id, &hb.running);
        self.enqueue_unparked(ready);
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

    pub(super) async fn on_tick(&mut self, leading: bool) {
        if self.session.is_none() {
            // Workers cannot beat to us while we are away: their silence says nothing.
            return;
        }
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
                self.run_ended(&d.task.id);
            }
            let ready = self.limiter.forget_worker(&id);
            self.enqueue_unparked(ready);
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
                    self.run_ended(&task.id);
                }
            }
        }
    }

    /// Moves every task in a dead worker's queue back to the invocations queue.
    pub(super) async fn take_back(&mut self, worker_id: &str) -> anyhow::Result<()> {
        let queue = self.names.worker_queue(worker_id);
        let s = self
            .session
            .clone()
            .ok_or_else(|| anyhow::anyhow!("not connected to rabbitmq"))?;
        let ch = s.conn.create_channel().await?;
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
                        // Marked: the worker that died may have finished it before acking.
                        s.publish_confirmed(
                            "",
                            &self.names.invocations_queue(),
                            &body,
                            amqp::mark_repeat(amqp::props("invocation", true)),
                            false,
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
