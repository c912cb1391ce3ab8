//! Schedules fired by the leading dispatcher only: started when it takes the lead, stopped
//! (aborted, in-flight ticks included) when it steps down. Each tick starts exactly one async
//! run (see [`fire`] for why a failover neither doubles nor skips one); ticks missed while no
//! dispatcher led are run late, once each, unless older than the function's
//! `max_event_age_s` (default 6 h).
//!
//! The loop keeps the ticks due within [`WINDOW`] in a timer heap: it reads the enabled
//! schedules due by then every [`REFRESH`] (new, resumed or late ones), fires the ticks due
//! in batches ([`batch`]: up to [`CONCURRENCY`] batches at once, ticks due meanwhile making
//! the next batch) and pushes the schedule's next tick straight back into the
//! heap when it falls within the window, so a fast schedule does not wait for a refresh.

pub mod batch;
pub mod fire;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bson::doc;
use common::amqp::Link;
use futures::TryStreamExt;
use mongodb::Database;
use schemas::names::collections;
use schemas::schedules::ScheduleDoc;
use tokio::task::JoinSet;

pub use fire::Fired;

/// How far ahead the loop loads due ticks.
pub const WINDOW: Duration = Duration::from_secs(2);
/// How often the loop reads the schedules due within [`WINDOW`].
pub const REFRESH: Duration = Duration::from_millis(500);
/// Batches of ticks being fired at once; ticks that fall due meanwhile wait for the next batch
/// (group commit: batches grow with load).
pub const CONCURRENCY: usize = 4;
/// Most ticks in one batch.
pub const BATCH: usize = 500;
/// How long a schedule whose tick failed (e.g. RabbitMQ unreachable) waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How long a function read for a tick serves later ticks (a changed function reaches
/// scheduled runs within this).
pub const FUNCTION_TTL: Duration = Duration::from_secs(2);

/// Functions by id, with the time they were read; `None`: not found.
#[derive(Default)]
pub struct FunctionCache(
    std::sync::Mutex<HashMap<String, (std::time::Instant, Option<bson::Document>)>>,
);

impl FunctionCache {
    /// The function `id` (its raw document), from the cache or MongoDB.
    pub async fn get(&self, db: &Database, id: &str) -> anyhow::Result<Option<bson::Document>> {
        if let Some((at, d)) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            if at.elapsed() < FUNCTION_TTL {
                return Ok(d.clone());
            }
        }
        let d = db
            .collection::<bson::Document>(collections::FUNCTIONS)
            .find_one(doc! {"_id": id})
            .await?;
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 100_000 {
            m.clear();
        }
        m.insert(id.to_owned(), (std::time::Instant::now(), d.clone()));
        Ok(d)
    }
}

/// Told what every fired tick did.
pub type Observer = Box<dyn Fn(&Fired) + Send + Sync>;

/// Everything firing needs.
pub struct Ctx {
    pub db: Database,
    pub link: Arc<Link>,
    pub prices: accounts::PriceBook,
    pub limits: accounts::Limits,
    /// No schedule fires more often than this (`DISPATCHER_MIN_SCHEDULE`).
    pub min_schedule_ms: i64,
    /// Functions read by recent ticks (one read per function per [`FUNCTION_TTL`], not per tick).
    pub functions: FunctionCache,
    /// Told what every fired tick did (the bench reads the lateness of each run).
    pub observer: Option<Observer>,
}

/// The running loop; dropping it stops firing at once.
pub struct Firing {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Firing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts firing schedules (call when taking the lead).
pub fn start(ctx: Arc<Ctx>) -> Firing {
    Firing {
        task: tokio::spawn(run(ctx)),
    }
}

/// Ticks waiting in the heap or being fired, by schedule id.
#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(i64, String)>>,
    /// The tick each known schedule waits for (or is firing).
    known: HashMap<String, i64>,
    /// Schedules whose last attempt failed, with the time they may be tried again.
    backoff: HashMap<String, i64>,
}

impl Timers {
    fn push(&mut self, id: String, tick: i64) {
        if self.known.get(&id) == Some(&tick) {
            return;
        }
        self.known.insert(id.clone(), tick);
        self.heap.push(Reverse((tick, id)));
    }

    /// Pops the ticks due at `now` (ignoring entries a newer tick replaced).
    fn due(&mut self, now: i64) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        while let Some(Reverse((tick, _))) = self.heap.peek() {
            if *tick > now {
                break;
            }
            let Some(Reverse((tick, id))) = self.heap.pop() else {
                break;
            };
            if self.known.get(&id) == Some(&tick) {
                out.push((id, tick));
            }
        }
        out
    }

    fn next_due(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }
}

async fn refresh(ctx: &Ctx, t: &mut Timers, firing: &HashMap<String, i64>) -> anyhow::Result<()> {
    let now = schemas::now_ms();
    let horizon = now + WINDOW.as_millis() as i64;
    t.backoff.retain(|_, until| *until > now);
    let mut cur = ctx
        .db
        .collection::<ScheduleDoc>(collections::SCHEDULES)
        .find(doc! {"enabled": schemas::schedules::enabled_filter(), "next_tick_ms": {"$lte": horizon}})
        .projection(doc! {"_id": 1, "next_tick_ms": 1, "user_id": 1, "function_id": 1, "function": 1,
            "expression": 1, "args_json": 1, "enabled": 1, "anchor_ms": 1, "created_at_ms": 1, "updated_at_ms": 1})
        .await?;
    while let Some(s) = cur.try_next().await? {
        if firing.contains_key(&s.id) || t.backoff.contains_key(&s.id) {
            continue;
        }
        t.push(s.id, s.next_tick_ms);
    }
    Ok(())
}

async fn run(ctx: Arc<Ctx>) {
    let mut timers = Timers::default();
    let mut firing: HashMap<String, i64> = HashMap::new();
    let mut waiting: Vec<(String, i64)> = Vec::new();
    let mut tasks: JoinSet<batch::Outcomes> = JoinSet::new();
    let mut refresh_every = tokio::time::interval(REFRESH);
    refresh_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!("firing schedules");
    loop {
        while !waiting.is_empty() && tasks.len() < CONCURRENCY {
            let n = waiting.len().min(BATCH);
            let part: Vec<(String, i64)> = waiting.drain(..n).collect();
            let ctx = ctx.clone();
            tasks.spawn(async move { batch::fire_batch(&ctx, part).await });
        }
        let wake = timers.next_due().map(|t| {
            let wait = (t - schemas::now_ms()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_millis(wait)
        });
        tokio::select! {
            _ = refresh_every.tick() => {
                if let Err(e) = refresh(&ctx, &mut timers, &firing).await {
                    tracing::warn!(error = %format!("{e:#}"), "reading due schedules failed");
                }
            }
            () = sleep_until(wake) => {
                for (id, tick) in timers.due(schemas::now_ms()) {
                    timers.known.remove(&id);
                    firing.insert(id.clone(), tick);
                    waiting.push((id, tick));
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok(outcomes) = done else { continue };
                for (id, tick, r) in outcomes {
                    firing.remove(&id);
                    finished(&ctx, &mut timers, id, tick, r);
                }
            }
        }
    }
}

/// Takes a fired tick's outcome: its schedule's next tick goes into the heap when it is due
/// within the window; a failed one waits [`RETRY`].
fn finished(ctx: &Ctx, timers: &mut Timers, id: String, tick: i64, r: anyhow::Result<Fired>) {
    match r {
        Ok(f) => {
            if let Some(obs) = &ctx.observer {
                obs(&f);
            }
            let horizon = schemas::now_ms() + WINDOW.as_millis() as i64;
            if let Some(next) = f.next_ms().filter(|n| *n <= horizon) {
                timers.push(id, next);
            }
        }
        Err(e) => {
            tracing::warn!(schedule_id = id, tick, error = %format!("{e:#}"), "firing a tick failed; trying again shortly");
            timers
                .backoff
                .insert(id, schemas::now_ms() + RETRY.as_millis() as i64);
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_due_ticks_once_in_order() {
        let mut t = Timers::default();
        t.push("b".into(), 200);
        t.push("a".into(), 100);
        t.push("a".into(), 100);
        t.push("c".into(), 300);
        assert_eq!(t.next_due(), Some(100));
        assert_eq!(
            t.due(250),
            vec![("a".to_owned(), 100), ("b".to_owned(), 200)]
        );
        // A schedule moved to a new tick: the old heap entry is ignored.
        t.push("c".into(), 400);
        assert_eq!(t.due(350), vec![]);
        assert_eq!(t.due(400), vec![("c".to_owned(), 400)]);
        assert_eq!(t.next_due(), None);
    }
}
