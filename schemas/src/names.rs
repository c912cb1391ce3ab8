//! Names of RabbitMQ exchanges and queues, MongoDB collections, and the indexes every
//! component may rely on. All AMQP names share a prefix (`colorfaas` in production) so that
//! tests can run side by side on one broker and operators see clear names in the management UI.

use bson::{doc, Document};

/// Routing key of results whose run has a callback URL.
pub const RK_RESULT_CALLBACK: &str = "run.callback";
/// Routing key of the result of an async attempt that will be retried: only dispatchers hear
/// it (to release the attempt's allocation); callbacks wait for the final outcome.
pub const RK_RESULT_ATTEMPT: &str = "run.attempt";
/// Routing key of results without a callback URL.
pub const RK_RESULT_PLAIN: &str = "run.plain";
/// Binding pattern that matches every result.
pub const RK_RESULT_ALL: &str = "run.*";

/// AMQP header carrying the message's type name (`task`, `epoch`, ...), so a queue that receives
/// several kinds can tell them apart before parsing.
pub const HEADER_KIND: &str = "x-colorfaas-kind";

/// AMQP header (boolean) a dispatcher sets on a task whose invocation may have been dispatched
/// before (redelivered to it, or taken back from a dead worker): the worker checks the run's
/// record before running it.
pub const HEADER_REDELIVERED: &str = "x-colorfaas-redelivered";

/// The AMQP names derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpNames {
    pub prefix: String,
}

impl Default for AmqpNames {
    fn default() -> Self {
        Self::new("colorfaas")
    }
}

impl AmqpNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// Durable queue the gateway publishes invocations to (through the default exchange);
    /// only the leading dispatcher consumes it.
    pub fn invocations_queue(&self) -> String {
        format!("{}.invocations", self.prefix)
    }

    /// Per-worker durable task queue.
    pub fn worker_queue(&self, worker_id: &str) -> String {
        format!("{}.worker.{}", self.prefix, worker_id)
    }

    /// Topic exchange every finished run is published to (routing keys `run.plain` / `run.callback`).
    pub fn results_exchange(&self) -> String {
        format!("{}.results", self.prefix)
    }

    /// Durable queue of finished runs the dispatchers consume to release allocations.
    pub fn dispatcher_results_queue(&self) -> String {
        format!("{}.dispatcher.results", self.prefix)
    }

    /// Durable queue of finished runs that have a callback URL; gateways consume it.
    pub fn callbacks_queue(&self) -> String {
        format!("{}.callbacks", self.prefix)
    }

    /// Fanout exchange of worker heartbeats.
    pub fn heartbeats_exchange(&self) -> String {
        format!("{}.heartbeats", self.prefix)
    }

    /// Fanout exchange on which a new leader announces its epoch; every worker queue is bound
    /// to it, so the announcement precedes all of the new leader's tasks in each queue.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Dead-letter exchange (fanout) for messages that cannot be parsed.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// Queue holding dead-lettered messages for operators to inspect.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// Durable delay queue holding async retries due `delay_ms` after they were published: its
    /// messages expire after that long and are dead-lettered into the invocations queue.
    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}.retry.{}ms", self.prefix, delay_ms)
    }

    /// Exclusive reply queue of one gateway instance for sync invocations.
    pub fn reply_queue(&self, instance: &str) -> String {
        format!("{}.replies.{}", self.prefix, instance)
    }
}

/// MongoDB collection names.
pub mod collections {
    pub const USERS: &str = "users";
    pub const SESSIONS: &str = "sessions";
    pub const API_KEYS: &str = "api_keys";
    pub const FUNCTIONS: &str = "functions";
    /// Every version of every function (`FunctionVersionDoc`).
    pub const FUNCTION_VERSIONS: &str = "function_versions";
    pub const RUNS: &str = "runs";
    /// Per-function run counts in minute and hour buckets (`common::fnmetrics`).
    pub const FUNCTION_METRICS: &str = "function_metrics";
    pub const BILLS: &str = "bills";
    pub const PRICING: &str = "pricing";
    pub const HISTORY: &str = "account_history";
    pub const LEASES: &str = "leases";
    pub const LOGIN_ATTEMPTS: &str = "login_attempts";
    /// Schedules of functions (`ScheduleDoc`).
    pub const SCHEDULES: &str = "schedules";
    /// The gateway's `Idempotency-Key`s (`IdempotencyDoc`).
    pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
    /// GridFS bucket holding function code packages, one file per content hash.
    pub const CODE_BUCKET: &str = "code";
    /// The bucket's chunks collection (GridFS layout).
    pub const CODE_CHUNKS: &str = "code.chunks";
}

/// One index: collection, key document, unique or not, and a stable name.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    pub collection: &'static str,
    pub name: &'static str,
    pub keys: Document,
    pub unique: bool,
    /// A TTL index: documents expire this many seconds after the date in its one key.
    pub expire_after_s: Option<u64>,
}

/// Every index the components rely on. Created idempotently at start by whoever starts first.
pub fn indexes() -> Vec<IndexSpec> {
    use collections::*;
    let ix = |collection, name, keys, unique| IndexSpec {
        collection,
        name,
        keys,
        unique,
        expire_after_s: None,
    };
    vec![
        ix(USERS, "email_unique", doc! {"email": 1}, true),
        ix(API_KEYS, "key_hash_unique", doc! {"key_hash": 1}, true),
        ix(
            API_KEYS,
            "user",
            doc! {"user_id": 1, "created_at_ms": -1},
            false,
        ),
        ix(SESSIONS, "user", doc! {"user_id": 1}, false),
        ix(
            FUNCTIONS,
            "user_name_unique",
            doc! {"user_id": 1, "name": 1},
            true,
        ),
        ix(
            FUNCTION_VERSIONS,
            "function_version",
            doc! {"function_id": 1, "version": -1},
            false,
        ),
        ix(
            FUNCTION_METRICS,
            "function_buckets",
            doc! {"function_id": 1, "size": 1, "start_ms": 1},
            false,
        ),
        ix(
            RUNS,
            "user_created",
            doc! {"user_id": 1, "created_at_ms": -1},
            false,
        ),
        ix(
            RUNS,
            "user_function_created",
            doc! {"user_id": 1, "function": 1, "created_at_ms": -1},
            false,
        ),
        ix(
            RUNS,
            "bill_state_user",
            doc! {"bill_state": 1, "user_id": 1},
            false,
        ),
        ix(
            RUNS,
            "user_dead_letter",
            doc! {"user_id": 1, "dead_letter.failed_at_ms": -1},
            false,
        ),
        ix(
            BILLS,
            "user_created",
            doc! {"user_id": 1, "created_at_ms": -1},
            false,
        ),
        ix(HISTORY, "user_at", doc! {"user_id": 1, "at_ms": -1}, false),
        ix(
            CODE_CHUNKS,
            "files_id_n",
            doc! {"files_id": 1, "n": 1},
            true,
        ),
        ix(
            SCHEDULES,
            "user_function",
            doc! {"user_id": 1, "function_id": 1},
            false,
        ),
        ix(
            SCHEDULES,
            "enabled_next",
            doc! {"enabled": 1, "next_tick_ms": 1},
            false,
        ),
        ix(
            IDEMPOTENCY_KEYS,
            "user_key_unique",
            doc! {"user_id": 1, "key": 1},
            true,
        ),
        IndexSpec {
            expire_after_s: Some(0),
            ..ix(IDEMPOTENCY_KEYS, "expiry", doc! {"expires_at": 1}, false)
        },
        ix(RUNS, "schedule", doc! {"schedule_id": 1}, false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let n = AmqpNames::new("t1");
        assert_eq!(n.worker_queue("w1"), "t1.worker.w1");
        assert_eq!(n.invocations_queue(), "t1.invocations");
        assert_eq!(AmqpNames::default().results_exchange(), "colorfaas.results");
    }

    #[test]
    fn index_names_are_unique() {
        let all = indexes();
        let mut seen = std::collections::HashSet::new();
        for i in &all {
            assert!(
                seen.insert((i.collection, i.name)),
                "duplicate index {}",
                i.name
            );
        }
    }
}
