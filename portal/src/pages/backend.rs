//! The pages' calls into the service layer (`crate::service`), with the service's errors turned
//! into what a form needs: which field to mark and a sentence, or a page-level message.

use std::net::IpAddr;

use accounts::{AccountError, Card};
use schemas::{ApiKeyDoc, ArgType, FunctionDoc, HistoryDoc, Mode, Resources, Runtime, UserDoc};
use serde_json::{json, Value};
use warp::http::StatusCode;

use super::{fmt, Pages};
use crate::error::PortalError;
use crate::service;
use crate::state::State;

/// The database of the portal's state.
pub fn db(st: &State) -> &mongodb::Database {
    &st.db
}

/// Why a form's action failed.
#[derive(Debug)]
pub enum FormFail {
    /// Mark this field with this sentence.
    Field(&'static str, String),
    /// A sentence for the top of the page.
    Page(String),
    NotFound,
    Other(anyhow::Error),
}

/// Why a login failed.
#[derive(Debug)]
pub enum AuthFail {
    Invalid,
    RateLimited(String),
    Other(anyhow::Error),
}

/// Why a top-up or payment failed.
#[derive(Debug)]
pub enum MoneyFail {
    Field(&'static str, String),
    Page(String),
    NotFound,
    Other(anyhow::Error),
}

/// Why a test invocation did not produce a run to show.
#[derive(Debug)]
pub enum TestFail {
    /// Refused before running (budget, capacity, ...): the status and a sentence.
    Refused(StatusCode, String),
    Other(anyhow::Error),
}

/// The form field a service field name belongs to.
fn form_field(f: &str) -> &'static str {
    match f {
        "email" => "email",
        "name" => "name",
        "password" => "password",
        "label" => "label",
        "runtime" => "runtime",
        "handler" => "handler",
        "code" | "code_base64" | "filename" => "code",
        "description" => "description",
        "args_schema" => "args_schema",
        "mode" => "mode",
        "resources.cpu_millicores" | "cpu_millicores" => "cpu_millicores",
        "resources.memory_mb" | "memory_mb" => "memory_mb",
        "resources.disk_mb" | "disk_mb" => "disk_mb",
        "timeout_ms" => "timeout_ms",
        "amount_micros" | "amount" => "amount",
        "card_number" => "card_number",
        "card_expiry" => "card_expiry",
        "card_cvc" => "card_cvc",
        _ => "",
    }
}

fn form_fail(e: PortalError) -> FormFail {
    match e {
        PortalError::NotFound(_) => FormFail::NotFound,
        PortalError::Internal(e) => FormFail::Other(e),
        PortalError::Unavailable(m) => FormFail::Other(anyhow::anyhow!(m)),
        PortalError::Invalid { field, message } => match form_field(&field) {
            "" => FormFail::Page(format!("{field}: {message}")),
            f => FormFail::Field(f, message),
        },
        e => match e.field().map(form_field) {
            Some(f) if !f.is_empty() => FormFail::Field(f, e.message()),
            _ => FormFail::Page(e.message()),
        },
    }
}

/// The user and CSRF token of a session token.
pub async fn session_user(c: &Pages, token: &str) -> anyhow::Result<Option<(UserDoc, String)>> {
    match service::auth::session_user(&c.st, token).await {
        Ok(v) => Ok(v.map(|(u, s)| (u, s.csrf))),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Why a sign-up failed.
#[derive(Debug)]
pub enum RegisterFail {
    Form(FormFail),
    /// Too many sign-ups from this address: a sentence with the wait.
    RateLimited(String),
}

pub async fn register(
    c: &Pages,
    email: &str,
    name: &str,
    password: &str,
    ip: &str,
) -> Result<(), RegisterFail> {
    let addr: Option<IpAddr> = ip.parse().ok();
    match service::auth::register(&c.st, email, name, password, addr).await {
        Ok(_) => Ok(()),
        Err(PortalError::SignupRateLimited { retry_after_secs }) => {
            Err(RegisterFail::RateLimited(format!(
                "Too many accounts were created from your address; try again in {} minutes.",
                retry_after_secs.div_ceil(60)
            )))
        }
        Err(e) => Err(RegisterFail::Form(form_fail(e))),
    }
}

/// Logs in; the session token.
pub async fn login(c: &Pages, email: &str, password: &str, ip: &str) -> Result<String, AuthFail> {
    let addr: Option<IpAddr> = ip.parse().ok();
    match service::auth::login(&c.st, email, password, addr).await {
        Ok((token, _)) => Ok(token),
        Err(PortalError::BadCredentials) => Err(AuthFail::Invalid),
        Err(e @ PortalError::LoginRateLimited { .. }) => Err(AuthFail::RateLimited(format!(
            "Too many login attempts: {}.",
            e.message().trim_start_matches("too many login attempts; ")
        ))),
        Err(e) => Err(AuthFail::Other(anyhow::anyhow!("{e}"))),
    }
}

pub async fn logout(c: &Pages, token: &str) -> anyhow::Result<()> {
    match service::auth::logout(&c.st, token).await {
        Ok(()) | Err(PortalError::Unauthorized) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

pub async fn keys(c: &Pages, user_id: &str) -> anyhow::Result<Vec<ApiKeyDoc>> {
    service::keys::list(&c.st, user_id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Creates a key: `(key_id, secret)`.
pub async fn create_key(
    c: &Pages,
    user_id: &str,
    label: &str,
) -> Result<(String, String), FormFail> {
    service::keys::create(&c.st, user_id, label)
        .await
        .map(|k| (k.key_id, k.key))
        .map_err(form_fail)
}

pub async fn revoke_key(c: &Pages, user_id: &str, key_id: &str) -> Result<(), FormFail> {
    service::keys::revoke(&c.st, user_id, key_id)
        .await
        .map_err(form_fail)
}

/// A function as the add / modify form sends it; `code` is `(filename, bytes)`, absent when
/// modifying without a new file.
#[derive(Debug, Clone)]
pub struct FunctionInput {
    pub name: String,
    pub runtime: Runtime,
    pub handler: String,
    pub code: Option<(String, Vec<u8>)>,
    pub description: String,
    pub args_schema: Vec<(String, ArgType)>,
    pub mode: Mode,
    pub resources: Resources,
    pub timeout_ms: u64,
}

fn money_fail(e: PortalError) -> MoneyFail {
    match e {
        PortalError::Account(AccountError::InvalidCard(ce)) => {
            let field = match ce {
                accounts::card::CardError::ExpiryFormat | accounts::card::CardError::Expired => {
                    "card_expiry"
                }
                accounts::card::CardError::Cvc => "card_cvc",
                _ => "card_number",
            };
            MoneyFail::Field(field, ce.to_string())
        }
        PortalError::Account(AccountError::InvalidAmount(m)) => MoneyFail::Field("amount", m),
        PortalError::Account(AccountError::Declined) => MoneyFail::Field(
            "card_number",
            "the card was declined; use another card".into(),
        ),
        PortalError::Account(AccountError::InsufficientBalance {
            balance_micros,
            amount_micros,
        }) => MoneyFail::Page(format!(
            "Your balance ({}) is lower than the bill ({}). Top up first, or pay with a card.",
            fmt::money(balance_micros),
            fmt::money(amount_micros)
        )),
        PortalError::Account(AccountError::AlreadyPaid) => {
            MoneyFail::Page("This bill is already paid, or a payment of it is in progress.".into())
        }
        PortalError::Account(AccountError::NotFound(_)) | PortalError::NotFound(_) => {
            MoneyFail::NotFound
        }
        PortalError::Account(AccountError::Internal(e)) | PortalError::Internal(e) => {
            MoneyFail::Other(e)
        }
        e => MoneyFail::Page(e.message()),
    }
}

/// Charges the card and adds `amount_micros` to the balance.
pub async fn topup(
    c: &Pages,
    user_id: &str,
    amount_micros: i64,
    number: &str,
    expiry: &str,
    cvc: &str,
) -> Result<(), MoneyFail> {
    let card = Card::new(number, expiry, cvc);
    service::account::topup(&c.st, user_id, amount_micros, &card)
        .await
        .map(|_| ())
        .map_err(money_fail)
}

/// Pays a bill from the balance.
pub async fn pay_bill(c: &Pages, user_id: &str, bill_id: &str) -> Result<(), MoneyFail> {
    accounts::pay_bill(&c.db, user_id, bill_id)
        .await
        .map(|_| ())
        .map_err(|e| money_fail(PortalError::Account(e)))
}

pub async fn balance(c: &Pages, user_id: &str) -> anyhow::Result<i64> {
    let u =
        c.db.collection::<bson::Document>(schemas::names::collections::USERS)
            .find_one(bson::doc! {"_id": user_id})
            .projection(bson::doc! {"balance_micros": 1})
            .await?
            .ok_or_else(|| anyhow::anyhow!("the user {user_id} is gone"))?;
    Ok(common::wire::int(u.get("balance_micros")))
}

pub async fn available_credit(c: &Pages, user_id: &str) -> anyhow::Result<i64> {
    accounts::available_credit(&c.db, user_id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn history(c: &Pages, user_id: &str) -> anyhow::Result<Vec<HistoryDoc>> {
    accounts::history(&c.db, user_id, 100).await
}

/// The price list as table rows.
pub async fn prices(c: &Pages) -> anyhow::Result<Vec<Value>> {
    let p = accounts::Prices::load_or_seed(&c.db).await?;
    Ok(p.to_docs()
        .iter()
        .map(|d| {
            json!({
                "resource": serde_json::to_value(d.resource).unwrap_or(Value::Null),
                "unit": d.unit, "price": fmt::money(d.price_micros_per_unit),
            })
        })
        .collect())
}

/// The stored versions of a function, newest first, as table rows.
pub async fn versions(c: &Pages, f: &FunctionDoc) -> anyhow::Result<Vec<Value>> {
    let v = service::functions::versions_of(&c.st, &f.user_id, &f.name)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(v.iter()
        .map(|v| {
            json!({
                "version": v.version, "at": fmt::time(v.created_at_ms), "handler": v.handler,
                "code": format!("{} · {} · sha256 {}",
                    if v.filename.is_empty() { "package" } else { &v.filename },
                    fmt::bytes(v.code_size), &v.code_sha256[..v.code_sha256.len().min(12)]),
            })
        })
        .collect())
}

fn spec_of(i: &FunctionInput) -> service::functions::FunctionSpec {
    service::functions::FunctionSpec {
        name: i.name.clone(),
        runtime: i.runtime.as_str().to_owned(),
        handler: i.handler.clone(),
        code_base64: None,
        filename: i.code.as_ref().map(|(n, _)| n.clone()).unwrap_or_default(),
        description: i.description.clone(),
        args_schema: service::functions::ArgsSpec(
            i.args_schema
                .iter()
                .map(|(n, t)| (n.clone(), t.as_str().to_owned()))
                .collect(),
        ),
        mode: Some(i.mode.as_str().to_owned()),
        resources: service::functions::ResourcesSpec {
            cpu_millicores: Some(i.resources.cpu_millicores),
            memory_mb: Some(i.resources.memory_mb),
            disk_mb: Some(i.resources.disk_mb),
        },
        timeout_ms: Some(i.timeout_ms),
        // The form does not show them: an edit keeps the stored ones.
        retries: None,
        max_event_age_s: None,
        // Omitted: an edit from the pages keeps the stored env, secrets and limit.
        env: None,
        secrets: None,
        max_concurrency: None,
    }
}

pub async fn create_function(c: &Pages, user_id: &str, i: FunctionInput) -> Result<(), FormFail> {
    let spec = spec_of(&i);
    let code = i.code.map(|(_, b)| b).unwrap_or_default();
    service::functions::create(&c.st, user_id, &spec, code)
        .await
        .map(|_| ())
        .map_err(form_fail)
}

pub async fn update_function(c: &Pages, user_id: &str, i: FunctionInput) -> Result<(), FormFail> {
    let spec = spec_of(&i);
    let code = i.code.map(|(_, b)| b);
    service::functions::update(&c.st, user_id, &i.name, &spec, code)
        .await
        .map(|_| ())
        .map_err(form_fail)
}

pub async fn delete_function(c: &Pages, user_id: &str, name: &str) -> Result<(), FormFail> {
    service::functions::delete(&c.st, user_id, name)
        .await
        .map_err(form_fail)
}

/// Runs a test invocation; the run's id once its record is final (or after a short wait for
/// the run writer, when the page then shows it as still finishing).
pub async fn invoke_test(
    c: &Pages,
    user_id: &str,
    name: &str,
    args: Value,
) -> Result<String, TestFail> {
    use gateway::GatewayError as G;
    let run_id = match service::invoke_test(&c.st, user_id, name, args).await {
        Ok(outcome) => outcome.run_id,
        Err(PortalError::Invoke(G::TimedOut { run_id, .. }))
        | Err(PortalError::Invoke(G::FunctionFailed { run_id, .. }))
        | Err(PortalError::Invoke(G::PlatformFailed { run_id, .. })) => run_id,
        Err(PortalError::Invoke(G::InvalidArgs(m))) => {
            return Err(TestFail::Refused(
                StatusCode::BAD_REQUEST,
                format!("The arguments were refused: {m}."),
            ))
        }
        Err(PortalError::Invoke(G::NoSuchFunction(_))) | Err(PortalError::NotFound(_)) => {
            return Err(TestFail::Refused(
                StatusCode::NOT_FOUND,
                "The function no longer exists.".into(),
            ))
        }
        Err(PortalError::Invoke(e)) => {
            let api = gateway::api_error(&e);
            return Err(TestFail::Refused(
                api.status,
                format!(
                    "The test did not run: {}.",
                    api.message.trim_end_matches('.')
                ),
            ));
        }
        Err(PortalError::Internal(e)) => return Err(TestFail::Other(e)),
        Err(e) => {
            return Err(TestFail::Refused(
                e.status(),
                format!("The test did not run: {}.", e.message()),
            ))
        }
    };
    // The result came back on the reply queue; its run record follows through the batching
    // run writer. Wait for it a moment so the page shows the logs at once.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(3) {
        match super::data::run(&c.db, user_id, &run_id).await {
            Ok(Some(r)) if r.status.is_final() => break,
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    Ok(run_id)
}
