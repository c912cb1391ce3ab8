//! The reads behind the pages, straight from MongoDB with the `schemas` types, each served by an
//! index of `schemas::names::indexes()` and bounded (recent lists are limited), plus the task
//! page's status counts.
//!
//! # Status counts
//!
//! Counting a user's runs per function and status is a scan of their runs (MongoDB has no
//! counters for it, and `$group` is slow on the `nx-27017` stand-in), yet a page's counts must
//! agree with the runs it lists, read at the same moment (contract v1.1). So a per-user
//! [`StatusCache`] keeps a snapshot: the counts of the runs that were final and created before
//! a watermark (final runs never change status), and the ids of the runs created before it that
//! were not final yet. A page view reads, fresh, only what may have changed since — the runs
//! created at or after the watermark (`user_created` index) and the open ids (by `_id`) — adds
//! them to the snapshot's counts, and moves the watermark forward to [`LATE_MARGIN`] ago with
//! what it read. Each view's read is as small as the user's activity since the last one; the
//! counts are exact at that moment. The margin covers records stored a little after their
//! creation time (clock skew between gateways, writer batching); a full recount every
//! [`FULL_RECOUNT`] covers records stored later still (a writer that held them through a
//! database outage).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::Database;
use schemas::names::collections;
use schemas::{BillDoc, FunctionDoc, RunDoc, RunStatus};

/// How long before the newest reads a run may be stored and still be counted by the next
/// view (see the module doc).
pub const LATE_MARGIN: Duration = Duration::from_secs(60);
/// How often a user's snapshot is recounted from all their runs.
pub const FULL_RECOUNT: Duration = Duration::from_secs(600);
/// More open runs than this in a snapshot: recounted from all runs instead (bounded `$in`).
const MAX_OPEN: usize = 5_000;
/// Rows in "recent runs" tables.
pub const RECENT_RUNS: i64 = 20;
/// Functions listed on one page.
pub const MAX_FUNCTIONS: i64 = 500;

/// Counts of one function's runs by status, and its last run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub last_run_at_ms: Option<i64>,
}

impl Counts {
    pub fn add(&mut self, status: RunStatus, created_at_ms: i64) {
        match status {
            RunStatus::Pending => self.pending += 1,
            RunStatus::Running => self.running += 1,
            RunStatus::Succeeded => self.succeeded += 1,
            RunStatus::Failed => self.failed += 1,
            RunStatus::TimedOut => self.timed_out += 1,
        }
        self.last_run_at_ms = Some(
            self.last_run_at_ms
                .map_or(created_at_ms, |t| t.max(created_at_ms)),
        );
    }
}

/// Per-function counts of one user, keyed by function name.
pub type UserCounts = BTreeMap<String, Counts>;

/// What a user's counts are built on (see the module doc).
#[derive(Clone)]
struct Snapshot {
    /// Counts of the runs final and created before `watermark_ms`.
    base: UserCounts,
    /// Runs created before `watermark_ms` that were not final when last read.
    open: Vec<String>,
    watermark_ms: i64,
    taken: Instant,
    /// Changes with every advance, so two views at once advance it once.
    generation: u64,
}

/// Per-user status counts that agree with what is read beside them (see the module doc).
#[derive(Clone, Default)]
pub struct StatusCache {
    inner: Arc<Mutex<HashMap<String, Snapshot>>>,
}

impl std::fmt::Debug for StatusCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusCache").finish_non_exhaustive()
    }
}

/// One run as the counts read it: id, function, status, creation time.
type Seen = (String, String, RunStatus, i64);

impl StatusCache {
    /// The user's counts per function and status as of now.
    pub async fn get(&self, db: &Database, user_id: &str) -> anyhow::Result<Arc<UserCounts>> {
        let kept = {
            let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            m.get(user_id)
                .filter(|s| s.taken.elapsed() < FULL_RECOUNT && s.open.len() <= MAX_OPEN)
                .cloned()
        };
        let snap = match kept {
            Some(s) => s,
            None => full_snapshot(db, user_id).await?,
        };
        let mut filter = doc! {"user_id": user_id, "created_at_ms": {"$gte": snap.watermark_ms}};
        if !snap.open.is_empty() {
            filter = doc! {"$or": [filter, {"_id": {"$in": &snap.open}}]};
        }
        let fresh = read_runs(db, filter).await?;
        let mut counts = snap.base.clone();
        let watermark_ms =
            (schemas::now_ms() - LATE_MARGIN.as_millis() as i64).max(snap.watermark_ms);
        let mut next = Snapshot {
            base: snap.base.clone(),
            open: Vec::new(),
            watermark_ms,
            taken: snap.taken,
            generation: snap.generation + 1,
        };
        for (id, f, status, at) in fresh {
            count(&mut counts, &f, status, at);
            if at < watermark_ms {
                if status.is_final() {
                    count(&mut next.base, &f, status, at);
                } else {
                    next.open.push(id);
                }
            }
        }
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let current = m.get(user_id).map(|s| s.generation);
        if current.is_none() || current == Some(snap.generation) {
            m.insert(user_id.to_owned(), next);
        }
        Ok(Arc::new(counts))
    }
}

fn count(counts: &mut UserCounts, function: &str, status: RunStatus, at: i64) {
    match counts.get_mut(function) {
        Some(c) => c.add(status, at),
        None => {
            let mut c = Counts::default();
            c.add(status, at);
            counts.insert(function.to_owned(), c);
        }
    }
}

/// A snapshot from all the user's runs: one streaming read of four small fields per run.
async fn full_snapshot(db: &Database, user_id: &str) -> anyhow::Result<Snapshot> {
    let watermark_ms = schemas::now_ms() - LATE_MARGIN.as_millis() as i64;
    let mut snap = Snapshot {
        base: UserCounts::new(),
        open: Vec::new(),
        watermark_ms,
        taken: Instant::now(),
        generation: 0,
    };
    for (id, f, status, at) in read_runs(db, doc! {"user_id": user_id}).await? {
        if at >= watermark_ms {
            continue;
        }
        if status.is_final() {
            count(&mut snap.base, &f, status, at);
        } else {
            snap.open.push(id);
        }
    }
    Ok(snap)
}

async fn read_runs(db: &Database, filter: Document) -> anyhow::Result<Vec<Seen>> {
    let mut cur = db
        .collection::<Document>(collections::RUNS)
        .find(filter)
        .projection(doc! {"function": 1, "status": 1, "created_at_ms": 1})
        .batch_size(5_000)
        .await
        .context("counting runs")?;
    let mut out = Vec::new();
    while let Some(d) = cur.try_next().await.context("counting runs")? {
        let (Ok(id), Ok(f), Ok(s)) = (d.get_str("_id"), d.get_str("function"), d.get_str("status"))
        else {
            continue;
        };
        let Some(s) = RunStatus::parse(s) else {
            continue;
        };
        out.push((
            id.to_owned(),
            f.to_owned(),
            s,
            common::wire::int(d.get("created_at_ms")),
        ));
    }
    Ok(out)
}

/// The regex matching names that contain `q` literally.
fn contains(q: &str) -> String {
    let mut s = String::with_capacity(q.len() * 2);
    for ch in q.chars() {
        if !ch.is_ascii_alphanumeric() {
            s.push('\\');
        }
        s.push(ch);
    }
    s
}

/// The user's functions whose name contains `q` (all of them when `q` is empty).
fn functions_filter(user_id: &str, q: &str) -> Document {
    let mut filter = doc! {"user_id": user_id};
    if !q.is_empty() {
        filter.insert("name", doc! {"$regex": contains(q)});
    }
    filter
}

/// The user's functions whose name contains `q` (all when empty), by name, at most `limit`.
pub async fn functions(
    db: &Database,
    user_id: &str,
    q: &str,
    limit: i64,
) -> anyhow::Result<Vec<FunctionDoc>> {
    let mut v: Vec<FunctionDoc> = db
        .collection::<FunctionDoc>(collections::FUNCTIONS)
        .find(functions_filter(user_id, q))
        .limit(limit)
        .await
        .context("listing functions")?
        .try_collect()
        .await
        .context("listing functions")?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// The names of the user's functions whose name contains `q` (all when empty), sorted: what
/// the task page needs, without reading whole function documents.
pub async fn function_names(
    db: &Database,
    user_id: &str,
    q: &str,
    limit: i64,
) -> anyhow::Result<Vec<String>> {
    let docs: Vec<Document> = db
        .collection::<Document>(collections::FUNCTIONS)
        .find(functions_filter(user_id, q))
        .projection(doc! {"name": 1, "_id": 0})
        .limit(limit)
        .await
        .context("listing function names")?
        .try_collect()
        .await
        .context("listing function names")?;
    let mut v: Vec<String> = docs
        .iter()
        .filter_map(|d| common::wire::string(d.get("name")).map(str::to_owned))
        .collect();
    v.sort();
    Ok(v)
}

/// One function of the user by name.
pub async fn function(
    db: &Database,
    user_id: &str,
    name: &str,
) -> anyhow::Result<Option<FunctionDoc>> {
    db.collection::<FunctionDoc>(collections::FUNCTIONS)
        .find_one(doc! {"user_id": user_id, "name": name})
        .await
        .context("reading a function")
}

/// The user's most recent runs (of one function when given), newest first, without their
/// results and logs.
pub async fn recent_runs(
    db: &Database,
    user_id: &str,
    function: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<RunDoc>> {
    recent_runs_of(db, user_id, function.map(|f| vec![f]), limit).await
}

/// The user's most recent runs of the named functions (all when `None`), newest first,
/// without their results and logs.
pub async fn recent_runs_of(
    db: &Database,
    user_id: &str,
    functions: Option<Vec<&str>>,
    limit: i64,
) -> anyhow::Result<Vec<RunDoc>> {
    let mut filter = doc! {"user_id": user_id};
    match functions.as_deref() {
        Some([one]) => {
            filter.insert("function", *one);
        }
        Some(many) => {
            filter.insert("function", doc! {"$in": many.to_vec()});
        }
        None => {}
    }
    db.collection::<RunDoc>(collections::RUNS)
        .find(filter)
        .sort(doc! {"created_at_ms": -1})
        .limit(limit)
        .projection(doc! {"result_json": 0, "logs": 0})
        .await
        .context("listing runs")?
        .try_collect()
        .await
        .context("listing runs")
}

/// One run of the user.
pub async fn run(db: &Database, user_id: &str, run_id: &str) -> anyhow::Result<Option<RunDoc>> {
    db.collection::<RunDoc>(collections::RUNS)
        .find_one(doc! {"_id": run_id, "user_id": user_id})
        .await
        .context("reading a run")
}

/// The user's bills, newest first, without their items (`items` is left empty; the count of
/// items is returned beside each bill).
pub async fn bills(
    db: &Database,
    user_id: &str,
    limit: i64,
) -> anyhow::Result<Vec<(BillDoc, usize)>> {
    let docs: Vec<Document> = db
        .collection::<Document>(collections::BILLS)
        .find(doc! {"user_id": user_id})
        .sort(doc! {"created_at_ms": -1})
        .limit(limit)
        .await
        .context("listing bills")?
        .try_collect()
        .await
        .context("listing bills")?;
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        let n = d.get_array("items").map(|a| a.len()).unwrap_or(0);
        let b: BillDoc = bson::from_document(d).context("decoding a bill")?;
        out.push((b, n));
    }
    Ok(out)
}

/// One bill of the user.
pub async fn bill(db: &Database, user_id: &str, bill_id: &str) -> anyhow::Result<Option<BillDoc>> {
    db.collection::<BillDoc>(collections::BILLS)
        .find_one(doc! {"_id": bill_id, "user_id": user_id})
        .await
        .context("reading a bill")
}

/// The user's bills created at or after `since_ms`, newest first.
pub async fn bills_since(
    db: &Database,
    user_id: &str,
    since_ms: i64,
) -> anyhow::Result<Vec<String>> {
    let docs: Vec<Document> = db
        .collection::<Document>(collections::BILLS)
        .find(doc! {"user_id": user_id, "created_at_ms": {"$gte": since_ms}})
        .projection(doc! {"_id": 1, "created_at_ms": 1})
        .sort(doc! {"created_at_ms": -1})
        .await
        .context("listing new bills")?
        .try_collect()
        .await
        .context("listing new bills")?;
    Ok(docs
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_is_literal() {
        assert_eq!(contains("add"), "add");
        assert_eq!(contains("a.b*"), "a\\.b\\*");
        assert_eq!(contains("x-y"), "x\\-y");
    }

    #[test]
    fn counts_add_up() {
        let mut c = Counts::default();
        c.add(RunStatus::Succeeded, 5);
        c.add(RunStatus::TimedOut, 9);
        c.add(RunStatus::Pending, 7);
        assert_eq!((c.succeeded, c.timed_out, c.pending), (1, 1, 1));
        assert_eq!(c.last_run_at_ms, Some(9));
    }
}
