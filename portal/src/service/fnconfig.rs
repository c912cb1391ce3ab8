//! A function's run-time configuration from its spec (contract v1.1): `env`, `secrets` and
//! `max_concurrency`, checked and merged with what is stored. Rules: names match
//! `^[A-Z_][A-Z0-9_]{0,63}$` and are not `COLORFAAS_*`; values are strings without NUL; `env`
//! and `secrets` each hold at most 4 KiB of names and values; a name is not both a variable and
//! a secret; `max_concurrency` is null or 1–1000. On update an omitted field keeps what is
//! stored (`env: {}` clears the variables, `max_concurrency: null` lifts the limit), and
//! `secrets: {"NAME": null}` removes one secret. Secret values are sealed here
//! (`common::secrets`) and never written, logged or echoed in clear: error messages name the
//! secret, never its value.

use std::collections::BTreeMap;

use serde_json::Value;

use common::secrets::{sealed_len, SecretsKey};
use schemas::limits::{ENV_BYTES, MAX_CONCURRENCY};
use schemas::rules::{valid_env_name, ENV_NAME_RULE};
use schemas::FunctionConfig;

use crate::error::PortalError;

/// The configuration fields of a spec as sent: `None` when absent, `Some(Value::Null)` for an
/// explicit `null`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigInput {
    pub env: Option<Value>,
    pub secrets: Option<Value>,
    pub max_concurrency: Option<Value>,
}

/// Whose secrets these are (the sealed values are bound to it).
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub user_id: &'a str,
    pub function_id: &'a str,
}

/// The new configuration: `input` over `old` (empty for a new function).
pub fn merge(
    old: &FunctionConfig,
    input: &ConfigInput,
    key: Option<&SecretsKey>,
    owner: Owner<'_>,
) -> Result<FunctionConfig, PortalError> {
    let env = match &input.env {
        None => old.env.clone(),
        Some(Value::Null) => BTreeMap::new(),
        Some(v) => plain_env(v)?,
    };
    let secrets = match &input.secrets {
        None | Some(Value::Null) => old.secrets.clone(),
        Some(v) => merge_secrets(&old.secrets, v, key, owner)?,
    };
    if let Some(both) = env.keys().find(|k| secrets.contains_key(*k)) {
        return Err(PortalError::invalid(
            "env",
            format!("{both:?} is both a variable and a secret; use one"),
        ));
    }
    let max_concurrency = match &input.max_concurrency {
        None => old.max_concurrency,
        Some(Value::Null) => None,
        Some(v) => Some(concurrency(v)?),
    };
    Ok(FunctionConfig {
        env,
        secrets,
        max_concurrency,
    })
}

fn check_name(field: &str, name: &str) -> Result<(), PortalError> {
    if valid_env_name(name) {
        Ok(())
    } else {
        Err(PortalError::invalid(
            field,
            format!("{name:?} is not a valid variable name: {ENV_NAME_RULE}"),
        ))
    }
}

fn plain_env(v: &Value) -> Result<BTreeMap<String, String>, PortalError> {
    let Value::Object(m) = v else {
        return Err(PortalError::invalid(
            "env",
            "must be an object of variable names to string values",
        ));
    };
    let mut out = BTreeMap::new();
    let mut bytes = 0;
    for (name, value) in m {
        check_name("env", name)?;
        let Value::String(s) = value else {
            return Err(PortalError::invalid(
                "env",
                format!("the value of {name:?} must be a string"),
            ));
        };
        if s.contains('\0') {
            return Err(PortalError::invalid(
                "env",
                format!("the value of {name:?} contains a NUL character"),
            ));
        }
        bytes += name.len() + s.len();
        out.insert(name.clone(), s.clone());
    }
    check_size("env", bytes)?;
    Ok(out)
}

fn check_size(field: &str, bytes: usize) -> Result<(), PortalError> {
    if bytes > ENV_BYTES {
        return Err(PortalError::invalid(
            field,
            format!("holds {bytes} bytes of names and values; at most {ENV_BYTES} are allowed"),
        ));
    }
    Ok(())
}

fn merge_secrets(
    old: &BTreeMap<String, String>,
    v: &Value,
    key: Option<&SecretsKey>,
    owner: Owner<'_>,
) -> Result<BTreeMap<String, String>, PortalError> {
    let Value::Object(m) = v else {
        return Err(PortalError::invalid(
            "secrets",
            "must be an object of secret names to string values (or null to remove one)",
        ));
    };
    let mut out = old.clone();
    for (name, value) in m {
        check_name("secrets", name)?;
        match value {
            Value::Null => {
                out.remove(name);
            }
            Value::String(s) => {
                if s.contains('\0') {
                    return Err(PortalError::invalid(
                        "secrets",
                        format!("the value of secret {name:?} contains a NUL character"),
                    ));
                }
                let key = key.ok_or_else(|| {
                    PortalError::Unavailable(
                        "secrets cannot be stored: this platform has no COLORFAAS_SECRETS_KEY configured"
                            .to_owned(),
                    )
                })?;
                out.insert(
                    name.clone(),
                    key.seal(owner.user_id, owner.function_id, name, s),
                );
            }
            _ => {
                return Err(PortalError::invalid(
                    "secrets",
                    format!("the value of secret {name:?} must be a string, or null to remove it"),
                ))
            }
        }
    }
    let bytes: usize = out.iter().map(|(n, s)| n.len() + sealed_len(s)).sum();
    check_size("secrets", bytes)?;
    Ok(out)
}

fn concurrency(v: &Value) -> Result<u32, PortalError> {
    let (lo, hi) = MAX_CONCURRENCY;
    v.as_u64()
        .filter(|n| (u64::from(lo)..=u64::from(hi)).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| {
            PortalError::invalid(
                "max_concurrency",
                format!("must be null (no limit) or a whole number from {lo} to {hi}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OWNER: Owner<'static> = Owner {
        user_id: "u",
        function_id: "f",
    };

    fn key() -> SecretsKey {
        SecretsKey::from_hex(&"ab".repeat(32)).unwrap()
    }

    fn input(v: Value) -> ConfigInput {
        ConfigInput {
            env: v.get("env").cloned(),
            secrets: v.get("secrets").cloned(),
            max_concurrency: v.get("max_concurrency").cloned(),
        }
    }

    fn field_of(r: Result<FunctionConfig, PortalError>) -> String {
        r.unwrap_err().field().unwrap_or("-").to_owned()
    }

    #[test]
    fn env_rules() {
        let k = key();
        let ok = merge(
            &FunctionConfig::default(),
            &input(json!({"env": {"LOG_LEVEL": "debug", "_X": ""}})),
            Some(&k),
            OWNER,
        )
        .unwrap();
        assert_eq!(ok.env["LOG_LEVEL"], "debug");
        for bad in [
            json!({"env": {"log": "x"}}),
            json!({"env": {"COLORFAAS_RUN_ID": "x"}}),
            json!({"env": {"A": 1}}),
            json!({"env": {"A": "a\u{0}b"}}),
            json!({"env": ["A"]}),
            json!({"env": {"A": "x".repeat(ENV_BYTES)}}),
        ] {
            let r = merge(
                &FunctionConfig::default(),
                &input(bad.clone()),
                Some(&k),
                OWNER,
            );
            assert_eq!(field_of(r), "env", "{bad}");
        }
        let exact = json!({"env": {"A": "x".repeat(ENV_BYTES - 1)}});
        assert!(merge(&FunctionConfig::default(), &input(exact), Some(&k), OWNER).is_ok());
    }

    #[test]
    fn secrets_are_sealed_kept_and_removed() {
        let k = key();
        let first = merge(
            &FunctionConfig::default(),
            &input(json!({"secrets": {"DB_PASSWORD": "s3cr3t", "TOKEN": "t"}})),
            Some(&k),
            OWNER,
        )
        .unwrap();
        assert!(!format!("{first:?}").contains("s3cr3t"));
        assert_eq!(
            k.open("u", "f", "DB_PASSWORD", &first.secrets["DB_PASSWORD"])
                .unwrap(),
            "s3cr3t"
        );
        // Omitted: kept. Null entry: removed. Others untouched.
        let kept = merge(&first, &input(json!({"env": {}})), Some(&k), OWNER).unwrap();
        assert_eq!(kept.secrets, first.secrets);
        let removed = merge(
            &first,
            &input(json!({"secrets": {"TOKEN": null}})),
            Some(&k),
            OWNER,
        )
        .unwrap();
        assert_eq!(removed.secrets.keys().collect::<Vec<_>>(), ["DB_PASSWORD"]);
        assert_eq!(removed.secrets["DB_PASSWORD"], first.secrets["DB_PASSWORD"]);
        // Errors name the secret, never its value.
        let e = merge(
            &first,
            &input(json!({"secrets": {"bad name": "hunter2"}})),
            Some(&k),
            OWNER,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(e.field(), Some("secrets"));
        let big = json!({"secrets": {"BIG": "x".repeat(ENV_BYTES)}});
        assert_eq!(
            field_of(merge(&first, &input(big), Some(&k), OWNER)),
            "secrets"
        );
        let both = json!({"env": {"TOKEN": "x"}});
        assert_eq!(
            field_of(merge(&first, &input(both), Some(&k), OWNER)),
            "env"
        );
        // No key configured: setting one is refused, keeping and removing still work.
        let none = merge(&first, &input(json!({"secrets": {"X": "y"}})), None, OWNER);
        assert!(matches!(none, Err(PortalError::Unavailable(_))));
        assert!(merge(
            &first,
            &input(json!({"secrets": {"TOKEN": null}})),
            None,
            OWNER
        )
        .is_ok());
    }

    #[test]
    fn max_concurrency_rules() {
        let k = key();
        let set = merge(
            &FunctionConfig::default(),
            &input(json!({"max_concurrency": 2})),
            Some(&k),
            OWNER,
        )
        .unwrap();
        assert_eq!(set.max_concurrency, Some(2));
        assert_eq!(
            merge(&set, &input(json!({})), Some(&k), OWNER)
                .unwrap()
                .max_concurrency,
            Some(2)
        );
        let lifted = merge(
            &set,
            &input(json!({"max_concurrency": null})),
            Some(&k),
            OWNER,
        );
        assert_eq!(lifted.unwrap().max_concurrency, None);
        for bad in [json!(0), json!(-1), json!(1.5), json!("2"), json!(1001)] {
            let r = merge(
                &set,
                &input(json!({ "max_concurrency": bad })),
                Some(&k),
                OWNER,
            );
            assert_eq!(field_of(r), "max_concurrency", "{bad}");
        }
    }
}
