//! The CLI's errors: each has an exit code (documented in `sdk/README.md`) and says what to do
//! next.

use std::fmt;

/// Exit codes of `colorfaas`.
pub mod exit {
    /// Everything worked.
    pub const OK: i32 = 0;
    /// The function failed or timed out (locally or on the platform).
    pub const FUNCTION_FAILED: i32 = 1;
    /// Bad usage, a bad manifest or package, or a request the server rejected (400, 413).
    pub const USAGE: i32 = 2;
    /// Not logged in, or the credentials were rejected (401).
    pub const AUTH: i32 = 3;
    /// No such function, run, key or bill (404).
    pub const NOT_FOUND: i32 = 4;
    /// The portal or the gateway could not be reached.
    pub const UNREACHABLE: i32 = 5;
    /// Payment needed: balance too low, or the budget cap was reached (402).
    pub const PAYMENT: i32 = 6;
    /// A conflict: the name or email is taken, the bill is already paid (409).
    pub const CONFLICT: i32 = 7;
    /// The platform is busy: rate limited (429) or without capacity (503). Try again later.
    pub const BUSY: i32 = 8;
    /// A local problem: Docker or a runtime image is missing, a file cannot be read or written.
    pub const LOCAL: i32 = 9;
    /// The server failed or answered something unexpected (5xx, not the contract's JSON).
    pub const SERVER: i32 = 10;
}

/// An error the CLI reports: one line of what happened, then what to do next.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
    pub hint: Option<String>,
    /// The server's `error.code`, when the error came from an API.
    pub api_code: Option<String>,
    /// The run the error is about, when there is one (`colorfaas logs <run_id>`).
    pub run_id: Option<String>,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> CliError {
        CliError {
            code,
            message: message.into(),
            hint: None,
            api_code: None,
            run_id: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(exit::USAGE, message)
    }

    pub fn local(message: impl Into<String>) -> CliError {
        CliError::new(exit::LOCAL, message)
    }

    pub fn not_logged_in() -> CliError {
        CliError::new(exit::AUTH, "not logged in").hint("run `colorfaas login`")
    }

    /// The `--json` form: `{"error": {"code", "message", "hint", "exit_code"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "error": {
                "code": self.api_code.clone().unwrap_or_else(|| self.kind().to_owned()),
                "message": self.message,
                "hint": self.hint,
                "exit_code": self.code,
            }
        });
        if let Some(r) = &self.run_id {
            v["run_id"] = serde_json::json!(r);
        }
        v
    }

    fn kind(&self) -> &'static str {
        match self.code {
            exit::FUNCTION_FAILED => "function_failed",
            exit::USAGE => "usage",
            exit::AUTH => "unauthorized",
            exit::NOT_FOUND => "not_found",
            exit::UNREACHABLE => "unreachable",
            exit::PAYMENT => "payment_required",
            exit::CONFLICT => "conflict",
            exit::BUSY => "busy",
            exit::LOCAL => "local",
            _ => "server",
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

pub type Result<T> = std::result::Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_the_hint_on_its_own_line() {
        let e = CliError::not_logged_in();
        assert_eq!(
            e.to_string(),
            "not logged in\n  hint: run `colorfaas login`"
        );
        assert_eq!(e.code, exit::AUTH);
        assert_eq!(e.to_json()["error"]["code"], "unauthorized");
        assert_eq!(e.to_json()["error"]["exit_code"], 3);
    }
}
