//! Firing many due ticks together (group commit): the same steps as [`super::fire`], with one
//! read of the schedules, one `insert` of the run records and one `update` moving the
//! schedules on for the whole batch, and the reservations and publishes concurrent. Ticks off
//! the common path — a schedule whose function is gone, a tick past the maximum age, a run
//! record that already exists (a previous leader got that far) — take the one-tick path,
//! which handles them.

use std::collections::HashMap;

use bson::doc;
use common::runstore::pending_doc;
use common::schedule::{tick_run_id, Expr};
use futures::future::join_all;
use futures::TryStreamExt;
use schemas::names::collections;
use schemas::schedules::{enabled_filter, ScheduleDoc};
use schemas::FunctionDoc;

use super::fire::{self, Fired};
use super::Ctx;

/// What the batch did for each tick.
pub type Outcomes = Vec<(String, i64, anyhow::Result<Fired>)>;

/// Fires `due` (schedule id, tick) together; one outcome per tick.
pub async fn fire_batch(ctx: &Ctx, due: Vec<(String, i64)>) -> Outcomes {
    match run(ctx, &due).await {
        Ok(out) => out,
        Err(e) => due
            .into_iter()
            .map(|(id, t)| (id, t, Err(anyhow::anyhow!("{e:#}"))))
            .collect(),
    }
}

struct Ready {
    id: String,
    tick: i64,
    next: i64,
    func: FunctionDoc,
    inv: schemas::InvocationMsg,
}

async fn run(ctx: &Ctx, due: &[(String, i64)]) -> anyhow::Result<Outcomes> {
    let ids: Vec<&str> = due.iter().map(|(id, _)| id.as_str()).collect();
    let found: HashMap<String, ScheduleDoc> = ctx
        .db
        .collection::<ScheduleDoc>(collections::SCHEDULES)
        .find(doc! {"_id": {"$in": ids}, "enabled": enabled_filter()})
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let mut out: Outcomes = Vec::new();
    let mut slow: Vec<(String, i64)> = Vec::new();
    let mut ready: Vec<Ready> = Vec::new();
    let now = schemas::now_ms();
    for (id, tick) in due {
        let Some(s) = found.get(id).filter(|s| s.next_tick_ms == *tick) else {
            out.push((id.clone(), *tick, Ok(Fired::Gone)));
            continue;
        };
        let Ok(expr) = Expr::parse(&s.expression) else {
            out.push((id.clone(), *tick, Ok(Fired::Gone)));
            continue;
        };
        let raw = match ctx.functions.get(&ctx.db, &s.function_id).await? {
            Some(raw) if now - tick <= fire::max_age_ms(&raw) => raw,
            _ => {
                slow.push((id.clone(), *tick));
                continue;
            }
        };
        let func: FunctionDoc = bson::from_document(raw)?;
        let next = expr.next_after(s.anchor_ms, tick + ctx.min_schedule_ms - 1);
        let inv = fire::invocation(s, &func, *tick, tick_run_id(id, *tick));
        ready.push(Ready {
            id: id.clone(),
            tick: *tick,
            next,
            func,
            inv,
        });
    }

    // Reservations, concurrently; then every record in one insert.
    let reservations = join_all(ready.iter().map(|r| fire::reserve(ctx, &r.func))).await;
    let mut docs = Vec::with_capacity(ready.len());
    let mut held = Vec::with_capacity(ready.len());
    for (r, res) in ready.iter_mut().zip(reservations) {
        let d = match res {
            Ok(resv) => {
                r.inv.hold = Some(resv.hold());
                held.push(Some(resv));
                let mut d = pending_doc(&r.inv);
                d.schedule_id = Some(r.id.clone());
                d
            }
            Err(accounts::ReserveError::Internal(e)) => return Err(e),
            Err(e) => {
                held.push(None);
                fire::refused_doc(&r.inv, &r.id, &e.to_string())
            }
        };
        docs.push(bson::to_document(&d)?);
    }
    let dups =
        common::wire::insert(&ctx.db, collections::RUNS, docs, "storing scheduled runs").await?;

    // Publishes, concurrently; duplicates go the one-tick way (their reservation is released).
    let mut advanced = Vec::new();
    let mut publishes = Vec::new();
    for (i, (r, resv)) in ready.iter().zip(held).enumerate() {
        if dups.contains(&i) {
            drop(resv);
            slow.push((r.id.clone(), r.tick));
            continue;
        }
        match resv {
            Some(resv) => {
                resv.hand_over();
                publishes.push(r);
            }
            None => advanced.push((r, Fired::Refused { next_ms: r.next })),
        }
    }
    let published = join_all(publishes.iter().map(|r| publish(ctx, &r.inv))).await;
    for (r, p) in publishes.into_iter().zip(published) {
        match p {
            Ok(()) => advanced.push((
                r,
                Fired::Ran {
                    next_ms: r.next,
                    late_ms: 0,
                },
            )),
            Err(e) => out.push((r.id.clone(), r.tick, Err(e))),
        }
    }

    // Every fired schedule moves on in one update.
    let statements = advanced
        .iter()
        .map(|(r, _)| {
            doc! {
                "q": {"_id": &r.id, "enabled": enabled_filter(), "next_tick_ms": r.tick},
                "u": {"$set": {"next_tick_ms": r.next}},
            }
        })
        .collect();
    common::wire::update(
        &ctx.db,
        collections::SCHEDULES,
        statements,
        "moving schedules on",
    )
    .await?;
    let done = schemas::now_ms();
    for (r, f) in advanced {
        let f = match f {
            Fired::Ran { next_ms, .. } => Fired::Ran {
                next_ms,
                late_ms: done - r.tick,
            },
            f => f,
        };
        out.push((r.id.clone(), r.tick, Ok(f)));
    }
    for (id, tick) in slow {
        let r = fire::fire(ctx, &id, tick).await;
        out.push((id, tick, r));
    }
    Ok(out)
}

async fn publish(ctx: &Ctx, inv: &schemas::InvocationMsg) -> anyhow::Result<()> {
    let body = serde_json::to_vec(inv)?;
    ctx.link
        .publish_confirmed(
            "",
            &ctx.link.names().invocations_queue(),
            &body,
            common::amqp::props("invocation", true),
            std::time::Duration::from_secs(5),
        )
        .await
        .map_err(|e| anyhow::anyhow!("publishing a scheduled invocation: {e}"))
}
