//! The gateway's errors and their one mapping to the contract's `{"error": {code, message}}`.

use common::error_body::ApiError;
use schemas::run_error_codes as codes;
use warp::http::StatusCode;

/// Everything the invoke endpoint can answer other than success.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("an API key is required: send `Authorization: Bearer <API key>`")]
    MissingKey,
    #[error("the API key is unknown or has been revoked")]
    UnknownKey,
    #[error("there is no function named {0:?}")]
    NoSuchFunction(String),
    #[error("there is no run {0:?}")]
    NoSuchRun(String),
    #[error("no such endpoint")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidArgs(String),
    #[error("X-Invocation-Type must be \"sync\" or \"async\", not {0:?}")]
    BadInvocationType(String),
    #[error("{0}")]
    BadCallbackUrl(String),
    /// `Idempotency-Key` empty, too long or not visible ASCII (400).
    #[error("{0}")]
    BadIdempotencyKey(String),
    /// The same `Idempotency-Key` came with another function or body (409).
    #[error("the Idempotency-Key {key:?} was used within 24 h for another request (a different function or body); use a new key")]
    IdempotencyConflict { key: String },
    #[error("the body is larger than the {limit} bytes allowed for {kind} invocations")]
    PayloadTooLarge { limit: u64, kind: &'static str },
    #[error("too many requests for this API key; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the available credit ({available_micros} micros) cannot cover this invocation's worst case ({needed_micros} micros: its timeout at its resources and the prices); top up or pay the open bills")]
    InsufficientCredit {
        available_micros: i64,
        needed_micros: i64,
    },
    /// Too many of the user's runs (or sync calls) not finished yet, across keys and gateways.
    #[error("{message}; retry after {retry_after_secs} s")]
    UserLimit {
        message: String,
        retry_after_secs: u64,
    },
    /// The function already runs its `max_concurrency` invocations (the leader refused this
    /// sync call without running it).
    #[error("{message}")]
    ConcurrencyLimit { run_id: String, message: String },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the gateway has too many calls in flight")]
    NoCapacity,
    #[error("{0}")]
    Unavailable(String),
    /// The function raised or exited non-zero (502).
    #[error("{message}")]
    FunctionFailed {
        run_id: String,
        code: String,
        message: String,
    },
    /// The platform could not run the function (503).
    #[error("{message}")]
    PlatformFailed {
        run_id: String,
        code: String,
        message: String,
    },
    /// The function ran past its timeout, or its result did not come back in time (504).
    #[error("{message}")]
    TimedOut { run_id: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Error codes a failed run may carry, as `'static` strings for [`ApiError`].
const FUNCTION_CODES: [&str; 6] = [
    codes::FUNCTION_ERROR,
    codes::FUNCTION_EXIT,
    codes::FUNCTION_LOAD,
    codes::BAD_RESULT,
    codes::OUT_OF_MEMORY,
    codes::TIMEOUT,
];
const PLATFORM_CODES: [&str; 4] = [
    codes::PLATFORM_WORKER,
    codes::PLATFORM_WORKER_LOST,
    codes::PLATFORM_NO_CAPACITY,
    codes::PLATFORM_CONTAINER_LOST,
];

fn known_code(code: &str, known: &[&'static str], fallback: &'static str) -> &'static str {
    known
        .iter()
        .copied()
        .find(|k| *k == code)
        .unwrap_or(fallback)
}

/// The one mapping from a [`GatewayError`] to the contract's status, code and body.
pub fn api_error(e: &GatewayError) -> ApiError {
    use GatewayError as G;
    let msg = e.to_string();
    let (status, code) = match e {
        G::MissingKey | G::UnknownKey => (StatusCode::UNAUTHORIZED, "unauthorized"),
        G::NoSuchFunction(_) | G::NoSuchRun(_) => (StatusCode::NOT_FOUND, "not_found"),
        // Like the portal's: an unknown path is told apart from a missing function or run.
        G::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
        G::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        G::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
        G::InvalidArgs(_) => (StatusCode::BAD_REQUEST, "invalid_args"),
        G::BadInvocationType(_) => (StatusCode::BAD_REQUEST, "invalid_invocation_type"),
        G::BadCallbackUrl(_) => (StatusCode::BAD_REQUEST, "invalid_callback_url"),
        G::BadIdempotencyKey(_) => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
        G::IdempotencyConflict { .. } => (StatusCode::CONFLICT, "idempotency_conflict"),
        G::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        G::RateLimited { retry_after_secs } => {
            return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", msg)
                .with_retry_after((*retry_after_secs).max(1));
        }
        G::InsufficientCredit { .. } => (StatusCode::PAYMENT_REQUIRED, "insufficient_credit"),
        G::UserLimit {
            retry_after_secs, ..
        } => {
            return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "user_limit", msg)
                .with_retry_after((*retry_after_secs).max(1));
        }
        G::ConcurrencyLimit { run_id, .. } => {
            return ApiError::new(StatusCode::TOO_MANY_REQUESTS, codes::CONCURRENCY_LIMIT, msg)
                .with_retry_after(CONCURRENCY_RETRY_SECS)
                .with_run_id(run_id.clone());
        }
        G::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        G::NoCapacity => (StatusCode::SERVICE_UNAVAILABLE, "no_capacity"),
        G::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        G::FunctionFailed { run_id, code, .. } => {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                known_code(code, &FUNCTION_CODES, codes::FUNCTION_ERROR),
                msg,
            )
            .with_run_id(run_id.clone());
        }
        G::PlatformFailed { run_id, code, .. } => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                known_code(code, &PLATFORM_CODES, "platform_error"),
                msg,
            )
            .with_run_id(run_id.clone());
        }
        G::TimedOut { run_id, .. } => {
            return ApiError::new(StatusCode::GATEWAY_TIMEOUT, codes::TIMEOUT, msg)
                .with_run_id(run_id.clone());
        }
        G::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    ApiError::new(status, code, msg)
}

/// How long a caller over a function's `max_concurrency` is asked to wait: a slot frees when
/// one of its runs ends.
pub const CONCURRENCY_RETRY_SECS: u64 = 1;

/// How long a caller over a per-user limit is asked to wait: runs end within seconds to
/// minutes, and a retry costs one conditional update.
pub const USER_LIMIT_RETRY_SECS: u64 = 1;

impl From<accounts::ReserveError> for GatewayError {
    fn from(e: accounts::ReserveError) -> GatewayError {
        use accounts::ReserveError as R;
        match e {
            R::UnknownUser => GatewayError::UnknownKey,
            R::InsufficientCredit {
                available_micros,
                needed_micros,
            } => GatewayError::InsufficientCredit {
                available_micros,
                needed_micros,
            },
            e @ (R::QueuedLimit { .. } | R::SyncLimit { .. }) => GatewayError::UserLimit {
                message: e.to_string(),
                retry_after_secs: USER_LIMIT_RETRY_SECS,
            },
            R::Internal(e) => GatewayError::Unavailable(format!("{e:#}")),
        }
    }
}

impl warp::Reply for GatewayError {
    fn into_response(self) -> warp::reply::Response {
        api_error(&self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::Reply;

    fn status_code(e: GatewayError) -> (u16, &'static str) {
        let a = api_error(&e);
        (a.status.as_u16(), a.code)
    }

    #[test]
    fn every_contract_status_is_mapped() {
        use GatewayError as G;
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (G::MissingKey, 401, "unauthorized"),
            (G::UnknownKey, 401, "unauthorized"),
            (G::NoSuchFunction("f".into()), 404, "not_found"),
            (G::NoSuchRun("r".into()), 404, "not_found"),
            (G::NoRoute, 404, "no_route"),
            (
                G::BadIdempotencyKey("k".into()),
                400,
                "invalid_idempotency_key",
            ),
            (
                G::IdempotencyConflict { key: "k".into() },
                409,
                "idempotency_conflict",
            ),
            (G::MethodNotAllowed, 405, "method_not_allowed"),
            (G::InvalidJson("eof".into()), 400, "invalid_json"),
            (G::InvalidArgs("a".into()), 400, "invalid_args"),
            (
                G::BadInvocationType("x".into()),
                400,
                "invalid_invocation_type",
            ),
            (G::BadCallbackUrl("x".into()), 400, "invalid_callback_url"),
            (
                G::PayloadTooLarge {
                    limit: 1,
                    kind: "async",
                },
                413,
                "payload_too_large",
            ),
            (
                G::RateLimited {
                    retry_after_secs: 0,
                },
                429,
                "rate_limited",
            ),
            (
                G::InsufficientCredit {
                    available_micros: 0,
                    needed_micros: 1,
                },
                402,
                "insufficient_credit",
            ),
            (
                G::UserLimit {
                    message: "too many".into(),
                    retry_after_secs: 1,
                },
                429,
                "user_limit",
            ),
            (
                G::ConcurrencyLimit {
                    run_id: "r".into(),
                    message: "busy".into(),
                },
                429,
                "concurrency_limit",
            ),
            (G::ShuttingDown, 503, "shutting_down"),
            (G::NoCapacity, 503, "no_capacity"),
            (G::Unavailable("down".into()), 503, "unavailable"),
            (
                G::FunctionFailed {
                    run_id: "r".into(),
                    code: "function_exit".into(),
                    message: "exit 1".into(),
                },
                502,
                "function_exit",
            ),
            (
                G::FunctionFailed {
                    run_id: "r".into(),
                    code: "something_new".into(),
                    message: "?".into(),
                },
                502,
                "function_error",
            ),
            (
                G::PlatformFailed {
                    run_id: "r".into(),
                    code: "platform_no_capacity".into(),
                    message: "full".into(),
                },
                503,
                "platform_no_capacity",
            ),
            (
                G::PlatformFailed {
                    run_id: "r".into(),
                    code: "platform_other".into(),
                    message: "?".into(),
                },
                503,
                "platform_error",
            ),
            (
                G::TimedOut {
                    run_id: "r".into(),
                    message: "slow".into(),
                },
                504,
                "timeout",
            ),
            (G::Internal("bug".into()), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let what = format!("{e:?}");
            assert_eq!(status_code(e), (status, code), "{what}");
        }
    }

    #[test]
    fn bodies_carry_run_id_and_retry_after() {
        let resp = GatewayError::RateLimited {
            retry_after_secs: 0,
        }
        .into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "1");
        let resp = GatewayError::from(accounts::ReserveError::QueuedLimit {
            running: 3,
            limit: 3,
        })
        .into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(
            api_error(&accounts::ReserveError::UnknownUser.into()).status,
            401
        );

        let a = api_error(&GatewayError::FunctionFailed {
            run_id: "r1".into(),
            code: "function_error".into(),
            message: "ZeroDivisionError: division by zero".into(),
        });
        assert_eq!(
            a.body(),
            serde_json::json!({
                "error": {"code": "function_error", "message": "ZeroDivisionError: division by zero"},
                "run_id": "r1"
            })
        );
        let a = api_error(&GatewayError::TimedOut {
            run_id: "r2".into(),
            message: "too slow".into(),
        });
        assert_eq!(a.body()["run_id"], "r2");
        assert_eq!(
            api_error(&GatewayError::UnknownKey).body()["error"]["code"],
            "unauthorized"
        );
    }
}
