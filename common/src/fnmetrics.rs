//! Per-function run metrics kept in pre-aggregated buckets (contract v1.1, Observability): the
//! run writer adds each final record that landed to its function's minute and hour buckets in
//! `function_metrics` (one upsert per bucket per writer batch), so a chart reads at most 168
//! documents and never scans runs. Durations go into fixed log-scale bins
//! ([`DURATION_BOUNDS_MS`]); p50 and p99 are the upper bound of the bin holding that rank.
//! Best effort: a writer killed between storing a batch and counting it loses those counts
//! (the runs themselves are never lost); a duplicate finish is refused and not counted.

use std::collections::{HashMap, HashSet};

use bson::{doc, Document};
use futures::TryStreamExt as _;
use mongodb::Database;
use schemas::{RunDoc, RunStatus};

use crate::runstore::RunWrite;

/// The collection of buckets.
pub const COLLECTION: &str = schemas::names::collections::FUNCTION_METRICS;
/// Bucket sizes: minutes (1 h window) and hours (24 h and 7 d windows).
pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
/// Upper bounds of the duration bins, in ms (the last bin holds everything above).
pub const DURATION_BOUNDS_MS: [u64; 17] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000,
    900_000,
];
const BINS: usize = DURATION_BOUNDS_MS.len() + 1;

/// One bucket as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub start_ms: i64,
    pub invocations: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub throttled: u64,
    pub cold_starts: u64,
    pub durations: [u64; BINS],
}

impl Bucket {
    /// The duration under which a fraction `q` of this bucket's runs ended (bin upper bound).
    pub fn percentile_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.durations.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.durations.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    DURATION_BOUNDS_MS
                        .get(i)
                        .copied()
                        .unwrap_or(schemas::limits::TIMEOUT_MS.1),
                );
            }
        }
        None
    }
}

fn bin_of(duration_ms: u64) -> usize {
    DURATION_BOUNDS_MS
        .iter()
        .position(|b| duration_ms <= *b)
        .unwrap_or(BINS - 1)
}

/// The `$inc` of one final record.
fn increments(d: &RunDoc, inc: &mut Document) {
    let mut add = |k: &str| {
        let n = inc.get_i64(k).unwrap_or(0);
        inc.insert(k, n + 1);
    };
    add("invocations");
    let throttled = d
        .error
        .as_ref()
        .is_some_and(|e| e.code == schemas::run_error_codes::CONCURRENCY_LIMIT);
    match d.status {
        _ if throttled => add("throttled"),
        RunStatus::Succeeded => add("succeeded"),
        RunStatus::TimedOut => add("timed_out"),
        _ => add("failed"),
    }
    if throttled {
        return;
    }
    if d.cold_start {
        add("cold_starts");
    }
    add(&format!("d{}", bin_of(d.duration_ms)));
}

/// The buckets' `$inc`s for the finishes of `batch` that landed (not in `refused`), keyed by
/// bucket id, with (user, function, size, start).
pub fn updates(
    batch: &[RunWrite],
    refused: &HashSet<usize>,
) -> HashMap<String, (Document, Document)> {
    let mut out: HashMap<String, (Document, Document)> = HashMap::new();
    for (i, w) in batch.iter().enumerate() {
        let RunWrite::Finished(d) = w else { continue };
        if refused.contains(&i) || !d.status.is_final() {
            continue;
        }
        let at = d.finished_at_ms.unwrap_or(d.created_at_ms);
        for size in [MINUTE, HOUR] {
            let start = at - at.rem_euclid(size);
            let id = format!("{}:{size}:{start}", d.function_id);
            let entry = out.entry(id).or_insert_with(|| {
                (
                    doc! {"user_id": &d.user_id, "function_id": &d.function_id, "size": size, "start_ms": start},
                    Document::new(),
                )
            });
            increments(d, &mut entry.1);
        }
    }
    out
}

/// Applies [`updates`] (one upsert per bucket).
pub async fn record(
    db: &Database,
    ups: HashMap<String, (Document, Document)>,
) -> anyhow::Result<()> {
    let coll = db.collection::<Document>(COLLECTION);
    let writes = ups.into_iter().map(|(id, (set, inc))| {
        let coll = coll.clone();
        async move {
            coll.update_one(doc! {"_id": id}, doc! {"$setOnInsert": set, "$inc": inc})
                .upsert(true)
                .await
        }
    });
    for r in futures::future::join_all(writes).await {
        r?;
    }
    Ok(())
}

fn count(d: &Document, k: &str) -> u64 {
    schemas::lenient::uint(d.get(k))
}

/// The buckets of one function of `size` starting at or after `since_ms`, oldest first.
pub async fn read(
    db: &Database,
    user_id: &str,
    function_id: &str,
    size: i64,
    since_ms: i64,
) -> anyhow::Result<Vec<Bucket>> {
    let docs: Vec<Document> = db
        .collection::<Document>(COLLECTION)
        .find(doc! {"user_id": user_id, "function_id": function_id, "size": size, "start_ms": {"$gte": since_ms}})
        .sort(doc! {"start_ms": 1})
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .iter()
        .map(|d| {
            let mut b = Bucket {
                start_ms: schemas::lenient::int(d.get("start_ms")),
                invocations: count(d, "invocations"),
                succeeded: count(d, "succeeded"),
                failed: count(d, "failed"),
                timed_out: count(d, "timed_out"),
                throttled: count(d, "throttled"),
                cold_starts: count(d, "cold_starts"),
                ..Default::default()
            };
            for (i, slot) in b.durations.iter_mut().enumerate() {
                *slot = count(d, &format!("d{i}"));
            }
            b
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_and_percentiles() {
        assert_eq!(bin_of(0), 0);
        assert_eq!(bin_of(3), 2);
        assert_eq!(bin_of(1_000), 9);
        assert_eq!(bin_of(10_000_000), BINS - 1);
        let mut b = Bucket::default();
        assert_eq!(b.percentile_ms(0.5), None);
        b.durations[bin_of(8)] = 98;
        b.durations[bin_of(1500)] = 2;
        assert_eq!(b.percentile_ms(0.5), Some(10));
        assert_eq!(b.percentile_ms(0.99), Some(2_000));
    }
}
