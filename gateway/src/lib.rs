//! The invoke endpoint applications call: authenticates API keys, validates args, publishes
//! invocations to RabbitMQ and answers sync calls from the reply queue.
//!
//! Routes: `POST /v1/invoke/{function}`, `GET /v1/runs/{run_id}`, `GET /healthz`, `GET /metrics`,
//! `GET /openapi.json` (the OpenAPI 3 document of all of them, [`OPENAPI`]).
//! The order of checks on an invocation is: draining (503), API key (401), rate limit (429),
//! `X-Invocation-Type` (400), `Content-Length` (413), function (404), body size (413), JSON
//! (400), args schema (400), `X-Callback-Url` (400), a live `Idempotency-Key` (409 on another
//! body, else the first run's answer; [`idempotency`]), the reservation of the invocation's
//! worst case against the user's credit and limits (402, 429 `user_limit`; `accounts::hold`),
//! the claim of the `Idempotency-Key`, then the publish (503 when RabbitMQ is unreachable).

pub mod args;
pub mod broker;
pub mod cache;
pub mod callbacks;
pub mod config;
pub mod egress;
pub mod error;
pub mod idempotency;
pub mod metrics;
pub mod ratelimit;
pub mod store;
pub mod views;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use common::runstore::{pending_doc, RunWrite, RunWriter};
use futures::{Stream, StreamExt};
use schemas::limits::{ASYNC_BODY_BYTES, SYNC_BODY_BYTES};
use schemas::{
    BillState, FunctionDoc, InvocationMsg, Mode, ResultMsg, RunDoc, RunError, RunStatus,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use warp::filters::BoxedFilter;
use warp::http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, LOCATION};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

pub use config::{Config, Flags};
pub use error::{api_error, GatewayError};

use crate::broker::{Broker, Phase, PublishError, Wait};
use crate::callbacks::Callbacks;
use crate::metrics::Metrics;
use crate::ratelimit::KeyLimiter;
use crate::store::{KeyInfo, Store};

/// The gateway's OpenAPI 3 document (`gateway/openapi.json`), served at `GET /openapi.json`;
/// `tests/tests/openapi.rs` keeps it true to the routes.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `application/json` text as a response.
fn json_text(text: &'static str) -> Response {
    let mut resp = Response::new(text.into());
    resp.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Error code of runs whose invocation could not be handed to RabbitMQ (never billed).
pub const PLATFORM_UNAVAILABLE: &str = "platform_unavailable";

/// Everything the handlers share.
pub struct State {
    cfg: Config,
    store: Store,
    limiter: KeyLimiter,
    broker: Arc<Broker>,
    writer: RunWriter,
    metrics: Metrics,
    draining: AtomicBool,
    inflight: Arc<Semaphore>,
    prices: accounts::PriceBook,
    /// Set once the indexes exist: an `Idempotency-Key` relies on its unique index.
    indexes_ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("instance", &self.cfg.instance_id)
            .finish()
    }
}

/// `Authorization: Bearer <key>` → the key.
pub fn bearer(headers: &HeaderMap) -> Result<&str, GatewayError> {
    let v = headers.get(AUTHORIZATION).ok_or(GatewayError::MissingKey)?;
    let s = v.to_str().map_err(|_| GatewayError::UnknownKey)?.trim();
    let (scheme, key) = s.split_once(' ').ok_or(GatewayError::MissingKey)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(GatewayError::MissingKey);
    }
    Ok(key)
}

/// `X-Invocation-Type`: `sync` or `async` (any case), or absent.
pub fn invocation_type(headers: &HeaderMap) -> Result<Option<Mode>, GatewayError> {
    let Some(v) = headers.get("x-invocation-type") else {
        return Ok(None);
    };
    let raw = String::from_utf8_lossy(v.as_bytes()).trim().to_owned();
    match Mode::parse(&raw.to_ascii_lowercase()) {
        Some(m) => Ok(Some(m)),
        None => Err(GatewayError::BadInvocationType(raw)),
    }
}

/// `X-Callback-Url`: only for async invocations, and only an http(s) URL without credentials
/// that does not name an address the policy refuses.
pub fn callback_url(
    headers: &HeaderMap,
    mode: Mode,
    policy: &egress::AddressPolicy,
) -> Result<Option<String>, GatewayError> {
    let Some(v) = headers.get("x-callback-url") else {
        return Ok(None);
    };
    if mode == Mode::Sync {
        return Err(GatewayError::BadCallbackUrl(
            "X-Callback-Url applies only to async invocations (send X-Invocation-Type: async)"
                .to_owned(),
        ));
    }
    let raw = v.to_str().map_err(|_| {
        GatewayError::BadCallbackUrl("X-Callback-Url is not a valid URL".to_owned())
    })?;
    callbacks::validate_url(raw, policy)
        .map(Some)
        .map_err(GatewayError::BadCallbackUrl)
}

/// The body limit of an invocation type.
pub fn body_limit(mode: Mode) -> (u64, &'static str) {
    let limit = match mode {
        Mode::Sync => SYNC_BODY_BYTES,
        Mode::Async => ASYNC_BODY_BYTES,
    };
    (limit, mode.as_str())
}

/// Reads a body of at most `limit` bytes.
async fn read_body<S, B>(body: S, mode: Mode) -> Result<Bytes, GatewayError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let (limit, kind) = body_limit(mode);
    let mut out = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk
            .map_err(|e| GatewayError::InvalidJson(format!("the body could not be read: {e}")))?;
        if (out.len() + chunk.remaining()) as u64 > limit {
            return Err(GatewayError::PayloadTooLarge { limit, kind });
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

/// The args of an invocation: its JSON body (an empty body is `{}`).
pub fn parse_args(body: &[u8]) -> Result<Value, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))
}

/// The final record of a run whose invocation never reached RabbitMQ: failed by the platform,
/// not billed, and carrying the invocation's hold, so that storing it releases the reservation.
pub fn unpublished_doc(inv: &InvocationMsg, why: &str) -> RunDoc {
    let mut d = pending_doc(inv);
    d.status = RunStatus::Failed;
    d.error = Some(RunError::new(
        PLATFORM_UNAVAILABLE,
        format!("the invocation was not accepted: {why}"),
    ));
    d.bill_state = BillState::Exempt;
    d.finished_at_ms = Some(schemas::now_ms());
    d
}

/// The 202 answer of an accepted async invocation: `{run_id}` and its `Location`.
pub fn accepted(run_id: &str) -> Response {
    let mut resp = warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "run_id": run_id })),
        StatusCode::ACCEPTED,
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/runs/{run_id}")) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

/// What a finished run tells a sync caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub run_id: String,
    pub status: RunStatus,
    pub result: Option<Value>,
    pub error: Option<RunError>,
    pub duration_ms: u64,
    pub cold_start: bool,
    pub billed_micros: i64,
}

impl From<ResultMsg> for Outcome {
    fn from(r: ResultMsg) -> Outcome {
        Outcome {
            run_id: r.run_id,
            status: r.status,
            result: r.result,
            error: r.error,
            duration_ms: r.duration_ms,
            cold_start: r.cold_start,
            billed_micros: r.billed_micros,
        }
    }
}

impl From<&RunDoc> for Outcome {
    fn from(d: &RunDoc) -> Outcome {
        Outcome {
            run_id: d.id.clone(),
            status: d.status,
            result: d
                .result_json
                .as_deref()
                .map(|t| serde_json::from_str(t).unwrap_or(Value::Null)),
            error: d.error.clone(),
            duration_ms: d.duration_ms,
            cold_start: d.cold_start,
            billed_micros: d.billed_micros,
        }
    }
}

/// The sync answer of a finished run: 200 with the result and the `X-*` headers, or the
/// contract's 502 / 503 / 504.
pub fn sync_response(o: Outcome) -> Result<Response, GatewayError> {
    let err = |o: &Outcome, default: &str| {
        o.error
            .clone()
            .unwrap_or_else(|| RunError::new(default, "the run did not succeed"))
    };
    match o.status {
        RunStatus::Succeeded => {
            let body = o.result.clone().unwrap_or(Value::Null);
            let mut resp = warp::reply::json(&body).into_response();
            let h = resp.headers_mut();
            let num = |n: i64| HeaderValue::from(n);
            h.insert(
                "x-run-id",
                HeaderValue::from_str(&o.run_id)
                    .map_err(|_| GatewayError::Internal("bad run id".to_owned()))?,
            );
            h.insert("x-duration-ms", num(o.duration_ms as i64));
            h.insert(
                "x-cold-start",
                HeaderValue::from_static(if o.cold_start { "true" } else { "false" }),
            );
            h.insert("x-billed-micros", num(o.billed_micros));
            Ok(resp)
        }
        RunStatus::Failed => {
            let e = err(&o, schemas::run_error_codes::FUNCTION_ERROR);
            if e.code == schemas::run_error_codes::CONCURRENCY_LIMIT {
                Err(GatewayError::ConcurrencyLimit {
                    run_id: o.run_id,
                    message: e.message,
                })
            } else if e.is_platform() {
                Err(GatewayError::PlatformFailed {
                    run_id: o.run_id,
                    code: e.code,
                    message: e.message,
                })
            } else {
                Err(GatewayError::FunctionFailed {
                    run_id: o.run_id,
                    code: e.code,
                    message: e.message,
                })
            }
        }
        RunStatus::TimedOut => {
            let e = err(&o, schemas::run_error_codes::TIMEOUT);
            Err(GatewayError::TimedOut {
                run_id: o.run_id,
                message: e.message,
            })
        }
        RunStatus::Pending | RunStatus::Running => Err(GatewayError::Internal(format!(
            "run {} is not finished",
            o.run_id
        ))),
    }
}

impl State {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<KeyInfo, GatewayError> {
        let secret = bearer(headers)?;
        let key = self
            .store
            .key(secret)
            .await
            .map_err(GatewayError::Unavailable)?
            .ok_or(GatewayError::UnknownKey)?;
        self.limiter
            .check(&key.key_id)
            .map_err(|retry_after_secs| GatewayError::RateLimited { retry_after_secs })?;
        Ok(key)
    }

    async fn function(&self, user_id: &str, name: &str) -> Result<FunctionDoc, GatewayError> {
        self.store
            .function(user_id, name)
            .await
            .map_err(GatewayError::Unavailable)?
            .ok_or_else(|| GatewayError::NoSuchFunction(name.to_owned()))
    }

    /// Reserves the invocation's worst case, a run slot and (sync) a sync slot on the user's
    /// account: 402 when the credit cannot cover it, 429 over a per-user limit.
    async fn reserve(
        &self,
        user_id: &str,
        func: &FunctionDoc,
        mode: Mode,
    ) -> Result<accounts::Reservation, GatewayError> {
        let db = self.store.db();
        let prices = self
            .prices
            .current(db)
            .await
            .map_err(|e| GatewayError::Unavailable(format!("{e:#}")))?;
        let worst = prices.invocation_worst_case(func, mode);
        let sync = mode == Mode::Sync;
        Ok(accounts::reserve(db, user_id, worst, sync, &self.cfg.user_limits).await?)
    }

    /// Marks a run whose invocation never reached RabbitMQ as failed by the platform.
    async fn record_unpublished(&self, inv: &InvocationMsg, why: &PublishError) {
        let d = unpublished_doc(inv, &why.to_string());
        self.writer.write(RunWrite::Finished(Box::new(d))).await;
    }

    fn unavailable(e: &PublishError) -> GatewayError {
        GatewayError::Unavailable(format!("{e}; try again shortly"))
    }

    async fn invoke<S, B>(
        &self,
        name: String,
        headers: HeaderMap,
        body: S,
    ) -> Result<Response, GatewayError>
    where
        S: Stream<Item = Result<B, warp::Error>>,
        B: Buf,
    {
        if self.draining.load(Ordering::SeqCst) {
            return Err(GatewayError::ShuttingDown);
        }
        let key = self.authenticate(&headers).await?;
        let override_mode = invocation_type(&headers)?;
        let idem_key = idempotency::key_of(&headers)?;
        let content_length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // Before any lookup: nothing may be larger than the sync limit (or the requested
        // type's limit).
        let (limit, kind) = body_limit(override_mode.unwrap_or(Mode::Sync));
        if content_length.is_some_and(|n| n > limit) {
            return Err(GatewayError::PayloadTooLarge { limit, kind });
        }
        let func = self.function(&key.user_id, &name).await?;
        let mode = override_mode.unwrap_or(func.mode);
        let (limit, kind) = body_limit(mode);
        if content_length.is_some_and(|n| n > limit) {
            return Err(GatewayError::PayloadTooLarge { limit, kind });
        }
        let callback_url = callback_url(&headers, mode, &self.cfg.callback_allow)?;
        let body = read_body(body, mode).await?;
        let args = parse_args(&body)?;
        args::validate(&func.args_schema, &args).map_err(GatewayError::InvalidArgs)?;
        let idem = idem_key.map(|k| idempotency::IdemKey {
            hash: idempotency::request_hash(&func.name, &body),
            key: k,
        });
        if let Some(k) = &idem {
            if let Some(resp) = self
                .repeat_before_reserving(&key.user_id, k, &func, mode)
                .await?
            {
                return Ok(resp);
            }
        }
        self.check_records()?;
        let reservation = self.reserve(&key.user_id, &func, mode).await?;

        let inv = InvocationMsg {
            callback_url,
            hold: Some(reservation.hold()),
            ..InvocationMsg::of_function(
                &func,
                uuid::Uuid::now_v7().to_string(),
                args,
                mode,
                schemas::now_ms(),
            )
        };
        if let Some(k) = &idem {
            if let Some(resp) = self.claim_key(k, &inv, &func).await? {
                return Ok(resp);
            }
        }
        let answer = match mode {
            Mode::Sync => self.invoke_sync(inv.clone(), reservation).await,
            Mode::Async => self.invoke_async(inv.clone(), reservation).await,
        };
        if let (Some(k), Err(GatewayError::Unavailable(_))) = (&idem, &answer) {
            // Not published: a retry with the same key starts afresh.
            idempotency::release(self.store.db(), &inv.user_id, &k.key, &inv.run_id).await;
        }
        answer
    }

    /// `reservation` is released if this returns before the publish; from the publish on, the
    /// run's final record releases it (a record of a failed publish included).
    async fn invoke_sync(
        &self,
        mut inv: InvocationMsg,
        reservation: accounts::Reservation,
    ) -> Result<Response, GatewayError> {
        let _permit = self
            .inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::NoCapacity)?;
        if !self.broker.is_connected() {
            return Err(Self::unavailable(&PublishError::NotConnected));
        }
        inv.reply_to = Some(self.broker.reply_queue().to_owned());
        let waiter = self.broker.register(&inv.run_id);
        // Not waited for: the worker's final record upserts the run anyway.
        self.writer
            .write(RunWrite::Pending(Box::new(pending_doc(&inv))))
            .await;
        reservation.hand_over();
        if let Err(e) = self.broker.publish_invocation(&inv).await {
            tracing::warn!(run_id = inv.run_id, error = %e, "a sync invocation was not published");
            self.record_unpublished(&inv, &e).await;
            return Err(Self::unavailable(&e));
        }
        self.metrics.accepted(Mode::Sync);
        let wait = Duration::from_millis(inv.timeout_ms) + self.cfg.sync_grace;
        let deadline = tokio::time::Instant::now() + wait;
        match waiter.wait_or_lost(wait).await {
            Wait::Reply(r) => return sync_response((*r).into()),
            Wait::Lost => {
                // The reply may have been dropped with the connection: the worker stores the
                // final record before it replies, so the record will tell.
                if let Some(d) = self.final_record(&inv.run_id, deadline).await {
                    return sync_response(Outcome::from(&d));
                }
            }
            Wait::TimedOut => {
                if let Ok(Some(d)) = self.store.run(&inv.run_id).await {
                    if d.status.is_final() {
                        return sync_response(Outcome::from(&d));
                    }
                }
            }
        }
        Err(GatewayError::TimedOut {
            message: format!(
                "no result within {} ms; the run may still finish: GET /v1/runs/{}",
                wait.as_millis(),
                inv.run_id
            ),
            run_id: inv.run_id,
        })
    }

    /// Polls a run's record until it is final or `deadline` passes.
    async fn final_record(&self, run_id: &str, deadline: tokio::time::Instant) -> Option<RunDoc> {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if let Ok(Some(d)) = self.store.run(run_id).await {
                if d.status.is_final() {
                    return Some(d);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Refuses new work while run records cannot be stored: what is accepted must be recorded.
    fn check_records(&self) -> Result<(), GatewayError> {
        if self.writer.is_failing() {
            return Err(GatewayError::Unavailable(
                "run records cannot be stored right now (the database is unreachable); try again shortly"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// As [`State::invoke_sync`] for `reservation`.
    async fn invoke_async(
        &self,
        inv: InvocationMsg,
        reservation: accounts::Reservation,
    ) -> Result<Response, GatewayError> {
        if !self.broker.is_connected() {
            return Err(Self::unavailable(&PublishError::NotConnected));
        }
        reservation.hand_over();
        let write = async {
            let started = Instant::now();
            let written = tokio::time::timeout(
                Duration::from_secs(5),
                self.writer
                    .write_durable(RunWrite::Pending(Box::new(pending_doc(&inv)))),
            )
            .await;
            self.metrics.record_waited(started.elapsed());
            written
        };
        let (published, written) = tokio::join!(self.broker.publish_invocation(&inv), write);
        if let Err(e) = published {
            tracing::warn!(run_id = inv.run_id, error = %e, "an async invocation was not published");
            self.record_unpublished(&inv, &e).await;
            return Err(Self::unavailable(&e));
        }
        if !matches!(written, Ok(Ok(()))) {
            // Published, so it will run and its final record will be stored; only the early
            // `pending` view is late.
            tracing::warn!(
                run_id = inv.run_id,
                "the pending run record is not stored yet"
            );
        }
        self.metrics.accepted(Mode::Async);
        Ok(accepted(&inv.run_id))
    }

    async fn get_run(&self, run_id: String, headers: HeaderMap) -> Result<Response, GatewayError> {
        let key = self.authenticate(&headers).await?;
        let doc = self
            .store
            .run(&run_id)
            .await
            .map_err(GatewayError::Unavailable)?;
        match doc {
            Some(d) if d.user_id == key.user_id => {
                Ok(warp::reply::json(&views::run_json(&d)).into_response())
            }
            _ => Err(GatewayError::NoSuchRun(run_id)),
        }
    }

    async fn health(&self) -> Response {
        let mongo =
            tokio::time::timeout(Duration::from_secs(1), common::mongo::ping(self.store.db()))
                .await
                .is_ok_and(|r| r.is_ok())
                && !self.writer.is_failing();
        let amqp = self.broker.link().state();
        let draining = self.draining.load(Ordering::SeqCst);
        let indexes = self.indexes_ready.load(Ordering::SeqCst);
        let status = if mongo && indexes && amqp.connected && !draining {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        warp::reply::with_status(
            warp::reply::json(&serde_json::json!({
                "mongodb": mongo,
                "indexes": indexes,
                "rabbitmq": amqp.connected,
                "rabbitmq_error": amqp.last_error,
                "record_backlog": self.writer.backlog(),
                "draining": draining,
            })),
            status,
        )
        .into_response()
    }
}

fn answer(r: Result<Response, GatewayError>) -> Response {
    match r {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, GatewayError::Internal(_) | GatewayError::Unavailable(_)) {
                tracing::warn!(error = %e, "request failed");
            }
            e.into_response()
        }
    }
}

async fn rejection(r: warp::Rejection) -> Result<Response, Infallible> {
    let e = if r.is_not_found() {
        GatewayError::NoRoute
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        GatewayError::MethodNotAllowed
    } else {
        GatewayError::Internal(format!("{r:?}"))
    };
    Ok(answer(Err(e)))
}

/// Every route of the gateway.
pub fn routes(state: Arc<State>) -> BoxedFilter<(Response,)> {
    let st = state.clone();
    let invoke = warp::path!("v1" / "invoke" / String)
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |name: String, headers: HeaderMap, body| {
            let st = st.clone();
            async move { answer(st.invoke(name, headers, body).await) }
        });
    let st = state.clone();
    let get_run = warp::path!("v1" / "runs" / String)
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .then(move |run_id: String, headers: HeaderMap| {
            let st = st.clone();
            async move { answer(st.get_run(run_id, headers).await) }
        });
    let st = state.clone();
    let healthz = warp::path!("healthz").and(warp::get()).then(move || {
        let st = st.clone();
        async move { st.health().await }
    });
    let st = state.clone();
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        st.metrics.sync_waiting.set(st.broker.waiting() as i64);
        let mut resp = st.metrics.render().into_response();
        resp.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        resp
    });
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| json_text(OPENAPI));
    let m = state.metrics.clone();
    invoke
        .or(get_run)
        .unify()
        .or(healthz)
        .unify()
        .or(metrics)
        .unify()
        .or(openapi)
        .unify()
        .recover(rejection)
        .unify()
        .with(warp::log::custom(move |info| {
            m.request(
                metrics::route_label(info.path()),
                info.status().as_u16(),
                info.elapsed(),
            );
        }))
        .map(Reply::into_response)
        .boxed()
}

async fn ensure_indexes(db: mongodb::Database, ready: Arc<AtomicBool>) {
    let mut failures = 0u32;
    loop {
        match common::mongo::ensure_indexes(&db).await {
            Ok(()) => {
                ready.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %format!("{e:#}"), "creating MongoDB indexes failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Runs the gateway until `shutdown` resolves, then drains: answers 503 to new invocations,
/// lets in-flight calls finish, stops taking callbacks and flushes the run records.
/// RabbitMQ and MongoDB need not be up at start: invocations get 503 until they are.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(instance = cfg.instance_id, backends = %cfg.backends, %addr, threads = cfg.threads, "gateway starting");
    let db = common::mongo::connect(&cfg.backends.mongodb_uri, &cfg.backends.mongodb_db).await?;
    let indexes_ready = Arc::new(AtomicBool::new(false));
    let indexes = tokio::spawn(ensure_indexes(db.clone(), indexes_ready.clone()));
    let metrics = Metrics::new();
    let (writer, writer_task) = RunWriter::spawn(db.clone());
    let broker = Broker::new(
        cfg.backends.amqp_url.clone(),
        cfg.backends.names(),
        cfg.instance_id.clone(),
        cfg.publish_timeout,
        metrics.clone(),
    );
    let callbacks = Arc::new(Callbacks::new(
        db.clone(),
        cfg.callback_allow.clone(),
        cfg.callback_attempts,
        cfg.callback_backoff,
        cfg.callback_timeout,
        metrics.clone(),
    )?);
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let manager = tokio::spawn(broker.clone().maintain(
        phase_rx,
        Some(callbacks),
        cfg.drain_timeout,
    ));
    let drain = cfg.drain_timeout;
    let state = Arc::new(State {
        store: Store::new(db),
        limiter: KeyLimiter::new(cfg.rate_per_sec, cfg.burst),
        inflight: Arc::new(Semaphore::new(cfg.max_inflight)),
        prices: accounts::PriceBook::new(),
        indexes_ready,
        broker,
        writer: writer.clone(),
        metrics,
        draining: AtomicBool::new(false),
        cfg,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let state = state.clone();
        let phase_tx = phase_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("gateway draining");
            state.draining.store(true, Ordering::SeqCst);
            let _ = phase_tx.send(Phase::Draining);
            // Still listening while the sync calls in flight finish: a new request is answered
            // 503 `shutting_down` (and /healthz 503), so a client or load balancer goes
            // elsewhere instead of meeting a refused connection.
            let all = u32::try_from(state.cfg.max_inflight).unwrap_or(u32::MAX);
            let calls_done = state.inflight.clone().acquire_many_owned(all);
            if tokio::time::timeout(state.cfg.drain_timeout, calls_done)
                .await
                .is_err()
            {
                tracing::warn!("drain timeout: sync calls still in flight");
            }
            let _ = stop_tx.send(true);
        });
    }
    let pruner = {
        let state = state.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = tick.tick() => state.limiter.prune(),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    };

    let mut graceful = stop_rx.clone();
    let mut server = tokio::spawn(
        warp::serve(routes(state.clone()))
            .incoming(listener)
            .graceful(async move {
                let _ = graceful.wait_for(|s| *s).await;
            })
            .run(),
    );
    tracing::info!(%addr, reply_queue = state.broker.reply_queue(), "gateway listening");
    let mut stop = stop_rx.clone();
    let served = tokio::select! {
        _ = &mut server => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    if !served && tokio::time::timeout(drain, &mut server).await.is_err() {
        tracing::warn!("drain timeout: abandoning requests still in flight");
        server.abort();
    }
    let _ = phase_tx.send(Phase::Stopped);
    if tokio::time::timeout(drain + Duration::from_secs(5), manager)
        .await
        .is_err()
    {
        tracing::warn!("the broker connection did not close in time");
    }
    let _ = pruner.await;
    indexes.abort();
    writer.drain(common::runstore::SHUTDOWN_DRAIN).await;
    drop(writer);
    drop(state);
    if tokio::time::timeout(Duration::from_secs(5), writer_task)
        .await
        .is_err()
    {
        tracing::warn!("the run writer did not stop in time");
    }
    tracing::info!(%addr, "gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Resources;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                warp::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_keys() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer cf_abc")])).unwrap(),
            "cf_abc"
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer   k ")])).unwrap(),
            "k"
        );
        for bad in [
            vec![],
            vec![("authorization", "Basic dTpw")],
            vec![("authorization", "Bearer ")],
            vec![("authorization", "cf_abc")],
        ] {
            assert!(
                matches!(bearer(&headers(&bad)), Err(GatewayError::MissingKey)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn invocation_types() {
        assert_eq!(invocation_type(&headers(&[])).unwrap(), None);
        assert_eq!(
            invocation_type(&headers(&[("x-invocation-type", "sync")])).unwrap(),
            Some(Mode::Sync)
        );
        assert_eq!(
            invocation_type(&headers(&[("x-invocation-type", "ASYNC")])).unwrap(),
            Some(Mode::Async)
        );
        let e = invocation_type(&headers(&[("x-invocation-type", "event")])).unwrap_err();
        assert_eq!(api_error(&e).status, 400);
        assert!(e.to_string().contains("\"event\""));
    }

    #[test]
    fn callback_urls_only_for_async() {
        let p = egress::AddressPolicy::parse("127.0.0.1/32").unwrap();
        let h = headers(&[("x-callback-url", "http://127.0.0.1:9/cb")]);
        assert_eq!(
            callback_url(&h, Mode::Async, &p).unwrap().as_deref(),
            Some("http://127.0.0.1:9/cb")
        );
        assert!(matches!(
            callback_url(&h, Mode::Sync, &p),
            Err(GatewayError::BadCallbackUrl(_))
        ));
        // Without the allow-list, loopback is refused.
        let public = egress::AddressPolicy::public_only();
        assert!(matches!(
            callback_url(&h, Mode::Async, &public),
            Err(GatewayError::BadCallbackUrl(_))
        ));
        let h = headers(&[("x-callback-url", "gopher://x")]);
        assert!(callback_url(&h, Mode::Async, &p).is_err());
        assert_eq!(callback_url(&headers(&[]), Mode::Sync, &p).unwrap(), None);
    }

    #[test]
    fn args_parsing() {
        assert_eq!(parse_args(b"").unwrap(), serde_json::json!({}));
        assert_eq!(parse_args(b" \n").unwrap(), serde_json::json!({}));
        assert_eq!(parse_args(b"[1]").unwrap(), serde_json::json!([1]));
        let e = parse_args(b"{\"a\": ").unwrap_err();
        assert_eq!(api_error(&e).code, "invalid_json");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let chunk = || Ok::<_, warp::Error>(Bytes::from(vec![b' '; 64 * 1024]));
        let body = futures::stream::iter((0..4).map(|_| chunk()));
        assert_eq!(
            read_body(body, Mode::Async).await.unwrap().len(),
            256 * 1024
        );
        let body = futures::stream::iter((0..5).map(|_| chunk()));
        let e = read_body(body, Mode::Async).await.unwrap_err();
        assert_eq!(api_error(&e).status, 413);
        let body = futures::stream::iter((0..5).map(|_| chunk()));
        assert!(read_body(body, Mode::Sync).await.is_ok());
    }

    fn outcome(status: RunStatus) -> Outcome {
        Outcome {
            run_id: "0190a5e1-0000-7000-8000-000000000001".into(),
            status,
            result: None,
            error: None,
            duration_ms: 12,
            cold_start: true,
            billed_micros: 34,
        }
    }

    #[tokio::test]
    async fn succeeded_runs_answer_200_with_headers() {
        let mut o = outcome(RunStatus::Succeeded);
        o.result = Some(serde_json::json!({"sum": 3}));
        let resp = sync_response(o.clone()).unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["x-run-id"], o.run_id.as_str());
        assert_eq!(h["x-duration-ms"], "12");
        assert_eq!(h["x-cold-start"], "true");
        assert_eq!(h["x-billed-micros"], "34");
        assert_eq!(h["content-type"], "application/json");
        o.cold_start = false;
        let resp = sync_response(o).unwrap();
        assert_eq!(resp.headers()["x-cold-start"], "false");
    }

    #[test]
    fn failures_map_to_502_503_504() {
        let mut o = outcome(RunStatus::Failed);
        o.error = Some(RunError::new("function_error", "ValueError: no"));
        let e = sync_response(o.clone()).unwrap_err();
        let a = api_error(&e);
        assert_eq!((a.status.as_u16(), a.code), (502, "function_error"));
        assert_eq!(a.body()["run_id"], o.run_id.as_str());
        assert_eq!(a.body()["error"]["message"], "ValueError: no");

        o.error = Some(RunError::new("platform_no_capacity", "too big"));
        let a = api_error(&sync_response(o.clone()).unwrap_err());
        assert_eq!((a.status.as_u16(), a.code), (503, "platform_no_capacity"));

        o.status = RunStatus::TimedOut;
        o.error = Some(RunError::new("timeout", "ran past 100 ms"));
        let a = api_error(&sync_response(o.clone()).unwrap_err());
        assert_eq!((a.status.as_u16(), a.code), (504, "timeout"));
        assert_eq!(a.body()["run_id"], o.run_id.as_str());
    }

    #[test]
    fn outcomes_from_stored_runs() {
        let d = RunDoc {
            id: "r".into(),
            user_id: "u".into(),
            function_id: "f".into(),
            function: "fn".into(),
            version: 1,
            status: RunStatus::Succeeded,
            args_json: "{}".into(),
            result_json: Some("[1]".into()),
            error: None,
            logs: String::new(),
            cold_start: false,
            duration_ms: 5,
            resources: Resources::new(1, 1, 1),
            billed_micros: 2,
            bill_state: BillState::Unbilled,
            bill_id: None,
            worker_id: None,
            epoch: 1,
            created_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            hold: None,
            attempts: Vec::new(),
            next_attempt_at_ms: None,
            dead_letter: None,
            schedule_id: None,
        };
        let o = Outcome::from(&d);
        assert_eq!(o.result, Some(serde_json::json!([1])));
        assert_eq!((o.duration_ms, o.billed_micros), (5, 2));
    }
}
