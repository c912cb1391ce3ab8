//! The worker's side of the runtime agent protocol: length-prefixed JSON frames (4-byte
//! big-endian length, then UTF-8 JSON) over the Unix socket the agent in each container listens
//! on. One connection per warm container, one request at a time.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest frame the worker reads from an agent (result cap + logs + envelope).
const MAX_FRAME: usize =
    schemas::limits::RESULT_BYTES + schemas::limits::LOG_TAIL_BYTES + 64 * 1024;

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
    #[serde(default)]
    pub duration_us: u64,
}

/// Why a call to the agent did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The agent closed the connection or died mid-call (crash, OOM kill).
    #[error("the runtime agent went away: {0}")]
    Gone(#[source] std::io::Error),
    /// The agent sent something that is not a valid frame.
    #[error("the runtime agent sent an invalid answer: {0}")]
    Protocol(String),
}

/// A connection to one container's agent.
#[derive(Debug)]
pub struct AgentConn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl AgentConn {
    /// Connects to the agent's socket.
    pub async fn connect(path: &Path) -> std::io::Result<AgentConn> {
        let stream = UnixStream::connect(path).await?;
        Ok(AgentConn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one invocation and waits for its answer. Time limits are the caller's.
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

    async fn round_trip(&mut self, msg: &impl Serialize) -> Result<AgentResponse, CallError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut self.buf, msg)
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream
            .write_all(&self.buf)
            .await
            .map_err(CallError::Gone)?;

        let mut header = [0u8; 4];
        self.stream
            .read_exact(&mut header)
            .await
            .map_err(CallError::Gone)?;
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            return Err(CallError::Protocol(format!(
                "frame of {len} bytes is too large"
            )));
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        self.stream
            .read_exact(&mut self.buf)
            .await
            .map_err(CallError::Gone)?;
        serde_json::from_slice(&self.buf).map_err(|e| CallError::Protocol(e.to_string()))
    }
}
