//! Function containers through the Docker API (`bollard`): created locked down (non-root,
//! read-only root, no network, memory/CPU/pids limits, a tmpfs sized by `disk_mb`), each with
//! its own code folder mounted read-only at `/code` and a socket folder where the runtime agent
//! listens.
//!
//! A container starts blank (its agent waits for an init frame), so it can be started before
//! anyone knows which function it will serve: `load` links the function's code into its code
//! folder and tells the agent the handler. A cold start with a spare ready costs only that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StartContainerOptions,
};
use bollard::Docker;
use schemas::{Resources, Runtime};

use crate::agent::{AgentConn, CallError, Init};

/// Label naming the worker that owns a container.
pub const LABEL_WORKER: &str = "io.colorfaas.worker";
/// Label naming the key a container was started for: a function key, or a spare key.
pub const LABEL_FUNCTION: &str = "io.colorfaas.function";

/// The uid:gid functions run as.
pub const FUNCTION_USER: (u32, u32) = (10001, 10001);

/// Creates and removes this worker's containers.
#[derive(Debug, Clone)]
pub struct Containers {
    docker: Docker,
    worker_id: String,
    sock_root: PathBuf,
    slot_root: PathBuf,
    pids_limit: i64,
    allow_network: bool,
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
}

impl Container {
    /// Gives a blank container its function: hard-links the code into its code folder, then
    /// sends the agent the init frame. A handler that fails to load is not an error here (every
    /// call will report it, like any function's load error); a dead or confused agent is.
    pub async fn load(&mut self, load: &Load<'_>) -> anyhow::Result<()> {
        let (src, dst) = (load.code_dir.to_owned(), self.slot_dir.clone());
        tokio::task::spawn_blocking(move || link_tree(&src, &dst))
            .await
            .context("linking the code")?
            .context("linking the code into the container's folder")?;
        let answer = self
            .conn
            .init(Init {
                handler: load.handler,
                function: load.function,
                version: load.version,
                memory_mb: self.memory_mb,
            })
            .await;
        match answer {
            Ok(a) if a.ok => Ok(()),
            Ok(a) => match a.error {
                Some(e) if e.kind == "load" => Ok(()),
                Some(e) => anyhow::bail!("the runtime agent refused the init frame: {}", e.message),
                None => anyhow::bail!("the runtime agent refused the init frame"),
            },
            Err(e @ (CallError::Gone(_) | CallError::Protocol(_))) => {
                Err(anyhow::Error::new(e).context("initialising the runtime agent"))
            }
        }
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
    /// `root` holds the per-container socket (`root/sock/<name>`) and code
    /// (`root/slots/<name>`) folders.
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
            sock_root: root.join("sock"),
            slot_root: root.join("slots"),
            pids_limit,
            allow_network,
        }
    }

    fn dirs(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.sock_root.join(name), self.slot_root.join(name))
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
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
        let (sock_dir, slot_dir) = self.dirs(&name);
        let made = (|| {
            std::fs::create_dir_all(&sock_dir).context("creating the socket folder")?;
            std::os::unix::fs::chown(&sock_dir, Some(FUNCTION_USER.0), Some(FUNCTION_USER.1))
                .context("handing the socket folder to the function user")?;
            std::fs::create_dir_all(&slot_dir).context("creating the code folder")?;
            std::fs::set_permissions(&slot_dir, std::fs::Permissions::from_mode(0o755))
                .context("opening the code folder to the function user")
        })();
        if let Err(e) = made {
            self.remove_dirs(&name);
            return Err(e);
        }

        let r = spec.resources;
        let memory = (r.memory_mb.max(16) * 1024 * 1024) as i64;
        let host_config = HostConfig {
            binds: Some(vec![
                format!("{}:/code:ro", slot_dir.display()),
                format!("{}:/run/colorfaas:rw", sock_dir.display()),
            ]),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((r.cpu_millicores.max(10) * 1_000_000) as i64),
            pids_limit: Some(self.pids_limit),
            readonly_rootfs: Some(true),
            network_mode: Some(if self.allow_network { "bridge" } else { "none" }.to_owned()),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                format!("rw,nosuid,nodev,size={}m,mode=1777", r.disk_mb.max(1)),
            )])),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.runtime.image().to_owned()),
            user: Some(format!("{}:{}", FUNCTION_USER.0, FUNCTION_USER.1)),
            env: Some(vec![
                "COLORFAAS_DEFERRED=1".to_owned(),
                format!("COLORFAAS_MEMORY_MB={}", r.memory_mb),
            ]),
            labels: Some(HashMap::from([
                (LABEL_WORKER.to_owned(), self.worker_id.clone()),
                (LABEL_FUNCTION.to_owned(), spec.key.to_owned()),
            ])),
            network_disabled: Some(!self.allow_network),
            host_config: Some(host_config),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .with_context(|| format!("creating a container from {}", spec.runtime.image()));
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                self.remove_dirs(&name);
                return Err(e);
            }
        };
        let id = created.id;
        let started = async {
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .context("starting the container")?;
            self.connect(&id, &sock_dir.join("agent.sock")).await
        }
        .await;
        match started {
            Ok(conn) => Ok(Container {
                id,
                name,
                slot_dir,
                conn,
                memory_mb: r.memory_mb,
            }),
            Err(e) => {
                self.remove(&id, &name).await;
                Err(e)
            }
        }
    }

    /// Waits for the agent's socket (it appears atomically when the agent is ready).
    async fn connect(&self, id: &str, sock: &Path) -> anyhow::Result<AgentConn> {
        let t0 = Instant::now();
        let mut checks = 0u32;
        loop {
            if sock.exists() {
                return AgentConn::connect(sock)
                    .await
                    .context("connecting to the runtime agent");
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

    /// Whether the container was killed by the kernel's OOM killer. Waits briefly for Docker to
    /// notice the container's death.
    pub async fn was_oom_killed(&self, id: &str) -> Option<bool> {
        for _ in 0..50 {
            if let Some(reason) = self.exit_reason(id).await {
                if reason == "out of memory" {
                    return Some(true);
                }
                // Exit code 137 without our kill is SIGKILL from the kernel: the OOM killer
                // (some cgroup v1 setups do not set OOMKilled).
                return Some(reason == "exited with code 137");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Force-removes a container and its folders. Errors are logged, not returned: removal
    /// is best effort and retried by the reaper.
    pub async fn remove(&self, id: &str, name: &str) {
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
        let (sock_dir, slot_dir) = self.dirs(name);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(sock_dir);
            let _ = std::fs::remove_dir_all(slot_dir);
        })
        .await;
    }

    /// Removes the folders of a container that did not start (they are still empty).
    fn remove_dirs(&self, name: &str) {
        let (sock_dir, slot_dir) = self.dirs(name);
        let _ = std::fs::remove_dir_all(sock_dir);
        let _ = std::fs::remove_dir_all(slot_dir);
    }

    /// Removes every container labelled with this worker's id (left by a crashed predecessor,
    /// or by this process at shutdown). Returns how many.
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
            if let Some(id) = c.id {
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default();
                self.remove(&id, name.trim_start_matches('/')).await;
            }
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
