//! Accounts: top-ups through a pluggable payment provider, paying a bill from the balance, the
//! available credit (the budget cap), the account history, and the free credit of new accounts.
//! The portal calls these; errors map to HTTP statuses with [`AccountError::status`].
//!
//! # Paying a bill without transactions
//!
//! Two documents change (the bill and the user's balance), so the order matters. Each step is
//! one atomic, conditional single-document update:
//!
//! 1. **Lock the bill** for this attempt `A`: `{_id, user_id, status: "unpaid",
//!    payment_attempt: null}` → `$set {payment_attempt: A, payment_started_ms}`. Concurrent
//!    attempts find the bill locked (or paid) and get 409: exactly one proceeds.
//! 2. **Deduct** in one update of the user: `{_id, balance_micros >= amount, payments ∌ A+, A-}`
//!    → `$inc {balance_micros: -amount, paid_micros: amount}`, `$push {payments: "A+"}`. The
//!    balance can never go negative, and the marker `A+` records atomically *that this attempt
//!    deducted*. When nothing matched because the balance is too low, the bill is unlocked
//!    (conditional on `A`) → 402, nothing changed.
//! 3. **History** entry with the deterministic id `pay-<bill_id>` (a repeat is a duplicate key,
//!    ignored).
//! 4. **Bill → paid**: `{_id, payment_attempt: A}` → `$set {status: "paid", paid_at_ms}`,
//!    `$unset` the lock.
//! 5. `$pull` the marker `A+` (the paid bill is now the record).
//!
//! A crash leaves the bill locked by `A`. A later payment of that bill that finds the lock older
//! than [`STALE_ATTEMPT_MS`] resolves it: it first **voids** `A` with `{_id: user, payments ∌
//! A+, A-}` → `$push "A-"`. Steps 2 and the void exclude each other (both require that neither
//! marker is present), so exactly one happens: if the void matched, `A` never deducted and can no
//! longer do so (even if it was merely slow), and the bill is unlocked; if `A+` is there, the
//! deduction happened and steps 3–5 are completed. No payment is ever deducted twice or lost.
//!
//! While a payment is in flight the bill's status stays `unpaid` to every reader, so the budget
//! cap counts it until it is paid (at worst counting the amount twice for a moment, never zero
//! times). The lock fields (`payment_attempt`, `payment_started_ms`) and the user's `payments`
//! markers are extra fields outside `BillDoc` / `UserDoc`; readers that deserialize those types
//! ignore them.
//!
//! # Top-ups
//!
//! The card is checked (Luhn, expiry, CVC) and the amount (> 0, at most
//! [`MAX_TOPUP_MICROS`]) before the provider is asked; then the balance is raised with one
//! `$inc` and a history entry (`kind: topup`, `account_last4`) is written. Only the last four
//! digits are ever stored.

use std::fmt;

use anyhow::Context as _;
use bson::{doc, Bson, Document};
use futures::future::BoxFuture;
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use mongodb::Database;
use schemas::names::collections;
use schemas::{now_ms, BillDoc, BillState, BillStatus, HistoryDoc, HistoryKind, RunStatus};

use crate::billing::DRAFTS;
pub use crate::card::{Card, CardError, ValidCard};
use common::{credit, wire};

/// New accounts start with this much credit unless configured otherwise.
pub const DEFAULT_FREE_CREDIT_MICROS: i64 = 1_000_000;
/// The variable that configures the free credit of new accounts.
pub const FREE_CREDIT_ENV: &str = "FREE_CREDIT_MICROS";
/// Largest single top-up: 1,000,000 units.
pub const MAX_TOPUP_MICROS: i64 = 1_000_000 * 1_000_000;
/// A payment attempt that has held a bill this long is presumed dead and may be resolved.
pub const STALE_ATTEMPT_MS: i64 = 30_000;

/// The free credit of new accounts: `FREE_CREDIT_MICROS`, default 1,000,000 (one unit).
pub fn free_credit_micros(env: &common::config::Env) -> Result<i64, common::config::ConfigError> {
    let v: i64 = common::config::parse(env, None, FREE_CREDIT_ENV, DEFAULT_FREE_CREDIT_MICROS)?;
    if v < 0 {
        return Err(common::config::ConfigError::new(
            FREE_CREDIT_ENV,
            "must not be negative",
        ));
    }
    Ok(v)
}

/// What can go wrong in an account operation.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid card: {0}")]
    InvalidCard(#[from] CardError),
    #[error("invalid amount: {0}")]
    InvalidAmount(String),
    #[error("the card was declined")]
    Declined,
    #[error("the balance ({balance_micros} micros) is too low to pay {amount_micros} micros")]
    InsufficientBalance {
        balance_micros: i64,
        amount_micros: i64,
    },
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("the bill is already paid, or a payment of it is in progress")]
    AlreadyPaid,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AccountError {
    /// The HTTP status of the contract.
    pub fn status(&self) -> u16 {
        match self {
            AccountError::InvalidCard(_) | AccountError::InvalidAmount(_) => 400,
            AccountError::Declined | AccountError::InsufficientBalance { .. } => 402,
            AccountError::NotFound(_) => 404,
            AccountError::AlreadyPaid => 409,
            AccountError::Internal(_) => 500,
        }
    }

    /// The contract's snake_case error code.
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::InvalidCard(_) => "invalid_card",
            AccountError::InvalidAmount(_) => "invalid_amount",
            AccountError::Declined => "card_declined",
            AccountError::InsufficientBalance { .. } => "insufficient_balance",
            AccountError::NotFound(_) => "not_found",
            AccountError::AlreadyPaid => "already_paid",
            AccountError::Internal(_) => "internal",
        }
    }
}

fn internal(e: impl Into<anyhow::Error>, what: &'static str) -> AccountError {
    AccountError::Internal(e.into().context(what))
}

/// One charge asked of a provider.
#[derive(Debug)]
pub struct Charge<'a> {
    /// Unique per top-up; a provider may use it to make retries idempotent.
    pub idempotency_key: &'a str,
    pub amount_micros: i64,
    pub card: &'a ValidCard,
}

/// Why a provider refused.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("declined: {0}")]
    Declined(String),
    #[error("payment provider unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

/// A card payment provider.
pub trait PaymentProvider: Send + Sync + fmt::Debug {
    /// Charges the card; `Ok` holds the provider's reference.
    fn charge<'a>(&'a self, charge: Charge<'a>) -> BoxFuture<'a, Result<String, ProviderError>>;
}

/// The built-in test provider: accepts every valid card except `4000000000000002`, which it
/// declines.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestProvider;

/// The card number the test provider declines.
pub const TEST_DECLINED_CARD: &str = "4000000000000002";

impl PaymentProvider for TestProvider {
    fn charge<'a>(&'a self, charge: Charge<'a>) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            if charge.card.number() == TEST_DECLINED_CARD {
                Err(ProviderError::Declined("test card declined".into()))
            } else {
                Ok(format!("test-{}", charge.idempotency_key))
            }
        })
    }
}

fn users(db: &Database) -> mongodb::Collection<Document> {
    db.collection(collections::USERS)
}

fn bills(db: &Database) -> mongodb::Collection<Document> {
    db.collection(collections::BILLS)
}

fn status(s: BillStatus) -> Bson {
    bson::to_bson(&s).unwrap_or(Bson::Null)
}

/// Adds `amount_micros` to the user's balance after charging `card`; returns the new balance.
pub async fn topup(
    db: &Database,
    provider: &dyn PaymentProvider,
    user_id: &str,
    amount_micros: i64,
    card: &Card,
) -> Result<i64, AccountError> {
    if amount_micros <= 0 {
        return Err(AccountError::InvalidAmount("must be more than 0".into()));
    }
    if amount_micros > MAX_TOPUP_MICROS {
        return Err(AccountError::InvalidAmount(format!(
            "must be at most {MAX_TOPUP_MICROS} micros"
        )));
    }
    let card = crate::card::validate(card, crate::card::this_month())?;
    let exists = users(db)
        .find_one(doc! {"_id": user_id})
        .projection(doc! {"_id": 1})
        .await
        .map_err(|e| internal(e, "reading the user"))?;
    if exists.is_none() {
        return Err(AccountError::NotFound("user"));
    }
    let topup_id = uuid::Uuid::now_v7().simple().to_string();
    let reference = provider
        .charge(Charge {
            idempotency_key: &topup_id,
            amount_micros,
            card: &card,
        })
        .await
        .map_err(|e| match e {
            ProviderError::Declined(_) => AccountError::Declined,
            ProviderError::Unavailable(e) => AccountError::Internal(e),
        })?;
    let after = users(db)
        .find_one_and_update(
            doc! {"_id": user_id, "balance_micros": {"$lte": i64::MAX - amount_micros}},
            doc! {"$inc": {"balance_micros": amount_micros}},
        )
        .projection(doc! {"balance_micros": 1})
        .return_document(ReturnDocument::After)
        .await
        .map_err(|e| internal(e, "raising the balance"))?;
    let Some(after) = after else {
        tracing::error!(user_id, reference = %reference, "charged a card but could not raise the balance");
        return Err(AccountError::InvalidAmount(
            "the balance would overflow".into(),
        ));
    };
    let entry = HistoryDoc {
        id: format!("topup-{topup_id}"),
        user_id: user_id.to_owned(),
        at_ms: now_ms(),
        kind: HistoryKind::Topup,
        amount_micros,
        bill_id: None,
        account_last4: Some(card.last4().to_owned()),
    };
    write_history(db, &entry).await;
    tracing::info!(user_id, amount_micros, last4 = card.last4(), "top-up");
    Ok(wire::int(after.get("balance_micros")))
}

/// Inserts a history entry; a duplicate id means it is already there. Retried a few times: the
/// money has moved by then, so a failure is logged, not returned.
async fn write_history(db: &Database, entry: &HistoryDoc) {
    let coll = db.collection::<HistoryDoc>(collections::HISTORY);
    for attempt in 0..3u64 {
        match coll.insert_one(entry).await {
            Ok(_) => return,
            Err(e) if common::mongo::is_duplicate_key(&e) => return,
            Err(e) => {
                tracing::warn!(error = %e, id = %entry.id, attempt, "writing account history failed");
                tokio::time::sleep(std::time::Duration::from_millis(100 * (attempt + 1))).await;
            }
        }
    }
    tracing::error!(id = %entry.id, user_id = %entry.user_id, "account history entry not written");
}

/// A bill and its payment lock, as stored.
struct StoredBill {
    bill: BillDoc,
    attempt: Option<(String, i64)>,
}

async fn read_bill(
    db: &Database,
    user_id: &str,
    bill_id: &str,
) -> Result<Option<StoredBill>, AccountError> {
    let Some(d) = bills(db)
        .find_one(doc! {"_id": bill_id, "user_id": user_id})
        .await
        .map_err(|e| internal(e, "reading the bill"))?
    else {
        return Ok(None);
    };
    let attempt = wire::string(d.get("payment_attempt"))
        .map(|a| (a.to_owned(), wire::int(d.get("payment_started_ms"))));
    let bill: BillDoc = bson::from_document(d).map_err(|e| internal(e, "decoding the bill"))?;
    Ok(Some(StoredBill { bill, attempt }))
}

/// Pays a bill of `user_id` from the balance. 404 when it is not theirs, 409 when it is paid or
/// being paid, 402 when the balance is too low (nothing changes then).
pub async fn pay_bill(
    db: &Database,
    user_id: &str,
    bill_id: &str,
) -> Result<BillDoc, AccountError> {
    pay_bill_with(db, user_id, bill_id, STALE_ATTEMPT_MS).await
}

/// [`pay_bill`] with the staleness threshold of a crashed attempt's lock.
pub async fn pay_bill_with(
    db: &Database,
    user_id: &str,
    bill_id: &str,
    stale_after_ms: i64,
) -> Result<BillDoc, AccountError> {
    for _ in 0..3 {
        let stored = read_bill(db, user_id, bill_id)
            .await?
            .ok_or(AccountError::NotFound("bill"))?;
        if stored.bill.status == BillStatus::Paid {
            return Err(AccountError::AlreadyPaid);
        }
        match &stored.attempt {
            Some((a, started)) if now_ms() - started > stale_after_ms => {
                resolve_stale(db, &stored.bill, a).await?;
                continue;
            }
            Some(_) => return Err(AccountError::AlreadyPaid),
            None => return attempt_payment(db, stored.bill).await,
        }
    }
    Err(AccountError::AlreadyPaid)
}

async fn attempt_payment(db: &Database, mut bill: BillDoc) -> Result<BillDoc, AccountError> {
    let attempt = uuid::Uuid::new_v4().simple().to_string();
    let amount = bill.amount_micros;
    // (1) Lock the bill for this attempt.
    let n = wire::update(
        db,
        collections::BILLS,
        vec![doc! {
            "q": {"_id": &bill.id, "user_id": &bill.user_id, "status": status(BillStatus::Unpaid),
                  "payment_attempt": Bson::Null},
            "u": {"$set": {"payment_attempt": &attempt, "payment_started_ms": now_ms()}},
        }],
        "locking the bill",
    )
    .await?;
    if n == 0 {
        return Err(AccountError::AlreadyPaid);
    }
    // (2) Deduct, recording the attempt in the same update.
    let (applied, voided) = (format!("{attempt}+"), format!("{attempt}-"));
    let n = wire::update(
        db,
        collections::USERS,
        vec![doc! {
            "q": {"_id": &bill.user_id, "balance_micros": {"$gte": amount},
                  "payments": {"$nin": [&applied, &voided]}},
            "u": {"$inc": {"balance_micros": -amount, credit::PAID: amount},
                  "$push": {"payments": &applied}},
        }],
        "deducting the bill from the balance",
    )
    .await?;
    if n == 0 {
        let user = users(db)
            .find_one(doc! {"_id": &bill.user_id})
            .projection(doc! {"balance_micros": 1, "payments": 1})
            .await
            .map_err(|e| internal(e, "reading the user"))?;
        let Some(user) = user else {
            unlock(db, &bill.id, &attempt).await?;
            return Err(AccountError::NotFound("user"));
        };
        if has_marker(&user, &voided) {
            // Judged stale and voided by another payment: that one unlocked the bill.
            return Err(AccountError::AlreadyPaid);
        }
        unlock(db, &bill.id, &attempt).await?;
        return Err(AccountError::InsufficientBalance {
            balance_micros: wire::int(user.get("balance_micros")),
            amount_micros: amount,
        });
    }
    // (3)–(5)
    let paid_at = complete(db, &bill, &attempt).await?;
    bill.status = BillStatus::Paid;
    bill.paid_at_ms = Some(paid_at);
    tracing::info!(bill_id = %bill.id, user_id = %bill.user_id, amount_micros = amount, "bill paid");
    Ok(bill)
}

fn has_marker(user: &Document, marker: &str) -> bool {
    user.get_array("payments")
        .map(|a| a.iter().any(|v| v.as_str() == Some(marker)))
        .unwrap_or(false)
}

/// Releases this attempt's lock (only if it still holds it).
async fn unlock(db: &Database, bill_id: &str, attempt: &str) -> Result<(), AccountError> {
    wire::update(
        db,
        collections::BILLS,
        vec![doc! {
            "q": {"_id": bill_id, "payment_attempt": attempt, "status": status(BillStatus::Unpaid)},
            "u": {"$unset": {"payment_attempt": "", "payment_started_ms": ""}},
        }],
        "unlocking the bill",
    )
    .await?;
    Ok(())
}

/// Steps 3–5 for an attempt whose deduction happened; returns the paid time.
async fn complete(db: &Database, bill: &BillDoc, attempt: &str) -> Result<i64, AccountError> {
    let now = now_ms();
    write_history(
        db,
        &HistoryDoc {
            id: format!("pay-{}", bill.id),
            user_id: bill.user_id.clone(),
            at_ms: now,
            kind: HistoryKind::BillPayment,
            amount_micros: bill.amount_micros,
            bill_id: Some(bill.id.clone()),
            account_last4: None,
        },
    )
    .await;
    wire::update(
        db,
        collections::BILLS,
        vec![doc! {
            "q": {"_id": &bill.id, "payment_attempt": attempt},
            "u": {"$set": {"status": status(BillStatus::Paid), "paid_at_ms": now},
                  "$unset": {"payment_attempt": "", "payment_started_ms": ""}},
        }],
        "marking the bill paid",
    )
    .await?;
    wire::update(
        db,
        collections::USERS,
        vec![doc! {
            "q": {"_id": &bill.user_id},
            "u": {"$pull": {"payments": format!("{attempt}+")}},
        }],
        "clearing the payment marker",
    )
    .await?;
    Ok(now)
}

/// Resolves the lock of a presumed-dead attempt: void it if it never deducted (then unlock the
/// bill), else finish its payment.
async fn resolve_stale(db: &Database, bill: &BillDoc, attempt: &str) -> Result<(), AccountError> {
    let (applied, voided) = (format!("{attempt}+"), format!("{attempt}-"));
    let n = wire::update(
        db,
        collections::USERS,
        vec![doc! {
            "q": {"_id": &bill.user_id, "payments": {"$nin": [&applied, &voided]}},
            "u": {"$push": {"payments": &voided}},
        }],
        "voiding a stale payment attempt",
    )
    .await?;
    if n == 1 {
        tracing::warn!(bill_id = %bill.id, attempt, "voided a stale payment attempt that never deducted");
        return unlock(db, &bill.id, attempt).await;
    }
    let user = users(db)
        .find_one(doc! {"_id": &bill.user_id})
        .projection(doc! {"payments": 1})
        .await
        .map_err(|e| internal(e, "reading the user"))?
        .ok_or(AccountError::NotFound("user"))?;
    if has_marker(&user, &applied) {
        tracing::warn!(bill_id = %bill.id, attempt, "completing a stale payment attempt that had deducted");
        complete(db, bill, attempt).await?;
        Ok(())
    } else {
        unlock(db, &bill.id, attempt).await
    }
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
        return Ok(docs.first().map_or(0, |d| wire::int(d.get("total"))));
    }
    let mut cur = c
        .find(filter)
        .projection(doc! {field: 1})
        .await
        .with_context(|| format!("summing {coll}.{field}"))?;
    let mut total: i64 = 0;
    while let Some(d) = cur.try_next().await? {
        total = total.saturating_add(wire::int(d.get(field)));
    }
    Ok(total)
}

/// The budget cap: balance − unpaid bills − the cost of finished runs not yet on a published
/// bill, read from the user's counters (`common::credit`). For an account that predates them
/// it is summed: runs already marked for a bill the billing job is still drafting are included,
/// so a run is never counted zero times.
pub async fn available_credit(db: &Database, user_id: &str) -> Result<i64, AccountError> {
    let user = users(db)
        .find_one(doc! {"_id": user_id})
        .projection(credit::projection())
        .await
        .map_err(|e| internal(e, "reading the user"))?
        .ok_or(AccountError::NotFound("user"))?;
    if let Some(available) = credit::from_counters(&user) {
        return Ok(available);
    }
    // An account from before the counters: sum what it owes.
    let balance = wire::int(user.get("balance_micros"));
    let finals: Vec<&str> = RunStatus::FINAL.iter().map(|s| s.as_str()).collect();
    let unpaid = sum(
        db,
        collections::BILLS,
        doc! {"user_id": user_id, "status": status(BillStatus::Unpaid)},
        "amount_micros",
    )
    .await?;
    let unbilled = sum(
        db,
        collections::RUNS,
        doc! {
            "bill_state": bson::to_bson(&BillState::Unbilled).map_err(|e| internal(e, "encoding"))?,
            "user_id": user_id,
            "status": {"$in": finals},
        },
        "billed_micros",
    )
    .await?;
    // Runs already marked for a bill that is still being drafted are on no published bill yet.
    let mut drafting: i64 = 0;
    let drafts: Vec<Document> = db
        .collection::<Document>(DRAFTS)
        .find(doc! {"user_id": user_id})
        .projection(doc! {"run_ids": 1})
        .await
        .map_err(|e| internal(e, "reading bill drafts"))?
        .try_collect()
        .await
        .map_err(|e| internal(e, "reading bill drafts"))?;
    for d in drafts {
        let (Some(id), Ok(run_ids)) = (wire::string(d.get("_id")), d.get_array("run_ids")) else {
            continue;
        };
        let marked = sum(
            db,
            collections::RUNS,
            doc! {"_id": {"$in": run_ids.clone()}, "bill_id": id},
            "billed_micros",
        )
        .await?;
        drafting = drafting.saturating_add(marked);
    }
    Ok(balance
        .saturating_sub(unpaid)
        .saturating_sub(unbilled)
        .saturating_sub(drafting))
}

/// The user's account history, newest first.
pub async fn history(db: &Database, user_id: &str, limit: i64) -> anyhow::Result<Vec<HistoryDoc>> {
    db.collection::<HistoryDoc>(collections::HISTORY)
        .find(doc! {"user_id": user_id})
        .sort(doc! {"at_ms": -1})
        .limit(limit)
        .await
        .context("reading the account history")?
        .try_collect()
        .await
        .context("reading the account history")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_contract() {
        assert_eq!(AccountError::InvalidCard(CardError::Luhn).status(), 400);
        assert_eq!(AccountError::InvalidAmount("x".into()).status(), 400);
        assert_eq!(AccountError::Declined.status(), 402);
        let low = AccountError::InsufficientBalance {
            balance_micros: 1,
            amount_micros: 2,
        };
        assert_eq!((low.status(), low.code()), (402, "insufficient_balance"));
        assert_eq!(AccountError::NotFound("bill").status(), 404);
        assert_eq!(AccountError::AlreadyPaid.status(), 409);
    }

    #[test]
    fn free_credit_is_configurable() {
        let env = common::config::Env::new();
        assert_eq!(free_credit_micros(&env).unwrap(), 1_000_000);
        let env: common::config::Env = [(FREE_CREDIT_ENV.to_owned(), "5".to_owned())].into();
        assert_eq!(free_credit_micros(&env).unwrap(), 5);
        let env: common::config::Env = [(FREE_CREDIT_ENV.to_owned(), "-1".to_owned())].into();
        assert!(free_credit_micros(&env).is_err());
        let env: common::config::Env = [(FREE_CREDIT_ENV.to_owned(), "lots".to_owned())].into();
        assert!(free_credit_micros(&env).is_err());
    }

    #[tokio::test]
    async fn the_test_provider_declines_its_declining_card() {
        let today = (2025, 1);
        let ok =
            crate::card::validate(&Card::new("4242424242424242", "12/30", "123"), today).unwrap();
        let no =
            crate::card::validate(&Card::new(TEST_DECLINED_CARD, "12/30", "123"), today).unwrap();
        let p = TestProvider;
        let charge = |card| Charge {
            idempotency_key: "k",
            amount_micros: 5,
            card,
        };
        assert!(p.charge(charge(&ok)).await.is_ok());
        assert!(matches!(
            p.charge(charge(&no)).await,
            Err(ProviderError::Declined(_))
        ));
    }
}
