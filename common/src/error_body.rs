//! The contract's error body, `{"error": {"code", "message"}}`, as a warp reply. Services map
//! their own error enums to an [`ApiError`] in exactly one place.

use serde::Serialize;
use warp::http::StatusCode;

/// A contract error: HTTP status, stable snake_case code, human message, optional extras
/// (`run_id`) and a `Retry-After` value.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub run_id: Option<String>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            run_id: None,
            retry_after_secs: None,
        }
    }

    pub fn with_run_id(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = Some(run_id.into());
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
        }
        let mut v = serde_json::json!({"error": Inner { code: self.code, message: &self.message }});
        if let Some(id) = &self.run_id {
            v["run_id"] = serde_json::Value::String(id.clone());
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl warp::Reply for ApiError {
    fn into_response(self) -> warp::reply::Response {
        let mut resp =
            warp::reply::with_status(warp::reply::json(&self.body()), self.status).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(
                "retry-after",
                warp::http::HeaderValue::from_str(&secs.to_string())
                    .unwrap_or(warp::http::HeaderValue::from_static("1")),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::Reply;

    #[test]
    fn body_shape_matches_the_contract() {
        let e = ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "too slow").with_run_id("r1");
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"code": "timeout", "message": "too slow"}, "run_id": "r1"})
        );
        let resp = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down")
            .with_retry_after(2)
            .into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
    }
}
