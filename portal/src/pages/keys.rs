//! API keys: create (the secret is shown once, on the answer to the POST), list, revoke.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::backend::{self, FormFail};
use super::fmt;
use super::render;
use super::web::{self, Form};
use super::{finish, form, need, notice, query, Ctx, PageError, PageResult, Viewer};

pub(super) fn routes(v: BoxedFilter<(Ctx, Option<Viewer>)>) -> BoxedFilter<(Response,)> {
    let list = warp::path!("keys")
        .and(warp::get())
        .and(v.clone())
        .and(query())
        .then(
            |c: Ctx, viewer: Option<Viewer>, q: HashMap<String, String>| async move {
                let r = match need(viewer.clone()) {
                    Ok(v) => page(&c, &v, None, "", &Map::new(), notice(&q), StatusCode::OK).await,
                    Err(e) => Err(e),
                };
                finish(viewer.as_ref(), r)
            },
        );
    let create = warp::path!("keys")
        .and(warp::post())
        .and(v.clone())
        .and(form())
        .then(|c: Ctx, viewer: Option<Viewer>, f: Form| async move {
            let r = create(&c, need(viewer.clone()), f).await;
            finish(viewer.as_ref(), r)
        });
    let revoke = warp::path!("keys" / String / "revoke")
        .and(warp::post())
        .and(v)
        .and(form())
        .then(
            |id: String, c: Ctx, viewer: Option<Viewer>, f: Form| async move {
                let r = revoke(&c, need(viewer.clone()), &id, f).await;
                finish(viewer.as_ref(), r)
            },
        );
    list.or(create).unify().or(revoke).unify().boxed()
}

async fn page(
    c: &Ctx,
    v: &Viewer,
    new_key: Option<Value>,
    label: &str,
    errors: &Map<String, Value>,
    notice_text: Option<String>,
    status: StatusCode,
) -> PageResult {
    let keys = backend::keys(c, &v.user.id).await?;
    let rows: Vec<Value> = keys
        .iter()
        .map(|k| json!({"key_id": k.id, "label": k.label, "created": fmt::time(k.created_at_ms)}))
        .collect();
    let mut chrome = v.chrome("API keys", "keys");
    chrome.notice = notice_text;
    Ok(render::page(
        status,
        "keys",
        &chrome,
        json!({"keys": rows, "new_key": new_key, "form": {"label": label}, "errors": errors}),
    ))
}

async fn create(c: &Ctx, v: Result<Viewer, PageError>, f: Form) -> PageResult {
    let v = v?;
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    let label = f.get("label").trim().to_owned();
    let mut errors = Map::new();
    if label.is_empty() {
        errors.insert(
            "label".into(),
            json!("give the key a label, e.g. the application that will use it"),
        );
    } else {
        match backend::create_key(c, &v.user.id, &label).await {
            // Shown on this answer only: the secret is never stored in clear.
            Ok((_key_id, secret)) => {
                return page(
                    c,
                    &v,
                    Some(json!({"label": label, "secret": secret})),
                    "",
                    &Map::new(),
                    None,
                    StatusCode::OK,
                )
                .await;
            }
            Err(FormFail::Field(_, m)) | Err(FormFail::Page(m)) => {
                errors.insert("label".into(), json!(m));
            }
            Err(FormFail::NotFound) => return Err(PageError::NotFound),
            Err(FormFail::Other(e)) => return Err(PageError::Internal(e)),
        }
    }
    page(c, &v, None, &label, &errors, None, StatusCode::BAD_REQUEST).await
}

async fn revoke(c: &Ctx, v: Result<Viewer, PageError>, id: &str, f: Form) -> PageResult {
    let v = v?;
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    match backend::revoke_key(c, &v.user.id, id).await {
        Ok(()) => Ok(web::redirect("/keys?notice=revoked", &[])),
        Err(FormFail::NotFound) => Err(PageError::NotFound),
        Err(FormFail::Other(e)) => Err(PageError::Internal(e)),
        Err(FormFail::Field(_, m)) | Err(FormFail::Page(m)) => Err(PageError::BadForm(m)),
    }
}
