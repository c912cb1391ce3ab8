//! Available credit, the one formula of the budget cap. Every money movement changes counters on
//! the user's document, each by one atomic `$inc`:
//!
//! ```text
//! available_micros = balance_micros + paid_micros − spent_micros − reserved_micros
//! ```
//!
//! - `balance_micros`: money on the account (top-ups raise it, paying a bill lowers it);
//! - `paid_micros`: every bill paid, ever (raised in the same update that lowers the balance,
//!   so paying a bill leaves the available credit unchanged: its runs were counted already);
//! - `spent_micros`: the cost of every finished run, ever (raised by the run writer when a
//!   final record lands, [`crate::hold::Settlement`]);
//! - `reserved_micros`: the worst-case cost of the runs accepted and not finished yet (raised
//!   when an invocation is accepted, lowered by the same final write that adds its real cost).
//!
//! Since every finished run's cost ends on exactly one bill and a paid bill was deducted from
//! the balance exactly once, this is balance − unpaid bills − the cost of finished runs on no
//! paid bill − the reservations: one document read, never a sum over runs.
//!
//! `available_micros` is a counter of its own, moved by the same `$inc` as the others (a
//! top-up raises it with the balance, a reservation lowers it by what it adds to
//! `reserved_micros`, a settlement raises it by the reservation minus the cost), so that
//! reserving is a plain conditional update, `{available_micros: {$gte: worst}}`: atomic on one
//! document on MongoDB, and correct on the stand-in, which ignores the other conditions of a
//! filter that has `$expr`. Every movement keeps `available − (balance + paid − spent −
//! reserved)` unchanged, so a document whose counter was never started is started by adding
//! that difference as read from it, whatever moves in between ([`start`]); `counters_version`
//! marks it started (with `queued_runs` and `sync_runs`, the per-user limits).
//!
//! Accounts created before the counters have no `spent_micros`; they are initialised from their
//! runs and bills first ([`migrate`]). There is no second way to compute the credit.

use anyhow::Context as _;
use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::Database;
use schemas::lenient::int;
use schemas::names::collections;
use schemas::{BillStatus, RunStatus};

use crate::AccountError;

/// Money on the account (micros).
pub const BALANCE: &str = "balance_micros";
/// Amount of every bill the user paid, ever (micros).
pub const PAID: &str = "paid_micros";
/// Cost of every finished run of the user, ever (micros).
pub const SPENT: &str = "spent_micros";
/// Worst-case cost of the user's accepted, unfinished runs (micros).
pub const RESERVED: &str = "reserved_micros";
/// The budget cap, kept by every movement (micros).
pub const AVAILABLE: &str = "available_micros";
/// The user's accepted, unfinished runs (the per-user limit).
pub const QUEUED: &str = "queued_runs";
/// The user's accepted, unfinished sync runs (the per-user sync limit).
pub const SYNC: &str = "sync_runs";
/// Set (to [`CURRENT`]) once `available_micros`, `queued_runs` and `sync_runs` are started.
pub const VERSION: &str = "counters_version";
/// The value of [`VERSION`] this code keeps.
pub const CURRENT: i64 = 2;

/// A user's counters, as read. Missing ones are 0 (the stand-in may hand back int32).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub balance: i64,
    pub paid: i64,
    pub spent: i64,
    pub reserved: i64,
    /// `available_micros` as kept: [`Counters::formula`] once started.
    pub available: i64,
    pub queued: i64,
    pub sync: i64,
}

impl Counters {
    /// The fields of a user document, started or not.
    fn read(user: &Document) -> Counters {
        Counters {
            balance: int(user.get(BALANCE)),
            paid: int(user.get(PAID)),
            spent: int(user.get(SPENT)),
            reserved: int(user.get(RESERVED)),
            available: int(user.get(AVAILABLE)),
            queued: int(user.get(QUEUED)),
            sync: int(user.get(SYNC)),
        }
    }

    /// The counters of a user document, or `None` while they are not started.
    pub fn of(user: &Document) -> Option<Counters> {
        user.get(SPENT)?;
        (int(user.get(VERSION)) >= CURRENT).then(|| Counters::read(user))
    }

    /// The one formula: `balance + paid − spent − reserved`.
    pub fn formula(&self) -> i64 {
        self.balance
            .saturating_add(self.paid)
            .saturating_sub(self.spent)
            .saturating_sub(self.reserved)
    }

    /// The budget cap.
    pub fn available(&self) -> i64 {
        self.available
    }
}

/// Fields to project when reading a user for [`Counters::of`].
pub fn projection() -> Document {
    doc! {BALANCE: 1, PAID: 1, SPENT: 1, RESERVED: 1, AVAILABLE: 1, QUEUED: 1, SYNC: 1, VERSION: 1}
}

pub(crate) fn users(db: &Database) -> mongodb::Collection<Document> {
    db.collection(collections::USERS)
}

/// The user's counters (started first if they are not); 404 for an unknown user.
pub async fn counters(db: &Database, user_id: &str) -> Result<Counters, AccountError> {
    for _ in 0..3 {
        let user = users(db)
            .find_one(doc! {"_id": user_id})
            .projection(projection())
            .await
            .map_err(|e| crate::internal(e, "reading the user"))?
            .ok_or(AccountError::NotFound("user"))?;
        if let Some(c) = Counters::of(&user) {
            return Ok(c);
        }
        if user.contains_key(SPENT) {
            start(db, user_id, &user).await?;
        } else {
            migrate(db, user_id).await?;
        }
    }
    Err(AccountError::Internal(anyhow::anyhow!(
        "the counters of user {user_id} could not be initialised"
    )))
}

/// The budget cap of a user: balance − unpaid bills − finished runs on no paid bill − the
/// worst case of the runs in flight.
pub async fn available_credit(db: &Database, user_id: &str) -> Result<i64, AccountError> {
    Ok(counters(db, user_id).await?.available())
}

/// Starts `available_micros` (and the limits' counters) of a user document read as `user`, by
/// adding the difference between the formula and what the counter holds: every movement keeps
/// that difference, so it is the same now as when `user` was read. The marker makes it happen
/// once.
async fn start(db: &Database, user_id: &str, user: &Document) -> Result<(), AccountError> {
    let c = Counters::read(user);
    let missing = c.formula().saturating_sub(c.available);
    users(db)
        .update_one(
            doc! {"_id": user_id, VERSION: {"$exists": false}},
            doc! {"$inc": {AVAILABLE: missing, RESERVED: 0_i64, QUEUED: 0_i64, SYNC: 0_i64},
            "$set": {VERSION: CURRENT}},
        )
        .await
        .map_err(|e| crate::internal(e, "starting the credit counters"))?;
    Ok(())
}

/// Sum of `field` over `filter`: a `$group` on the server, or a projection summed here where
/// the server cannot aggregate.
async fn sum(db: &Database, coll: &str, filter: Document, field: &str) -> anyhow::Result<i64> {
    let c = db.collection::<Document>(coll);
    let pipeline = vec![
        doc! {"$match": filter.clone()},
        doc! {"$group": {"_id": Bson::Null, "total": {"$sum": format!("${field}")}}},
    ];
    let agg: Result<Vec<Document>, _> =
        async { c.aggregate(pipeline).await?.try_collect().await }.await;
    if let Ok(docs) = agg {
        return Ok(docs.first().map_or(0, |d| int(d.get("total"))));
    }
    let mut cur = c
        .find(filter)
        .projection(doc! {field: 1})
        .await
        .with_context(|| format!("summing {coll}.{field}"))?;
    let mut total: i64 = 0;
    while let Some(d) = cur.try_next().await? {
        total = total.saturating_add(int(d.get(field)));
    }
    Ok(total)
}

/// Initialises the counters of an account from before them: `spent_micros` is the cost of all
/// its finished runs, `paid_micros` the amount of all its bills whose payment deducted (paid,
/// or locked by an attempt whose deduction marker is on the user). Written only if the balance
/// is still what was read, and only once (`spent_micros` absent); reservations and limits
/// start at zero (no run of such an account holds any); [`start`] then starts the rest.
///
/// One-time caveat: a run of this account whose final record lands while this runs may be
/// missed by the sum (the run writer leaves accounts without counters alone), making its
/// credit higher by that run's cost; its bill still has it.
pub async fn migrate(db: &Database, user_id: &str) -> Result<(), AccountError> {
    let fail = |e: anyhow::Error| AccountError::Internal(e.context("initialising credit counters"));
    let user = users(db)
        .find_one(doc! {"_id": user_id})
        .projection(doc! {BALANCE: 1, SPENT: 1, "payments": 1})
        .await
        .map_err(|e| crate::internal(e, "reading the user"))?
        .ok_or(AccountError::NotFound("user"))?;
    if user.contains_key(SPENT) {
        return Ok(());
    }
    let finals: Vec<&str> = RunStatus::FINAL.iter().map(|s| s.as_str()).collect();
    let spent = sum(
        db,
        collections::RUNS,
        doc! {"user_id": user_id, "status": {"$in": finals}},
        "billed_micros",
    )
    .await
    .map_err(fail)?;
    let deducted: Vec<String> = user
        .get_array("payments")
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str()?.strip_suffix('+').map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let paid = sum(
        db,
        collections::BILLS,
        doc! {"user_id": user_id, "$or": [
            {"status": BillStatus::Paid.as_str()},
            {"status": BillStatus::Unpaid.as_str(), "payment_attempt": {"$in": deducted}},
        ]},
        "amount_micros",
    )
    .await
    .map_err(fail)?;
    let set = users(db)
        .update_one(
            doc! {"_id": user_id, SPENT: {"$exists": false}, BALANCE: user.get(BALANCE).cloned().unwrap_or(Bson::Null)},
            doc! {"$set": {SPENT: spent, PAID: paid}},
        )
        .await
        .map_err(|e| crate::internal(e, "initialising credit counters"))?;
    if set.matched_count == 1 {
        tracing::info!(
            user_id,
            spent,
            paid,
            "initialised the credit counters of an older account"
        );
    }
    // Not matched: the balance moved (a top-up or payment) or another service initialised
    // them; the caller reads again.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Bson};

    #[test]
    fn available_is_balance_plus_paid_minus_spent_minus_reserved() {
        // 10,000 credited; 1,500 billed (500 of it paid); 34 more spent, not billed yet;
        // 66 reserved by runs in flight.
        let u = doc! {"balance_micros": 9_500_i64, "paid_micros": 500, "spent_micros": 1_534,
        "reserved_micros": 66_i64, "available_micros": 8_400_i64,
        "queued_runs": 2, "counters_version": 2};
        let c = Counters::of(&u).unwrap();
        assert_eq!(c.formula(), 10_000 - 1_500 - 34 - 66);
        assert_eq!(c.available(), c.formula());
        assert_eq!((c.queued, c.sync), (2, 0));
        // The stand-in may hand back int32; missing counters are 0.
        let u = doc! {"balance_micros": Bson::Int32(100), "spent_micros": Bson::Int32(60),
        "available_micros": Bson::Int32(40), "counters_version": Bson::Int32(2)};
        assert_eq!(Counters::of(&u).unwrap().available(), 40);
    }

    #[test]
    fn counters_not_started_are_not_read() {
        assert_eq!(Counters::of(&doc! {"balance_micros": 5}), None);
        let u = doc! {"balance_micros": 5, "spent_micros": 0, "available_micros": 5};
        assert_eq!(Counters::of(&u), None);
    }

    #[test]
    fn starting_adds_what_every_movement_kept() {
        // Before the counter was started: 100 credited, a top-up of 50 (which raised both),
        // a run that cost 7 (raised spent, lowered available), a bill of 20 paid.
        let mut c = Counters {
            balance: 100,
            ..Counters::default()
        };
        let diff = |c: &Counters| c.formula() - c.available;
        let start = diff(&c);
        for (balance, paid, spent, available) in [(50, 0, 0, 50), (0, 0, 7, -7), (-20, 20, 0, 0)] {
            c.balance += balance;
            c.paid += paid;
            c.spent += spent;
            c.available += available;
            assert_eq!(diff(&c), start);
        }
        c.available += diff(&c);
        assert_eq!(c.available, 100 + 50 - 7);
        assert_eq!(c.available, c.formula());
    }
}
