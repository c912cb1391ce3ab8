//! Gateway configuration: flags override environment variables, which override defaults.

use std::num::NonZeroU32;
use std::time::Duration;

use common::config::{self, Backends, ConfigError, Env};

/// Command-line flags (each overrides the environment variable named in its help).
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "gateway",
    about = "Color FaaS gateway: the invoke endpoint for applications (POST /v1/invoke/{function})"
)]
pub struct Flags {
    /// HTTP address to listen on [env: GATEWAY_ADDR; default 127.0.0.1:8081]
    #[arg(long)]
    pub addr: Option<String>,
    /// Sustained requests per second allowed per API key [env: GATEWAY_RATE_PER_SEC; default 1000]
    #[arg(long)]
    pub rate_per_sec: Option<String>,
    /// Requests per API key allowed in a burst [env: GATEWAY_BURST; default 2000]
    #[arg(long)]
    pub burst: Option<String>,
    /// Attempts to POST a finished run to its X-Callback-Url [env: GATEWAY_CALLBACK_ATTEMPTS; default 5]
    #[arg(long)]
    pub callback_attempts: Option<String>,
    /// Instance id, used in the name of its reply queue [env: GATEWAY_ID; default: random]
    #[arg(long)]
    pub id: Option<String>,
    /// Async runtime threads; 1 = everything on one thread [env: GATEWAY_THREADS; default: one per core]
    #[arg(long)]
    pub threads: Option<String>,
}

/// Everything the gateway needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// This instance's id (its reply queue is `<prefix>.replies.<id>`).
    pub instance_id: String,
    pub addr: String,
    pub backends: Backends,
    pub rate_per_sec: NonZeroU32,
    pub burst: NonZeroU32,
    /// Attempts per callback before giving up (at least 1).
    pub callback_attempts: u32,
    /// Back-off before the second callback attempt; doubles after each failure.
    pub callback_backoff: Duration,
    /// Time limit of one callback POST.
    pub callback_timeout: Duration,
    /// Special-use ranges callbacks may reach anyway (`GATEWAY_CALLBACK_ALLOW`; default none).
    pub callback_allow: crate::egress::AddressPolicy,
    /// Longest wait for RabbitMQ's publisher confirm before answering 503.
    pub publish_timeout: Duration,
    /// Added to a function's `timeout_ms` while a sync call waits for its result.
    pub sync_grace: Duration,
    /// Most sync calls waiting at once; beyond that, 503.
    pub max_inflight: usize,
    /// How long shutdown waits for in-flight calls and callbacks.
    pub drain_timeout: Duration,
    /// Worker threads of the async runtime (`GATEWAY_THREADS`); 1 polls everything on one thread.
    pub threads: usize,
    /// Per user, across keys and gateways: accepted runs not finished yet
    /// (`GATEWAY_USER_MAX_QUEUED`) and sync calls in flight (`GATEWAY_USER_MAX_SYNC`).
    pub user_limits: accounts::Limits,
}

fn duration(env: &Env, key: &str, default: &str) -> Result<Duration, ConfigError> {
    let raw = config::string(env, None, key, default);
    config::parse_duration(&raw).map_err(|e| ConfigError::new(key, e))
}

fn non_zero(
    env: &Env,
    flag: Option<&str>,
    key: &str,
    default: u32,
) -> Result<NonZeroU32, ConfigError> {
    let v: u32 = config::parse(env, flag, key, default)?;
    NonZeroU32::new(v).ok_or_else(|| ConfigError::new(key, "must be at least 1"))
}

/// `GATEWAY_CALLBACK_ALLOW`: the special-use ranges callbacks may reach (the portal, which also
/// delivers callbacks, reads the same variable).
pub fn callback_allow(env: &Env) -> Result<crate::egress::AddressPolicy, ConfigError> {
    let raw = config::string(env, None, crate::egress::ALLOW_ENV, "");
    crate::egress::AddressPolicy::parse(&raw)
        .map_err(|e| ConfigError::new(crate::egress::ALLOW_ENV, e))
}

fn at_least_one(env: &Env, key: &str, default: i64) -> Result<i64, ConfigError> {
    let v: i64 = config::parse(env, None, key, default)?;
    if v < 1 {
        return Err(ConfigError::new(key, "must be at least 1"));
    }
    Ok(v)
}

impl Config {
    pub fn from_env(env: &Env, flags: &Flags) -> Result<Config, ConfigError> {
        let backends = Backends::from_env(env);
        if !(backends.mongodb_uri.starts_with("mongodb://")
            || backends.mongodb_uri.starts_with("mongodb+srv://"))
        {
            return Err(ConfigError::new(
                "MONGODB_URI",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        backends
            .amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| ConfigError::new("AMQP_URL", format!("not an AMQP URL: {e}")))?;
        let addr = config::string(env, flags.addr.as_deref(), "GATEWAY_ADDR", "127.0.0.1:8081");
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Err(ConfigError::new(
                "GATEWAY_ADDR",
                format!("{addr:?} is not a host:port address"),
            ));
        }
        let instance_id = match flags
            .id
            .clone()
            .or_else(|| env.get("GATEWAY_ID").filter(|v| !v.is_empty()).cloned())
        {
            Some(id) => id,
            None => uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        };
        if instance_id.is_empty()
            || instance_id.len() > 64
            || !instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::new(
                "GATEWAY_ID",
                format!("{instance_id:?} must be 1-64 letters, digits, '-' or '_'"),
            ));
        }
        let callback_attempts: u32 = config::parse(
            env,
            flags.callback_attempts.as_deref(),
            "GATEWAY_CALLBACK_ATTEMPTS",
            5,
        )?;
        if !(1..=100).contains(&callback_attempts) {
            return Err(ConfigError::new(
                "GATEWAY_CALLBACK_ATTEMPTS",
                "must be between 1 and 100",
            ));
        }
        let publish_timeout = duration(env, "GATEWAY_PUBLISH_TIMEOUT", "900ms")?;
        if publish_timeout.is_zero() {
            return Err(ConfigError::new(
                "GATEWAY_PUBLISH_TIMEOUT",
                "must be more than 0",
            ));
        }
        let max_inflight: usize = config::parse(env, None, "GATEWAY_MAX_INFLIGHT", 10_000)?;
        if max_inflight == 0 {
            return Err(ConfigError::new(
                "GATEWAY_MAX_INFLIGHT",
                "must be at least 1",
            ));
        }
        let user_limits = accounts::Limits {
            max_queued: at_least_one(
                env,
                "GATEWAY_USER_MAX_QUEUED",
                accounts::hold::DEFAULT_MAX_QUEUED,
            )?,
            max_sync: at_least_one(
                env,
                "GATEWAY_USER_MAX_SYNC",
                accounts::hold::DEFAULT_MAX_SYNC,
            )?,
        };
        Ok(Config {
            instance_id,
            addr,
            backends,
            rate_per_sec: non_zero(
                env,
                flags.rate_per_sec.as_deref(),
                "GATEWAY_RATE_PER_SEC",
                1000,
            )?,
            burst: non_zero(env, flags.burst.as_deref(), "GATEWAY_BURST", 2000)?,
            callback_attempts,
            callback_backoff: duration(env, "GATEWAY_CALLBACK_BACKOFF", "500ms")?,
            callback_timeout: duration(env, "GATEWAY_CALLBACK_TIMEOUT", "10s")?,
            callback_allow: callback_allow(env)?,
            publish_timeout,
            sync_grace: duration(env, "GATEWAY_SYNC_GRACE", "2500ms")?,
            max_inflight,
            drain_timeout: duration(env, "GATEWAY_DRAIN_TIMEOUT", "60s")?,
            threads: config::threads(
                env,
                flags.threads.as_deref(),
                "GATEWAY_THREADS",
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )?,
            user_limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_env(&env(&[]), &Flags::default()).unwrap();
        assert_eq!(c.addr, "127.0.0.1:8081");
        assert_eq!(c.rate_per_sec.get(), 1000);
        assert_eq!(c.burst.get(), 2000);
        assert_eq!(c.callback_attempts, 5);
        assert_eq!(c.backends.amqp_prefix, "colorfaas");
        assert_eq!(c.instance_id.len(), 12);
        assert_eq!(
            c.callback_allow,
            crate::egress::AddressPolicy::public_only()
        );
        assert_eq!(c.user_limits, accounts::Limits::default());
        assert_eq!(
            (c.user_limits.max_queued, c.user_limits.max_sync),
            (10_000, 1_000)
        );

        let e = env(&[
            ("GATEWAY_RATE_PER_SEC", "5"),
            ("GATEWAY_BURST", "7"),
            ("GATEWAY_ID", "gw1"),
            ("GATEWAY_USER_MAX_QUEUED", "3"),
            ("GATEWAY_USER_MAX_SYNC", "2"),
        ]);
        let c = Config::from_env(&e, &Flags::default()).unwrap();
        assert_eq!((c.rate_per_sec.get(), c.burst.get()), (5, 7));
        assert_eq!((c.user_limits.max_queued, c.user_limits.max_sync), (3, 2));
        assert_eq!(c.instance_id, "gw1");
        let flags = Flags {
            burst: Some("9".into()),
            addr: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let c = Config::from_env(&e, &flags).unwrap();
        assert_eq!(c.burst.get(), 9);
        assert_eq!(c.addr, "127.0.0.1:0");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("GATEWAY_RATE_PER_SEC", "0"),
            ("GATEWAY_BURST", "lots"),
            ("GATEWAY_CALLBACK_ATTEMPTS", "0"),
            ("GATEWAY_ID", "no spaces"),
            ("AMQP_URL", "http://x"),
            ("MONGODB_URI", "postgres://x"),
            ("GATEWAY_PUBLISH_TIMEOUT", "soon"),
            ("GATEWAY_ADDR", "nowhere"),
            ("GATEWAY_CALLBACK_ALLOW", "127.0.0.1/40"),
            ("GATEWAY_USER_MAX_QUEUED", "0"),
            ("GATEWAY_USER_MAX_SYNC", "many"),
        ] {
            let err = Config::from_env(&env(&[(k, v)]), &Flags::default()).unwrap_err();
            assert!(err.to_string().starts_with(k), "{k}={v}: {err}");
        }
    }
}
