//! A time-bounded exclusive lease in the `leases` collection (`LeaseDoc`), so that two billing
//! jobs started at once do not work side by side.
//!
//! Acquire: insert `{_id: name, holder, expires_at_ms}`; if it exists, take it over only with the
//! conditional update `{_id: name, expires_at_ms < now}`. A background task renews it (conditional
//! on `holder` still being us) every third of its time-to-live; the holder calls
//! [`Lease::check`] before each write phase, which renews synchronously when the background
//! renewal is late and stops the pass when another job has taken the lease. Release sets
//! `expires_at_ms` to 0 (again only while we hold it).
//!
//! The lease is an efficiency guard, not the correctness argument: the billing protocol stays
//! correct even if two passes overlap (see `billing`), the lease only keeps them from doing so.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bson::{doc, Document};
use mongodb::Database;
use schemas::names::collections;
use schemas::now_ms;

use common::wire;

/// Another job holds the lease: the pass did nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("another billing job holds the lease ({holder}, for {remaining_ms} ms more)")]
pub struct LeaseHeld {
    pub holder: String,
    pub remaining_ms: i64,
}

/// A held lease. Renewed in the background until [`Lease::release`] (or drop).
#[derive(Debug)]
pub struct Lease {
    db: Database,
    name: String,
    holder: String,
    ttl_ms: i64,
    lost: Arc<AtomicBool>,
    /// Local clock time (ms) until which the lease is known to be ours.
    valid_until_ms: Arc<AtomicI64>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Tries to take the lease `name` for `holder`. `Ok(Err(_))` when someone else holds it.
    pub async fn acquire(
        db: &Database,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> anyhow::Result<Result<Lease, LeaseHeld>> {
        let coll = db.collection::<Document>(collections::LEASES);
        let ttl_ms = ttl.as_millis() as i64;
        let now = now_ms();
        let fresh = doc! {"_id": name, "holder": holder, "expires_at_ms": now + ttl_ms};
        let acquired = match coll.insert_one(fresh).await {
            Ok(_) => true,
            Err(e) if common::mongo::is_duplicate_key(&e) => {
                let n = wire::update(
                    db,
                    collections::LEASES,
                    vec![doc! {
                        "q": {"_id": name, "expires_at_ms": {"$lt": now}},
                        "u": {"$set": {"holder": holder, "expires_at_ms": now + ttl_ms}},
                    }],
                    "taking over an expired lease",
                )
                .await?;
                n == 1
            }
            Err(e) => return Err(anyhow::Error::new(e).context("inserting the lease")),
        };
        if !acquired {
            let cur = coll
                .find_one(doc! {"_id": name})
                .await
                .context("reading the lease")?
                .unwrap_or_default();
            return Ok(Err(LeaseHeld {
                holder: wire::string(cur.get("holder")).unwrap_or("?").to_owned(),
                remaining_ms: (wire::int(cur.get("expires_at_ms")) - now).max(0),
            }));
        }
        let lost = Arc::new(AtomicBool::new(false));
        let valid_until_ms = Arc::new(AtomicI64::new(now + ttl_ms));
        let renewer = tokio::spawn(renew_loop(
            db.clone(),
            name.to_owned(),
            holder.to_owned(),
            ttl,
            lost.clone(),
            valid_until_ms.clone(),
        ));
        Ok(Ok(Lease {
            db: db.clone(),
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl_ms,
            lost,
            valid_until_ms,
            renewer,
        }))
    }

    /// Fails when the lease was taken by another job. When the background renewal is late (a
    /// slow server), renews it here first: a lease whose `holder` is still us was not taken,
    /// even if its time ran out, because a takeover rewrites `holder`.
    pub async fn check(&self) -> anyhow::Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            anyhow::bail!("lost the billing lease to another job");
        }
        let margin = (self.ttl_ms / 4).min(5_000);
        if now_ms() + margin < self.valid_until_ms.load(Ordering::SeqCst) {
            return Ok(());
        }
        let sent = now_ms();
        if renew(&self.db, &self.name, &self.holder, sent + self.ttl_ms).await? {
            self.valid_until_ms
                .fetch_max(sent + self.ttl_ms, Ordering::SeqCst);
            Ok(())
        } else {
            self.lost.store(true, Ordering::SeqCst);
            anyhow::bail!("lost the billing lease to another job")
        }
    }

    /// Stops renewing and gives the lease up (best effort).
    pub async fn release(self) {
        self.renewer.abort();
        let res = wire::update(
            &self.db,
            collections::LEASES,
            vec![doc! {
                "q": {"_id": &self.name, "holder": &self.holder},
                "u": {"$set": {"expires_at_ms": 0_i64}},
            }],
            "releasing the lease",
        )
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %format!("{e:#}"), "could not release the billing lease; it expires by itself");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Extends the lease while `holder` still has it; false when someone else took it.
async fn renew(db: &Database, name: &str, holder: &str, until_ms: i64) -> anyhow::Result<bool> {
    let n = wire::update(
        db,
        collections::LEASES,
        vec![doc! {
            "q": {"_id": name, "holder": holder},
            "u": {"$set": {"expires_at_ms": until_ms}},
        }],
        "renewing the lease",
    )
    .await?;
    Ok(n == 1)
}

async fn renew_loop(
    db: Database,
    name: String,
    holder: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
    valid_until_ms: Arc<AtomicI64>,
) {
    let ttl_ms = ttl.as_millis() as i64;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent = now_ms();
        match renew(&db, &name, &holder, sent + ttl_ms).await {
            Ok(true) => {
                valid_until_ms.fetch_max(sent + ttl_ms, Ordering::SeqCst);
            }
            Ok(false) => {
                tracing::error!(lease = %name, "the billing lease was taken by another job");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "renewing the billing lease failed; retrying");
            }
        }
    }
}
