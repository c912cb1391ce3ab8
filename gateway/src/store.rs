//! What the gateway reads from MongoDB, through short-lived caches: API keys (so a revoked key
//! stops working within seconds), functions, and each user's available credit (the budget cap).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::Database;
use schemas::names::collections;
use schemas::{ApiKeyDoc, BillState, BillStatus, FunctionDoc, RunDoc, RunStatus};

use crate::cache::TtlCache;

/// How long a found API key is trusted before it is looked up again (then served for
/// [`GRACE`] more while it is reloaded in the background: a revoked key stops working within
/// 4 s).
pub const KEY_TTL: Duration = Duration::from_secs(2);
/// How long an unknown API key is remembered as unknown.
pub const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(1);
/// How long a function (or its absence) is cached.
pub const FUNCTION_TTL: Duration = Duration::from_secs(2);
/// How long a user's available credit is cached.
pub const CREDIT_TTL: Duration = Duration::from_secs(2);
/// How long keys and functions past their TTL are still served while one background load
/// refreshes them, so callers of a hot key or function never wait for the database.
pub const GRACE: Duration = Duration::from_secs(2);
/// The same for the credit view: it is never older than CREDIT_TTL + CREDIT_GRACE = 5 s.
pub const CREDIT_GRACE: Duration = Duration::from_secs(3);
/// Time limit of one database operation.
const DB_TIMEOUT: Duration = Duration::from_secs(3);
const CACHE_ENTRIES: usize = 100_000;
/// Names looked up and not found are remembered in a cache of their own, this small, so
/// lookups of names that do not exist never evict the functions that do.
const MISSING_ENTRIES: usize = 4096;

/// Hex SHA-256 of an API key: how keys are stored (`ApiKeyDoc::key_hash`).
pub fn hash_key(key: &str) -> String {
    common::codestore::sha256_hex(key.as_bytes())
}

/// An authenticated API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub user_id: String,
}

/// A number from a document that may be stored as int32, int64 or double.
pub fn lenient_i64(v: Option<&Bson>) -> i64 {
    match v {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(f)) => *f as i64,
        Some(Bson::Decimal128(d)) => d.to_string().parse().unwrap_or(0),
        _ => 0,
    }
}

async fn timed<T, F>(what: &str, f: F) -> Result<T, String>
where
    F: std::future::IntoFuture<Output = mongodb::error::Result<T>>,
{
    match tokio::time::timeout(DB_TIMEOUT, f.into_future()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("MongoDB failed {what}: {e}")),
        Err(_) => Err(format!("MongoDB did not answer {what} in time")),
    }
}

/// Cached reads.
pub struct Store {
    db: Database,
    keys: TtlCache<String, Option<KeyInfo>>,
    functions: TtlCache<(String, String), Option<FunctionDoc>>,
    /// `(user, name)` pairs recently found missing.
    missing: TtlCache<(String, String), ()>,
    credit: TtlCache<String, Option<i64>>,
    /// False once the server refused the aggregation pipeline; sums are then made in Rust.
    aggregate_ok: std::sync::Arc<AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    pub fn new(db: Database) -> Store {
        Store {
            db,
            keys: TtlCache::with_grace(CACHE_ENTRIES, GRACE),
            functions: TtlCache::with_grace(CACHE_ENTRIES, GRACE),
            missing: TtlCache::new(MISSING_ENTRIES),
            credit: TtlCache::with_grace(CACHE_ENTRIES, CREDIT_GRACE),
            aggregate_ok: std::sync::Arc::new(AtomicBool::new(true)),
        }
    }

    /// Sums credit with a projection find in Rust instead of an aggregation (what happens by
    /// itself on servers without `$group`).
    pub fn summing_in_rust(self) -> Store {
        self.aggregate_ok.store(false, Ordering::Relaxed);
        self
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The key with this secret, if it exists (cached; unknown keys for a shorter time).
    pub async fn key(&self, secret: &str) -> Result<Option<KeyInfo>, String> {
        let hash = hash_key(secret);
        let db = self.db.clone();
        self.keys
            .get_or_load(&hash.clone(), move || async move {
                let found = timed(
                    "looking up an API key",
                    db.collection::<ApiKeyDoc>(collections::API_KEYS)
                        .find_one(doc! {"key_hash": &hash}),
                )
                .await?;
                let info = found.map(|k| KeyInfo {
                    key_id: k.id,
                    user_id: k.user_id,
                });
                let ttl = if info.is_some() {
                    KEY_TTL
                } else {
                    UNKNOWN_KEY_TTL
                };
                Ok((info, ttl))
            })
            .await
    }

    /// The user's function named `name`, if any (cached: found functions in the large cache,
    /// absences in the small one). A name the contract forbids is `None` without a lookup.
    pub async fn function(&self, user_id: &str, name: &str) -> Result<Option<FunctionDoc>, String> {
        if !schemas::valid_function_name(name) {
            return Ok(None);
        }
        let key = (user_id.to_owned(), name.to_owned());
        if self.missing.get_fresh(&key).is_some() {
            return Ok(None);
        }
        let db = self.db.clone();
        let (u, n) = key.clone();
        let found = self
            .functions
            .get_or_load(&key, move || async move {
                let f = timed(
                    "looking up a function",
                    db.collection::<FunctionDoc>(collections::FUNCTIONS)
                        .find_one(doc! {"user_id": &u, "name": &n}),
                )
                .await?;
                Ok((f, FUNCTION_TTL))
            })
            .await?;
        if found.is_none() {
            self.functions.invalidate(&key);
            self.missing.insert(key, (), FUNCTION_TTL);
        }
        Ok(found)
    }

    /// The user's available credit in micros (cached), or `None` when the user does not exist.
    pub async fn available_credit(&self, user_id: &str) -> Result<Option<i64>, String> {
        let db = self.db.clone();
        let u = user_id.to_owned();
        let aggregate_ok = self.aggregate_ok.clone();
        self.credit
            .get_or_load(&u.clone(), move || async move {
                let credit = compute_credit(&db, &u, &aggregate_ok).await?;
                Ok((credit, CREDIT_TTL))
            })
            .await
    }

    /// A run, if it exists (not cached).
    pub async fn run(&self, run_id: &str) -> Result<Option<RunDoc>, String> {
        timed(
            "reading a run",
            self.db
                .collection::<RunDoc>(collections::RUNS)
                .find_one(doc! {"_id": run_id}),
        )
        .await
    }
}

/// `balance_micros − unpaid bills − finished unbilled runs`, or `None` for an unknown user:
/// one read of the user's counters (`common::credit`), or sums for an account that predates
/// them.
async fn compute_credit(
    db: &Database,
    user_id: &str,
    aggregate_ok: &AtomicBool,
) -> Result<Option<i64>, String> {
    let user = timed(
        "reading a user",
        db.collection::<Document>(collections::USERS)
            .find_one(doc! {"_id": user_id})
            .projection(common::credit::projection()),
    )
    .await?;
    let Some(user) = user else {
        return Ok(None);
    };
    if let Some(available) = common::credit::from_counters(&user) {
        return Ok(Some(available));
    }
    let balance = lenient_i64(user.get("balance_micros"));
    let unpaid_filter = doc! {
        "user_id": user_id,
        "status": bson::to_bson(&BillStatus::Unpaid).map_err(|e| e.to_string())?,
    };
    let finals: Vec<&str> = RunStatus::FINAL.iter().map(|s| s.as_str()).collect();
    let unbilled_filter = doc! {
        "bill_state": bson::to_bson(&BillState::Unbilled).map_err(|e| e.to_string())?,
        "user_id": user_id,
        "status": {"$in": finals},
    };
    let unpaid = sum(
        db,
        collections::BILLS,
        unpaid_filter,
        "amount_micros",
        aggregate_ok,
    )
    .await?;
    let unbilled = sum(
        db,
        collections::RUNS,
        unbilled_filter,
        "billed_micros",
        aggregate_ok,
    )
    .await?;
    Ok(Some(
        balance.saturating_sub(unpaid).saturating_sub(unbilled),
    ))
}

/// Sum of `field` over the documents matching `filter`: an aggregation on the server, or a
/// projection find summed here where the server lacks `$group`.
async fn sum(
    db: &Database,
    coll: &str,
    filter: Document,
    field: &str,
    aggregate_ok: &AtomicBool,
) -> Result<i64, String> {
    let c = db.collection::<Document>(coll);
    if aggregate_ok.load(Ordering::Relaxed) {
        let pipeline = vec![
            doc! {"$match": filter.clone()},
            doc! {"$group": {"_id": Bson::Null, "total": {"$sum": format!("${field}")}}},
        ];
        let res = tokio::time::timeout(DB_TIMEOUT, async {
            let cur = c.aggregate(pipeline).await?;
            cur.try_collect::<Vec<Document>>().await
        })
        .await;
        match res {
            Ok(Ok(docs)) => {
                return Ok(docs
                    .first()
                    .map(|d| lenient_i64(d.get("total")))
                    .unwrap_or(0))
            }
            Ok(Err(e)) if is_unsupported(&e) => {
                tracing::info!(error = %e, "MongoDB lacks $group; summing credit in the gateway");
                aggregate_ok.store(false, Ordering::Relaxed);
            }
            Ok(Err(e)) => return Err(format!("MongoDB failed summing {coll}: {e}")),
            Err(_) => return Err(format!("MongoDB did not sum {coll} in time")),
        }
    }
    let res = tokio::time::timeout(DB_TIMEOUT, async {
        let mut cur = c.find(filter).projection(doc! {field: 1, "_id": 0}).await?;
        let mut total: i64 = 0;
        while let Some(d) = cur.try_next().await? {
            total = total.saturating_add(lenient_i64(d.get(field)));
        }
        mongodb::error::Result::Ok(total)
    })
    .await;
    match res {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("MongoDB failed summing {coll}: {e}")),
        Err(_) => Err(format!("MongoDB did not sum {coll} in time")),
    }
}

/// True for errors that say the server does not know an aggregation stage or operator (as
/// opposed to being unreachable).
fn is_unsupported(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_as_hex_sha256() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hash_key("").len(), 64);
        assert_ne!(hash_key("cf_key_1"), hash_key("cf_key_2"));
    }

    #[test]
    fn numbers_are_read_leniently() {
        assert_eq!(lenient_i64(Some(&Bson::Int32(7))), 7);
        assert_eq!(lenient_i64(Some(&Bson::Int64(1 << 40))), 1 << 40);
        assert_eq!(lenient_i64(Some(&Bson::Double(3.0))), 3);
        assert_eq!(lenient_i64(Some(&Bson::String("x".into()))), 0);
        assert_eq!(lenient_i64(None), 0);
    }
}
