//! Where the CLI keeps its credentials (`config.json` in the user's config folder, owner-only),
//! and how the portal and gateway addresses are chosen: flag, then environment, then what
//! `login` stored, then the defaults.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

pub const DEFAULT_PORTAL: &str = "http://127.0.0.1:8080";
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8081";
pub const ENV_PORTAL: &str = "COLORFAAS_PORTAL";
pub const ENV_GATEWAY: &str = "COLORFAAS_GATEWAY";
pub const ENV_CONFIG_DIR: &str = "COLORFAAS_CONFIG_DIR";
const FILE: &str = "config.json";

/// What `login` stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub portal: String,
    pub gateway: String,
    pub email: String,
    pub user_id: String,
    /// The portal session token (`Authorization: Bearer` on `/api/v1`).
    pub token: String,
    /// The API key the CLI created for itself (for the gateway) and its id (to revoke it).
    pub key_id: String,
    pub api_key: String,
}

/// The config folder: `$COLORFAAS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/colorfaas`, else
/// `$HOME/.config/colorfaas`.
pub fn config_dir(env: &HashMap<String, String>) -> Result<PathBuf> {
    let nonempty = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(d) = nonempty(ENV_CONFIG_DIR) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = nonempty("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(d).join("colorfaas"));
    }
    if let Some(h) = nonempty("HOME") {
        return Ok(PathBuf::from(h).join(".config").join("colorfaas"));
    }
    Err(
        CliError::local("cannot find a config folder: neither HOME nor XDG_CONFIG_HOME is set")
            .hint(format!("set {ENV_CONFIG_DIR} to a folder of your own")),
    )
}

/// The credentials file in `dir`.
pub fn config_file(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the stored credentials; `None` when not logged in.
pub fn load(dir: &Path) -> Result<Option<Credentials>> {
    let path = config_file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CliError::local(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        CliError::local(format!(
            "{} is not a valid credentials file: {e}",
            path.display()
        ))
        .hint("run `colorfaas login` again (it rewrites the file)")
    })
}

/// Writes the credentials: the folder `0700`, the file `0600`, replaced atomically.
pub fn save(dir: &Path, c: &Credentials) -> Result<()> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        CliError::local(format!("cannot {what} {}: {e}", p.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("restrict", dir, e))?;
    let path = config_file(dir);
    let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
    let body = serde_json::to_vec_pretty(c).expect("credentials serialize");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("write", &path, e)
    })
}

/// Deletes the credentials file; `true` when there was one.
pub fn remove(dir: &Path) -> Result<bool> {
    let path = config_file(dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CliError::local(format!(
            "cannot delete {}: {e}",
            path.display()
        ))),
    }
}

/// Picks an address: the flag, else the environment variable, else the stored one, else the
/// default; without a trailing slash.
pub fn pick(
    flag: Option<&str>,
    env: &HashMap<String, String>,
    var: &str,
    stored: Option<&str>,
    default: &str,
) -> String {
    let v = flag
        .map(str::to_owned)
        .or_else(|| env.get(var).filter(|v| !v.is_empty()).cloned())
        .or_else(|| stored.map(str::to_owned))
        .unwrap_or_else(|| default.to_owned());
    normalize_url(&v)
}

/// `127.0.0.1:8080` → `http://127.0.0.1:8080`; trailing slashes removed.
pub fn normalize_url(v: &str) -> String {
    let v = v.trim().trim_end_matches('/');
    if v.contains("://") {
        v.to_owned()
    } else {
        format!("http://{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn config_dir_prefers_the_override_then_xdg_then_home() {
        let e = env(&[
            ("COLORFAAS_CONFIG_DIR", "/a"),
            ("XDG_CONFIG_HOME", "/b"),
            ("HOME", "/c"),
        ]);
        assert_eq!(config_dir(&e).unwrap(), PathBuf::from("/a"));
        let e = env(&[("XDG_CONFIG_HOME", "/b"), ("HOME", "/c")]);
        assert_eq!(config_dir(&e).unwrap(), PathBuf::from("/b/colorfaas"));
        let e = env(&[("HOME", "/c")]);
        assert_eq!(
            config_dir(&e).unwrap(),
            PathBuf::from("/c/.config/colorfaas")
        );
        assert_eq!(config_dir(&env(&[])).unwrap_err().code, 9);
    }

    #[test]
    fn pick_orders_flag_env_stored_default() {
        let e = env(&[("COLORFAAS_PORTAL", "10.0.0.1:1")]);
        assert_eq!(
            pick(
                Some("h:2/"),
                &e,
                ENV_PORTAL,
                Some("http://s:3"),
                DEFAULT_PORTAL
            ),
            "http://h:2"
        );
        assert_eq!(
            pick(None, &e, ENV_PORTAL, Some("http://s:3"), DEFAULT_PORTAL),
            "http://10.0.0.1:1"
        );
        assert_eq!(
            pick(
                None,
                &env(&[]),
                ENV_PORTAL,
                Some("http://s:3"),
                DEFAULT_PORTAL
            ),
            "http://s:3"
        );
        assert_eq!(
            pick(None, &env(&[]), ENV_PORTAL, None, DEFAULT_PORTAL),
            DEFAULT_PORTAL
        );
    }

    #[test]
    fn credentials_are_owner_only_and_round_trip() {
        let dir = std::env::temp_dir()
            .join(format!("cf-sdk-cfg-{}", uuid::Uuid::new_v4()))
            .join("nested");
        assert_eq!(load(&dir).unwrap(), None);
        let c = Credentials {
            portal: "http://p".into(),
            gateway: "http://g".into(),
            email: "a@b.c".into(),
            user_id: "u1".into(),
            token: "t".into(),
            key_id: "k".into(),
            api_key: "s".into(),
        };
        save(&dir, &c).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(c));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&config_file(&dir)), 0o600);
        assert!(remove(&dir).unwrap());
        assert!(!remove(&dir).unwrap());
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
