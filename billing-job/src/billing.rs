//! One billing pass: every finished, unbilled run up to a cutoff becomes an item of exactly one
//! bill, one bill per user (a user with more than `max_items_per_bill` runs gets several).
//!
//! # The protocol (crash-safe without transactions)
//!
//! A run's `bill_id` is set **once**, by a conditional update (`bill_state: "unbilled"` →
//! `"billed"`), so a run can never land on two bills. A bill is first written as a **draft** in
//! the private collection [`DRAFTS`] (nobody else reads it), and only published to `bills` once
//! its runs are marked:
//!
//! 1. **Scan** final runs (`succeeded | failed | timed_out`) with `bill_state: "unbilled"` and
//!    `finished_at_ms <= cutoff`, sorted by `user_id` (served by the `bill_state_user` index),
//!    streaming through one cursor with a projection. Runs are grouped per user into bills of at
//!    most `max_items_per_bill` items; only the current user's bill is held in memory, so memory
//!    stays flat however many runs there are.
//! 2. For the bills that closed in a chunk: **insert drafts** (full content: items, exact sum,
//!    period), one round trip.
//! 3. **Mark** the runs, one conditional multi-update per bill, one round trip:
//!    `{_id: {$in: items}, bill_state: "unbilled"}` → `{bill_state: "billed", bill_id}`.
//! 4. If fewer runs matched than items (only possible if another pass overlapped), **verify**:
//!    read the items' runs back and keep exactly those whose `bill_id` is this bill's; the
//!    amount and period are recomputed from them.
//! 5. **Publish** the bills to `bills` (insert; an existing `_id` means another job already
//!    published the same content) — a bill with no items is never published.
//! 6. **Delete** the drafts.
//!
//! **Recovery** runs first in every pass: each draft left by a killed pass is settled (steps
//! 3–6, always verifying). Redoing step 3 is harmless (conditional), and once a pass has done
//! step 3 every item's run carries a permanent `bill_id`, so whoever verifies computes the same
//! bill; its `created_at_ms` comes from the draft, so the published document is identical.
//!
//! Killed at any instant, the state is one of: nothing written (the runs are billed next
//! time); a draft whose runs are unmarked, partly or fully marked (recovery settles it); a
//! published bill whose draft is still there (recovery re-publishes nothing and deletes it).
//! Hence every final run ends in exactly one bill, no bill is empty or duplicated, and a bill's
//! `amount_micros` is the exact sum of its items' `billed_micros`. Runs that failed because of
//! the platform have `bill_state: "exempt"` (and `billed_micros` 0) and are never scanned.
//!
//! A lease (`leases/billing`) keeps two jobs from running passes side by side; the protocol
//! above stays correct even when they do (e.g. a paused job whose lease expired), which the
//! tests check by running two passes without the lease.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::Database;
use schemas::names::collections;
use schemas::{now_ms, BillDoc, BillItem, BillState, BillStatus, Resources, RunStatus};
use tokio::sync::mpsc;

use crate::lease::{Lease, LeaseHeld};
use common::wire;

/// The billing job's private collection of bills being created: `{_id: <bill id>, user_id,
/// created_at_ms, pass_id, n_items, run_ids: [...]}`. Nothing but the billing job reads it; it
/// is empty between passes.
pub const DRAFTS: &str = "bill_drafts";
/// Name of the billing job's lease in the `leases` collection.
pub const LEASE_NAME: &str = "billing";
/// Upper bound for `max_items_per_bill`: keeps a bill document far below MongoDB's 16 MB.
pub const MAX_ITEMS_LIMIT: usize = 20_000;
/// Run ids per write command (keeps each command a few MB at most).
const IDS_PER_COMMAND: usize = 20_000;

/// Called with the running totals every `progress_every` runs.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How a pass runs.
#[derive(Clone)]
pub struct BillOptions {
    /// Who holds the lease (shown to a second job).
    pub holder: String,
    /// Bill runs finished at or before this time (ms); `None`: the pass's start.
    pub cutoff_ms: Option<i64>,
    /// Runs read and marked per round trip.
    pub chunk_size: usize,
    /// Most items on one bill.
    pub max_items_per_bill: usize,
    /// Lease time-to-live; renewed every third of it.
    pub lease_ttl: Duration,
    /// Take the lease (always, except in tests that exercise overlapping passes).
    pub use_lease: bool,
    /// Report progress every this many billed runs (0: never).
    pub progress_every: u64,
    pub progress: Option<ProgressFn>,
    /// Set to stop early: the pass finishes the bills it has started and returns.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for BillOptions {
    fn default() -> Self {
        BillOptions {
            holder: default_holder(),
            cutoff_ms: None,
            chunk_size: 5_000,
            max_items_per_bill: 10_000,
            lease_ttl: Duration::from_secs(60),
            use_lease: true,
            progress_every: 100_000,
            progress: None,
            stop: None,
        }
    }
}

impl fmt::Debug for BillOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillOptions")
            .field("holder", &self.holder)
            .field("cutoff_ms", &self.cutoff_ms)
            .field("chunk_size", &self.chunk_size)
            .field("max_items_per_bill", &self.max_items_per_bill)
            .field("lease_ttl", &self.lease_ttl)
            .field("use_lease", &self.use_lease)
            .field("progress_every", &self.progress_every)
            .finish_non_exhaustive()
    }
}

/// `<host>-<pid>-<random>`: who holds the lease.
pub fn default_holder() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// What a pass did (recovered bills of an interrupted pass included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub runs: u64,
    pub bills: u64,
    pub total_micros: i64,
    /// Bills completed from drafts an interrupted pass left behind.
    pub recovered_bills: u64,
    /// The pass was asked to stop before it had scanned everything.
    pub stopped_early: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "billed {} runs into {} bills, total {} micros",
            self.runs, self.bills, self.total_micros
        )
    }
}

/// Running totals, for progress reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub runs: u64,
    pub bills: u64,
    pub total_micros: i64,
    pub elapsed: Duration,
}

/// Runs one pass: takes the lease (returns [`LeaseHeld`] as the error when another job has
/// it), recovers what an interrupted pass left, bills every finished unbilled run up to the
/// cutoff, releases the lease.
pub async fn bill_once(db: &Database, opts: &BillOptions) -> anyhow::Result<Summary> {
    anyhow::ensure!(opts.chunk_size > 0, "chunk_size must be at least 1");
    anyhow::ensure!(
        (1..=MAX_ITEMS_LIMIT).contains(&opts.max_items_per_bill),
        "max_items_per_bill must be 1..={MAX_ITEMS_LIMIT}"
    );
    let lease = if opts.use_lease {
        match Lease::acquire(db, LEASE_NAME, &opts.holder, opts.lease_ttl).await? {
            Ok(l) => Some(l),
            Err(held) => return Err(anyhow::Error::new::<LeaseHeld>(held)),
        }
    } else {
        None
    };
    // Runs a dead writer left unsettled get their money settled first, so the counters the
    // pass leaves agree with the runs it bills.
    let recovered = common::runstore::recover(db)
        .await
        .context("settling runs left unsettled")?;
    if recovered > 0 {
        tracing::info!(
            batches = recovered,
            "settled runs left unsettled by a dead writer"
        );
    }
    let res = run_pass(db, opts, lease.as_ref()).await;
    if let Some(l) = lease {
        l.release().await;
    }
    res
}

/// One finished run as the scan reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scanned {
    pub id: String,
    pub user_id: String,
    pub function: String,
    pub duration_ms: u64,
    pub resources: Resources,
    pub billed_micros: i64,
    pub finished_at_ms: i64,
}

impl Scanned {
    fn from_doc(d: &Document) -> Option<Scanned> {
        let res = d.get_document("resources").ok();
        let r = |k: &str| wire::uint(res.and_then(|r| r.get(k)));
        Some(Scanned {
            id: wire::string(d.get("_id"))?.to_owned(),
            user_id: wire::string(d.get("user_id"))?.to_owned(),
            function: wire::string(d.get("function")).unwrap_or("").to_owned(),
            duration_ms: wire::uint(d.get("duration_ms")),
            resources: Resources::new(r("cpu_millicores"), r("memory_mb"), r("disk_mb")),
            billed_micros: wire::int(d.get("billed_micros")).max(0),
            finished_at_ms: wire::int(d.get("finished_at_ms")),
        })
    }
}

/// A bill being filled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenBill {
    pub id: String,
    pub user_id: String,
    pub items: Vec<BillItem>,
    pub amount_micros: i64,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
}

impl OpenBill {
    fn new(id: String, user_id: String) -> OpenBill {
        OpenBill {
            id,
            user_id,
            items: Vec::new(),
            amount_micros: 0,
            period_start_ms: i64::MAX,
            period_end_ms: i64::MIN,
        }
    }

    fn push(&mut self, r: Scanned) {
        self.amount_micros = self.amount_micros.saturating_add(r.billed_micros);
        self.period_start_ms = self.period_start_ms.min(r.finished_at_ms);
        self.period_end_ms = self.period_end_ms.max(r.finished_at_ms);
        self.items.push(BillItem {
            run_id: r.id,
            function: r.function,
            duration_ms: r.duration_ms,
            cpu_millicores: r.resources.cpu_millicores,
            memory_mb: r.resources.memory_mb,
            disk_mb: r.resources.disk_mb,
            amount_micros: r.billed_micros,
        });
    }

    pub fn into_doc(self, created_at_ms: i64) -> BillDoc {
        BillDoc {
            id: self.id,
            user_id: self.user_id,
            created_at_ms,
            period_start_ms: self.period_start_ms,
            period_end_ms: self.period_end_ms,
            amount_micros: self.amount_micros,
            status: BillStatus::Unpaid,
            items: self.items,
            paid_at_ms: None,
        }
    }
}

/// Groups runs arriving sorted by user into bills: a new bill when the user changes or the
/// current bill is full.
#[derive(Debug)]
pub(crate) struct Grouper {
    pass_id: String,
    cap: usize,
    seq: u64,
    open: Option<OpenBill>,
}

impl Grouper {
    pub fn new(pass_id: String, cap: usize) -> Grouper {
        Grouper {
            pass_id,
            cap: cap.max(1),
            seq: 0,
            open: None,
        }
    }

    /// Adds a run; returns the bill it closed, if any.
    pub fn push(&mut self, r: Scanned) -> Option<OpenBill> {
        let needs_new = self
            .open
            .as_ref()
            .is_none_or(|b| b.user_id != r.user_id || b.items.len() >= self.cap);
        let mut closed = None;
        if needs_new {
            closed = self.open.take();
            self.seq += 1;
            self.open = Some(OpenBill::new(
                format!("b-{}-{:06}", self.pass_id, self.seq),
                r.user_id.clone(),
            ));
        }
        if let Some(b) = self.open.as_mut() {
            b.push(r);
        }
        closed
    }

    /// The bill still being filled.
    pub fn take_open(&mut self) -> Option<OpenBill> {
        self.open.take()
    }
}

/// A new pass id: the time in hex (so bill ids sort by pass) and 32 random bits.
fn new_pass_id() -> String {
    format!(
        "{:011x}{}",
        now_ms().max(0),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

#[derive(Debug, Default)]
struct Tally {
    runs: u64,
    bills: u64,
    micros: i64,
    recovered: u64,
    /// Time spent per phase (logged at the end of a pass).
    waiting: Duration,
    drafting: Duration,
    marking: Duration,
    publishing: Duration,
}

fn state(s: BillState) -> Bson {
    bson::to_bson(&s).unwrap_or(Bson::Null)
}

async fn check_lease(lease: Option<&Lease>) -> anyhow::Result<()> {
    match lease {
        Some(l) => l.check().await,
        None => Ok(()),
    }
}

async fn run_pass(
    db: &Database,
    opts: &BillOptions,
    lease: Option<&Lease>,
) -> anyhow::Result<Summary> {
    let t0 = Instant::now();
    let mut tally = Tally::default();
    recover(db, lease, &mut tally).await?;

    let pass_id = new_pass_id();
    let cutoff = opts.cutoff_ms.unwrap_or_else(now_ms);
    tracing::info!(pass_id = %pass_id, cutoff_ms = cutoff, "billing pass started");
    let (tx, mut rx) = mpsc::channel(2);
    let reader = tokio::spawn(read_runs(db.clone(), cutoff, opts.chunk_size, tx));
    let mut grouper = Grouper::new(pass_id.clone(), opts.max_items_per_bill);
    let mut next_progress = opts.progress_every;
    let mut stopped = false;
    let res: anyhow::Result<()> = async {
        loop {
            let t = Instant::now();
            let Some(chunk) = rx.recv().await else {
                break;
            };
            tally.waiting += t.elapsed();
            let closed: Vec<OpenBill> =
                chunk?.into_iter().filter_map(|r| grouper.push(r)).collect();
            finalize(db, &pass_id, closed, lease, &mut tally).await?;
            if opts.progress_every > 0 && tally.runs >= next_progress {
                if let Some(p) = &opts.progress {
                    p(&Progress {
                        runs: tally.runs,
                        bills: tally.bills,
                        total_micros: tally.micros,
                        elapsed: t0.elapsed(),
                    });
                }
                while next_progress <= tally.runs {
                    next_progress += opts.progress_every;
                }
            }
            if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                stopped = true;
                break;
            }
        }
        let last: Vec<OpenBill> = grouper.take_open().into_iter().collect();
        finalize(db, &pass_id, last, lease, &mut tally).await
    }
    .await;
    reader.abort();
    res?;
    let summary = Summary {
        runs: tally.runs,
        bills: tally.bills,
        total_micros: tally.micros,
        recovered_bills: tally.recovered,
        stopped_early: stopped,
    };
    tracing::info!(pass_id = %pass_id, runs = summary.runs, bills = summary.bills,
        total_micros = summary.total_micros, elapsed_ms = t0.elapsed().as_millis() as u64,
        waiting_for_scan_ms = tally.waiting.as_millis() as u64,
        drafting_ms = tally.drafting.as_millis() as u64,
        marking_ms = tally.marking.as_millis() as u64,
        publishing_ms = tally.publishing.as_millis() as u64,
        "billing pass done");
    Ok(summary)
}

/// Streams the billable runs, sorted by user, to `tx` in chunks.
async fn read_runs(
    db: Database,
    cutoff_ms: i64,
    chunk: usize,
    tx: mpsc::Sender<anyhow::Result<Vec<Scanned>>>,
) {
    let res: anyhow::Result<()> = async {
        let finals: Vec<&str> = RunStatus::FINAL.iter().map(|s| s.as_str()).collect();
        let mut cur = db
            .collection::<Document>(collections::RUNS)
            .find(doc! {
                "bill_state": state(BillState::Unbilled),
                "status": {"$in": finals},
                "finished_at_ms": {"$lte": cutoff_ms},
            })
            .sort(doc! {"user_id": 1})
            .projection(doc! {
                "user_id": 1, "function": 1, "duration_ms": 1, "resources": 1,
                "billed_micros": 1, "finished_at_ms": 1,
            })
            .batch_size(chunk.min(u32::MAX as usize) as u32)
            .allow_disk_use(true)
            .await
            .context("scanning unbilled runs")?;
        let mut buf = Vec::with_capacity(chunk);
        while let Some(d) = cur.try_next().await.context("reading unbilled runs")? {
            match Scanned::from_doc(&d) {
                Some(r) => buf.push(r),
                None => {
                    tracing::warn!(run = %d.get("_id").map(|v| v.to_string()).unwrap_or_default(),
                    "skipping a run without a string _id or user_id")
                }
            }
            if buf.len() >= chunk
                && tx
                    .send(Ok(std::mem::replace(&mut buf, Vec::with_capacity(chunk))))
                    .await
                    .is_err()
            {
                return Ok(());
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(Ok(buf)).await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        let _ = tx.send(Err(e)).await;
    }
}

/// Drafts, marks, publishes the bills that closed.
async fn finalize(
    db: &Database,
    pass_id: &str,
    bills: Vec<OpenBill>,
    lease: Option<&Lease>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    if bills.is_empty() {
        return Ok(());
    }
    check_lease(lease).await?;
    let now = now_ms();
    let bills: Vec<BillDoc> = bills.into_iter().map(|b| b.into_doc(now)).collect();
    let drafts: Vec<Draft> = bills.iter().map(Draft::of).collect();
    let t = Instant::now();
    create_drafts(db, pass_id, &drafts).await?;
    tally.drafting += t.elapsed();
    check_lease(lease).await?;
    let t = Instant::now();
    let expected: u64 = drafts.iter().map(|d| d.run_ids.len() as u64).sum();
    let matched = mark(db, &drafts).await?;
    let bills = if matched == expected {
        bills
    } else {
        tracing::warn!(
            matched,
            expected,
            "some runs were billed by someone else; rebuilding the bills from the runs"
        );
        rebuild(db, drafts).await?
    };
    tally.marking += t.elapsed();
    let t = Instant::now();
    publish(db, bills, false, tally).await?;
    tally.publishing += t.elapsed();
    Ok(())
}

/// A bill being created: its id, owner, creation time and runs. Stored in [`DRAFTS`] before
/// any run is marked; the bill's content is (re)built from the runs whenever needed.
#[derive(Debug, Clone, PartialEq)]
struct Draft {
    id: String,
    user_id: String,
    created_at_ms: i64,
    run_ids: Vec<String>,
}

impl Draft {
    fn of(b: &BillDoc) -> Draft {
        Draft {
            id: b.id.clone(),
            user_id: b.user_id.clone(),
            created_at_ms: b.created_at_ms,
            run_ids: b.items.iter().map(|i| i.run_id.clone()).collect(),
        }
    }

    fn to_doc(&self, pass_id: &str) -> Document {
        doc! {
            "_id": &self.id,
            "user_id": &self.user_id,
            "created_at_ms": self.created_at_ms,
            "pass_id": pass_id,
            "n_items": self.run_ids.len() as i64,
            "run_ids": &self.run_ids,
        }
    }

    fn from_doc(d: &Document) -> anyhow::Result<Draft> {
        let get = |k: &str| {
            wire::string(d.get(k))
                .map(str::to_owned)
                .with_context(|| format!("bill draft without {k}: {:?}", d.get("_id")))
        };
        Ok(Draft {
            id: get("_id")?,
            user_id: get("user_id")?,
            created_at_ms: wire::int(d.get("created_at_ms")),
            run_ids: d
                .get_array("run_ids")
                .context("bill draft without run_ids")?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        })
    }
}

/// Index ranges of items whose sizes add up to at most `IDS_PER_COMMAND` (one item at least).
fn batches(sizes: impl IntoIterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut n, mut len) = (0, 0, 0);
    for (i, size) in sizes.into_iter().enumerate() {
        if i > start && n + size > IDS_PER_COMMAND {
            out.push(start..i);
            start = i;
            n = 0;
        }
        n += size;
        len = i + 1;
    }
    if start < len {
        out.push(start..len);
    }
    out
}

async fn create_drafts(db: &Database, pass_id: &str, drafts: &[Draft]) -> anyhow::Result<()> {
    for range in batches(drafts.iter().map(|d| d.run_ids.len())) {
        let docs: Vec<Document> = drafts[range].iter().map(|d| d.to_doc(pass_id)).collect();
        let dups = wire::insert(db, DRAFTS, docs, "inserting bill drafts").await?;
        anyhow::ensure!(dups.is_empty(), "a bill draft id was already taken");
    }
    Ok(())
}

/// Step 3: marks the drafts' unbilled runs with their bill id; returns how many matched.
async fn mark(db: &Database, drafts: &[Draft]) -> anyhow::Result<u64> {
    let mut matched = 0;
    for range in batches(drafts.iter().map(|d| d.run_ids.len())) {
        let statements: Vec<Document> = drafts[range]
            .iter()
            .map(|d| {
                doc! {
                    "q": {"_id": {"$in": &d.run_ids}, "bill_state": state(BillState::Unbilled)},
                    "u": {"$set": {"bill_state": state(BillState::Billed), "bill_id": &d.id}},
                    "multi": true,
                }
            })
            .collect();
        matched += wire::update(db, collections::RUNS, statements, "marking runs billed").await?;
    }
    Ok(matched)
}

/// Step 4: each bill from exactly the draft's runs that carry its id (in the draft's order),
/// its amount and period computed from them.
async fn rebuild(db: &Database, drafts: Vec<Draft>) -> anyhow::Result<Vec<BillDoc>> {
    let runs = db.collection::<Document>(collections::RUNS);
    let ids: Vec<&String> = drafts.iter().flat_map(|d| d.run_ids.iter()).collect();
    let mut found: HashMap<String, (String, Scanned)> = HashMap::with_capacity(ids.len());
    for part in ids.chunks(IDS_PER_COMMAND) {
        let mut cur = runs
            .find(doc! {"_id": {"$in": part}})
            .projection(doc! {
                "user_id": 1, "function": 1, "duration_ms": 1, "resources": 1,
                "billed_micros": 1, "finished_at_ms": 1, "bill_id": 1,
            })
            .await
            .context("reading runs back")?;
        while let Some(d) = cur.try_next().await.context("reading runs back")? {
            if let (Some(bill), Some(run)) = (wire::string(d.get("bill_id")), Scanned::from_doc(&d))
            {
                found.insert(run.id.clone(), (bill.to_owned(), run));
            }
        }
    }
    Ok(drafts
        .into_iter()
        .map(|d| {
            let mut b = OpenBill::new(d.id, d.user_id);
            for rid in &d.run_ids {
                // Several drafts (of overlapping or crashed passes) may list the same run: only
                // the one whose id the run carries takes it.
                if found.get(rid).is_some_and(|(bill, _)| *bill == b.id) {
                    if let Some((_, run)) = found.remove(rid) {
                        b.push(run);
                    }
                }
            }
            if b.items.len() != d.run_ids.len() {
                tracing::warn!(bill_id = %b.id, left_off = d.run_ids.len() - b.items.len(),
                    "runs billed elsewhere were left off the bill");
            }
            b.into_doc(d.created_at_ms)
        })
        .collect())
}

/// Steps 5–6: publishes the bills that have items, deletes every draft.
async fn publish(
    db: &Database,
    bills: Vec<BillDoc>,
    recovered: bool,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let (full, empty): (Vec<BillDoc>, Vec<BillDoc>) =
        bills.into_iter().partition(|b| !b.items.is_empty());
    for range in batches(full.iter().map(|b| b.items.len())) {
        let docs = full[range.clone()]
            .iter()
            .map(bson::to_document)
            .collect::<Result<Vec<_>, _>>()
            .context("encoding a bill")?;
        let dups = wire::insert(db, collections::BILLS, docs, "publishing bills").await?;
        for (i, b) in full[range].iter().enumerate() {
            if !dups.contains(&i) {
                tally.runs += b.items.len() as u64;
                tally.bills += 1;
                tally.micros = tally.micros.saturating_add(b.amount_micros);
                if recovered {
                    tally.recovered += 1;
                }
            }
        }
    }
    let ids: Vec<String> = full.iter().chain(&empty).map(|b| b.id.clone()).collect();
    for part in ids.chunks(IDS_PER_COMMAND) {
        wire::delete_ids(db, DRAFTS, part, "deleting bill drafts").await?;
    }
    Ok(())
}

/// Settles every draft an interrupted pass left: mark, rebuild, publish.
async fn recover(db: &Database, lease: Option<&Lease>, tally: &mut Tally) -> anyhow::Result<()> {
    let list: Vec<Document> = db
        .collection::<Document>(DRAFTS)
        .find(doc! {})
        .projection(doc! {"_id": 1, "n_items": 1})
        .await
        .context("listing bill drafts")?
        .try_collect()
        .await
        .context("listing bill drafts")?;
    if list.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        drafts = list.len(),
        "completing the bills of an interrupted pass"
    );
    let ids: Vec<&str> = list
        .iter()
        .filter_map(|d| wire::string(d.get("_id")))
        .collect();
    let sizes = list
        .iter()
        .filter(|d| wire::string(d.get("_id")).is_some())
        .map(|d| wire::uint(d.get("n_items")) as usize);
    for range in batches(sizes) {
        check_lease(lease).await?;
        let drafts = db
            .collection::<Document>(DRAFTS)
            .find(doc! {"_id": {"$in": &ids[range]}})
            .await
            .context("reading bill drafts")?
            .try_collect::<Vec<Document>>()
            .await
            .context("reading bill drafts")?
            .iter()
            .map(Draft::from_doc)
            .collect::<anyhow::Result<Vec<Draft>>>()?;
        mark(db, &drafts).await?;
        let bills = rebuild(db, drafts).await?;
        publish(db, bills, true, tally).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, user: &str, micros: i64, at: i64) -> Scanned {
        Scanned {
            id: id.into(),
            user_id: user.into(),
            function: "f".into(),
            duration_ms: 10,
            resources: Resources::new(500, 128, 64),
            billed_micros: micros,
            finished_at_ms: at,
        }
    }

    #[test]
    fn one_bill_per_user_with_the_exact_sum_and_period() {
        let mut g = Grouper::new("p".into(), 100);
        let mut closed = Vec::new();
        for r in [
            run("a1", "a", 5, 30),
            run("a2", "a", 7, 10),
            run("a3", "a", 1, 20),
            run("b1", "b", 2, 5),
        ] {
            closed.extend(g.push(r));
        }
        closed.extend(g.take_open());
        assert_eq!(closed.len(), 2);
        let a = closed[0].clone().into_doc(99);
        assert_eq!(a.user_id, "a");
        assert_eq!(a.amount_micros, 13);
        assert_eq!(
            a.amount_micros,
            a.items.iter().map(|i| i.amount_micros).sum::<i64>()
        );
        assert_eq!((a.period_start_ms, a.period_end_ms), (10, 30));
        assert_eq!(a.status, BillStatus::Unpaid);
        assert_eq!(a.created_at_ms, 99);
        let b = closed[1].clone().into_doc(99);
        assert_eq!(
            (b.user_id.as_str(), b.amount_micros, b.items.len()),
            ("b", 2, 1)
        );
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn a_full_bill_starts_another_for_the_same_user() {
        let mut g = Grouper::new("p".into(), 2);
        let mut closed = Vec::new();
        for i in 0..5 {
            closed.extend(g.push(run(&format!("r{i}"), "u", 1, i)));
        }
        closed.extend(g.take_open());
        let sizes: Vec<usize> = closed.iter().map(|b| b.items.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        let ids: std::collections::HashSet<&str> = closed.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn sums_do_not_overflow() {
        let mut b = OpenBill::new("x".into(), "u".into());
        b.push(run("1", "u", i64::MAX, 1));
        b.push(run("2", "u", 5, 2));
        assert_eq!(b.amount_micros, i64::MAX);
    }

    #[test]
    fn scanned_runs_are_read_leniently() {
        let d = doc! {
            "_id": "r1", "user_id": "u", "function": "f",
            "duration_ms": 12_i32, "billed_micros": 7_i64, "finished_at_ms": 5_i32,
            "resources": {"cpu_millicores": 500_i32, "memory_mb": 128_i64, "disk_mb": 64.0},
        };
        let s = Scanned::from_doc(&d).unwrap();
        assert_eq!(s.duration_ms, 12);
        assert_eq!(s.resources, Resources::new(500, 128, 64));
        assert_eq!((s.billed_micros, s.finished_at_ms), (7, 5));
        assert!(Scanned::from_doc(&doc! {"_id": "r2"}).is_none());
    }

    #[test]
    fn batches_respect_the_item_budget() {
        let bill = |n: usize| {
            let mut b = OpenBill::new("x".into(), "u".into());
            for i in 0..n {
                b.push(run(&i.to_string(), "u", 1, 1));
            }
            b.into_doc(0)
        };
        let bills = [bill(15_000), bill(10_000), bill(1), bill(20_000)];
        assert_eq!(
            batches(bills.iter().map(|b| b.items.len())),
            vec![0..1, 1..3, 3..4]
        );
        assert!(batches([]).is_empty());
        assert_eq!(batches([0, 0]), vec![0..2]);
    }

    #[test]
    fn summary_line() {
        let s = Summary {
            runs: 3,
            bills: 2,
            total_micros: 42,
            ..Default::default()
        };
        assert_eq!(s.to_string(), "billed 3 runs into 2 bills, total 42 micros");
    }
}
