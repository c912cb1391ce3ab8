//! Messages that travel over RabbitMQ. Every message carries `v`, its schema version; a reader
//! refuses (dead-letters) a version it does not know instead of guessing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Attempt, CodeKind, FunctionConfig, Hold, Mode, Resources, RunError, RunStatus, Runtime,
};

/// The schema version this build writes and reads.
pub const MESSAGE_VERSION: u32 = 1;

fn v1() -> u32 {
    MESSAGE_VERSION
}

/// Everything needed to run one invocation, fixed at the moment the gateway accepted it.
/// Gateway → invocations queue → dispatcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationMsg {
    #[serde(default = "v1")]
    pub v: u32,
    pub run_id: String,
    pub user_id: String,
    pub function_id: String,
    pub function: String,
    pub version: u32,
    pub runtime: Runtime,
    pub handler: String,
    /// Content hash of the code package in the GridFS bucket (its filename there).
    pub code_sha256: String,
    /// How the package is stored (single file or archive).
    pub code_kind: CodeKind,
    /// The single file's name (ignored for archives).
    #[serde(default)]
    pub filename: String,
    pub resources: Resources,
    pub timeout_ms: u64,
    pub mode: Mode,
    pub args: Value,
    /// Queue to send the result to directly (sync invocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub created_at_ms: i64,
    /// What accepting it reserved (released by its final record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// The function's env, sealed secrets and concurrency limit.
    #[serde(default, skip_serializing_if = "FunctionConfig::is_empty")]
    pub config: FunctionConfig,
    /// Which attempt this is and what the earlier ones did (async retries).
    #[serde(default)]
    pub retry: RetryState,
}

/// An invocation's place in its retries. Carried by the message, so a retry waiting in a
/// delay queue needs nothing but the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryState {
    /// 1 for the first attempt.
    #[serde(default = "one")]
    pub attempt: u32,
    /// Further attempts allowed after a failed one (the function's `retries`; 0 for sync).
    #[serde(default)]
    pub retries: u32,
    /// The function's `max_event_age_s` at acceptance (async only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_age_s: Option<u64>,
    /// Times this attempt was run again after a platform failure (uses no attempt).
    #[serde(default)]
    pub reruns: u32,
    /// The earlier attempts, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

fn one() -> u32 {
    1
}

impl InvocationMsg {
    /// A new invocation of `func` (its owner's, its current version, its config and its first
    /// retry state), created at `created_at_ms`, with no reply queue, callback or hold: the
    /// one place the fields are copied from the function, for every entry point.
    pub fn of_function(
        func: &crate::FunctionDoc,
        run_id: String,
        args: Value,
        mode: Mode,
        created_at_ms: i64,
    ) -> InvocationMsg {
        InvocationMsg {
            v: crate::MESSAGE_VERSION,
            run_id,
            user_id: func.user_id.clone(),
            function_id: func.id.clone(),
            function: func.name.clone(),
            version: func.version,
            runtime: func.runtime,
            handler: func.handler.clone(),
            code_sha256: func.code_sha256.clone(),
            code_kind: func.code_kind,
            filename: func.filename.clone(),
            resources: func.resources,
            timeout_ms: func.timeout_ms,
            mode,
            args,
            reply_to: None,
            callback_url: None,
            created_at_ms,
            hold: None,
            retry: RetryState::first(func, mode),
            config: func.config.clone(),
        }
    }
}

impl RetryState {
    /// A new invocation's: the function's `retries` and `max_event_age_s` for async runs;
    /// sync calls are attempted once and never expire.
    pub fn first(func: &crate::FunctionDoc, mode: Mode) -> RetryState {
        match mode {
            Mode::Sync => RetryState::default(),
            Mode::Async => RetryState {
                retries: func.retries,
                max_event_age_s: Some(func.max_event_age_s),
                ..Default::default()
            },
        }
    }
}

impl Default for RetryState {
    fn default() -> Self {
        RetryState {
            attempt: 1,
            retries: 0,
            max_event_age_s: None,
            reruns: 0,
            attempts: Vec::new(),
        }
    }
}

impl InvocationMsg {
    /// Key of the warm-container cache: one container image state per function version.
    pub fn function_key(&self) -> String {
        function_key(&self.function_id, self.version)
    }
}

/// `function_id@version`, the key of warm containers.
pub fn function_key(function_id: &str, version: u32) -> String {
    format!("{function_id}@{version}")
}

/// Dispatcher → a worker's queue. Stamped with the leader's fencing epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMsg {
    #[serde(default = "v1")]
    pub v: u32,
    pub epoch: u64,
    pub worker_id: String,
    pub dispatched_at_ms: i64,
    pub invocation: InvocationMsg,
}

/// A new leader's announcement, fanned out to every worker queue before its first task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMsg {
    #[serde(default = "v1")]
    pub v: u32,
    pub epoch: u64,
    pub leader_id: String,
}

/// A finished run. Worker → results exchange (and the reply queue of sync invocations);
/// the dispatcher also publishes one for runs lost with a dead worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMsg {
    #[serde(default = "v1")]
    pub v: u32,
    pub run_id: String,
    pub user_id: String,
    pub function_id: String,
    pub function: String,
    pub version: u32,
    pub worker_id: String,
    pub epoch: u64,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    #[serde(default)]
    pub logs: String,
    pub duration_ms: u64,
    pub cold_start: bool,
    pub billed_micros: i64,
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The invocation's hold, for the final record to release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
}

/// A task a worker is running right now, as reported in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningTask {
    pub run_id: String,
    pub user_id: String,
    pub demand: Resources,
    /// The run's function (a new leader counts running runs per function from these).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub function_id: String,
}

/// Worker → heartbeats exchange, every second by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatMsg {
    #[serde(default = "v1")]
    pub v: u32,
    pub worker_id: String,
    /// Increases by one per beat of one worker process.
    pub seq: u64,
    pub sent_at_ms: i64,
    /// Beat interval this worker uses; the dispatcher declares it dead after 3 missed beats.
    pub interval_ms: u64,
    pub capacity: Resources,
    pub allocated: Resources,
    pub running: Vec<RunningTask>,
    /// `function_key`s with at least one warm container.
    pub warm: Vec<String>,
    /// False while the worker drains for shutdown: send it nothing new.
    pub accepting: bool,
    /// Highest fencing epoch the worker has seen.
    pub epoch: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_version_defaults_to_current() {
        let m: EpochMsg = serde_json::from_str(r#"{"epoch": 3, "leader_id": "d1"}"#).unwrap();
        assert_eq!(m.v, MESSAGE_VERSION);
    }

    #[test]
    fn invocation_round_trips() {
        let m = InvocationMsg {
            v: 1,
            run_id: "r".into(),
            user_id: "u".into(),
            function_id: "f".into(),
            function: "adder".into(),
            version: 2,
            runtime: Runtime::Python3,
            handler: "main.handle".into(),
            code_sha256: "00".into(),
            code_kind: CodeKind::Single,
            filename: "main.py".into(),
            resources: Resources::new(500, 128, 64),
            timeout_ms: 3000,
            mode: Mode::Sync,
            args: serde_json::json!({"a": 1}),
            reply_to: Some("q".into()),
            callback_url: None,
            created_at_ms: 1,
            hold: Some(Hold {
                reserved_micros: 25,
                sync: true,
            }),
            retry: RetryState::default(),
            config: FunctionConfig {
                env: [("A".to_owned(), "1".to_owned())].into(),
                secrets: Default::default(),
                max_concurrency: Some(2),
            },
        };
        let s = serde_json::to_vec(&m).unwrap();
        assert_eq!(serde_json::from_slice::<InvocationMsg>(&s).unwrap(), m);
        assert_eq!(m.function_key(), "f@2");
    }
}
