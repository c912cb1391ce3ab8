//! Firing one tick of one schedule, exactly once across dispatchers:
//! 1. the schedule is read again: still enabled and still due at this tick (else nothing);
//! 2. the tick's worst case is reserved on the user's account, as the gateway does; a tick
//!    that cannot be covered is recorded as a failed run (`schedule_refused`, not billed) and
//!    not published;
//! 3. the run record is inserted `pending` under the tick's deterministic id
//!    (`common::schedule::tick_run_id`) — a duplicate means another leader got this far: its
//!    reservation is kept, ours released, and the invocation published again only if the run
//!    is still `pending` (marked as a repeat, so workers check the record before running it);
//! 4. the invocation is published (confirmed) to the invocations queue;
//! 5. the schedule moves to its next tick with a conditional update from this tick.
//!
//! A leader dying anywhere in between leaves the schedule at this tick, and the next leader
//! repeats the steps: the insert of step 3 is what a tick can happen at most once on.

use std::time::Duration;

use bson::doc;
use common::runstore::pending_doc;
use common::schedule::{tick_run_id, Expr};
use schemas::names::collections;
use schemas::schedules::{ScheduleDoc, DEFAULT_MAX_TICK_AGE_MS, SCHEDULE_REFUSED};
use schemas::{BillState, FunctionDoc, InvocationMsg, Mode, RunDoc, RunError, RunStatus};

use super::Ctx;

/// What firing a tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// A run was published (or found already running) for the tick; the schedule's next tick.
    Ran { next_ms: i64, late_ms: i64 },
    /// The user's credit or limits could not cover the tick: recorded as a refused run.
    Refused { next_ms: i64 },
    /// The tick (and any before it) was older than the maximum age: skipped.
    Skipped { next_ms: i64 },
    /// The schedule changed (paused, deleted, moved on by another leader) or its function is
    /// gone: nothing fired.
    Gone,
}

impl Fired {
    /// The schedule's next tick, when it still has one to fire here.
    pub fn next_ms(&self) -> Option<i64> {
        match self {
            Fired::Ran { next_ms, .. }
            | Fired::Refused { next_ms }
            | Fired::Skipped { next_ms } => Some(*next_ms),
            Fired::Gone => None,
        }
    }
}

/// The function's `max_event_age_s` when it has one (a v1.1 field), else 6 h, in ms.
pub(super) fn max_age_ms(func: &bson::Document) -> i64 {
    match func.get("max_event_age_s") {
        Some(v) => {
            let s = schemas::lenient::int(Some(v));
            if s > 0 {
                s * 1000
            } else {
                DEFAULT_MAX_TICK_AGE_MS
            }
        }
        None => DEFAULT_MAX_TICK_AGE_MS,
    }
}

pub(super) fn invocation(
    s: &ScheduleDoc,
    f: &FunctionDoc,
    tick_ms: i64,
    run_id: String,
) -> InvocationMsg {
    // The run is the tick's: it was due then.
    InvocationMsg::of_function(
        f,
        run_id,
        serde_json::from_str(&s.args_json).unwrap_or_default(),
        Mode::Async,
        tick_ms,
    )
}

/// The record of a tick refused for credit or limits: final, failed, not billed.
pub(super) fn refused_doc(inv: &InvocationMsg, schedule_id: &str, why: &str) -> RunDoc {
    let mut d = pending_doc(inv);
    d.status = RunStatus::Failed;
    d.error = Some(RunError::new(
        SCHEDULE_REFUSED,
        format!("the scheduled run was not started: {why}"),
    ));
    d.bill_state = BillState::Exempt;
    d.finished_at_ms = Some(schemas::now_ms());
    d.schedule_id = Some(schedule_id.to_owned());
    d
}

/// Fires tick `tick_ms` of schedule `id` (see the module doc).
pub async fn fire(ctx: &Ctx, id: &str, tick_ms: i64) -> anyhow::Result<Fired> {
    let schedules = ctx.db.collection::<ScheduleDoc>(collections::SCHEDULES);
    let Some(s) = schedules
        .find_one(doc! {"_id": id, "enabled": schemas::schedules::enabled_filter(), "next_tick_ms": tick_ms})
        .await?
    else {
        return Ok(Fired::Gone);
    };
    let Ok(expr) = Expr::parse(&s.expression) else {
        return Ok(Fired::Gone);
    };
    let raw = ctx.functions.get(&ctx.db, &s.function_id).await?;
    let Some(raw) = raw else {
        // The function was deleted (or replaced under a new id): its schedules go with it.
        schedules.delete_one(doc! {"_id": id}).await?;
        tracing::info!(
            schedule_id = id,
            "the schedule's function is gone; schedule deleted"
        );
        return Ok(Fired::Gone);
    };
    let func: FunctionDoc = bson::from_document(raw.clone())?;
    let now = schemas::now_ms();
    let max_age = max_age_ms(&raw);
    if now - tick_ms > max_age {
        let next = expr.next_after(s.anchor_ms, now - max_age);
        tracing::warn!(
            schedule_id = id,
            tick_ms,
            next,
            "ticks older than the maximum event age are skipped"
        );
        return Ok(if advance(ctx, &s, tick_ms, next).await? {
            Fired::Skipped { next_ms: next }
        } else {
            Fired::Gone
        });
    }
    let next = expr.next_after(s.anchor_ms, tick_ms + ctx.min_schedule_ms - 1);
    let mut inv = invocation(&s, &func, tick_ms, tick_run_id(id, tick_ms));
    let refused = match reserve(ctx, &func).await {
        Ok(r) => {
            inv.hold = Some(r.hold());
            start(ctx, &s, &inv, r).await?;
            None
        }
        Err(accounts::ReserveError::Internal(e)) => return Err(e),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = &refused {
        let d = refused_doc(&inv, id, why);
        let runs = ctx.db.collection::<RunDoc>(collections::RUNS);
        match runs.insert_one(&d).await {
            Ok(_) => {}
            Err(e) if common::mongo::is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            schedule_id = id,
            run_id = inv.run_id,
            reason = why,
            "a scheduled tick was refused"
        );
    }
    if !advance(ctx, &s, tick_ms, next).await? {
        return Ok(Fired::Gone);
    }
    Ok(match refused {
        Some(_) => Fired::Refused { next_ms: next },
        None => Fired::Ran {
            next_ms: next,
            late_ms: schemas::now_ms() - tick_ms,
        },
    })
}

pub(super) async fn reserve(
    ctx: &Ctx,
    func: &FunctionDoc,
) -> Result<accounts::Reservation, accounts::ReserveError> {
    let prices = ctx.prices.current(&ctx.db).await?;
    let worst = prices.invocation_worst_case(func, Mode::Async);
    accounts::reserve(&ctx.db, &func.user_id, worst, false, &ctx.limits).await
}

/// Steps 3 and 4: the record under the tick's run id, then the publish.
async fn start(
    ctx: &Ctx,
    s: &ScheduleDoc,
    inv: &InvocationMsg,
    reservation: accounts::Reservation,
) -> anyhow::Result<()> {
    let runs = ctx.db.collection::<RunDoc>(collections::RUNS);
    let mut d = pending_doc(inv);
    d.schedule_id = Some(s.id.clone());
    let repeat = match runs.insert_one(&d).await {
        Ok(_) => {
            reservation.hand_over();
            false
        }
        Err(e) if common::mongo::is_duplicate_key(&e) => {
            // Another leader inserted it (with its own reservation); ours is released on drop.
            drop(reservation);
            let existing = runs.find_one(doc! {"_id": &inv.run_id}).await?;
            match existing {
                Some(r) if r.status == RunStatus::Pending => {}
                // Published and running or finished already.
                _ => return Ok(()),
            }
            true
        }
        Err(e) => return Err(e.into()),
    };
    let mut inv = inv.clone();
    if repeat {
        if let Ok(Some(r)) = runs.find_one(doc! {"_id": &inv.run_id}).await {
            inv.hold = r.hold;
        }
    }
    let body = serde_json::to_vec(&inv)?;
    let props = common::amqp::props("invocation", true);
    let props = if repeat {
        common::amqp::mark_repeat(props)
    } else {
        props
    };
    ctx.link
        .publish_confirmed(
            "",
            &ctx.link.names().invocations_queue(),
            &body,
            props,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| anyhow::anyhow!("publishing a scheduled invocation: {e}"))?;
    Ok(())
}

/// Step 5: moves the schedule from `tick_ms` to `next_ms`, unless it changed meanwhile.
async fn advance(ctx: &Ctx, s: &ScheduleDoc, tick_ms: i64, next_ms: i64) -> anyhow::Result<bool> {
    let r = ctx
        .db
        .collection::<ScheduleDoc>(collections::SCHEDULES)
        .update_one(
            doc! {"_id": &s.id, "enabled": schemas::schedules::enabled_filter(), "next_tick_ms": tick_ms},
            doc! {"$set": {"next_tick_ms": next_ms}},
        )
        .await?;
    Ok(r.modified_count == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_defaults_to_six_hours() {
        assert_eq!(max_age_ms(&doc! {}), 21_600_000);
        assert_eq!(max_age_ms(&doc! {"max_event_age_s": 60}), 60_000);
        assert_eq!(max_age_ms(&doc! {"max_event_age_s": 60_i64}), 60_000);
        assert_eq!(
            max_age_ms(&doc! {"max_event_age_s": bson::Bson::Null}),
            21_600_000
        );
    }
}
