//! Worker configuration: flags override environment variables, which override defaults.

use std::path::PathBuf;
use std::time::Duration;

use common::config::{self, Backends, ConfigError, Env};
use schemas::{Resources, Runtime};

/// Command-line flags (each overrides the environment variable named in its help).
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "worker",
    about = "Color FaaS worker: runs tasks in warm Docker containers"
)]
pub struct Flags {
    /// Worker id, used in its queue name [env: WORKER_ID; default: the host name]
    #[arg(long)]
    pub id: Option<String>,
    /// HTTP address for /healthz and /metrics [env: WORKER_ADDR; default 127.0.0.1:8090]
    #[arg(long)]
    pub addr: Option<String>,
    /// CPU capacity in millicores [env: WORKER_CPU_MILLICORES; default: 1000 × cores]
    #[arg(long)]
    pub cpu_millicores: Option<String>,
    /// Memory capacity in MB for function containers [env: WORKER_MEMORY_MB; default 4096]
    #[arg(long)]
    pub memory_mb: Option<String>,
    /// Scratch disk capacity in MB [env: WORKER_DISK_MB; default 8192]
    #[arg(long)]
    pub disk_mb: Option<String>,
    /// Heartbeat interval [env: WORKER_HEARTBEAT; default 1s]
    #[arg(long)]
    pub heartbeat: Option<String>,
    /// Idle containers are removed after this long [env: WORKER_IDLE_TTL; default 10m]
    #[arg(long)]
    pub idle_ttl: Option<String>,
    /// Unacknowledged tasks the worker takes at once [env: WORKER_PREFETCH; default 64]
    #[arg(long)]
    pub prefetch: Option<String>,
    /// Folder for the code cache and agent sockets [env: WORKER_DIR; default /var/lib/colorfaas/worker-<id>]
    #[arg(long)]
    pub dir: Option<String>,
    /// Async runtime threads; 1 = everything on one thread [env: WORKER_THREADS; default 1; `auto` = one per core]
    #[arg(long)]
    pub threads: Option<String>,
}

/// Everything the worker needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Opens functions' secrets when they are loaded (`COLORFAAS_SECRETS_KEY`, the portal's).
    pub secrets_key: Option<common::secrets::SecretsKey>,
    pub worker_id: String,
    pub addr: String,
    pub backends: Backends,
    pub capacity: Resources,
    pub heartbeat: Duration,
    pub idle_ttl: Duration,
    pub prefetch: u16,
    pub work_dir: PathBuf,
    pub pids_limit: i64,
    /// Function containers get a network only when this is set (`WORKER_ALLOW_NETWORK=1`).
    pub allow_network: bool,
    /// How long shutdown waits for running tasks.
    pub drain_timeout: Duration,
    /// Spare containers kept started per runtime and size, ready to take the next cold start
    /// (`WORKER_SPARES`, default 1; 0 turns spares off).
    pub spares: usize,
    /// Runtimes that get a spare of the default size at start (`WORKER_PREWARM`, default
    /// `python3,node,exec`; empty or `none` for none). Other sizes get one after their first
    /// cold start.
    pub prewarm: Vec<Runtime>,
    /// How long background run-record writes wait to share a database round trip
    /// (`WORKER_RECORD_LINGER`, default 5ms; 0 for none).
    pub record_linger: Duration,
    /// Worker threads of the async runtime (`WORKER_THREADS`); 1 polls everything on one thread.
    pub threads: usize,
    /// Idle containers are frozen between calls (cgroup freezer, else `docker pause`), so
    /// nothing a function leaves running computes unbilled (`WORKER_FREEZE_IDLE`, default 1).
    pub freeze_idle: bool,
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

/// A `0`/`1` (or `false`/`true`) variable.
fn flag(env: &Env, key: &str, default: bool) -> Result<bool, ConfigError> {
    match env
        .get(key)
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(ConfigError::new(key, format!("{v:?} is not 0 or 1"))),
    }
}

impl Config {
    pub fn from_env(env: &Env, flags: &Flags) -> Result<Config, ConfigError> {
        let host = env
            .get("HOSTNAME")
            .cloned()
            .unwrap_or_else(|| "worker".to_owned());
        let worker_id = config::string(env, flags.id.as_deref(), "WORKER_ID", &host);
        if worker_id.is_empty()
            || worker_id.len() > 64
            || !worker_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::new(
                "WORKER_ID",
                format!("{worker_id:?} must be 1-64 letters, digits, '-' or '_'"),
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let capacity = Resources {
            cpu_millicores: config::parse(
                env,
                flags.cpu_millicores.as_deref(),
                "WORKER_CPU_MILLICORES",
                cores * 1000,
            )?,
            memory_mb: config::parse(env, flags.memory_mb.as_deref(), "WORKER_MEMORY_MB", 4096)?,
            disk_mb: config::parse(env, flags.disk_mb.as_deref(), "WORKER_DISK_MB", 8192)?,
        };
        let prefetch: u16 = config::parse(env, flags.prefetch.as_deref(), "WORKER_PREFETCH", 64)?;
        if prefetch == 0 {
            return Err(ConfigError::new("WORKER_PREFETCH", "must be at least 1"));
        }
        let default_dir = format!("/var/lib/colorfaas/worker-{worker_id}");
        // Unlike other variables an empty value is meaningful here: it turns prewarming off.
        let prewarm_raw = env
            .get("WORKER_PREWARM")
            .map_or("python3,node,exec", String::as_str);
        let prewarm = prewarm_raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "none")
            .map(|s| {
                Runtime::parse(s).ok_or_else(|| {
                    ConfigError::new(
                        "WORKER_PREWARM",
                        format!("{s:?} is not a runtime (python3, node, exec)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            secrets_key: common::secrets::SecretsKey::from_env(env)?,
            addr: config::string(env, flags.addr.as_deref(), "WORKER_ADDR", "127.0.0.1:8090"),
            backends: Backends::from_env(env),
            capacity,
            heartbeat: duration(env, flags.heartbeat.as_deref(), "WORKER_HEARTBEAT", "1s")?,
            idle_ttl: duration(env, flags.idle_ttl.as_deref(), "WORKER_IDLE_TTL", "10m")?,
            prefetch,
            work_dir: PathBuf::from(config::string(
                env,
                flags.dir.as_deref(),
                "WORKER_DIR",
                &default_dir,
            )),
            pids_limit: config::parse(env, None, "WORKER_PIDS_LIMIT", 64)?,
            allow_network: config::string(env, None, "WORKER_ALLOW_NETWORK", "0") == "1",
            drain_timeout: duration(env, None, "WORKER_DRAIN_TIMEOUT", "30s")?,
            spares: config::parse(env, None, "WORKER_SPARES", 1)?,
            record_linger: duration(env, None, "WORKER_RECORD_LINGER", "5ms")?,
            prewarm,
            worker_id,
            threads: config::threads(env, flags.threads.as_deref(), "WORKER_THREADS", 1)?,
            freeze_idle: flag(env, "WORKER_FREEZE_IDLE", true)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let env: Env = [
            ("WORKER_ID".to_owned(), "w1".to_owned()),
            ("WORKER_MEMORY_MB".to_owned(), "512".to_owned()),
        ]
        .into();
        let c = Config::from_env(&env, &Flags::default()).unwrap();
        assert_eq!(c.worker_id, "w1");
        assert_eq!(c.capacity.memory_mb, 512);
        assert_eq!(c.heartbeat, Duration::from_secs(1));
        assert_eq!(c.spares, 1);
        assert_eq!(c.prewarm, Runtime::ALL.to_vec());
        assert!(c.freeze_idle);
        let flags = Flags {
            memory_mb: Some("256".into()),
            ..Default::default()
        };
        assert_eq!(
            Config::from_env(&env, &flags).unwrap().capacity.memory_mb,
            256
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let env: Env = [("WORKER_ID".to_owned(), "no spaces".to_owned())].into();
        assert!(Config::from_env(&env, &Flags::default())
            .unwrap_err()
            .to_string()
            .starts_with("WORKER_ID"));
        let env: Env = [("WORKER_HEARTBEAT".to_owned(), "soon".to_owned())].into();
        assert!(Config::from_env(&env, &Flags::default()).is_err());
        let env: Env = [("WORKER_PREWARM".to_owned(), "python3,cobol".to_owned())].into();
        assert!(Config::from_env(&env, &Flags::default())
            .unwrap_err()
            .to_string()
            .contains("cobol"));
        let env: Env = [("WORKER_PREWARM".to_owned(), "".to_owned())].into();
        assert!(Config::from_env(&env, &Flags::default())
            .unwrap()
            .prewarm
            .is_empty());
        let env: Env = [("WORKER_FREEZE_IDLE".to_owned(), "0".to_owned())].into();
        assert!(
            !Config::from_env(&env, &Flags::default())
                .unwrap()
                .freeze_idle
        );
        let env: Env = [("WORKER_FREEZE_IDLE".to_owned(), "maybe".to_owned())].into();
        assert!(Config::from_env(&env, &Flags::default())
            .unwrap_err()
            .to_string()
            .starts_with("WORKER_FREEZE_IDLE"));
        let env: Env = [("WORKER_PREWARM".to_owned(), "none".to_owned())].into();
        assert!(Config::from_env(&env, &Flags::default())
            .unwrap()
            .prewarm
            .is_empty());
    }
}
