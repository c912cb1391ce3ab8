//! The platform under test as real processes (the workspace's `worker`, `dispatcher` and
//! `gateway` binaries), each on a fixed loopback port, logging to `target/faults-logs/`, and
//! a supervisor that restarts any that exits by itself (recording the exit: a component
//! should reconnect, not die) — the suite kills, pauses and restarts them on purpose.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::services::{free_port, send_signal};
use tests::Sandbox;

/// The dispatchers' ZooKeeper session timeout.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the supervisor waits before restarting a component that exited by itself.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// A component that exited without the suite killing it.
#[derive(Debug, Clone)]
pub struct Exit {
    pub name: String,
    pub status: String,
}

#[derive(Debug)]
struct Proc {
    name: String,
    program: PathBuf,
    env: HashMap<String, String>,
    port: u16,
    child: Option<Child>,
    /// Killed by the suite and not restarted yet: the supervisor leaves it down.
    held_down: bool,
    restart_at: Option<Instant>,
    starts: u32,
}

#[derive(Debug, Default)]
struct State {
    procs: Vec<Proc>,
    exits: Vec<Exit>,
}

/// The running components.
#[derive(Debug)]
pub struct Platform {
    state: Mutex<State>,
    logs: PathBuf,
    rust_log: String,
    stopping: AtomicBool,
    http: reqwest::Client,
    /// The billing job's program and environment.
    billing: (PathBuf, HashMap<String, String>),
}

impl Platform {
    /// Starts workers `w1`, `w2`, dispatchers `d1` (then, once it leads, `d2`) and the gateway
    /// `gw` against the sandbox's services and ZooKeeper `zk`; returns once `d1` leads, both
    /// workers beat and the gateway is healthy. Component logs go to `logs`.
    pub async fn start(
        sb: &Sandbox,
        zk: &str,
        work_dir: &Path,
        logs: &Path,
    ) -> anyhow::Result<Arc<Platform>> {
        let rust_log = std::env::var("FAULTS_RUST_LOG").unwrap_or_else(|_| {
            "warn,worker=info,dispatcher=info,gateway=info,common=info".to_owned()
        });
        let p = Arc::new(Platform {
            state: Mutex::new(State::default()),
            logs: logs.to_owned(),
            rust_log,
            stopping: AtomicBool::new(false),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(2))
                .build()?,
            billing: (
                PathBuf::from(sb.binary_command("billing-job", &[]).get_program()),
                sb.env(&[]),
            ),
        });
        let tag = tests::rand_id();
        for n in 1..=2 {
            let id = format!("faults-w{n}-{tag}");
            let dir = work_dir.join(&id).to_string_lossy().into_owned();
            p.add(
                sb,
                &format!("w{n}"),
                "worker",
                "WORKER_ADDR",
                &[
                    ("WORKER_ID", &id),
                    ("WORKER_DIR", &dir),
                    ("WORKER_MEMORY_MB", "2048"),
                    ("WORKER_PREWARM", "python3"),
                ],
            );
        }
        let session = format!("{}ms", SESSION_TIMEOUT.as_millis());
        for n in 1..=2 {
            p.add(
                sb,
                &format!("d{n}"),
                "dispatcher",
                "DISPATCHER_ADDR",
                &[
                    ("DISPATCHER_ID", &format!("d{n}")),
                    ("ZK_CONNECT", zk),
                    ("DISPATCHER_ZK_SESSION_TIMEOUT", &session),
                ],
            );
        }
        p.add(
            sb,
            "gw",
            "gateway",
            "GATEWAY_ADDR",
            &[("GATEWAY_ID", "gw"), ("GATEWAY_THREADS", "2")],
        );
        for name in ["w1", "w2", "d1", "gw"] {
            p.spawn(name)?;
        }
        p.wait(Duration::from_secs(60), "d1 leads", || async {
            p.leaders().await == ["d1"]
        })
        .await?;
        p.spawn("d2")?;
        let gw = p.url("gw", "/healthz");
        p.wait(
            Duration::from_secs(60),
            "the gateway is healthy",
            || async {
                p.http
                    .get(&gw)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await?;
        tokio::spawn(supervise(Arc::downgrade(&p)));
        Ok(p)
    }

    fn add(&self, sb: &Sandbox, name: &str, bin: &str, addr_var: &str, extra: &[(&str, &str)]) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut all = extra.to_vec();
        all.push((addr_var, &addr));
        let program = PathBuf::from(sb.binary_command(bin, &[]).get_program());
        self.lock().procs.push(Proc {
            name: name.to_owned(),
            program,
            env: sb.env(&all),
            port,
            child: None,
            held_down: false,
            restart_at: None,
            starts: 0,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:<port of name><path>`.
    pub fn url(&self, name: &str, path: &str) -> String {
        let port = self
            .lock()
            .procs
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.port);
        format!("http://127.0.0.1:{port}{path}")
    }

    /// The log file of a component.
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Starts (or restarts) `name`; it is supervised again.
    pub fn spawn(&self, name: &str) -> anyhow::Result<()> {
        let mut st = self.lock();
        let p = st
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow::anyhow!("no component {name}"))?;
        start(p, &self.log_of(name), &self.rust_log)
    }

    /// SIGKILLs every component and starts it again, as an operator would a wedged platform
    /// (so that each fault starts from a working one).
    pub fn restart_all(&self) -> anyhow::Result<()> {
        let mut st = self.lock();
        for p in &mut st.procs {
            if let Some(mut c) = p.child.take() {
                send_signal(c.id(), "CONT", false);
                let _ = c.kill();
                let _ = c.wait();
            }
            start(p, &self.log_of(&p.name.clone()), &self.rust_log)?;
        }
        Ok(())
    }

    /// Sends `sig` to `name`. `KILL` keeps it down (reaped, not restarted) until
    /// [`Platform::spawn`].
    pub fn signal(&self, name: &str, sig: &str) -> anyhow::Result<()> {
        let mut st = self.lock();
        let p = st
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow::anyhow!("no component {name}"))?;
        let child = p
            .child
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
        anyhow::ensure!(
            send_signal(child.id(), sig, false),
            "kill -{sig} {name} failed"
        );
        if sig == "KILL" {
            let _ = child.wait();
            p.child = None;
            p.held_down = true;
        }
        Ok(())
    }

    /// The workers' ids (`WORKER_ID`) and their component names.
    pub fn worker_ids(&self) -> HashMap<String, String> {
        self.lock()
            .procs
            .iter()
            .filter_map(|p| Some((p.env.get("WORKER_ID")?.clone(), p.name.clone())))
            .collect()
    }

    /// Components that exited by themselves since the last call.
    pub fn take_exits(&self) -> Vec<Exit> {
        std::mem::take(&mut self.lock().exits)
    }

    /// Dispatchers whose `/healthz` says they lead.
    pub async fn leaders(&self) -> Vec<String> {
        let mut out = Vec::new();
        for name in ["d1", "d2"] {
            let url = self.url(name, "/healthz");
            let leads = match self.http.get(&url).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["leader"] == true),
                Err(_) => false,
            };
            if leads {
                out.push(name.to_owned());
            }
        }
        out
    }

    /// Waits until `check` holds, up to `deadline`.
    pub async fn wait<F, Fut>(
        &self,
        deadline: Duration,
        what: &str,
        mut check: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let t0 = Instant::now();
        while !check().await {
            anyhow::ensure!(t0.elapsed() < deadline, "not within {deadline:?}: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Stops supervising, SIGTERMs every component (workers drain and remove their
    /// containers) and waits up to `grace` for each, then SIGKILLs what is left.
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let pids: Vec<u32> = {
            let st = self.lock();
            st.procs
                .iter()
                .filter_map(|p| p.child.as_ref().map(Child::id))
                .collect()
        };
        for pid in &pids {
            send_signal(*pid, "CONT", false);
            send_signal(*pid, "TERM", false);
        }
        let t0 = Instant::now();
        loop {
            let running = self
                .lock()
                .procs
                .iter_mut()
                .filter_map(|p| p.child.as_mut())
                .filter_map(|c| c.try_wait().ok())
                .filter(Option::is_none)
                .count();
            if running == 0 || t0.elapsed() > grace {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill_all();
    }

    /// The billing job's command, against the platform's database.
    pub fn billing_command(&self) -> Command {
        let mut cmd = Command::new(&self.billing.0);
        cmd.env_clear()
            .envs(&self.billing.1)
            .env("RUST_LOG", "warn");
        cmd
    }

    /// SIGKILLs every component, no more restarts.
    pub fn kill_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for p in &mut self.lock().procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn start(p: &mut Proc, log: &Path, rust_log: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut out = OpenOptions::new().create(true).append(true).open(log)?;
    p.starts += 1;
    writeln!(
        out,
        "==== faults suite: start #{} of {} at {} ms",
        p.starts,
        p.name,
        schemas::now_ms()
    )?;
    let child = Command::new(&p.program)
        .env_clear()
        .envs(&p.env)
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    p.child = Some(child);
    p.held_down = false;
    p.restart_at = None;
    Ok(())
}

/// Restarts components that exited by themselves (after [`RESTART_DELAY`]), recording each
/// exit.
async fn supervise(p: std::sync::Weak<Platform>) {
    while let Some(p) = p.upgrade() {
        if p.stopping.load(Ordering::SeqCst) {
            break;
        }
        {
            let mut st = p.lock();
            let State { procs, exits } = &mut *st;
            let now = Instant::now();
            for c in procs.iter_mut() {
                if let Some(status) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                    exits.push(Exit {
                        name: c.name.clone(),
                        status: status.to_string(),
                    });
                    c.child = None;
                    c.restart_at = Some(now + RESTART_DELAY);
                }
                if c.child.is_none() && !c.held_down && c.restart_at.is_some_and(|t| t <= now) {
                    let log = p.log_of(&c.name);
                    if let Err(e) = start(c, &log, &p.rust_log) {
                        exits.push(Exit {
                            name: c.name.clone(),
                            status: format!("could not restart: {e:#}"),
                        });
                        c.restart_at = Some(now + RESTART_DELAY);
                    }
                }
            }
        }
        drop(p);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
