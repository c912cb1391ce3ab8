//! What the suite asserts, read from the suite's own database and observer: each accepted run
//! ended final with the right result, none ran to completion twice, billing took every final
//! run exactly once; and the fault matrix that reports it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use bson::{doc, Bson, Document};
use common::wire;
use futures::TryStreamExt;
use schemas::names::collections;
use serde_json::Value;

use crate::load::Accepted;
use crate::observer::Seen;

/// A run record as the checks need it, read leniently (the stand-in returns some numbers as
/// int32 and booleans as 0/1).
#[derive(Debug, Clone)]
pub struct RunView {
    pub user_id: String,
    pub status: String,
    pub result: Option<Value>,
    pub error: Option<(String, String)>,
    pub billed: i64,
    pub bill_state: String,
    pub bill_id: Option<String>,
    pub worker_id: Option<String>,
    pub epoch: i64,
}

impl RunView {
    fn from_doc(d: &Document) -> RunView {
        let s = |k: &str| wire::string(d.get(k)).unwrap_or_default().to_owned();
        let error = d.get_document("error").ok().map(|e| {
            let s = |k: &str| wire::string(e.get(k)).unwrap_or_default().to_owned();
            (s("code"), s("message"))
        });
        RunView {
            user_id: s("user_id"),
            status: s("status"),
            result: wire::string(d.get("result_json")).and_then(|j| serde_json::from_str(j).ok()),
            error,
            billed: wire::int(d.get("billed_micros")),
            bill_state: s("bill_state"),
            bill_id: wire::string(d.get("bill_id")).map(str::to_owned),
            worker_id: wire::string(d.get("worker_id")).map(str::to_owned),
            epoch: wire::int(d.get("epoch")),
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "timed_out")
    }

    fn is_platform_failure(&self) -> bool {
        self.error
            .as_ref()
            .is_some_and(|(code, _)| code.starts_with("platform_"))
    }

    fn describe(&self) -> String {
        let what = match (&self.error, &self.result) {
            (Some((code, msg)), _) => format!("{} ({code}: {msg})", self.status),
            (None, Some(v)) if self.status == "succeeded" => format!("{} {v}", self.status),
            _ => self.status.clone(),
        };
        match &self.worker_id {
            Some(w) => format!("{what} [worker {w}, epoch {}]", self.epoch),
            None => what,
        }
    }
}

/// Run records by id: all of them, or those of `ids`.
pub async fn runs(
    db: &mongodb::Database,
    ids: Option<&[String]>,
) -> anyhow::Result<HashMap<String, RunView>> {
    let coll = db.collection::<Document>(collections::RUNS);
    let filters: Vec<Document> = match ids {
        None => vec![doc! {}],
        Some(ids) => ids
            .chunks(500)
            .map(|c| doc! {"_id": {"$in": c.to_vec()}})
            .collect(),
    };
    let mut out = HashMap::new();
    for f in filters {
        let docs: Vec<Document> = coll.find(f).await?.try_collect().await?;
        for d in docs {
            if let Ok(id) = d.get_str("_id") {
                out.insert(id.to_owned(), RunView::from_doc(&d));
            }
        }
    }
    Ok(out)
}

/// How an accepted run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Right,
    Wrong(String),
    NotFinal(String),
    Missing,
}

/// Right: succeeded with exactly the expected result — or, for a run whose container the suite
/// killed, failed by the platform (`platform_*`, unbilled).
pub fn verdict(acc: &Accepted, run: Option<&RunView>) -> Verdict {
    let Some(r) = run else {
        return Verdict::Missing;
    };
    if !r.is_final() {
        return Verdict::NotFinal(r.status.clone());
    }
    let right = r.status == "succeeded" && r.result.as_ref().is_some_and(|v| acc.expect.matches(v));
    let platform_ok = acc.victim && r.is_platform_failure() && r.billed == 0;
    if right || platform_ok {
        Verdict::Right
    } else {
        Verdict::Wrong(r.describe())
    }
}

/// One phase's numbers.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub accepted: usize,
    pub right: usize,
    pub lost: usize,
    pub wrong: usize,
    pub twice: usize,
    pub dup_msgs: u32,
    /// A few of the runs behind `lost`, `wrong` and `twice`.
    pub examples: Vec<String>,
}

/// Tallies the accepted runs of `phase`.
pub fn tally(
    phase: usize,
    accepted: &HashMap<String, Accepted>,
    runs: &HashMap<String, RunView>,
    seen: &HashMap<String, Seen>,
) -> Tally {
    let mut t = Tally::default();
    let example = |t: &mut Tally, s: String| {
        if t.examples.len() < 4 {
            t.examples.push(s);
        }
    };
    for (id, acc) in accepted.iter().filter(|(_, a)| a.phase == phase) {
        t.accepted += 1;
        let kind = if acc.sync { "sync" } else { "async" };
        let results = seen.get(id).map_or(0, |s| s.messages);
        match verdict(acc, runs.get(id)) {
            Verdict::Right => t.right += 1,
            Verdict::Wrong(why) => {
                t.wrong += 1;
                example(&mut t, format!("wrong: {kind} run {id}: {why}"));
            }
            Verdict::NotFinal(_) => {
                t.lost += 1;
                let r = runs.get(id).map(RunView::describe).unwrap_or_default();
                example(
                    &mut t,
                    format!("lost: {kind} run {id} is still {r}; result messages seen: {results}"),
                );
            }
            Verdict::Missing => {
                t.lost += 1;
                example(
                    &mut t,
                    format!("lost: {kind} run {id} has no record; result messages seen: {results}"),
                );
            }
        }
        if let Some(s) = seen.get(id) {
            let execs = s.executions.len() as u32;
            if execs > 1 {
                t.twice += 1;
                let mut e: Vec<String> = s
                    .executions
                    .iter()
                    .map(|(w, at)| format!("{w}@{}", at.unwrap_or(0)))
                    .collect();
                e.sort();
                example(
                    &mut t,
                    format!("twice: run {id} completed {execs}×: {}", e.join(", ")),
                );
            }
            t.dup_msgs += s.messages.saturating_sub(execs);
        }
    }
    t
}

/// After the billing job: every final billable run on exactly one bill (the one its record
/// names), platform failures and unfinished runs on none, each bill's amount the sum of its
/// items, and each user's `spent_micros` the sum of their final runs' costs. Returns the
/// violations and a one-line summary.
pub async fn billing_violations(db: &mongodb::Database) -> anyhow::Result<(Vec<String>, String)> {
    let runs = runs(db, None).await?;
    let bills: Vec<Document> = db
        .collection::<Document>(collections::BILLS)
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    let mut v = Vec::new();
    let mut on_bills: HashMap<String, Vec<String>> = HashMap::new();
    for b in &bills {
        let bill_id = b.get_str("_id").unwrap_or_default().to_owned();
        let mut sum = 0;
        for item in b
            .get_array("items")
            .map(|a| a.as_slice())
            .unwrap_or_default()
        {
            let Bson::Document(item) = item else { continue };
            let run_id = wire::string(item.get("run_id"))
                .unwrap_or_default()
                .to_owned();
            let amount = wire::int(item.get("amount_micros"));
            sum += amount;
            if let Some(r) = runs.get(&run_id) {
                if r.billed != amount {
                    v.push(format!(
                        "bill {bill_id}: run {run_id} billed {amount} but costs {}",
                        r.billed
                    ));
                }
            }
            on_bills.entry(run_id).or_default().push(bill_id.clone());
        }
        if wire::int(b.get("amount_micros")) != sum {
            v.push(format!(
                "bill {bill_id}: amount is not the sum of its items ({sum})"
            ));
        }
    }
    let mut spent: HashMap<String, i64> = HashMap::new();
    let (mut billable, mut exempt) = (0, 0);
    for (id, r) in &runs {
        let bills_of = on_bills.get(id).map(Vec::as_slice).unwrap_or_default();
        if !r.is_final() || r.is_platform_failure() {
            if !bills_of.is_empty() || r.bill_state == "billed" {
                v.push(format!(
                    "run {id} ({}) is billed: {bills_of:?}",
                    r.describe()
                ));
            }
            if r.is_final() {
                exempt += 1;
                *spent.entry(r.user_id.clone()).or_default() += r.billed;
            }
            continue;
        }
        billable += 1;
        *spent.entry(r.user_id.clone()).or_default() += r.billed;
        if bills_of.len() != 1
            || r.bill_state != "billed"
            || r.bill_id.as_deref() != Some(&bills_of[0])
        {
            v.push(format!(
                "run {id} ({}): state {}, bill_id {:?}, on bills {bills_of:?}",
                r.describe(),
                r.bill_state,
                r.bill_id
            ));
        }
    }
    let users: Vec<Document> = db
        .collection::<Document>(collections::USERS)
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    for u in users {
        let id = u.get_str("_id").unwrap_or_default();
        let counter = wire::int(u.get(accounts::credit::SPENT));
        let sum = spent.get(id).copied().unwrap_or(0);
        if counter != sum {
            v.push(format!(
                "user {id}: spent_micros is {counter}, its runs cost {sum} ({:+})",
                counter - sum
            ));
        }
    }
    let summary = format!(
        "{billable} billable final runs, {exempt} platform failures, {} bills, {} violations",
        bills.len(),
        v.len()
    );
    Ok((v, summary))
}

/// One line of the fault matrix.
#[derive(Debug, Default, Clone)]
pub struct Row {
    pub fault: String,
    pub tally: Tally,
    pub recovery: Option<Duration>,
    /// The recovery the issue asks for; `None`: not measured for this row.
    pub bound: Option<Duration>,
    /// Components that exited by themselves during the fault's window.
    pub exits: Vec<String>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

impl Row {
    /// Fills `failures` from the numbers.
    pub fn judge(&mut self) {
        let t = &self.tally;
        let mut f = Vec::new();
        if t.lost > 0 {
            f.push(format!("{} lost", t.lost));
        }
        if t.wrong > 0 {
            f.push(format!("{} wrong", t.wrong));
        }
        if t.twice > 0 {
            f.push(format!("{} completed twice", t.twice));
        }
        if let Some(bound) = self.bound {
            match self.recovery {
                None => f.push("no right sync answer after the fault".to_owned()),
                Some(r) if r > bound => f.push(format!(
                    "recovery {:.1} s > {:.0} s",
                    r.as_secs_f64(),
                    bound.as_secs_f64()
                )),
                Some(_) => {}
            }
        }
        if !self.exits.is_empty() {
            f.push(format!("exited by themselves: {}", self.exits.join(", ")));
        }
        for x in f {
            if !self.failures.contains(&x) {
                self.failures.push(x);
            }
        }
    }
}

/// The fault matrix as text: one line per row, then each row's failures and notes.
pub fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:>8} {:>11} {:>5} {:>5} {:>5} {:>8} {:>10} {:>6}  verdict",
        "fault",
        "accepted",
        "ended right",
        "lost",
        "wrong",
        "twice",
        "dup msgs",
        "recovery s",
        "exits"
    );
    for r in rows {
        let t = &r.tally;
        let rec = match (r.recovery, r.bound) {
            (Some(d), _) => format!("{:.1}", d.as_secs_f64()),
            (None, Some(_)) => "none".to_owned(),
            (None, None) => "-".to_owned(),
        };
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>11} {:>5} {:>5} {:>5} {:>8} {:>10} {:>6}  {}",
            r.fault,
            t.accepted,
            t.right,
            t.lost,
            t.wrong,
            t.twice,
            t.dup_msgs,
            rec,
            r.exits.len(),
            if r.failures.is_empty() { "ok" } else { "FAIL" }
        );
    }
    for r in rows {
        if r.failures.is_empty() && r.notes.is_empty() && r.tally.examples.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n[{}]", r.fault);
        for f in &r.failures {
            let _ = writeln!(s, "  FAIL {f}");
        }
        for e in &r.tally.examples {
            let _ = writeln!(s, "  e.g. {e}");
        }
        for n in &r.notes {
            let _ = writeln!(s, "  note {n}");
        }
    }
    s
}
