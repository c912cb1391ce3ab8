//! Leader election on ZooKeeper, with a fencing epoch.
//!
//! The recipe: every candidate creates an ephemeral sequential znode under
//! `/colorfaas/<prefix>/election`; the lowest sequence number leads; every other candidate
//! watches only its predecessor (no herd effect). Each znode holds the candidate's random token,
//! so a candidate whose `create` reply was lost in a connection loss finds and reuses its node
//! instead of making a second one.
//!
//! On winning, the leader bumps the data version of `/colorfaas/<prefix>/epoch`; that version is
//! its **fencing epoch**, which only grows. The moment the ZooKeeper connection is suspended
//! (`Connecting`) or the session ends (`Closed`), the candidate reports `Follower` — before the
//! session could have expired on the server — and rejoins when the connection comes back (same
//! session: same node) or with a new session (new node).
//!
//! The `zookeeper` crate is blocking, so the election runs on its own thread and reports
//! through a `tokio::sync::watch` channel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use zookeeper::{Acl, CreateMode, WatchedEvent, Watcher, ZkError, ZkState, ZooKeeper};

/// What this candidate is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    Leader { epoch: u64 },
}

/// Election settings.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub zk_connect: String,
    /// Namespace under `/colorfaas` (the AMQP prefix), so clusters and tests do not mix.
    pub namespace: String,
    pub candidate_id: String,
    pub session_timeout: Duration,
}

enum Event {
    State(ZkState),
    NodeChanged,
}

struct NoopWatcher;
impl Watcher for NoopWatcher {
    fn handle(&self, _: WatchedEvent) {}
}

/// The election thread's last sign of life: every wait and every step updates it. A blocking
/// ZooKeeper call that never returns (the client library has no timeouts) stops it, which the
/// dispatcher notices ([`Progress::stalled_for`]) and answers by exiting, so that a supervisor
/// restarts it rather than leaving it alive and out of the running.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    fn tick(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// How long since the thread last made progress.
    pub fn stalled_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the election on a thread until `stop` is set. Roles are published on `roles`. The
/// candidate takes part only while `eligible` is true (the dispatcher can reach RabbitMQ): when
/// it turns false the candidate leaves at once — its ZooKeeper session is closed, so its node
/// goes and a standby that can dispatch takes over — and joins again when it turns true.
pub fn spawn(
    cfg: ElectionConfig,
    roles: watch::Sender<Role>,
    stop: Arc<AtomicBool>,
    eligible: watch::Receiver<bool>,
) -> std::io::Result<(std::thread::JoinHandle<()>, Progress)> {
    let progress = Progress::default();
    progress.tick();
    let p = progress.clone();
    let handle = std::thread::Builder::new()
        .name("election".into())
        .spawn(move || {
            let gate = Gate {
                stop: &stop,
                eligible: &eligible,
                progress: &p,
            };
            while !gate.stopped() {
                gate.progress.tick();
                if !gate.eligible() {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                if let Err(e) = session(&cfg, &roles, &gate) {
                    tracing::warn!(candidate = cfg.candidate_id, error = %e, "election session ended");
                }
                let _ = roles.send(Role::Follower);
                if !gate.stopped() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            let _ = roles.send(Role::Follower);
        })?;
    Ok((handle, progress))
}

/// When the candidate must leave the election.
struct Gate<'a> {
    stop: &'a AtomicBool,
    eligible: &'a watch::Receiver<bool>,
    progress: &'a Progress,
}

impl Gate<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn eligible(&self) -> bool {
        *self.eligible.borrow()
    }

    /// Stop, or no longer eligible: leave the election. Called at every wait: a sign of life.
    fn leave(&self) -> bool {
        self.progress.tick();
        self.stopped() || !self.eligible()
    }
}

fn base(cfg: &ElectionConfig) -> String {
    format!("/colorfaas/{}", cfg.namespace)
}

fn ensure_path(zk: &ZooKeeper, path: &str) -> Result<(), ZkError> {
    let mut cur = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur.push('/');
        cur.push_str(part);
        match zk.create(
            &cur,
            Vec::new(),
            Acl::open_unsafe().clone(),
            CreateMode::Persistent,
        ) {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn seq_of(name: &str) -> u64 {
    name.rsplit('_')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

/// One ZooKeeper session: returns when it is closed or the candidate leaves.
fn session(cfg: &ElectionConfig, roles: &watch::Sender<Role>, gate: &Gate) -> Result<(), ZkError> {
    // A token per session: a node found by it is this session's own (created before a lost
    // reply), never one of an expired session that ZooKeeper has not deleted yet.
    let token = format!("{}:{}", cfg.candidate_id, uuid::Uuid::new_v4().simple());
    let token = token.as_str();
    let (tx, rx) = mpsc::channel::<Event>();
    let zk = ZooKeeper::connect(&cfg.zk_connect, cfg.session_timeout, NoopWatcher)?;
    let state_tx = tx.clone();
    zk.add_listener(move |s| {
        let _ = state_tx.send(Event::State(s));
    });
    let e = Election {
        zk: &zk,
        cfg,
        token,
        roles,
        gate,
        tx: &tx,
        rx: &rx,
    };
    let result = e.run();
    let _ = roles.send(Role::Follower);
    // Closing deletes this candidate's node at once: a successor need not wait for the
    // session to expire.
    let _ = zk.close();
    result
}

/// What a candidate does next after a wait.
enum Next {
    /// Look at the election again (a predecessor went, or the connection came back).
    Again,
    /// Leave the election (stop, or not eligible).
    Leave,
}

/// One candidate in one ZooKeeper session.
struct Election<'a> {
    zk: &'a ZooKeeper,
    cfg: &'a ElectionConfig,
    token: &'a str,
    roles: &'a watch::Sender<Role>,
    gate: &'a Gate<'a>,
    tx: &'a mpsc::Sender<Event>,
    rx: &'a mpsc::Receiver<Event>,
}

impl Election<'_> {
    fn run(&self) -> Result<(), ZkError> {
        let election = format!("{}/election", base(self.cfg));
        let epoch_path = format!("{}/epoch", base(self.cfg));
        ensure_path(self.zk, &election)?;
        ensure_path(self.zk, &epoch_path)?;
        let mut my_node: Option<String> = None;
        loop {
            if self.gate.leave() {
                return Ok(());
            }
            let (me, children) = self.join(&election, &mut my_node)?;
            let next = match children.iter().position(|c| *c == me) {
                None => Next::Again,
                Some(0) => self.lead(&epoch_path, &format!("{election}/{me}"))?,
                Some(i) => self.stand_by(&format!("{election}/{}", children[i - 1]))?,
            };
            if let Next::Leave = next {
                return Ok(());
            }
        }
    }

    /// Finds this candidate's node (reused after a reconnect, by its token) or creates it;
    /// returns it with the election's nodes in order.
    fn join(
        &self,
        election: &str,
        my_node: &mut Option<String>,
    ) -> Result<(String, Vec<String>), ZkError> {
        let mut children = self.sorted_children(election)?;
        if my_node.as_ref().is_none_or(|n| !children.contains(n)) {
            *my_node = children
                .iter()
                .find(|c| {
                    self.zk
                        .get_data(&format!("{election}/{c}"), false)
                        .is_ok_and(|(data, _)| data == self.token.as_bytes())
                })
                .cloned();
            if my_node.is_none() {
                let path = self.zk.create(
                    &format!("{election}/n_"),
                    self.token.as_bytes().to_vec(),
                    Acl::open_unsafe().clone(),
                    CreateMode::EphemeralSequential,
                )?;
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                tracing::info!(
                    candidate = self.cfg.candidate_id,
                    node = name,
                    "joined the election"
                );
                *my_node = Some(name);
            }
            children = self.sorted_children(election)?;
        }
        Ok((my_node.clone().unwrap_or_default(), children))
    }

    fn sorted_children(&self, path: &str) -> Result<Vec<String>, ZkError> {
        let mut children = self.zk.get_children(path, false)?;
        children.sort_by_key(|c| seq_of(c));
        Ok(children)
    }

    /// Leads: bumps the epoch and holds the lead until the connection is suspended or lost,
    /// this candidate's node goes, or the candidate leaves.
    fn lead(&self, epoch_path: &str, my_node: &str) -> Result<Next, ZkError> {
        // Watch our own node: if it goes (its session expired while we were cut off), someone
        // else may lead already.
        let node_tx = self.tx.clone();
        if self
            .zk
            .exists_w(my_node, move |_e: WatchedEvent| {
                let _ = node_tx.send(Event::NodeChanged);
            })?
            .is_none()
        {
            return Ok(Next::Again);
        }
        let stat = self
            .zk
            .set_data(epoch_path, self.token.as_bytes().to_vec(), None)?;
        let epoch = stat.version as u64;
        tracing::info!(
            candidate = self.cfg.candidate_id,
            epoch,
            "became the leader"
        );
        let _ = self.roles.send(Role::Leader { epoch });
        loop {
            if self.gate.leave() {
                return Ok(Next::Leave);
            }
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::State(ZkState::Connected)) => {}
                Ok(Event::NodeChanged) => {
                    if self.zk.exists(my_node, false)?.is_none() {
                        tracing::warn!(
                            candidate = self.cfg.candidate_id,
                            epoch,
                            "our election node is gone; stepping down"
                        );
                        let _ = self.roles.send(Role::Follower);
                        return Ok(Next::Again);
                    }
                    // Still there (e.g. its data changed): watch it again.
                    let node_tx = self.tx.clone();
                    self.zk.exists_w(my_node, move |_e: WatchedEvent| {
                        let _ = node_tx.send(Event::NodeChanged);
                    })?;
                }
                Ok(Event::State(ZkState::Closed)) | Ok(Event::State(ZkState::AuthFailed)) => {
                    tracing::warn!(
                        candidate = self.cfg.candidate_id,
                        epoch,
                        "zookeeper session closed; stepping down"
                    );
                    return Err(ZkError::SessionExpired);
                }
                Ok(Event::State(s)) => {
                    tracing::warn!(candidate = self.cfg.candidate_id, epoch, state = ?s, "zookeeper connection suspended; stepping down");
                    let _ = self.roles.send(Role::Follower);
                    return wait_connected(self.rx, self.gate);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(ZkError::ConnectionLoss),
            }
        }
    }

    /// Stands by, watching only the predecessor node, until it goes.
    fn stand_by(&self, pred: &str) -> Result<Next, ZkError> {
        let _ = self.roles.send(Role::Follower);
        let node_tx = self.tx.clone();
        let exists = self.zk.exists_w(pred, move |_e: WatchedEvent| {
            let _ = node_tx.send(Event::NodeChanged);
        })?;
        if exists.is_none() {
            return Ok(Next::Again);
        }
        tracing::debug!(
            candidate = self.cfg.candidate_id,
            predecessor = pred,
            "standing by"
        );
        loop {
            if self.gate.leave() {
                return Ok(Next::Leave);
            }
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::NodeChanged) => return Ok(Next::Again),
                Ok(Event::State(ZkState::Connected)) => {}
                Ok(Event::State(ZkState::Closed)) | Ok(Event::State(ZkState::AuthFailed)) => {
                    return Err(ZkError::SessionExpired)
                }
                Ok(Event::State(_)) => return wait_connected(self.rx, self.gate),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(ZkError::ConnectionLoss),
            }
        }
    }
}

/// After a suspension: waits for the same session to come back (then look again), or fails if
/// it closed.
fn wait_connected(rx: &mpsc::Receiver<Event>, gate: &Gate) -> Result<Next, ZkError> {
    loop {
        if gate.leave() {
            return Ok(Next::Leave);
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::State(ZkState::Connected)) | Ok(Event::State(ZkState::ConnectedReadOnly)) => {
                return Ok(Next::Again)
            }
            Ok(Event::State(ZkState::Closed)) | Ok(Event::State(ZkState::AuthFailed)) => {
                return Err(ZkError::SessionExpired)
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(ZkError::ConnectionLoss),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_sort_numerically() {
        let mut v = vec![
            "n_0000000010".to_owned(),
            "n_0000000002".to_owned(),
            "n_0000000009".to_owned(),
        ];
        v.sort_by_key(|c| seq_of(c));
        assert_eq!(v, ["n_0000000002", "n_0000000009", "n_0000000010"]);
    }
}
