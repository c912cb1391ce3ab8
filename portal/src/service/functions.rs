//! Functions: create, update (a new version), read, list with a name search and the run-status
//! summary, delete. Invariants: names match `^[a-z0-9][a-z0-9-]{0,49}$` and are unique per user
//! (the `user_name_unique` index; 409); the code is validated ([`crate::upload`]) and stored in
//! the shared code store before the function document points at it; `version` starts at 1 and
//! grows by one per update, with a conditional write so two updates never share a version; every
//! version is kept in `function_versions`; deleting a function removes it (later invokes 404) but
//! never its runs or bills (money history).
//!
//! Bounds (400 outside them): `cpu_millicores` 50–4000 (default 500), `memory_mb` 64–10240
//! (default 128), `disk_mb` 16–10240 (default 64), `timeout_ms` 100–900000 (default 3000),
//! `description` ≤ 1000 characters, `args_schema` ≤ 64 arguments named like identifiers with
//! types int, float, string, bool, object, array.

use std::collections::HashMap;

use bson::doc;
use futures::TryStreamExt;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use schemas::limits::{
    ARGS, CPU_MILLICORES, DEFAULT_TIMEOUT_MS, DESCRIPTION_CHARS, DISK_MB, MEMORY_MB, TIMEOUT_MS,
};
use schemas::names::collections;
use schemas::rules::{valid_arg_name, valid_function_name, ARG_NAME_HELP, FUNCTION_NAME_HELP};
use schemas::{
    now_ms, ArgType, CodeKind, FunctionDoc, FunctionVersionDoc, Mode, Resources, RunStatus, Runtime,
};

use super::{coll, db_err, fnconfig};
use crate::error::PortalError;
use crate::state::State;
use crate::upload;

pub const DEFAULT_RESOURCES: Resources = Resources::DEFAULT;

/// `{name: type}` in the order given (a JSON object's order is kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArgsSpec(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for ArgsSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ArgsSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of argument names to types")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<ArgsSpec, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    let t = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    out.push((k, t));
                }
                Ok(ArgsSpec(out))
            }
            fn visit_unit<E>(self) -> Result<ArgsSpec, E> {
                Ok(ArgsSpec::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// Requested resources; missing ones take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesSpec {
    pub cpu_millicores: Option<u64>,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
}

/// The contract's function spec, as sent (the code travels separately as bytes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub runtime: String,
    #[serde(default)]
    pub handler: String,
    /// The code, base64: only the JSON API uses it (pages upload bytes).
    #[serde(default, skip_serializing)]
    pub code_base64: Option<String>,
    #[serde(default)]
    pub filename: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub args_schema: ArgsSpec,
    /// `sync` (default) or `async`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub resources: ResourcesSpec,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Async retries, 0–2 (default 2).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Async event age limit, 60–21600 s (default 21600).
    #[serde(default)]
    pub max_event_age_s: Option<u64>,
    /// Plain variables (`None` when absent: an update keeps the stored ones).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub env: Option<Value>,
    /// Write-only secrets: never serialized back.
    #[serde(default, deserialize_with = "present", skip_serializing)]
    pub secrets: Option<Value>,
    /// `None` when absent; `Some(Value::Null)` lifts the limit.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrency: Option<Value>,
}

/// A field that is present, `null` included (absent fields take `#[serde(default)]`'s `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl FunctionSpec {
    fn config_input(&self) -> fnconfig::ConfigInput {
        fnconfig::ConfigInput {
            env: self.env.clone(),
            secrets: self.secrets.clone(),
            max_concurrency: self.max_concurrency.clone(),
        }
    }
}

/// Run counts of one function, by status, and the time of its latest run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatusSummary {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub last_run_at_ms: Option<i64>,
}

impl StatusSummary {
    fn add(&mut self, status: RunStatus, created_at_ms: i64) {
        match status {
            RunStatus::Pending => self.pending += 1,
            RunStatus::Running => self.running += 1,
            RunStatus::Succeeded => self.succeeded += 1,
            RunStatus::Failed => self.failed += 1,
            RunStatus::TimedOut => self.timed_out += 1,
        }
        self.last_run_at_ms = Some(
            self.last_run_at_ms
                .map_or(created_at_ms, |t| t.max(created_at_ms)),
        );
    }

    /// The contract's `status` object.
    pub fn to_json(&self) -> Value {
        json!({
            "pending": self.pending,
            "running": self.running,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "last_run_at": self.last_run_at_ms.map(super::rfc3339),
        })
    }
}

/// A function and its status summary.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionView {
    pub func: FunctionDoc,
    pub status: StatusSummary,
}

impl FunctionView {
    /// The contract's function: the spec without the code, plus `version`, `created_at`,
    /// `updated_at`, `status`.
    pub fn to_json(&self) -> Value {
        let mut v = function_json(&self.func);
        v["status"] = self.status.to_json();
        v
    }
}

/// The contract's function without the status summary.
pub fn function_json(f: &FunctionDoc) -> Value {
    let args: serde_json::Map<String, Value> = f
        .args_schema
        .iter()
        .map(|(k, t)| (k.clone(), json!(t.as_str())))
        .collect();
    json!({
        "name": f.name,
        "runtime": f.runtime.as_str(),
        "handler": f.handler,
        "filename": f.filename,
        "description": f.description,
        "args_schema": args,
        "mode": f.mode.as_str(),
        "resources": {
            "cpu_millicores": f.resources.cpu_millicores,
            "memory_mb": f.resources.memory_mb,
            "disk_mb": f.resources.disk_mb,
        },
        "timeout_ms": f.timeout_ms,
        "retries": f.retries,
        "max_event_age_s": f.max_event_age_s,
        "version": f.version,
        "code_sha256": f.code_sha256,
        "code_size": f.code_size,
        "code_kind": f.code_kind.as_str(),
        "created_at": super::rfc3339(f.created_at_ms),
        "updated_at": super::rfc3339(f.updated_at_ms),
        "env": f.config.env,
        "secret_names": f.config.secrets.keys().collect::<Vec<_>>(),
        "max_concurrency": f.config.max_concurrency,
    })
}

fn check_name(name: &str) -> Result<(), PortalError> {
    if valid_function_name(name) {
        Ok(())
    } else {
        Err(PortalError::invalid(
            "name",
            format!("{name:?} is not a valid name: {FUNCTION_NAME_HELP}"),
        ))
    }
}

fn bounded(
    field: &str,
    v: Option<u64>,
    default: u64,
    (lo, hi): (u64, u64),
) -> Result<u64, PortalError> {
    let v = v.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(PortalError::invalid(
            field,
            format!("must be between {lo} and {hi} (got {v})"),
        ));
    }
    Ok(v)
}

/// The checked, typed parts of a spec (everything but the name and the code).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedSpec {
    pub runtime: Runtime,
    pub handler: String,
    pub filename: String,
    pub description: String,
    pub args_schema: Vec<(String, ArgType)>,
    pub mode: Mode,
    pub resources: Resources,
    pub timeout_ms: u64,
}

/// Validates a spec's fields (not the name or the code); 400 naming the first wrong field.
pub fn check_spec(spec: &FunctionSpec) -> Result<CheckedSpec, PortalError> {
    let runtime = Runtime::parse(spec.runtime.trim()).ok_or_else(|| {
        PortalError::invalid(
            "runtime",
            format!(
                "{:?} is not a runtime: use one of {}",
                spec.runtime,
                Runtime::choices()
            ),
        )
    })?;
    let handler = spec.handler.trim().to_owned();
    upload::check_handler_form(runtime, &handler)?;
    let description = spec.description.trim().to_owned();
    if description.chars().count() > DESCRIPTION_CHARS {
        return Err(PortalError::invalid(
            "description",
            format!("must be at most {DESCRIPTION_CHARS} characters"),
        ));
    }
    if spec.args_schema.0.len() > ARGS {
        return Err(PortalError::invalid(
            "args_schema",
            format!("at most {ARGS} arguments"),
        ));
    }
    let mut args_schema = Vec::new();
    for (name, t) in &spec.args_schema.0 {
        if !valid_arg_name(name) {
            return Err(PortalError::invalid(
                "args_schema",
                format!("{name:?} is not a valid argument name ({ARG_NAME_HELP})"),
            ));
        }
        if args_schema.iter().any(|(n, _)| n == name) {
            return Err(PortalError::invalid(
                "args_schema",
                format!("argument {name:?} appears twice"),
            ));
        }
        let t = ArgType::parse(t.trim()).ok_or_else(|| {
            PortalError::invalid(
                "args_schema",
                format!(
                    "argument {name:?} has type {t:?}; use one of {}",
                    ArgType::choices()
                ),
            )
        })?;
        args_schema.push((name.clone(), t));
    }
    let mode = match spec.mode.as_deref().map(str::trim) {
        None | Some("") => Mode::default(),
        Some(m) => Mode::parse(m).ok_or_else(|| {
            PortalError::invalid(
                "mode",
                format!("{m:?} is not a mode: use one of {}", Mode::choices()),
            )
        })?,
    };
    let r = &spec.resources;
    let resources = Resources::new(
        bounded(
            "resources.cpu_millicores",
            r.cpu_millicores,
            DEFAULT_RESOURCES.cpu_millicores,
            CPU_MILLICORES,
        )?,
        bounded(
            "resources.memory_mb",
            r.memory_mb,
            DEFAULT_RESOURCES.memory_mb,
            MEMORY_MB,
        )?,
        bounded(
            "resources.disk_mb",
            r.disk_mb,
            DEFAULT_RESOURCES.disk_mb,
            DISK_MB,
        )?,
    );
    let timeout_ms = bounded(
        "timeout_ms",
        spec.timeout_ms,
        DEFAULT_TIMEOUT_MS,
        TIMEOUT_MS,
    )?;
    Ok(CheckedSpec {
        runtime,
        handler,
        filename: spec.filename.trim().to_owned(),
        description,
        args_schema,
        mode,
        resources,
        timeout_ms,
    })
}

fn functions(st: &State) -> mongodb::Collection<FunctionDoc> {
    coll(st, collections::FUNCTIONS)
}

fn versions(st: &State) -> mongodb::Collection<FunctionVersionDoc> {
    coll(st, collections::FUNCTION_VERSIONS)
}

/// Validates `code` for the spec, stores it; returns (kind, sha256, size, filename to record).
async fn store_code(
    st: &State,
    c: &CheckedSpec,
    code: Vec<u8>,
) -> Result<(CodeKind, String, u64, String), PortalError> {
    let (runtime, handler, filename) = (c.runtime, c.handler.clone(), c.filename.clone());
    let limits = st.cfg.upload_limits;
    let (pkg, code) = tokio::task::spawn_blocking(move || {
        let pkg = upload::validate(&code, &filename, runtime, &handler, limits)?;
        if let Some((file, source)) = upload::handler_source(&code, &pkg, runtime, &handler) {
            let function = handler.rsplit_once('.').map_or("", |(_, f)| f);
            crate::codecheck::check(runtime, &file, &source, function)?;
        }
        Ok::<_, PortalError>((pkg, code))
    })
    .await
    .map_err(|e| PortalError::Internal(e.into()))??;
    let sha = common::codestore::put(&st.db, &code)
        .await
        .map_err(|e| PortalError::Unavailable(format!("storing the code failed: {e:#}")))?;
    let filename = if pkg.kind == CodeKind::Single {
        c.filename.clone()
    } else {
        String::new()
    };
    Ok((pkg.kind, sha, code.len() as u64, filename))
}

async fn record_version(st: &State, f: &FunctionDoc) {
    let v = FunctionVersionDoc {
        id: format!("{}:{}", f.id, f.version),
        function_id: f.id.clone(),
        user_id: f.user_id.clone(),
        name: f.name.clone(),
        version: f.version,
        runtime: f.runtime,
        handler: f.handler.clone(),
        filename: f.filename.clone(),
        code_sha256: f.code_sha256.clone(),
        code_size: f.code_size,
        code_kind: f.code_kind,
        created_at_ms: f.updated_at_ms,
    };
    if let Err(e) = versions(st).insert_one(&v).await {
        if !common::mongo::is_duplicate_key(&e) {
            tracing::warn!(error = %e, function_id = f.id, "recording a function version failed");
        }
    }
}

/// The spec with its handler inferred from a single uploaded file's name when none is given
/// (`adder.py` alone → `adder.handle`).
fn with_inferred_handler(spec: &FunctionSpec, code: Option<&[u8]>) -> FunctionSpec {
    let mut spec = spec.clone();
    let single = code.is_some_and(|c| upload::detect_kind(c) == CodeKind::Single);
    if spec.handler.trim().is_empty() && single {
        if let Some(runtime) = Runtime::parse(spec.runtime.trim()) {
            if let Some(h) = upload::infer_handler(runtime, spec.filename.trim()) {
                spec.handler = h;
            }
        }
    }
    spec
}

/// Creates a function from a spec and its code (a single file or a .zip / .tar.gz package).
/// 400 for a bad field or package, 409 when the user has a function of that name, 413 when the
/// code is too large.
pub async fn create(
    st: &State,
    user_id: &str,
    spec: &FunctionSpec,
    code: Vec<u8>,
) -> Result<FunctionDoc, PortalError> {
    let name = spec.name.trim();
    check_name(name)?;
    let spec = &with_inferred_handler(spec, Some(&code));
    let c = check_spec(spec)?;
    let (retries, max_event_age_s) =
        super::retries::check_spec(spec, None, st.cfg.min_event_age_s)?;
    let id = format!("f{}", uuid::Uuid::now_v7().simple());
    let owner = fnconfig::Owner {
        user_id,
        function_id: &id,
    };
    let config = fnconfig::merge(
        &Default::default(),
        &spec.config_input(),
        st.cfg.secrets_key.as_ref(),
        owner,
    )?;
    if find(st, user_id, name).await?.is_some() {
        return Err(PortalError::NameTaken(name.to_owned()));
    }
    let (code_kind, sha, size, filename) = store_code(st, &c, code).await?;
    let now = now_ms();
    let f = FunctionDoc {
        id,
        user_id: user_id.to_owned(),
        name: name.to_owned(),
        runtime: c.runtime,
        handler: c.handler,
        filename,
        description: c.description,
        args_schema: c.args_schema,
        mode: c.mode,
        resources: c.resources,
        timeout_ms: c.timeout_ms,
        version: 1,
        code_sha256: sha,
        code_size: size,
        code_kind,
        created_at_ms: now,
        updated_at_ms: now,
        retries,
        max_event_age_s,
        config,
    };
    match functions(st).insert_one(&f).await {
        Ok(_) => {}
        Err(e) if common::mongo::is_duplicate_key(&e) => {
            return Err(PortalError::NameTaken(name.to_owned()))
        }
        Err(e) => return Err(PortalError::db("storing the function", e)),
    }
    record_version(st, &f).await;
    tracing::info!(user_id, function = f.name, "function created");
    Ok(f)
}

/// Replaces a function's spec and, when `code` is given, its code: a new version. Without
/// code the stored package is kept (and the handler is checked against it). The spec's name,
/// when given, must be the function's (renaming is not supported). 400, 404, 409 (a concurrent
/// update won), 413.
pub async fn update(
    st: &State,
    user_id: &str,
    name: &str,
    spec: &FunctionSpec,
    code: Option<Vec<u8>>,
) -> Result<FunctionDoc, PortalError> {
    let old = find(st, user_id, name)
        .await?
        .ok_or(PortalError::NotFound("function"))?;
    let given = spec.name.trim();
    if !given.is_empty() && given != old.name {
        return Err(PortalError::invalid(
            "name",
            format!(
                "functions cannot be renamed: the spec says {given:?} but this is {:?}",
                old.name
            ),
        ));
    }
    let spec = &with_inferred_handler(spec, code.as_deref());
    let mut c = check_spec(spec)?;
    let (retries, max_event_age_s) =
        super::retries::check_spec(spec, Some(&old), st.cfg.min_event_age_s)?;
    let owner = fnconfig::Owner {
        user_id,
        function_id: &old.id,
    };
    let config = fnconfig::merge(
        &old.config,
        &spec.config_input(),
        st.cfg.secrets_key.as_ref(),
        owner,
    )?;
    let (code_kind, sha, size, filename) = match code {
        Some(code) => store_code(st, &c, code).await?,
        None => {
            if c.filename.is_empty() {
                c.filename = old.filename.clone();
            }
            let bytes = common::codestore::get(&st.db, &old.code_sha256)
                .await
                .map_err(|e| {
                    PortalError::Unavailable(format!("reading the stored code failed: {e:#}"))
                })?;
            store_code(st, &c, bytes).await?
        }
    };
    let mut f = old.clone();
    f.runtime = c.runtime;
    f.handler = c.handler;
    f.filename = filename;
    f.description = c.description;
    f.args_schema = c.args_schema;
    f.mode = c.mode;
    f.resources = c.resources;
    f.timeout_ms = c.timeout_ms;
    f.retries = retries;
    f.max_event_age_s = max_event_age_s;
    f.config = config;
    f.version = old.version + 1;
    f.code_sha256 = sha;
    f.code_size = size;
    f.code_kind = code_kind;
    f.updated_at_ms = now_ms();
    let r = functions(st)
        .replace_one(
            doc! {"_id": &old.id, "user_id": user_id, "version": old.version as i64},
            &f,
        )
        .await
        .map_err(db_err("updating the function"))?;
    if r.matched_count == 0 {
        // Deleted meanwhile, or another update took this version.
        return match find(st, user_id, name).await? {
            Some(_) => Err(PortalError::Conflict),
            None => Err(PortalError::NotFound("function")),
        };
    }
    record_version(st, &f).await;
    tracing::info!(
        user_id,
        function = f.name,
        version = f.version,
        "function updated"
    );
    Ok(f)
}

/// The user's function named `name`, if any.
pub async fn find(
    st: &State,
    user_id: &str,
    name: &str,
) -> Result<Option<FunctionDoc>, PortalError> {
    if !valid_function_name(name) {
        return Ok(None);
    }
    functions(st)
        .find_one(doc! {"user_id": user_id, "name": name})
        .await
        .map_err(db_err("reading the function"))
}

/// Counts of the runs of the user's functions, by function name.
async fn summaries(
    st: &State,
    user_id: &str,
    function: Option<&str>,
) -> Result<HashMap<String, StatusSummary>, PortalError> {
    let mut filter = doc! {"user_id": user_id};
    if let Some(f) = function {
        filter.insert("function", f);
    }
    let mut cur = coll::<bson::Document>(st, collections::RUNS)
        .find(filter)
        .projection(doc! {"_id": 0, "function": 1, "status": 1, "created_at_ms": 1})
        .await
        .map_err(db_err("counting runs"))?;
    let mut out: HashMap<String, StatusSummary> = HashMap::new();
    while let Some(d) = cur.try_next().await.map_err(db_err("counting runs"))? {
        let (Ok(name), Some(status)) = (
            d.get_str("function"),
            d.get_str("status").ok().and_then(RunStatus::parse),
        ) else {
            continue;
        };
        let at = schemas::lenient::int(d.get("created_at_ms"));
        out.entry(name.to_owned()).or_default().add(status, at);
    }
    Ok(out)
}

/// One function of the user with its status summary; 404 when there is none.
pub async fn get(st: &State, user_id: &str, name: &str) -> Result<FunctionView, PortalError> {
    let func = find(st, user_id, name)
        .await?
        .ok_or(PortalError::NotFound("function"))?;
    let status = summaries(st, user_id, Some(&func.name))
        .await?
        .remove(&func.name)
        .unwrap_or_default();
    Ok(FunctionView { func, status })
}

/// The user's functions whose name contains `q` (all when `q` is empty), by name, each with
/// its status summary.
pub async fn list(
    st: &State,
    user_id: &str,
    q: Option<&str>,
) -> Result<Vec<FunctionView>, PortalError> {
    let q = q.map(str::trim).unwrap_or("").to_lowercase();
    let all: Vec<FunctionDoc> = functions(st)
        .find(doc! {"user_id": user_id})
        .sort(doc! {"name": 1})
        .await
        .map_err(db_err("listing functions"))?
        .try_collect()
        .await
        .map_err(db_err("listing functions"))?;
    let mut found: Vec<FunctionDoc> = all.into_iter().filter(|f| f.name.contains(&q)).collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let only = (found.len() == 1).then(|| found[0].name.clone());
    let mut sums = summaries(st, user_id, only.as_deref()).await?;
    Ok(found
        .into_iter()
        .map(|f| {
            let status = sums.remove(&f.name).unwrap_or_default();
            FunctionView { func: f, status }
        })
        .collect())
}

/// The stored versions of the user's function, newest first; 404 when there is no such function.
pub async fn versions_of(
    st: &State,
    user_id: &str,
    name: &str,
) -> Result<Vec<FunctionVersionDoc>, PortalError> {
    let f = find(st, user_id, name)
        .await?
        .ok_or(PortalError::NotFound("function"))?;
    versions(st)
        .find(doc! {"function_id": &f.id, "user_id": user_id})
        .sort(doc! {"version": -1})
        .await
        .map_err(db_err("listing versions"))?
        .try_collect()
        .await
        .map_err(db_err("listing versions"))
}

/// Deletes the user's function (404 when there is none). Its runs and bills stay.
pub async fn delete(st: &State, user_id: &str, name: &str) -> Result<(), PortalError> {
    if !valid_function_name(name) {
        return Err(PortalError::NotFound("function"));
    }
    let Some(f) = functions(st)
        .find_one_and_delete(doc! {"user_id": user_id, "name": name})
        .await
        .map_err(db_err("deleting the function"))?
    else {
        return Err(PortalError::NotFound("function"));
    };
    tracing::info!(
        user_id,
        function = name,
        function_id = f.id,
        "function deleted"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_field_by_field() {
        let spec: FunctionSpec = serde_json::from_value(json!({
            "name": "adder", "runtime": "python3", "handler": "main.handle",
            "args_schema": {"num2": "int", "num1": "float"},
            "resources": {"memory_mb": 256}, "timeout_ms": 1000
        }))
        .unwrap();
        let c = check_spec(&spec).unwrap();
        assert_eq!(
            c.args_schema,
            vec![
                ("num2".into(), ArgType::Int),
                ("num1".into(), ArgType::Float)
            ]
        );
        assert_eq!(c.resources, Resources::new(500, 256, 64));
        assert_eq!((c.mode, c.timeout_ms), (Mode::Sync, 1000));

        let field = |v: Value| {
            let mut s = spec.clone();
            let patch: FunctionSpec = serde_json::from_value(v).unwrap();
            if !patch.runtime.is_empty() {
                s.runtime = patch.runtime;
            }
            if !patch.args_schema.0.is_empty() {
                s.args_schema = patch.args_schema;
            }
            if patch.mode.is_some() {
                s.mode = patch.mode;
            }
            if patch.timeout_ms.is_some() {
                s.timeout_ms = patch.timeout_ms;
            }
            if patch.resources != ResourcesSpec::default() {
                s.resources = patch.resources;
            }
            check_spec(&s).unwrap_err().field().unwrap().to_owned()
        };
        assert_eq!(field(json!({"runtime": "ruby"})), "runtime");
        assert_eq!(field(json!({"args_schema": {"a": "date"}})), "args_schema");
        assert_eq!(field(json!({"mode": "later"})), "mode");
        assert_eq!(field(json!({"timeout_ms": 5})), "timeout_ms");
        assert_eq!(
            field(json!({"resources": {"memory_mb": 1}})),
            "resources.memory_mb"
        );
    }

    #[test]
    fn summaries_count_by_status() {
        let mut s = StatusSummary::default();
        s.add(RunStatus::Succeeded, 5);
        s.add(RunStatus::TimedOut, 9);
        s.add(RunStatus::Pending, 7);
        assert_eq!((s.succeeded, s.timed_out, s.pending), (1, 1, 1));
        assert_eq!(s.last_run_at_ms, Some(9));
        assert_eq!(s.to_json()["timed_out"], 1);
    }
}
