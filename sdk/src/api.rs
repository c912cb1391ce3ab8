//! HTTP calls to the portal's JSON API and the gateway, and the one mapping of their answers
//! (status + `{"error": {code, message}}`) to the CLI's errors and exit codes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::error::{exit, CliError, Result};

/// Which server a call goes to (for the wording of errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Portal,
    Gateway,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Portal => "portal",
            Server::Gateway => "gateway",
        }
    }

    fn knobs(self) -> &'static str {
        match self {
            Server::Portal => "--portal or COLORFAAS_PORTAL",
            Server::Gateway => "--gateway or COLORFAAS_GATEWAY",
        }
    }
}

/// What a call is about, so a 404 or 401 can say what is missing and what to do.
#[derive(Debug, Clone)]
pub enum Subject {
    Login,
    Register,
    Function(String),
    Run(String),
    Key(String),
    Bill(String),
    Invoke(String),
    Other,
}

/// An answer that was not an error.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An error status with the contract's body.
#[derive(Debug, Clone)]
pub struct Failure {
    pub server: Server,
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub run_id: Option<String>,
    pub retry_after: Option<String>,
}

/// The portal and gateway clients.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    pub portal: String,
    pub gateway: String,
    pub token: Option<String>,
    pub api_key: Option<String>,
}

impl Api {
    pub fn new(portal: String, gateway: String) -> Api {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15 * 60))
            .user_agent(concat!("colorfaas/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client");
        Api {
            http,
            portal,
            gateway,
            token: None,
            api_key: None,
        }
    }

    /// A portal request with the session token.
    pub fn portal_req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}/api/v1{path}", self.portal));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// A gateway request with the API key.
    pub fn gateway_req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.gateway));
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends a request; a 2xx is an [`Answer`], an error status a [`Failure`].
    pub async fn send(
        &self,
        server: Server,
        req: reqwest::RequestBuilder,
    ) -> Result<std::result::Result<Answer, Failure>> {
        let base = match server {
            Server::Portal => &self.portal,
            Server::Gateway => &self.gateway,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(server, base, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(server, base, &e))?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(_) if status.is_success() => {
                    return Err(CliError::new(
                        exit::SERVER,
                        format!(
                            "the {} at {base} answered {status} with something that is not JSON",
                            server.name()
                        ),
                    )
                    .hint(format!(
                        "is {base} really the Color FaaS {}? ({})",
                        server.name(),
                        server.knobs()
                    )))
                }
                Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
            }
        };
        if status.is_success() {
            return Ok(Ok(Answer {
                status,
                headers,
                body,
            }));
        }
        let (code, message) = match body.get("error") {
            Some(e) => (
                e.get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ),
            None => (
                String::new(),
                match &body {
                    Value::String(s) => s.trim().chars().take(200).collect(),
                    Value::Null => String::new(),
                    v => v.to_string(),
                },
            ),
        };
        Ok(Err(Failure {
            server,
            status,
            code,
            message: if message.is_empty() {
                status.to_string()
            } else {
                message
            },
            run_id: body
                .get("run_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            retry_after: headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }))
    }

    /// Sends a request and turns any error status into a [`CliError`].
    pub async fn call(
        &self,
        server: Server,
        req: reqwest::RequestBuilder,
        subject: &Subject,
    ) -> Result<Answer> {
        match self.send(server, req).await? {
            Ok(a) => Ok(a),
            Err(f) => Err(failure_error(&f, subject)),
        }
    }

    /// `call` to the portal with a JSON body (or none).
    pub async fn portal(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        subject: &Subject,
    ) -> Result<Value> {
        let mut req = self.portal_req(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        Ok(self.call(Server::Portal, req, subject).await?.body)
    }
}

/// A request that got no HTTP answer.
pub fn transport_error(server: Server, base: &str, e: &reqwest::Error) -> CliError {
    let mut cause = String::new();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if e.is_timeout() && !e.is_connect() {
        return CliError::new(
            exit::UNREACHABLE,
            format!("the {} at {base} did not answer in time", server.name()),
        )
        .hint("try again; if it keeps happening, check the platform's logs");
    }
    CliError::new(
        exit::UNREACHABLE,
        format!("{} unreachable at {base}: {cause}", server.name()),
    )
    .hint(format!(
        "is it running? start the platform with `bash scripts/run.sh`, or point {} at it",
        server.knobs()
    ))
}

/// The one mapping of an error answer to a CLI error.
pub fn failure_error(f: &Failure, subject: &Subject) -> CliError {
    let msg = &f.message;
    let mut e = match f.status.as_u16() {
        400 | 422 => match subject {
            Subject::Invoke(_) if f.code == "invalid_args" => {
                CliError::usage(format!("schema mismatch: {msg}")).hint(
                    "pass arguments that match the function's args_schema (`colorfaas ls --json` shows it)",
                )
            }
            Subject::Invoke(_) => CliError::usage(format!("the invocation was rejected: {msg}")),
            Subject::Register => CliError::usage(format!("registration refused: {msg}")),
            _ => CliError::usage(format!("the request was rejected: {msg}"))
                .hint("fix what the message names and try again"),
        },
        401 => match (subject, f.server) {
            (Subject::Login, _) => CliError::new(exit::AUTH, format!("login failed: {msg}"))
                .hint("check the email and password, or register first (POST /api/v1/users or the portal's sign-up page)"),
            (_, Server::Gateway) => CliError::new(
                exit::AUTH,
                format!("the gateway refused the API key: {msg}"),
            )
            .hint("run `colorfaas login` again (it creates a fresh key)"),
            _ => CliError::new(
                exit::AUTH,
                format!("not logged in: the portal refused the session ({msg})"),
            )
            .hint("run `colorfaas login`"),
        },
        402 => CliError::new(exit::PAYMENT, format!("payment required: {msg}")).hint(
            "top up with `colorfaas topup --amount 10 --card <number> --expiry MM/YY --cvc <cvc>` (or in the portal), then `colorfaas bills` and `colorfaas pay <bill_id>`",
        ),
        404 => match subject {
            Subject::Function(n) | Subject::Invoke(n) => {
                CliError::new(exit::NOT_FOUND, format!("function {n:?} not found"))
                    .hint("`colorfaas ls` lists your functions; `colorfaas deploy` creates one")
            }
            Subject::Run(id) => CliError::new(exit::NOT_FOUND, format!("run {id:?} not found"))
                .hint("`colorfaas runs <function>` lists a function's runs"),
            Subject::Key(id) => CliError::new(exit::NOT_FOUND, format!("API key {id:?} not found"))
                .hint("`colorfaas keys ls` lists your keys"),
            Subject::Bill(id) => CliError::new(exit::NOT_FOUND, format!("bill {id:?} not found"))
                .hint("`colorfaas bills` lists your bills"),
            _ => CliError::new(exit::NOT_FOUND, format!("not found: {msg}")).hint(format!(
                "is this the Color FaaS {}? ({})",
                f.server.name(),
                f.server.knobs()
            )),
        },
        409 => match subject {
            Subject::Bill(id) => {
                CliError::new(exit::CONFLICT, format!("bill {id:?} cannot be paid: {msg}"))
                    .hint("`colorfaas bills` shows its status")
            }
            Subject::Register => CliError::new(exit::CONFLICT, format!("registration refused: {msg}"))
                .hint("log in with `colorfaas login` instead"),
            _ => CliError::new(exit::CONFLICT, format!("conflict: {msg}")),
        },
        413 => CliError::usage(format!("too large: {msg}"))
            .hint("send less: code packages up to 20 MiB, sync bodies up to 6 MiB, async bodies up to 256 KiB"),
        429 if f.code == "user_limit" => CliError::new(exit::BUSY, format!("too many runs in flight: {msg}"))
            .hint("wait for some of your runs to finish (`colorfaas runs <function> --status pending`), then try again"),
        429 => CliError::new(exit::BUSY, format!("rate limited: {msg}")).hint(match &f.retry_after {
            Some(s) => format!("retry after {s} s"),
            None => "retry in a moment".to_owned(),
        }),
        502 if matches!(subject, Subject::Invoke(_)) => {
            CliError::new(exit::FUNCTION_FAILED, format!("the function failed ({}): {msg}", f.code))
        }
        504 if matches!(subject, Subject::Invoke(_)) => {
            CliError::new(exit::FUNCTION_FAILED, format!("the function timed out: {msg}"))
        }
        503 => CliError::new(exit::BUSY, format!("the {} is unavailable: {msg}", f.server.name()))
            .hint("the platform has no capacity right now or is restarting; try again shortly"),
        _ => CliError::new(
            exit::SERVER,
            format!("the {} failed with {}: {msg}", f.server.name(), f.status),
        )
        .hint("try again; if it keeps failing, check the platform's logs"),
    };
    if let Some(run) = &f.run_id {
        let see = format!("`colorfaas logs {run}` shows the run's logs");
        e.hint = Some(match e.hint.take() {
            Some(h) => format!("{h}; {see}"),
            None => see,
        });
    }
    e.run_id = f.run_id.clone();
    if !f.code.is_empty() {
        e.api_code = Some(f.code.clone());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: u16, code: &str) -> Failure {
        Failure {
            server: Server::Gateway,
            status: StatusCode::from_u16(status).unwrap(),
            code: code.into(),
            message: "msg".into(),
            run_id: None,
            retry_after: None,
        }
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let inv = Subject::Invoke("f".into());
        let cases = [
            (400, "invalid_args", 2, "schema mismatch: msg"),
            (401, "unauthorized", 3, "API key"),
            (402, "insufficient_credit", 6, "payment required"),
            (404, "not_found", 4, "function \"f\" not found"),
            (413, "payload_too_large", 2, "too large"),
            (429, "rate_limited", 8, "rate limited"),
            (429, "user_limit", 8, "too many runs in flight"),
            (502, "function_error", 1, "the function failed"),
            (503, "no_capacity", 8, "unavailable"),
            (504, "timeout", 1, "timed out"),
            (500, "internal", 10, "failed with 500"),
        ];
        for (status, code, exit_code, text) in cases {
            let e = failure_error(&failure(status, code), &inv);
            assert_eq!(e.code, exit_code, "{status}");
            assert!(e.message.contains(text), "{status}: {}", e.message);
            assert_eq!(e.api_code.as_deref(), Some(code));
        }
    }

    #[test]
    fn a_run_id_points_at_the_logs() {
        let mut f = failure(502, "function_exit");
        f.run_id = Some("r1".into());
        let e = failure_error(&f, &Subject::Invoke("f".into()));
        assert!(e.hint.unwrap().contains("colorfaas logs r1"));
    }

    #[tokio::test]
    async fn an_unreachable_portal_says_how_to_start_it() {
        // A port nobody listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = Api::new(format!("http://127.0.0.1:{port}"), String::new());
        let e = api
            .portal(Method::GET, "/functions", None, &Subject::Other)
            .await
            .unwrap_err();
        assert_eq!(e.code, exit::UNREACHABLE);
        assert!(
            e.message
                .starts_with("portal unreachable at http://127.0.0.1:"),
            "{}",
            e.message
        );
        assert!(e.hint.unwrap().contains("bash scripts/run.sh"));
    }
}
