//! Billing-job configuration: flags override environment variables, which override defaults.

use std::time::Duration;

use common::config::{self, ConfigError, Env};

use crate::billing::{BillOptions, MAX_ITEMS_LIMIT};

/// Command-line flags (each overrides the environment variable named in its help).
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "billing-job",
    about = "Color FaaS billing job: bills every finished, unbilled run into one bill per user, \
             prints `billed N runs into M bills, total X micros` and exits 0"
)]
pub struct Flags {
    /// Repeat a pass this often until SIGTERM, e.g. 15m or 1h [env: BILLING_EVERY; default: one pass]
    #[arg(long)]
    pub every: Option<String>,
    /// MongoDB connection string [env: MONGODB_URI; default mongodb://127.0.0.1:27017]
    #[arg(long)]
    pub mongodb_uri: Option<String>,
    /// MongoDB database [env: MONGODB_DB; default colorfaas]
    #[arg(long)]
    pub mongodb_db: Option<String>,
    /// Runs read and marked per round trip [env: BILLING_CHUNK_SIZE; default 5000]
    #[arg(long)]
    pub chunk_size: Option<String>,
    /// Most items on one bill; more runs of a user go on further bills [env: BILLING_MAX_BILL_ITEMS; default 10000]
    #[arg(long)]
    pub max_bill_items: Option<String>,
    /// Time-to-live of the lease that keeps two jobs apart [env: BILLING_LEASE_TTL; default 60s]
    #[arg(long)]
    pub lease_ttl: Option<String>,
    /// A progress line on stderr every this many runs, 0 for none [env: BILLING_PROGRESS_EVERY; default 100000]
    #[arg(long)]
    pub progress_every: Option<String>,
}

/// Everything the billing job needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub mongodb_uri: String,
    pub mongodb_db: String,
    /// `None`: one pass, then exit.
    pub every: Option<Duration>,
    /// Pass options (no progress callback or stop flag: the runner adds them).
    pub options: BillOptions,
}

fn duration(
    env: &Env,
    flag: Option<&str>,
    key: &str,
    default: &str,
) -> Result<Duration, ConfigError> {
    let raw = config::string(env, flag, key, default);
    config::parse_duration(&raw).map_err(|e| ConfigError::new(key, e))
}

impl Config {
    pub fn from_env(env: &Env, flags: &Flags) -> Result<Config, ConfigError> {
        let every = match flags.every.as_deref().or_else(|| {
            env.get("BILLING_EVERY")
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        }) {
            None => None,
            Some(raw) => {
                let d = config::parse_duration(raw)
                    .map_err(|e| ConfigError::new("BILLING_EVERY", e))?;
                if d.is_zero() {
                    return Err(ConfigError::new("BILLING_EVERY", "must be more than 0"));
                }
                Some(d)
            }
        };
        let chunk_size: usize = config::parse(
            env,
            flags.chunk_size.as_deref(),
            "BILLING_CHUNK_SIZE",
            5_000,
        )?;
        if !(1..=100_000).contains(&chunk_size) {
            return Err(ConfigError::new("BILLING_CHUNK_SIZE", "must be 1..=100000"));
        }
        let max_items: usize = config::parse(
            env,
            flags.max_bill_items.as_deref(),
            "BILLING_MAX_BILL_ITEMS",
            10_000,
        )?;
        if !(1..=MAX_ITEMS_LIMIT).contains(&max_items) {
            return Err(ConfigError::new(
                "BILLING_MAX_BILL_ITEMS",
                format!("must be 1..={MAX_ITEMS_LIMIT}"),
            ));
        }
        let lease_ttl = duration(env, flags.lease_ttl.as_deref(), "BILLING_LEASE_TTL", "60s")?;
        if lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new("BILLING_LEASE_TTL", "must be at least 1s"));
        }
        let progress_every: u64 = config::parse(
            env,
            flags.progress_every.as_deref(),
            "BILLING_PROGRESS_EVERY",
            100_000,
        )?;
        Ok(Config {
            mongodb_uri: config::string(
                env,
                flags.mongodb_uri.as_deref(),
                "MONGODB_URI",
                "mongodb://127.0.0.1:27017",
            ),
            mongodb_db: config::string(env, flags.mongodb_db.as_deref(), "MONGODB_DB", "colorfaas"),
            every,
            options: BillOptions {
                chunk_size,
                max_items_per_bill: max_items,
                lease_ttl,
                progress_every,
                ..BillOptions::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_env(&Env::new(), &Flags::default()).unwrap();
        assert_eq!(c.every, None);
        assert_eq!(c.mongodb_db, "colorfaas");
        assert_eq!(c.options.chunk_size, 5_000);
        assert_eq!(c.options.max_items_per_bill, 10_000);
        assert_eq!(c.options.progress_every, 100_000);
        let env: Env = [
            ("MONGODB_DB".to_owned(), "x".to_owned()),
            ("BILLING_EVERY".to_owned(), "15m".to_owned()),
            ("BILLING_CHUNK_SIZE".to_owned(), "100".to_owned()),
        ]
        .into();
        let c = Config::from_env(&env, &Flags::default()).unwrap();
        assert_eq!(c.mongodb_db, "x");
        assert_eq!(c.every, Some(Duration::from_secs(900)));
        assert_eq!(c.options.chunk_size, 100);
        let flags = Flags {
            every: Some("2s".into()),
            mongodb_db: Some("y".into()),
            ..Default::default()
        };
        let c = Config::from_env(&env, &flags).unwrap();
        assert_eq!(
            (c.every, c.mongodb_db.as_str()),
            (Some(Duration::from_secs(2)), "y")
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("BILLING_EVERY", "soon"),
            ("BILLING_EVERY", "0s"),
            ("BILLING_CHUNK_SIZE", "0"),
            ("BILLING_MAX_BILL_ITEMS", "1000000"),
            ("BILLING_LEASE_TTL", "500ms"),
            ("BILLING_PROGRESS_EVERY", "-3"),
        ] {
            let env: Env = [(k.to_owned(), v.to_owned())].into();
            let e = Config::from_env(&env, &Flags::default()).unwrap_err();
            assert!(e.to_string().starts_with(k), "{k}={v}: {e}");
        }
    }
}
