//! Async retries and dead letters, as the worker decides them when an attempt ends (contract
//! v1.1 "Retries and dead letters").
//!
//! - A failed or timed-out async attempt with attempts left is **retried**: its record is
//!   stored as `pending` with the attempt appended and `next_attempt_at` set, then the next
//!   attempt's invocation is published (confirmed) to the broker's delay queue of its back-off
//!   (`rules::RETRY_DELAYS_MS`: ~1 s, then ~4 s), which dead-letters it into the invocations
//!   queue when due; the dispatcher schedules it like any invocation (DRF). Only then is the
//!   task acknowledged. No process holds a waiting retry.
//! - A **platform** failure (`platform_*`: a container lost, the worker's own fault) of an
//!   async attempt is run again after ~1 s without using up an attempt, at most
//!   `rules::PLATFORM_RERUNS` times; it is not recorded as an attempt and not billed.
//! - An async event not started within its function's `max_event_age_s` of acceptance is not
//!   run: the run ends `failed` (`event_expired`), billed only for earlier attempts.
//! - Every other end is **final**. A final async failure is a dead letter.
//!
//! Exactly-once per attempt: a delivery is identified by (run id, attempt, re-run) ([`key`]);
//! the record write of attempt `n` is refused when attempt `n` is already stored (the
//! run writer's conditional write), so of two executions of one attempt only one is recorded,
//! billed and followed by a retry. A repeated delivery whose attempt is already stored publishes
//! the next attempt again (marked as a possible repeat) instead of running ([`next_after_stored`]).
//!
//! Money: every attempt is billed (its cost capped at what is left of the run's reservation,
//! which covers `1 + retries` worst cases); the reservation stays until the run is final, and
//! the final record settles the sum of the attempts once (`common::runstore`).

use common::runstore::finished_doc;
use schemas::rules::{PLATFORM_RERUNS, RETRY_DELAYS_MS};
use schemas::run_error_codes as codes;
use schemas::{
    Attempt, BillState, DeadLetter, InvocationMsg, Mode, ResultMsg, RunDoc, RunError, RunStatus,
};

/// What to do once an attempt has ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// Store the final record (`doc`), then publish `result` (the run's final outcome).
    Final { doc: Box<RunDoc>, result: ResultMsg },
    /// Store `doc` (pending, this attempt appended), then publish `next` to the delay queue of
    /// `delay_ms` and `result` for the dispatchers only.
    Retry {
        doc: Box<RunDoc>,
        next: Box<InvocationMsg>,
        delay_ms: u64,
        result: ResultMsg,
    },
    /// A platform failure: publish `next` (the same attempt) to the delay queue of `delay_ms`
    /// and `result` for the dispatchers only; nothing is stored.
    Rerun {
        next: Box<InvocationMsg>,
        delay_ms: u64,
        result: ResultMsg,
    },
}

/// The deduplication key of a delivery: one execution per (run, attempt, platform re-run).
pub(crate) fn key(inv: &InvocationMsg) -> String {
    format!("{}/{}/{}", inv.run_id, inv.retry.attempt, inv.retry.reruns)
}

/// The back-off before attempt `next_attempt` (2 → ~1 s, 3 → ~4 s; later ones wait as long as
/// the last).
pub(crate) fn backoff_ms(next_attempt: u32) -> u64 {
    let i = (next_attempt.saturating_sub(2) as usize).min(RETRY_DELAYS_MS.len() - 1);
    RETRY_DELAYS_MS[i]
}

/// Whether an event has waited too long to be started at `now_ms` (async only).
pub(crate) fn expired(inv: &InvocationMsg, now_ms: i64) -> bool {
    inv.mode == Mode::Async
        && inv
            .retry
            .max_event_age_s
            .is_some_and(|age| now_ms.saturating_sub(inv.created_at_ms) > (age as i64) * 1000)
}

/// The outcome of an event that was too old to start: failed, not run, not billed.
pub(crate) fn expired_result(inv: &InvocationMsg, worker_id: &str, epoch: u64) -> ResultMsg {
    let age = inv.retry.max_event_age_s.unwrap_or_default();
    ResultMsg {
        v: schemas::MESSAGE_VERSION,
        run_id: inv.run_id.clone(),
        user_id: inv.user_id.clone(),
        function_id: inv.function_id.clone(),
        function: inv.function.clone(),
        version: inv.version,
        worker_id: worker_id.to_owned(),
        epoch,
        status: RunStatus::Failed,
        result: None,
        error: Some(RunError::new(
            codes::EVENT_EXPIRED,
            format!("the event was not started within its function's max_event_age_s ({age} s); it was not run"),
        )),
        logs: String::new(),
        duration_ms: 0,
        cold_start: false,
        billed_micros: 0,
        resources: inv.resources,
        started_at_ms: None,
        finished_at_ms: schemas::now_ms(),
        callback_url: inv.callback_url.clone(),
        hold: inv.hold,
    }
}

fn is_expiry(r: &ResultMsg) -> bool {
    r.error
        .as_ref()
        .is_some_and(|e| e.code == codes::EVENT_EXPIRED)
}

/// This attempt as recorded, its cost capped at what the reservation has left after `spent`.
fn attempt_of(inv: &InvocationMsg, r: &ResultMsg, spent: i64) -> Attempt {
    let mut billed = r.billed_micros.max(0);
    if let Some(h) = &inv.hold {
        billed = billed.min((h.reserved_micros - spent).max(0));
    }
    if r.error.as_ref().is_some_and(RunError::is_platform) {
        billed = 0;
    }
    Attempt {
        attempt: inv.retry.attempt,
        status: r.status,
        error: r.error.clone(),
        duration_ms: r.duration_ms,
        billed_micros: billed,
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
    }
}

/// Decides what follows the end of an attempt (`r` is what the attempt produced, or
/// [`expired_result`]).
pub(crate) fn plan(inv: &InvocationMsg, mut r: ResultMsg, now_ms: i64) -> Plan {
    let is_async = inv.mode == Mode::Async;
    let platform = r.error.as_ref().is_some_and(RunError::is_platform);
    if is_async && platform && inv.retry.reruns < PLATFORM_RERUNS {
        let mut next = inv.clone();
        next.retry.reruns += 1;
        return Plan::Rerun {
            next: Box::new(next),
            delay_ms: RETRY_DELAYS_MS[0],
            result: r,
        };
    }
    let prior: i64 = inv.retry.attempts.iter().map(|a| a.billed_micros).sum();
    let mut attempts = inv.retry.attempts.clone();
    // The platform's failure (re-runs used up) and an expired event are no attempts.
    if !is_expiry(&r) && !platform {
        attempts.push(attempt_of(inv, &r, prior));
    }
    let total: i64 = attempts.iter().map(|a| a.billed_micros).sum();
    let failed = r.status != RunStatus::Succeeded;
    let mut doc = finished_doc(&r, inv.args.to_string(), inv.created_at_ms);
    doc.billed_micros = total;
    if total > 0 {
        doc.bill_state = BillState::Unbilled;
    } else if is_expiry(&r) {
        doc.bill_state = BillState::Exempt;
    }
    doc.attempts = attempts;
    let retry_left = inv.retry.attempt <= inv.retry.retries;
    if is_async && failed && !platform && !is_expiry(&r) && retry_left {
        let delay_ms = backoff_ms(inv.retry.attempt + 1);
        let mut next = inv.clone();
        next.retry.attempt += 1;
        next.retry.reruns = 0;
        next.retry.attempts = doc.attempts.clone();
        doc.status = RunStatus::Pending;
        doc.finished_at_ms = None;
        doc.next_attempt_at_ms = Some(now_ms + delay_ms as i64);
        doc.bill_state = BillState::Unbilled;
        return Plan::Retry {
            doc: Box::new(doc),
            next: Box::new(next),
            delay_ms,
            result: r,
        };
    }
    if is_async && failed {
        doc.dead_letter = Some(DeadLetter {
            failed_at_ms: r.finished_at_ms,
            redriven_as: None,
        });
    }
    r.billed_micros = total;
    Plan::Final {
        doc: Box::new(doc),
        result: r,
    }
}

/// For a repeated delivery of attempt `inv.retry.attempt` whose record already holds that
/// attempt and is not final (its retry was stored; its worker may have died before publishing
/// it): the next attempt's invocation, to publish again. `None` when the attempt is not stored.
pub(crate) fn next_after_stored(
    inv: &InvocationMsg,
    stored: &RunDoc,
) -> Option<(InvocationMsg, u64)> {
    let n = inv.retry.attempt as usize;
    if stored.status.is_final() || stored.attempts.len() < n {
        return None;
    }
    let mut next = inv.clone();
    next.retry.attempt = inv.retry.attempt + 1;
    next.retry.reruns = 0;
    next.retry.attempts = stored.attempts[..n].to_vec();
    let delay_ms = backoff_ms(next.retry.attempt);
    Some((next, delay_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{CodeKind, Hold, Resources, RetryState, Runtime};

    fn inv(mode: Mode, attempt: u32, retries: u32) -> InvocationMsg {
        InvocationMsg {
            v: 1,
            run_id: "r1".into(),
            user_id: "u".into(),
            function_id: "f".into(),
            function: "fails".into(),
            version: 1,
            runtime: Runtime::Python3,
            handler: "main.handle".into(),
            code_sha256: "00".into(),
            code_kind: CodeKind::Single,
            filename: "main.py".into(),
            resources: Resources::new(500, 128, 64),
            timeout_ms: 1000,
            mode,
            args: serde_json::json!({"a": 1}),
            reply_to: None,
            callback_url: None,
            created_at_ms: 1_000,
            hold: Some(Hold {
                reserved_micros: 300,
                sync: false,
            }),
            config: Default::default(),
            retry: RetryState {
                attempt,
                retries,
                max_event_age_s: Some(60),
                reruns: 0,
                attempts: (1..attempt)
                    .map(|a| Attempt {
                        attempt: a,
                        status: RunStatus::Failed,
                        error: None,
                        duration_ms: 5,
                        billed_micros: 100,
                        started_at_ms: Some(0),
                        finished_at_ms: 1,
                    })
                    .collect(),
            },
        }
    }

    fn result(status: RunStatus, code: Option<&str>, billed: i64) -> ResultMsg {
        ResultMsg {
            v: 1,
            run_id: "r1".into(),
            user_id: "u".into(),
            function_id: "f".into(),
            function: "fails".into(),
            version: 1,
            worker_id: "w".into(),
            epoch: 1,
            status,
            result: None,
            error: code.map(|c| RunError::new(c, "boom")),
            logs: String::new(),
            duration_ms: 5,
            cold_start: false,
            billed_micros: billed,
            resources: Resources::new(500, 128, 64),
            started_at_ms: Some(2),
            finished_at_ms: 3,
            callback_url: None,
            hold: None,
        }
    }

    #[test]
    fn back_off_is_one_then_four_seconds() {
        assert_eq!(backoff_ms(2), 1_000);
        assert_eq!(backoff_ms(3), 4_000);
        assert_eq!(backoff_ms(9), 4_000);
    }

    #[test]
    fn a_failed_async_attempt_with_attempts_left_is_retried() {
        let r = result(RunStatus::Failed, Some(codes::FUNCTION_ERROR), 100);
        let Plan::Retry {
            doc,
            next,
            delay_ms,
            ..
        } = plan(&inv(Mode::Async, 1, 2), r, 10_000)
        else {
            panic!("not a retry")
        };
        assert_eq!(delay_ms, 1_000);
        assert_eq!(doc.status, RunStatus::Pending);
        assert_eq!(doc.next_attempt_at_ms, Some(11_000));
        assert_eq!(doc.attempts.len(), 1);
        assert_eq!(doc.billed_micros, 100);
        assert!(doc.dead_letter.is_none());
        assert_eq!(next.retry.attempt, 2);
        assert_eq!(next.retry.attempts, doc.attempts);
    }

    #[test]
    fn the_last_failed_attempt_is_a_final_dead_letter_billed_the_sum() {
        let r = result(RunStatus::TimedOut, Some(codes::TIMEOUT), 100);
        let Plan::Final { doc, result } = plan(&inv(Mode::Async, 3, 2), r, 10_000) else {
            panic!("not final")
        };
        assert_eq!(doc.status, RunStatus::TimedOut);
        assert_eq!(
            doc.attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(doc.billed_micros, 300);
        assert_eq!(result.billed_micros, 300);
        assert!(doc.dead_letter.is_some());
        assert!(doc.next_attempt_at_ms.is_none());
    }

    #[test]
    fn attempts_never_bill_more_than_the_reservation() {
        // 200 already billed of 300 reserved: this attempt's 150 is cut to 100.
        let r = result(RunStatus::Failed, Some(codes::FUNCTION_ERROR), 150);
        let Plan::Final { doc, .. } = plan(&inv(Mode::Async, 3, 2), r, 0) else {
            panic!("not final")
        };
        assert_eq!(doc.billed_micros, 300);
        assert_eq!(doc.attempts[2].billed_micros, 100);
    }

    #[test]
    fn retries_zero_sync_and_success_are_final() {
        let failed = || result(RunStatus::Failed, Some(codes::FUNCTION_ERROR), 10);
        assert!(matches!(
            plan(&inv(Mode::Async, 1, 0), failed(), 0),
            Plan::Final { .. }
        ));
        let Plan::Final { doc, .. } = plan(&inv(Mode::Sync, 1, 2), failed(), 0) else {
            panic!("a sync call is never retried")
        };
        assert!(
            doc.dead_letter.is_none(),
            "sync failures are no dead letters"
        );
        let Plan::Final { doc, .. } = plan(
            &inv(Mode::Async, 2, 2),
            result(RunStatus::Succeeded, None, 10),
            0,
        ) else {
            panic!("success is final")
        };
        assert!(doc.dead_letter.is_none());
        assert_eq!(doc.billed_micros, 110);
    }

    #[test]
    fn platform_failures_rerun_the_same_attempt_a_bounded_number_of_times() {
        let lost = || result(RunStatus::Failed, Some(codes::PLATFORM_CONTAINER_LOST), 0);
        let mut i = inv(Mode::Async, 2, 2);
        for n in 1..=PLATFORM_RERUNS {
            let Plan::Rerun { next, .. } = plan(&i, lost(), 0) else {
                panic!("not a re-run")
            };
            assert_eq!(next.retry.attempt, 2);
            assert_eq!(next.retry.reruns, n);
            assert_ne!(key(&next), key(&i));
            i = *next;
        }
        let Plan::Final { doc, .. } = plan(&i, lost(), 0) else {
            panic!("re-runs are bounded")
        };
        // The earlier attempt stays billed; the platform's failure is not, and is no attempt.
        assert_eq!(doc.billed_micros, 100);
        assert_eq!(doc.attempts.len(), 1);
        assert_eq!(doc.bill_state, BillState::Unbilled);
        assert!(doc.dead_letter.is_some());
    }

    #[test]
    fn expiry() {
        let i = inv(Mode::Async, 1, 2);
        assert!(!expired(&i, 61_000));
        assert!(expired(&i, 61_001));
        assert!(!expired(&inv(Mode::Sync, 1, 2), 10_000_000));
        let Plan::Final { doc, .. } = plan(&i, expired_result(&i, "w", 1), 70_000) else {
            panic!("an expired event is final")
        };
        assert!(doc.attempts.is_empty());
        assert_eq!(doc.billed_micros, 0);
        assert_eq!(doc.bill_state, BillState::Exempt);
        assert!(doc.dead_letter.is_some());
    }

    #[test]
    fn a_stored_attempt_gives_the_next_one_again() {
        let i = inv(Mode::Async, 1, 2);
        let r = result(RunStatus::Failed, Some(codes::FUNCTION_ERROR), 100);
        let Plan::Retry { doc, next, .. } = plan(&i, r, 0) else {
            panic!()
        };
        let (again, delay) = next_after_stored(&i, &doc).unwrap();
        assert_eq!(again, *next);
        assert_eq!(delay, 1_000);
        // Not stored yet: run it.
        let mut unstored = (*doc).clone();
        unstored.attempts.clear();
        assert!(next_after_stored(&i, &unstored).is_none());
    }
}
