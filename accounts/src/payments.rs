//! Top-ups through the payment provider, paying a bill from the balance, and the account
//! history.
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
//! [`MAX_TOPUP_MICROS`]) before the provider is asked; then the balance and the available
//! credit are raised with one `$inc` and a history entry (`kind: topup`, `account_last4`) is
//! written. Only the last four digits are ever stored.
//!
//! Paying a bill moves the balance to `paid_micros` and leaves the available credit as it is:
//! the bill's runs were taken from it when they finished (`crate::credit`).

use anyhow::Context as _;
use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use mongodb::Database;
use schemas::lenient::{int, string};
use schemas::names::collections;
use schemas::{now_ms, BillDoc, BillStatus, HistoryDoc, HistoryKind};

use crate::card::Card;
use crate::credit::{AVAILABLE, BALANCE, PAID};
use crate::provider::{Charge, PaymentProvider, ProviderError};
use crate::{internal, AccountError};

/// Largest single top-up: 1,000,000 units.
pub const MAX_TOPUP_MICROS: i64 = 1_000_000 * 1_000_000;
/// A payment attempt that has held a bill this long is presumed dead and may be resolved.
pub const STALE_ATTEMPT_MS: i64 = 30_000;

/// One conditional update of one document; returns whether it matched.
async fn update(
    db: &Database,
    coll: &str,
    filter: Document,
    change: Document,
    what: &'static str,
) -> Result<u64, AccountError> {
    let r = db
        .collection::<Document>(coll)
        .update_one(filter, change)
        .await
        .map_err(|e| internal(e, what))?;
    Ok(r.matched_count)
}

fn users(db: &Database) -> mongodb::Collection<Document> {
    db.collection(collections::USERS)
}

fn bills(db: &Database) -> mongodb::Collection<Document> {
    db.collection(collections::BILLS)
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
            doc! {"_id": user_id, BALANCE: {"$lte": i64::MAX - amount_micros}},
            doc! {"$inc": {BALANCE: amount_micros, AVAILABLE: amount_micros}},
        )
        .projection(doc! {BALANCE: 1})
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
    Ok(int(after.get(BALANCE)))
}

/// Writes a history entry once (an upsert on its deterministic id: a repeat changes nothing).
/// Retried a few times: the money has moved by then, so a failure is logged, not returned.
async fn write_history(db: &Database, entry: &HistoryDoc) {
    let coll = db.collection::<Document>(collections::HISTORY);
    let Ok(mut fields) = bson::to_document(entry) else {
        tracing::error!(id = %entry.id, "a history entry could not be encoded");
        return;
    };
    fields.remove("_id");
    for attempt in 0..3u64 {
        let write = coll
            .update_one(
                doc! {"_id": &entry.id},
                doc! {"$setOnInsert": fields.clone()},
            )
            .upsert(true);
        match write.await {
            Ok(_) => return,
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
    let attempt =
        string(d.get("payment_attempt")).map(|a| (a.to_owned(), int(d.get("payment_started_ms"))));
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
    let n = update(
        db,
        collections::BILLS,
        doc! {"_id": &bill.id, "user_id": &bill.user_id, "status": BillStatus::Unpaid.as_str(),
        "payment_attempt": Bson::Null},
        doc! {"$set": {"payment_attempt": &attempt, "payment_started_ms": now_ms()}},
        "locking the bill",
    )
    .await?;
    if n == 0 {
        return Err(AccountError::AlreadyPaid);
    }
    // (2) Deduct, recording the attempt in the same update.
    let (applied, voided) = (format!("{attempt}+"), format!("{attempt}-"));
    let n = update(
        db,
        collections::USERS,
        doc! {"_id": &bill.user_id, BALANCE: {"$gte": amount},
        "payments": {"$nin": [&applied, &voided]}},
        doc! {"$inc": {BALANCE: -amount, PAID: amount},
        "$push": {"payments": &applied}},
        "deducting the bill from the balance",
    )
    .await?;
    if n == 0 {
        let user = users(db)
            .find_one(doc! {"_id": &bill.user_id})
            .projection(doc! {BALANCE: 1, "payments": 1})
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
            balance_micros: int(user.get(BALANCE)),
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
    update(
        db,
        collections::BILLS,
        doc! {"_id": bill_id, "payment_attempt": attempt, "status": BillStatus::Unpaid.as_str()},
        doc! {"$unset": {"payment_attempt": "", "payment_started_ms": ""}},
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
    update(
        db,
        collections::BILLS,
        doc! {"_id": &bill.id, "payment_attempt": attempt},
        doc! {"$set": {"status": BillStatus::Paid.as_str(), "paid_at_ms": now},
        "$unset": {"payment_attempt": "", "payment_started_ms": ""}},
        "marking the bill paid",
    )
    .await?;
    update(
        db,
        collections::USERS,
        doc! {"_id": &bill.user_id},
        doc! {"$pull": {"payments": format!("{attempt}+")}},
        "clearing the payment marker",
    )
    .await?;
    Ok(now)
}

/// Resolves the lock of a presumed-dead attempt: void it if it never deducted (then unlock the
/// bill), else finish its payment.
async fn resolve_stale(db: &Database, bill: &BillDoc, attempt: &str) -> Result<(), AccountError> {
    let (applied, voided) = (format!("{attempt}+"), format!("{attempt}-"));
    let n = update(
        db,
        collections::USERS,
        doc! {"_id": &bill.user_id, "payments": {"$nin": [&applied, &voided]}},
        doc! {"$push": {"payments": &voided}},
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
