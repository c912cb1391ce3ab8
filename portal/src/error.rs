//! The portal's errors and their one mapping to HTTP: status, snake_case code and the contract's
//! body `{"error": {"code", "message"}}` (plus `"field"` for validation errors, so a form can
//! say what to fix, and `run_id` where a run exists).

use accounts::AccountError;
use gateway::GatewayError;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

/// Everything a service call or request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// A field of a request or form is wrong; `field` names it (`email`, `code`, `resources.memory_mb`).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Uploaded code that does not compile or parse, or lacks the handler's function.
    #[error("{file}{}: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    InvalidCode {
        file: String,
        line: Option<u64>,
        reason: String,
    },
    /// The body is not the JSON the endpoint takes.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// No session, or an unknown or expired one.
    #[error("log in first: send Authorization: Bearer <session token> (POST /api/v1/sessions)")]
    Unauthorized,
    /// Wrong email or password.
    #[error("wrong email or password")]
    BadCredentials,
    #[error("too many login attempts; try again in {retry_after_secs} s")]
    LoginRateLimited { retry_after_secs: u64 },
    #[error("too many accounts were created from this address; try again in {retry_after_secs} s")]
    SignupRateLimited { retry_after_secs: u64 },
    /// No payment provider is configured (`PORTAL_PAYMENT_PROVIDER`).
    #[error("top-ups are not available: this portal has no payment provider configured")]
    PaymentsUnavailable,
    /// Missing, or belonging to someone else (never told apart).
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("you already have a function named {0:?}")]
    NameTaken(String),
    #[error("the function was changed by another request at the same time; reload and try again")]
    Conflict,
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    /// Top-ups and bill payments (`accounts`).
    #[error(transparent)]
    Account(#[from] AccountError),
    /// A test invocation failed the way a sync invoke through the gateway does.
    #[error(transparent)]
    Invoke(GatewayError),
    #[error("no such route")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A dependency (MongoDB, RabbitMQ) is unreachable.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl PortalError {
    /// A validation error of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> PortalError {
        PortalError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A MongoDB failure while doing `what`.
    pub fn db(what: &str, e: impl std::fmt::Display) -> PortalError {
        PortalError::Unavailable(format!("MongoDB failed {what}: {e}"))
    }

    /// The field a validation error is about.
    pub fn field(&self) -> Option<&str> {
        match self {
            PortalError::Invalid { field, .. } => Some(field),
            PortalError::EmailTaken => Some("email"),
            PortalError::NameTaken(_) => Some("name"),
            PortalError::TooLarge { .. } | PortalError::InvalidCode { .. } => Some("code"),
            PortalError::Account(AccountError::InvalidCard(_)) => Some("card_number"),
            PortalError::Account(AccountError::InvalidAmount(_)) => Some("amount_micros"),
            _ => None,
        }
    }

    /// The HTTP status of the contract.
    pub fn status(&self) -> StatusCode {
        match self {
            PortalError::Invalid { .. }
            | PortalError::InvalidJson(_)
            | PortalError::InvalidCode { .. } => StatusCode::BAD_REQUEST,
            PortalError::Unauthorized | PortalError::BadCredentials => StatusCode::UNAUTHORIZED,
            PortalError::LoginRateLimited { .. } | PortalError::SignupRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            PortalError::PaymentsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            PortalError::NotFound(_) | PortalError::NoRoute => StatusCode::NOT_FOUND,
            PortalError::EmailTaken | PortalError::NameTaken(_) | PortalError::Conflict => {
                StatusCode::CONFLICT
            }
            PortalError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PortalError::Account(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            PortalError::Invoke(e) => gateway::api_error(e).status,
            PortalError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PortalError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            PortalError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            PortalError::Invalid { .. } => "invalid_request",
            PortalError::InvalidJson(_) => "invalid_json",
            PortalError::InvalidCode { .. } => "invalid_code",
            PortalError::Unauthorized => "unauthorized",
            PortalError::BadCredentials => "invalid_credentials",
            PortalError::LoginRateLimited { .. } | PortalError::SignupRateLimited { .. } => {
                "rate_limited"
            }
            PortalError::PaymentsUnavailable => "payments_unavailable",
            PortalError::NotFound(_) => "not_found",
            PortalError::EmailTaken => "email_taken",
            PortalError::NameTaken(_) => "name_taken",
            PortalError::Conflict => "conflict",
            PortalError::TooLarge { .. } => "payload_too_large",
            PortalError::Account(e) => e.code(),
            PortalError::Invoke(e) => gateway::api_error(e).code,
            PortalError::NoRoute => "no_route",
            PortalError::MethodNotAllowed => "method_not_allowed",
            PortalError::Unavailable(_) => "unavailable",
            PortalError::Internal(_) => "internal",
        }
    }

    /// A sentence for people (internal details are logged, not shown).
    pub fn message(&self) -> String {
        match self {
            PortalError::Internal(_) => "internal error; it has been logged".to_owned(),
            PortalError::Account(AccountError::Internal(_)) => {
                "internal error; it has been logged".to_owned()
            }
            PortalError::Invoke(e) => gateway::api_error(e).message,
            e => e.to_string(),
        }
    }

    /// The JSON error body.
    pub fn body(&self) -> serde_json::Value {
        if let PortalError::Invoke(e) = self {
            return gateway::api_error(e).body();
        }
        let mut v = serde_json::json!({"error": {"code": self.code(), "message": self.message()}});
        if let Some(f) = self.field() {
            v["error"]["field"] = serde_json::Value::String(f.to_owned());
        }
        v
    }
}

impl Reply for PortalError {
    fn into_response(self) -> Response {
        if matches!(
            self,
            PortalError::Internal(_)
                | PortalError::Unavailable(_)
                | PortalError::Account(AccountError::Internal(_))
        ) {
            tracing::warn!(error = %self, "request failed");
        }
        if let PortalError::Invoke(e) = self {
            return e.into_response();
        }
        let mut resp = warp::reply::with_status(warp::reply::json(&self.body()), self.status())
            .into_response();
        if let PortalError::LoginRateLimited { retry_after_secs }
        | PortalError::SignupRateLimited { retry_after_secs } = self
        {
            resp.headers_mut().insert(
                "retry-after",
                warp::http::HeaderValue::from(retry_after_secs),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let e = PortalError::invalid("email", "not an email address");
        assert_eq!((e.status().as_u16(), e.code()), (400, "invalid_request"));
        assert_eq!(e.body()["error"]["field"], "email");
        assert_eq!(e.body()["error"]["message"], "email: not an email address");
        assert_eq!(PortalError::Unauthorized.status(), 401);
        assert_eq!(PortalError::NotFound("bill").status(), 404);
        assert_eq!(PortalError::NameTaken("a".into()).status(), 409);
        let big = PortalError::TooLarge {
            what: "code",
            limit: 5,
        };
        assert_eq!(big.status(), 413);
        assert_eq!(
            PortalError::Account(AccountError::Declined)
                .status()
                .as_u16(),
            402
        );
        assert_eq!(
            PortalError::Account(AccountError::AlreadyPaid).code(),
            "already_paid"
        );
        let e = PortalError::SignupRateLimited {
            retry_after_secs: 90,
        };
        assert_eq!((e.status().as_u16(), e.code()), (429, "rate_limited"));
        assert_eq!(e.into_response().headers()["retry-after"], "90");
        let e = PortalError::PaymentsUnavailable;
        assert_eq!(
            (e.status().as_u16(), e.code()),
            (503, "payments_unavailable")
        );
        let e = PortalError::Internal(anyhow::anyhow!("secret detail"));
        assert!(!e.body().to_string().contains("secret"));
    }

    #[test]
    fn invoke_errors_keep_the_gateway_body() {
        let e = PortalError::Invoke(GatewayError::FunctionFailed {
            run_id: "r1".into(),
            code: "function_error".into(),
            message: "boom".into(),
        });
        assert_eq!(e.status(), 502);
        assert_eq!(e.body()["run_id"], "r1");
        let resp = e.into_response();
        assert_eq!(resp.status(), 502);
    }
}
