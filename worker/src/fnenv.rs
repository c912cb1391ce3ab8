//! The environment a function's handler gets: its `env` and its secrets, opened here with
//! `COLORFAAS_SECRETS_KEY` at the moment a container is loaded with the function (the agent's
//! init frame carries them; a container serves one function version for its whole life, so
//! nothing reaches another function). Names the platform reserves (`COLORFAAS_*`) or that break
//! the rule are dropped. Opened values live only in this map and the init frame: never logged.

use std::collections::BTreeMap;

use common::secrets::SecretsKey;
use schemas::rules::valid_env_name;
use schemas::InvocationMsg;

/// Why a function's secrets could not be given to it (a platform failure, not the function's).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("the function has secrets but this worker has no COLORFAAS_SECRETS_KEY")]
    NoKey,
    #[error("the function's secret {0:?} could not be opened on this worker (key mismatch?)")]
    Sealed(String),
}

/// `env` then the opened secrets (a secret wins a name clash, which the portal refuses anyway).
pub fn function_env(
    key: Option<&SecretsKey>,
    inv: &InvocationMsg,
) -> Result<BTreeMap<String, String>, EnvError> {
    let cfg = &inv.config;
    let mut out: BTreeMap<String, String> = cfg
        .env
        .iter()
        .filter(|(k, v)| valid_env_name(k) && !v.contains('\0'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if cfg.secrets.is_empty() {
        return Ok(out);
    }
    let key = key.ok_or(EnvError::NoKey)?;
    for (name, sealed) in &cfg.secrets {
        if !valid_env_name(name) {
            continue;
        }
        let value = key
            .open(&inv.user_id, &inv.function_id, name, sealed)
            .map_err(|_| EnvError::Sealed(name.clone()))?;
        if !value.contains('\0') {
            out.insert(name.clone(), value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> InvocationMsg {
        let mut i: InvocationMsg = serde_json::from_value(serde_json::json!({
            "run_id": "r", "user_id": "u", "function_id": "f", "function": "fn", "version": 1,
            "runtime": "python3", "handler": "main.handle", "code_sha256": "x",
            "code_kind": "single", "resources": {"cpu_millicores": 100, "memory_mb": 64, "disk_mb": 16},
            "timeout_ms": 1000, "mode": "sync", "args": {}, "created_at_ms": 0
        }))
        .unwrap();
        i.config.env = [
            ("A".to_owned(), "1".to_owned()),
            ("COLORFAAS_RUN_ID".to_owned(), "forged".to_owned()),
        ]
        .into();
        i
    }

    #[test]
    fn env_and_opened_secrets() {
        let k = SecretsKey::from_hex(&"11".repeat(32)).unwrap();
        let mut i = inv();
        assert_eq!(
            function_env(None, &i).unwrap().len(),
            1,
            "reserved names dropped"
        );
        i.config
            .secrets
            .insert("S".into(), k.seal("u", "f", "S", "shh"));
        let env = function_env(Some(&k), &i).unwrap();
        assert_eq!((env["A"].as_str(), env["S"].as_str()), ("1", "shh"));
        assert_eq!(function_env(None, &i), Err(EnvError::NoKey));
        let other = SecretsKey::from_hex(&"22".repeat(32)).unwrap();
        assert_eq!(
            function_env(Some(&other), &i),
            Err(EnvError::Sealed("S".into()))
        );
        // Moved to another function: does not open.
        i.function_id = "g".into();
        assert!(function_env(Some(&k), &i).is_err());
    }
}
