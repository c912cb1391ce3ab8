//! Configuration read from an injected map of environment variables (never from the process
//! environment directly, so tests can run side by side), with values logged secrets-redacted.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// The environment a component reads its configuration from.
pub type Env = HashMap<String, String>;

/// The process environment as an [`Env`]. Binaries call this once in `main`.
pub fn process_env() -> Env {
    std::env::vars().collect()
}

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// `flag` when given, else `env[key]`, else `default`.
pub fn string(env: &Env, flag: Option<&str>, key: &str, default: &str) -> String {
    flag.map(str::to_owned)
        .or_else(|| env.get(key).filter(|v| !v.is_empty()).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// Parses `flag`, else `env[key]`, else `default`.
pub fn parse<T>(env: &Env, flag: Option<&str>, key: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match flag.or_else(|| env.get(key).map(String::as_str).filter(|v| !v.is_empty())) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| ConfigError::new(key, format!("cannot parse {raw:?}: {e}"))),
    }
}

/// Worker threads of a service's async runtime from `env[key]` (`auto` = one per core), else
/// `default`. Must be at least 1.
pub fn threads(
    env: &Env,
    flag: Option<&str>,
    key: &str,
    default: usize,
) -> Result<usize, ConfigError> {
    let raw = string(env, flag, key, "");
    let n = match raw.trim() {
        "" => default,
        "auto" => std::thread::available_parallelism().map_or(1, |n| n.get()),
        other => other
            .parse()
            .map_err(|e| ConfigError::new(key, format!("cannot parse {other:?}: {e}")))?,
    };
    if n == 0 {
        return Err(ConfigError::new(key, "must be at least 1 (or auto)"));
    }
    Ok(n)
}

/// Parses durations like `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    let raw = raw.trim();
    let (num, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 500ms, 30s, 5m or 1h"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => {
            return Err(format!(
                "{raw:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    Ok(std::time::Duration::from_millis(ms))
}

/// Hides the password of a URL like `amqp://user:pass@host/` or `mongodb://u:p@h` for logging.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// Connection settings every backend component shares.
#[derive(Debug, Clone)]
pub struct Backends {
    pub mongodb_uri: String,
    /// Database name; `colorfaas` unless `MONGODB_DB` says otherwise.
    pub mongodb_db: String,
    pub amqp_url: String,
    /// Prefix of every AMQP name (`COLORFAAS_AMQP_PREFIX`, default `colorfaas`).
    pub amqp_prefix: String,
}

impl Backends {
    pub fn from_env(env: &Env) -> Backends {
        Backends {
            mongodb_uri: string(env, None, "MONGODB_URI", "mongodb://127.0.0.1:27017"),
            mongodb_db: string(env, None, "MONGODB_DB", "colorfaas"),
            amqp_url: string(
                env,
                None,
                "AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
            amqp_prefix: string(env, None, "COLORFAAS_AMQP_PREFIX", "colorfaas"),
        }
    }

    pub fn names(&self) -> schemas::names::AmqpNames {
        schemas::names::AmqpNames::new(self.amqp_prefix.clone())
    }
}

impl fmt::Display for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mongodb={} db={} amqp={} prefix={}",
            redact_url(&self.mongodb_uri),
            self.mongodb_db,
            redact_url(&self.amqp_url),
            self.amqp_prefix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_default() {
        let env: Env = [("K".to_owned(), "env".to_owned())].into();
        assert_eq!(string(&env, Some("flag"), "K", "d"), "flag");
        assert_eq!(string(&env, None, "K", "d"), "env");
        assert_eq!(string(&env, None, "X", "d"), "d");
        assert_eq!(parse::<u32>(&env, None, "X", 7).unwrap(), 7);
        assert!(parse::<u32>(&env, None, "K", 7).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("3").unwrap().as_secs(), 3);
        assert!(parse_duration("3y").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("mongodb://127.0.0.1"), "mongodb://127.0.0.1");
    }

    #[test]
    fn threads_default_auto_and_errors() {
        let env: Env = [
            ("ONE".to_owned(), "1".to_owned()),
            ("AUTO".to_owned(), "auto".to_owned()),
            ("ZERO".to_owned(), "0".to_owned()),
            ("BAD".to_owned(), "many".to_owned()),
        ]
        .into();
        assert_eq!(threads(&env, None, "UNSET", 3).unwrap(), 3);
        assert_eq!(threads(&env, None, "ONE", 3).unwrap(), 1);
        assert_eq!(threads(&env, Some("4"), "ONE", 3).unwrap(), 4);
        assert!(threads(&env, None, "AUTO", 3).unwrap() >= 1);
        let zero = threads(&env, None, "ZERO", 3).unwrap_err();
        assert_eq!(zero.key, "ZERO");
        let bad = threads(&env, None, "BAD", 3).unwrap_err();
        assert!(bad.reason.contains("many"), "{bad}");
    }
}
