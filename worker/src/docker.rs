//! Function containers through the Docker API (`bollard`): created locked down (non-root,
//! read-only root, no network, memory/CPU/pids limits, a tmpfs sized by `disk_mb`, bounded
//! container logs), each with its own code folder mounted read-only at `/code`.
//!
//! Nothing host-backed is writable by the function: the agent listens in a small tmpfs of the
//! container's own (`/run/colorfaas`), and the worker reaches that socket through the agent's
//! root as the host sees it (`/proc/<pid>/root/run/colorfaas/agent.sock`), checking that the
//! process on the other end is the container's.
//!
//! A container starts blank (its agent waits for an init frame), so it can be started before
//! anyone knows which function it will serve: its code is linked into its code folder and the
//! agent told the handler when a function claims it. Idle containers can be frozen (cgroup
//! freezer, else `docker pause`) and thawed. Docker's event stream tells the worker which
//! containers someone else killed or removed ([`crate::events`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use schemas::{Resources, Runtime};
use tokio::sync::watch;

use crate::agent::{AgentConn, AgentResponse, CallError, Init};
use crate::events::{Death, Deaths, Fate};
use crate::freezer::Freezer;

/// Label naming the worker that owns a container.
pub const LABEL_WORKER: &str = "io.colorfaas.worker";
/// Label naming the key a container was started for: a function key, or a spare key.
pub const LABEL_FUNCTION: &str = "io.colorfaas.function";

/// The uid:gid functions run as.
pub const FUNCTION_USER: (u32, u32) = (10001, 10001);

/// Where the agent listens, inside the container.
const AGENT_SOCKET: &str = "run/colorfaas/agent.sock";
/// Size of the container's private socket folder (a tmpfs): room for the socket, nothing more.
const SOCKET_TMPFS: &str = "size=64k";
/// Docker keeps at most this much of a container's own output (the agent's start-up
/// diagnostics; nothing a function prints reaches it).
const LOG_MAX_SIZE: &str = "64k";

/// Creates and removes this worker's containers.
#[derive(Debug, Clone)]
pub struct Containers {
    docker: Docker,
    worker_id: String,
    slot_root: PathBuf,
    pids_limit: i64,
    allow_network: bool,
    deaths: Arc<Deaths>,
}

/// What to start: a blank container of a runtime and size.
#[derive(Debug)]
pub struct Spec<'a> {
    /// Goes on the container's function label: the function key or the spare key.
    pub key: &'a str,
    pub runtime: Runtime,
    pub resources: Resources,
}

/// The function a blank container is given.
#[derive(Debug)]
pub struct Load<'a> {
    pub handler: &'a str,
    pub function: &'a str,
    pub version: u32,
    /// The unpacked code in the worker's code cache.
    pub code_dir: &'a Path,
    /// The function's env and opened secrets, for the handler's process environment.
    pub env: &'a std::collections::BTreeMap<String, String>,
}

/// How an idle container is held still.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frozen {
    No,
    Cgroup,
    Paused,
}

/// A running container with a connected agent.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The container's `/code`, on the host.
    pub slot_dir: PathBuf,
    pub conn: AgentConn,
    pub memory_mb: u64,
    pub runtime: Runtime,
    pub resources: Resources,
    /// The agent's pid on the host.
    pub pid: u32,
    freezer: Option<Freezer>,
    frozen: Frozen,
}

impl Container {
    /// Hard-links the function's code into the container's code folder.
    pub async fn link_code(&self, code_dir: &Path) -> anyhow::Result<()> {
        let (src, dst) = (code_dir.to_owned(), self.slot_dir.clone());
        tokio::task::spawn_blocking(move || link_tree(&src, &dst))
            .await
            .context("linking the code")?
            .context("linking the code into the container's folder")
    }

    /// Sends the agent its init frame: it imports the handler (running the function's
    /// top-level code, so the caller bounds the time).
    pub async fn init(&mut self, load: &Load<'_>) -> Result<AgentResponse, CallError> {
        self.conn
            .init(Init {
                handler: load.handler,
                function: load.function,
                version: load.version,
                memory_mb: self.memory_mb,
                env: crate::agent::EnvVars(load.env),
            })
            .await
    }

    /// Gives a blank container its function: links its code and sends the init frame, with no
    /// time limit (`colorfaas run-local`; the worker bounds the init by the run's timeout). A
    /// handler that fails to load is not an error here (every call will report it); a dead or
    /// confused agent is.
    pub async fn load(&mut self, load: &Load<'_>) -> anyhow::Result<()> {
        self.link_code(load.code_dir).await?;
        match self.init(load).await {
            Ok(a) if a.ok => Ok(()),
            Ok(a) => match a.error {
                Some(e) if e.kind == "load" => Ok(()),
                Some(e) => anyhow::bail!("the runtime agent refused the init frame: {}", e.message),
                None => anyhow::bail!("the runtime agent refused the init frame"),
            },
            Err(e) => Err(anyhow::Error::new(e).context("initialising the runtime agent")),
        }
    }

    /// Whether the container can take a call: thawed, and its agent's connection open with
    /// nothing unasked-for on it.
    pub fn is_ready(&self) -> bool {
        self.frozen == Frozen::No && self.conn.is_clean()
    }
}

/// Copies a folder tree as hard links (files are never written after unpacking, so sharing
/// them is safe and instant); falls back to copying where linking is not possible. Symbolic
/// links are skipped (uploads cannot contain them).
pub fn link_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ty.is_dir() {
            std::fs::create_dir_all(&to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
            link_tree(&entry.path(), &to)?;
        } else if ty.is_file() && std::fs::hard_link(entry.path(), &to).is_err() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

impl Containers {
    /// `root` holds the per-container code folders (`root/slots/<name>`).
    pub fn new(
        docker: Docker,
        worker_id: &str,
        root: &Path,
        pids_limit: i64,
        allow_network: bool,
    ) -> Containers {
        Containers {
            docker,
            worker_id: worker_id.to_owned(),
            slot_root: root.join("slots"),
            pids_limit,
            allow_network,
            deaths: Arc::new(Deaths::default()),
        }
    }

    fn slot_dir(&self, name: &str) -> PathBuf {
        self.slot_root.join(name)
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Deaths of this worker's containers that it did not cause ([`Containers::watch`] fills it).
    pub fn deaths(&self) -> &Deaths {
        &self.deaths
    }

    /// Creates and starts a blank container and connects to its agent; `load` gives it its
    /// function.
    pub async fn start(&self, spec: &Spec<'_>) -> anyhow::Result<Container> {
        use std::os::unix::fs::PermissionsExt as _;
        let name = format!(
            "cf-{}-{}",
            self.worker_id,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let slot_dir = self.slot_dir(&name);
        let made = std::fs::create_dir_all(&slot_dir)
            .context("creating the code folder")
            .and_then(|()| {
                std::fs::set_permissions(&slot_dir, std::fs::Permissions::from_mode(0o755))
                    .context("opening the code folder to the function user")
            });
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&slot_dir);
            return Err(e);
        }
        let r = spec.resources;
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                self.body(spec, &slot_dir),
            )
            .await
            .with_context(|| format!("creating a container from {}", spec.runtime.image()));
        let id = match created {
            Ok(c) => c.id,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&slot_dir);
                return Err(e);
            }
        };
        let started = async {
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .context("starting the container")?;
            self.connect(&id).await
        }
        .await;
        match started {
            Ok((conn, pid)) => Ok(Container {
                id,
                name,
                slot_dir,
                conn,
                memory_mb: r.memory_mb,
                runtime: spec.runtime,
                resources: r,
                pid,
                freezer: Freezer::of_pid(pid),
                frozen: Frozen::No,
            }),
            Err(e) => {
                self.remove(&id, &name).await;
                Err(e)
            }
        }
    }

    /// The container's configuration: see the module doc.
    fn body(&self, spec: &Spec<'_>, slot_dir: &Path) -> ContainerCreateBody {
        let r = spec.resources;
        let memory = (r.memory_mb.max(16) * 1024 * 1024) as i64;
        let (uid, gid) = FUNCTION_USER;
        let host_config = HostConfig {
            binds: Some(vec![format!("{}:/code:ro", slot_dir.display())]),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((r.cpu_millicores.max(10) * 1_000_000) as i64),
            pids_limit: Some(self.pids_limit),
            readonly_rootfs: Some(true),
            network_mode: Some(if self.allow_network { "bridge" } else { "none" }.to_owned()),
            tmpfs: Some(HashMap::from([
                (
                    "/tmp".to_owned(),
                    format!("rw,nosuid,nodev,size={}m,mode=1777", r.disk_mb.max(1)),
                ),
                (
                    "/run/colorfaas".to_owned(),
                    format!("rw,nosuid,nodev,noexec,{SOCKET_TMPFS},mode=0700,uid={uid},gid={gid}"),
                ),
            ])),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                    ("max-file".to_owned(), "1".to_owned()),
                ])),
            }),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.runtime.image().to_owned()),
            user: Some(format!("{uid}:{gid}")),
            env: Some(vec![
                "COLORFAAS_DEFERRED=1".to_owned(),
                "COLORFAAS_LOG_STREAM=1".to_owned(),
                format!("COLORFAAS_MEMORY_MB={}", r.memory_mb),
            ]),
            labels: Some(HashMap::from([
                (LABEL_WORKER.to_owned(), self.worker_id.clone()),
                (LABEL_FUNCTION.to_owned(), spec.key.to_owned()),
            ])),
            network_disabled: Some(!self.allow_network),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Waits for the agent's socket (it appears atomically when the agent is ready) and
    /// connects through the agent's root; returns the connection and the agent's pid.
    async fn connect(&self, id: &str) -> anyhow::Result<(AgentConn, u32)> {
        let info = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .context("inspecting the started container")?;
        let pid = info
            .state
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .context("the container has no process")? as u32;
        let sock = PathBuf::from(format!("/proc/{pid}/root/{AGENT_SOCKET}"));
        let t0 = Instant::now();
        let mut checks = 0u32;
        loop {
            if sock.exists() {
                let conn = AgentConn::connect(&sock)
                    .await
                    .context("connecting to the runtime agent")?;
                // The pid could have been reused if the container died just now.
                anyhow::ensure!(
                    conn.peer_pid() == Some(pid as i32),
                    "the runtime agent's socket belongs to another process"
                );
                return Ok((conn, pid));
            }
            checks += 1;
            // Every ~100 ms make sure the container has not died while we wait.
            if checks.is_multiple_of(100) {
                if let Some(reason) = self.exit_reason(id).await {
                    anyhow::bail!("the runtime agent exited before it was ready: {reason}");
                }
            }
            if t0.elapsed() > Duration::from_secs(20) {
                anyhow::bail!("the runtime agent was not ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Holds an idle container still: its cgroup's freezer, else `docker pause`.
    pub async fn freeze(&self, c: &mut Container) -> anyhow::Result<()> {
        if c.frozen != Frozen::No {
            return Ok(());
        }
        if let Some(f) = &c.freezer {
            if f.freeze().is_ok() {
                c.frozen = Frozen::Cgroup;
                return Ok(());
            }
            c.freezer = None;
        }
        self.docker
            .pause_container(&c.id)
            .await
            .context("pausing the container")?;
        c.frozen = Frozen::Paused;
        Ok(())
    }

    /// Lets a frozen container run again.
    pub async fn thaw(&self, c: &mut Container) -> anyhow::Result<()> {
        match c.frozen {
            Frozen::No => {}
            Frozen::Cgroup => {
                let f = c.freezer.as_ref().context("the container has no freezer")?;
                f.thaw().context("thawing the container")?;
            }
            Frozen::Paused => self
                .docker
                .unpause_container(&c.id)
                .await
                .context("unpausing the container")?,
        }
        c.frozen = Frozen::No;
        Ok(())
    }

    /// Removes a container this worker holds (thawed first: older kernels do not let a
    /// cgroup-v1-frozen process die).
    pub async fn dispose(&self, mut c: Container) {
        if c.frozen == Frozen::Cgroup {
            let _ = self.thaw(&mut c).await;
        }
        self.remove(&c.id, &c.name).await;
    }

    /// If the container has stopped: why (`out of memory`, `exited with code N`).
    pub async fn exit_reason(&self, id: &str) -> Option<String> {
        let info = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let state = info.state?;
        if state.running == Some(true) {
            return None;
        }
        if state.oom_killed == Some(true) {
            return Some("out of memory".to_owned());
        }
        Some(format!(
            "exited with code {}",
            state.exit_code.unwrap_or(-1)
        ))
    }

    /// How a container whose agent stopped answering ended: from Docker's events when the
    /// stream is up (they tell an outsider's kill from an OOM kill or an exit), else from
    /// inspecting it. Waits up to ~2 s for Docker to notice.
    pub async fn fate(&self, id: &str) -> Fate {
        let t0 = Instant::now();
        loop {
            let changed = self.deaths.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(d) = self.deaths.get(id).filter(Death::ended) {
                return d.fate();
            }
            let info = self
                .docker
                .inspect_container(id, None::<InspectContainerOptions>)
                .await;
            let state = match info {
                // Removed (rm -f), or Docker is unreachable: not the function's doing.
                Err(_) => return Fate::Lost,
                Ok(i) => i.state.unwrap_or_default(),
            };
            let waited = t0.elapsed();
            if state.running == Some(true) {
                if waited > Duration::from_secs(2) {
                    return Fate::Running;
                }
            } else if !self.deaths.streaming() || waited > Duration::from_secs(1) {
                return Death {
                    oom: state.oom_killed == Some(true),
                    exit_code: Some(state.exit_code.unwrap_or(-1)),
                    ..Death::default()
                }
                .fate();
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), &mut changed).await;
        }
    }

    /// Whether the container was killed by the kernel's OOM killer.
    pub async fn was_oom_killed(&self, id: &str) -> Option<bool> {
        Some(self.fate(id).await == Fate::OutOfMemory)
    }

    /// Follows Docker's events about this worker's containers into [`Containers::deaths`]
    /// until `stop`, reconnecting (and catching up) when the stream breaks. `on_death` hears
    /// of each container that stopped without this worker stopping it.
    pub async fn watch(&self, on_death: impl Fn(&str, &Death), mut stop: watch::Receiver<bool>) {
        let mut since = schemas::now_ms();
        loop {
            let filters = HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                (
                    "label".to_owned(),
                    vec![format!("{LABEL_WORKER}={}", self.worker_id)],
                ),
                (
                    "event".to_owned(),
                    ["kill", "oom", "die", "destroy"]
                        .map(str::to_owned)
                        .to_vec(),
                ),
            ]);
            let mut events = self.docker.events(Some(EventsOptions {
                since: Some(format!("{}.{:03}", since / 1000, since % 1000)),
                until: None,
                filters: Some(filters),
            }));
            self.deaths.set_streaming(true);
            let connected = Instant::now();
            let mut heard = false;
            loop {
                let ev = tokio::select! {
                    ev = events.next() => ev,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Some(Ok(ev)) = ev else { break };
                heard = true;
                if let Some(t) = ev.time_nano {
                    since = since.max(t / 1_000_000);
                }
                let (Some(action), Some(actor)) = (ev.action.as_deref(), ev.actor) else {
                    continue;
                };
                let Some(id) = actor.id else { continue };
                let exit_code = actor
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("exitCode"))
                    .and_then(|c| c.parse().ok());
                if let Some(death) = self.deaths.record(&id, action, exit_code) {
                    on_death(&id, &death);
                }
            }
            self.deaths.set_streaming(false);
            // Said once per outage: while Docker is down every reconnection fails at once.
            if heard || connected.elapsed() > Duration::from_secs(5) {
                tracing::warn!(
                    worker_id = self.worker_id,
                    "docker's event stream ended; reconnecting"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Force-removes a container and its code folder. Errors are logged, not returned: removal
    /// is best effort and retried by the reaper.
    pub async fn remove(&self, id: &str, name: &str) {
        self.deaths.ours(id);
        if let Err(e) = self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            if !e.to_string().contains("No such container") {
                tracing::warn!(container = id, error = %e, "removing a container failed");
            }
        }
        // The code folder may hold a large tree: removed off the async thread (the worker's
        // runtime is single-threaded by default).
        let slot_dir = self.slot_dir(name);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(slot_dir)).await;
    }

    /// Removes every container labelled with this worker's id (left by a crashed predecessor,
    /// or by this process at shutdown), thawing frozen ones first. Returns how many.
    pub async fn reap_all(&self) -> anyhow::Result<usize> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_owned(),
                    vec![format!("{LABEL_WORKER}={}", self.worker_id)],
                )])),
                ..Default::default()
            }))
            .await
            .context("listing this worker's containers")?;
        let n = list.len();
        for c in list {
            let Some(id) = c.id else { continue };
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default();
            if let Ok(info) = self
                .docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            {
                let pid = info.state.and_then(|s| s.pid).unwrap_or(0);
                if let Some(f) = (pid > 0).then(|| Freezer::of_pid(pid as u32)).flatten() {
                    let _ = f.thaw();
                }
            }
            self.remove(&id, name.trim_start_matches('/')).await;
        }
        Ok(n)
    }

    /// Checks that the runtime images exist, naming the command that builds them if not.
    pub async fn check_images(&self) -> anyhow::Result<()> {
        for rt in Runtime::ALL {
            self.docker
                .inspect_image(rt.image())
                .await
                .with_context(|| {
                    format!(
                        "runtime image {} is missing; build it with scripts/build-images.sh",
                        rt.image()
                    )
                })?;
        }
        Ok(())
    }
}
