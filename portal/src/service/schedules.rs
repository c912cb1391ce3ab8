//! Schedules of a user's functions: create (the expression is checked, and its interval
//! against the platform's minimum), list, pause/resume and delete. Only the leading dispatcher
//! fires them (`dispatcher::schedules`); this module only stores them. Other users' schedules
//! are 404, like a missing one.

use bson::doc;
use common::schedule::{rate_anchor, Expr};
use futures::TryStreamExt;
use mongodb::Collection;
use schemas::names::collections;
use schemas::schedules::{ScheduleDoc, MAX_SCHEDULES_PER_FUNCTION};
use schemas::FunctionDoc;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{coll, db_err, functions};
use crate::error::PortalError;
use crate::state::State;

/// Largest `args` of a schedule (bytes of JSON): an async invocation's body limit.
pub const ARGS_BYTES: usize = schemas::limits::ASYNC_BODY_BYTES as usize;

/// `POST /api/v1/functions/{name}/schedules`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewSchedule {
    #[serde(default)]
    pub expression: String,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

fn schedules(st: &State) -> Collection<ScheduleDoc> {
    coll(st, collections::SCHEDULES)
}

/// The contract's schedule: `{schedule_id, function, expression, args, enabled, next_run_at,
/// created_at}`; `next_run_at` is null while paused.
pub fn schedule_json(d: &ScheduleDoc) -> Value {
    let args: Value = serde_json::from_str(&d.args_json).unwrap_or(Value::Null);
    let next = (d.enabled && d.next_tick_ms < i64::MAX).then(|| super::rfc3339(d.next_tick_ms));
    json!({
        "schedule_id": d.id,
        "function": d.function,
        "expression": d.expression,
        "args": args,
        "enabled": d.enabled,
        "next_run_at": next,
        "created_at": super::rfc3339(d.created_at_ms),
    })
}

/// Parses `expression` and checks it against the minimum interval (400 `invalid` on
/// `expression` otherwise).
pub fn check_expression(expression: &str, min_ms: i64) -> Result<Expr, PortalError> {
    let e = Expr::parse(expression).map_err(|m| PortalError::invalid("expression", m))?;
    if e.min_interval_ms() < min_ms {
        return Err(PortalError::invalid(
            "expression",
            format!(
                "fires more often than the platform's minimum of one tick every {} s",
                min_ms / 1000
            ),
        ));
    }
    Ok(e)
}

/// The first tick of a schedule made or resumed at `now`.
fn first_tick(e: &Expr, anchor: i64, now: i64) -> i64 {
    e.next_after(anchor, now.max(anchor))
}

async fn function_of(st: &State, uid: &str, name: &str) -> Result<FunctionDoc, PortalError> {
    functions::find(st, uid, name)
        .await?
        .ok_or(PortalError::NotFound("function"))
}

/// Creates a schedule of the user's function `name`.
pub async fn create(
    st: &State,
    uid: &str,
    name: &str,
    req: &NewSchedule,
) -> Result<ScheduleDoc, PortalError> {
    let func = function_of(st, uid, name).await?;
    let expression = req.expression.trim().to_owned();
    let expr = check_expression(&expression, st.cfg.min_schedule_ms)?;
    let args = req
        .args
        .clone()
        .unwrap_or_else(|| Value::Object(Default::default()));
    gateway::args::validate(&func.args_schema, &args)
        .map_err(|m| PortalError::invalid("args", m))?;
    let args_json = args.to_string();
    if args_json.len() > ARGS_BYTES {
        return Err(PortalError::invalid(
            "args",
            format!("larger than {ARGS_BYTES} bytes of JSON"),
        ));
    }
    let count = schedules(st)
        .count_documents(doc! {"user_id": uid, "function_id": &func.id})
        .await
        .map_err(db_err("counting schedules"))?;
    if count >= MAX_SCHEDULES_PER_FUNCTION {
        return Err(PortalError::invalid(
            "expression",
            format!("a function has at most {MAX_SCHEDULES_PER_FUNCTION} schedules"),
        ));
    }
    let now = schemas::now_ms();
    let anchor = rate_anchor(now);
    let d = ScheduleDoc {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: uid.to_owned(),
        function_id: func.id.clone(),
        function: func.name.clone(),
        expression,
        args_json,
        enabled: req.enabled.unwrap_or(true),
        next_tick_ms: first_tick(&expr, anchor, anchor),
        anchor_ms: anchor,
        created_at_ms: now,
        updated_at_ms: now,
    };
    schedules(st)
        .insert_one(&d)
        .await
        .map_err(db_err("storing the schedule"))?;
    tracing::info!(
        user_id = uid,
        function = name,
        schedule_id = d.id,
        expression = d.expression,
        "schedule created"
    );
    Ok(d)
}

/// The schedules of the user's function `name`, oldest first (404 without the function).
pub async fn list(st: &State, uid: &str, name: &str) -> Result<Vec<ScheduleDoc>, PortalError> {
    let func = function_of(st, uid, name).await?;
    schedules(st)
        .find(doc! {"user_id": uid, "function_id": &func.id})
        .sort(doc! {"created_at_ms": 1})
        .await
        .map_err(db_err("listing schedules"))?
        .try_collect()
        .await
        .map_err(db_err("listing schedules"))
}

/// Deletes one of the user's schedules (404 otherwise).
pub async fn delete(st: &State, uid: &str, id: &str) -> Result<(), PortalError> {
    let r = schedules(st)
        .delete_one(doc! {"_id": id, "user_id": uid})
        .await
        .map_err(db_err("deleting the schedule"))?;
    if r.deleted_count == 0 {
        return Err(PortalError::NotFound("schedule"));
    }
    Ok(())
}

/// Pauses (`false`) or resumes (`true`) one of the user's schedules. Ticks that fell while it
/// was paused are not run: a resumed schedule fires from its next tick after now.
pub async fn set_enabled(
    st: &State,
    uid: &str,
    id: &str,
    enabled: bool,
) -> Result<ScheduleDoc, PortalError> {
    let current = schedules(st)
        .find_one(doc! {"_id": id, "user_id": uid})
        .await
        .map_err(db_err("reading the schedule"))?
        .ok_or(PortalError::NotFound("schedule"))?;
    if current.enabled == enabled {
        return Ok(current);
    }
    let now = schemas::now_ms();
    let mut set = doc! {"enabled": enabled, "updated_at_ms": now};
    if enabled {
        let next = Expr::parse(&current.expression)
            .map(|e| first_tick(&e, current.anchor_ms, now))
            .unwrap_or(i64::MAX);
        set.insert("next_tick_ms", next);
    }
    schedules(st)
        .update_one(doc! {"_id": id, "user_id": uid}, doc! {"$set": set})
        .await
        .map_err(db_err("updating the schedule"))?;
    schedules(st)
        .find_one(doc! {"_id": id, "user_id": uid})
        .await
        .map_err(db_err("reading the schedule"))?
        .ok_or(PortalError::NotFound("schedule"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_checked_against_the_minimum() {
        assert!(check_expression("rate(1 minute)", 60_000).is_ok());
        assert!(check_expression("cron(*/5 * * * *)", 60_000).is_ok());
        let e = check_expression("rate(30 seconds)", 60_000).unwrap_err();
        assert!(e.to_string().contains("minimum"), "{e}");
        assert!(check_expression("rate(1 second)", 1000).is_ok());
        assert!(check_expression("every minute", 1000).is_err());
    }

    #[test]
    fn first_ticks() {
        let e = Expr::parse("rate(10 seconds)").unwrap();
        assert_eq!(first_tick(&e, 1_000, 1_000), 11_000);
        assert_eq!(first_tick(&e, 1_000, 25_000), 31_000);
    }

    #[test]
    fn paused_schedules_have_no_next_run() {
        let mut d = ScheduleDoc {
            id: "s".into(),
            user_id: "u".into(),
            function_id: "f".into(),
            function: "echo".into(),
            expression: "rate(1 minute)".into(),
            args_json: "{\"a\":1}".into(),
            enabled: true,
            next_tick_ms: 60_000,
            anchor_ms: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        assert_eq!(schedule_json(&d)["next_run_at"], "1970-01-01T00:01:00.000Z");
        assert_eq!(schedule_json(&d)["args"]["a"], 1);
        d.enabled = false;
        assert!(schedule_json(&d)["next_run_at"].is_null());
    }
}
