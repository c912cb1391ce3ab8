//! Register, log in, log out. Before a session exists, the forms' CSRF token is a
//! double-submit cookie (`cf_presession`, HttpOnly, SameSite=Lax) that the hidden field must
//! equal; afterwards it is the session's own token.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::backend::{self, AuthFail};
use super::render::{self, Chrome};
use super::web::{self, Form};
use super::{
    client_ip, finish, form, notice, pre_cookie, query, Ctx, PageError, PageResult, Viewer,
};

/// Lifetime of the session cookie (the server-side session may end earlier).
const SESSION_COOKIE_SECS: i64 = 7 * 24 * 3600;
/// Lifetime of the pre-session CSRF cookie.
const PRE_COOKIE_SECS: i64 = 2 * 3600;

pub(super) fn routes(v: BoxedFilter<(Ctx, Option<Viewer>)>) -> BoxedFilter<(Response,)> {
    let login_get = warp::path!("login")
        .and(warp::get())
        .and(v.clone())
        .and(pre_cookie())
        .and(query())
        .map(
            |_c: Ctx, viewer: Option<Viewer>, pre: Option<String>, q: HashMap<String, String>| {
                if viewer.is_some() {
                    return web::redirect("/functions", &[]);
                }
                let mut chrome = anon("Log in", "login", &pre);
                chrome.notice = notice(&q);
                with_pre(
                    render::page(StatusCode::OK, "login", &chrome, json!({"form": {}})),
                    pre,
                    &chrome.csrf,
                )
            },
        );
    let register_get = warp::path!("register")
        .and(warp::get())
        .and(v.clone())
        .and(pre_cookie())
        .map(|_c: Ctx, viewer: Option<Viewer>, pre: Option<String>| {
            if viewer.is_some() {
                return web::redirect("/functions", &[]);
            }
            let chrome = anon("Register", "register", &pre);
            with_pre(
                render::page(StatusCode::OK, "register", &chrome, json!({"form": {}})),
                pre,
                &chrome.csrf,
            )
        });
    let login_post = warp::path!("login")
        .and(warp::post())
        .and(v.clone())
        .and(pre_cookie())
        .and(client_ip())
        .and(form())
        .then(
            |c: Ctx, _v: Option<Viewer>, pre: Option<String>, ip: String, f: Form| async move {
                finish(None, login(c, pre, ip, f).await)
            },
        );
    let register_post = warp::path!("register")
        .and(warp::post())
        .and(v.clone())
        .and(pre_cookie())
        .and(client_ip())
        .and(form())
        .then(
            |c: Ctx, _v: Option<Viewer>, pre: Option<String>, ip: String, f: Form| async move {
                finish(None, register(c, pre, ip, f).await)
            },
        );
    let logout_post = warp::path!("logout")
        .and(warp::post())
        .and(v)
        .and(form())
        .then(|c: Ctx, viewer: Option<Viewer>, f: Form| async move {
            let r = logout(c, viewer.clone(), f).await;
            finish(viewer.as_ref(), r)
        });
    login_get
        .or(register_get)
        .unify()
        .or(login_post)
        .unify()
        .or(register_post)
        .unify()
        .or(logout_post)
        .unify()
        .boxed()
}

/// The chrome of a page shown before login; its CSRF token is the pre-session cookie's value
/// (a new one when the browser has none).
fn anon(title: &str, nav: &'static str, pre: &Option<String>) -> Chrome {
    Chrome {
        csrf: pre.clone().unwrap_or_else(web::random_token),
        title: title.to_owned(),
        nav,
        ..Default::default()
    }
}

/// Sets the pre-session cookie when the browser did not send one.
fn with_pre(r: Response, pre: Option<String>, token: &str) -> Response {
    if pre.is_some() {
        r
    } else {
        web::with_cookie(r, &web::cookie(web::PRE_COOKIE, token, PRE_COOKIE_SECS))
    }
}

/// Checks a pre-session form's token against the cookie.
fn check_pre(pre: &Option<String>, f: &Form) -> Result<(), PageError> {
    match pre {
        Some(p) if f.csrf_ok(p) => Ok(()),
        _ => Err(PageError::Csrf),
    }
}

async fn login(c: Ctx, pre: Option<String>, ip: String, f: Form) -> PageResult {
    check_pre(&pre, &f)?;
    let email = f.get("email").trim().to_owned();
    match backend::login(&c, &email, f.get("password"), &ip).await {
        Ok(token) => Ok(web::redirect(
            "/functions",
            &[web::cookie(
                web::SESSION_COOKIE,
                &token,
                SESSION_COOKIE_SECS,
            )],
        )),
        Err(fail) => {
            let (status, msg) = match fail {
                AuthFail::Invalid => (
                    StatusCode::UNAUTHORIZED,
                    "The email or the password is wrong.".to_owned(),
                ),
                AuthFail::RateLimited(m) => (StatusCode::TOO_MANY_REQUESTS, m),
                AuthFail::Other(e) => return Err(PageError::Internal(e)),
            };
            let mut chrome = anon("Log in", "login", &pre);
            chrome.error = Some(msg);
            Ok(render::page(
                status,
                "login",
                &chrome,
                json!({"form": {"email": email}}),
            ))
        }
    }
}

async fn register(c: Ctx, pre: Option<String>, ip: String, f: Form) -> PageResult {
    check_pre(&pre, &f)?;
    let name = f.get("name").trim().to_owned();
    let email = f.get("email").trim().to_owned();
    let password = f.get("password");
    let mut errors = Map::new();
    if name.is_empty() {
        errors.insert("name".into(), json!("enter your name"));
    } else if name.chars().count() > 100 {
        errors.insert("name".into(), json!("at most 100 characters"));
    }
    if password.chars().count() < 8 {
        errors.insert(
            "password".into(),
            json!("the password must have at least 8 characters"),
        );
    }
    let mut status = StatusCode::BAD_REQUEST;
    let mut top = "The account was not created; see below what to fix.".to_owned();
    if errors.is_empty() {
        use backend::{FormFail, RegisterFail};
        match backend::register(&c, &email, &name, password, &ip).await {
            Ok(()) => return Ok(web::redirect("/login?notice=registered", &[])),
            Err(RegisterFail::RateLimited(msg)) => {
                status = StatusCode::TOO_MANY_REQUESTS;
                top = msg;
            }
            Err(RegisterFail::Form(FormFail::Field(field, msg))) => {
                errors.insert(field.into(), json!(msg));
            }
            Err(RegisterFail::Form(FormFail::Page(msg))) => {
                errors.insert("email".into(), json!(msg));
            }
            Err(RegisterFail::Form(FormFail::NotFound)) => {
                errors.insert("email".into(), json!("the account could not be created"));
            }
            Err(RegisterFail::Form(FormFail::Other(e))) => return Err(PageError::Internal(e)),
        }
    }
    let mut chrome = anon("Register", "register", &pre);
    chrome.error = Some(top);
    Ok(render::page(
        status,
        "register",
        &chrome,
        json!({"form": {"name": name, "email": email}, "errors": Value::Object(errors)}),
    ))
}

async fn logout(c: Ctx, viewer: Option<Viewer>, f: Form) -> PageResult {
    let Some(v) = viewer else {
        // Already logged out: clear the cookie anyway.
        return Ok(web::redirect(
            "/login?notice=bye",
            &[web::cookie(web::SESSION_COOKIE, "", 0)],
        ));
    };
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    backend::logout(&c, &v.token).await?;
    Ok(web::redirect(
        "/login?notice=bye",
        &[web::cookie(web::SESSION_COOKIE, "", 0)],
    ))
}
