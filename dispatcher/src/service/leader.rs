//! What the dispatcher does while it leads: takes the lead (announces its epoch, consumes
//! invocations and results), holds invocations per user, dispatches what DRF picks with
//! pipelined publisher confirms, and fails what cannot run anywhere.

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::Acker;
use schemas::run_error_codes as codes;
use schemas::{
    names, EpochMsg, InvocationMsg, ResultMsg, RunError, RunStatus, TaskMsg, MESSAGE_VERSION,
};
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use common::amqp;
use common::runstore::finished_doc;

use super::{Dispatcher, Held, Leadership};
use crate::drf::Task;

impl Dispatcher {
    pub(super) async fn take_lead(&mut self, epoch: u64) -> anyhow::Result<Leadership> {
        let id = self.cfg.id.clone();
        // Announce the epoch to every worker queue before the first task.
        let msg = EpochMsg {
            v: MESSAGE_VERSION,
            epoch,
            leader_id: id.clone(),
        };
        let s = self.session.clone().context("not connected to rabbitmq")?;
        s.publish_confirmed(
            &self.names.control_exchange(),
            "",
            &serde_json::to_vec(&msg)?,
            amqp::props("epoch", true),
            false,
        )
        .await
        .context("announcing the epoch")?;
        let ch = s
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
        self.firing = Some(crate::schedules::start(std::sync::Arc::new(
            crate::schedules::Ctx {
                db: self.db.clone(),
                link: self.link.clone(),
                prices: accounts::PriceBook::new(),
                limits: accounts::Limits::default(),
                min_schedule_ms: self.cfg.min_schedule_ms,
                functions: Default::default(),
                observer: None,
            },
        )));
        tracing::info!(dispatcher = id, epoch, "leading: dispatching invocations");
        Ok(Leadership {
            epoch,
            ch,
            invocations,
            results,
        })
    }

    /// Stops dispatching at once: held invocations go back to the queue (the channel closes).
    pub(super) async fn step_down(&mut self, lead: &mut Option<Leadership>) {
        let Some(l) = lead.take() else { return };
        // Stop firing schedules first: a tick in flight is left where it was (see
        // `crate::schedules::fire`).
        self.firing = None;
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
        self.reset_limiter();
        self.metrics.pending.set(0);
    }

    pub(super) async fn on_invocation(&mut self, d: Delivery) {
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
        let repeat = amqp::is_repeat(d.redelivered, &d.properties);
        if repeat && self.running.contains(&inv.run_id) {
            // Returned to the queue by the worker this leader gave it to (it refused a task of
            // an epoch older than one it had seen: this leader was stale for a moment) or taken
            // back from a worker found dead: nobody runs it on this leader's behalf any more.
            // Dispatched again; the worker's checks against the run record keep it from
            // running twice.
            tracing::info!(
                run_id = inv.run_id,
                "a running invocation came back; dispatching it again"
            );
            self.running.remove(&inv.run_id);
            let _ = self.sched.release(&inv.run_id);
        } else if (inv.retry.attempt > 1 || inv.retry.reruns > 0)
            && !self.held.contains_key(&inv.run_id)
        {
            // A retry (or platform re-run) comes only after its earlier attempt ended and was
            // stored: an allocation still held for the run is that attempt's, whose result
            // has not arrived yet.
            if self.running.remove(&inv.run_id) {
                let _ = self.sched.release(&inv.run_id);
            }
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
        let repeat = amqp::is_repeat(d.redelivered, &d.properties);
        let Some(inv) = self.admit(inv, &d.acker, repeat).await else {
            self.metrics.pending.set(self.held.len() as i64);
            return;
        };
        let task = Task::new(inv.run_id.clone(), inv.function_key(), inv.resources);
        match self.sched.enqueue(&inv.user_id, task) {
            Ok(()) => {
                self.held.insert(
                    inv.run_id.clone(),
                    Held {
                        inv,
                        acker: d.acker,
                        repeat,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(run_id = inv.run_id, error = %e, "cannot hold an invocation; returning it to the queue");
                self.run_ended(&inv.run_id);
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

    pub(super) async fn on_result(&mut self, d: Delivery) {
        match serde_json::from_slice::<ResultMsg>(&d.data) {
            Ok(r) => {
                self.running.remove(&r.run_id);
                let _ = self.sched.release(&r.run_id);
                self.run_ended(&r.run_id);
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
    pub(super) async fn dispatch(&mut self, epoch: u64) {
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
            let props = if held.repeat {
                amqp::mark_repeat(amqp::props("task", true))
            } else {
                amqp::props("task", true)
            };
            let publish = match &self.session {
                Some(s) => s.publish_pipelined("", &queue, &body, props, true).await,
                None => Err(amqp::PublishError::NotConnected),
            };
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
                            Ok(()) => {
                                let _ = acker.ack(BasicAckOptions::default()).await;
                            }
                            Err(e) => {
                                tracing::warn!(run_id, error = %e, "a task was not confirmed or not routable; returning its invocation");
                                let _ = unconfirmed.send(run_id.clone());
                                nack_requeue(&acker).await;
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(run_id, error = %e, "publishing a task failed; returning its invocation");
                    let _ = self.sched.release(&run_id);
                    self.run_ended(&run_id);
                    nack_requeue(&held.acker).await;
                }
            }
        }
        self.metrics.pending.set(self.held.len() as i64);
    }

    pub(super) async fn fail_all_held(&mut self, why: &str) {
        self.reset_scheduler();
        self.reset_limiter();
        let held: Vec<Held> = self.held.drain().map(|(_, h)| h).collect();
        for h in held {
            self.fail(&h.inv, codes::PLATFORM_NO_CAPACITY, why, 0).await;
            let _ = h.acker.ack(BasicAckOptions::default()).await;
        }
        self.metrics.pending.set(0);
    }

    /// Ends a run as failed by the platform (not billed): result to the caller and the results
    /// exchange, and the final record.
    pub(super) async fn fail(&self, inv: &InvocationMsg, code: &str, message: &str, epoch: u64) {
        self.metrics.failed_no_capacity.inc();
        tracing::warn!(
            run_id = inv.run_id,
            function = inv.function,
            code,
            message,
            "failing an invocation"
        );
        self.end_unrun(inv, code, message, epoch).await;
    }

    /// Ends a run that never ran (not billed): stored final, then told to the caller and the
    /// results exchange.
    pub(super) async fn end_unrun(
        &self,
        inv: &InvocationMsg,
        code: &str,
        message: &str,
        epoch: u64,
    ) {
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
        // Stored first, so that whoever hears of the failure reads it back.
        let mut doc = finished_doc(&r, inv.args.to_string(), inv.created_at_ms);
        doc.attempts = inv.retry.attempts.clone();
        doc.billed_micros = doc.attempts.iter().map(|a| a.billed_micros).sum();
        if doc.billed_micros > 0 {
            doc.bill_state = schemas::BillState::Unbilled;
        }
        if inv.mode == schemas::Mode::Async {
            // The final failure of an async run is a dead letter.
            doc.dead_letter = Some(schemas::DeadLetter {
                failed_at_ms: r.finished_at_ms,
                redriven_as: None,
            });
        }
        match self.writer.finish(doc).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(
                    run_id = inv.run_id,
                    "the run was already final; not failing it"
                );
                return;
            }
            Err(e) => {
                tracing::error!(run_id = inv.run_id, error = %format!("{e:#}"), "recording a failed run failed");
                return;
            }
        }
        let body = serde_json::to_vec(&r).unwrap_or_default();
        let Some(s) = &self.session else { return };
        if let Some(reply_to) = &inv.reply_to {
            let props =
                amqp::props("result", false).with_correlation_id(inv.run_id.as_str().into());
            let _ = s.publish("", reply_to, &body, props).await;
        }
        let key = if inv.callback_url.is_some() {
            names::RK_RESULT_CALLBACK
        } else {
            names::RK_RESULT_PLAIN
        };
        let props = amqp::props("result", inv.callback_url.is_some())
            .with_correlation_id(inv.run_id.as_str().into());
        if let Err(e) = s
            .publish_confirmed(&self.names.results_exchange(), key, &body, props, false)
            .await
        {
            tracing::warn!(run_id = inv.run_id, error = %e, "publishing a failure result failed");
        }
    }
}

/// Returns a delivery to its queue (a no-op when its channel is gone: the broker already has
/// it back).
async fn nack_requeue(acker: &Acker) {
    let _ = acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
}
