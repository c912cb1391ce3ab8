//! Account info: balance and available credit, top-up, the "Bill" button (runs a billing pass
//! now and opens the resulting bill), bills, the payment page, the account history, prices.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use schemas::{BillDoc, BillStatus, HistoryKind};
use serde_json::{json, Map, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::backend::{self, MoneyFail};
use super::data;
use super::fmt;
use super::render;
use super::web::{self, Form};
use super::{finish, form, need, notice, query, Ctx, PageError, PageResult, Viewer};

/// Bill items listed on a bill's page at most.
const BILL_ITEMS_SHOWN: usize = 500;
/// How long "Bill" waits for a billing job that holds the lease.
const BILL_WAIT: Duration = Duration::from_secs(8);

pub(super) fn routes(v: BoxedFilter<(Ctx, Option<Viewer>)>) -> BoxedFilter<(Response,)> {
    let account = warp::path!("account")
        .and(warp::get())
        .and(v.clone())
        .and(query())
        .then(
            |c: Ctx, viewer: Option<Viewer>, q: HashMap<String, String>| async move {
                let r = match need(viewer.clone()) {
                    Ok(v) => {
                        let chrome_notice = notice(&q);
                        account_page(
                            &c,
                            &v,
                            &Map::new(),
                            &Map::new(),
                            None,
                            chrome_notice,
                            StatusCode::OK,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                finish(viewer.as_ref(), r)
            },
        );
    let topup = warp::path!("account" / "topup")
        .and(warp::post())
        .and(v.clone())
        .and(form())
        .then(|c: Ctx, viewer: Option<Viewer>, f: Form| async move {
            let r = topup(&c, need(viewer.clone()), f).await;
            finish(viewer.as_ref(), r)
        });
    let bill_now = warp::path!("account" / "bill")
        .and(warp::post())
        .and(v.clone())
        .and(form())
        .then(|c: Ctx, viewer: Option<Viewer>, f: Form| async move {
            let r = bill_now(&c, need(viewer.clone()), f).await;
            finish(viewer.as_ref(), r)
        });
    let bill = warp::path!("bills" / String)
        .and(warp::get())
        .and(v.clone())
        .and(query())
        .then(
            |id: String, c: Ctx, viewer: Option<Viewer>, q: HashMap<String, String>| async move {
                let r = bill_page(&c, need(viewer.clone()), &id, &q).await;
                finish(viewer.as_ref(), r)
            },
        );
    let pay_form = warp::path!("bills" / String / "pay")
        .and(warp::get())
        .and(v.clone())
        .then(|id: String, c: Ctx, viewer: Option<Viewer>| async move {
            let r = match need(viewer.clone()) {
                Ok(v) => {
                    pay_page(&c, &v, &id, &Map::new(), &Map::new(), None, StatusCode::OK).await
                }
                Err(e) => Err(e),
            };
            finish(viewer.as_ref(), r)
        });
    let pay = warp::path!("bills" / String / "pay")
        .and(warp::post())
        .and(v)
        .and(form())
        .then(
            |id: String, c: Ctx, viewer: Option<Viewer>, f: Form| async move {
                let r = pay(&c, need(viewer.clone()), &id, f).await;
                finish(viewer.as_ref(), r)
            },
        );
    account
        .or(topup)
        .unify()
        .or(bill_now)
        .unify()
        .or(bill)
        .unify()
        .or(pay_form)
        .unify()
        .or(pay)
        .unify()
        .boxed()
}

fn period(b: &BillDoc) -> String {
    format!(
        "{} – {}",
        fmt::time(b.period_start_ms),
        fmt::time(b.period_end_ms)
    )
}

async fn account_page(
    c: &Ctx,
    v: &Viewer,
    typed: &Map<String, Value>,
    errors: &Map<String, Value>,
    error: Option<String>,
    notice_text: Option<String>,
    status: StatusCode,
) -> PageResult {
    let balance = backend::balance(c, &v.user.id).await?;
    let available = backend::available_credit(c, &v.user.id).await?;
    let bills = data::bills(&c.db, &v.user.id, 100).await?;
    let history = backend::history(c, &v.user.id).await?;
    let prices = backend::prices(c).await.unwrap_or_default();
    let bill_rows: Vec<Value> = bills
        .iter()
        .map(|(b, n)| {
            json!({
                "bill_id": b.id, "short_id": fmt::short_id(&b.id), "created": fmt::time(b.created_at_ms),
                "period": period(b), "items": n, "amount": fmt::money(b.amount_micros),
                "status": b.status.as_str(), "unpaid": b.status == BillStatus::Unpaid,
            })
        })
        .collect();
    let history_rows: Vec<Value> = history
        .iter()
        .map(|h| {
            let (label, amount) = match h.kind {
                HistoryKind::Topup => ("Top-up", fmt::money(h.amount_micros)),
                HistoryKind::BillPayment => ("Bill payment", fmt::money(-h.amount_micros.abs())),
            };
            json!({
                "at": fmt::time(h.at_ms), "kind": h.kind.as_str(),
                "label": label, "amount": amount, "bill_id": h.bill_id, "last4": h.account_last4,
            })
        })
        .collect();
    let mut chrome = v.chrome("Account", "account");
    chrome.error = error;
    chrome.notice = notice_text;
    Ok(render::page(
        status,
        "account",
        &chrome,
        json!({
            "balance": fmt::money(balance), "available": fmt::money(available),
            "bills": bill_rows, "history": history_rows, "prices": prices,
            "form": typed, "errors": errors,
        }),
    ))
}

/// Reads the card fields and maps a card error to the field it is about.
fn card_of(f: &Form) -> (String, String, String) {
    let number: String = f
        .get("card_number")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    (
        number,
        f.get("card_expiry").trim().to_owned(),
        f.get("card_cvc").trim().to_owned(),
    )
}

fn money_errors(fail: &MoneyFail) -> (Map<String, Value>, Option<String>) {
    let mut errors = Map::new();
    let mut top = None;
    match fail {
        MoneyFail::Field(field, m) => {
            errors.insert((*field).into(), json!(m));
        }
        MoneyFail::Page(m) => top = Some(m.clone()),
        MoneyFail::NotFound | MoneyFail::Other(_) => {}
    }
    (errors, top)
}

async fn topup(c: &Ctx, v: Result<Viewer, PageError>, f: Form) -> PageResult {
    let v = v?;
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    // Kept when the form comes back: the amount and expiry, never the card number or CVC.
    let mut typed = Map::new();
    typed.insert("amount".into(), json!(f.get("amount")));
    typed.insert("card_expiry".into(), json!(f.get("card_expiry")));
    let amount = match fmt::parse_money(f.get("amount")) {
        Ok(0) => Err("the amount must be more than 0".to_owned()),
        other => other,
    };
    let res = match amount {
        Err(m) => Err(MoneyFail::Field("amount", m)),
        Ok(micros) => {
            let (n, e, cvc) = card_of(&f);
            backend::topup(c, &v.user.id, micros, &n, &e, &cvc).await
        }
    };
    match res {
        Ok(()) => Ok(web::redirect("/account?notice=topped_up", &[])),
        Err(MoneyFail::Other(e)) => Err(PageError::Internal(e)),
        Err(fail) => {
            let (errors, top) = money_errors(&fail);
            let top = top
                .or_else(|| Some("The top-up did not go through; see below what to fix.".into()));
            account_page(c, &v, &typed, &errors, top, None, StatusCode::BAD_REQUEST).await
        }
    }
}

/// "Bill": runs a billing pass now (the batch job's own crash-safe, lease-guarded pass; it
/// bills every user's finished, unbilled runs, this user's included) and opens the new bill.
async fn bill_now(c: &Ctx, v: Result<Viewer, PageError>, f: Form) -> PageResult {
    let v = v?;
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    let started = schemas::now_ms();
    let t0 = Instant::now();
    loop {
        match billing_job::bill_once(&c.db, &billing_job::BillOptions::default()).await {
            Ok(summary) => {
                tracing::info!(user_id = v.user.id, %summary, "billing pass from the portal");
                break;
            }
            Err(e) if e.downcast_ref::<billing_job::LeaseHeld>().is_some() => {
                if t0.elapsed() > BILL_WAIT {
                    return account_page(
                        c,
                        &v,
                        &Map::new(),
                        &Map::new(),
                        Some("The billing job is running right now; your runs will be on its bills. Press Bill again in a minute.".into()),
                        None,
                        StatusCode::SERVICE_UNAVAILABLE,
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(PageError::Internal(e.context("billing pass"))),
        }
    }
    // The bills this pass (or one running at the same time) created for this user.
    let new = data::bills_since(&c.db, &v.user.id, started - 1).await?;
    match new.as_slice() {
        [] => Ok(web::redirect("/account?notice=nothing_to_bill", &[])),
        [one] => Ok(web::redirect(&format!("/bills/{one}"), &[])),
        _ => Ok(web::redirect("/account?notice=billed#bills", &[])),
    }
}

fn bill_view(b: &BillDoc) -> Value {
    let items: Vec<Value> = b
        .items
        .iter()
        .take(BILL_ITEMS_SHOWN)
        .map(|i| {
            json!({
                "run_id": i.run_id, "short_id": fmt::short_id(&i.run_id), "function": i.function,
                "duration": fmt::duration(i.duration_ms),
                "resources": fmt::resources(&schemas::Resources::new(i.cpu_millicores, i.memory_mb, i.disk_mb)),
                "amount": fmt::money(i.amount_micros),
            })
        })
        .collect();
    json!({
        "bill_id": b.id, "short_id": fmt::short_id(&b.id), "created": fmt::time(b.created_at_ms),
        "period": period(b), "amount": fmt::money(b.amount_micros), "status": b.status.as_str(),
        "unpaid": b.status == BillStatus::Unpaid, "paid_at": b.paid_at_ms.map(fmt::time),
        "items": items, "n_items": b.items.len(), "shown": BILL_ITEMS_SHOWN,
        "more": b.items.len() > BILL_ITEMS_SHOWN,
    })
}

async fn bill_page(
    c: &Ctx,
    v: Result<Viewer, PageError>,
    id: &str,
    q: &HashMap<String, String>,
) -> PageResult {
    let v = v?;
    let b = data::bill(&c.db, &v.user.id, id)
        .await?
        .ok_or(PageError::NotFound)?;
    let mut chrome = v.chrome(format!("Bill {}", fmt::short_id(&b.id)), "account");
    chrome.notice = notice(q);
    Ok(render::page(
        StatusCode::OK,
        "bill",
        &chrome,
        json!({"bill": bill_view(&b)}),
    ))
}

async fn pay_page(
    c: &Ctx,
    v: &Viewer,
    id: &str,
    typed: &Map<String, Value>,
    errors: &Map<String, Value>,
    error: Option<String>,
    status: StatusCode,
) -> PageResult {
    let b = data::bill(&c.db, &v.user.id, id)
        .await?
        .ok_or(PageError::NotFound)?;
    if b.status == BillStatus::Paid {
        return Ok(web::redirect(&format!("/bills/{}", b.id), &[]));
    }
    let balance = backend::balance(c, &v.user.id).await?;
    let mut chrome = v.chrome(format!("Pay bill {}", fmt::short_id(&b.id)), "account");
    chrome.error = error;
    Ok(render::page(
        status,
        "pay",
        &chrome,
        json!({
            "bill": bill_view(&b), "balance": fmt::money(balance),
            "short": balance < b.amount_micros,
            "method_card": typed.get("method").and_then(Value::as_str) == Some("card"),
            "form": typed, "errors": errors,
        }),
    ))
}

async fn pay(c: &Ctx, v: Result<Viewer, PageError>, id: &str, f: Form) -> PageResult {
    let v = v?;
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    let b = data::bill(&c.db, &v.user.id, id)
        .await?
        .ok_or(PageError::NotFound)?;
    let mut typed = Map::new();
    typed.insert("method".into(), json!(f.get("method")));
    typed.insert("card_expiry".into(), json!(f.get("card_expiry")));
    let mut res = Ok(());
    if f.get("method") == "card" {
        // Charge the card for the bill's amount into the balance, then pay from the balance.
        let (n, e, cvc) = card_of(&f);
        res = backend::topup(c, &v.user.id, b.amount_micros, &n, &e, &cvc).await;
    }
    if res.is_ok() {
        res = backend::pay_bill(c, &v.user.id, &b.id).await;
    }
    match res {
        Ok(()) => Ok(web::redirect(&format!("/bills/{}?notice=paid", b.id), &[])),
        Err(MoneyFail::NotFound) => Err(PageError::NotFound),
        Err(MoneyFail::Other(e)) => Err(PageError::Internal(e)),
        Err(fail) => {
            let (errors, top) = money_errors(&fail);
            let top = top.or_else(|| Some("The bill was not paid; see below what to fix.".into()));
            pay_page(c, &v, &b.id, &typed, &errors, top, StatusCode::BAD_REQUEST).await
        }
    }
}
