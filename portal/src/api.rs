//! The JSON API under `/api/v1` (the contract's portal table). Every path under `/api/v1`
//! is answered here, errors included (JSON 404 / 405), so the pages never see them. Order of
//! checks: route, authentication (401), body size (413, from `Content-Length` before reading and
//! while reading), JSON (400), then the service call.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::header::{HeaderMap, CONTENT_LENGTH, LOCATION};
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::error::PortalError;
use crate::service::{self, account, functions, keys, runs, schedules};
use crate::state::State;

/// The JSON API's OpenAPI 3 document (`portal/openapi.json`), served at
/// `GET /api/v1/openapi.json`; `tests/tests/openapi.rs` keeps it true to the routes.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Largest body of the small JSON endpoints.
pub const SMALL_BODY: u64 = 64 * 1024;
/// Largest body of `POST`/`PUT /functions`: the base64 of the largest package, plus the spec.
pub const FUNCTION_BODY: u64 = (schemas::limits::CODE_BYTES as u64).div_ceil(3) * 4 + 1024 * 1024;

/// `/api/v1/...`: every route of the JSON API.
pub fn routes(state: Arc<State>) -> BoxedFilter<(Response,)> {
    warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
        .and(warp::body::stream())
        .then(
            move |tail: warp::path::Tail,
                  method: Method,
                  query: String,
                  headers: HeaderMap,
                  addr: Option<SocketAddr>,
                  body| {
                let st = state.clone();
                async move {
                    let path: Vec<String> = tail
                        .as_str()
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(percent_decode)
                        .collect();
                    let req = Req {
                        method,
                        query,
                        headers,
                        addr,
                    };
                    match dispatch(&st, req, &path, body).await {
                        Ok(r) => r,
                        Err(e) => e.into_response(),
                    }
                }
            },
        )
        .boxed()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Req {
    method: Method,
    query: String,
    headers: HeaderMap,
    addr: Option<SocketAddr>,
}

impl Req {
    fn query(&self, key: &str) -> Option<String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn content_length(&self) -> Option<u64> {
        self.headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Reads a body of at most `limit` bytes (413 beyond).
async fn read_body<S, B>(
    req: &Req,
    body: S,
    limit: u64,
    what: &'static str,
) -> Result<Bytes, PortalError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = PortalError::TooLarge { what, limit };
    if req.content_length().is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let mut out = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk
            .map_err(|e| PortalError::InvalidJson(format!("the body could not be read: {e}")))?;
        if (out.len() + chunk.remaining()) as u64 > limit {
            return Err(too_large);
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

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, PortalError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}").map_err(|e| PortalError::InvalidJson(e.to_string()));
    }
    serde_json::from_slice(body).map_err(|e| PortalError::InvalidJson(e.to_string()))
}

fn json_status(v: &Value, status: StatusCode) -> Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

fn ok(v: &Value) -> Response {
    json_status(v, StatusCode::OK)
}

fn no_content() -> Response {
    let mut r = Response::new(Default::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn created(v: &Value, location: Option<String>) -> Response {
    let mut r = json_status(v, StatusCode::CREATED);
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(LOCATION, l);
    }
    r
}

#[derive(Deserialize)]
struct NewUser {
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize)]
struct Credentials {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize)]
struct NewKeyReq {
    #[serde(default)]
    label: String,
}

#[derive(Deserialize)]
struct TopupReq {
    #[serde(default)]
    amount_micros: i64,
    #[serde(default)]
    card_number: String,
    #[serde(default)]
    card_expiry: String,
    #[serde(default)]
    card_cvc: String,
}

#[derive(Deserialize)]
struct SchedulePatch {
    #[serde(default)]
    enabled: Option<bool>,
}

/// The code of a spec: 400 when missing, 413 when too large.
fn spec_code(
    spec: &functions::FunctionSpec,
    st: &State,
    required: bool,
) -> Result<Option<Vec<u8>>, PortalError> {
    match spec.code_base64.as_deref() {
        Some(b64) if !b64.trim().is_empty() => Ok(Some(crate::upload::decode_base64(
            b64,
            st.cfg.upload_limits.code_bytes,
        )?)),
        _ if required => Err(PortalError::invalid(
            "code_base64",
            "the function's code is missing (code_base64)",
        )),
        _ => Ok(None),
    }
}

async fn dispatch<S, B>(
    st: &State,
    req: Req,
    path: &[String],
    body: S,
) -> Result<Response, PortalError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let m = req.method.clone();
    let method_not_allowed = || Err(PortalError::MethodNotAllowed);
    match p.as_slice() {
        ["users"] => {
            if m != Method::POST {
                return method_not_allowed();
            }
            let b = read_body(&req, body, SMALL_BODY, "the body").await?;
            let u: NewUser = parse(&b)?;
            let ip = req.addr.map(|a| a.ip());
            let user_id = service::auth::register(st, &u.email, &u.name, &u.password, ip).await?;
            Ok(created(&json!({"user_id": user_id}), None))
        }
        ["sessions"] => match m {
            Method::POST => {
                let b = read_body(&req, body, SMALL_BODY, "the body").await?;
                let c: Credentials = parse(&b)?;
                let ip = req.addr.map(|a| a.ip());
                let (token, s) = service::auth::login(st, &c.email, &c.password, ip).await?;
                Ok(ok(&json!({
                    "token": token,
                    "user_id": s.user_id,
                    "expires_at": service::rfc3339(s.expires_at_ms),
                })))
            }
            Method::DELETE => {
                let token = crate::auth::bearer(&req.headers).ok_or(PortalError::Unauthorized)?;
                service::auth::logout(st, token).await?;
                Ok(no_content())
            }
            _ => method_not_allowed(),
        },
        ["openapi.json"] => {
            if m != Method::GET {
                return method_not_allowed();
            }
            let mut r = Response::new(OPENAPI.into());
            r.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        ["pricing"] => {
            if m != Method::GET {
                return method_not_allowed();
            }
            let prices = account::pricing(st).await?;
            Ok(ok(&Value::Array(
                prices.iter().map(account::price_json).collect(),
            )))
        }
        ["keys", ..]
        | ["functions", ..]
        | ["runs", ..]
        | ["account", ..]
        | ["bills", ..]
        | ["dead-letters", ..]
        | ["schedules", ..] => {
            let user = crate::auth::api_user(st, &req.headers).await?;
            authed(st, &req, &user.id, &p, body).await
        }
        _ => Err(PortalError::NoRoute),
    }
}

async fn authed<S, B>(
    st: &State,
    req: &Req,
    uid: &str,
    p: &[&str],
    body: S,
) -> Result<Response, PortalError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let m = req.method.clone();
    match (p, m) {
        (["keys"], Method::POST) => {
            let b = read_body(req, body, SMALL_BODY, "the body").await?;
            let k: NewKeyReq = parse(&b)?;
            let nk = keys::create(st, uid, &k.label).await?;
            Ok(created(
                &json!({
                    "key_id": nk.key_id,
                    "key": nk.key,
                    "label": nk.label,
                    "created_at": service::rfc3339(nk.created_at_ms),
                }),
                None,
            ))
        }
        (["keys"], Method::GET) => {
            let ks = keys::list(st, uid).await?;
            Ok(ok(&Value::Array(ks.iter().map(keys::key_json).collect())))
        }
        (["keys", id], Method::DELETE) => {
            keys::revoke(st, uid, id).await?;
            Ok(no_content())
        }
        (["functions"], Method::POST) => {
            let b = read_body(req, body, FUNCTION_BODY, "the code").await?;
            let spec: functions::FunctionSpec = parse(&b)?;
            let code = spec_code(&spec, st, true)?.unwrap_or_default();
            let f = functions::create(st, uid, &spec, code).await?;
            let view = functions::FunctionView {
                func: f,
                status: Default::default(),
            };
            let loc = format!("/api/v1/functions/{}", view.func.name);
            Ok(created(&view.to_json(), Some(loc)))
        }
        (["functions"], Method::GET) => {
            let q = req.query("q");
            let all = functions::list(st, uid, q.as_deref()).await?;
            Ok(ok(&Value::Array(all.iter().map(|f| f.to_json()).collect())))
        }
        (["functions", name], Method::GET) => {
            Ok(ok(&functions::get(st, uid, name).await?.to_json()))
        }
        (["functions", name], Method::PUT) => {
            if functions::find(st, uid, name).await?.is_none() {
                return Err(PortalError::NotFound("function"));
            }
            let b = read_body(req, body, FUNCTION_BODY, "the code").await?;
            let spec: functions::FunctionSpec = parse(&b)?;
            let code = spec_code(&spec, st, false)?;
            functions::update(st, uid, name, &spec, code).await?;
            Ok(ok(&functions::get(st, uid, name).await?.to_json()))
        }
        (["functions", name], Method::DELETE) => {
            functions::delete(st, uid, name).await?;
            Ok(no_content())
        }
        (["functions", name, "metrics"], Method::GET) => {
            let win = service::metrics::window(req.query("window").as_deref())?;
            let b = service::metrics::of_function(st, uid, name, win).await?;
            Ok(ok(&service::metrics::metrics_json(win, &b)))
        }
        (["functions", name, "versions"], Method::GET) => {
            let vs = functions::versions_of(st, uid, name).await?;
            Ok(ok(&Value::Array(
                vs.iter()
                    .map(|v| {
                        json!({
                            "version": v.version,
                            "runtime": v.runtime.as_str(),
                            "handler": v.handler,
                            "filename": v.filename,
                            "code_sha256": v.code_sha256,
                            "code_size": v.code_size,
                            "code_kind": v.code_kind.as_str(),
                            "created_at": service::rfc3339(v.created_at_ms),
                        })
                    })
                    .collect(),
            )))
        }
        (["functions", name, "test"], Method::POST) => {
            let limit = schemas::limits::SYNC_BODY_BYTES;
            if req.content_length().is_some_and(|n| n > limit) {
                return Err(PortalError::Invoke(
                    gateway::GatewayError::PayloadTooLarge {
                        limit,
                        kind: "sync",
                    },
                ));
            }
            if functions::find(st, uid, name).await?.is_none() {
                return Err(PortalError::Invoke(gateway::GatewayError::NoSuchFunction(
                    (*name).to_owned(),
                )));
            }
            let b = read_body(req, body, limit, "the args")
                .await
                .map_err(|e| match e {
                    PortalError::TooLarge { .. } => {
                        PortalError::Invoke(gateway::GatewayError::PayloadTooLarge {
                            limit,
                            kind: "sync",
                        })
                    }
                    e => e,
                })?;
            let args = gateway::parse_args(&b).map_err(PortalError::Invoke)?;
            let outcome = service::invoke_test(st, uid, name, args).await?;
            gateway::sync_response(outcome).map_err(PortalError::Invoke)
        }
        (["functions", name, "schedules"], Method::POST) => {
            let b = read_body(
                req,
                body,
                SMALL_BODY + schedules::ARGS_BYTES as u64,
                "the body",
            )
            .await?;
            let n: schedules::NewSchedule = parse(&b)?;
            let d = schedules::create(st, uid, name, &n).await?;
            Ok(created(&schedules::schedule_json(&d), None))
        }
        (["functions", name, "schedules"], Method::GET) => {
            let all = schedules::list(st, uid, name).await?;
            Ok(ok(&Value::Array(
                all.iter().map(schedules::schedule_json).collect(),
            )))
        }
        (["schedules", id], Method::PATCH) => {
            let b = read_body(req, body, SMALL_BODY, "the body").await?;
            let p: SchedulePatch = parse(&b)?;
            let enabled = p
                .enabled
                .ok_or_else(|| PortalError::invalid("enabled", "send {\"enabled\": true|false}"))?;
            let d = schedules::set_enabled(st, uid, id, enabled).await?;
            Ok(ok(&schedules::schedule_json(&d)))
        }
        (["schedules", id], Method::DELETE) => {
            schedules::delete(st, uid, id).await?;
            Ok(no_content())
        }
        (["runs"], Method::GET) => {
            let f = runs::RunFilter::parse(
                req.query("function").as_deref(),
                req.query("status").as_deref(),
                req.query("limit").as_deref(),
            )?
            .paged(
                req.query("version").as_deref(),
                req.query("before").as_deref(),
            )?;
            let rs = runs::list(st, uid, &f).await?;
            Ok(ok(&Value::Array(rs.iter().map(runs::run_json).collect())))
        }
        (["runs", id], Method::GET) => Ok(ok(&runs::run_json(&runs::get(st, uid, id).await?))),
        (["account"], Method::GET) => Ok(ok(&account::account(st, uid).await?.to_json())),
        (["account", "topups"], Method::POST) => {
            let b = read_body(req, body, SMALL_BODY, "the body").await?;
            let t: TopupReq = parse(&b)?;
            let card = accounts::Card::new(t.card_number, t.card_expiry, t.card_cvc);
            let balance = account::topup(st, uid, t.amount_micros, &card).await?;
            Ok(created(&json!({"balance_micros": balance}), None))
        }
        (["account", "history"], Method::GET) => {
            let h = account::history(st, uid).await?;
            Ok(ok(&Value::Array(
                h.iter().map(account::history_json).collect(),
            )))
        }
        (["bills"], Method::GET) => {
            let bs = account::bills(st, uid).await?;
            Ok(ok(&Value::Array(
                bs.iter().map(account::bill_json).collect(),
            )))
        }
        (["bills", id], Method::GET) => {
            Ok(ok(&account::bill_json(&account::bill(st, uid, id).await?)))
        }
        (["bills", id, "payments"], Method::POST) => {
            let b = read_body(req, body, SMALL_BODY, "the body").await?;
            let _: Value = parse(&b)?;
            let bill = account::pay(st, uid, id).await?;
            Ok(ok(&account::bill_json(&bill)))
        }
        (["dead-letters"], Method::GET) => {
            let ds = service::retries::list(st, uid).await?;
            Ok(ok(&Value::Array(
                ds.iter().map(service::retries::dead_letter_json).collect(),
            )))
        }
        (["dead-letters", id], Method::DELETE) => {
            service::retries::delete(st, uid, id).await?;
            Ok(no_content())
        }
        (["dead-letters", id, "redrive"], Method::POST) => {
            let new_id = service::retries::redrive(st, uid, id).await?;
            Ok(json_status(
                &json!({"run_id": new_id}),
                StatusCode::ACCEPTED,
            ))
        }
        (
            ["dead-letters"]
            | ["dead-letters", _]
            | ["dead-letters", _, "redrive"]
            | ["keys"]
            | ["keys", _]
            | ["functions"]
            | ["functions", _]
            | ["functions", _, "test"]
            | ["functions", _, "versions"]
            | ["functions", _, "metrics"]
            | ["functions", _, "schedules"]
            | ["schedules", _]
            | ["runs"]
            | ["runs", _]
            | ["account"]
            | ["account", "topups"]
            | ["account", "history"]
            | ["bills"]
            | ["bills", _]
            | ["bills", _, "payments"],
            _,
        ) => Err(PortalError::MethodNotAllowed),
        _ => Err(PortalError::NoRoute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn the_function_body_fits_the_largest_package() {
        assert!(FUNCTION_BODY > schemas::limits::CODE_BYTES as u64 * 4 / 3);
    }
}
