//! The worker's side of the runtime agent protocol: length-prefixed JSON frames (4-byte
//! big-endian length, then UTF-8 JSON) over the Unix socket the agent in each container listens
//! on. One connection per warm container, one request at a time.
//!
//! The agent runs the function's code in its own process, so everything it sends is untrusted:
//! frames are bounded, an answer is checked field by field, and anything else is a
//! [`CallError::Protocol`] — the function's failure, never the worker's. While a call runs the
//! agent also streams what the function prints as log chunk frames (top bit of the length set,
//! raw bytes); the connection keeps their tail, so a run that is killed (timeout, memory)
//! still has its logs ([`AgentConn::take_logs`]).

use std::path::Path;
use std::time::{Duration, Instant};

use schemas::limits::{LOG_TAIL_BYTES, RESULT_BYTES};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest answer frame the worker reads: the result cap, logs (which JSON escaping can grow
/// several times) and the envelope.
pub const MAX_FRAME: usize = RESULT_BYTES + 8 * LOG_TAIL_BYTES + 64 * 1024;
/// The length-header bit that marks a log chunk frame.
const LOG_FRAME: u32 = 0x8000_0000;
/// Largest log chunk: the agent sends at most its log cap (with a truncation mark) at once.
const MAX_LOG_CHUNK: usize = LOG_TAIL_BYTES + 1024;
/// An agent sends at most one log chunk per this interval (plus a few at the start).
const LOG_FLUSH: Duration = Duration::from_millis(20);
/// Characters of an error message kept.
const MAX_MESSAGE: usize = 4096;
/// Error kinds an agent may answer with.
const KINDS: [&str; 5] = ["exception", "exit", "bad_result", "load", "bad_request"];

/// What the handler sees as `context`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentContext<'a> {
    pub run_id: &'a str,
    pub function: &'a str,
    pub version: u32,
    pub deadline_ms: i64,
    pub memory_mb: u64,
}

/// The first frame a spare (deferred) agent gets: the function it now serves.
#[derive(Debug, Clone, Serialize)]
pub struct Init<'a> {
    pub handler: &'a str,
    pub function: &'a str,
    pub version: u32,
    pub memory_mb: u64,
    /// The function's variables and secrets (left out when empty, so old agents see the frame
    /// they know; an old agent ignores the field).
    #[serde(skip_serializing_if = "EnvVars::is_empty")]
    pub env: EnvVars<'a>,
}

/// A function's environment on its way to the agent: serialized as an object, shown by `Debug`
/// as its names only (it holds secrets).
#[derive(Clone, Copy, Serialize)]
#[serde(transparent)]
pub struct EnvVars<'a>(pub &'a std::collections::BTreeMap<String, String>);

impl EnvVars<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for EnvVars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, Serialize)]
struct InitFrame<'a> {
    init: Init<'a>,
}

#[derive(Debug, Serialize)]
struct Request<'a> {
    run_id: &'a str,
    event: &'a serde_json::Value,
    context: AgentContext<'a>,
}

/// The agent's error kinds.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AgentError {
    pub kind: String,
    pub message: String,
}

/// The agent's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentResponse {
    pub ok: bool,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<AgentError>,
    #[serde(default)]
    pub logs: String,
    /// The agent's own measure (a lower bound of the bill at most: the function can change it).
    #[serde(default, deserialize_with = "lenient_us")]
    pub duration_us: u64,
}

/// A duration the function may have tampered with (negative, fractional, huge): read as a
/// number if it is one, else 0.
fn lenient_us<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_u64()
        .or_else(|| v.as_f64().map(|f| f.clamp(0.0, u64::MAX as f64) as u64))
        .unwrap_or(0))
}

/// Why a call to the agent did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection ended: the agent died (crash, OOM kill, killed from outside) or the
    /// function closed it.
    #[error("the runtime agent went away: {0}")]
    Gone(#[source] std::io::Error),
    /// The agent sent something that is not a valid answer (the function's code runs inside the
    /// agent and can write anything to its socket).
    #[error("the function's runtime sent an invalid answer: {0}")]
    Protocol(String),
}

/// A connection to one container's agent.
#[derive(Debug)]
pub struct AgentConn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Tail of the log chunks streamed since the last `take_logs`.
    logs: Vec<u8>,
    logs_cut: bool,
}

impl AgentConn {
    /// Connects to the agent's socket.
    pub async fn connect(path: &Path) -> std::io::Result<AgentConn> {
        let stream = UnixStream::connect(path).await?;
        Ok(AgentConn {
            stream,
            buf: Vec::with_capacity(4096),
            logs: Vec::new(),
            logs_cut: false,
        })
    }

    /// The process id (in the worker's pid namespace) of the agent on the other end.
    pub fn peer_pid(&self) -> Option<i32> {
        self.stream.peer_cred().ok()?.pid()
    }

    /// Sends one invocation and waits for its answer. Time limits are the caller's; a call cut
    /// short keeps the log chunks that arrived ([`AgentConn::take_logs`]).
    pub async fn call(
        &mut self,
        run_id: &str,
        event: &serde_json::Value,
        context: AgentContext<'_>,
    ) -> Result<AgentResponse, CallError> {
        self.round_trip(&Request {
            run_id,
            event,
            context,
        })
        .await
    }

    /// Tells a spare agent which handler to load (it reads the code already under its code
    /// dir). A handler that fails to load is not an error here: the answer says so, and so
    /// will every call.
    pub async fn init(&mut self, init: Init<'_>) -> Result<AgentResponse, CallError> {
        self.round_trip(&InitFrame { init }).await
    }

    /// What the agent streamed as logs since the last take (its tail, marked when cut).
    pub fn take_logs(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.logs).into_owned();
        let cut = std::mem::take(&mut self.logs_cut);
        self.logs.clear();
        if cut {
            format!("[truncated]\n{text}")
        } else {
            text
        }
    }

    /// Whether the connection is still open with nothing unasked-for on it: a dead agent's
    /// socket reads end-of-file, and bytes between calls mean the function wrote to it.
    pub fn is_clean(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&self.stream).peek(&mut probe) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    async fn round_trip(&mut self, msg: &impl Serialize) -> Result<AgentResponse, CallError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut self.buf, msg)
            .map_err(|e| CallError::Protocol(format!("the request could not be encoded: {e}")))?;
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream
            .write_all(&self.buf)
            .await
            .map_err(CallError::Gone)?;

        let t0 = Instant::now();
        let mut log_bytes = 0usize;
        loop {
            let mut header = [0u8; 4];
            self.stream
                .read_exact(&mut header)
                .await
                .map_err(CallError::Gone)?;
            let word = u32::from_be_bytes(header);
            if word & LOG_FRAME == 0 {
                return self.read_answer(word as usize).await;
            }
            let len = (word & !LOG_FRAME) as usize;
            log_bytes += len;
            // An agent sends one chunk per flush interval at most; a function that floods the
            // socket with chunks (to keep the worker busy) breaks the protocol.
            let chunks = 4 + t0.elapsed().as_millis() / LOG_FLUSH.as_millis();
            if len > MAX_LOG_CHUNK || log_bytes > chunks as usize * MAX_LOG_CHUNK {
                return Err(CallError::Protocol(format!(
                    "log chunks of {log_bytes} bytes in {} ms, more than the runtime agent sends",
                    t0.elapsed().as_millis()
                )));
            }
            let at = self.logs.len();
            self.logs.resize(at + len, 0);
            self.stream
                .read_exact(&mut self.logs[at..])
                .await
                .map_err(CallError::Gone)?;
            if self.logs.len() > 2 * LOG_TAIL_BYTES {
                let drop = self.logs.len() - LOG_TAIL_BYTES;
                self.logs.drain(..drop);
                self.logs_cut = true;
            }
        }
    }

    async fn read_answer(&mut self, len: usize) -> Result<AgentResponse, CallError> {
        if len > MAX_FRAME {
            return Err(CallError::Protocol(format!(
                "an answer of {len} bytes, more than the {MAX_FRAME} bytes allowed"
            )));
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        self.stream
            .read_exact(&mut self.buf)
            .await
            .map_err(CallError::Gone)?;
        parse_answer(&self.buf)
    }
}

/// Reads and checks an answer frame's body.
pub fn parse_answer(body: &[u8]) -> Result<AgentResponse, CallError> {
    let mut a: AgentResponse = serde_json::from_slice(body).map_err(|e| {
        CallError::Protocol(if e.to_string().contains("recursion limit") {
            format!("the result is nested too deeply to read ({e})")
        } else {
            format!("the answer is not valid JSON ({e})")
        })
    })?;
    if !a.ok {
        let Some(err) = a.error.as_mut() else {
            return Err(CallError::Protocol("a failure without an error".into()));
        };
        if !KINDS.contains(&err.kind.as_str()) {
            return Err(CallError::Protocol(format!(
                "an unknown error kind {:?}",
                cut(&err.kind, 64)
            )));
        }
        if err.message.len() > MAX_MESSAGE {
            err.message = format!("{}... [message truncated]", cut(&err.message, MAX_MESSAGE));
        }
    }
    Ok(a)
}

/// The first `max` bytes of `s`, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        let ok = parse_answer(br#"{"ok":true,"result":[1],"logs":"x","duration_us":5}"#).unwrap();
        assert_eq!(
            (ok.result, ok.logs, ok.duration_us),
            (Some(serde_json::json!([1])), "x".into(), 5)
        );
        let long = "é".repeat(5000);
        let body =
            serde_json::json!({"ok": false, "error": {"kind": "exception", "message": long}});
        let e = parse_answer(body.to_string().as_bytes()).unwrap();
        let msg = e.error.unwrap().message;
        assert!(msg.len() < MAX_MESSAGE + 40 && msg.ends_with("[message truncated]"));

        let bad = |body: &[u8]| match parse_answer(body) {
            Err(CallError::Protocol(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(
            bad(br#"{"ok":false,"error":{"kind":"bad_request!","message":""}}"#)
                .contains("unknown error kind")
        );
        assert!(bad(br#"{"ok":false}"#).contains("without an error"));
        assert!(bad(b"{\"ok\":true,\"logs\":\"\xff\"}").contains("not valid JSON"));
        assert!(bad(b"garbage").contains("not valid JSON"));
        let tampered = parse_answer(br#"{"ok":true,"result":1,"duration_us":-5}"#).unwrap();
        assert_eq!(tampered.duration_us, 0);
        let deep = format!(
            "{{\"ok\":true,\"result\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(bad(deep.as_bytes()).contains("nested too deeply"));
    }
}
