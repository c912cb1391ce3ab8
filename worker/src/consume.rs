//! The worker's task loop on the RabbitMQ link: on every connection it consumes its own queue
//! again; each delivery is handled once per run (a redelivery joins the run it repeats); a
//! finished run is stored first (read after answer), then its result is published — only by the
//! execution whose final record landed — and then its deliveries are acknowledged.
//!
//! Broker outages cost nothing in flight: runs keep going while the link reconnects, their
//! results wait for the next connection, and a delivery whose channel died is redelivered to
//! this worker and acknowledged then without running again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::amqp::{self, Backoff, Session};
use common::runstore::{result_of, RunWrite};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::Acker;
use lapin::{BasicProperties, Consumer};
use schemas::names;
use schemas::{EpochMsg, InvocationMsg, ResultMsg, RunDoc, RunningTask, TaskMsg, MESSAGE_VERSION};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::{retry, Inner, RunState, RUNNING_RECORD_AFTER};

/// Setting up the consumer failing this many times in a row on a live broker is not a
/// passing fault (e.g. the queue exists with other arguments): the worker exits.
const SETUP_FAILURES_FATAL: u32 = 20;

/// Consumes the worker's queue on every session of the link until `stop`; then cancels the
/// consumer and returns the tasks still running, to drain.
pub(crate) async fn consume_loop(
    inner: Arc<Inner>,
    mut stop: watch::Receiver<bool>,
) -> (tokio::task::JoinSet<()>, anyhow::Result<()>) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut setup_failures = 0u32;
    let worker_id = inner.cfg.worker_id.clone();
    loop {
        let s = tokio::select! {
            s = inner.link.session() => s,
            () = common::shutdown::until_set(&mut stop) => return (tasks, Ok(())),
        };
        let (ch, mut consumer) = match subscribe(&inner, &s).await {
            Ok(c) => {
                setup_failures = 0;
                backoff.reset();
                c
            }
            Err(e) => {
                setup_failures += 1;
                tracing::warn!(worker_id, error = %format!("{e:#}"), setup_failures, "subscribing to the task queue failed");
                if setup_failures >= SETUP_FAILURES_FATAL {
                    return (
                        tasks,
                        Err(e.context(format!(
                            "subscribing to the task queue failed {setup_failures} times in a row"
                        ))),
                    );
                }
                s.invalidate("subscribing to the task queue failed");
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
        };
        tracing::info!(
            worker_id,
            generation = s.generation,
            "consuming the task queue"
        );
        let lost = loop {
            tokio::select! {
                d = consumer.next() => match d {
                    Some(Ok(delivery)) => { tasks.spawn(handle(inner.clone(), delivery)); }
                    Some(Err(e)) => break format!("the task consumer failed: {e}"),
                    None => break "the task consumer was cancelled by the broker".to_owned(),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = s.lost() => break "connection lost".to_owned(),
                () = common::shutdown::until_set(&mut stop) => {
                    let _ = ch
                        .basic_cancel(worker_id.as_str().into(), BasicCancelOptions::default())
                        .await;
                    let _ = ch.close(200, "worker stopping".into()).await;
                    return (tasks, Ok(()));
                }
            }
        };
        tracing::warn!(
            worker_id,
            reason = lost,
            running = tasks.len(),
            "lost the task consumer; runs in progress go on"
        );
        s.invalidate(&lost);
    }
}

/// Declares the worker's queue and consumes it on a channel of its own.
async fn subscribe(inner: &Inner, s: &Session) -> anyhow::Result<(lapin::Channel, Consumer)> {
    let ch = s.conn.create_channel().await?;
    let queue = amqp::declare_worker_queue(&ch, &inner.names, &inner.cfg.worker_id).await?;
    ch.basic_qos(inner.cfg.prefetch, BasicQosOptions::default())
        .await?;
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            inner.cfg.worker_id.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
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
                ack(&d.acker).await;
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
    let span = tracing::info_span!(
        "run",
        run_id = task.invocation.run_id,
        function = task.invocation.function,
        version = task.invocation.version,
        worker_id = %worker_id,
    );
    handle_task(inner, d, task).instrument(span).await;
}

/// A readable task: fenced, deduplicated, run, completed.
async fn handle_task(inner: Arc<Inner>, d: Delivery, task: TaskMsg) {
    // Fencing: a task from a leader older than one we have heard from is not run; its
    // invocation goes back to the invocations queue for the current leader.
    let seen_epoch = inner.max_epoch.fetch_max(task.epoch, Ordering::SeqCst);
    if task.epoch < seen_epoch {
        inner.metrics.fenced.inc();
        tracing::warn!(
            epoch = task.epoch,
            current = seen_epoch,
            "refusing a task from a stale leader"
        );
        match requeue_invocation(&inner, &task.invocation).await {
            Ok(()) => ack(&d.acker).await,
            Err(e) => {
                tracing::error!(error = %e, "returning a fenced invocation failed; leaving it queued");
                let _ = d.reject(BasicRejectOptions { requeue: true }).await;
            }
        }
        return;
    }
    if !claim(&inner, &task.invocation, &d).await {
        return;
    }
    let inv = &task.invocation;
    let result = if retry::expired(inv, schemas::now_ms()) {
        tracing::info!("the event is older than its max_event_age_s; not running it");
        retry::expired_result(inv, &inner.cfg.worker_id, task.epoch)
    } else {
        run(&inner, &task).await
    };
    complete(&inner, inv, result).await;
}

/// Takes the run for this delivery: `false` when it is (or was) already handled here or
/// elsewhere — then this delivery is acknowledged when that handling ends, or at once.
async fn claim(inner: &Inner, inv: &InvocationMsg, d: &Delivery) -> bool {
    // One execution per (run, attempt, platform re-run).
    let key = retry::key(inv);
    let run_id = key.as_str();
    enum Seen {
        Running,
        Done,
        New,
    }
    let seen = {
        let mut runs = inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        match runs.get_mut(run_id) {
            Some(RunState::Running { ackers }) => {
                ackers.push(d.acker.clone());
                Seen::Running
            }
            Some(RunState::Done) => Seen::Done,
            None => Seen::New,
        }
    };
    match seen {
        Seen::Running => {
            inner.metrics.duplicates.inc();
            tracing::info!("a repeated delivery of a running run; acknowledged when it ends");
            false
        }
        Seen::Done => {
            inner.metrics.duplicates.inc();
            tracing::info!("a repeated delivery of a finished run; not running it again");
            ack(&d.acker).await;
            false
        }
        Seen::New => {
            if amqp::is_repeat(d.redelivered, &d.properties) {
                let stored = stored_run(inner, &inv.run_id).await;
                if let Some((next, delay_ms)) = stored
                    .as_ref()
                    .and_then(|s| retry::next_after_stored(inv, s))
                {
                    inner.metrics.duplicates.inc();
                    tracing::info!("a repeated task whose attempt is already stored; publishing its retry again, not running it");
                    if let Err(e) = publish_retry(inner, &next, delay_ms, true).await {
                        tracing::warn!(error = %e, "publishing a stored retry again failed; leaving the task queued");
                        return false;
                    }
                    inner
                        .runs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .put(run_id.to_owned(), RunState::Done);
                    ack(&d.acker).await;
                    return false;
                }
                if let Some(done) = stored.filter(|s| s.status.is_final()) {
                    inner.metrics.duplicates.inc();
                    tracing::info!("a repeated task whose run is already final; publishing its stored result, not running it");
                    // Its worker may have died between storing and publishing: publish again
                    // (the same result, so a consumer sees one execution).
                    if let Err(e) = publish_result(
                        inner,
                        inv,
                        &result_of(&done, inv.callback_url.clone()),
                        true,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "publishing a stored result failed");
                    }
                    inner
                        .runs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .put(run_id.to_owned(), RunState::Done);
                    ack(&d.acker).await;
                    return false;
                }
            }
            let mut runs = inner.runs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(RunState::Running { ackers }) = runs.get_mut(run_id) {
                // Another delivery of the same run registered while we looked it up.
                ackers.push(d.acker.clone());
                inner.metrics.duplicates.inc();
                return false;
            }
            runs.put(
                run_id.to_owned(),
                RunState::Running {
                    ackers: vec![d.acker.clone()],
                },
            );
            true
        }
    }
}

/// The run's record, to tell whether it is already final (finished by a worker that died
/// before acknowledging) or this attempt already stored. When that cannot be told, the run
/// goes ahead: had it finished elsewhere, this execution's record is refused and its result
/// never published.
async fn stored_run(inner: &Inner, run_id: &str) -> Option<RunDoc> {
    match common::runstore::stored_run(&inner.db, run_id).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot tell whether a repeated task already ran; running it");
            None
        }
    }
}

/// Runs the task. A run that ends quickly gets one record, its final one; a longer one is
/// first marked running (with this worker and epoch), so readers see it moving.
async fn run(inner: &Arc<Inner>, task: &TaskMsg) -> ResultMsg {
    let inv = &task.invocation;
    let started_at_ms = schemas::now_ms();
    inner
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            inv.run_id.clone(),
            RunningTask {
                run_id: inv.run_id.clone(),
                user_id: inv.user_id.clone(),
                demand: inv.resources,
                function_id: inv.function_id.clone(),
            },
        );
    let exec = crate::execute(inner, task, started_at_ms);
    tokio::pin!(exec);
    let result = tokio::select! {
        biased;
        r = &mut exec => r,
        () = tokio::time::sleep(RUNNING_RECORD_AFTER) => {
            inner
                .writer
                .write(RunWrite::Started {
                    run_id: inv.run_id.clone(),
                    worker_id: inner.cfg.worker_id.clone(),
                    epoch: task.epoch,
                    started_at_ms,
                })
                .await;
            exec.await
        }
    };
    inner
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&inv.run_id);
    inner.metrics.run_finished(result.status);
    tracing::debug!(
        status = result.status.as_str(),
        duration_ms = result.duration_ms,
        cold = result.cold_start,
        "run finished"
    );
    result
}

/// Ends an attempt ([`retry::plan`]): stores its record (waiting out a database outage) —
/// final, or pending with a retry due —, then, if this execution's record is the one that
/// landed, publishes the result and any retry; then acknowledges every delivery of it.
async fn complete(inner: &Inner, inv: &InvocationMsg, result: ResultMsg) {
    let key = retry::key(inv);
    let (doc, retry, result) = match retry::plan(inv, result, schemas::now_ms()) {
        retry::Plan::Final { doc, result } => (Some(doc), None, result),
        retry::Plan::Retry {
            doc,
            next,
            delay_ms,
            result,
        } => (Some(doc), Some((next, delay_ms)), result),
        retry::Plan::Rerun {
            next,
            delay_ms,
            result,
        } => (None, Some((next, delay_ms)), result),
    };
    let landed = match doc {
        None => true,
        Some(doc) => match inner.writer.finish(*doc).await {
            Ok(landed) => landed,
            Err(e) => {
                // Only at shutdown: leave the task unacknowledged; it runs again elsewhere.
                tracing::error!(error = %format!("{e:#}"), "the run record could not be stored; leaving the task queued");
                forget(inner, &key);
                return;
            }
        },
    };
    if landed {
        if let Some((next, delay_ms)) = &retry {
            inner.metrics.retried.inc();
            tracing::info!(
                attempt = next.retry.attempt,
                reruns = next.retry.reruns,
                delay_ms,
                "the attempt failed; retrying after the back-off"
            );
            if let Err(e) = publish_retry(inner, next, *delay_ms, false).await {
                // Only at shutdown: a redelivery finds the attempt stored and publishes the
                // retry then (or, for a platform re-run, runs it).
                tracing::error!(error = %e, "publishing a retry failed; leaving the task queued");
                forget(inner, &key);
                return;
            }
        }
        if let Err(e) = publish_result(inner, inv, &result, retry.is_none()).await {
            // Only when giving up at shutdown: the record holds the outcome; a redelivery
            // finds it final and is acknowledged without running.
            tracing::error!(error = %e, "publishing a result failed");
        }
    } else {
        tracing::info!(
            "the attempt was already recorded (finished elsewhere); not publishing this result"
        );
    }
    let ackers = {
        let mut runs = inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        match runs.put(key, RunState::Done) {
            Some(RunState::Running { ackers }) => ackers,
            _ => Vec::new(),
        }
    };
    for a in ackers {
        // A delivery of a dead channel fails here; the broker redelivers it and it is
        // acknowledged then, as a repeat of a finished run.
        ack(&a).await;
    }
}

/// Publishes the next attempt (or a platform re-run) to the broker's delay queue of
/// `delay_ms`, confirmed; `repeat` marks it as possibly published before.
async fn publish_retry(
    inner: &Inner,
    next: &InvocationMsg,
    delay_ms: u64,
    repeat: bool,
) -> Result<(), amqp::PublishError> {
    let body = serde_json::to_vec(next).map_err(|e| amqp::PublishError::Failed(e.to_string()))?;
    let mut props = amqp::props("invocation", true);
    if repeat {
        props = amqp::mark_repeat(props);
    }
    inner
        .link
        .publish_until_confirmed(
            "",
            &inner.names.retry_queue(delay_ms),
            &body,
            props,
            inner.give_up.subscribe(),
        )
        .await
}

/// Forgets a run that was not completed, so a redelivery runs it.
fn forget(inner: &Inner, run_id: &str) {
    inner
        .runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop(run_id);
}

async fn ack(a: &Acker) {
    if let Err(e) = a.ack(BasicAckOptions::default()).await {
        tracing::debug!(error = %e, "acknowledging a delivery failed (its channel is gone; it will be redelivered)");
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

async fn requeue_invocation(inner: &Inner, inv: &InvocationMsg) -> Result<(), amqp::PublishError> {
    let body = serde_json::to_vec(inv).map_err(|e| amqp::PublishError::Failed(e.to_string()))?;
    inner
        .link
        .publish_until_confirmed(
            "",
            &inner.names.invocations_queue(),
            &body,
            // Marked: the leader that sent it may still count it as running (see the
            // dispatcher's `on_invocation`).
            amqp::mark_repeat(amqp::props("invocation", true)),
            inner.give_up.subscribe(),
        )
        .await
}

/// Sends the result to the sync caller (if any; best effort, the caller falls back to the
/// stored record) and, confirmed, to the results exchange — again on the next connection if
/// this one dies first. Only results with a callback are persistent: they are the callback's
/// sole trigger. A plain result only lets dispatchers release the run's allocation, which
/// their heartbeat reconciliation also does.
async fn publish_result(
    inner: &Inner,
    inv: &InvocationMsg,
    r: &ResultMsg,
    is_final: bool,
) -> Result<(), amqp::PublishError> {
    let body = serde_json::to_vec(r).map_err(|e| amqp::PublishError::Failed(e.to_string()))?;
    if let Some(reply_to) = &inv.reply_to {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(inv.run_id.as_str().into());
        let sent = match inner.link.current() {
            Some(s) => s.publish("", reply_to, &body, props).await,
            None => Err(amqp::PublishError::NotConnected),
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "replying to the sync caller failed; it reads the record");
        }
    }
    // An attempt that will be retried is heard by dispatchers only (to release it): the
    // callback waits for the final outcome.
    let (key, persistent) = if !is_final {
        (names::RK_RESULT_ATTEMPT, false)
    } else if r.callback_url.is_some() {
        (names::RK_RESULT_CALLBACK, true)
    } else {
        (names::RK_RESULT_PLAIN, false)
    };
    inner
        .link
        .publish_until_confirmed(
            &inner.names.results_exchange(),
            key,
            &body,
            amqp::props("result", persistent).with_correlation_id(inv.run_id.as_str().into()),
            inner.give_up.subscribe(),
        )
        .await
}
