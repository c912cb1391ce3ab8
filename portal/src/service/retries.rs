//! Async retries as the portal sees them: a function spec's `retries` and `max_event_age_s`
//! (checked against the contract's bounds in `schemas::rules`), and the user's dead letters —
//! runs whose last attempt failed or whose event grew too old (`RunDoc::dead_letter`, written
//! by the worker with the final record): list, redrive (a new async run with the same args on
//! the function's current version) and delete. Another user's dead letter is a 404.

use bson::doc;
use futures::TryStreamExt;
use schemas::names::collections;
use schemas::rules::{DEFAULT_MAX_EVENT_AGE_S, DEFAULT_RETRIES, MAX_EVENT_AGE_S, RETRIES};
use schemas::{InvocationMsg, Mode, RunDoc};
use serde_json::{json, Value};

use super::{coll, db_err};
use crate::error::PortalError;
use crate::service::functions::FunctionSpec;
use crate::state::State;

/// Most dead letters listed at once (newest first).
pub const LIST_LIMIT: i64 = 1000;

/// A spec's `(retries, max_event_age_s)`; omitted ones are the stored function's (`old`, on
/// an update) or the defaults. 400 outside the bounds (`max_event_age_s` may go down to
/// `min_event_age_s`, the portal's test knob).
pub fn check_spec(
    spec: &FunctionSpec,
    old: Option<&schemas::FunctionDoc>,
    min_event_age_s: u64,
) -> Result<(u32, u64), PortalError> {
    let retries = spec
        .retries
        .unwrap_or(old.map_or(DEFAULT_RETRIES, |f| f.retries));
    if !(RETRIES.0..=RETRIES.1).contains(&retries) {
        return Err(PortalError::invalid(
            "retries",
            format!(
                "must be between {} and {} (got {retries})",
                RETRIES.0, RETRIES.1
            ),
        ));
    }
    let age = spec
        .max_event_age_s
        .unwrap_or(old.map_or(DEFAULT_MAX_EVENT_AGE_S, |f| f.max_event_age_s));
    let lo = min_event_age_s.min(MAX_EVENT_AGE_S.0);
    if !(lo..=MAX_EVENT_AGE_S.1).contains(&age) {
        return Err(PortalError::invalid(
            "max_event_age_s",
            format!(
                "must be between {lo} and {} seconds (got {age})",
                MAX_EVENT_AGE_S.1
            ),
        ));
    }
    Ok((retries, age))
}

fn runs(st: &State) -> mongodb::Collection<RunDoc> {
    coll(st, collections::RUNS)
}

/// The filter of the user's live dead letters (not being redriven).
fn live(user_id: &str) -> bson::Document {
    doc! {
        "user_id": user_id,
        "dead_letter": {"$exists": true},
        "dead_letter.redriven_as": {"$exists": false},
    }
}

/// The user's dead letters, newest first.
pub async fn list(st: &State, user_id: &str) -> Result<Vec<RunDoc>, PortalError> {
    runs(st)
        .find(live(user_id))
        .sort(doc! {"dead_letter.failed_at_ms": -1})
        .limit(LIST_LIMIT)
        .await
        .map_err(db_err("listing dead letters"))?
        .try_collect()
        .await
        .map_err(db_err("listing dead letters"))
}

/// One of the user's dead letters; 404 when it is not theirs or not a dead letter.
pub async fn get(st: &State, user_id: &str, run_id: &str) -> Result<RunDoc, PortalError> {
    let mut f = live(user_id);
    f.insert("_id", run_id);
    runs(st)
        .find_one(f)
        .await
        .map_err(db_err("reading a dead letter"))?
        .ok_or(PortalError::NotFound("dead letter"))
}

/// The contract's dead letter: `{run_id, function, failed_at, attempts, error}` (plus the
/// run's `version` and `args`, which the page shows and a redrive reuses).
pub fn dead_letter_json(d: &RunDoc) -> Value {
    let failed_at = d
        .dead_letter
        .as_ref()
        .map_or(d.finished_at_ms.unwrap_or(d.created_at_ms), |l| {
            l.failed_at_ms
        });
    json!({
        "run_id": d.id,
        "function": d.function,
        "version": d.version,
        "failed_at": super::rfc3339(failed_at),
        "attempts": d.attempts.len(),
        "error": d.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
        "args": serde_json::from_str::<Value>(&d.args_json).unwrap_or(Value::Null),
    })
}

/// Deletes a dead letter (the run itself stays, final); 404 when there is none.
pub async fn delete(st: &State, user_id: &str, run_id: &str) -> Result<(), PortalError> {
    let mut f = live(user_id);
    f.insert("_id", run_id);
    let r = runs(st)
        .update_one(f, doc! {"$unset": {"dead_letter": ""}})
        .await
        .map_err(db_err("deleting a dead letter"))?;
    if r.matched_count == 0 {
        return Err(PortalError::NotFound("dead letter"));
    }
    Ok(())
}

/// Starts a new async run of the dead letter's function (current version) with the same
/// args, reserving its worst case like the gateway; the dead letter goes once the new run is
/// published. The dead letter is claimed first, so two redrives of it start one run (the
/// second is a 404). 402/429 as an invoke; 404 when the function is gone; 503 without
/// RabbitMQ (the dead letter is kept).
pub async fn redrive(st: &State, user_id: &str, run_id: &str) -> Result<String, PortalError> {
    let old = get(st, user_id, run_id).await?;
    let func = super::functions::find(st, user_id, &old.function)
        .await?
        .ok_or(PortalError::NotFound("function"))?;
    let args: Value = serde_json::from_str(&old.args_json).unwrap_or_else(|_| json!({}));
    let new_id = uuid::Uuid::now_v7().to_string();
    // Claim it: only one redrive of a dead letter goes ahead.
    let mut claim = live(user_id);
    claim.insert("_id", run_id);
    let claimed = runs(st)
        .update_one(claim, doc! {"$set": {"dead_letter.redriven_as": &new_id}})
        .await
        .map_err(db_err("claiming a dead letter"))?;
    if claimed.matched_count == 0 {
        return Err(PortalError::NotFound("dead letter"));
    }
    match start(st, user_id, &func, args, &new_id).await {
        Ok(()) => {
            runs(st)
                .update_one(
                    doc! {"_id": run_id, "dead_letter.redriven_as": &new_id},
                    doc! {"$unset": {"dead_letter": ""}},
                )
                .await
                .map_err(db_err("removing a redriven dead letter"))?;
            tracing::info!(user_id, run_id, new_run_id = new_id, "dead letter redriven");
            Ok(new_id)
        }
        Err(e) => {
            let _ = runs(st)
                .update_one(
                    doc! {"_id": run_id, "dead_letter.redriven_as": &new_id},
                    doc! {"$unset": {"dead_letter.redriven_as": ""}},
                )
                .await;
            Err(e)
        }
    }
}

/// Accepts a new async run of `func` as the gateway does: reservation, pending record,
/// confirmed publish.
async fn start(
    st: &State,
    user_id: &str,
    func: &schemas::FunctionDoc,
    args: Value,
    run_id: &str,
) -> Result<(), PortalError> {
    use common::runstore::{pending_doc, RunWrite};
    use gateway::GatewayError;
    let inv_ = &st.invoker;
    let prices = inv_
        .prices
        .current(&st.db)
        .await
        .map_err(|e| PortalError::Invoke(GatewayError::Unavailable(format!("{e:#}"))))?;
    let worst = prices.invocation_worst_case(func, Mode::Async);
    let reservation = match accounts::reserve(
        &st.db,
        user_id,
        worst,
        false,
        &accounts::Limits::default(),
    )
    .await
    {
        Ok(r) => r,
        Err(accounts::ReserveError::UnknownUser) => return Err(PortalError::Unauthorized),
        Err(e) => return Err(PortalError::Invoke(e.into())),
    };
    if !inv_.broker.is_connected() {
        return Err(PortalError::Invoke(GatewayError::Unavailable(
            "RabbitMQ is not connected; try again shortly".into(),
        )));
    }
    let inv = InvocationMsg {
        hold: Some(reservation.hold()),
        ..InvocationMsg::of_function(
            func,
            run_id.to_owned(),
            args,
            Mode::Async,
            schemas::now_ms(),
        )
    };
    inv_.writer
        .write_durable(RunWrite::Pending(Box::new(pending_doc(&inv))))
        .await
        .map_err(|e| PortalError::Unavailable(format!("storing the run failed: {e:#}")))?;
    reservation.hand_over();
    if let Err(e) = inv_.broker.publish_invocation(&inv).await {
        tracing::warn!(run_id, error = %e, "a redriven invocation was not published");
        let d = gateway::unpublished_doc(&inv, &e.to_string());
        inv_.writer.write(RunWrite::Finished(Box::new(d))).await;
        return Err(PortalError::Invoke(GatewayError::Unavailable(format!(
            "{e}; try again shortly"
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(retries: Option<u32>, age: Option<u64>) -> FunctionSpec {
        FunctionSpec {
            retries,
            max_event_age_s: age,
            ..Default::default()
        }
    }

    fn check_spec_(s: &FunctionSpec, min: u64) -> Result<(u32, u64), PortalError> {
        check_spec(s, None, min)
    }

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(check_spec_(&spec(None, None), 60).unwrap(), (2, 21_600));
        assert_eq!(check_spec_(&spec(Some(0), Some(60)), 60).unwrap(), (0, 60));
        assert!(check_spec_(&spec(Some(3), None), 60).is_err());
        assert!(check_spec_(&spec(None, Some(59)), 60).is_err());
        assert!(check_spec_(&spec(None, Some(21_601)), 60).is_err());
        // The test knob lowers the minimum only.
        assert_eq!(check_spec_(&spec(None, Some(2)), 1).unwrap(), (2, 2));
        assert!(check_spec_(&spec(None, Some(0)), 1).is_err());
    }
}
