//! The billing job and the account operations against the real MongoDB: one bill per user with
//! the exact sum, pending/running/exempt runs left alone, idempotent re-runs, the item cap,
//! recovery of an interrupted pass, the `billing-job` binary SIGKILLed at random points many
//! times, two jobs at once, concurrent payments, low balances, top-ups and the account history.
//!
//! The binary tests need it built first: `cargo build --workspace`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use accounts::{self as account, AccountError, Card, TestProvider};
use billing_job::{bill_once, BillOptions, Summary};
use bson::{doc, Document};
use futures::TryStreamExt;
use schemas::names::collections;
use schemas::{BillDoc, BillItem, BillState, BillStatus, HistoryKind, RunDoc, RunError, RunStatus};
use tests::{run_doc, Sandbox};

/// A run that failed because of the platform: exempt, never billed.
fn exempt_doc(user_id: &str) -> RunDoc {
    let mut r = run_doc(user_id, RunStatus::Failed, 0);
    r.error = Some(RunError::new(
        schemas::run_error_codes::PLATFORM_WORKER_LOST,
        "the worker died",
    ));
    r.bill_state = BillState::Exempt;
    r
}

/// `n` finished runs spread over `users` users (every status that is billed), plus one pending
/// and one exempt run per user. Returns the billable total.
fn workload(users: &[String], n: usize) -> (Vec<RunDoc>, i64) {
    let mut runs = Vec::new();
    let mut total = 0;
    for i in 0..n {
        let status = [RunStatus::Succeeded, RunStatus::Failed, RunStatus::TimedOut][i % 3];
        let billed = 1 + (i as i64 * 37) % 900;
        total += billed;
        runs.push(run_doc(&users[i % users.len()], status, billed));
    }
    for u in users {
        runs.push(run_doc(u, RunStatus::Pending, 0));
        runs.push(exempt_doc(u));
    }
    (runs, total)
}

async fn insert_runs(sb: &Sandbox, runs: &[RunDoc]) {
    for part in runs.chunks(5000) {
        sb.db
            .collection::<RunDoc>(collections::RUNS)
            .insert_many(part)
            .await
            .unwrap();
    }
}

async fn all_docs(sb: &Sandbox, coll: &str) -> Vec<Document> {
    sb.db
        .collection::<Document>(coll)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn all_runs(sb: &Sandbox) -> Vec<RunDoc> {
    let docs = all_docs(sb, collections::RUNS).await;
    docs.into_iter()
        .map(|d| bson::from_document(d).unwrap())
        .collect()
}

async fn all_bills(sb: &Sandbox) -> Vec<BillDoc> {
    let docs = all_docs(sb, collections::BILLS).await;
    docs.into_iter()
        .map(|d| bson::from_document(d).unwrap())
        .collect()
}

fn users(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("u{i:03}-{}", tests::rand_id()))
        .collect()
}

fn opts() -> BillOptions {
    BillOptions {
        lease_ttl: Duration::from_secs(5),
        ..BillOptions::default()
    }
}

/// Every invariant of billing over the whole database; returns (bills, billed runs).
/// With `all_billed`, every final non-exempt run must be on a bill.
async fn check_bills(sb: &Sandbox, all_billed: bool) -> (Vec<BillDoc>, usize) {
    let runs = all_runs(sb).await;
    let bills = all_bills(sb).await;
    let runs_by_id: HashMap<&str, &RunDoc> = runs.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut bill_ids = HashSet::new();
    for b in &bills {
        assert!(bill_ids.insert(b.id.as_str()), "bill {} twice", b.id);
        assert!(!b.items.is_empty(), "bill {} is empty", b.id);
        assert_eq!(b.status, BillStatus::Unpaid);
        let sum: i64 = b.items.iter().map(|i| i.amount_micros).sum();
        assert_eq!(
            b.amount_micros, sum,
            "bill {} amount is the sum of its items",
            b.id
        );
        let mut finished = Vec::new();
        for item in &b.items {
            assert!(
                seen.insert(item.run_id.as_str()),
                "run {} is on two bills",
                item.run_id
            );
            let r = runs_by_id
                .get(item.run_id.as_str())
                .unwrap_or_else(|| panic!("bill {} has unknown run {}", b.id, item.run_id));
            assert_eq!(r.bill_state, BillState::Billed, "run {}", r.id);
            assert_eq!(r.bill_id.as_deref(), Some(b.id.as_str()), "run {}", r.id);
            assert_eq!(r.user_id, b.user_id);
            assert!(r.status.is_final());
            let expected = BillItem {
                run_id: r.id.clone(),
                function: r.function.clone(),
                duration_ms: r.duration_ms,
                cpu_millicores: r.resources.cpu_millicores,
                memory_mb: r.resources.memory_mb,
                disk_mb: r.resources.disk_mb,
                amount_micros: r.billed_micros,
            };
            assert_eq!(item, &expected);
            finished.push(r.finished_at_ms.unwrap());
        }
        assert_eq!(b.period_start_ms, *finished.iter().min().unwrap());
        assert_eq!(b.period_end_ms, *finished.iter().max().unwrap());
    }
    for r in &runs {
        match r.bill_state {
            BillState::Billed => assert!(
                seen.contains(r.id.as_str()),
                "billed run {} on no bill",
                r.id
            ),
            BillState::Exempt => {
                assert!(r.bill_id.is_none());
                assert_eq!(r.billed_micros, 0);
            }
            BillState::Unbilled => {
                assert!(r.bill_id.is_none(), "unbilled run {} has a bill id", r.id);
                assert!(
                    !(all_billed && r.status.is_final()),
                    "final run {} was not billed",
                    r.id
                );
            }
        }
    }
    let drafts = sb
        .db
        .collection::<Document>(billing_job::DRAFTS)
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(drafts, 0, "no bill drafts are left");
    let n = seen.len();
    drop(seen);
    (bills, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bill_per_user_with_the_exact_sum_and_idempotent_reruns() {
    let sb = Sandbox::new("bill-basic").await;
    let us = users(3);
    let mut runs = vec![
        run_doc(&us[0], RunStatus::Succeeded, 120),
        run_doc(&us[0], RunStatus::Failed, 7),
        run_doc(&us[0], RunStatus::TimedOut, 3000),
        run_doc(&us[1], RunStatus::Succeeded, 1),
        run_doc(&us[1], RunStatus::Succeeded, 1 << 40),
        run_doc(&us[0], RunStatus::Pending, 0),
        run_doc(&us[1], RunStatus::Running, 0),
        run_doc(&us[2], RunStatus::Pending, 0),
        exempt_doc(&us[0]),
        exempt_doc(&us[2]),
    ];
    // Finished after the cutoff: left for the next pass.
    let mut late = run_doc(&us[2], RunStatus::Succeeded, 55);
    late.finished_at_ms = Some(schemas::now_ms() + 3_600_000);
    runs.push(late.clone());
    insert_runs(&sb, &runs).await;

    let s = bill_once(&sb.db, &opts()).await.unwrap();
    assert_eq!(
        (s.runs, s.bills, s.total_micros),
        (5, 2, 120 + 7 + 3000 + 1 + (1 << 40))
    );
    assert_eq!(
        s.to_string(),
        format!(
            "billed 5 runs into 2 bills, total {} micros",
            3128 + (1_i64 << 40)
        )
    );
    let (bills, billed) = check_bills(&sb, false).await;
    assert_eq!(billed, 5);
    let by_user: HashMap<&str, &BillDoc> = bills.iter().map(|b| (b.user_id.as_str(), b)).collect();
    assert_eq!(by_user.len(), 2, "one bill per user");
    assert_eq!(by_user[us[0].as_str()].amount_micros, 3127);
    assert_eq!(by_user[us[0].as_str()].items.len(), 3);
    assert_eq!(by_user[us[1].as_str()].amount_micros, 1 + (1 << 40));
    // Pending, running, late and exempt runs are untouched.
    let left: Vec<RunDoc> = sb
        .db
        .collection::<RunDoc>(collections::RUNS)
        .find(doc! {"bill_state": {"$ne": "billed"}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(left.len(), 6);

    // Nothing new: nothing billed.
    assert_eq!(
        bill_once(&sb.db, &opts()).await.unwrap(),
        Summary::default()
    );

    // The late run and a run that has finished since are billed by a later pass.
    sb.db
        .collection::<Document>(collections::RUNS)
        .update_one(
            doc! {"user_id": &us[2], "status": "pending"},
            doc! {"$set": {"status": "succeeded", "billed_micros": 9_i64,
            "finished_at_ms": schemas::now_ms() - 10}},
        )
        .await
        .unwrap();
    let s = bill_once(&sb.db, &opts()).await.unwrap();
    assert_eq!((s.runs, s.bills, s.total_micros), (1, 1, 9));
    let later = BillOptions {
        cutoff_ms: Some(schemas::now_ms() + 2 * 3_600_000),
        ..opts()
    };
    let s = bill_once(&sb.db, &later).await.unwrap();
    assert_eq!((s.runs, s.bills, s.total_micros), (1, 1, 55));
    let (bills, billed) = check_bills(&sb, true).await;
    assert_eq!((bills.len(), billed), (4, 7));
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_more_runs_than_the_item_cap_gets_several_bills() {
    let sb = Sandbox::new("bill-cap").await;
    let us = users(3);
    let (runs, total) = workload(&us, 31);
    insert_runs(&sb, &runs).await;
    let o = BillOptions {
        chunk_size: 4,
        max_items_per_bill: 5,
        ..opts()
    };
    let s = bill_once(&sb.db, &o).await.unwrap();
    assert_eq!((s.runs, s.total_micros), (31, total));
    // 11, 10, 10 runs → 3 + 2 + 2 bills.
    assert_eq!(s.bills, 7);
    let (bills, _) = check_bills(&sb, true).await;
    assert!(bills.iter().all(|b| b.items.len() <= 5));
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pass_is_completed_by_the_next() {
    let sb = Sandbox::new("bill-recover").await;
    let us = users(2);
    let r: Vec<RunDoc> = (0..6)
        .map(|i| run_doc(&us[0], RunStatus::Succeeded, 10 + i))
        .collect();
    let other = run_doc(&us[1], RunStatus::Succeeded, 1000);
    let mut all_runs = r.clone();
    all_runs.push(other.clone());
    insert_runs(&sb, &all_runs).await;
    let runs = sb.db.collection::<Document>(collections::RUNS);
    let drafts = sb.db.collection::<Document>(billing_job::DRAFTS);
    let mark = |id: &str, bill: &str| {
        let (id, bill) = (id.to_owned(), bill.to_owned());
        let runs = runs.clone();
        async move {
            runs.update_one(
                doc! {"_id": id},
                doc! {"$set": {"bill_state": "billed", "bill_id": bill}},
            )
            .await
            .unwrap();
        }
    };
    let draft = |id: &str, user: &str, ids: &[&RunDoc]| {
        let ids: Vec<&str> = ids.iter().map(|r| r.id.as_str()).collect();
        doc! {"_id": id, "user_id": user, "created_at_ms": 1_000_i64, "pass_id": "p",
        "n_items": ids.len() as i64, "run_ids": ids}
    };
    // d1: killed while marking (r0 marked, r1 not).
    drafts
        .insert_one(draft("b-p-000001", &us[0], &[&r[0], &r[1]]))
        .await
        .unwrap();
    mark(&r[0].id, "b-p-000001").await;
    // d2: killed after publishing, before deleting the draft.
    drafts
        .insert_one(draft("b-p-000002", &us[0], &[&r[2]]))
        .await
        .unwrap();
    mark(&r[2].id, "b-p-000002").await;
    let published = BillDoc {
        id: "b-p-000002".into(),
        user_id: us[0].clone(),
        created_at_ms: 1_000,
        period_start_ms: r[2].finished_at_ms.unwrap(),
        period_end_ms: r[2].finished_at_ms.unwrap(),
        amount_micros: r[2].billed_micros,
        status: BillStatus::Unpaid,
        items: vec![BillItem {
            run_id: r[2].id.clone(),
            function: r[2].function.clone(),
            duration_ms: r[2].duration_ms,
            cpu_millicores: 500,
            memory_mb: 128,
            disk_mb: 64,
            amount_micros: r[2].billed_micros,
        }],
        paid_at_ms: None,
    };
    sb.db
        .collection::<BillDoc>(collections::BILLS)
        .insert_one(&published)
        .await
        .unwrap();
    // d3: drafted before anything was marked; r3 went to another job's bill in between.
    drafts
        .insert_one(draft("b-p-000003", &us[0], &[&r[3]]))
        .await
        .unwrap();
    mark(&r[3].id, "b-q-000001").await;
    let mut elsewhere = published.clone();
    elsewhere.id = "b-q-000001".into();
    elsewhere.items[0].run_id = r[3].id.clone();
    elsewhere.items[0].function = r[3].function.clone();
    elsewhere.items[0].duration_ms = r[3].duration_ms;
    elsewhere.items[0].amount_micros = r[3].billed_micros;
    elsewhere.amount_micros = r[3].billed_micros;
    elsewhere.period_start_ms = r[3].finished_at_ms.unwrap();
    elsewhere.period_end_ms = r[3].finished_at_ms.unwrap();
    sb.db
        .collection::<BillDoc>(collections::BILLS)
        .insert_one(&elsewhere)
        .await
        .unwrap();
    // d4: the other user's draft, nothing marked yet.
    drafts
        .insert_one(draft("b-p-000004", &us[1], &[&other]))
        .await
        .unwrap();

    let s = bill_once(&sb.db, &opts()).await.unwrap();
    // Recovered: d1 (r0, r1) and d4 (other); then r4, r5 in a fresh bill.
    assert_eq!(s.recovered_bills, 2);
    assert_eq!((s.runs, s.bills), (5, 3));
    assert_eq!(s.total_micros, 10 + 11 + 1000 + 14 + 15);
    let (bills, billed) = check_bills(&sb, true).await;
    assert_eq!((bills.len(), billed), (5, 7));
    let d1 = bills.iter().find(|b| b.id == "b-p-000001").unwrap();
    assert_eq!(d1.items.len(), 2);
    assert_eq!(d1.created_at_ms, 1_000, "the draft's creation time is kept");
    assert!(
        !bills.iter().any(|b| b.id == "b-p-000003"),
        "an empty bill is never published"
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_of_several_crashed_passes_listing_the_same_runs_are_recovered() {
    // Three overlapping passes drafted the same runs and were killed together; the last one
    // had marked r0 and r1. Two more drafted r2, nobody marked it.
    let sb = Sandbox::new("bill-recover-overlap").await;
    let us = users(1);
    let r: Vec<RunDoc> = (0..3)
        .map(|i| run_doc(&us[0], RunStatus::Succeeded, 100 + i))
        .collect();
    insert_runs(&sb, &r).await;
    let drafts = sb.db.collection::<Document>(billing_job::DRAFTS);
    for (id, runs) in [
        ("b-a-000001", vec![&r[0], &r[1]]),
        ("b-b-000001", vec![&r[0], &r[1]]),
        ("b-c-000001", vec![&r[0], &r[1]]),
        ("b-d-000001", vec![&r[2]]),
        ("b-e-000001", vec![&r[2]]),
    ] {
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        drafts
            .insert_one(doc! {"_id": id, "user_id": &us[0], "created_at_ms": 5_i64,
            "pass_id": "x", "n_items": ids.len() as i64, "run_ids": ids})
            .await
            .unwrap();
    }
    sb.db
        .collection::<Document>(collections::RUNS)
        .update_many(
            doc! {"_id": {"$in": [&r[0].id, &r[1].id]}},
            doc! {"$set": {"bill_state": "billed", "bill_id": "b-c-000001"}},
        )
        .await
        .unwrap();
    let s = bill_once(&sb.db, &opts()).await.unwrap();
    assert_eq!((s.runs, s.bills, s.recovered_bills), (3, 2, 2));
    assert_eq!(s.total_micros, 100 + 101 + 102);
    let (bills, n) = check_bills(&sb, true).await;
    assert_eq!(n, 3);
    let mut ids: Vec<&str> = bills.iter().map(|b| b.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids[0], "b-c-000001", "the marked runs stay on their bill");
    assert_eq!(bills.len(), 2);
    sb.cleanup().await;
}

/// Where the workspace's binaries are.
fn binary(name: &str) -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join(name);
    assert!(
        bin.exists(),
        "{} is not built; run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// Runs `billing-job` to completion; returns its exit success and stdout.
async fn run_job(sb: &Sandbox, extra: &[(&str, &str)]) -> (bool, String) {
    let out = tokio::process::Command::new(binary("billing-job"))
        .env_clear()
        .envs(sb.env(extra))
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// Parses `billed N runs into M bills, total X micros`.
fn parse_summary(line: &str) -> Option<(u64, u64, i64)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    match w.as_slice() {
        ["billed", n, "runs", "into", m, "bills,", "total", x, "micros"] => {
            Some((n.parse().ok()?, m.parse().ok()?, x.parse().ok()?))
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_points_every_run_still_ends_on_exactly_one_bill() {
    let sb = Sandbox::new("bill-kill").await;
    let us = users(40);
    let (runs, mut total) = workload(&us, 3000);
    insert_runs(&sb, &runs).await;
    let env = [
        ("BILLING_CHUNK_SIZE", "100"),
        ("BILLING_MAX_BILL_ITEMS", "40"),
        ("BILLING_LEASE_TTL", "1s"),
    ];
    let mut seed = schemas::now_ms() as u64 | 1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut kills = 0;
    let mut mid_bill = 0;
    let mut finished = 0;
    let mut extra = 0;
    let mut last_finished = false;
    let drafts = sb.db.collection::<Document>(billing_job::DRAFTS);
    let mut i = 0;
    // At least 24 kills, and more (later ones later in the job's life) until one landed
    // mid-bill: on a loaded machine the job may not reach its first draft within 300 ms.
    while kills < 24 || (mid_bill == 0 && kills < 60) {
        i += 1;
        assert!(
            i <= 200,
            "only {kills} kills in {i} tries ({finished} runs finished first)"
        );
        if i % 6 == 0 || last_finished {
            // New work keeps arriving between crashes (and whenever a job got to finish).
            let more: Vec<RunDoc> = (0..300)
                .map(|k| run_doc(&us[k % us.len()], RunStatus::Succeeded, 5))
                .collect();
            total += 1500;
            extra += 300;
            insert_runs(&sb, &more).await;
        }
        let mut child = sb.spawn_binary("billing-job", &env);
        let window = if kills >= 12 && mid_bill == 0 {
            1_501
        } else {
            301
        };
        tokio::time::sleep(Duration::from_millis(rand() % window)).await;
        last_finished = child.try_wait().unwrap().is_some();
        if last_finished {
            finished += 1;
        } else {
            tests::signal(&child, "KILL");
            kills += 1;
        }
        let _ = child.wait();
        if !last_finished && drafts.count_documents(doc! {}).await.unwrap() > 0 {
            mid_bill += 1;
        }
        if !last_finished {
            // A killed job's lease runs out after its time-to-live.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
    }
    assert!(
        mid_bill > 0,
        "no kill landed between drafting and publishing a bill"
    );
    // (Mid-crash states are not checked here: runs may be marked for a bill whose draft the
    // next run completes.)
    let before = all_bills(&sb).await;
    let (bills_before, billed_before) = (
        before.len(),
        before.iter().map(|b| b.items.len()).sum::<usize>(),
    );
    eprintln!(
        "after {kills} kills ({mid_bill} of them left a bill half-made; {finished} jobs \
         finished first): {billed_before} runs on {bills_before} bills; running to completion"
    );
    let (ok, out) = run_job(&sb, &env).await;
    assert!(ok, "the last run exits 0: {out}");
    let (n, _, _) = parse_summary(&out).unwrap_or_else(|| panic!("a summary line: {out:?}"));
    let (bills, billed) = check_bills(&sb, true).await;
    assert_eq!(billed, 3000 + extra, "every final run is billed");
    assert_eq!(n as usize, billed - billed_before);
    let sum: i64 = bills.iter().map(|b| b.amount_micros).sum();
    assert_eq!(sum, total, "no amount is wrong");
    // And again: nothing new.
    let (ok, out) = run_job(&sb, &env).await;
    assert!(ok);
    assert_eq!(out, "billed 0 runs into 0 bills, total 0 micros");
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_started_at_once_do_not_double_bill() {
    let sb = Sandbox::new("bill-two").await;
    let us = users(20);
    let (runs, total) = workload(&us, 2000);
    insert_runs(&sb, &runs).await;
    let env = [("BILLING_CHUNK_SIZE", "200")];
    let (a, b) = tokio::join!(run_job(&sb, &env), run_job(&sb, &env));
    assert!(a.0 && b.0, "both exit 0: {a:?} {b:?}");
    let mut billed = 0;
    let mut held = 0;
    for out in [&a.1, &b.1] {
        if let Some((n, _, _)) = parse_summary(out) {
            billed += n;
        } else {
            assert!(out.contains("another billing job holds the lease"), "{out}");
            held += 1;
        }
    }
    assert_eq!(billed, 2000, "{a:?} {b:?}");
    let (bills, n) = check_bills(&sb, true).await;
    assert_eq!(n, 2000);
    assert_eq!(bills.len(), 20, "one bill per user (held: {held})");
    assert_eq!(bills.iter().map(|b| b.amount_micros).sum::<i64>(), total);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_passes_without_the_lease_still_bill_each_run_once() {
    let sb = Sandbox::new("bill-overlap").await;
    let us = users(10);
    let (runs, total) = workload(&us, 1500);
    insert_runs(&sb, &runs).await;
    let o = BillOptions {
        use_lease: false,
        chunk_size: 50,
        max_items_per_bill: 30,
        ..opts()
    };
    let (a, b, c) = tokio::join!(
        bill_once(&sb.db, &o),
        bill_once(&sb.db, &o),
        bill_once(&sb.db, &o)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.runs + b.runs + c.runs, 1500);
    assert_eq!(a.total_micros + b.total_micros + c.total_micros, total);
    let (_, n) = check_bills(&sb, true).await;
    assert_eq!(n, 1500);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_job_is_told_the_lease_is_held() {
    let sb = Sandbox::new("bill-lease").await;
    let lease = billing_job::lease::Lease::acquire(
        &sb.db,
        billing_job::LEASE_NAME,
        "other",
        Duration::from_secs(30),
    )
    .await
    .unwrap()
    .unwrap();
    let err = bill_once(&sb.db, &opts()).await.unwrap_err();
    let held = err
        .downcast_ref::<billing_job::LeaseHeld>()
        .expect("LeaseHeld");
    assert_eq!(held.holder, "other");
    let (ok, out) = run_job(&sb, &[]).await;
    assert!(ok, "exits 0");
    assert!(
        out.starts_with("another billing job holds the lease (other"),
        "{out}"
    );
    lease.release().await;
    assert_eq!(
        bill_once(&sb.db, &opts()).await.unwrap(),
        Summary::default()
    );
    sb.cleanup().await;
}

// ---- accounts ----

async fn seed_bill(sb: &Sandbox, user_id: &str, amount: i64) -> BillDoc {
    let b = BillDoc {
        id: format!("b-{}", tests::rand_id()),
        user_id: user_id.to_owned(),
        created_at_ms: schemas::now_ms(),
        period_start_ms: 1,
        period_end_ms: 2,
        amount_micros: amount,
        status: BillStatus::Unpaid,
        items: vec![BillItem {
            run_id: "r1".into(),
            function: "f".into(),
            duration_ms: 1,
            cpu_millicores: 500,
            memory_mb: 128,
            disk_mb: 64,
            amount_micros: amount,
        }],
        paid_at_ms: None,
    };
    sb.db
        .collection::<BillDoc>(collections::BILLS)
        .insert_one(&b)
        .await
        .unwrap();
    b
}

async fn balance(sb: &Sandbox, user_id: &str) -> i64 {
    let u = sb
        .db
        .collection::<Document>(collections::USERS)
        .find_one(doc! {"_id": user_id})
        .await
        .unwrap()
        .unwrap();
    match u.get("balance_micros") {
        Some(bson::Bson::Int32(v)) => i64::from(*v),
        Some(bson::Bson::Int64(v)) => *v,
        other => panic!("balance {other:?}"),
    }
}

async fn bill_doc(sb: &Sandbox, id: &str) -> Document {
    sb.db
        .collection::<Document>(collections::BILLS)
        .find_one(doc! {"_id": id})
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_payments_of_one_bill_exactly_one_succeeds() {
    let sb = Sandbox::new("bill-pay").await;
    let user = sb.seed_user(1_000_000).await;
    let bill = seed_bill(&sb, &user, 250_000).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (db, user, id) = (sb.db.clone(), user.clone(), bill.id.clone());
            tokio::spawn(async move { account::pay_bill(&db, &user, &id).await })
        })
        .collect();
    let mut ok = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(b) => {
                assert_eq!(b.status, BillStatus::Paid);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.status(), 409, "{e}");
                conflicts += 1;
            }
        }
    }
    assert_eq!((ok, conflicts), (1, 7));
    assert_eq!(balance(&sb, &user).await, 750_000);
    let stored: BillDoc = bson::from_document(bill_doc(&sb, &bill.id).await).unwrap();
    assert_eq!(stored.status, BillStatus::Paid);
    assert!(stored.paid_at_ms.is_some());
    let h = account::history(&sb.db, &user, 10).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].kind, HistoryKind::BillPayment);
    assert_eq!(
        (h[0].amount_micros, h[0].bill_id.as_deref()),
        (250_000, Some(bill.id.as_str()))
    );
    // Paying again: 409; someone else's bill or no bill: 404.
    let again = account::pay_bill(&sb.db, &user, &bill.id)
        .await
        .unwrap_err();
    assert_eq!(again.status(), 409);
    let stranger = sb.seed_user(10_000_000).await;
    assert_eq!(
        account::pay_bill(&sb.db, &stranger, &bill.id)
            .await
            .unwrap_err()
            .status(),
        404
    );
    assert_eq!(
        account::pay_bill(&sb.db, &user, "b-none")
            .await
            .unwrap_err()
            .status(),
        404
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_with_too_low_a_balance_is_402_and_changes_nothing() {
    let sb = Sandbox::new("bill-low").await;
    let user = sb.seed_user(99).await;
    let bill = seed_bill(&sb, &user, 100).await;
    let before = bill_doc(&sb, &bill.id).await;
    let e = account::pay_bill(&sb.db, &user, &bill.id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            AccountError::InsufficientBalance {
                balance_micros: 99,
                amount_micros: 100
            }
        ),
        "{e}"
    );
    assert_eq!(e.status(), 402);
    assert_eq!(balance(&sb, &user).await, 99);
    assert_eq!(
        bill_doc(&sb, &bill.id).await,
        before,
        "the bill is unchanged"
    );
    assert!(account::history(&sb.db, &user, 10)
        .await
        .unwrap()
        .is_empty());
    // After a top-up it can be paid, down to exactly zero.
    let card = Card::new("4242424242424242", "12/99", "123");
    assert_eq!(
        account::topup(&sb.db, &TestProvider, &user, 1, &card)
            .await
            .unwrap(),
        100
    );
    account::pay_bill(&sb.db, &user, &bill.id).await.unwrap();
    assert_eq!(balance(&sb, &user).await, 0);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_payment_is_resolved_without_double_or_lost_deduction() {
    let sb = Sandbox::new("bill-stale").await;
    let users_coll = sb.db.collection::<Document>(collections::USERS);
    let bills_coll = sb.db.collection::<Document>(collections::BILLS);
    let old = schemas::now_ms() - 10 * 60_000;

    // Crashed after deducting: the next payment completes it (and says 409).
    let user = sb.seed_user(1_000).await;
    let bill = seed_bill(&sb, &user, 300).await;
    bills_coll
        .update_one(
            doc! {"_id": &bill.id},
            doc! {"$set": {"payment_attempt": "A", "payment_started_ms": old}},
        )
        .await
        .unwrap();
    users_coll
        .update_one(
            doc! {"_id": &user},
            doc! {"$inc": {"balance_micros": -300_i64}, "$push": {"payments": "A+"}},
        )
        .await
        .unwrap();
    let e = account::pay_bill(&sb.db, &user, &bill.id)
        .await
        .unwrap_err();
    assert_eq!(e.status(), 409);
    assert_eq!(balance(&sb, &user).await, 700, "deducted once");
    let stored = bill_doc(&sb, &bill.id).await;
    assert_eq!(stored.get_str("status").unwrap(), "paid");
    assert!(stored.get("payment_attempt").is_none());
    let h = account::history(&sb.db, &user, 10).await.unwrap();
    assert_eq!(h.len(), 1);

    // Crashed before deducting: the attempt is voided, the new payment goes through, and the
    // old attempt can no longer deduct.
    let user = sb.seed_user(1_000).await;
    let bill = seed_bill(&sb, &user, 300).await;
    bills_coll
        .update_one(
            doc! {"_id": &bill.id},
            doc! {"$set": {"payment_attempt": "B", "payment_started_ms": old}},
        )
        .await
        .unwrap();
    let paid = account::pay_bill(&sb.db, &user, &bill.id).await.unwrap();
    assert_eq!(paid.status, BillStatus::Paid);
    assert_eq!(balance(&sb, &user).await, 700);
    let late = users_coll
        .update_one(
            doc! {"_id": &user, "balance_micros": {"$gte": 300_i64}, "payments": {"$nin": ["B+", "B-"]}},
            doc! {"$inc": {"balance_micros": -300_i64}, "$push": {"payments": "B+"}},
        )
        .await
        .unwrap();
    assert_eq!(late.matched_count, 0, "the voided attempt cannot deduct");
    assert_eq!(balance(&sb, &user).await, 700);

    // A recent lock is a payment in progress: 409, nothing changes.
    let user = sb.seed_user(1_000).await;
    let bill = seed_bill(&sb, &user, 300).await;
    bills_coll
        .update_one(
            doc! {"_id": &bill.id},
            doc! {"$set": {"payment_attempt": "C", "payment_started_ms": schemas::now_ms()}},
        )
        .await
        .unwrap();
    assert_eq!(
        account::pay_bill(&sb.db, &user, &bill.id)
            .await
            .unwrap_err()
            .status(),
        409
    );
    assert_eq!(balance(&sb, &user).await, 1_000);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topups_check_the_card_and_store_only_its_last_four_digits() {
    let sb = Sandbox::new("bill-topup").await;
    let user = sb.seed_user(1_000_000).await;
    let p = TestProvider;
    let good = Card::new("4242 4242 4242 4242", "12/99", "123");

    let declined = Card::new(account::TEST_DECLINED_CARD, "12/99", "123");
    let e = account::topup(&sb.db, &p, &user, 5_000_000, &declined)
        .await
        .unwrap_err();
    assert!(matches!(e, AccountError::Declined));
    assert_eq!(e.status(), 402);
    for bad in [
        Card::new("4242424242424241", "12/99", "123"),
        Card::new("4242424242424242", "01/20", "123"),
        Card::new("4242424242424242", "13/99", "123"),
        Card::new("4242424242424242", "12/99", "12"),
    ] {
        let e = account::topup(&sb.db, &p, &user, 5_000_000, &bad)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 400, "{bad:?}: {e}");
    }
    for amount in [0, -5, account::MAX_TOPUP_MICROS + 1] {
        let e = account::topup(&sb.db, &p, &user, amount, &good)
            .await
            .unwrap_err();
        assert_eq!((e.status(), e.code()), (400, "invalid_amount"));
    }
    assert_eq!(
        account::topup(&sb.db, &p, "u-nobody", 5, &good)
            .await
            .unwrap_err()
            .status(),
        404
    );
    assert_eq!(
        balance(&sb, &user).await,
        1_000_000,
        "failed top-ups change nothing"
    );
    assert!(account::history(&sb.db, &user, 10)
        .await
        .unwrap()
        .is_empty());

    assert_eq!(
        account::topup(&sb.db, &p, &user, 5_000_000, &good)
            .await
            .unwrap(),
        6_000_000
    );
    let amex = Card::new("378282246310005", "01/99", "1234");
    assert_eq!(
        account::topup(&sb.db, &p, &user, 7, &amex).await.unwrap(),
        6_000_007
    );
    let h = account::history(&sb.db, &user, 10).await.unwrap();
    assert_eq!(h.len(), 2);
    assert!(h
        .iter()
        .all(|e| e.kind == HistoryKind::Topup && e.bill_id.is_none()));
    let mut last4: Vec<&str> = h
        .iter()
        .filter_map(|e| e.account_last4.as_deref())
        .collect();
    last4.sort();
    assert_eq!(last4, ["0005", "4242"]);
    // Nowhere is more of a card number stored.
    for coll in [collections::USERS, collections::HISTORY, collections::BILLS] {
        for d in all_docs(&sb, coll).await {
            let s = d.to_string();
            assert!(
                !s.contains("42424242") && !s.contains("8282246"),
                "{coll}: {s}"
            );
        }
    }
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_credit_is_balance_minus_unpaid_bills_and_unbilled_runs() {
    let sb = Sandbox::new("bill-credit").await;
    let user = sb.seed_user(10_000).await;
    // Two bills for 1,500 micros of runs that finished earlier.
    sb.add_spent(&user, 1_500).await;
    seed_bill(&sb, &user, 1_000).await;
    let paid = seed_bill(&sb, &user, 500).await;
    account::pay_bill(&sb.db, &user, &paid.id).await.unwrap();
    let counted = run_doc(&user, RunStatus::Succeeded, 30);
    sb.store_runs(&[
        counted.clone(),
        run_doc(&user, RunStatus::TimedOut, 4),
        run_doc(&user, RunStatus::Running, 0),
        exempt_doc(&user),
    ])
    .await;
    // 10,000 − 500 (paid) − 1,000 unpaid − 34 unbilled.
    assert_eq!(
        account::available_credit(&sb.db, &user).await.unwrap(),
        8_466
    );
    // A finish delivered again is refused by the run store and not counted again.
    sb.store_runs(&[counted]).await;
    assert_eq!(
        account::available_credit(&sb.db, &user).await.unwrap(),
        8_466
    );
    // Billing moves the runs onto a bill: the credit stays the same.
    bill_once(&sb.db, &opts()).await.unwrap();
    assert_eq!(
        account::available_credit(&sb.db, &user).await.unwrap(),
        8_466
    );
    assert_eq!(
        account::available_credit(&sb.db, "u-nobody")
            .await
            .unwrap_err()
            .status(),
        404
    );
    sb.cleanup().await;
}
