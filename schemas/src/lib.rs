//! The contract between Color FaaS components: queue and exchange names, versioned messages,
//! MongoDB documents, collection names and their indexes, and the contract's rules every
//! component applies the same way: the string form of every enum ([`contract_strings!`]), the
//! name rules (`rules`) and the limits (`limits`). No service logic lives here.

pub mod docs;
pub mod lenient;
pub mod messages;
pub mod names;
pub mod rules;
pub mod schedules;
mod strings;

pub use docs::*;
pub use messages::*;

use serde::{Deserialize, Serialize};

/// What a function asks for, and what a worker offers. The DRF resource vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millicores: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

impl Resources {
    /// What a function gets when its spec names no resources (the contract's defaults).
    pub const DEFAULT: Resources = Resources::new(500, 128, 64);

    pub const fn new(cpu_millicores: u64, memory_mb: u64, disk_mb: u64) -> Self {
        Self {
            cpu_millicores,
            memory_mb,
            disk_mb,
        }
    }

    /// Component-wise sum, saturating.
    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            cpu_millicores: self.cpu_millicores.saturating_add(o.cpu_millicores),
            memory_mb: self.memory_mb.saturating_add(o.memory_mb),
            disk_mb: self.disk_mb.saturating_add(o.disk_mb),
        }
    }

    /// Component-wise difference, saturating at zero.
    pub fn minus(self, o: Resources) -> Resources {
        Resources {
            cpu_millicores: self.cpu_millicores.saturating_sub(o.cpu_millicores),
            memory_mb: self.memory_mb.saturating_sub(o.memory_mb),
            disk_mb: self.disk_mb.saturating_sub(o.disk_mb),
        }
    }

    /// True when `self` fits inside `room` on every resource.
    pub fn fits_in(self, room: Resources) -> bool {
        self.cpu_millicores <= room.cpu_millicores
            && self.memory_mb <= room.memory_mb
            && self.disk_mb <= room.disk_mb
    }
}

/// The runtimes a function can use. Serialized as the contract's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Python3,
    Node,
    Exec,
}

contract_strings!(Runtime {
    Python3 => "python3",
    Node => "node",
    Exec => "exec",
});

impl Runtime {
    /// The Docker image tag the project builds for this runtime.
    pub fn image(self) -> &'static str {
        match self {
            Runtime::Python3 => "colorfaas/runtime-python3:latest",
            Runtime::Node => "colorfaas/runtime-node:latest",
            Runtime::Exec => "colorfaas/runtime-exec:latest",
        }
    }
}

/// Default invocation type of a function (the seed's `Func_Output`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Sync,
    Async,
}

contract_strings!(Mode {
    Sync => "sync",
    Async => "async",
});

/// A run's lifecycle. Stored as a string so it reads back the same on every server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
}

contract_strings!(RunStatus {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    TimedOut => "timed_out",
});

impl RunStatus {
    pub const FINAL: [RunStatus; 3] =
        [RunStatus::Succeeded, RunStatus::Failed, RunStatus::TimedOut];

    pub fn is_final(self) -> bool {
        RunStatus::FINAL.contains(&self)
    }
}

/// What accepting an invocation reserved on its user's account: its worst-case cost, and a
/// sync slot when it is a sync call. Carried by the invocation, its result and its run record,
/// so that the write making the record final releases exactly this (`accounts::hold`). Runs
/// accepted before reservations existed carry none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hold {
    pub reserved_micros: i64,
    #[serde(default, with = "lenient::bool")]
    pub sync: bool,
}

/// Why a run did not succeed. `code` is snake_case and stable; `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub code: String,
    pub message: String,
}

impl RunError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Errors whose cause is the platform, not the function: such runs are never billed.
    pub fn is_platform(&self) -> bool {
        self.code.starts_with("platform_")
    }
}

/// Error codes the pipeline puts on runs (`RunError::code`).
pub mod run_error_codes {
    /// The handler raised (python3/node).
    pub const FUNCTION_ERROR: &str = "function_error";
    /// An `exec` function exited non-zero or was killed.
    pub const FUNCTION_EXIT: &str = "function_exit";
    /// The handler's module or function could not be loaded.
    pub const FUNCTION_LOAD: &str = "function_load_error";
    /// The result was not JSON or too large.
    pub const BAD_RESULT: &str = "bad_result";
    /// The container was killed for exceeding its memory limit.
    pub const OUT_OF_MEMORY: &str = "out_of_memory";
    /// The run exceeded `timeout_ms`.
    pub const TIMEOUT: &str = "timeout";
    /// The worker could not run the task (image missing, docker error, code missing).
    pub const PLATFORM_WORKER: &str = "platform_worker_error";
    /// The worker running the task died before reporting.
    pub const PLATFORM_WORKER_LOST: &str = "platform_worker_lost";
    /// No live worker can ever hold the function's demand.
    pub const PLATFORM_NO_CAPACITY: &str = "platform_no_capacity";
    /// The run's container was killed or removed by someone other than its worker (`docker
    /// kill`, `docker rm -f`, a Docker daemon stop) while the run was in it.
    pub const PLATFORM_CONTAINER_LOST: &str = "platform_container_lost";
    /// An async event waited longer than its function's `max_event_age_s` and was not run.
    pub const EVENT_EXPIRED: &str = "event_expired";
    /// A sync call found the function at its `max_concurrency` (not run, not billed; the
    /// gateway answers 429).
    pub const CONCURRENCY_LIMIT: &str = "concurrency_limit";
}

/// Limits shared by the gateway, portal, worker and SDK.
pub mod limits {
    /// Bounds of a function's `resources.cpu_millicores` (inclusive).
    pub const CPU_MILLICORES: (u64, u64) = (50, 4000);
    /// Bounds of `resources.memory_mb`.
    pub const MEMORY_MB: (u64, u64) = (64, 10_240);
    /// Bounds of `resources.disk_mb`.
    pub const DISK_MB: (u64, u64) = (16, 10_240);
    /// Bounds of `timeout_ms`: 100 ms to 15 minutes.
    pub const TIMEOUT_MS: (u64, u64) = (100, 900_000);
    /// A function's `timeout_ms` when its spec names none.
    pub const DEFAULT_TIMEOUT_MS: u64 = 3000;
    /// Longest function description, in characters.
    pub const DESCRIPTION_CHARS: usize = 1000;
    /// Most arguments in an `args_schema`.
    pub const ARGS: usize = 64;
    /// Captured logs per run are cut to their last 64 KiB.
    pub const LOG_TAIL_BYTES: usize = 64 * 1024;
    /// Largest result a function may return (bytes of JSON), like AWS Lambda's sync payload.
    pub const RESULT_BYTES: usize = 6 * 1024 * 1024;
    /// Largest sync request body.
    pub const SYNC_BODY_BYTES: u64 = 6 * 1024 * 1024;
    /// Largest async request body.
    pub const ASYNC_BODY_BYTES: u64 = 256 * 1024;
    /// Largest code package accepted on upload (after base64 decoding).
    pub const CODE_BYTES: usize = 20 * 1024 * 1024;
    /// Largest unpacked size of an archive.
    pub const UNPACKED_CODE_BYTES: u64 = 200 * 1024 * 1024;
    /// Most bytes of `env` and of `secrets`, each counted as the sum of names and values.
    pub const ENV_BYTES: usize = 4 * 1024;
    /// Bounds of `max_concurrency` when set.
    pub const MAX_CONCURRENCY: (u32, u32) = (1, 1000);
}

/// Longest function name.
pub const MAX_FUNCTION_NAME: usize = 50;

/// The contract's function-name rule, `^[a-z0-9][a-z0-9-]{0,49}$`: a name that fails it cannot
/// exist, so lookups of it are answered 404 without a database read.
pub fn valid_function_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_FUNCTION_NAME
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_follow_the_contract() {
        for ok in ["a", "0", "adder", "my-fn-2", &"a".repeat(50)] {
            assert!(valid_function_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "é",
            &"a".repeat(51),
            "a b",
        ] {
            assert!(!valid_function_name(bad), "{bad}");
        }
    }

    #[test]
    fn resources_arithmetic() {
        let a = Resources::new(500, 128, 64);
        let b = Resources::new(1000, 256, 64);
        assert!(a.fits_in(b));
        assert!(!b.fits_in(a));
        assert_eq!(a.plus(b).minus(b), a);
        assert_eq!(a.minus(b), Resources::new(0, 0, 0));
    }

    #[test]
    fn enums_serialize_as_contract_strings() {
        assert_eq!(
            serde_json::to_string(&RunStatus::TimedOut).unwrap(),
            "\"timed_out\""
        );
        assert_eq!(
            serde_json::to_string(&Runtime::Python3).unwrap(),
            "\"python3\""
        );
        assert_eq!(serde_json::to_string(&Mode::Async).unwrap(), "\"async\"");
    }

    /// Serde's string (what is stored and sent) is the contract string, and `parse` inverts
    /// `as_str`, for every variant of every enum with a contract string.
    fn same_strings<T>(all: &[T], as_str: fn(T) -> &'static str, parse: fn(&str) -> Option<T>)
    where
        T: Copy + PartialEq + std::fmt::Debug + Serialize,
    {
        for &v in all {
            assert_eq!(parse(as_str(v)), Some(v));
            assert_eq!(serde_json::to_value(v).unwrap(), as_str(v), "{v:?}");
        }
        assert_eq!(parse("no-such"), None);
    }

    #[test]
    fn contract_strings_are_serde_strings() {
        same_strings(&Runtime::ALL, Runtime::as_str, Runtime::parse);
        same_strings(&Mode::ALL, Mode::as_str, Mode::parse);
        same_strings(&RunStatus::ALL, RunStatus::as_str, RunStatus::parse);
        same_strings(&ArgType::ALL, ArgType::as_str, ArgType::parse);
        same_strings(&BillState::ALL, BillState::as_str, BillState::parse);
        same_strings(&BillStatus::ALL, BillStatus::as_str, BillStatus::parse);
        same_strings(
            &PricedResource::ALL,
            PricedResource::as_str,
            PricedResource::parse,
        );
        same_strings(&HistoryKind::ALL, HistoryKind::as_str, HistoryKind::parse);
        assert_eq!(Mode::choices(), "sync, async");
        assert_eq!(RunStatus::TimedOut.to_string(), "timed_out");
    }

    #[test]
    fn code_kinds_are_stored_with_an_underscore_and_shown_with_a_dot() {
        for k in CodeKind::ALL {
            assert_eq!(CodeKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(CodeKind::TarGz.as_str(), "tar.gz");
        assert_eq!(serde_json::to_value(CodeKind::TarGz).unwrap(), "tar_gz");
    }
}
