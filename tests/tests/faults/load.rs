//! Steady load over HTTP against the gateway, and the ledger of what it was told: every run
//! the gateway accepted (202, or a sync answer naming a run) with the result it must end with,
//! and every sync answer with when it was sent and answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Async invocations started per second.
const ASYNC_EVERY: Duration = Duration::from_millis(125);
/// Sync invocations started per second (open loop: a stuck call does not delay the next).
const SYNC_EVERY: Duration = Duration::from_millis(250);
/// Most requests of one kind in flight at once; a tick finding none free is skipped.
const MAX_IN_FLIGHT: usize = 48;

/// What a run must end with: `{"sum": a + b, "nonce": nonce}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    pub sum: i64,
    pub nonce: String,
}

impl Expect {
    /// True when `v` is exactly the expected result.
    pub fn matches(&self, v: &Value) -> bool {
        v == &json!({"sum": self.sum, "nonce": self.nonce})
    }
}

/// A run the gateway accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The ledger phase (fault) during which it was accepted.
    pub phase: usize,
    pub expect: Expect,
    pub sync: bool,
    /// A run whose container the suite killed: a platform failure (unbilled) is right too.
    pub victim: bool,
}

/// How a sync call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    /// 200 with the expected result.
    Right,
    /// 200 with another body.
    Wrong(String),
    /// Another status, or no HTTP answer at all (`None`).
    Failed(Option<u16>),
}

/// One sync call.
#[derive(Debug, Clone)]
pub struct SyncCall {
    pub function: String,
    pub sent: Instant,
    pub answered: Instant,
    pub outcome: SyncOutcome,
}

#[derive(Debug, Default)]
struct Book {
    accepted: HashMap<String, Accepted>,
    sync: Vec<SyncCall>,
    /// Refused or unanswered requests per phase, by status (0: no HTTP answer).
    refused: HashMap<usize, HashMap<u16, u64>>,
}

/// What the load was told (and how often two dispatchers said they led at once), shared by
/// the load tasks and the suite.
#[derive(Debug, Default)]
pub struct Ledger {
    phase: AtomicUsize,
    nonce: AtomicU64,
    book: Mutex<Book>,
    two_leaders: Mutex<HashMap<usize, u32>>,
}

impl Ledger {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs accepted from now on belong to `phase`.
    pub fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    pub fn phase(&self) -> usize {
        self.phase.load(Ordering::SeqCst)
    }

    /// Fresh arguments and the result they must produce; one run in three sleeps (0.25 s to
    /// 1.25 s) so that faults land mid-run.
    pub fn args(&self, sleep_s: Option<f64>) -> (Value, Expect) {
        let n = self.nonce.fetch_add(1, Ordering::SeqCst);
        let (a, b) = ((n * 7919) % 100_003, (n * 104_729) % 1_000_033);
        let sleep = sleep_s.unwrap_or(match n % 3 {
            0 => 0.25 * (1 + n % 5) as f64,
            _ => 0.0,
        });
        let nonce = format!("{}-{n}", tests::rand_id());
        let expect = Expect {
            sum: (a + b) as i64,
            nonce: nonce.clone(),
        };
        (
            json!({"a": a, "b": b, "nonce": nonce, "sleep": sleep}),
            expect,
        )
    }

    /// Records an accepted run.
    pub fn accept(&self, run_id: &str, expect: Expect, sync: bool, victim: bool) {
        let phase = self.phase();
        self.book().accepted.insert(
            run_id.to_owned(),
            Accepted {
                phase,
                expect,
                sync,
                victim,
            },
        );
    }

    fn refuse(&self, status: Option<u16>) {
        let phase = self.phase();
        *self
            .book()
            .refused
            .entry(phase)
            .or_default()
            .entry(status.unwrap_or(0))
            .or_default() += 1;
    }

    fn sync_done(&self, call: SyncCall) {
        self.book().sync.push(call);
    }

    /// Records that two dispatchers said they led at once (one sample of the current phase).
    pub fn saw_two_leaders(&self) {
        let phase = self.phase();
        *self
            .two_leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(phase)
            .or_default() += 1;
    }

    /// Samples of `phase` in which two dispatchers said they led.
    pub fn two_leaders(&self, phase: usize) -> u32 {
        self.two_leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&phase)
            .copied()
            .unwrap_or(0)
    }

    /// Every accepted run.
    pub fn accepted(&self) -> HashMap<String, Accepted> {
        self.book().accepted.clone()
    }

    /// Refusals of `phase`, by status (0: no HTTP answer).
    pub fn refused(&self, phase: usize) -> HashMap<u16, u64> {
        self.book().refused.get(&phase).cloned().unwrap_or_default()
    }

    /// Every sync call answered so far.
    pub fn sync_calls(&self) -> Vec<SyncCall> {
        self.book().sync.clone()
    }

    /// When the first sync call of `function` sent at or after `t` was answered right.
    pub fn first_right_sync_after(&self, t: Instant, function: &str) -> Option<Instant> {
        self.book()
            .sync
            .iter()
            .filter(|c| c.function == function && c.sent >= t && c.outcome == SyncOutcome::Right)
            .map(|c| c.answered)
            .min()
    }
}

/// Where and as whom the load invokes.
#[derive(Debug, Clone)]
pub struct Target {
    pub client: reqwest::Client,
    pub gateway: String,
    pub key: String,
}

impl Target {
    pub fn new(gateway: String, key: String) -> Target {
        let client = reqwest::Client::builder()
            // A killed gateway leaves pooled connections dead: connect afresh every time.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client");
        Target {
            client,
            gateway,
            key,
        }
    }

    /// `POST /v1/invoke/{function}`: status, `X-Run-Id`, JSON body (`Null` if none).
    pub async fn invoke(
        &self,
        function: &str,
        args: &Value,
        sync: bool,
    ) -> Result<(u16, Option<String>, Value), reqwest::Error> {
        let resp = self
            .client
            .post(format!("{}/v1/invoke/{function}", self.gateway))
            .bearer_auth(&self.key)
            .header("x-invocation-type", if sync { "sync" } else { "async" })
            .json(args)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let run_id = resp
            .headers()
            .get("x-run-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, run_id, body))
    }
}

/// One async invocation; records its acceptance (as a `victim` run if asked) or refusal and
/// returns the run id when accepted.
pub async fn call_async(
    ledger: &Ledger,
    target: &Target,
    function: &str,
    sleep: Option<f64>,
    victim: bool,
) -> Option<String> {
    let (args, expect) = ledger.args(sleep);
    match target.invoke(function, &args, false).await {
        Ok((202, _, body)) => match body["run_id"].as_str() {
            Some(id) => {
                ledger.accept(id, expect, false, victim);
                Some(id.to_owned())
            }
            None => {
                ledger.refuse(Some(202));
                None
            }
        },
        Ok((status, _, _)) => {
            ledger.refuse(Some(status));
            None
        }
        Err(_) => {
            ledger.refuse(None);
            None
        }
    }
}

/// One sync invocation; records the answer, and the run if the gateway named one.
pub async fn call_sync(ledger: &Ledger, target: &Target, function: &str) -> SyncOutcome {
    let (args, expect) = ledger.args(Some(0.0));
    let sent = Instant::now();
    let outcome = match target.invoke(function, &args, true).await {
        Ok((200, run_id, body)) => {
            if let Some(id) = run_id {
                ledger.accept(&id, expect.clone(), true, false);
            }
            if expect.matches(&body) {
                SyncOutcome::Right
            } else {
                SyncOutcome::Wrong(body.to_string())
            }
        }
        Ok((status, _, body)) => {
            match body["run_id"].as_str() {
                Some(id) => ledger.accept(id, expect, true, false),
                None => ledger.refuse(Some(status)),
            }
            SyncOutcome::Failed(Some(status))
        }
        Err(_) => {
            ledger.refuse(None);
            SyncOutcome::Failed(None)
        }
    };
    ledger.sync_done(SyncCall {
        function: function.to_owned(),
        sent,
        answered: Instant::now(),
        outcome: outcome.clone(),
    });
    outcome
}

/// The running load: an async and a sync stream against one function.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    drivers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts both streams; they run until [`Load::stop`] or `limit` has passed.
    pub fn start(ledger: Arc<Ledger>, target: Target, function: &str, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let drivers = [false, true]
            .into_iter()
            .map(|sync| {
                let (ledger, target, stop) = (ledger.clone(), target.clone(), stop.clone());
                let function = function.to_owned();
                tokio::spawn(drive(ledger, target, function, sync, stop, limit))
            })
            .collect();
        Load { stop, drivers }
    }

    /// Stops starting requests and waits for those in flight.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for d in self.drivers {
            let _ = d.await;
        }
    }
}

async fn drive(
    ledger: Arc<Ledger>,
    target: Target,
    function: String,
    sync: bool,
    stop: Arc<AtomicBool>,
    limit: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(if sync { SYNC_EVERY } else { ASYNC_EVERY });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let t0 = Instant::now();
    while !stop.load(Ordering::SeqCst) && t0.elapsed() < limit {
        tick.tick().await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (ledger, target, function) = (ledger.clone(), target.clone(), function.clone());
        tokio::spawn(async move {
            if sync {
                call_sync(&ledger, &target, &function).await;
            } else {
                call_async(&ledger, &target, &function, None, false).await;
            }
            drop(slot);
        });
    }
    // Wait for the requests in flight (each is bounded by the client's timeout).
    let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
}
