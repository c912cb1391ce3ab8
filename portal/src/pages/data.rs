//! The reads behind the pages, straight from MongoDB with the `schemas` types, each served by an
//! index of `schemas::names::indexes()` and bounded (recent lists are limited), plus the task
//! page's status counts.
//!
//! # Status counts
//!
//! Counting a user's runs per function and status is a scan of their runs (MongoDB has no
//! counters for it, and `$group` is slow on the `nx-27017` stand-in). So the counts come from a
//! per-user [`StatusCache`]: computed once by one streaming, projected read of the user's runs
//! (`user_id` index, three small fields per run, nothing held but the counters), then served from
//! memory and recomputed in the background when older than [`STATUS_TTL`] while someone looks
//! at the page (one refresh per user at a time). A page never waits for a recount except the
//! first one of a user after the portal starts; counts are at most a few seconds old, which is
//! what the page's own refresh period is anyway.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::Database;
use schemas::names::collections;
use schemas::{BillDoc, FunctionDoc, RunDoc, RunStatus};

/// How old cached counts may be before a page view triggers a background recount.
pub const STATUS_TTL: Duration = Duration::from_secs(2);
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

struct Entry {
    counts: Arc<UserCounts>,
    at: Instant,
    refreshing: bool,
}

/// Per-user status counts, recomputed in the background (see the module doc).
#[derive(Clone, Default)]
pub struct StatusCache {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

impl std::fmt::Debug for StatusCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusCache").finish_non_exhaustive()
    }
}

impl StatusCache {
    /// The user's counts: cached (refreshing them in the background when stale), or computed
    /// now for a user seen for the first time.
    pub async fn get(&self, db: &Database, user_id: &str) -> anyhow::Result<Arc<UserCounts>> {
        let stale = {
            let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match m.get_mut(user_id) {
                Some(e) => {
                    let stale = e.at.elapsed() >= STATUS_TTL && !e.refreshing;
                    if stale {
                        e.refreshing = true;
                    }
                    Some((e.counts.clone(), stale))
                }
                None => None,
            }
        };
        match stale {
            Some((counts, false)) => Ok(counts),
            Some((counts, true)) => {
                let (this, db, user) = (self.clone(), db.clone(), user_id.to_owned());
                tokio::spawn(async move {
                    let res = count_runs(&db, &user).await;
                    this.store(&user, res);
                });
                Ok(counts)
            }
            None => {
                let counts = count_runs(&db.clone(), user_id).await?;
                let counts = Arc::new(counts);
                self.inner.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    user_id.to_owned(),
                    Entry {
                        counts: counts.clone(),
                        at: Instant::now(),
                        refreshing: false,
                    },
                );
                Ok(counts)
            }
        }
    }

    fn store(&self, user_id: &str, res: anyhow::Result<UserCounts>) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match res {
            Ok(c) => {
                m.insert(
                    user_id.to_owned(),
                    Entry {
                        counts: Arc::new(c),
                        at: Instant::now(),
                        refreshing: false,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(user_id, error = %format!("{e:#}"), "status recount failed");
                if let Some(en) = m.get_mut(user_id) {
                    en.refreshing = false;
                }
            }
        }
    }

    /// Forgets a user's counts (after a change the user must see at once, e.g. a test run).
    pub fn invalidate(&self, user_id: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user_id);
    }
}

/// Counts the user's runs per function and status: one streaming read of three fields per run.
pub async fn count_runs(db: &Database, user_id: &str) -> anyhow::Result<UserCounts> {
    let mut cur = db
        .collection::<Document>(collections::RUNS)
        .find(doc! {"user_id": user_id})
        .projection(doc! {"_id": 0, "function": 1, "status": 1, "created_at_ms": 1})
        .batch_size(5_000)
        .await
        .context("counting runs")?;
    let mut out = UserCounts::new();
    while let Some(d) = cur.try_next().await.context("counting runs")? {
        let (Ok(f), Ok(s)) = (d.get_str("function"), d.get_str("status")) else {
            continue;
        };
        let Some(s) = RunStatus::parse(s) else {
            continue;
        };
        let at = common::wire::int(d.get("created_at_ms"));
        match out.get_mut(f) {
            Some(c) => c.add(s, at),
            None => {
                let mut c = Counts::default();
                c.add(s, at);
                out.insert(f.to_owned(), c);
            }
        }
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
