//! What the gateway reads from MongoDB, through short-lived caches: API keys (so a revoked key
//! stops working within seconds) and functions. The budget cap is not read here: accepting an
//! invocation reserves its worst case with one conditional update (`accounts::hold`).

use std::time::Duration;

use bson::doc;
use mongodb::Database;
use schemas::names::collections;
use schemas::{ApiKeyDoc, FunctionDoc, RunDoc};

use crate::cache::TtlCache;

/// How long a found API key is trusted before it is looked up again (then served for
/// [`GRACE`] more while it is reloaded in the background: a revoked key stops working within
/// 4 s).
pub const KEY_TTL: Duration = Duration::from_secs(2);
/// How long an unknown API key is remembered as unknown.
pub const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(1);
/// How long a function (or its absence) is cached.
pub const FUNCTION_TTL: Duration = Duration::from_secs(2);
/// How long keys and functions past their TTL are still served while one background load
/// refreshes them, so callers of a hot key or function never wait for the database.
pub const GRACE: Duration = Duration::from_secs(2);
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
        }
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
}
