//! `Idempotency-Key` on `POST /v1/invoke/{fn}`: the same key from the same user within 24 h
//! answers the same run.
//!
//! One entry per `(user_id, key)` (a unique index), inserted before anything is published, so
//! that of two gateways receiving the same key at once only one starts a run; the other reads
//! the winner's entry. The entry names the run; the winner stores the run's `pending` record
//! durably *before* publishing. So an entry without a run record older than [`ORPHAN_AFTER`]
//! belongs to a gateway that died before publishing: a repeat takes it over (a conditional
//! update from the old run id, so one repeat wins) and starts the run itself. A run that could
//! not be published releases its entry, so a retry with the same key starts afresh.
//!
//! Expired entries (24 h) are treated as absent here (the TTL index removes them where the
//! server applies TTL indexes) and are taken over by the next use of the key.

use std::time::Duration;

use bson::doc;
use mongodb::{Collection, Database};
use schemas::names::collections;
use schemas::schedules::{IdempotencyDoc, IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_TTL_MS};
use sha2::{Digest, Sha256};
use warp::http::HeaderMap;

use common::runstore::{pending_doc, RunWrite};
use schemas::{FunctionDoc, InvocationMsg, Mode};
use warp::reply::Response;

use crate::GatewayError;

/// An entry whose run has no record this long after the entry was made is orphaned: its
/// gateway died before storing the run (and so before publishing it). Larger than the time the
/// winner allows its durable `pending` write (5 s).
pub const ORPHAN_AFTER: Duration = Duration::from_secs(10);

/// The request's idempotency key and the hash of what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemKey {
    pub key: String,
    pub hash: String,
}

/// `Idempotency-Key`: absent, or 1–128 visible ASCII characters (400 otherwise).
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |why: &str| GatewayError::BadIdempotencyKey(format!("Idempotency-Key {why}"));
    let s = v
        .to_str()
        .map_err(|_| bad("must be visible ASCII characters"))?
        .trim();
    if s.is_empty() {
        return Err(bad("is empty"));
    }
    if s.len() > IDEMPOTENCY_KEY_MAX {
        return Err(bad(&format!(
            "is longer than {IDEMPOTENCY_KEY_MAX} characters"
        )));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad("must be visible ASCII characters"));
    }
    Ok(Some(s.to_owned()))
}

/// Hex SHA-256 of the function's name and the request body: what a repeat must match.
pub fn request_hash(function: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((function.len() as u64).to_be_bytes());
    h.update(function.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

fn coll(db: &Database) -> Collection<IdempotencyDoc> {
    db.collection(collections::IDEMPOTENCY_KEYS)
}

fn db_err(what: &str) -> impl Fn(mongodb::error::Error) -> GatewayError + '_ {
    move |e| GatewayError::Unavailable(format!("MongoDB failed {what}: {e}"))
}

fn expired(d: &IdempotencyDoc, now: i64) -> bool {
    d.expires_at_ms <= now
}

/// Whether `d` is orphaned by now, given that its run has no record.
pub fn orphaned(d: &IdempotencyDoc, now: i64) -> bool {
    now - d.created_at_ms >= ORPHAN_AFTER.as_millis() as i64
}

fn entry(user_id: &str, k: &IdemKey, run_id: &str, now: i64) -> IdempotencyDoc {
    let expires = now + IDEMPOTENCY_TTL_MS;
    IdempotencyDoc {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        key: k.key.clone(),
        request_hash: k.hash.clone(),
        run_id: run_id.to_owned(),
        created_at_ms: now,
        expires_at_ms: expires,
        expires_at: bson::DateTime::from_millis(expires),
    }
}

/// The live (unexpired) entry of `key`, if any.
pub async fn find(
    db: &Database,
    user_id: &str,
    key: &str,
) -> Result<Option<IdempotencyDoc>, GatewayError> {
    let d = coll(db)
        .find_one(doc! {"user_id": user_id, "key": key})
        .await
        .map_err(db_err("reading an idempotency key"))?;
    Ok(d.filter(|d| !expired(d, schemas::now_ms())))
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Claim {
    /// The key now names the caller's run.
    New,
    /// A live entry names another run.
    Existing(IdempotencyDoc),
}

/// Claims `k` for `run_id`: inserts the entry, or, when one exists, takes it over if it is
/// expired, else returns it.
pub async fn claim(
    db: &Database,
    user_id: &str,
    k: &IdemKey,
    run_id: &str,
) -> Result<Claim, GatewayError> {
    for _ in 0..5 {
        let now = schemas::now_ms();
        match coll(db).insert_one(entry(user_id, k, run_id, now)).await {
            Ok(_) => return Ok(Claim::New),
            Err(e) if common::mongo::is_duplicate_key(&e) => {}
            Err(e) => return Err(db_err("storing an idempotency key")(e)),
        }
        let found = coll(db)
            .find_one(doc! {"user_id": user_id, "key": &k.key})
            .await
            .map_err(db_err("reading an idempotency key"))?;
        match found {
            // Removed (by TTL) between the insert and the read: insert again.
            None => continue,
            Some(d) if expired(&d, now) => {
                if take_over(db, &d, k, run_id).await? {
                    return Ok(Claim::New);
                }
            }
            Some(d) => return Ok(Claim::Existing(d)),
        }
    }
    Err(GatewayError::Unavailable(
        "the Idempotency-Key changed too often to be claimed; try again".to_owned(),
    ))
}

/// Points `old` (expired, or orphaned) at `run_id`, unless another request did first.
pub async fn take_over(
    db: &Database,
    old: &IdempotencyDoc,
    k: &IdemKey,
    run_id: &str,
) -> Result<bool, GatewayError> {
    let now = schemas::now_ms();
    let new = IdempotencyDoc {
        id: old.id.clone(),
        ..entry(&old.user_id, k, run_id, now)
    };
    let r = coll(db)
        .replace_one(doc! {"_id": &old.id, "run_id": &old.run_id}, &new)
        .await
        .map_err(db_err("taking over an idempotency key"))?;
    Ok(r.modified_count == 1)
}

/// Forgets the entry of `key` if it still names `run_id` (its run was never published).
pub async fn release(db: &Database, user_id: &str, key: &str, run_id: &str) {
    let r = coll(db)
        .delete_one(doc! {"user_id": user_id, "key": key, "run_id": run_id})
        .await;
    if let Err(e) = r {
        tracing::warn!(run_id, error = %e, "releasing an idempotency key failed; it expires in 24 h");
    }
}

impl crate::State {
    /// A repeat of a live key answered without reserving anything: 409 for another request,
    /// else the first run's answer. `None` when there is no live entry, or its run was
    /// orphaned (then [`crate::State::claim_key`] takes it over).
    pub(crate) async fn repeat_before_reserving(
        &self,
        user_id: &str,
        k: &IdemKey,
        func: &FunctionDoc,
        mode: Mode,
    ) -> Result<Option<Response>, GatewayError> {
        let Some(d) = find(self.store.db(), user_id, &k.key).await? else {
            return Ok(None);
        };
        self.answer_entry(&d, k, func, mode).await
    }

    /// The first run's answer to a repeat of entry `d`; `None` if `d` is orphaned.
    async fn answer_entry(
        &self,
        d: &IdempotencyDoc,
        k: &IdemKey,
        func: &FunctionDoc,
        mode: Mode,
    ) -> Result<Option<Response>, GatewayError> {
        if d.request_hash != k.hash {
            return Err(GatewayError::IdempotencyConflict { key: k.key.clone() });
        }
        let run = self
            .store
            .run(&d.run_id)
            .await
            .map_err(GatewayError::Unavailable)?;
        if run.is_none() && orphaned(d, schemas::now_ms()) {
            return Ok(None);
        }
        self.metrics.idempotent_repeat();
        match mode {
            Mode::Async => Ok(Some(crate::accepted(&d.run_id))),
            Mode::Sync => self.wait_answer(&d.run_id, func.timeout_ms).await.map(Some),
        }
    }

    /// Claims the key for `inv` and stores its `pending` record before it is published; or
    /// answers the first run when another request holds the key (`Some`).
    pub(crate) async fn claim_key(
        &self,
        k: &IdemKey,
        inv: &InvocationMsg,
        func: &FunctionDoc,
    ) -> Result<Option<Response>, GatewayError> {
        if !self.indexes_ready.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(GatewayError::Unavailable(
                "the gateway is still creating its database indexes; try again shortly".to_owned(),
            ));
        }
        let db = self.store.db();
        for _ in 0..5 {
            let won = match claim(db, &inv.user_id, k, &inv.run_id).await? {
                Claim::New => true,
                Claim::Existing(d) => {
                    if let Some(resp) = self.answer_entry(&d, k, func, inv.mode).await? {
                        return Ok(Some(resp));
                    }
                    take_over(db, &d, k, &inv.run_id).await?
                }
            };
            if won {
                let stored = tokio::time::timeout(
                    Duration::from_secs(5),
                    self.writer
                        .write_durable(RunWrite::Pending(Box::new(pending_doc(inv)))),
                )
                .await;
                if !matches!(stored, Ok(Ok(()))) {
                    release(db, &inv.user_id, &k.key, &inv.run_id).await;
                    return Err(GatewayError::Unavailable(
                        "the run record could not be stored; try again shortly".to_owned(),
                    ));
                }
                return Ok(None);
            }
        }
        Err(GatewayError::Unavailable(
            "the Idempotency-Key changed too often to be claimed; try again".to_owned(),
        ))
    }

    /// Waits for run `run_id` to be final and answers it as a sync call would have been.
    async fn wait_answer(&self, run_id: &str, timeout_ms: u64) -> Result<Response, GatewayError> {
        let wait = Duration::from_millis(timeout_ms) + self.cfg.sync_grace + ORPHAN_AFTER;
        let deadline = tokio::time::Instant::now() + wait;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if let Ok(Some(d)) = self.store.run(run_id).await {
                if d.status.is_final() {
                    return crate::sync_response(crate::Outcome::from(&d));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(GatewayError::TimedOut {
                    message: format!(
                        "the first call with this Idempotency-Key has no result after {} ms; the run may still finish: GET /v1/runs/{run_id}",
                        wait.as_millis()
                    ),
                    run_id: run_id.to_owned(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("idempotency-key", HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn keys() {
        assert_eq!(key_of(&HeaderMap::new()).unwrap(), None);
        assert_eq!(key_of(&h(" order-1 ")).unwrap().as_deref(), Some("order-1"));
        assert!(key_of(&h(&"k".repeat(128))).unwrap().is_some());
        for bad in ["", "  ", &"k".repeat(129)] {
            let e = key_of(&h(bad)).unwrap_err();
            assert_eq!(
                crate::api_error(&e).code,
                "invalid_idempotency_key",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hashes_cover_function_and_body() {
        let a = request_hash("f", b"{}");
        assert_eq!(a, request_hash("f", b"{}"));
        assert_ne!(a, request_hash("g", b"{}"));
        assert_ne!(a, request_hash("f", b"{ }"));
        // The length prefix keeps name and body apart.
        assert_ne!(request_hash("ab", b"c"), request_hash("a", b"bc"));
    }

    #[test]
    fn orphans_and_expiry() {
        let k = IdemKey {
            key: "k".into(),
            hash: "h".into(),
        };
        let d = entry("u", &k, "r", 1_000);
        assert!(!orphaned(&d, 1_000 + 9_999));
        assert!(orphaned(&d, 1_000 + 10_000));
        assert!(!expired(&d, 1_000 + IDEMPOTENCY_TTL_MS - 1));
        assert!(expired(&d, 1_000 + IDEMPOTENCY_TTL_MS));
    }
}
