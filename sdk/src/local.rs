//! `colorfaas run-local`: one invocation in the same runtime image, with the same agent and the
//! same locked-down container the workers use (the worker crate's `docker`, `agent` and `code`
//! modules), but without the platform: no portal, queue, dispatcher or billing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use schemas::{RunStatus, Runtime};
use serde_json::Value;
use worker::agent::{AgentContext, CallError};
use worker::docker::{Containers, Load, Spec};

use crate::error::{exit, CliError, Result};
use crate::manifest::Manifest;
use crate::package;

/// The outcome of a local run.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRun {
    pub run_id: String,
    /// `succeeded`, `failed` or `timed_out`.
    pub status: RunStatus,
    pub result: Option<Value>,
    /// `(code, message)` with the platform's run error codes.
    pub error: Option<(String, String)>,
    pub logs: String,
    pub duration_ms: u64,
    /// How long the container took to start (the cold start).
    pub start_ms: u64,
}

impl LocalRun {
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "run_id": self.run_id,
            "status": self.status.as_str(),
            "logs": self.logs,
            "duration_ms": self.duration_ms,
            "start_ms": self.start_ms,
        });
        if let Some(r) = &self.result {
            v["result"] = r.clone();
        }
        if let Some((code, message)) = &self.error {
            v["error"] = serde_json::json!({"code": code, "message": message});
        }
        v
    }
}

/// Same as the worker's default `WORKER_PIDS_LIMIT`.
const PIDS_LIMIT: i64 = 64;

/// Packs `dir` (honouring the ignore rules, like `deploy`), unpacks it as a worker would, runs
/// `event` once in a fresh container and removes everything it made.
pub async fn run(
    dir: &Path,
    manifest: &Manifest,
    event: &Value,
    exclude: &[PathBuf],
) -> Result<LocalRun> {
    let runtime = Runtime::parse(&manifest.runtime)
        .ok_or_else(|| CliError::usage(format!("unknown runtime {:?}", manifest.runtime)))?;
    let (_, pkg) = package::package_dir(dir, manifest, exclude, &mut |_| {})?;

    let docker =
        bollard::Docker::connect_with_defaults().map_err(|e| docker_error(&e.to_string()))?;
    docker
        .ping()
        .await
        .map_err(|e| docker_error(&e.to_string()))?;
    if docker.inspect_image(runtime.image()).await.is_err() {
        return Err(CliError::local(format!(
            "the runtime image {} is missing",
            runtime.image()
        ))
        .hint("build the images with `bash scripts/build-images.sh` (or `bash scripts/stack.sh up`)"));
    }

    let id = uuid::Uuid::new_v4().simple().to_string();
    let work = std::env::temp_dir().join(format!("colorfaas-local-{}", &id[..12]));
    let outcome = run_in(&work, &id, runtime, manifest, &pkg, event, docker).await;
    let _ = std::fs::remove_dir_all(&work);
    outcome
}

fn docker_error(e: &str) -> CliError {
    CliError::local(format!("cannot reach the Docker engine: {e}")).hint(
        "run-local needs a running Docker engine and permission to use it (root, or the docker group); DOCKER_HOST picks another engine",
    )
}

async fn run_in(
    work: &Path,
    id: &str,
    runtime: Runtime,
    manifest: &Manifest,
    pkg: &package::Package,
    event: &Value,
    docker: bollard::Docker,
) -> Result<LocalRun> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |e: std::io::Error| CliError::local(format!("cannot prepare {}: {e}", work.display()));
    let code_dir = work.join("code");
    std::fs::create_dir_all(work).map_err(io)?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    worker::code::unpack(pkg.bytes(), pkg.kind(), pkg.filename(), &code_dir)
        .map_err(|e| CliError::usage(format!("the package cannot be unpacked: {e:#}")))?;

    let containers = Containers::new(
        docker,
        &format!("local-{}", &id[..12]),
        work,
        PIDS_LIMIT,
        false,
    );
    let r = manifest.resources;
    let memory_mb = r.memory_mb.max(16);
    let key = format!("local/{}", manifest.name);
    let spec = Spec {
        key: &key,
        runtime,
        resources: schemas::Resources::new(r.cpu_millicores, memory_mb, r.disk_mb),
    };
    let load = Load {
        handler: &manifest.handler,
        function: &manifest.name,
        version: 0,
        code_dir: &code_dir,
        env: &manifest.env,
    };
    let t0 = Instant::now();
    let mut c = containers.start(&spec).await.map_err(|e| {
        CliError::local(format!("the function's container could not start: {e:#}"))
            .hint("check that the runtime images are built (`bash scripts/build-images.sh`) and that Docker works (`docker run --rm hello-world`)")
    })?;
    if let Err(e) = c.load(&load).await {
        containers.remove(&c.id, &c.name).await;
        return Err(CliError::local(format!(
            "the function's container could not load it: {e:#}"
        )));
    }
    let start_ms = t0.elapsed().as_millis() as u64;

    let run_id = format!("local-{id}");
    let deadline_ms = schemas::now_ms() + manifest.timeout_ms as i64;
    let ctx = AgentContext {
        run_id: &run_id,
        function: &manifest.name,
        version: 0,
        deadline_ms,
        memory_mb: r.memory_mb,
    };
    let t1 = Instant::now();
    let call = tokio::select! {
        c = tokio::time::timeout(
            Duration::from_millis(manifest.timeout_ms.max(1)),
            c.conn.call(&run_id, event, ctx),
        ) => Some(c),
        _ = tokio::signal::ctrl_c() => None,
    };
    let wall_ms = (t1.elapsed().as_micros() as u64).div_ceil(1000).max(1);
    let mut out = LocalRun {
        run_id: run_id.clone(),
        status: RunStatus::Failed,
        result: None,
        error: None,
        logs: String::new(),
        duration_ms: wall_ms,
        start_ms,
    };
    let fail = |code: &str, msg: String| Some((code.to_owned(), msg));
    match call {
        None => {
            containers.remove(&c.id, &c.name).await;
            return Err(CliError::new(130, "interrupted; the container was removed"));
        }
        Some(Ok(Ok(resp))) => {
            out.duration_ms = resp.duration_us.div_ceil(1000).max(1);
            out.logs = resp.logs;
            if resp.ok {
                out.status = RunStatus::Succeeded;
                out.result = Some(resp.result.unwrap_or(Value::Null));
            } else {
                let e = resp.error.unwrap_or(worker::agent::AgentError {
                    kind: "exception".into(),
                    message: "the function failed".into(),
                });
                let code = match e.kind.as_str() {
                    "exit" => schemas::run_error_codes::FUNCTION_EXIT,
                    "bad_result" => schemas::run_error_codes::BAD_RESULT,
                    "load" => schemas::run_error_codes::FUNCTION_LOAD,
                    "bad_request" => schemas::run_error_codes::PLATFORM_WORKER,
                    _ => schemas::run_error_codes::FUNCTION_ERROR,
                };
                out.error = fail(code, e.message);
            }
        }
        Some(Ok(Err(CallError::Gone(_)))) => {
            let oom = containers.was_oom_killed(&c.id).await.unwrap_or(false);
            out.error = if oom {
                fail(
                    schemas::run_error_codes::OUT_OF_MEMORY,
                    format!(
                        "the function ran out of memory (limit {} MB) and was killed",
                        r.memory_mb
                    ),
                )
            } else {
                fail(
                    schemas::run_error_codes::FUNCTION_ERROR,
                    "the function's runtime crashed".into(),
                )
            };
        }
        Some(Ok(Err(e @ CallError::Protocol(_)))) => {
            out.error = fail(schemas::run_error_codes::PLATFORM_WORKER, e.to_string());
        }
        Some(Err(_)) => {
            out.status = RunStatus::TimedOut;
            out.duration_ms = manifest.timeout_ms;
            out.error = fail(
                schemas::run_error_codes::TIMEOUT,
                format!(
                    "the function ran past its timeout of {} ms",
                    manifest.timeout_ms
                ),
            );
        }
    }
    containers.remove(&c.id, &c.name).await;
    Ok(out)
}

/// The exit code of a local run.
pub fn exit_code(r: &LocalRun) -> i32 {
    if r.status == RunStatus::Succeeded {
        exit::OK
    } else {
        exit::FUNCTION_FAILED
    }
}
