//! The account: its view (balance and available credit), top-ups, history, bills, paying a
//! bill, the unbilled runs shown as a bill, and the prices. Invariants: money is integer micros;
//! every balance change goes through `accounts` (top-ups charge the payment
//! provider first; payments are one conditional update each, so the balance never goes negative
//! and concurrent payments of one bill give exactly one 200 and 409s); only the card's last four
//! digits are ever stored; bills of other users are 404.

use bson::doc;
use futures::TryStreamExt;
use serde_json::{json, Value};

use accounts::{self as acc, Card, Prices};
use schemas::names::collections;
use schemas::{BillDoc, BillItem, BillState, HistoryDoc, PriceDoc, RunDoc, RunStatus};

use super::{coll, db_err, users};
use crate::error::PortalError;
use crate::state::State;

/// Most history entries returned.
pub const HISTORY_LIMIT: i64 = 500;
/// Most bills returned.
pub const BILLS_LIMIT: i64 = 500;
/// Most runs shown on the "unbilled runs" bill.
pub const UNBILLED_LIMIT: i64 = 1000;

/// What the account page and `GET /api/v1/account` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub balance_micros: i64,
    /// The budget cap: balance − unpaid bills − finished unbilled runs − the worst case of
    /// the runs in flight (`accounts::credit`).
    pub available_micros: i64,
}

impl AccountView {
    pub fn to_json(&self) -> Value {
        json!({
            "user_id": self.user_id,
            "email": self.email,
            "name": self.name,
            "balance_micros": self.balance_micros,
            "available_micros": self.available_micros,
        })
    }
}

/// The user's account; 401 when the user no longer exists.
pub async fn account(st: &State, user_id: &str) -> Result<AccountView, PortalError> {
    let u = users(st)
        .find_one(doc! {"_id": user_id})
        .await
        .map_err(db_err("reading the account"))?
        .ok_or(PortalError::Unauthorized)?;
    let available_micros = acc::available_credit(&st.db, user_id).await?;
    Ok(AccountView {
        user_id: u.id,
        email: u.email,
        name: u.name,
        balance_micros: u.balance_micros,
        available_micros,
    })
}

/// Charges `card` and adds `amount_micros` to the balance; returns the new balance. 503 when no
/// payment provider is configured, 400 bad card or amount, 402 declined.
pub async fn topup(
    st: &State,
    user_id: &str,
    amount_micros: i64,
    card: &Card,
) -> Result<i64, PortalError> {
    let provider = st
        .provider
        .as_deref()
        .ok_or(PortalError::PaymentsUnavailable)?;
    Ok(acc::topup(&st.db, provider, user_id, amount_micros, card).await?)
}

/// The user's top-ups and bill payments, newest first.
pub async fn history(st: &State, user_id: &str) -> Result<Vec<HistoryDoc>, PortalError> {
    acc::history(&st.db, user_id, HISTORY_LIMIT)
        .await
        .map_err(|e| PortalError::Unavailable(format!("{e:#}")))
}

/// The contract's history entry.
pub fn history_json(h: &HistoryDoc) -> Value {
    let mut v = json!({
        "at": super::rfc3339(h.at_ms),
        "kind": h.kind.as_str(),
        "amount_micros": h.amount_micros,
    });
    if let Some(b) = &h.bill_id {
        v["bill_id"] = json!(b);
    }
    if let Some(l) = &h.account_last4 {
        v["account_last4"] = json!(l);
    }
    v
}

fn bills_coll(st: &State) -> mongodb::Collection<BillDoc> {
    coll(st, collections::BILLS)
}

/// The user's bills, newest first.
pub async fn bills(st: &State, user_id: &str) -> Result<Vec<BillDoc>, PortalError> {
    bills_coll(st)
        .find(doc! {"user_id": user_id})
        .sort(doc! {"created_at_ms": -1})
        .limit(BILLS_LIMIT)
        .await
        .map_err(db_err("listing bills"))?
        .try_collect()
        .await
        .map_err(db_err("listing bills"))
}

/// One bill of the user; 404 otherwise.
pub async fn bill(st: &State, user_id: &str, bill_id: &str) -> Result<BillDoc, PortalError> {
    bills_coll(st)
        .find_one(doc! {"_id": bill_id, "user_id": user_id})
        .await
        .map_err(db_err("reading the bill"))?
        .ok_or(PortalError::NotFound("bill"))
}

/// Pays a bill from the balance: 404 not theirs, 409 already paid (or being paid), 402
/// balance too low.
pub async fn pay(st: &State, user_id: &str, bill_id: &str) -> Result<BillDoc, PortalError> {
    Ok(acc::pay_bill(&st.db, user_id, bill_id).await?)
}

/// The contract's Bill.
pub fn bill_json(b: &BillDoc) -> Value {
    let items: Vec<Value> = b
        .items
        .iter()
        .map(|i| {
            json!({
                "run_id": i.run_id,
                "function": i.function,
                "duration_ms": i.duration_ms,
                "cpu_millicores": i.cpu_millicores,
                "memory_mb": i.memory_mb,
                "disk_mb": i.disk_mb,
                "amount_micros": i.amount_micros,
            })
        })
        .collect();
    let mut v = json!({
        "bill_id": b.id,
        "created_at": super::rfc3339(b.created_at_ms),
        "period_start": super::rfc3339(b.period_start_ms),
        "period_end": super::rfc3339(b.period_end_ms),
        "amount_micros": b.amount_micros,
        "status": b.status.as_str(),
        "items": items,
    });
    if let Some(t) = b.paid_at_ms {
        v["paid_at"] = json!(super::rfc3339(t));
    }
    v
}

/// Finished runs not yet on a bill, as the items of the next bill would be (the account page's
/// "Bill" button); the amount is their exact sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBill {
    pub items: Vec<BillItem>,
    pub amount_micros: i64,
    /// More unbilled runs exist than are listed (the amount covers the listed ones only).
    pub truncated: bool,
}

/// The user's finished, unbilled runs, newest first.
pub async fn unbilled(st: &State, user_id: &str) -> Result<PendingBill, PortalError> {
    let finals: Vec<&str> = RunStatus::FINAL.iter().map(|s| s.as_str()).collect();
    let state = BillState::Unbilled.as_str();
    let runs: Vec<RunDoc> = coll::<RunDoc>(st, collections::RUNS)
        .find(doc! {"user_id": user_id, "bill_state": state, "status": {"$in": finals}})
        .sort(doc! {"created_at_ms": -1})
        .limit(UNBILLED_LIMIT + 1)
        .await
        .map_err(db_err("reading unbilled runs"))?
        .try_collect()
        .await
        .map_err(db_err("reading unbilled runs"))?;
    let truncated = runs.len() as i64 > UNBILLED_LIMIT;
    let items: Vec<BillItem> = runs
        .iter()
        .take(UNBILLED_LIMIT as usize)
        .map(|r| BillItem {
            run_id: r.id.clone(),
            function: r.function.clone(),
            duration_ms: r.duration_ms,
            cpu_millicores: r.resources.cpu_millicores,
            memory_mb: r.resources.memory_mb,
            disk_mb: r.resources.disk_mb,
            amount_micros: r.billed_micros,
        })
        .collect();
    let amount_micros = items.iter().map(|i| i.amount_micros).sum();
    Ok(PendingBill {
        items,
        amount_micros,
        truncated,
    })
}

/// The prices (stored ones; defaults for any not stored yet).
pub async fn pricing(st: &State) -> Result<Vec<PriceDoc>, PortalError> {
    let docs: Vec<PriceDoc> = coll::<PriceDoc>(st, collections::PRICING)
        .find(doc! {})
        .await
        .map_err(db_err("reading prices"))?
        .try_collect()
        .await
        .map_err(db_err("reading prices"))?;
    Ok(Prices::from_docs(&docs).to_docs())
}

/// The contract's price entry.
pub fn price_json(p: &PriceDoc) -> Value {
    json!({
        "resource": p.resource,
        "unit": p.unit,
        "price_micros_per_unit": p.price_micros_per_unit,
    })
}
