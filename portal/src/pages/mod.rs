//! The web pages: server-rendered handlebars templates served by warp. Forms work without
//! JavaScript and follow POST-redirect-GET; every form carries a CSRF token that every POST
//! checks (the session's `csrf` once logged in, a double-submit cookie before); the session
//! lives in an HttpOnly, SameSite=Lax cookie holding the same token the JSON API takes as
//! `Authorization: Bearer`. Objects of other users answer a 404 page.
//!
//! | page | what |
//! |---|---|
//! | `/login`, `/register`, `POST /logout` | sessions |
//! | `/functions`, `/functions/new`, `/functions/{name}`, `…/edit`, `…/delete`, `POST …/test` | Func manage, detail, Test |
//! | `/tasks?q=`, `/tasks/live?q=` (fragment the page polls), `/runs/{id}` | Task manage |
//! | `/account`, `POST /account/topup`, `POST /account/bill`, `/bills/{id}`, `/bills/{id}/pay` | Account info, bills, payment |
//! | `/keys`, `POST /keys`, `POST /keys/{id}/revoke` | API keys |
//! | `/dead-letters`, `POST /dead-letters/{run_id}/redrive`, `…/delete` | dead letters of async runs |

mod account;
mod auth;
mod backend;
mod charts;
pub mod data;
mod dead_letters;
pub mod fmt;
mod functions;
mod keys;
pub mod render;
mod schedules;
mod tasks;
pub mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use schemas::UserDoc;
use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::state::State;
use render::Chrome;
use web::Form;

/// What every page handler gets.
pub(crate) struct Pages {
    pub st: Arc<State>,
    pub db: mongodb::Database,
    pub status: data::StatusCache,
}

type Ctx = Arc<Pages>;

/// The logged-in user of a request, with the session's CSRF token and the session token.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub user: UserDoc,
    pub csrf: String,
    pub token: String,
}

impl Viewer {
    /// The layout's chrome for a page of this user.
    fn chrome(&self, title: impl Into<String>, nav: &'static str) -> Chrome {
        Chrome {
            user: Some(json!({"name": self.user.name, "email": self.user.email})),
            csrf: self.csrf.clone(),
            title: title.into(),
            nav,
            notice: None,
            error: None,
        }
    }
}

/// Why a page could not be shown; turned into a page in one place ([`PageError::page`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PageError {
    #[error("not found")]
    NotFound,
    #[error("the form's security token is missing or wrong")]
    Csrf,
    #[error("not logged in")]
    LoginRequired,
    #[error("{0}")]
    BadForm(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

type PageResult = Result<Response, PageError>;

impl PageError {
    fn page(&self, v: Option<&Viewer>) -> Response {
        let mut chrome = match v {
            Some(v) => v.chrome("", ""),
            None => Chrome::default(),
        };
        let back = if v.is_some() {
            ("/functions", "Back to your functions")
        } else {
            ("/login", "Log in")
        };
        let (status, heading, message) = match self {
            PageError::LoginRequired => return web::redirect("/login", &[]),
            PageError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or it belongs to another account.".to_owned(),
            ),
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                "Form expired",
                "The form was refused because its security token is missing or does not match your session (it may have been sent from another site, or from a page opened before you logged in again). Go back, reload the page and send it again.".to_owned(),
            ),
            PageError::BadForm(m) => (StatusCode::BAD_REQUEST, "The form could not be read", m.clone()),
            PageError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The server could not complete this request. Try again in a moment.".to_owned(),
                )
            }
        };
        chrome.title = heading.to_owned();
        render::page(
            status,
            "message",
            &chrome,
            json!({"heading": heading, "message": message, "back_href": back.0, "back_label": back.1}),
        )
    }
}

/// Turns a handler's result into the response, errors into their page.
fn finish(v: Option<&Viewer>, r: PageResult) -> Response {
    r.unwrap_or_else(|e| e.page(v))
}

/// A handler that needs a logged-in user: redirects to the login page otherwise.
fn need(v: Option<Viewer>) -> Result<Viewer, PageError> {
    v.ok_or(PageError::LoginRequired)
}

/// Fixed notices a redirect may ask a page to show (`?notice=<key>`); never free text.
fn notice(q: &HashMap<String, String>) -> Option<String> {
    let m = match q.get("notice")?.as_str() {
        "registered" => "Your account is ready. Log in to start.",
        "bye" => "You are logged out.",
        "created" => "Function created. Try it with the Test form.",
        "updated" => "Saved: a new version is live.",
        "deleted" => "The function was deleted.",
        "topped_up" => "Top-up received; your balance is updated.",
        "paid" => "Paid. The amount was deducted from your balance and recorded in your history.",
        "nothing_to_bill" => {
            "Nothing to bill: you have no finished runs that are not on a bill yet."
        }
        "billed" => "Your finished runs were billed; the new bills are listed below.",
        "revoked" => "The key was revoked; calls using it are refused from now on.",
        "schedule_added" => "Schedule added: each tick starts one async run.",
        "schedule_paused" => "Schedule paused: its ticks are not run while it is paused.",
        "schedule_resumed" => "Schedule resumed from its next tick.",
        "schedule_deleted" => "The schedule was deleted.",
        "login" => "Log in to continue.",
        "redriven" => "Redriven: a new run was started with the same args.",
        "dead_letter_deleted" => "The dead letter was deleted.",
        _ => return None,
    };
    Some(m.to_owned())
}

/// The request's query string as a map (empty when there is none).
fn query(
) -> impl Filter<Extract = (HashMap<String, String>,), Error = std::convert::Infallible> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(|raw: String| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(&raw)
                .unwrap_or_default()
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
}

/// `(ctx, viewer)`: the pages' context and the logged-in user, if any.
fn viewer(ctx: Ctx) -> impl Filter<Extract = (Ctx, Option<Viewer>), Error = Rejection> + Clone {
    warp::any()
        .map(move || ctx.clone())
        .and(warp::header::optional::<String>("cookie"))
        .then(|ctx: Ctx, cookie: Option<String>| async move {
            let token = cookie
                .as_deref()
                .and_then(|c| web::cookie_value(c, web::SESSION_COOKIE))
                .map(str::to_owned);
            let v = match token {
                Some(t) if !t.is_empty() => match backend::session_user(&ctx, &t).await {
                    Ok(Some((user, csrf))) => Some(Viewer {
                        user,
                        csrf,
                        token: t,
                    }),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "session lookup failed");
                        None
                    }
                },
                _ => None,
            };
            (ctx, v)
        })
        .untuple_one()
}

/// The pre-session CSRF cookie's value, if the browser sent one.
fn pre_cookie() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("cookie").map(|c: Option<String>| {
        c.as_deref()
            .and_then(|c| web::cookie_value(c, web::PRE_COOKIE))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    })
}

/// Reads a body of at most `limit` bytes (whatever its `Content-Length`, or without one).
async fn read_limited<S, B>(body: S, limit: u64) -> Result<Bytes, web::FormError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let mut out = bytes::BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| web::FormError::Malformed(e.to_string()))?;
        if (out.len() + chunk.remaining()) as u64 > limit {
            return Err(web::FormError::TooLarge);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            out.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// A url-encoded form body (an unreadable or oversized one is an empty form, which every
/// POST then refuses for its missing CSRF token).
fn form() -> impl Filter<Extract = (Form,), Error = Rejection> + Clone {
    warp::body::stream().then(|s| async move {
        match read_limited(s, web::FORM_LIMIT).await {
            Ok(b) => web::urlencoded(&b),
            Err(_) => Form::default(),
        }
    })
}

/// A multipart (or url-encoded) form body with an optional file, not read yet: a handler reads
/// it ([`Upload::read`]) only once the session is known, so an anonymous upload is answered
/// without its (up to 20 MiB) body being read.
pub(crate) struct Upload {
    content_type: Option<String>,
    body: futures::stream::BoxStream<'static, Result<Bytes, warp::Error>>,
}

impl Upload {
    /// Reads and parses the body (at most [`web::MULTIPART_LIMIT`] bytes).
    pub async fn read(self) -> Result<Form, web::FormError> {
        let body = read_limited(self.body, web::MULTIPART_LIMIT).await?;
        let ct = self.content_type.unwrap_or_default();
        if ct.starts_with("multipart/form-data") {
            web::multipart(&ct, body).await
        } else {
            Ok(web::urlencoded(&body))
        }
    }
}

/// A request body as a boxed stream of `Bytes`.
fn boxed_body<S, B>(s: S) -> futures::stream::BoxStream<'static, Result<Bytes, warp::Error>>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: bytes::Buf,
{
    use futures::{StreamExt, TryStreamExt};
    s.map_ok(|mut b| {
        let n = b.remaining();
        b.copy_to_bytes(n)
    })
    .boxed()
}

/// The upload of a request, unread.
fn upload() -> impl Filter<Extract = (Upload,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::body::stream())
        .map(|content_type: Option<String>, s| Upload {
            content_type,
            body: boxed_body(s),
        })
}

fn client_ip() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::addr::remote()
        .map(|a: Option<SocketAddr>| a.map(|a| a.ip().to_string()).unwrap_or_default())
}

/// Every page route, to be mounted beside the JSON API. Unknown paths outside `/api/` answer
/// the 404 page.
pub fn routes(state: Arc<State>) -> BoxedFilter<(Response,)> {
    render::init();
    let ctx: Ctx = Arc::new(Pages {
        db: backend::db(&state).clone(),
        st: state,
        status: data::StatusCache::default(),
    });
    let v: BoxedFilter<(Ctx, Option<Viewer>)> = viewer(ctx).boxed();

    let css = warp::path!("static" / "style.css")
        .and(warp::get())
        .map(|| render::asset(render::STYLE_CSS, "text/css; charset=utf-8"));
    let js = warp::path!("static" / "app.js")
        .and(warp::get())
        .map(|| render::asset(render::APP_JS, "text/javascript; charset=utf-8"))
        .or(warp::path!("static" / "favicon.svg")
            .or(warp::path!("favicon.ico"))
            .unify()
            .and(warp::get())
            .map(|| render::asset(render::FAVICON_SVG, "image/svg+xml")))
        .unify();
    let home = warp::path::end().and(warp::get()).and(v.clone()).map(
        |_ctx: Ctx, viewer: Option<Viewer>| {
            web::redirect(
                if viewer.is_some() {
                    "/functions"
                } else {
                    "/login"
                },
                &[],
            )
        },
    );

    let sessions = auth::routes(v.clone());
    let functions = functions::routes(v.clone());
    let tasks = tasks::routes(v.clone());
    let account = account::routes(v.clone());
    let keys = keys::routes(v.clone());
    let dead_letters = dead_letters::routes(v.clone());
    let schedules = schedules::routes(v.clone());

    // The 404 page for every other GET outside the JSON API.
    let not_found = warp::get().and(warp::path::full()).and(v.clone()).and_then(
        |p: warp::path::FullPath, _ctx: Ctx, viewer: Option<Viewer>| async move {
            if p.as_str().starts_with("/api/") {
                return Err(warp::reject::not_found());
            }
            Ok::<_, Rejection>(PageError::NotFound.page(viewer.as_ref()))
        },
    );

    css.or(js)
        .unify()
        .or(home)
        .unify()
        .or(sessions)
        .unify()
        .or(functions)
        .unify()
        .or(tasks)
        .unify()
        .or(account)
        .unify()
        .or(keys)
        .unify()
        .or(dead_letters)
        .unify()
        .or(schedules)
        .unify()
        .or(not_found)
        .unify()
        .boxed()
}
