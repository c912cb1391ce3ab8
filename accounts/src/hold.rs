//! Reservations and per-user limits: an account can never spend more than it has, however many
//! runs it starts at once, on however many gateways.
//!
//! **Accepting** an invocation is one conditional update of the user's document (atomic on one
//! document, so correct across gateways without transactions):
//!
//! ```text
//! filter: {_id, counters_version: 2, available_micros: {$gte: worst},
//!          queued_runs: {$lt: max_queued} [, sync_runs: {$lt: max_sync}]}
//! update: $inc {available_micros: −worst, reserved_micros: worst, queued_runs: 1
//!               [, sync_runs: 1]}
//! ```
//!
//! where `worst` is the invocation's worst-case cost (`timeout_ms` × resources × prices + the
//! request price, [`crate::Prices::worst_case`]) and `available_micros` the budget cap kept by
//! every movement ([`crate::credit`]). Nothing matched: the user is read (and its counters
//! started if they were not) to say why: 429 `user_limit` (too many runs in flight), else 402
//! `insufficient_credit`. The reservation travels with the run as its [`Hold`] (invocation →
//! task → result → run record).
//!
//! **Finishing**: the write that makes a run's record final (the run writer,
//! `common::runstore`; refused duplicates write nothing) applies its [`Settlement`] in the same
//! place: `$inc {spent_micros: cost, available_micros: worst − cost, reserved_micros: −worst,
//! queued_runs: −1 [, sync_runs: −1]}`. So the reservation is released exactly once, and only the real cost stays (never more
//! than the reservation, [`crate::pricing::bill`]). A run the gateway could not publish gets a
//! final record (failed by the platform, cost 0) carrying its hold, which releases it the same
//! way. A reservation that never reached a run (the request failed between the reservation and
//! the publish) is released by its [`Reservation`] guard.
//!
//! `sync_runs` counts the sync runs not finished yet: a sync call is in flight from its
//! acceptance until its run ends, on any gateway (a sync call abandoned with a 504 still holds
//! its slot until its run ends).

use bson::{doc, Document};
use mongodb::Database;
use schemas::Hold;

use crate::credit::{self, Counters, AVAILABLE, CURRENT, QUEUED, RESERVED, SPENT, SYNC, VERSION};

/// Accepted, unfinished runs a user may have by default (`GATEWAY_USER_MAX_QUEUED`).
pub const DEFAULT_MAX_QUEUED: i64 = 10_000;
/// Sync calls a user may have in flight by default (`GATEWAY_USER_MAX_SYNC`).
pub const DEFAULT_MAX_SYNC: i64 = 1_000;

/// Per-user limits, across all of a user's keys and every gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_queued: i64,
    pub max_sync: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queued: DEFAULT_MAX_QUEUED,
            max_sync: DEFAULT_MAX_SYNC,
        }
    }
}

/// Why an invocation was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("no such user")]
    UnknownUser,
    #[error("the available credit ({available_micros} micros) cannot cover this invocation's worst case ({needed_micros} micros)")]
    InsufficientCredit {
        available_micros: i64,
        needed_micros: i64,
    },
    #[error("{running} runs of this user are not finished yet (the limit is {limit})")]
    QueuedLimit { running: i64, limit: i64 },
    #[error("{running} sync calls of this user are in flight (the limit is {limit})")]
    SyncLimit { running: i64, limit: i64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The conditional update that reserves `hold` for `user_id` within `limits`.
pub fn reserve_statement(user_id: &str, hold: &Hold, limits: &Limits) -> (Document, Document) {
    let w = hold.reserved_micros;
    let mut filter = doc! {
        "_id": user_id,
        VERSION: CURRENT,
        AVAILABLE: {"$gte": w},
        QUEUED: {"$lt": limits.max_queued},
    };
    let mut inc = doc! {AVAILABLE: -w, RESERVED: w, QUEUED: 1_i64};
    if hold.sync {
        filter.insert(SYNC, doc! {"$lt": limits.max_sync});
        inc.insert(SYNC, 1_i64);
    }
    (filter, doc! {"$inc": inc})
}

/// Why [`reserve_statement`] would not match `c`; `None` if it would.
pub fn refusal(c: &Counters, hold: &Hold, limits: &Limits) -> Option<ReserveError> {
    if c.queued >= limits.max_queued {
        return Some(ReserveError::QueuedLimit {
            running: c.queued,
            limit: limits.max_queued,
        });
    }
    if hold.sync && c.sync >= limits.max_sync {
        return Some(ReserveError::SyncLimit {
            running: c.sync,
            limit: limits.max_sync,
        });
    }
    if c.available() < hold.reserved_micros {
        return Some(ReserveError::InsufficientCredit {
            available_micros: c.available(),
            needed_micros: hold.reserved_micros,
        });
    }
    None
}

/// Reserves `worst` micros (and a run slot, and a sync slot when `sync`) for an invocation of
/// `user_id`. The returned guard releases the reservation when dropped, unless it was handed
/// over to the run ([`Reservation::hand_over`]).
pub async fn reserve(
    db: &Database,
    user_id: &str,
    worst: i64,
    sync: bool,
    limits: &Limits,
) -> Result<Reservation, ReserveError> {
    let hold = Hold {
        reserved_micros: worst.max(0),
        sync,
    };
    let (filter, update) = reserve_statement(user_id, &hold, limits);
    for _ in 0..3 {
        let r = credit::users(db)
            .update_one(filter.clone(), update.clone())
            .await
            .map_err(|e| anyhow::Error::new(e).context("reserving credit"))?;
        if r.matched_count == 1 {
            return Ok(Reservation {
                db: db.clone(),
                user_id: user_id.to_owned(),
                hold: Some(hold),
            });
        }
        let c = match credit::counters(db, user_id).await {
            Ok(c) => c,
            Err(crate::AccountError::NotFound(_)) => return Err(ReserveError::UnknownUser),
            Err(e) => return Err(ReserveError::Internal(e.into())),
        };
        if let Some(why) = refusal(&c, &hold, limits) {
            return Err(why);
        }
        // The counters moved between the update and the read (or were just initialised).
    }
    Err(ReserveError::Internal(anyhow::anyhow!(
        "the account of {user_id} changed too often to reserve credit"
    )))
}

/// Undoes a reservation that never reached a run.
pub async fn release(db: &Database, user_id: &str, hold: &Hold) -> anyhow::Result<()> {
    let mut s = Settlement::default();
    s.add(0, Some(hold));
    let (q, u) = s.statement(user_id);
    credit::users(db).update_one(q, u).await?;
    Ok(())
}

/// A reservation taken for an invocation. Dropped without [`Reservation::hand_over`] (the
/// request failed before the run was published), it releases itself in the background.
#[derive(Debug)]
pub struct Reservation {
    db: Database,
    user_id: String,
    hold: Option<Hold>,
}

impl Reservation {
    /// What the run carries, for its final record to release.
    pub fn hold(&self) -> Hold {
        self.hold.unwrap_or_default()
    }

    /// The run now carries the hold (it is being published, or its failed final record is
    /// being written): its final record releases it, not this guard.
    pub fn hand_over(mut self) {
        self.hold = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        let (db, user_id) = (self.db.clone(), std::mem::take(&mut self.user_id));
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                user_id,
                reserved_micros = hold.reserved_micros,
                "a reservation was dropped outside a runtime and not released"
            );
            return;
        };
        rt.spawn(async move {
            let mut backoff = std::time::Duration::from_millis(100);
            for attempt in 0..8 {
                match release(&db, &user_id, &hold).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), user_id, attempt, "releasing a reservation failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
            tracing::error!(user_id, reserved_micros = hold.reserved_micros, "a reservation was not released");
        });
    }
}

/// What finished runs change on one user's counters: their costs, and the release of their
/// reservations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settlement {
    pub spent: i64,
    pub released: i64,
    pub runs: i64,
    pub sync_runs: i64,
}

impl Settlement {
    /// Adds one run whose final record landed: its cost, and its hold if it had one.
    pub fn add(&mut self, cost: i64, hold: Option<&Hold>) {
        self.spent = self.spent.saturating_add(cost.max(0));
        if let Some(h) = hold {
            self.released = self.released.saturating_add(h.reserved_micros.max(0));
            self.runs += 1;
            self.sync_runs += i64::from(h.sync);
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Settlement::default()
    }

    /// The update of the user's document. It keeps `available − (balance + paid − spent −
    /// reserved)` unchanged, so it is right on counters not started yet. Accounts from before
    /// the counters (no `spent_micros`) are left alone: initialising them later counts these
    /// runs from the run records.
    pub fn statement(&self, user_id: &str) -> (Document, Document) {
        let mut inc = Document::new();
        for (k, v) in [
            (SPENT, self.spent),
            (AVAILABLE, self.released - self.spent),
            (RESERVED, -self.released),
            (QUEUED, -self.runs),
            (SYNC, -self.sync_runs),
        ] {
            if v != 0 {
                inc.insert(k, v);
            }
        }
        (
            doc! {"_id": user_id, SPENT: {"$exists": true}},
            doc! {"$inc": inc},
        )
    }
}

/// The field of a user's document listing the settlement batches applied to it and not yet
/// cleaned up (see [`settle_statements`]).
pub const SETTLING: &str = "settling";

/// Raw `update` statements (`{q, u}`) applying each user's settlement of batch `batch`, for
/// one round trip. Each applies at most once per batch: it requires `batch` absent from the
/// user's [`SETTLING`] list and adds it there in the same update, so a batch settled again
/// (a writer that died after settling, recovered by another) changes nothing.
pub fn settle_statements<'a>(
    by_user: impl IntoIterator<Item = (&'a String, &'a Settlement)>,
    batch: &str,
) -> Vec<Document> {
    by_user
        .into_iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(user, s)| {
            let (mut q, mut u) = s.statement(user);
            // `$nin` rather than `$ne`: the same on MongoDB, and the stand-in matches a missing
            // list with it.
            q.insert(SETTLING, doc! {"$nin": [batch]});
            u.insert("$push", doc! {SETTLING: batch});
            doc! {"q": q, "u": u}
        })
        .collect()
}

/// The raw `update` statement that forgets batch `batch` on these users once its runs are
/// marked settled (it is no longer needed to refuse a second application).
pub fn forget_batch_statement(users: Vec<String>, batch: &str) -> Document {
    doc! {
        "q": {"_id": {"$in": users}},
        "u": {"$pull": {SETTLING: batch}},
        "multi": true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(available: i64, queued: i64, sync: i64) -> Counters {
        Counters {
            balance: available,
            available,
            queued,
            sync,
            ..Counters::default()
        }
    }

    #[test]
    fn refusals_say_why() {
        let limits = Limits {
            max_queued: 3,
            max_sync: 1,
        };
        let async_hold = Hold {
            reserved_micros: 10,
            sync: false,
        };
        let sync_hold = Hold {
            reserved_micros: 10,
            sync: true,
        };
        assert!(refusal(&counters(10, 2, 0), &async_hold, &limits).is_none());
        assert!(matches!(
            refusal(&counters(9, 0, 0), &async_hold, &limits),
            Some(ReserveError::InsufficientCredit {
                available_micros: 9,
                needed_micros: 10
            })
        ));
        assert!(matches!(
            refusal(&counters(1_000, 3, 0), &async_hold, &limits),
            Some(ReserveError::QueuedLimit {
                running: 3,
                limit: 3
            })
        ));
        // The sync limit applies to sync calls only.
        assert!(refusal(&counters(1_000, 1, 1), &async_hold, &limits).is_none());
        assert!(matches!(
            refusal(&counters(1_000, 1, 1), &sync_hold, &limits),
            Some(ReserveError::SyncLimit {
                running: 1,
                limit: 1
            })
        ));
    }

    #[test]
    fn one_micro_covers_one_worst_case_of_one_micro() {
        let hold = Hold {
            reserved_micros: 1,
            sync: false,
        };
        let mut c = counters(1, 0, 0);
        assert!(refusal(&c, &hold, &Limits::default()).is_none());
        // What the reservation's $inc does:
        c.available -= 1;
        c.reserved += 1;
        c.queued += 1;
        assert!(matches!(
            refusal(&c, &hold, &Limits::default()),
            Some(ReserveError::InsufficientCredit {
                available_micros: 0,
                ..
            })
        ));
    }

    #[test]
    fn settlements_release_what_was_reserved_and_keep_the_cost() {
        let mut s = Settlement::default();
        s.add(
            7,
            Some(&Hold {
                reserved_micros: 25,
                sync: true,
            }),
        );
        s.add(
            0,
            Some(&Hold {
                reserved_micros: 25,
                sync: false,
            }),
        );
        s.add(3, None);
        assert_eq!(
            s,
            Settlement {
                spent: 10,
                released: 50,
                runs: 2,
                sync_runs: 1
            }
        );
        let (q, u) = s.statement("u1");
        assert_eq!(q, doc! {"_id": "u1", SPENT: {"$exists": true}});
        assert_eq!(
            u,
            doc! {"$inc": {SPENT: 10_i64, AVAILABLE: 40_i64, RESERVED: -50_i64, QUEUED: -2_i64,
            SYNC: -1_i64}}
        );
        // Reserve then settle: the counters end as if only the cost had been spent, and the
        // kept counter agrees with the formula all along.
        let before = counters(100, 0, 0);
        let mut after = before;
        after.available -= 50;
        after.reserved += 50;
        after.queued += 2;
        after.sync += 1;
        assert_eq!(after.available(), after.formula());
        after.spent += s.spent;
        after.available += s.released - s.spent;
        after.reserved -= s.released;
        after.queued -= s.runs;
        after.sync -= s.sync_runs;
        assert_eq!(after.available(), before.available() - 10);
        assert_eq!(after.available(), after.formula());
        assert_eq!((after.reserved, after.queued, after.sync), (0, 0, 0));
    }

    #[test]
    fn empty_settlements_write_nothing() {
        let mut by_user = std::collections::HashMap::new();
        by_user.insert("a".to_owned(), Settlement::default());
        let mut s = Settlement::default();
        s.add(5, None);
        by_user.insert("b".to_owned(), s);
        let st = settle_statements(&by_user, "batch-1");
        assert_eq!(st.len(), 1);
        let q = st[0].get_document("q").unwrap();
        assert_eq!(q.get_str("_id").unwrap(), "b");
        // Applied at most once per batch: the filter refuses a batch already listed, and the
        // update lists it.
        assert_eq!(
            q.get_document(SETTLING).unwrap(),
            &doc! {"$nin": ["batch-1"]}
        );
        let u = st[0].get_document("u").unwrap();
        assert_eq!(
            u.get_document("$push").unwrap(),
            &doc! {SETTLING: "batch-1"}
        );
    }

    #[test]
    fn the_reservation_filter_has_every_condition() {
        let limits = Limits::default();
        let hold = Hold {
            reserved_micros: 25,
            sync: true,
        };
        let (q, u) = reserve_statement("u1", &hold, &limits);
        assert_eq!(
            q,
            doc! {"_id": "u1", VERSION: CURRENT, AVAILABLE: {"$gte": 25_i64},
            QUEUED: {"$lt": 10_000_i64}, SYNC: {"$lt": 1_000_i64}}
        );
        assert_eq!(
            u,
            doc! {"$inc": {AVAILABLE: -25_i64, RESERVED: 25_i64, QUEUED: 1_i64, SYNC: 1_i64}}
        );
        let no_sync = Hold {
            sync: false,
            ..hold
        };
        let (q, u) = reserve_statement("u1", &no_sync, &limits);
        assert!(!q.contains_key(SYNC));
        assert_eq!(
            u,
            doc! {"$inc": {AVAILABLE: -25_i64, RESERVED: 25_i64, QUEUED: 1_i64}}
        );
    }
}
