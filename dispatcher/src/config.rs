//! Dispatcher configuration: flags override environment variables, which override defaults.

use std::time::Duration;

use common::config::{self, Backends, ConfigError, Env};

/// Command-line flags (each overrides the environment variable named in its help).
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "dispatcher",
    about = "Color FaaS dispatcher: ZooKeeper-elected DRF scheduler"
)]
pub struct Flags {
    /// Candidate id [env: DISPATCHER_ID; default: the host name]
    #[arg(long)]
    pub id: Option<String>,
    /// HTTP address for /healthz and /metrics [env: DISPATCHER_ADDR; default 127.0.0.1:8091]
    #[arg(long)]
    pub addr: Option<String>,
    /// ZooKeeper connect string [env: ZK_CONNECT; default 127.0.0.1:2181]
    #[arg(long)]
    pub zk: Option<String>,
    /// ZooKeeper session timeout [env: DISPATCHER_ZK_SESSION_TIMEOUT; default 2s]
    #[arg(long)]
    pub session_timeout: Option<String>,
    /// Async runtime threads; 1 = everything on one thread [env: DISPATCHER_THREADS; default 1; `auto` = one per core]
    #[arg(long)]
    pub threads: Option<String>,
}

/// Everything the dispatcher needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: String,
    pub addr: String,
    pub backends: Backends,
    pub zk_connect: String,
    pub session_timeout: Duration,
    /// Invocations the leader holds (unacked) at once, pending across users.
    pub prefetch: u16,
    /// With no live worker for this long, pending invocations fail with `platform_no_capacity`.
    pub no_worker_grace: Duration,
    /// Missed heartbeats after which a worker is dead.
    pub missed_beats: u32,
    /// Worker threads of the async runtime (`DISPATCHER_THREADS`); 1 polls everything on one thread.
    pub threads: usize,
    /// Shortest interval between two ticks of a schedule, ms (`DISPATCHER_MIN_SCHEDULE`,
    /// default 1m; the portal refuses shorter expressions, and the leader never fires one
    /// schedule more often).
    pub min_schedule_ms: i64,
}

impl Config {
    pub fn from_env(env: &Env, flags: &Flags) -> Result<Config, ConfigError> {
        let host = env
            .get("HOSTNAME")
            .cloned()
            .unwrap_or_else(|| "dispatcher".into());
        let id = config::string(env, flags.id.as_deref(), "DISPATCHER_ID", &host);
        if id.is_empty() || id.len() > 64 || id.contains('/') {
            return Err(ConfigError::new(
                "DISPATCHER_ID",
                format!("{id:?} must be 1-64 characters without '/'"),
            ));
        }
        let dur = |flag: Option<&str>, key: &str, default: &str| {
            config::parse_duration(&config::string(env, flag, key, default))
                .map_err(|e| ConfigError::new(key, e))
        };
        let session_timeout = dur(
            flags.session_timeout.as_deref(),
            "DISPATCHER_ZK_SESSION_TIMEOUT",
            "2s",
        )?;
        if session_timeout < Duration::from_millis(1000) {
            return Err(ConfigError::new(
                "DISPATCHER_ZK_SESSION_TIMEOUT",
                "must be at least 1s",
            ));
        }
        let min_schedule_ms =
            common::schedule::min_schedule_ms(env, &[common::schedule::MIN_SCHEDULE_ENV])?;
        Ok(Config {
            min_schedule_ms,
            addr: config::string(
                env,
                flags.addr.as_deref(),
                "DISPATCHER_ADDR",
                "127.0.0.1:8091",
            ),
            backends: Backends::from_env(env),
            zk_connect: config::string(env, flags.zk.as_deref(), "ZK_CONNECT", "127.0.0.1:2181"),
            session_timeout,
            prefetch: config::parse(env, None, "DISPATCHER_PREFETCH", 10_000)?,
            no_worker_grace: dur(None, "DISPATCHER_NO_WORKER_GRACE", "10s")?,
            missed_beats: config::parse(env, None, "DISPATCHER_MISSED_BEATS", 3)?,
            id,
            threads: config::threads(env, flags.threads.as_deref(), "DISPATCHER_THREADS", 1)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let env: Env = [("DISPATCHER_ID".to_owned(), "d1".to_owned())].into();
        let c = Config::from_env(&env, &Flags::default()).unwrap();
        assert_eq!(c.id, "d1");
        assert_eq!(c.session_timeout, Duration::from_secs(2));
        let env: Env = [(
            "DISPATCHER_ZK_SESSION_TIMEOUT".to_owned(),
            "100ms".to_owned(),
        )]
        .into();
        assert!(Config::from_env(&env, &Flags::default()).is_err());
    }
}
