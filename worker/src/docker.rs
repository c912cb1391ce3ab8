//! Function containers through the Docker API (`bollard`): created locked down (non-root,
//! read-only root, no network, memory/CPU/pids limits, a tmpfs sized by `disk_mb`), with the
//! code mounted read-only and a per-container socket folder where the runtime agent listens.

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

use crate::agent::AgentConn;

/// Label naming the worker that owns a container.
pub const LABEL_WORKER: &str = "io.colorfaas.worker";
/// Label naming the function key a container serves.
pub const LABEL_FUNCTION: &str = "io.colorfaas.function";

/// The uid:gid functions run as.
pub const FUNCTION_USER: (u32, u32) = (10001, 10001);

/// Creates and removes this worker's containers.
#[derive(Debug, Clone)]
pub struct Containers {
    docker: Docker,
    worker_id: String,
    sock_root: PathBuf,
    pids_limit: i64,
    allow_network: bool,
}

/// What to start.
#[derive(Debug)]
pub struct Spec<'a> {
    pub key: &'a str,
    pub runtime: Runtime,
    pub handler: &'a str,
    pub function: &'a str,
    pub version: u32,
    pub resources: Resources,
    pub code_dir: &'a Path,
}

/// A running container with a connected agent.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub sock_dir: PathBuf,
    pub conn: AgentConn,
    pub memory_mb: u64,
}

impl Containers {
    pub fn new(
        docker: Docker,
        worker_id: &str,
        sock_root: PathBuf,
        pids_limit: i64,
        allow_network: bool,
    ) -> Containers {
        Containers {
            docker,
            worker_id: worker_id.to_owned(),
            sock_root,
            pids_limit,
            allow_network,
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Creates and starts a container and connects to its agent (a cold start).
    pub async fn start(&self, spec: &Spec<'_>) -> anyhow::Result<Container> {
        let name = format!(
            "cf-{}-{}",
            self.worker_id,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let sock_dir = self.sock_root.join(&name);
        std::fs::create_dir_all(&sock_dir).context("creating the socket folder")?;
        std::os::unix::fs::chown(&sock_dir, Some(FUNCTION_USER.0), Some(FUNCTION_USER.1))
            .context("handing the socket folder to the function user")?;

        let r = spec.resources;
        let memory = (r.memory_mb.max(16) * 1024 * 1024) as i64;
        let host_config = HostConfig {
            binds: Some(vec![
                format!("{}:/code:ro", spec.code_dir.display()),
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
                format!("COLORFAAS_HANDLER={}", spec.handler),
                format!("COLORFAAS_FUNCTION={}", spec.function),
                format!("COLORFAAS_VERSION={}", spec.version),
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
                let _ = std::fs::remove_dir_all(&sock_dir);
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
                sock_dir,
                conn,
                memory_mb: r.memory_mb,
            }),
            Err(e) => {
                self.remove(&id, &sock_dir).await;
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

    /// Force-removes a container and its socket folder. Errors are logged, not returned:
    /// removal is best effort and retried by the reaper.
    pub async fn remove(&self, id: &str, sock_dir: &Path) {
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
        let _ = std::fs::remove_dir_all(sock_dir);
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
                let dir = self.sock_root.join(name.trim_start_matches('/'));
                self.remove(&id, &dir).await;
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
