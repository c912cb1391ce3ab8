//! MongoDB documents (the seed's MySQL tables, as collections). Times are `*_ms` integers
//! (Unix epoch milliseconds); money is integer micros; states are strings. Free-form JSON
//! supplied by users (args, results) is stored as JSON text so that keys such as `$x` or `a.b`
//! can never be mistaken for operators or paths.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{contract_strings, lenient, Hold, Mode, Resources, RunError, RunStatus, Runtime};

/// The seed's User Info table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub email: String,
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub balance_micros: i64,
    /// Cost of every finished run, ever: raised by the run writer as final records land.
    /// Absent on accounts that predate it (`accounts::credit::migrate` initialises it).
    #[serde(default)]
    pub spent_micros: i64,
    /// Amount of every bill paid, ever: raised by the update that deducts a bill.
    #[serde(default)]
    pub paid_micros: i64,
    // Also on the document, outside this struct (maintained by `accounts` with `$inc`):
    // `reserved_micros` (worst case of the runs in flight), `queued_runs` and `sync_runs` (the
    // per-user limits). Missing ones count as 0.
    pub created_at_ms: i64,
}

/// A logged-in session. The token itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionDoc {
    #[serde(rename = "_id")]
    pub token_hash: String,
    pub user_id: String,
    /// Per-session CSRF token for the browser's forms.
    pub csrf: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// An API key for the invoke endpoint. Only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub label: String,
    pub key_hash: String,
    pub created_at_ms: i64,
}

/// Argument types of a function's `args_schema` (the seed's `Func_Args`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgType {
    Int,
    Float,
    String,
    Bool,
    Object,
    Array,
}

contract_strings!(ArgType {
    Int => "int",
    Float => "float",
    String => "string",
    Bool => "bool",
    Object => "object",
    Array => "array",
});

/// The seed's Function table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub runtime: Runtime,
    pub handler: String,
    #[serde(default)]
    pub filename: String,
    #[serde(default)]
    pub description: String,
    /// Ordered list of (argument name, type).
    #[serde(default)]
    pub args_schema: Vec<(String, ArgType)>,
    pub mode: Mode,
    pub resources: Resources,
    pub timeout_ms: u64,
    pub version: u32,
    /// SHA-256 of the code package; its filename in the GridFS code bucket.
    pub code_sha256: String,
    pub code_size: u64,
    /// `single` for one source file, `zip` or `tar.gz` for packages.
    pub code_kind: CodeKind,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Further attempts after a failed or timed-out async run (`rules::RETRIES`).
    #[serde(default = "crate::rules::default_retries")]
    pub retries: u32,
    /// An async event not started within this many seconds of acceptance is dead-lettered.
    #[serde(default = "crate::rules::default_max_event_age_s")]
    pub max_event_age_s: u64,
    /// `env`, sealed `secrets` and `max_concurrency` (contract v1.1).
    #[serde(default, skip_serializing_if = "FunctionConfig::is_empty")]
    pub config: FunctionConfig,
}

/// A function's run-time configuration: what its handler sees in its environment and how many
/// of its runs may be running at once. Travels on each invocation (`InvocationMsg::config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionConfig {
    /// Plain environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secret variables, each sealed (`common::secrets`): name → base64 of nonce + ciphertext.
    /// Never in clear outside the worker that hands them to the function.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// At most this many runs of the function at once, cluster-wide; `None` = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

impl FunctionConfig {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.secrets.is_empty() && self.max_concurrency.is_none()
    }
}

/// One version of a function, kept when it is created or updated (the portal's version list).
/// `_id` is `<function_id>:<version>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionVersionDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub function_id: String,
    pub user_id: String,
    pub name: String,
    pub version: u32,
    pub runtime: Runtime,
    pub handler: String,
    #[serde(default)]
    pub filename: String,
    pub code_sha256: String,
    pub code_size: u64,
    pub code_kind: CodeKind,
    pub created_at_ms: i64,
}

/// How a code package is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    /// One source file, stored as is; the worker writes it under `FunctionDoc::filename`.
    Single,
    Zip,
    TarGz,
}

// Shown as `tar.gz` in the API and pages; stored (serde) as `tar_gz`.
contract_strings!(CodeKind {
    Single => "single",
    Zip => "zip",
    TarGz => "tar.gz",
});

/// Whether a run still has to be billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillState {
    /// Not (yet) on a bill.
    Unbilled,
    /// On the bill named by `bill_id`.
    Billed,
    /// Never billed: the platform caused the failure.
    Exempt,
}

contract_strings!(BillState {
    Unbilled => "unbilled",
    Billed => "billed",
    Exempt => "exempt",
});

/// The seed's Func Running Record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub function_id: String,
    pub function: String,
    pub version: u32,
    pub status: RunStatus,
    /// The invocation's args as JSON text.
    pub args_json: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    #[serde(default)]
    pub logs: String,
    #[serde(default, with = "lenient::bool")]
    pub cold_start: bool,
    #[serde(default)]
    pub duration_ms: u64,
    pub resources: Resources,
    #[serde(default)]
    pub billed_micros: i64,
    pub bill_state: BillState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bill_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Fencing epoch of the dispatch that ran it; updates from older epochs are refused.
    #[serde(default)]
    pub epoch: u64,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// What accepting the run reserved on its user's account; the write that makes the record
    /// final releases it (`accounts::hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// The schedule that started it (`trigger: "schedule"`); `None` for invocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// Every attempt so far, in order (the top-level fields describe the last one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// While a retry waits: when it is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<i64>,
    /// Set when the run ended as a dead letter (last attempt failed, or the event was too
    /// old); removed when the dead letter is deleted or redriven.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
}

/// One attempt of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: u32,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub billed_micros: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: i64,
}

/// A run's dead-letter entry (`GET /api/v1/dead-letters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub failed_at_ms: i64,
    /// The run a redrive started (set while the redrive is under way, then the entry goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redriven_as: Option<String>,
}

/// One line of a bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillItem {
    pub run_id: String,
    pub function: String,
    pub duration_ms: u64,
    pub cpu_millicores: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub amount_micros: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillStatus {
    Unpaid,
    Paid,
}

contract_strings!(BillStatus {
    Unpaid => "unpaid",
    Paid => "paid",
});

/// The seed's Bill table. `amount_micros` is the exact sum of the items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub created_at_ms: i64,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub amount_micros: i64,
    pub status: BillStatus,
    pub items: Vec<BillItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at_ms: Option<i64>,
}

/// Billable resources (the seed's Billing Unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PricedResource {
    Cpu,
    Memory,
    Disk,
    Request,
}

contract_strings!(PricedResource {
    Cpu => "cpu",
    Memory => "memory",
    Disk => "disk",
    Request => "request",
});

/// One price. `_id` is the resource name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceDoc {
    #[serde(rename = "_id")]
    pub resource: PricedResource,
    pub unit: String,
    pub price_micros_per_unit: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    Topup,
    BillPayment,
}

contract_strings!(HistoryKind {
    Topup => "topup",
    BillPayment => "bill_payment",
});

/// The seed's Account Info History.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub at_ms: i64,
    pub kind: HistoryKind,
    pub amount_micros: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bill_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_last4: Option<String>,
}

/// A time-bounded exclusive lease (the billing job's guard against a second job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseDoc {
    #[serde(rename = "_id")]
    pub name: String,
    pub holder: String,
    pub expires_at_ms: i64,
}
