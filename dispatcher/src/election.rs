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

use std::sync::atomic::{AtomicBool, Ordering};
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

/// Runs the election on a thread until `stop` is set. Roles are published on `roles`.
pub fn spawn(
    cfg: ElectionConfig,
    roles: watch::Sender<Role>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("election".into())
        .spawn(move || {
            let token = format!("{}:{}", cfg.candidate_id, uuid::Uuid::new_v4().simple());
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = session(&cfg, &token, &roles, &stop) {
                    tracing::warn!(candidate = cfg.candidate_id, error = %e, "election session ended");
                }
                let _ = roles.send(Role::Follower);
                if !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            let _ = roles.send(Role::Follower);
        })
        .expect("spawning the election thread")
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

/// One ZooKeeper session: returns when it is closed or stop is set.
fn session(
    cfg: &ElectionConfig,
    token: &str,
    roles: &watch::Sender<Role>,
    stop: &AtomicBool,
) -> Result<(), ZkError> {
    let (tx, rx) = mpsc::channel::<Event>();
    let zk = ZooKeeper::connect(&cfg.zk_connect, cfg.session_timeout, NoopWatcher)?;
    let state_tx = tx.clone();
    zk.add_listener(move |s| {
        let _ = state_tx.send(Event::State(s));
    });
    let result = elect(&zk, cfg, token, roles, stop, &tx, &rx);
    let _ = roles.send(Role::Follower);
    let _ = zk.close();
    result
}

fn elect(
    zk: &ZooKeeper,
    cfg: &ElectionConfig,
    token: &str,
    roles: &watch::Sender<Role>,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Event>,
    rx: &mpsc::Receiver<Event>,
) -> Result<(), ZkError> {
    let election = format!("{}/election", base(cfg));
    let epoch_path = format!("{}/epoch", base(cfg));
    ensure_path(zk, &election)?;
    ensure_path(zk, &epoch_path)?;
    let mut my_node: Option<String> = None;

    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Find our node (reuse it after a reconnect), else create it.
        let mut children = zk.get_children(&election, false)?;
        children.sort_by_key(|c| seq_of(c));
        if my_node.as_ref().is_none_or(|n| !children.contains(n)) {
            my_node = None;
            for c in &children {
                if let Ok((data, _)) = zk.get_data(&format!("{election}/{c}"), false) {
                    if data == token.as_bytes() {
                        my_node = Some(c.clone());
                        break;
                    }
                }
            }
            if my_node.is_none() {
                let path = zk.create(
                    &format!("{election}/n_"),
                    token.as_bytes().to_vec(),
                    Acl::open_unsafe().clone(),
                    CreateMode::EphemeralSequential,
                )?;
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                tracing::info!(
                    candidate = cfg.candidate_id,
                    node = name,
                    "joined the election"
                );
                my_node = Some(name);
            }
            children = zk.get_children(&election, false)?;
            children.sort_by_key(|c| seq_of(c));
        }
        let me = my_node.clone().unwrap_or_default();
        let idx = children.iter().position(|c| *c == me);
        match idx {
            None => continue,
            Some(0) => {
                let stat = zk.set_data(&epoch_path, token.as_bytes().to_vec(), None)?;
                let epoch = stat.version as u64;
                tracing::info!(candidate = cfg.candidate_id, epoch, "became the leader");
                let _ = roles.send(Role::Leader { epoch });
                // Lead until the connection is suspended or lost.
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(Event::State(ZkState::Connected)) | Ok(Event::NodeChanged) => {}
                        Ok(Event::State(ZkState::Closed))
                        | Ok(Event::State(ZkState::AuthFailed)) => {
                            tracing::warn!(
                                candidate = cfg.candidate_id,
                                epoch,
                                "zookeeper session closed; stepping down"
                            );
                            return Err(ZkError::SessionExpired);
                        }
                        Ok(Event::State(s)) => {
                            tracing::warn!(candidate = cfg.candidate_id, epoch, state = ?s, "zookeeper connection suspended; stepping down");
                            let _ = roles.send(Role::Follower);
                            wait_connected(rx, stop)?;
                            break;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            return Err(ZkError::ConnectionLoss)
                        }
                    }
                }
            }
            Some(i) => {
                let _ = roles.send(Role::Follower);
                let pred = format!("{election}/{}", children[i - 1]);
                let node_tx = tx.clone();
                let exists = zk.exists_w(&pred, move |_e: WatchedEvent| {
                    let _ = node_tx.send(Event::NodeChanged);
                })?;
                if exists.is_none() {
                    continue;
                }
                tracing::debug!(
                    candidate = cfg.candidate_id,
                    predecessor = children[i - 1],
                    "standing by"
                );
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(Event::NodeChanged) => break,
                        Ok(Event::State(ZkState::Connected)) => {}
                        Ok(Event::State(ZkState::Closed))
                        | Ok(Event::State(ZkState::AuthFailed)) => {
                            return Err(ZkError::SessionExpired)
                        }
                        Ok(Event::State(_)) => {
                            wait_connected(rx, stop)?;
                            break;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            return Err(ZkError::ConnectionLoss)
                        }
                    }
                }
            }
        }
    }
}

/// After a suspension: waits for the same session to come back, or fails if it closed.
fn wait_connected(rx: &mpsc::Receiver<Event>, stop: &AtomicBool) -> Result<(), ZkError> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::State(ZkState::Connected)) | Ok(Event::State(ZkState::ConnectedReadOnly)) => {
                return Ok(())
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
