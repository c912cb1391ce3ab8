//! Documents of schedules (timer triggers fired by the leading dispatcher) and of the
//! gateway's idempotency keys. The expression grammar and the firing logic live in
//! `common::schedule` and `dispatcher::schedules`; only the stored shapes and rules are here.

use serde::{Deserialize, Serialize};

/// A schedule of a function: `expression` (`rate(...)` or `cron(...)`) starts one async run
/// per tick with `args`. `_id` is a UUID v7.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub function_id: String,
    pub function: String,
    pub expression: String,
    /// The args of every run, as JSON text.
    pub args_json: String,
    /// Query it with [`enabled_filter`]: some servers store a boolean set by `$set` as 0/1.
    #[serde(with = "crate::lenient::bool")]
    pub enabled: bool,
    /// The next tick not fired yet (Unix ms). Only the leading dispatcher moves it forward,
    /// with a conditional update from the tick it fired; pausing and resuming recompute it.
    pub next_tick_ms: i64,
    /// Ticks of `rate(...)` schedules are `anchor_ms + k × period`.
    pub anchor_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The filter value matching an enabled schedule however the server stored the boolean
/// (`{"enabled": {"$in": [true, 1]}}`).
pub fn enabled_filter() -> bson::Bson {
    bson::bson!({"$in": [true, 1]})
}

/// The trigger of runs a schedule started (`trigger` on the contract's run).
pub const TRIGGER_SCHEDULE: &str = "schedule";
/// The trigger of runs started by an invocation (gateway or portal).
pub const TRIGGER_INVOKE: &str = "invoke";

/// Error code of a scheduled tick refused because its user's credit or limits could not cover
/// it: the run is recorded as failed (not billed) and never published.
pub const SCHEDULE_REFUSED: &str = "schedule_refused";

/// Smallest interval between ticks when `DISPATCHER_MIN_SCHEDULE` (and its portal twin) is unset.
pub const DEFAULT_MIN_SCHEDULE_MS: i64 = 60_000;

/// Default age past which a missed tick is not run late: 6 h, the contract's default
/// `max_event_age_s` (a function's own `max_event_age_s` replaces it when set).
pub const DEFAULT_MAX_TICK_AGE_MS: i64 = 21_600_000;

/// Most schedules a function may have.
pub const MAX_SCHEDULES_PER_FUNCTION: u64 = 100;

/// Longest `Idempotency-Key` header value.
pub const IDEMPOTENCY_KEY_MAX: usize = 128;

/// How long an idempotency key answers the same run.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// An `Idempotency-Key` a user sent with an invocation: unique per `(user_id, key)`, stored
/// before the invocation is published. Expired entries are treated as absent (and removed by
/// the TTL index on `expires_at` where the server applies it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub key: String,
    /// SHA-256 (hex) of the function name and the request body.
    pub request_hash: String,
    /// The run this key answers.
    pub run_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// `expires_at_ms` as a BSON date, for the TTL index.
    pub expires_at: bson::DateTime,
}
