//! The execution path: a container for the task (warm, a spare given the function, or a new
//! one), the timed phase (the handler's load, when the container is new to the function, and
//! the call, under one deadline: the run's `timeout_ms`), and what came out as a run outcome.
//!
//! Rules:
//! - **Billed by the worker's clock**: a run's duration is the worker's own measurement of its
//!   timed phase, or what the agent reports if that is longer; code fetches and container
//!   starts are the platform's time and not counted.
//! - **The function answers for its container**: anything the agent sends that is not a valid
//!   answer, an agent that exits or closes its connection, an OOM kill, a timeout — all are the
//!   function's failures, billed. Only the worker's, Docker's or the host's faults are
//!   `platform_*` errors (never billed): a container that someone else killed or removed
//!   (Docker says so: [`crate::events`]) fails its run with `platform_container_lost`; it is not
//!   re-run here (the function may have had effects), async runs are retried by the pipeline.
//! - **Idle containers are frozen** (`WORKER_FREEZE_IDLE`) and checked when taken: one that died
//!   or was written to while idle is removed, never handed out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::run_error_codes as codes;
use schemas::{InvocationMsg, ResultMsg, RunError, RunStatus, TaskMsg, MESSAGE_VERSION};

use crate::agent::{AgentContext, AgentResponse, CallError};
use crate::docker::{Container, Load, Spec};
use crate::events::{Death, Fate};
use crate::pool::Grant;
use crate::Inner;

/// How long after a spare failed to start another is tried.
const SPARE_RETRY: Duration = Duration::from_secs(5);

/// Pool keys of spare containers start with this (function keys never do: they are ids).
pub(crate) const SPARE_PREFIX: &str = "spare/";

/// The pool key of spare containers of a runtime and size.
fn spare_key(runtime: schemas::Runtime, r: schemas::Resources) -> String {
    format!(
        "{SPARE_PREFIX}{}/{}m/{}MB/{}MB",
        runtime.as_str(),
        r.cpu_millicores,
        r.memory_mb,
        r.disk_mb
    )
}

/// What came out of the container.
pub(crate) struct Outcome {
    status: RunStatus,
    result: Option<serde_json::Value>,
    error: Option<RunError>,
    logs: String,
    duration_ms: u64,
    cold_start: bool,
}

impl Outcome {
    fn failed(status: RunStatus, error: RunError, duration_ms: u64, cold_start: bool) -> Outcome {
        Outcome {
            status,
            result: None,
            error: Some(error),
            logs: String::new(),
            duration_ms,
            cold_start,
        }
    }

    fn platform(code: &str, message: impl Into<String>) -> Outcome {
        Outcome::failed(RunStatus::Failed, RunError::new(code, message), 0, false)
    }
}

pub(crate) async fn execute(inner: &Arc<Inner>, task: &TaskMsg, started_at_ms: i64) -> ResultMsg {
    let inv = &task.invocation;
    let o = run_in_container(inner, inv).await;
    let platform = o.error.as_ref().is_some_and(RunError::is_platform);
    let billed = if platform {
        0
    } else {
        let prices = *inner.prices.lock().unwrap_or_else(|e| e.into_inner());
        accounts::pricing::bill(&prices, o.duration_ms, inv.resources, inv.hold.as_ref())
    };
    ResultMsg {
        v: MESSAGE_VERSION,
        run_id: inv.run_id.clone(),
        user_id: inv.user_id.clone(),
        function_id: inv.function_id.clone(),
        function: inv.function.clone(),
        version: inv.version,
        worker_id: inner.cfg.worker_id.clone(),
        epoch: task.epoch,
        status: o.status,
        result: o.result,
        error: o.error,
        logs: tail(o.logs, schemas::limits::LOG_TAIL_BYTES),
        duration_ms: o.duration_ms,
        cold_start: o.cold_start,
        billed_micros: billed,
        resources: inv.resources,
        started_at_ms: Some(started_at_ms),
        finished_at_ms: schemas::now_ms(),
        callback_url: inv.callback_url.clone(),
        hold: inv.hold,
    }
}

/// Keeps the last `max` bytes of `s` (on a character boundary).
pub(crate) fn tail(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[truncated]\n{}", &s[start..])
}

/// Takes a warm container for the function, else a spare, else room to start one (waiting
/// while busy containers hold the worker's memory).
async fn acquire(
    inner: &Inner,
    key: &str,
    spare_key: Option<&str>,
    memory_mb: u64,
) -> Grant<Container> {
    loop {
        let notified = inner.pool_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut p = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(g) = p.try_acquire(key, spare_key, memory_mb) {
                crate::pool_gauges(inner, &p);
                return g;
            }
        }
        notified.await;
    }
}

/// Returns a healthy container to the pool, frozen first when idle containers are.
async fn release(inner: &Arc<Inner>, key: &str, mut c: Container) {
    if inner.cfg.freeze_idle {
        if let Err(e) = inner.containers.freeze(&mut c).await {
            tracing::warn!(container = c.name, error = %format!("{e:#}"), "freezing an idle container failed; removing it");
            return discard(inner, c);
        }
    }
    let mb = c.memory_mb;
    {
        let mut p = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        p.release(key, c, mb, Instant::now());
        crate::pool_gauges(inner, &p);
    }
    inner.pool_changed.notify_waiters();
}

/// Removes a container that must not serve again, in the background; its memory is given back
/// to the pool once it is gone.
fn discard(inner: &Arc<Inner>, c: Container) {
    let mb = c.memory_mb;
    let inner = inner.clone();
    tokio::spawn(async move {
        inner.containers.dispose(c).await;
        inner
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .discard(mb);
        inner.pool_changed.notify_waiters();
    });
}

/// A container that stopped without this worker stopping it (Docker's events): taken out of
/// the pool if it was idle there, removed, and a spare replaced.
pub(crate) fn container_died(inner: &Arc<Inner>, id: &str, death: &Death) {
    let taken = inner
        .pool
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take_where(|c| c.id == id);
    let Some((key, c)) = taken else {
        return; // busy: its run notices; or not this worker's any more
    };
    inner
        .metrics
        .registry
        .counter(
            "colorfaas_worker_idle_containers_lost_total",
            "idle containers that stopped without the worker stopping them",
            &[],
        )
        .inc();
    tracing::warn!(container = c.name, key, fate = ?death.fate(), "an idle container stopped; removing it");
    let spare = key
        .starts_with(SPARE_PREFIX)
        .then_some((c.runtime, c.resources));
    discard(inner, c);
    if let Some((runtime, resources)) = spare {
        want_spare(inner, runtime, resources);
    }
}

/// Follows Docker's events about this worker's containers until `stop`.
pub(crate) async fn watch_containers(inner: Arc<Inner>, stop: tokio::sync::watch::Receiver<bool>) {
    let containers = inner.containers.clone();
    containers
        .watch(|id, death| container_died(&inner, id, death), stop)
        .await;
}

/// Starts a spare container of a runtime and size in the background, unless enough are ready
/// or starting, or it would not fit without evicting a warm container.
pub(crate) fn want_spare(
    inner: &Arc<Inner>,
    runtime: schemas::Runtime,
    resources: schemas::Resources,
) {
    if inner.cfg.spares == 0 || !inner.accepting.load(Ordering::SeqCst) {
        return;
    }
    let key = spare_key(runtime, resources);
    {
        let mut making = inner.making.lock().unwrap_or_else(|e| e.into_inner());
        let mut pool = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let now = pool.count(&key) + making.get(&key).copied().unwrap_or(0);
        if now >= inner.cfg.spares || !pool.try_reserve(resources.memory_mb) {
            return;
        }
        *making.entry(key.clone()).or_default() += 1;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let started = inner
            .containers
            .start(&Spec {
                key: &key,
                runtime,
                resources,
            })
            .await;
        match started {
            Ok(c) if inner.accepting.load(Ordering::SeqCst) => {
                tracing::debug!(container = c.name, key, "spare container ready");
                release(&inner, &key, c).await;
            }
            Ok(c) => discard(&inner, c),
            Err(e) => {
                inner
                    .pool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .discard(resources.memory_mb);
                tracing::warn!(key, error = %format!("{e:#}"), "starting a spare container failed; trying again soon");
                let again = inner.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(SPARE_RETRY).await;
                    want_spare(&again, runtime, resources);
                });
            }
        }
        {
            let mut making = inner.making.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = making.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    making.remove(&key);
                }
            }
        }
        inner.pool_changed.notify_waiters();
    });
}

/// A container for a run, and whether its agent must still be given the function.
struct Obtained {
    c: Container,
    cold: bool,
    needs_init: bool,
}

/// Thaws an idle container and checks that it can take a call.
async fn ready(inner: &Inner, c: &mut Container) -> bool {
    match inner.containers.thaw(c).await {
        Ok(()) => c.is_ready(),
        Err(e) => {
            tracing::warn!(container = c.name, error = %format!("{e:#}"), "thawing a container failed");
            false
        }
    }
}

/// A container serving the function: warm, else a spare with the function's code linked in,
/// else a new one. `Err` is the run's outcome when none can be had.
async fn obtain(
    inner: &Arc<Inner>,
    inv: &InvocationMsg,
    code_dir: &std::path::Path,
) -> Result<Obtained, Outcome> {
    let key = inv.function_key();
    let resources = schemas::Resources {
        memory_mb: inv.resources.memory_mb.max(16),
        ..inv.resources
    };
    let spare = (inner.cfg.spares > 0).then(|| spare_key(inv.runtime, resources));
    // An idle container that turns out dead is discarded and the next option tried.
    for _ in 0..3 {
        match acquire(inner, &key, spare.as_deref(), resources.memory_mb).await {
            Grant::Warm(mut c) => {
                if ready(inner, &mut c).await {
                    return Ok(Obtained {
                        c,
                        cold: false,
                        needs_init: false,
                    });
                }
                tracing::warn!(
                    run_id = inv.run_id,
                    container = c.name,
                    "a warm container is gone; removing it"
                );
                discard(inner, c);
            }
            Grant::Spare(mut c) => {
                want_spare(inner, inv.runtime, resources);
                if !ready(inner, &mut c).await {
                    tracing::warn!(
                        run_id = inv.run_id,
                        container = c.name,
                        "a spare container is gone; removing it"
                    );
                    discard(inner, c);
                    continue;
                }
                if let Err(e) = c.link_code(code_dir).await {
                    tracing::error!(run_id = inv.run_id, container = c.name, error = %format!("{e:#}"), "linking code into a spare failed");
                    discard(inner, c);
                    return Err(Outcome::platform(
                        codes::PLATFORM_WORKER,
                        "the function's container could not be prepared",
                    ));
                }
                inner.metrics.cold_starts.inc();
                inner.metrics.spare_starts.inc();
                return Ok(Obtained {
                    c,
                    cold: true,
                    needs_init: true,
                });
            }
            Grant::Cold { evicted } => {
                for old in evicted {
                    tracing::debug!(container = old.name, "evicting an idle container");
                    let containers = inner.containers.clone();
                    tokio::spawn(async move { containers.dispose(old).await });
                }
                let started = start_new(inner, inv, resources, code_dir).await;
                want_spare(inner, inv.runtime, resources);
                return match started {
                    Ok(c) => {
                        inner.metrics.cold_starts.inc();
                        Ok(Obtained {
                            c,
                            cold: true,
                            needs_init: true,
                        })
                    }
                    Err(e) => {
                        inner
                            .pool
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .discard(resources.memory_mb);
                        inner.pool_changed.notify_waiters();
                        // Docker's error and host paths stay in the worker's log.
                        tracing::error!(run_id = inv.run_id, function = inv.function, error = %format!("{e:#}"), "starting a container failed");
                        Err(Outcome::platform(
                            codes::PLATFORM_WORKER,
                            "the function's container could not start",
                        ))
                    }
                };
            }
        }
    }
    Err(Outcome::platform(
        codes::PLATFORM_WORKER,
        "no container could take the function (idle containers kept failing)",
    ))
}

/// Starts a new container for the function (memory already reserved) with its code linked in.
async fn start_new(
    inner: &Inner,
    inv: &InvocationMsg,
    resources: schemas::Resources,
    code_dir: &std::path::Path,
) -> anyhow::Result<Container> {
    let key = inv.function_key();
    let c = inner
        .containers
        .start(&Spec {
            key: &key,
            runtime: inv.runtime,
            resources,
        })
        .await?;
    match c.link_code(code_dir).await {
        Ok(()) => Ok(c),
        Err(e) => {
            inner.containers.dispose(c).await;
            Err(e)
        }
    }
}

pub(crate) async fn run_in_container(inner: &Arc<Inner>, inv: &InvocationMsg) -> Outcome {
    if !inv.resources.fits_in(inner.cfg.capacity) {
        return Outcome::platform(
            codes::PLATFORM_NO_CAPACITY,
            format!(
                "the function asks for {:?}, more than this worker has ({:?})",
                inv.resources, inner.cfg.capacity
            ),
        );
    }
    let code_dir = match inner
        .code
        .ensure(&inv.code_sha256, inv.code_kind, &inv.filename)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(run_id = inv.run_id, function = inv.function, error = %format!("{e:#}"), "fetching code failed");
            return Outcome::platform(
                codes::PLATFORM_WORKER,
                "the function's code could not be fetched",
            );
        }
    };
    let env = match crate::fnenv::function_env(inner.cfg.secrets_key.as_ref(), inv) {
        Ok(env) => env,
        Err(e) => {
            tracing::error!(run_id = inv.run_id, function = inv.function, error = %e, "opening the function's secrets failed");
            return Outcome::platform(codes::PLATFORM_WORKER, e.to_string());
        }
    };
    let Obtained {
        mut c,
        cold,
        needs_init,
    } = match obtain(inner, inv, &code_dir).await {
        Ok(got) => got,
        Err(outcome) => return outcome,
    };

    // The timed phase: the handler's load (a container new to the function) and the call.
    let t0 = Instant::now();
    let deadline_ms = schemas::now_ms() + inv.timeout_ms as i64;
    let phase = tokio::time::timeout(
        Duration::from_millis(inv.timeout_ms.max(1)),
        timed_phase(&mut c, inv, (&code_dir, &env), needs_init, deadline_ms),
    )
    .await;
    let wall_us = t0.elapsed().as_micros() as u64;
    let billed_ms = |agent_us: u64| wall_us.max(agent_us).div_ceil(1000).max(1);
    let mut logs = c.conn.take_logs();
    match phase {
        Ok(Ok((resp, agent_us))) => {
            logs.push_str(&resp.logs);
            let mut o = answered(resp, billed_ms(agent_us), cold);
            o.logs = logs;
            release(inner, &inv.function_key(), c).await;
            o
        }
        Ok(Err(CallError::Protocol(msg))) => {
            discard(inner, c);
            let mut o = Outcome::failed(
                RunStatus::Failed,
                RunError::new(
                    codes::BAD_RESULT,
                    format!("the function's runtime sent an invalid answer: {msg}"),
                ),
                billed_ms(0),
                cold,
            );
            o.logs = logs;
            o
        }
        Ok(Err(CallError::Gone(_))) => {
            let fate = inner.containers.fate(&c.id).await;
            discard(inner, c);
            let mut o = gone(fate, inv, billed_ms(0), cold);
            o.logs = logs;
            o
        }
        Err(_) => {
            // Killed and replaced: its state is unknown mid-call; its memory comes back once
            // it is gone.
            discard(inner, c);
            let mut o = Outcome::failed(
                RunStatus::TimedOut,
                RunError::new(
                    codes::TIMEOUT,
                    format!("the function ran past its timeout of {} ms", inv.timeout_ms),
                ),
                billed_ms(0),
                cold,
            );
            o.logs = logs;
            o
        }
    }
}

/// Loads the handler (when `needs_init`) and calls it; returns the answer and the agent's own
/// measure of both.
async fn timed_phase(
    c: &mut Container,
    inv: &InvocationMsg,
    (code_dir, env): (
        &std::path::Path,
        &std::collections::BTreeMap<String, String>,
    ),
    needs_init: bool,
    deadline_ms: i64,
) -> Result<(AgentResponse, u64), CallError> {
    let mut agent_us = 0;
    if needs_init {
        let load = Load {
            handler: &inv.handler,
            function: &inv.function,
            version: inv.version,
            code_dir,
            env,
        };
        let a = c.init(&load).await?;
        agent_us += a.duration_us;
        match a.error {
            // The call answers the load error (with the load's output).
            Some(e) if !a.ok && e.kind != "load" => {
                return Err(CallError::Protocol(format!(
                    "the runtime agent refused its init frame ({}: {})",
                    e.kind, e.message
                )))
            }
            _ => {}
        }
    }
    let ctx = AgentContext {
        run_id: &inv.run_id,
        function: &inv.function,
        version: inv.version,
        deadline_ms,
        memory_mb: inv.resources.memory_mb,
    };
    let resp = c.conn.call(&inv.run_id, &inv.args, ctx).await?;
    agent_us += resp.duration_us;
    Ok((resp, agent_us))
}

/// The outcome of an answered call.
fn answered(resp: AgentResponse, duration_ms: u64, cold: bool) -> Outcome {
    if resp.ok {
        return Outcome {
            status: RunStatus::Succeeded,
            result: Some(resp.result.unwrap_or(serde_json::Value::Null)),
            error: None,
            logs: String::new(),
            duration_ms,
            cold_start: cold,
        };
    }
    let (code, message) = match resp.error {
        Some(e) => {
            let code = match e.kind.as_str() {
                "exit" => codes::FUNCTION_EXIT,
                "bad_result" => codes::BAD_RESULT,
                "load" => codes::FUNCTION_LOAD,
                _ => codes::FUNCTION_ERROR,
            };
            let message = if e.kind == "bad_request" {
                // The worker's requests are well formed: the function tampered with its agent.
                format!("the function's runtime refused its request: {}", e.message)
            } else {
                e.message
            };
            (code, message)
        }
        None => (codes::FUNCTION_ERROR, "the function failed".to_owned()),
    };
    Outcome::failed(
        RunStatus::Failed,
        RunError::new(code, message),
        duration_ms,
        cold,
    )
}

/// The outcome of a call whose connection ended, by how the container ended.
fn gone(fate: Fate, inv: &InvocationMsg, duration_ms: u64, cold: bool) -> Outcome {
    let error = match fate {
        Fate::OutOfMemory => RunError::new(
            codes::OUT_OF_MEMORY,
            format!(
                "the function ran out of memory (limit {} MB) and was killed",
                inv.resources.memory_mb
            ),
        ),
        Fate::Lost => {
            return Outcome::platform(
                codes::PLATFORM_CONTAINER_LOST,
                "the function's container was stopped by the platform during the run",
            )
        }
        Fate::Exited(code) => RunError::new(
            codes::FUNCTION_ERROR,
            format!("the function's runtime exited (code {code})"),
        ),
        Fate::Running => RunError::new(
            codes::FUNCTION_ERROR,
            "the function closed its runtime's connection",
        ),
    };
    Outcome::failed(RunStatus::Failed, error, duration_ms, cold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abc".into(), 10), "abc");
        let s = "é".repeat(10);
        let t = tail(s, 5);
        assert!(t.starts_with("[truncated]\n"));
        assert!(t.ends_with('é'));
    }

    #[test]
    fn agent_error_kinds_map_to_billed_function_failures() {
        let resp = |kind: &str| AgentResponse {
            ok: false,
            result: None,
            error: Some(crate::agent::AgentError {
                kind: kind.into(),
                message: "m".into(),
            }),
            logs: String::new(),
            duration_us: 0,
        };
        for (kind, code) in [
            ("exception", codes::FUNCTION_ERROR),
            ("exit", codes::FUNCTION_EXIT),
            ("bad_result", codes::BAD_RESULT),
            ("load", codes::FUNCTION_LOAD),
            ("bad_request", codes::FUNCTION_ERROR),
        ] {
            let o = answered(resp(kind), 7, false);
            let e = o.error.unwrap();
            assert_eq!((e.code.as_str(), o.duration_ms), (code, 7), "{kind}");
            assert!(!e.is_platform());
        }
    }
}
