//! Private instances of RabbitMQ, ZooKeeper and MongoDB (or its `nx-27017` stand-in) on their
//! own ports and data folders, for tests that stop, kill, pause and restart them without
//! disturbing the shared services everyone else's tests use. Each server runs in its own
//! process group, logs to a file in its folder, and is killed when dropped.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free loopback port")
}

/// True when something accepts TCP connections on the loopback `port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// Sends signal `sig` (`KILL`, `TERM`, `STOP`, `CONT`, ...) to process `pid`, or to its whole
/// process group when `group` is set. False when `kill` failed (e.g. the process is gone).
pub fn send_signal(pid: u32, sig: &str, group: bool) -> bool {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(target)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The last `n` lines of a log file (for error messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Process groups of the daemons alive now, for [`kill_all_daemons`].
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGKILLs every daemon of this process that is still alive: for a test's signal handler,
/// where no destructor will run.
pub fn kill_all_daemons() {
    for pgid in live().drain(..) {
        send_signal(pgid, "KILL", true);
    }
}

/// A server process in a process group of its own, its output appended to a log file. Killed
/// (the whole group) when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` as `name`, stdin closed, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Daemon> {
        use std::os::unix::process::CommandExt as _;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        live().push(child.id());
        Ok(Daemon {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `sig` to the whole process group.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        anyhow::ensure!(
            send_signal(pid, sig, true),
            "kill -{sig} {} failed",
            self.name
        );
        Ok(())
    }

    /// The exit status once the process has ended on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILLs the process group and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            live().retain(|&p| p != c.id());
            send_signal(c.id(), "KILL", true);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the process group and waits up to `grace` for it to exit, then SIGKILLs it.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.pid() {
            send_signal(pid, "CONT", true);
            send_signal(pid, "TERM", true);
            let t0 = Instant::now();
            while self.exited().is_none() && t0.elapsed() < grace {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.kill();
    }

    /// The log's last lines.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// Waits until `ready()` holds; fails early if the process exits, or after `timeout`.
    pub async fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) while starting; its log ends:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{} was not ready within {timeout:?}; its log ends:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first of `candidates` that exists, else `fallback` (looked up on `PATH`).
fn program(candidates: &[&str], fallback: &str) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(fallback))
}

/// A RabbitMQ node of its own (`rabbitmq-server` run directly as the current user, no plugins),
/// controlled with `rabbitmqctl -n <node>`.
#[derive(Debug)]
pub struct RabbitNode {
    dir: PathBuf,
    /// The Erlang node name, `<name>@localhost`.
    pub node: String,
    /// The AMQP port.
    pub port: u16,
    dist_port: u16,
    daemon: Option<Daemon>,
}

impl RabbitNode {
    /// Starts a node with its data, logs and configuration under `dir` (created); returns
    /// once it accepts AMQP connections.
    pub async fn start(dir: &Path) -> anyhow::Result<RabbitNode> {
        for d in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let port = free_port();
        let id = crate::rand_id();
        // The CLI authenticates to the node with this cookie ($HOME/.erlang.cookie).
        let cookie = dir.join("home/.erlang.cookie");
        std::fs::write(&cookie, format!("COLORFAASTEST{}", id.to_uppercase()))?;
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\nheartbeat = 10\n"),
        )?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        let mut node = RabbitNode {
            dir: dir.to_owned(),
            node: format!("cftest{id}@localhost"),
            port,
            dist_port: free_port(),
            daemon: None,
        };
        node.boot().await?;
        Ok(node)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// A RabbitMQ script (`rabbitmq-server`, `rabbitmqctl`) with this node's environment.
    fn command(&self, script: &str) -> Command {
        let bin = program(&[&format!("/usr/lib/rabbitmq/bin/{script}")], script);
        let d = |p: &str| self.dir.join(p);
        let mut cmd = Command::new(bin);
        cmd.current_dir(&self.dir)
            .env("HOME", d("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", d("rabbitmq.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
        cmd
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let cmd = self.command("rabbitmq-server");
        let mut daemon = Daemon::spawn("rabbitmq-server", cmd, &self.dir.join("server.out"))
            .context("is rabbitmq-server installed? (scripts/stack.sh installs it)")?;
        let port = self.port;
        daemon
            .wait_ready(Duration::from_secs(120), || port_open(port))
            .await?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Runs `rabbitmqctl -n <node> <args>`.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::from(self.command("rabbitmqctl"));
        let out = cmd
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .await
            .context("running rabbitmqctl")?;
        anyhow::ensure!(
            out.status.success(),
            "rabbitmqctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Stops the RabbitMQ application (every connection is closed; the Erlang node stays).
    pub async fn stop_app(&self) -> anyhow::Result<()> {
        self.ctl(&["stop_app"]).await
    }

    /// Starts the application again; returns once it accepts AMQP connections.
    pub async fn start_app(&mut self) -> anyhow::Result<()> {
        self.ctl(&["start_app"]).await?;
        let port = self.port;
        match self.daemon.as_mut() {
            Some(d) => {
                d.wait_ready(Duration::from_secs(60), || port_open(port))
                    .await
            }
            None => bail!("the node is not running"),
        }
    }

    /// SIGKILLs the node (its whole process group).
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Starts the node again on the same port and data; returns once it accepts connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.boot().await
    }

    /// The node's own log (and the server's console output).
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut logs = vec![self.dir.join("server.out")];
        if let Ok(rd) = std::fs::read_dir(self.dir.join("log")) {
            logs.extend(rd.flatten().map(|e| e.path()));
        }
        logs
    }
}

/// A standalone ZooKeeper server of its own (the Debian package's jar, run directly so that the
/// process is the JVM and its log goes to its folder), with the settings of `scripts/stack.sh`.
#[derive(Debug)]
pub struct ZkServer {
    dir: PathBuf,
    /// The client port.
    pub port: u16,
    daemon: Option<Daemon>,
}

impl ZkServer {
    /// Starts a server with its data and log under `dir` (created); returns once it answers
    /// `ruok`.
    pub async fn start(dir: &Path) -> anyhow::Result<ZkServer> {
        std::fs::create_dir_all(dir.join("data"))?;
        let port = free_port();
        std::fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nminSessionTimeout=1000\nmaxSessionTimeout=30000\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,stat,mntr\n",
                dir.join("data").display()
            ),
        )?;
        let mut zk = ZkServer {
            dir: dir.to_owned(),
            port,
            daemon: None,
        };
        zk.boot().await?;
        Ok(zk)
    }

    /// The connect string, `127.0.0.1:<port>`.
    pub fn connect(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let jar = Path::new("/usr/share/java/zookeeper.jar");
        anyhow::ensure!(
            jar.exists(),
            "{} is missing: install zookeeper (scripts/stack.sh does)",
            jar.display()
        );
        let mut cmd = Command::new(program(&["/usr/bin/java"], "java"));
        cmd.current_dir(&self.dir)
            .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
            .arg("-Dzookeeper.root.logger=INFO,CONSOLE")
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(format!("/etc/zookeeper/conf:{}", jar.display()))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.join("zoo.cfg"));
        let mut daemon = Daemon::spawn("zookeeper", cmd, &self.dir.join("zookeeper.out"))?;
        let port = self.port;
        daemon
            .wait_ready(Duration::from_secs(60), || zk_ruok(port))
            .await?;
        self.daemon = Some(daemon);
        Ok(())
    }

    fn daemon(&self) -> anyhow::Result<&Daemon> {
        self.daemon.as_ref().context("zookeeper is not running")
    }

    /// SIGSTOPs the server: it neither answers nor expires sessions until resumed.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.daemon()?.signal("STOP")
    }

    /// SIGCONTs a paused server.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.daemon()?.signal("CONT")
    }

    /// Stops the server (SIGTERM) and starts it again on the same port and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(10)).await;
        }
        self.boot().await
    }

    /// The server's console log.
    pub fn logs(&self) -> Vec<PathBuf> {
        vec![self.dir.join("zookeeper.out")]
    }
}

/// True when the ZooKeeper server on `port` answers the `ruok` four-letter word with `imok`.
fn zk_ruok(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut out = String::new();
    s.write_all(b"ruok").is_ok() && s.read_to_string(&mut out).is_ok() && out == "imok"
}

/// A MongoDB server of its own: `mongod` when it is on `PATH`, else the `nx-27017` stand-in
/// that `scripts/stack.sh` installs (`<repo>/.stack/venv/bin/nx-27017`, or under
/// `COLORFAAS_STATE_DIR`).
#[derive(Debug)]
pub struct MongoServer {
    dir: PathBuf,
    /// The server's port.
    pub port: u16,
    program: PathBuf,
    is_mongod: bool,
    daemon: Option<Daemon>,
}

impl MongoServer {
    /// Starts a server with its data under `dir` (created); returns once it accepts
    /// connections.
    pub async fn start(dir: &Path) -> anyhow::Result<MongoServer> {
        std::fs::create_dir_all(dir.join("data"))?;
        let (program, is_mongod) = mongo_program()?;
        let mut m = MongoServer {
            dir: dir.to_owned(),
            port: free_port(),
            program,
            is_mongod,
            daemon: None,
        };
        m.boot().await?;
        Ok(m)
    }

    /// `mongodb://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.program);
        let data = self.dir.join("data");
        let port = self.port.to_string();
        if self.is_mongod {
            cmd.args(["--bind_ip", "127.0.0.1", "--port", &port, "--dbpath"])
                .arg(&data);
        } else {
            cmd.args(["--host", "127.0.0.1", "--port", &port, "--data-dir"])
                .arg(&data)
                .arg("--log-file")
                .arg(self.dir.join("nx-27017.log"))
                .arg("--pid-file")
                .arg(self.dir.join("nx-27017.pid"));
        }
        cmd.current_dir(&self.dir);
        let mut daemon = Daemon::spawn("mongodb", cmd, &self.dir.join("mongodb.out"))?;
        let p = self.port;
        daemon
            .wait_ready(Duration::from_secs(60), || port_open(p))
            .await?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Starts it again on the same port and data; returns once it accepts connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.boot().await
    }

    /// The server's logs.
    pub fn logs(&self) -> Vec<PathBuf> {
        vec![self.dir.join("mongodb.out"), self.dir.join("nx-27017.log")]
    }
}

/// `mongod` on `PATH`, else the stand-in installed by `scripts/stack.sh`.
fn mongo_program() -> anyhow::Result<(PathBuf, bool)> {
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
    };
    if let Some(p) = on_path("mongod") {
        return Ok((p, true));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let state = std::env::var_os("COLORFAAS_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".stack"));
    let standin = state.join("venv/bin/nx-27017");
    if standin.exists() {
        return Ok((standin, false));
    }
    if let Some(p) = on_path("nx-27017") {
        return Ok((p, false));
    }
    bail!(
        "neither mongod nor the nx-27017 stand-in ({}) is installed: run scripts/stack.sh",
        standin.display()
    )
}
