//! The function manifest `colorfaas.json`: the function spec of the contract without the code,
//! plus an optional `ignore` list. Read strictly (unknown fields are errors: they are typos).

use std::path::{Path, PathBuf};

use schemas::limits::{
    ARGS, CPU_MILLICORES, DEFAULT_TIMEOUT_MS, DESCRIPTION_CHARS, DISK_MB, MEMORY_MB, TIMEOUT_MS,
};
use schemas::limits::{ENV_BYTES, MAX_CONCURRENCY};
use schemas::rules::{valid_env_name, valid_function_name, ENV_NAME_RULE, FUNCTION_NAME_HELP};
use schemas::{ArgType, Mode, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CliError, Result};

pub const FILE: &str = "colorfaas.json";

/// A function's requested resources (a missing field takes its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    pub cpu_millicores: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

impl Default for Resources {
    fn default() -> Self {
        let d = schemas::Resources::DEFAULT;
        Resources {
            cpu_millicores: d.cpu_millicores,
            memory_mb: d.memory_mb,
            disk_mb: d.disk_mb,
        }
    }
}

fn default_mode() -> String {
    Mode::default().as_str().to_owned()
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// `colorfaas.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub runtime: String,
    pub handler: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub args_schema: Map<String, Value>,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Async retries, 0–2 (the platform's default, 2, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Async event age limit in seconds, 60–21600 (the platform's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_age_s: Option<u64>,
    /// Plain environment variables of the handler (secrets are not kept in files: set them in
    /// the portal or through the JSON API; a deploy keeps them).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// At most this many runs at once, cluster-wide (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Extra ignore patterns (same syntax as `.colorfaasignore`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
}

/// Whether `name` is a valid function name (the contract's rule, `schemas::rules`).
pub fn valid_name(name: &str) -> bool {
    valid_function_name(name)
}

pub fn name_error(name: &str) -> CliError {
    CliError::usage(format!(
        "invalid function name {name:?}: use {FUNCTION_NAME_HELP}"
    ))
    .hint("for example `colorfaas init my-function --runtime python3`")
}

/// The usage error for a runtime the platform does not have.
pub fn unknown_runtime(runtime: &str) -> CliError {
    CliError::usage(format!(
        "unknown runtime {runtime:?}: use one of {}",
        Runtime::choices()
    ))
}

impl Manifest {
    /// Reads and validates `<dir>/colorfaas.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CliError::usage(format!("no {FILE} in {}", dir.display())).hint(
                    "run this in a function folder (or pass --dir), or create one with `colorfaas init <name> --runtime python3`",
                )
            } else {
                CliError::local(format!("cannot read {}: {e}", path.display()))
            }
        })?;
        let m = Manifest::parse(&text).map_err(|e| CliError {
            message: format!("{}: {}", path.display(), e.message),
            ..e
        })?;
        m.check_handler(dir)?;
        Ok(m)
    }

    /// Parses and validates a manifest's text (not the handler's presence).
    pub fn parse(text: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| {
            CliError::usage(format!("invalid manifest: {e}")).hint(format!(
                "{FILE} is JSON with the fields name, runtime, handler, description, args_schema, mode, resources, timeout_ms, retries, max_event_age_s, env, max_concurrency, ignore (see sdk/README.md)"
            ))
        })?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(CliError::usage(msg));
        if !valid_name(&self.name) {
            return Err(name_error(&self.name));
        }
        let Some(runtime) = Runtime::parse(&self.runtime) else {
            return Err(unknown_runtime(&self.runtime));
        };
        if self.handler.trim().is_empty() {
            return bad("handler is empty".into());
        }
        if runtime != Runtime::Exec {
            match self.handler.rsplit_once('.') {
                Some((m, f)) if !m.is_empty() && !f.is_empty() => {}
                _ => {
                    return bad(format!(
                        "handler {:?} must be module.function, e.g. {}",
                        self.handler,
                        if runtime == Runtime::Node {
                            "index.handle"
                        } else {
                            "main.handle"
                        }
                    ))
                }
            }
        }
        for (arg, ty) in &self.args_schema {
            if ty.as_str().and_then(ArgType::parse).is_none() {
                return bad(format!(
                    "args_schema.{arg} is {ty}: use one of {}",
                    ArgType::choices()
                ));
            }
        }
        if Mode::parse(&self.mode).is_none() {
            return bad(format!(
                "mode {:?} must be one of {}",
                self.mode,
                Mode::choices()
            ));
        }
        if self.description.chars().count() > DESCRIPTION_CHARS {
            return bad(format!(
                "description is longer than {DESCRIPTION_CHARS} characters"
            ));
        }
        if self.args_schema.len() > ARGS {
            return bad(format!("args_schema has more than {ARGS} arguments"));
        }
        let r = self.resources;
        for (field, v, (lo, hi)) in [
            ("resources.cpu_millicores", r.cpu_millicores, CPU_MILLICORES),
            ("resources.memory_mb", r.memory_mb, MEMORY_MB),
            ("resources.disk_mb", r.disk_mb, DISK_MB),
            ("timeout_ms", self.timeout_ms, TIMEOUT_MS),
        ] {
            if !(lo..=hi).contains(&v) {
                return bad(format!("{field} is {v}: it must be {lo} to {hi}"));
            }
        }
        let (lo, hi) = schemas::rules::RETRIES;
        if let Some(v) = self.retries.filter(|v| !(lo..=hi).contains(v)) {
            return bad(format!("retries is {v}: it must be {lo} to {hi}"));
        }
        let (lo, hi) = schemas::rules::MAX_EVENT_AGE_S;
        if let Some(v) = self.max_event_age_s.filter(|v| !(lo..=hi).contains(v)) {
            return bad(format!("max_event_age_s is {v}: it must be {lo} to {hi}"));
        }
        self.validate_config()
    }

    /// `env` and `max_concurrency`: the portal's rules, checked before a deploy.
    fn validate_config(&self) -> Result<()> {
        let bad = |m: String| Err(CliError::usage(format!("invalid manifest: {m}")));
        if let Some(name) = self.env.keys().find(|k| !valid_env_name(k)) {
            return bad(format!("env name {name:?}: use {ENV_NAME_RULE}"));
        }
        let bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > ENV_BYTES {
            return bad(format!(
                "env holds {bytes} bytes of names and values; at most {ENV_BYTES}"
            ));
        }
        let (lo, hi) = MAX_CONCURRENCY;
        if let Some(n) = self.max_concurrency.filter(|n| !(lo..=hi).contains(n)) {
            return bad(format!("max_concurrency is {n}: it must be {lo} to {hi}"));
        }
        Ok(())
    }

    /// The files that may hold the handler, relative to the function folder, in the order
    /// the runtime looks for them.
    pub fn handler_candidates(&self) -> Vec<PathBuf> {
        match Runtime::parse(&self.runtime) {
            Some(Runtime::Exec) => vec![PathBuf::from(self.handler.trim_start_matches('/'))],
            rt => {
                let module = self.handler.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
                if rt == Some(Runtime::Node) {
                    ["", ".js", ".cjs", ".mjs", ".json", "/index.js"]
                        .iter()
                        .map(|ext| PathBuf::from(format!("{module}{ext}")))
                        .collect()
                } else {
                    let base = module.replace('.', "/");
                    vec![
                        PathBuf::from(format!("{base}.py")),
                        PathBuf::from(format!("{base}/__init__.py")),
                    ]
                }
            }
        }
    }

    /// Fails when no handler file exists in `dir`.
    fn check_handler(&self, dir: &Path) -> Result<()> {
        let c = self.handler_candidates();
        if c.iter().any(|p| dir.join(p).is_file()) {
            return Ok(());
        }
        Err(CliError::usage(format!(
            "handler {:?}: {} not found in {}",
            self.handler,
            c[0].display(),
            dir.display()
        ))
        .hint(format!("fix \"handler\" in {FILE} or add the file")))
    }

    /// The contract's function spec with the code.
    pub fn spec(&self, code_base64: String, filename: &str) -> Value {
        let mut spec = serde_json::json!({
            "name": self.name,
            "runtime": self.runtime,
            "handler": self.handler,
            "code_base64": code_base64,
            "filename": filename,
            "description": self.description,
            "args_schema": self.args_schema,
            "mode": self.mode,
            "resources": self.resources,
            "timeout_ms": self.timeout_ms,
            "env": self.env,
            "max_concurrency": self.max_concurrency,
        });
        if let Some(r) = self.retries {
            spec["retries"] = r.into();
        }
        if let Some(a) = self.max_event_age_s {
            spec["max_event_age_s"] = a.into();
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"name":"adder","runtime":"python3","handler":"main.handle",
        "args_schema":{"a":"int"},"timeout_ms":1000}"#;

    #[test]
    fn a_good_manifest_gets_defaults() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.mode, "sync");
        assert_eq!(m.resources, Resources::default());
        assert_eq!(m.timeout_ms, 1000);
        assert_eq!((m.retries, m.max_event_age_s), (None, None));
        let spec = m.spec(String::new(), "main.py");
        assert!(
            spec.get("retries").is_none(),
            "absent: the platform's default"
        );
        let spec = m.spec("eA==".into(), "main.py");
        assert_eq!(spec["args_schema"]["a"], "int");
        assert_eq!(spec["resources"]["memory_mb"], 128);
        let m = Manifest::parse(
            r#"{"name":"a","runtime":"exec","handler":"h","retries":0,"max_event_age_s":60}"#,
        )
        .unwrap();
        assert_eq!(m.spec(String::new(), "h")["retries"], 0);
        assert_eq!(m.spec(String::new(), "h")["max_event_age_s"], 60);
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let cases = [
            (
                r#"{"name":"Bad","runtime":"python3","handler":"m.h"}"#,
                "invalid function name",
            ),
            (
                r#"{"name":"a","runtime":"ruby","handler":"m.h"}"#,
                "unknown runtime \"ruby\"",
            ),
            (
                r#"{"name":"a","runtime":"python3","handler":"main"}"#,
                "module.function",
            ),
            (
                r#"{"name":"a","runtime":"node","handler":"m.h","mode":"later"}"#,
                "mode",
            ),
            (
                r#"{"name":"a","runtime":"exec","handler":"h","args_schema":{"x":"date"}}"#,
                "args_schema.x",
            ),
            (
                r#"{"name":"a","runtime":"exec","handler":"h","timeout_ms":0}"#,
                "timeout_ms",
            ),
            (
                r#"{"name":"a","runtime":"exec","handler":"h","retries":3}"#,
                "retries",
            ),
            (
                r#"{"name":"a","runtime":"exec","handler":"h","max_event_age_s":59}"#,
                "max_event_age_s",
            ),
            (
                r#"{"name":"a","runtime":"exec","handler":"h","tiemout_ms":5}"#,
                "unknown field `tiemout_ms`",
            ),
            (r#"{"name":"a","#, "invalid manifest"),
            (
                r#"{"name":"a","runtime":"exec","handler":"h","env":{"lower":"x"}}"#,
                "env name \"lower\"",
            ),
            (
                r#"{"name":"a","runtime":"exec","handler":"h","env":{"COLORFAAS_X":"x"}}"#,
                "env name",
            ),
            (
                r#"{"name":"a","runtime":"exec","handler":"h","max_concurrency":0}"#,
                "max_concurrency",
            ),
            (
                r#"{"name":"a","runtime":"exec","handler":"h","secrets":{"A":"b"}}"#,
                "unknown field `secrets`",
            ),
        ];
        for (text, want) in cases {
            let e = Manifest::parse(text).unwrap_err();
            assert_eq!(e.code, 2, "{text}");
            assert!(e.message.contains(want), "{text}: {}", e.message);
        }
    }

    #[test]
    fn handler_files_per_runtime() {
        let m = |rt: &str, h: &str| Manifest {
            runtime: rt.into(),
            handler: h.into(),
            ..Manifest::parse(GOOD).unwrap()
        };
        assert_eq!(
            m("python3", "pkg.mod.handle").handler_candidates()[0],
            PathBuf::from("pkg/mod.py")
        );
        assert!(m("node", "index.handle")
            .handler_candidates()
            .contains(&PathBuf::from("index.js")));
        assert_eq!(
            m("exec", "/bin/run").handler_candidates(),
            vec![PathBuf::from("bin/run")]
        );
    }
}
