//! What happened to this worker's containers, from Docker's event stream: which ones someone
//! else killed or removed (`docker kill`, `docker rm -f`, `docker stop`, a daemon shutdown),
//! which the kernel killed for memory, which exited by themselves. The worker marks the
//! containers it removes itself ([`Deaths::ours`]), so the rest are outsiders' doing: a run
//! whose container was lost that way is the platform's failure (not billed), while an OOM kill
//! or an exit stays the function's. A function cannot forge these events: only Docker's API
//! emits them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// How many ids of containers being removed by this worker are remembered while Docker's
/// `destroy` events (which forget them) do not arrive.
const MAX_OURS: usize = 10_000;

/// What Docker reported about one container that this worker did not remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Death {
    /// Docker was asked to kill it (kill, rm -f, stop), not by this worker.
    pub killed: bool,
    /// The kernel's OOM killer struck in it.
    pub oom: bool,
    /// It stopped, with this exit code.
    pub exit_code: Option<i64>,
    /// It was removed.
    pub removed: bool,
}

/// How a container that stopped answering ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The kernel killed it for its memory limit.
    OutOfMemory,
    /// Someone else killed or removed it, or Docker cannot say (the daemon is unreachable).
    Lost,
    /// It exited by itself with this code: the function's doing (crash, `os._exit`).
    Exited(i64),
    /// It still runs: the function closed the agent's connection.
    Running,
}

impl Death {
    /// Whether the container has stopped (or is gone).
    pub fn ended(&self) -> bool {
        self.exit_code.is_some() || self.removed
    }

    /// How it ended, once `ended`.
    pub fn fate(&self) -> Fate {
        if self.killed {
            Fate::Lost
        } else if self.oom {
            Fate::OutOfMemory
        } else {
            match self.exit_code {
                // SIGKILL that no one asked Docker for: the kernel's OOM killer (some cgroup v1
                // hosts do not report it as such).
                Some(137) => Fate::OutOfMemory,
                Some(code) => Fate::Exited(code),
                None => Fate::Lost,
            }
        }
    }
}

/// Deaths of this worker's containers that it did not cause.
#[derive(Debug, Default)]
pub struct Deaths {
    seen: Mutex<HashMap<String, Death>>,
    ours: Mutex<HashSet<String>>,
    changed: Notify,
    streaming: AtomicBool,
}

impl Deaths {
    /// This worker is about to stop and remove container `id`: its events are not news.
    pub fn ours(&self, id: &str) {
        let mut ours = self.ours.lock().unwrap_or_else(|e| e.into_inner());
        if ours.len() >= MAX_OURS {
            ours.clear();
        }
        ours.insert(id.to_owned());
    }

    /// Records one Docker event (`kill`, `oom`, `die`, `destroy`) of container `id`. Returns
    /// what is known of its death when this event ended a container the worker did not stop.
    pub fn record(&self, id: &str, action: &str, exit_code: Option<i64>) -> Option<Death> {
        let ours = {
            let mut ours = self.ours.lock().unwrap_or_else(|e| e.into_inner());
            let is = ours.contains(id);
            if action == "destroy" {
                ours.remove(id);
            }
            is
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if ours || action == "destroy" {
            // Removed (by anyone): nothing will ask about it any more, except a classification
            // in progress, which has seen `die` first.
            let d = seen.remove(id);
            drop(seen);
            self.changed.notify_waiters();
            return d.filter(|_| !ours).map(|d| Death { removed: true, ..d });
        }
        let d = seen.entry(id.to_owned()).or_default();
        match action {
            "kill" => d.killed = true,
            "oom" => d.oom = true,
            "die" => d.exit_code = Some(exit_code.unwrap_or(-1)),
            _ => {}
        }
        let out = (action == "die").then(|| d.clone());
        drop(seen);
        self.changed.notify_waiters();
        out
    }

    /// What is known about container `id`.
    pub fn get(&self, id: &str) -> Option<Death> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Resolves at the next recorded event (enable it before looking).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Whether the event stream is connected (else classifications fall back to inspecting).
    pub fn streaming(&self) -> bool {
        self.streaming.load(Ordering::SeqCst)
    }

    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outsiders_kills_are_told_from_ours_and_from_the_functions() {
        let d = Deaths::default();
        // docker kill from outside: kill, then die 137.
        assert_eq!(d.record("a", "kill", None), None);
        let a = d.record("a", "die", Some(137)).unwrap();
        assert_eq!(a.fate(), Fate::Lost);
        // The OOM killer: oom, then die 137.
        d.record("b", "oom", None);
        assert_eq!(
            d.record("b", "die", Some(137)).unwrap().fate(),
            Fate::OutOfMemory
        );
        // The function exits by itself.
        assert_eq!(
            d.record("c", "die", Some(3)).unwrap().fate(),
            Fate::Exited(3)
        );
        // This worker removes one: none of its events are news, and it is forgotten.
        d.ours("e");
        assert_eq!(d.record("e", "kill", None), None);
        assert_eq!(d.record("e", "die", Some(137)), None);
        assert_eq!(d.record("e", "destroy", None), None);
        assert_eq!(d.get("e"), None);
        assert!(d.ours.lock().unwrap().is_empty());
        // rm -f of a running container from outside: removed, lost.
        d.record("f", "kill", None);
        d.record("f", "die", Some(137));
        let f = d.record("f", "destroy", None).unwrap();
        assert!(f.removed && f.fate() == Fate::Lost);
        assert_eq!(d.get("f"), None);
    }
}
