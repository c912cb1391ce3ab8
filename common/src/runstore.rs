//! The batched run-record writer. Hot paths hand it writes over a channel and go on; a single
//! task groups whatever has queued up into one `insert` and one `update` command per round trip
//! (group commit: batches grow with load; a writer spawned with a linger lets background writes
//! wait that long for company, since a database's cost is mostly per command, not per document).
//! Writes are never dropped: a failed batch is retried with back-off until it lands.
//!
//! Ordering rules, which make the writes commute:
//! - `Pending` inserts; a duplicate key (the run already exists) is ignored.
//! - `Started` moves only a `pending` run to `running`.
//! - `Finished` upserts the final state unless the run is already final or carries a newer
//!   fencing epoch; a refused duplicate is ignored. So a late `Pending` or `Started` never
//!   overwrites a final run, and a finish delivered twice lands once.
//! - A `Finished` write may also leave the run `pending` for an async retry (the attempt
//!   appended, `next_attempt_at_ms` set; it settles no money). Every write carrying attempt `n`
//!   requires attempt `n` not stored yet, so each attempt is recorded (and billed) once.
//!
//! A finish that lands settles the run's money on its user's counters (`accounts::hold`): its
//! cost is added to `spent_micros` and its reservation (the [`schemas::Hold`] it carries) is
//! released, in one `$inc` per user per batch, after the runs are stored. A refused finish
//! settles nothing, so a run is counted and released at most once. Settling survives a writer
//! that dies half-way (a crash-safe protocol, per batch `B` with money to settle):
//! 1. the final writes themselves mark their runs `settle: B` (atomic with the run becoming
//!    final);
//! 2. each user's `$inc` requires `B` absent from the user's `settling` list and pushes it
//!    there, in the same update: applying `B` twice changes nothing;
//! 3. the runs' marks are removed; 4. `B` is pulled from the users' lists.
//!
//! [`recover`] finishes what a dead writer left: for every batch still marked on runs it
//! recomputes each user's settlement from those runs (the same runs, the same amounts) and runs
//! steps 2–4; it also drops list entries whose runs are unmarked already. Every writer runs it
//! at start and every minute, and the billing job before it bills; running it concurrently
//! with a live writer is harmless (every step is idempotent).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use accounts::Settlement;
use bson::{doc, Document};
use mongodb::Database;
use schemas::names::collections;
use schemas::{BillState, RunDoc, RunStatus};
use tokio::sync::{mpsc, oneshot};

/// One write to the runs collection.
#[derive(Debug, Clone)]
pub enum RunWrite {
    /// The gateway accepted the invocation.
    Pending(Box<RunDoc>),
    /// A worker started it.
    Started {
        run_id: String,
        worker_id: String,
        epoch: u64,
        started_at_ms: i64,
    },
    /// It ended; the doc holds the final state (and the identity fields, in case the pending
    /// insert has not landed yet).
    Finished(Box<RunDoc>),
}

impl RunWrite {
    fn run_id(&self) -> &str {
        match self {
            RunWrite::Pending(d) | RunWrite::Finished(d) => &d.id,
            RunWrite::Started { run_id, .. } => run_id,
        }
    }
}

enum Msg {
    /// A write, and who waits for it to be stored (told whether it landed).
    Write(RunWrite, Option<oneshot::Sender<bool>>),
    Flush(oneshot::Sender<bool>),
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct RunWriter {
    tx: mpsc::Sender<Msg>,
    failing: Arc<AtomicBool>,
}

impl std::fmt::Debug for RunWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunWriter")
    }
}

/// Largest number of writes in one round trip.
const MAX_BATCH: usize = 2000;

/// Writes the writer holds at most; writers wait (back-pressure) beyond it.
const QUEUE: usize = 100_000;

impl RunWriter {
    /// Starts the writer task. It ends when every handle is dropped and the queue is drained.
    pub fn spawn(db: Database) -> (RunWriter, tokio::task::JoinHandle<()>) {
        RunWriter::spawn_with_linger(db, Duration::ZERO)
    }

    /// Like [`RunWriter::spawn`], but a batch of background writes (no [`write_durable`] or
    /// [`flush`] waiting on it) waits up to `linger` for more writes before its round trip, so a
    /// steady trickle shares round trips instead of paying one each. A waiting caller's write
    /// goes out at once with everything queued before it.
    ///
    /// [`write_durable`]: RunWriter::write_durable
    /// [`flush`]: RunWriter::flush
    pub fn spawn_with_linger(
        db: Database,
        linger: Duration,
    ) -> (RunWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let failing = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(db, rx, linger, failing.clone()));
        (RunWriter { tx, failing }, task)
    }

    /// Queues a write and returns at once.
    pub async fn write(&self, w: RunWrite) {
        if self.tx.send(Msg::Write(w, None)).await.is_err() {
            tracing::error!("run writer is gone; a run record was not written");
        }
    }

    /// Queues a write and waits until the batch holding it is stored.
    pub async fn write_durable(&self, w: RunWrite) -> anyhow::Result<()> {
        self.write_waited(w).await.map(drop)
    }

    /// Stores a run's final state and waits until it is stored: `true` when this write made
    /// the run final, `false` when it was refused because the run already was final (another
    /// worker finished it, or a newer leader's epoch holds it).
    pub async fn finish(&self, d: RunDoc) -> anyhow::Result<bool> {
        self.write_waited(RunWrite::Finished(Box::new(d))).await
    }

    async fn write_waited(&self, w: RunWrite) -> anyhow::Result<bool> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Write(w, Some(done)))
            .await
            .map_err(|_| anyhow::anyhow!("run writer is gone"))?;
        wait.await
            .map_err(|_| anyhow::anyhow!("run writer stopped before storing the run"))
    }

    /// True while the database refuses the writer's round trips (it keeps retrying them).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Writes queued and not stored yet.
    pub fn backlog(&self) -> usize {
        QUEUE - self.tx.capacity()
    }

    /// At shutdown: waits up to `within` for everything queued to be stored (and settled);
    /// warns about what is left when the database does not take it in time, so a stopping
    /// component never hangs on an unreachable database. What the writer drops here was not
    /// acknowledged to anyone as stored (final records are stored before their tasks are
    /// acked), so it is redone by whoever takes the task again.
    pub async fn drain(&self, within: Duration) {
        if tokio::time::timeout(within, self.flush()).await.is_err() {
            tracing::warn!(
                backlog = self.backlog(),
                ?within,
                "run records not stored at shutdown"
            );
        }
    }

    /// Waits until everything queued before this call is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Who waits on a batch: the index of their write in it (`None` for a flush).
type Waiters = Vec<(oneshot::Sender<bool>, Option<usize>)>;

fn take(m: Msg, batch: &mut Vec<RunWrite>, waiters: &mut Waiters) {
    match m {
        Msg::Write(w, done) => {
            if let Some(done) = done {
                waiters.push((done, Some(batch.len())));
            }
            batch.push(w);
        }
        Msg::Flush(done) => waiters.push((done, None)),
    }
}

async fn run(
    db: Database,
    mut rx: mpsc::Receiver<Msg>,
    linger: Duration,
    failing: Arc<AtomicBool>,
) {
    let mut batch: Vec<RunWrite> = Vec::new();
    let mut waiters: Waiters = Vec::new();
    let mut last_recovery = std::time::Instant::now();
    if let Err(e) = recover(&db).await {
        tracing::warn!(error = %format!("{e:#}"), "recovering unsettled runs failed; trying again later");
    }
    while let Some(first) = rx.recv().await {
        take(first, &mut batch, &mut waiters);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => take(m, &mut batch, &mut waiters),
                Err(_) => break,
            }
        }
        if !linger.is_zero() {
            let until = tokio::time::Instant::now() + linger;
            while waiters.is_empty() && batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(m)) => take(m, &mut batch, &mut waiters),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let mut backoff = Duration::from_millis(50);
        let (spent, refused, settle_id) = loop {
            // A batch id per attempt for the settlement of its finishes (see the module doc):
            // finishes that landed in a failed attempt keep that attempt's id, and are settled
            // by `recover`.
            let settle_id = uuid::Uuid::now_v7().to_string();
            match store(&db, &batch, &settle_id).await {
                Ok((spent, refused)) => break (spent, refused, settle_id),
                Err(e) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %format!("{e:#}"), writes = batch.len(), "storing run records failed; retrying until stored");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        if failing.swap(false, Ordering::Relaxed) {
            tracing::info!(writes = batch.len(), "run records are stored again");
        }
        let settle_batch = (!spent.is_empty()).then_some(settle_id);
        // Per-function metric buckets, off the writer's path (counts commute).
        let metrics = crate::fnmetrics::updates(&batch, &refused);
        if !metrics.is_empty() {
            let db = db.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::fnmetrics::record(&db, metrics).await {
                    tracing::warn!(error = %format!("{e:#}"), "counting finished runs in the metric buckets failed");
                }
            });
        }
        batch.clear();
        // The records are stored: whoever waits on a write may go on while the money is
        // settled; a flush waits for the settlement too.
        let mut flushes = Vec::new();
        for (w, index) in waiters.drain(..) {
            match index {
                Some(i) => {
                    let _ = w.send(!refused.contains(&i));
                }
                None => flushes.push(w),
            }
        }
        if let Some(b) = settle_batch {
            // Retried on its own: retrying the runs' writes would find them final and settle
            // nothing.
            let mut backoff = Duration::from_millis(50);
            while let Err(e) = settle(&db, &spent, &b).await {
                tracing::warn!(error = %format!("{e:#}"), users = spent.len(), "settling finished runs' credit failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        for w in flushes {
            let _ = w.send(true);
        }
        if last_recovery.elapsed() > RECOVER_EVERY {
            last_recovery = std::time::Instant::now();
            if let Err(e) = recover(&db).await {
                tracing::warn!(error = %format!("{e:#}"), "recovering unsettled runs failed; trying again later");
            }
        }
    }
}

/// Stores one batch in at most two round trips. Returns the money of the runs whose final
/// record this batch wrote (refused duplicates excluded), per user, and the batch indices of
/// the finishes that were refused (the run was already final).
async fn store(
    db: &Database,
    batch: &[RunWrite],
    settle_id: &str,
) -> anyhow::Result<(HashMap<String, Settlement>, HashSet<usize>)> {
    // A finish in the same batch makes the start of the same run moot.
    let finished: HashMap<&str, ()> = batch
        .iter()
        .filter(|w| matches!(w, RunWrite::Finished(_)))
        .map(|w| (w.run_id(), ()))
        .collect();
    let mut inserts: Vec<Document> = Vec::new();
    let mut updates: Vec<Document> = Vec::new();
    // (statement index, finish) of every finish with money to settle.
    let mut costs: Vec<(usize, &RunDoc)> = Vec::new();
    // (statement index, batch index) of every finish.
    let mut finishes: Vec<(usize, usize)> = Vec::new();
    for (bi, w) in batch.iter().enumerate() {
        match w {
            RunWrite::Pending(d) => inserts.push(bson::to_document(d.as_ref())?),
            RunWrite::Started {
                run_id,
                worker_id,
                epoch,
                started_at_ms,
            } => {
                if finished.contains_key(run_id.as_str()) {
                    continue;
                }
                updates.push(doc! {
                    "q": {"_id": run_id, "status": RunStatus::Pending.as_str()},
                    "u": {"$set": {
                        "status": RunStatus::Running.as_str(),
                        "worker_id": worker_id,
                        "epoch": *epoch as i64,
                        "started_at_ms": started_at_ms,
                    }, "$unset": {"next_attempt_at_ms": ""}},
                });
            }
            RunWrite::Finished(d) => {
                // A record left pending for a retry settles nothing: the run stays reserved
                // and its attempts are settled, summed, by its final record.
                let money = d.status.is_final() && (d.billed_micros > 0 || d.hold.is_some());
                if money {
                    costs.push((updates.len(), d.as_ref()));
                }
                finishes.push((updates.len(), bi));
                updates.push(finish_statement(d, money.then_some(settle_id))?);
            }
        }
    }
    // Duplicate keys are expected: they are how repeated writes are refused.
    crate::wire::insert(db, collections::RUNS, inserts, "inserting pending runs").await?;
    let mut spent: HashMap<String, Settlement> = HashMap::new();
    let mut refused_finishes = HashSet::new();
    if !updates.is_empty() {
        let reply = db
            .run_command(doc! {
                "update": collections::RUNS,
                "updates": updates,
                "ordered": false,
            })
            .await?;
        // A refused finish (the run was already final) is a duplicate key on `_id`.
        let refused = crate::wire::duplicate_indices(&reply, "updating runs")?;
        for (i, d) in costs {
            if !refused.contains(&i) {
                let s = spent.entry(d.user_id.clone()).or_default();
                s.add(d.billed_micros, d.hold.as_ref());
            }
        }
        refused_finishes = finishes
            .into_iter()
            .filter(|(i, _)| refused.contains(i))
            .map(|(_, bi)| bi)
            .collect();
    }
    Ok((spent, refused_finishes))
}

/// How long a stopping component waits for its run writer ([`RunWriter::drain`]).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(20);

/// How often a writer looks for runs a dead writer left unsettled.
const RECOVER_EVERY: Duration = Duration::from_secs(60);

/// A batch younger than this is left to the writer that is settling it.
const RECOVER_AFTER: Duration = Duration::from_secs(30);

/// How long ago a settlement batch id (a UUID v7) was made.
fn batch_age(b: &str) -> Option<Duration> {
    let (secs, nanos) = uuid::Uuid::parse_str(b).ok()?.get_timestamp()?.to_unix();
    let made = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    std::time::SystemTime::now().duration_since(made).ok()
}

/// The field marking a final run whose money is not settled yet: the settlement batch's id.
pub const SETTLE: &str = "settle";

/// Steps 2–4 of the settlement protocol for batch `b` (see the module doc).
async fn settle(db: &Database, spent: &HashMap<String, Settlement>, b: &str) -> anyhow::Result<()> {
    let statements = accounts::hold::settle_statements(spent, b);
    crate::wire::update(db, collections::USERS, statements, "settling finished runs").await?;
    crate::wire::update(
        db,
        collections::RUNS,
        vec![doc! {"q": {SETTLE: b}, "u": {"$unset": {SETTLE: ""}}, "multi": true}],
        "marking runs settled",
    )
    .await?;
    let users: Vec<String> = spent.keys().cloned().collect();
    crate::wire::update(
        db,
        collections::USERS,
        vec![accounts::hold::forget_batch_statement(users, b)],
        "forgetting a settled batch",
    )
    .await?;
    Ok(())
}

/// Settles what dead writers left (see the module doc): every batch still marked on runs, then
/// the users' lists of batches whose runs are all unmarked. Returns the batches settled.
pub async fn recover(db: &Database) -> anyhow::Result<usize> {
    use futures::TryStreamExt as _;
    let runs = db.collection::<RunDoc>(collections::RUNS);
    let marked: Vec<bson::Document> = db
        .collection::<bson::Document>(collections::RUNS)
        .find(doc! {SETTLE: {"$exists": true}})
        .projection(doc! {"_id": 1, SETTLE: 1})
        .limit(10_000)
        .await?
        .try_collect()
        .await?;
    let mut batches: HashMap<String, Vec<String>> = HashMap::new();
    for d in marked {
        if let (Ok(id), Ok(b)) = (d.get_str("_id"), d.get_str(SETTLE)) {
            // A young batch may be a live writer's, between its steps: leave it to that writer.
            if batch_age(b).is_some_and(|age| age > RECOVER_AFTER) {
                batches.entry(b.to_owned()).or_default().push(id.to_owned());
            }
        }
    }
    for (b, ids) in &batches {
        let docs: Vec<RunDoc> = runs
            .find(doc! {"_id": {"$in": ids}, SETTLE: b})
            .await?
            .try_collect()
            .await?;
        let mut spent: HashMap<String, Settlement> = HashMap::new();
        for d in &docs {
            spent
                .entry(d.user_id.clone())
                .or_default()
                .add(d.billed_micros, d.hold.as_ref());
        }
        tracing::warn!(
            batch = b,
            runs = docs.len(),
            "settling runs a writer left unsettled"
        );
        settle(db, &spent, b).await?;
    }
    // Batches applied to users whose runs were unmarked before the writer died.
    let listed: Vec<bson::Document> = db
        .collection::<bson::Document>(collections::USERS)
        .find(doc! {format!("{}.0", accounts::hold::SETTLING): {"$exists": true}})
        .projection(doc! {"_id": 1, accounts::hold::SETTLING: 1})
        .await?
        .try_collect()
        .await?;
    for u in listed {
        let (Ok(user), Ok(list)) = (u.get_str("_id"), u.get_array(accounts::hold::SETTLING)) else {
            continue;
        };
        for b in list.iter().filter_map(|b| b.as_str()) {
            let still_marked = db
                .collection::<bson::Document>(collections::RUNS)
                .find_one(doc! {SETTLE: b})
                .projection(doc! {"_id": 1})
                .await?
                .is_some();
            if !still_marked {
                crate::wire::update(
                    db,
                    collections::USERS,
                    vec![accounts::hold::forget_batch_statement(
                        vec![user.to_owned()],
                        b,
                    )],
                    "forgetting a settled batch",
                )
                .await?;
            }
        }
    }
    Ok(batches.len())
}

fn finish_statement(d: &RunDoc, settle: Option<&str>) -> anyhow::Result<Document> {
    let final_states: Vec<&str> = RunStatus::FINAL.iter().map(|s| s.as_str()).collect();
    let mut set = doc! {
        "status": d.status.as_str(),
        "logs": &d.logs,
        "cold_start": d.cold_start,
        "duration_ms": d.duration_ms as i64,
        "billed_micros": d.billed_micros,
        "bill_state": bson::to_bson(&d.bill_state)?,
        "epoch": d.epoch as i64,
        "finished_at_ms": d.finished_at_ms.unwrap_or_else(schemas::now_ms),
    };
    if let Some(r) = &d.result_json {
        set.insert("result_json", r);
    }
    if let Some(e) = &d.error {
        set.insert("error", bson::to_bson(e)?);
    }
    if let Some(w) = &d.worker_id {
        set.insert("worker_id", w);
    }
    if let Some(s) = d.started_at_ms {
        set.insert("started_at_ms", s);
    }
    if let Some(b) = settle {
        set.insert(SETTLE, b);
    }
    let mut unset = Document::new();
    if !d.attempts.is_empty() {
        set.insert("attempts", bson::to_bson(&d.attempts)?);
    }
    match d.next_attempt_at_ms {
        Some(t) => {
            set.insert("next_attempt_at_ms", t);
        }
        None => {
            unset.insert("next_attempt_at_ms", "");
        }
    }
    if let Some(l) = &d.dead_letter {
        set.insert("dead_letter", bson::to_bson(l)?);
    }
    if !d.status.is_final() {
        // Waiting for a retry: not finished.
        set.remove("finished_at_ms");
        unset.insert("finished_at_ms", "");
    }
    let mut on_insert = doc! {
        "user_id": &d.user_id,
        "function_id": &d.function_id,
        "function": &d.function,
        "version": d.version as i64,
        "args_json": &d.args_json,
        "resources": bson::to_bson(&d.resources)?,
        "created_at_ms": d.created_at_ms,
    };
    if let Some(h) = &d.hold {
        on_insert.insert("hold", bson::to_bson(h)?);
    }
    let mut q = doc! {
        "_id": &d.id,
        "status": {"$nin": final_states},
        "epoch": {"$lte": d.epoch as i64},
    };
    // Exactly once per attempt: the write of attempt n is refused once attempt n is stored.
    if let Some(i) = free_attempt_index(d) {
        q.insert(format!("attempts.{i}"), doc! {"$exists": false});
    }
    let mut u = doc! {"$set": set, "$setOnInsert": on_insert};
    if !unset.is_empty() {
        u.insert("$unset", unset);
    }
    Ok(doc! {"q": q, "u": u, "upsert": true})
}

/// The index in `attempts` that must still be free for a write to land. A write of an
/// attempt's own outcome carries that attempt last: attempt `n` must not be stored yet. A write
/// that adds no attempt (the platform's failure, an expired event) carries the attempts before
/// it: no further one may be stored. `None` for writes that know of no attempt.
fn free_attempt_index(d: &RunDoc) -> Option<usize> {
    let adds = !d
        .error
        .as_ref()
        .is_some_and(|e| e.is_platform() || e.code == schemas::run_error_codes::EVENT_EXPIRED);
    if adds {
        d.attempts.last().map(|a| a.attempt.max(1) as usize - 1)
    } else if d.attempts.is_empty() {
        None
    } else {
        Some(d.attempts.len())
    }
}

/// A run's record, whatever its state (read from the primary).
pub async fn stored_run(db: &Database, run_id: &str) -> anyhow::Result<Option<RunDoc>> {
    Ok(db
        .collection::<RunDoc>(collections::RUNS)
        .find_one(doc! {"_id": run_id})
        .await?)
}

/// The result message of a stored final run (the inverse of [`finished_doc`]): what its
/// worker published, for publishing it again when that worker may have died first.
pub fn result_of(d: &RunDoc, callback_url: Option<String>) -> schemas::ResultMsg {
    schemas::ResultMsg {
        v: schemas::MESSAGE_VERSION,
        run_id: d.id.clone(),
        user_id: d.user_id.clone(),
        function_id: d.function_id.clone(),
        function: d.function.clone(),
        version: d.version,
        worker_id: d.worker_id.clone().unwrap_or_default(),
        epoch: d.epoch,
        status: d.status,
        result: d
            .result_json
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        error: d.error.clone(),
        logs: d.logs.clone(),
        duration_ms: d.duration_ms,
        cold_start: d.cold_start,
        billed_micros: d.billed_micros,
        resources: d.resources,
        started_at_ms: d.started_at_ms,
        finished_at_ms: d.finished_at_ms.unwrap_or(d.created_at_ms),
        callback_url,
        hold: d.hold,
    }
}

/// A pending run's document, as the gateway writes it.
pub fn pending_doc(inv: &schemas::InvocationMsg) -> RunDoc {
    RunDoc {
        id: inv.run_id.clone(),
        user_id: inv.user_id.clone(),
        function_id: inv.function_id.clone(),
        function: inv.function.clone(),
        version: inv.version,
        status: RunStatus::Pending,
        args_json: inv.args.to_string(),
        result_json: None,
        error: None,
        logs: String::new(),
        cold_start: false,
        duration_ms: 0,
        resources: inv.resources,
        billed_micros: 0,
        bill_state: BillState::Unbilled,
        bill_id: None,
        worker_id: None,
        epoch: 0,
        created_at_ms: inv.created_at_ms,
        started_at_ms: None,
        finished_at_ms: None,
        hold: inv.hold,
        attempts: Vec::new(),
        next_attempt_at_ms: None,
        dead_letter: None,
        schedule_id: None,
    }
}

/// A finished run's document, from its result message and its invocation's args.
pub fn finished_doc(r: &schemas::ResultMsg, args_json: String, created_at_ms: i64) -> RunDoc {
    let exempt = r.error.as_ref().is_some_and(|e| e.is_platform());
    RunDoc {
        id: r.run_id.clone(),
        user_id: r.user_id.clone(),
        function_id: r.function_id.clone(),
        function: r.function.clone(),
        version: r.version,
        status: r.status,
        args_json,
        result_json: r.result.as_ref().map(|v| v.to_string()),
        error: r.error.clone(),
        logs: r.logs.clone(),
        cold_start: r.cold_start,
        duration_ms: r.duration_ms,
        resources: r.resources,
        billed_micros: if exempt { 0 } else { r.billed_micros },
        bill_state: if exempt {
            BillState::Exempt
        } else {
            BillState::Unbilled
        },
        bill_id: None,
        worker_id: Some(r.worker_id.clone()),
        epoch: r.epoch,
        created_at_ms,
        started_at_ms: r.started_at_ms,
        finished_at_ms: Some(r.finished_at_ms),
        hold: r.hold,
        schedule_id: None,
        attempts: Vec::new(),
        next_attempt_at_ms: None,
        dead_letter: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Attempt, Resources, RunError};

    fn doc(status: RunStatus, attempts: u32) -> RunDoc {
        let mut d = pending_doc(&schemas::InvocationMsg {
            v: 1,
            run_id: "r".into(),
            user_id: "u".into(),
            function_id: "f".into(),
            function: "fn".into(),
            version: 1,
            runtime: schemas::Runtime::Python3,
            handler: "main.handle".into(),
            code_sha256: "00".into(),
            code_kind: schemas::CodeKind::Single,
            filename: "main.py".into(),
            resources: Resources::new(500, 128, 64),
            timeout_ms: 1000,
            mode: schemas::Mode::Async,
            args: serde_json::json!({}),
            reply_to: None,
            callback_url: None,
            created_at_ms: 1,
            hold: None,
            retry: Default::default(),
            config: Default::default(),
        });
        d.status = status;
        d.finished_at_ms = Some(5);
        d.attempts = (1..=attempts)
            .map(|a| Attempt {
                attempt: a,
                status: RunStatus::Failed,
                error: None,
                duration_ms: 1,
                billed_micros: 1,
                started_at_ms: Some(2),
                finished_at_ms: 3,
            })
            .collect();
        d
    }

    #[test]
    fn an_attempts_write_is_refused_once_that_attempt_is_stored() {
        let s = finish_statement(&doc(RunStatus::Failed, 3), Some("b")).unwrap();
        let q = s.get_document("q").unwrap();
        assert_eq!(
            q.get_document("attempts.2").unwrap(),
            &doc! {"$exists": false}
        );
        let set = s.get_document("u").unwrap().get_document("$set").unwrap();
        assert_eq!(set.get_array("attempts").unwrap().len(), 3);
        assert_eq!(set.get_str(SETTLE).unwrap(), "b");
    }

    #[test]
    fn a_record_waiting_for_a_retry_is_not_finished() {
        let mut d = doc(RunStatus::Pending, 1);
        d.next_attempt_at_ms = Some(9);
        let s = finish_statement(&d, None).unwrap();
        let u = s.get_document("u").unwrap();
        assert!(u
            .get_document("$set")
            .unwrap()
            .get("finished_at_ms")
            .is_none());
        assert!(u
            .get_document("$unset")
            .unwrap()
            .contains_key("finished_at_ms"));
        assert_eq!(
            u.get_document("$set")
                .unwrap()
                .get_i64("next_attempt_at_ms")
                .unwrap(),
            9
        );
    }

    #[test]
    fn writes_that_add_no_attempt_require_no_further_one() {
        for code in [
            schemas::run_error_codes::EVENT_EXPIRED,
            schemas::run_error_codes::PLATFORM_NO_CAPACITY,
        ] {
            let mut d = doc(RunStatus::Failed, 1);
            d.error = Some(RunError::new(code, "not run"));
            let s = finish_statement(&d, None).unwrap();
            let q = s.get_document("q").unwrap();
            assert!(q.contains_key("attempts.1"), "{q}");
            assert!(!q.contains_key("attempts.0"), "{q}");
            d.attempts.clear();
            let s = finish_statement(&d, None).unwrap();
            let q = s.get_document("q").unwrap();
            assert!(!q.keys().any(|k| k.starts_with("attempts.")), "{q}");
        }
    }
}
