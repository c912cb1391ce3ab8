//! The dead-letters page: the user's dead letters (run, function, when, attempts, error, args),
//! each with Redrive and Delete forms (CSRF-checked, POST-redirect-GET).

use std::collections::HashMap;

use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::fmt;
use super::render;
use super::web::{self, Form};
use super::{finish, form, need, notice, query, Ctx, PageError, PageResult, Viewer};
use crate::error::PortalError;
use crate::service::retries;

pub(super) fn routes(v: BoxedFilter<(Ctx, Option<Viewer>)>) -> BoxedFilter<(Response,)> {
    let list = warp::path!("dead-letters")
        .and(warp::get())
        .and(v.clone())
        .and(query())
        .then(
            |c: Ctx, viewer: Option<Viewer>, q: HashMap<String, String>| async move {
                let r = match need(viewer.clone()) {
                    Ok(v) => page(&c, &v, notice(&q)).await,
                    Err(e) => Err(e),
                };
                finish(viewer.as_ref(), r)
            },
        );
    let act = warp::path!("dead-letters" / String / String)
        .and(warp::post())
        .and(v)
        .and(form())
        .then(
            |id: String, action: String, c: Ctx, viewer: Option<Viewer>, f: Form| async move {
                let r = act(&c, need(viewer.clone()), &id, &action, f).await;
                finish(viewer.as_ref(), r)
            },
        );
    list.or(act).unify().boxed()
}

async fn page(c: &Ctx, v: &Viewer, notice_text: Option<String>) -> PageResult {
    let letters = retries::list(&c.st, &v.user.id)
        .await
        .map_err(|e| PageError::Internal(anyhow::anyhow!("{e}")))?;
    let rows: Vec<Value> = letters
        .iter()
        .map(|d| {
            let j = retries::dead_letter_json(d);
            json!({
                "run_id": d.id,
                "function": d.function,
                "version": d.version,
                "failed": fmt::time(d.dead_letter.as_ref().map_or(d.created_at_ms, |l| l.failed_at_ms)),
                "attempts": d.attempts.len(),
                "error_code": d.error.as_ref().map(|e| e.code.clone()).unwrap_or_default(),
                "error_message": d.error.as_ref().map(|e| e.message.clone()).unwrap_or_default(),
                "args": serde_json::to_string_pretty(&j["args"]).unwrap_or_default(),
            })
        })
        .collect();
    let mut chrome = v.chrome("Dead letters", "dead_letters");
    chrome.notice = notice_text;
    Ok(render::page(
        StatusCode::OK,
        "dead_letters",
        &chrome,
        json!({"letters": rows}),
    ))
}

async fn act(c: &Ctx, v: Result<Viewer, PageError>, id: &str, action: &str, f: Form) -> PageResult {
    let v = v?;
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    let done = match action {
        "redrive" => retries::redrive(&c.st, &v.user.id, id)
            .await
            .map(|_| "redriven"),
        "delete" => retries::delete(&c.st, &v.user.id, id)
            .await
            .map(|()| "dead_letter_deleted"),
        _ => return Err(PageError::NotFound),
    };
    match done {
        Ok(n) => Ok(web::redirect(&format!("/dead-letters?notice={n}"), &[])),
        Err(PortalError::NotFound(_)) => Err(PageError::NotFound),
        Err(e) => Err(PageError::BadForm(e.to_string())),
    }
}
