//! Portal configuration: flags override environment variables, which override defaults.

use std::num::NonZeroU32;
use std::time::Duration;

use common::config::{self, Backends, ConfigError, Env};

/// Command-line flags (each overrides the environment variable named in its help).
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "portal",
    about = "Color FaaS portal: the web pages and the /api/v1 JSON API for developers"
)]
pub struct Flags {
    /// HTTP address to listen on [env: PORTAL_ADDR; default 127.0.0.1:8080]
    #[arg(long)]
    pub addr: Option<String>,
    /// Credit of new accounts, in micros [env: FREE_CREDIT_MICROS; default 1000000]
    #[arg(long)]
    pub free_credit_micros: Option<String>,
    /// Lifetime of a login session, e.g. 7d, 12h [env: PORTAL_SESSION_TTL; default 7d]
    #[arg(long)]
    pub session_ttl: Option<String>,
    /// Login attempts allowed per account per minute [env: PORTAL_LOGIN_PER_ACCOUNT; default 10]
    #[arg(long)]
    pub login_per_account: Option<String>,
    /// Login attempts allowed per client address per minute [env: PORTAL_LOGIN_PER_ADDRESS; default 30]
    #[arg(long)]
    pub login_per_address: Option<String>,
    /// Instance id, used in the name of its reply queue [env: PORTAL_ID; default: random]
    #[arg(long)]
    pub id: Option<String>,
    /// Accounts that may be created per client address per hour [env: PORTAL_SIGNUP_PER_HOUR; default 20]
    #[arg(long)]
    pub signup_per_hour: Option<String>,
    /// Card payment provider for top-ups: `test` (the built-in test provider) or none
    /// [env: PORTAL_PAYMENT_PROVIDER; default: none, top-ups answer 503]
    #[arg(long)]
    pub payment_provider: Option<String>,
}

/// The card payment providers the portal knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentProviderKind {
    /// The built-in test provider: any Luhn-valid card pays, except the contract's declined one.
    /// Never for real money: it must be named explicitly.
    Test,
}

impl PaymentProviderKind {
    /// `PORTAL_PAYMENT_PROVIDER`: empty or `none` for no provider, `test` for the test one.
    pub fn parse(raw: &str) -> Result<Option<PaymentProviderKind>, String> {
        match raw.trim() {
            "" | "none" => Ok(None),
            "test" => Ok(Some(PaymentProviderKind::Test)),
            other => Err(format!(
                "{other:?} is not a payment provider: the portal has `test` (the built-in test provider, for development) or `none`"
            )),
        }
    }
}

/// Everything the portal needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway's public base URL, shown in invoke URLs and curl examples on the pages
    /// (`PORTAL_GATEWAY_URL`, e.g. `https://api.example.com`; empty: paths only).
    pub gateway_url: String,
    pub addr: String,
    pub backends: Backends,
    /// This instance's id; its reply queue (for test invocations) is `<prefix>.replies.portal-<id>`.
    pub instance_id: String,
    /// Credit of new accounts (micros).
    pub free_credit_micros: i64,
    /// Lifetime of a session from its login.
    pub session_ttl: Duration,
    /// Login attempts per account per minute (also the burst).
    pub login_per_account: NonZeroU32,
    /// Login attempts per client address per minute (also the burst).
    pub login_per_address: NonZeroU32,
    /// Longest wait for RabbitMQ's publisher confirm of a test invocation.
    pub publish_timeout: Duration,
    /// Added to a function's `timeout_ms` while a test invocation waits for its result.
    pub sync_grace: Duration,
    /// Most test invocations waiting at once; beyond that, 503.
    pub max_inflight: usize,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// Accounts created per client address per hour (also the burst).
    pub signup_per_hour: NonZeroU32,
    /// Passwords hashed or verified at once (argon2id takes 19 MiB and a core for a moment);
    /// beyond that, sign-ups and logins wait (`PORTAL_HASH_CONCURRENCY`, default one per core).
    pub hash_concurrency: usize,
    /// Who charges cards for top-ups; `None`: top-ups answer 503 `payments_unavailable`.
    pub payment_provider: Option<PaymentProviderKind>,
    /// Special-use ranges the callbacks this portal delivers may reach
    /// (`GATEWAY_CALLBACK_ALLOW`, read like the gateway does).
    pub callback_allow: gateway::egress::AddressPolicy,
    /// Limits of uploaded code packages (`PORTAL_MAX_UNPACKED_BYTES`,
    /// `PORTAL_MAX_PACKAGE_ENTRIES`; the code itself is at most 20 MiB).
    pub upload_limits: crate::upload::Limits,
    /// Smallest `max_event_age_s` a function may have (`PORTAL_MIN_EVENT_AGE_S`, 1–60; default
    /// the contract's 60; lower only to test event expiry quickly).
    pub min_event_age_s: u64,
    /// Seals functions' secrets (`COLORFAAS_SECRETS_KEY`); `None`: secrets cannot be set (503).
    pub secrets_key: Option<common::secrets::SecretsKey>,
    /// Shortest interval of a schedule, ms (`PORTAL_MIN_SCHEDULE`, else the dispatcher's
    /// `DISPATCHER_MIN_SCHEDULE`, else one minute).
    pub min_schedule_ms: i64,
}

fn duration(
    env: &Env,
    flag: Option<&str>,
    key: &str,
    default: &str,
) -> Result<Duration, ConfigError> {
    let raw = config::string(env, flag, key, default);
    let raw = raw.trim();
    // `7d` is the natural way to write a session's lifetime.
    if let Some(days) = raw.strip_suffix('d') {
        let n: u64 = days
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(key, format!("{raw:?} is not a duration")))?;
        return Ok(Duration::from_secs(n * 86_400));
    }
    config::parse_duration(raw).map_err(|e| ConfigError::new(key, e))
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
        let addr = config::string(env, flags.addr.as_deref(), "PORTAL_ADDR", "127.0.0.1:8080");
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Err(ConfigError::new(
                "PORTAL_ADDR",
                format!("{addr:?} is not a host:port address"),
            ));
        }
        let instance_id = match flags
            .id
            .clone()
            .or_else(|| env.get("PORTAL_ID").filter(|v| !v.is_empty()).cloned())
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
                "PORTAL_ID",
                format!("{instance_id:?} must be 1-64 letters, digits, '-' or '_'"),
            ));
        }
        let free_credit_micros: i64 = config::parse(
            env,
            flags.free_credit_micros.as_deref(),
            accounts::FREE_CREDIT_ENV,
            accounts::DEFAULT_FREE_CREDIT_MICROS,
        )?;
        if free_credit_micros < 0 {
            return Err(ConfigError::new(
                accounts::FREE_CREDIT_ENV,
                "must not be negative",
            ));
        }
        let session_ttl = duration(
            env,
            flags.session_ttl.as_deref(),
            "PORTAL_SESSION_TTL",
            "7d",
        )?;
        if session_ttl < Duration::from_secs(60) {
            return Err(ConfigError::new(
                "PORTAL_SESSION_TTL",
                "must be at least one minute",
            ));
        }
        let publish_timeout = duration(env, None, "PORTAL_PUBLISH_TIMEOUT", "900ms")?;
        if publish_timeout.is_zero() {
            return Err(ConfigError::new(
                "PORTAL_PUBLISH_TIMEOUT",
                "must be more than 0",
            ));
        }
        let max_inflight: usize = config::parse(env, None, "PORTAL_MAX_INFLIGHT", 1_000)?;
        if max_inflight == 0 {
            return Err(ConfigError::new(
                "PORTAL_MAX_INFLIGHT",
                "must be at least 1",
            ));
        }
        let defaults = crate::upload::Limits::default();
        let unpacked_bytes: u64 = config::parse(
            env,
            None,
            "PORTAL_MAX_UNPACKED_BYTES",
            defaults.unpacked_bytes,
        )?;
        if unpacked_bytes == 0 || unpacked_bytes > defaults.unpacked_bytes {
            return Err(ConfigError::new(
                "PORTAL_MAX_UNPACKED_BYTES",
                format!(
                    "must be between 1 and {} (the worker's limit)",
                    defaults.unpacked_bytes
                ),
            ));
        }
        let entries: usize =
            config::parse(env, None, "PORTAL_MAX_PACKAGE_ENTRIES", defaults.entries)?;
        if entries == 0 {
            return Err(ConfigError::new(
                "PORTAL_MAX_PACKAGE_ENTRIES",
                "must be at least 1",
            ));
        }
        let payment_provider = PaymentProviderKind::parse(&config::string(
            env,
            flags.payment_provider.as_deref(),
            "PORTAL_PAYMENT_PROVIDER",
            "",
        ))
        .map_err(|e| ConfigError::new("PORTAL_PAYMENT_PROVIDER", e))?;
        let hash_concurrency: usize = config::parse(
            env,
            None,
            "PORTAL_HASH_CONCURRENCY",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        )?;
        if hash_concurrency == 0 {
            return Err(ConfigError::new(
                "PORTAL_HASH_CONCURRENCY",
                "must be at least 1",
            ));
        }
        let min_event_age_s: u64 = config::parse(
            env,
            None,
            "PORTAL_MIN_EVENT_AGE_S",
            schemas::rules::MAX_EVENT_AGE_S.0,
        )?;
        if !(1..=schemas::rules::MAX_EVENT_AGE_S.0).contains(&min_event_age_s) {
            return Err(ConfigError::new(
                "PORTAL_MIN_EVENT_AGE_S",
                "must be between 1 and 60",
            ));
        }
        let min_schedule_ms = common::schedule::min_schedule_ms(
            env,
            &[
                common::schedule::PORTAL_MIN_SCHEDULE_ENV,
                common::schedule::MIN_SCHEDULE_ENV,
            ],
        )?;
        let gateway_url = env
            .get("PORTAL_GATEWAY_URL")
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let scheme_ok = gateway_url.starts_with("http://") || gateway_url.starts_with("https://");
        if !gateway_url.is_empty() && !scheme_ok {
            return Err(ConfigError::new(
                "PORTAL_GATEWAY_URL",
                "must be an http:// or https:// URL",
            ));
        }
        Ok(Config {
            gateway_url,
            min_event_age_s,
            secrets_key: common::secrets::SecretsKey::from_env(env)?,
            min_schedule_ms,
            signup_per_hour: non_zero(
                env,
                flags.signup_per_hour.as_deref(),
                "PORTAL_SIGNUP_PER_HOUR",
                20,
            )?,
            hash_concurrency,
            payment_provider,
            callback_allow: gateway::config::callback_allow(env)?,
            upload_limits: crate::upload::Limits {
                code_bytes: defaults.code_bytes,
                unpacked_bytes,
                entries,
            },
            addr,
            backends,
            instance_id,
            free_credit_micros,
            session_ttl,
            login_per_account: non_zero(
                env,
                flags.login_per_account.as_deref(),
                "PORTAL_LOGIN_PER_ACCOUNT",
                10,
            )?,
            login_per_address: non_zero(
                env,
                flags.login_per_address.as_deref(),
                "PORTAL_LOGIN_PER_ADDRESS",
                30,
            )?,
            publish_timeout,
            sync_grace: duration(env, None, "PORTAL_SYNC_GRACE", "2500ms")?,
            max_inflight,
            drain_timeout: duration(env, None, "PORTAL_DRAIN_TIMEOUT", "30s")?,
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
        assert_eq!(c.addr, "127.0.0.1:8080");
        assert_eq!(c.free_credit_micros, 1_000_000);
        assert_eq!(c.session_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(c.login_per_account.get(), 10);
        assert_eq!(c.login_per_address.get(), 30);
        assert_eq!(c.signup_per_hour.get(), 20);
        assert!(c.hash_concurrency >= 1);
        // No provider unless one is named: nothing mints money by default.
        assert_eq!(c.payment_provider, None);
        let c = Config::from_env(
            &env(&[
                ("PORTAL_PAYMENT_PROVIDER", "test"),
                ("PORTAL_SIGNUP_PER_HOUR", "500"),
                ("GATEWAY_CALLBACK_ALLOW", "127.0.0.1/32"),
            ]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(c.payment_provider, Some(PaymentProviderKind::Test));
        assert_eq!(c.gateway_url, "");
        assert_eq!(c.signup_per_hour.get(), 500);
        assert_eq!(c.callback_allow.allowed(), "127.0.0.1/32");
        let e = env(&[
            ("FREE_CREDIT_MICROS", "5"),
            ("PORTAL_SESSION_TTL", "2h"),
            ("PORTAL_ID", "p1"),
        ]);
        let c = Config::from_env(&e, &Flags::default()).unwrap();
        assert_eq!(c.free_credit_micros, 5);
        let g = env(&[("PORTAL_GATEWAY_URL", "https://api.example.com/")]);
        let cg = Config::from_env(&g, &Flags::default()).unwrap();
        assert_eq!(cg.gateway_url, "https://api.example.com");
        assert_eq!(c.session_ttl, Duration::from_secs(7200));
        assert_eq!(c.instance_id, "p1");
        let flags = Flags {
            addr: Some("127.0.0.1:0".into()),
            free_credit_micros: Some("9".into()),
            ..Default::default()
        };
        let c = Config::from_env(&e, &flags).unwrap();
        assert_eq!((c.addr.as_str(), c.free_credit_micros), ("127.0.0.1:0", 9));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("PORTAL_ADDR", "nowhere"),
            ("FREE_CREDIT_MICROS", "-1"),
            ("FREE_CREDIT_MICROS", "lots"),
            ("PORTAL_SESSION_TTL", "1s"),
            ("PORTAL_SESSION_TTL", "soon"),
            ("PORTAL_LOGIN_PER_ACCOUNT", "0"),
            ("PORTAL_ID", "no spaces"),
            ("PORTAL_SIGNUP_PER_HOUR", "0"),
            ("PORTAL_GATEWAY_URL", "api.example.com"),
            ("PORTAL_PAYMENT_PROVIDER", "stripe"),
            ("PORTAL_HASH_CONCURRENCY", "0"),
            ("GATEWAY_CALLBACK_ALLOW", "everywhere"),
            ("AMQP_URL", "http://x"),
            ("MONGODB_URI", "postgres://x"),
        ] {
            let err = Config::from_env(&env(&[(k, v)]), &Flags::default()).unwrap_err();
            assert!(err.to_string().starts_with(k), "{k}={v}: {err}");
        }
    }
}
