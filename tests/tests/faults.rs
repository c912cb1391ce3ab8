//! The single-host fault suite (issue 13). Two workers, two dispatchers and a gateway run as
//! real processes against a RabbitMQ node, a ZooKeeper server and a MongoDB (or stand-in)
//! server of the suite's own — other ports, other data folders — so that killing them never
//! disturbs the other tests. With steady async and sync load running, faults are injected one
//! after another (`inject::Fault::ALL`); after each, and at the end, the suite checks that every
//! accepted run ended final with the right result (0 lost, 0 wrong), that none ran to
//! completion twice (a consumer of the results exchange sees each run once), how soon a right
//! sync answer came back after the fault cleared, and at the end that the billing job billed
//! every final run exactly once and each user's `spent_micros` is the sum of their runs' costs.
//!
//! Every fault is reported in the matrix (printed to stderr whatever the test harness captures,
//! and written to `target/faults-logs/matrix.txt` beside the components' and services' logs);
//! the test fails at the end, with a summary, if any check failed. `FAULTS_ONLY=a,b` runs a
//! subset (names in the matrix).

#[path = "faults/checks.rs"]
mod checks;
#[path = "faults/inject.rs"]
mod inject;
#[path = "faults/load.rs"]
mod load;
#[path = "faults/observer.rs"]
mod observer;
#[path = "faults/platform.rs"]
mod platform;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::{Resources, Runtime};
use tests::services::{MongoServer, RabbitNode, ZkServer};
use tests::Sandbox;

use checks::{Row, Verdict};
use inject::{Ctx, Fault};
use load::{Ledger, Load, Target};
use observer::Observer;
use platform::Platform;

/// The load's function: its result is checkable from its arguments.
const ADDER: &str = "import time\n\n\ndef handle(event, context):\n    time.sleep(event.get(\"sleep\", 0))\n    return {\"sum\": event[\"a\"] + event[\"b\"], \"nonce\": event[\"nonce\"]}\n";
/// Load that runs before each fault is injected and after it cleared.
const LOAD_AROUND: Duration = Duration::from_millis(1500);
/// Longest wait for the platform to answer a sync call right before a fault; past it, every
/// component is restarted (and waited for up to [`STARTED_WITHIN`]) so that each fault starts
/// from a working platform.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);
const STARTED_WITHIN: Duration = Duration::from_secs(60);
/// Longest wait, after a fault, for the platform to be steady again (one leader, right sync
/// answers) before the next fault's window begins.
const STEADY_AFTER: Duration = Duration::from_secs(30);
/// How often the suite asks both dispatchers whether they lead.
const LEADER_SAMPLE: Duration = Duration::from_millis(250);
/// Longest wait for a right sync answer after a fault (the bound itself is `Fault::bound`).
const RECOVERY_WAIT: Duration = Duration::from_secs(20);
/// Longest wait, after each fault, for its accepted runs to be final.
const SETTLE: Duration = Duration::from_secs(30);
/// Upper limit of the load's life, should the suite hang.
const LOAD_LIMIT: Duration = Duration::from_secs(30 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_run_nothing_twice_and_bill_once() {
    let faults = selected_faults();
    let logs = logs_dir();
    let tmp = TempDir::new();
    let mut teardown = Teardown::default();
    let (rabbit, zk, mongo) = start_services(&tmp.0).await;
    let sb = Sandbox::on("faults", &mongo.uri(), &rabbit.url()).await;
    let (key, victim_key) = seed_functions(&sb).await;
    // Only the database is used from here on; the components have their own connections.
    let _ = sb.conn.close(200, "seeded".into()).await;

    let platform = Platform::start(&sb, &zk.connect(), &tmp.0, &logs)
        .await
        .expect("starting the platform");
    teardown.arm(&platform);
    on_interrupt(platform.clone(), teardown.workers.clone(), tmp.0.clone());
    let observer = Observer::start(rabbit.url(), sb.names.clone());
    let ledger = Arc::new(Ledger::default());
    watch_leaders(Arc::downgrade(&platform), ledger.clone());
    let target = Target::new(platform.url("gw", ""), key);
    let load = Load::start(ledger.clone(), target.clone(), "adder", LOAD_LIMIT);
    let mut ctx = Ctx {
        rabbit,
        zk,
        mongo,
        platform: platform.clone(),
        ledger,
        target,
        db: sb.db.clone(),
        function: "adder".to_owned(),
        victim: "victim".to_owned(),
        victim_key,
    };

    let (mut rows, mut checked) = run_phases(&faults, &mut ctx, &observer).await;
    load.stop().await;
    let tail = rows.len() - 1;
    let end = finish(&ctx, &observer, &mut rows, &mut checked, tail).await;
    observer.stop().await;
    let failed = report(&ctx, &rows, &end, &logs);
    platform.shutdown(Duration::from_secs(30)).await;
    drop(ctx);
    assert!(
        failed.is_empty(),
        "the fault suite failed:\n  {}\n(matrix above and in {})",
        failed.join("\n  "),
        logs.join("matrix.txt").display()
    );
}

/// The suite's own RabbitMQ, ZooKeeper and MongoDB, in folders under `dir`.
async fn start_services(dir: &Path) -> (RabbitNode, ZkServer, MongoServer) {
    let dirs = ["rabbitmq", "zookeeper", "mongodb"].map(|d| dir.join(d));
    let (rabbit, zk, mongo) = tokio::join!(
        RabbitNode::start(&dirs[0]),
        ZkServer::start(&dirs[1]),
        MongoServer::start(&dirs[2]),
    );
    (
        rabbit.expect("starting the suite's RabbitMQ node"),
        zk.expect("starting the suite's ZooKeeper"),
        mongo.expect("starting the suite's MongoDB"),
    )
}

/// Seeds the tenant with its functions `adder` (the load) and `victim` (the container fault);
/// returns the API key and the victim's function key.
async fn seed_functions(sb: &Sandbox) -> (String, String) {
    let (user, key) = sb.seed_tenant(1_000_000_000_000).await;
    let small = Resources::new(250, 64, 32);
    seed(sb, &user, "adder", small, 5_000, ADDER).await;
    // Its own size, so that no spare container takes its first run: the container the suite
    // kills is the one labelled with its function key.
    let victim_src = format!("{ADDER}# the container fault's victim\n");
    let size = Resources::new(250, 96, 32);
    let victim = seed(sb, &user, "victim", size, 10_000, &victim_src).await;
    (key, schemas::function_key(&victim.id, victim.version))
}

/// The baseline phase, one phase per fault, and the phase after them (left open: the load is
/// still running). Returns the rows and, per row, the runs not final when it was checked.
async fn run_phases(
    faults: &[Fault],
    ctx: &mut Ctx,
    observer: &Observer,
) -> (Vec<Row>, Vec<HashSet<String>>) {
    let mut rows = Vec::new();
    let mut checked = Vec::new();
    let mut base = Row {
        fault: "baseline".to_owned(),
        ..Row::default()
    };
    if wait_recovery(&ctx.ledger, Instant::now(), &ctx.function, HEALTHY_WITHIN)
        .await
        .is_none()
    {
        base.failures
            .push("the platform never answered a sync call right".to_owned());
    }
    tokio::time::sleep(LOAD_AROUND).await;
    ctx.ledger.set_phase(1);
    checked.push(settle(ctx, 0, observer, &mut base).await);
    rows.push(base);
    for (i, fault) in faults.iter().enumerate() {
        let (row, late) = run_fault(*fault, i + 1, ctx, observer).await;
        rows.push(row);
        checked.push(late);
    }
    rows.push(Row {
        fault: "after the faults".to_owned(),
        ..Row::default()
    });
    checked.push(HashSet::new());
    (rows, checked)
}

/// Prints the matrix (and writes it to `matrix.txt`), keeps the services' logs, and returns
/// every failure.
fn report(ctx: &Ctx, rows: &[Row], end: &[String], logs: &Path) -> Vec<String> {
    let mut text = checks::render(rows);
    text.push_str(&end.join("\n"));
    text.push('\n');
    for (what, files) in [
        ("rabbitmq", ctx.rabbit.logs()),
        ("zookeeper", ctx.zk.logs()),
        ("mongodb", ctx.mongo.logs()),
    ] {
        keep_logs(logs, what, &files);
    }
    say(&format!(
        "\n==== fault matrix ====\n{text}(logs: {})\n",
        logs.display()
    ));
    let _ = std::fs::write(logs.join("matrix.txt"), &text);
    rows.iter()
        .flat_map(|r| r.failures.iter().map(move |f| format!("{}: {f}", r.fault)))
        .chain(end.iter().filter(|l| l.starts_with("FAIL")).cloned())
        .collect()
}

/// `FAULTS_ONLY=a,b`: those faults, in the suite's order; else all of them.
fn selected_faults() -> Vec<Fault> {
    let only = std::env::var("FAULTS_ONLY").unwrap_or_default();
    let wanted: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for w in &wanted {
        assert!(
            Fault::ALL.iter().any(|f| f.name() == *w),
            "FAULTS_ONLY: unknown fault {w:?}; known: {}",
            Fault::ALL.map(Fault::name).join(", ")
        );
    }
    Fault::ALL
        .into_iter()
        .filter(|f| wanted.is_empty() || wanted.contains(&f.name()))
        .collect()
}

/// Seeds a python3 function of `user` with `resources` and `timeout_ms`.
async fn seed(
    sb: &Sandbox,
    user: &str,
    name: &str,
    resources: Resources,
    timeout_ms: u64,
    source: &str,
) -> schemas::FunctionDoc {
    let mut f = sb
        .function_doc(
            user,
            name,
            Runtime::Python3,
            "main.py",
            "main.handle",
            source,
        )
        .await;
    f.resources = resources;
    f.timeout_ms = timeout_ms;
    sb.insert_function(&f).await;
    f
}

/// One fault: healthy first, load, inject, measure recovery, restart what the fault killed,
/// load, then check the runs accepted during the fault's window. Returns the row and the runs
/// that were not final when checked.
async fn run_fault(
    fault: Fault,
    phase: usize,
    ctx: &mut Ctx,
    observer: &Observer,
) -> (Row, HashSet<String>) {
    let mut row = Row {
        fault: fault.name().to_owned(),
        bound: Some(fault.bound()),
        ..Row::default()
    };
    say(&format!("[faults] {}: injecting\n", fault.name()));
    if let Err(e) = healthy(ctx, &mut row).await {
        row.failures.push(e);
    }
    tokio::time::sleep(LOAD_AROUND).await;
    match inject::inject(fault, ctx).await {
        Ok(inj) => {
            row.notes.extend(inj.notes);
            row.recovery =
                wait_recovery(&ctx.ledger, inj.cleared, &inj.recovery_fn, RECOVERY_WAIT).await;
            if let Some(name) = inj.restart {
                match ctx.platform.spawn(&name) {
                    Ok(()) => row.notes.push(format!("restarted {name} after recovery")),
                    Err(e) => row
                        .failures
                        .push(format!("could not restart {name}: {e:#}")),
                }
            }
        }
        Err(e) => row
            .failures
            .push(format!("could not inject the fault: {e:#}")),
    }
    // A platform that did not recover at all is restarted before the next fault; one that did
    // must settle (one leader, right answers) before the next fault's window begins.
    if row.recovery.is_some() && !steady(ctx, STEADY_AFTER).await {
        row.notes.push(format!(
            "not steady {} s after the fault (leaders: {:?})",
            STEADY_AFTER.as_secs(),
            ctx.platform.leaders().await
        ));
    }
    tokio::time::sleep(LOAD_AROUND).await;
    ctx.ledger.set_phase(phase + 1);
    let late = settle(ctx, phase, observer, &mut row).await;
    if matches!(fault, Fault::LeaderKill | Fault::LeaderPause) {
        row.notes
            .push(format!("leading now: {:?}", ctx.platform.leaders().await));
    }
    (row, late)
}

/// Waits for a right sync answer; when none comes within [`HEALTHY_WITHIN`] (an earlier fault
/// left the platform wedged), restarts every component and waits again.
async fn healthy(ctx: &Ctx, row: &mut Row) -> Result<(), String> {
    if steady(ctx, HEALTHY_WITHIN).await {
        return Ok(());
    }
    let leaders = ctx.platform.leaders().await;
    ctx.platform
        .restart_all()
        .map_err(|e| format!("could not restart the platform: {e:#}"))?;
    row.notes.push(format!(
        "not steady for {} s before the fault (no right sync answer, or leaders {leaders:?}): \
         every component was restarted",
        HEALTHY_WITHIN.as_secs()
    ));
    match steady(ctx, STARTED_WITHIN).await {
        true => Ok(()),
        false => Err("the platform did not work even after a restart".to_owned()),
    }
}

/// Waits up to `deadline` until exactly one dispatcher leads and a sync call sent after that
/// is answered right.
async fn steady(ctx: &Ctx, deadline: Duration) -> bool {
    let t0 = Instant::now();
    while ctx.platform.leaders().await.len() != 1 {
        if t0.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = deadline.saturating_sub(t0.elapsed());
    wait_recovery(&ctx.ledger, Instant::now(), &ctx.function, left)
        .await
        .is_some()
}

/// Samples both dispatchers' leader flags while the platform lives; two at once is noted on
/// the current phase's row.
fn watch_leaders(platform: std::sync::Weak<Platform>, ledger: Arc<Ledger>) {
    tokio::spawn(async move {
        while let Some(p) = platform.upgrade() {
            if p.leaders().await.len() > 1 {
                ledger.saw_two_leaders();
            }
            drop(p);
            tokio::time::sleep(LEADER_SAMPLE).await;
        }
    });
}

/// Waits up to `deadline` for a right answer to a sync call of `function` sent at or after
/// `from`; returns how long after `from` it came.
async fn wait_recovery(
    ledger: &Ledger,
    from: Instant,
    function: &str,
    deadline: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if let Some(at) = ledger.first_right_sync_after(from, function) {
            return Some(at.saturating_duration_since(from));
        }
        if t0.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to [`SETTLE`] for the runs accepted in `phase` to be final, tallies them into
/// `row` (with the exits of the phase) and prints a progress line. Returns the runs that were
/// not final in time.
async fn settle(ctx: &Ctx, phase: usize, observer: &Observer, row: &mut Row) -> HashSet<String> {
    let accepted: HashMap<String, load::Accepted> = ctx
        .ledger
        .accepted()
        .into_iter()
        .filter(|(_, a)| a.phase == phase)
        .collect();
    let ids: Vec<String> = accepted.keys().cloned().collect();
    let t0 = Instant::now();
    let (runs, pending) = loop {
        let runs = checks::runs(&ctx.db, Some(&ids)).await.unwrap_or_default();
        let pending: HashSet<String> = accepted
            .iter()
            .filter(|(id, a)| {
                matches!(
                    checks::verdict(a, runs.get(*id)),
                    Verdict::NotFinal(_) | Verdict::Missing
                )
            })
            .map(|(id, _)| id.clone())
            .collect();
        if pending.is_empty() || t0.elapsed() > SETTLE {
            break (runs, pending);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    row.tally = checks::tally(phase, &accepted, &runs, &observer.seen());
    let two = ctx.ledger.two_leaders(phase);
    if two > 0 {
        row.notes.push(format!(
            "two dispatchers said they led at once in {two} samples (~{:.1} s)",
            f64::from(two) * LEADER_SAMPLE.as_secs_f64()
        ));
    }
    row.exits.extend(
        ctx.platform
            .take_exits()
            .into_iter()
            .map(|e| format!("{} ({})", e.name, e.status)),
    );
    let t = &row.tally;
    say(&format!(
        "[faults] {}: accepted {}, right {}, lost {}, wrong {}, twice {}, recovery {}, exits {}\n",
        row.fault,
        t.accepted,
        t.right,
        t.lost,
        t.wrong,
        t.twice,
        row.recovery
            .map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        row.exits.len()
    ));
    pending
}

/// The end: waits for every accepted run, tallies every row again on the final records, marks
/// runs that were final only after their fault's check as late, runs the billing job and checks
/// the bills. Returns the lines to print under the matrix (`FAIL ...` lines fail the suite).
async fn finish(
    ctx: &Ctx,
    observer: &Observer,
    rows: &mut [Row],
    checked: &mut [HashSet<String>],
    tail: usize,
) -> Vec<String> {
    checked[tail] = settle(ctx, tail, observer, &mut rows[tail]).await;
    let accepted = ctx.ledger.accepted();
    let mut runs = checks::runs(&ctx.db, None).await;
    for _ in 0..5 {
        if runs.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        runs = checks::runs(&ctx.db, None).await;
    }
    let runs = runs.unwrap_or_else(|e| panic!("reading the run records: {e:#}"));
    let seen = observer.seen();
    for (phase, row) in rows.iter_mut().enumerate() {
        row.tally = checks::tally(phase, &accepted, &runs, &seen);
        let late = checked[phase]
            .iter()
            .filter(|id| {
                accepted
                    .get(id.as_str())
                    .is_some_and(|a| checks::verdict(a, runs.get(id.as_str())) == Verdict::Right)
            })
            .count();
        if late > 0 {
            row.failures.push(format!(
                "{late} runs were not final {} s after the fault (they ended right later)",
                SETTLE.as_secs()
            ));
        }
        row.judge();
    }
    let mut end = Vec::new();
    let unanswered: usize = runs.values().filter(|r| !r.is_final()).count();
    let never_accepted = unanswered.saturating_sub(
        accepted
            .keys()
            .filter(|id| runs.get(*id).is_some_and(|r| !r.is_final()))
            .count(),
    );
    if never_accepted > 0 {
        end.push(format!(
            "note {never_accepted} run records of calls that got no acceptance are not final"
        ));
    }
    let refused: HashMap<u16, u64> = (0..rows.len()).fold(HashMap::new(), |mut acc, p| {
        for (k, v) in ctx.ledger.refused(p) {
            *acc.entry(k).or_default() += v;
        }
        acc
    });
    end.push(format!(
        "requests not accepted, by status (0 = no HTTP answer): {refused:?}; sync calls answered: {}",
        ctx.ledger.sync_calls().len()
    ));
    end.extend(bill(ctx).await);
    end
}

/// Waits (at most 90 s) until no run carries an unsettled mark: settling a batch a killed
/// writer left is the platform's own job (`common::runstore::recover`, every writer each
/// minute, for batches older than 30 s), so a check of the counters must come after it.
async fn settled(ctx: &Ctx) -> Option<String> {
    let runs = ctx
        .db
        .collection::<bson::Document>(schemas::names::collections::RUNS);
    let marked = || async {
        runs.count_documents(bson::doc! {common::runstore::SETTLE: {"$exists": true}})
            .await
            .unwrap_or(u64::MAX)
    };
    let t0 = std::time::Instant::now();
    let first = marked().await;
    while marked().await > 0 {
        if t0.elapsed() > Duration::from_secs(90) {
            return Some(format!(
                "FAIL {} runs still unsettled after 90 s",
                marked().await
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (first > 0).then(|| {
        format!(
            "note {first} runs a killed writer left unsettled were settled in {:.1} s",
            t0.elapsed().as_secs_f64()
        )
    })
}

/// Runs the billing job once and checks the bills.
async fn bill(ctx: &Ctx) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(settled(ctx).await);
    let run = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::from(ctx.platform.billing_command()).output(),
    )
    .await;
    match run {
        Ok(Ok(o)) if o.status.success() => {
            out.push(format!(
                "billing job: {}",
                String::from_utf8_lossy(&o.stdout).trim()
            ));
        }
        Ok(Ok(o)) => out.push(format!(
            "FAIL billing job exited {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(Err(e)) => out.push(format!("FAIL billing job did not start: {e}")),
        Err(_) => out.push("FAIL billing job did not finish within 180 s".to_owned()),
    }
    match checks::billing_violations(&ctx.db).await {
        Ok((violations, summary)) => {
            out.push(format!("billing: {summary}"));
            for v in violations.iter().take(10) {
                out.push(format!("FAIL billing: {v}"));
            }
            if violations.len() > 10 {
                out.push(format!(
                    "FAIL billing: ... and {} more",
                    violations.len() - 10
                ));
            }
        }
        Err(e) => out.push(format!("FAIL billing could not be checked: {e:#}")),
    }
    out
}

/// Writes to the process's stderr directly (the test harness captures only `eprintln!`), so
/// the progress and the matrix show in CI logs whether or not the test passes.
fn say(s: &str) {
    let _ = std::io::stderr().write_all(s.as_bytes());
}

/// `target/faults-logs`, emptied.
fn logs_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let logs = target.join("faults-logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).expect("creating target/faults-logs");
    logs
}

/// Copies a service's log files into the suite's log folder as `<what>-<file name>`.
fn keep_logs(logs: &Path, what: &str, files: &[PathBuf]) {
    for f in files {
        if let Some(name) = f.file_name() {
            let _ = std::fs::copy(f, logs.join(format!("{what}-{}", name.to_string_lossy())));
        }
    }
}

/// On SIGINT or SIGTERM (a developer's Ctrl-C; no destructor runs then), kills the platform
/// and the services, removes the workers' containers and the temporary folder, and exits.
fn on_interrupt(platform: Arc<Platform>, workers: Vec<String>, tmp: PathBuf) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        say("[faults] interrupted: cleaning up\n");
        platform.kill_all();
        tests::services::kill_all_daemons();
        remove_containers(&workers);
        let _ = std::fs::remove_dir_all(&tmp);
        std::process::exit(130);
    });
}

/// Removes every container of the given workers.
fn remove_containers(workers: &[String]) {
    for w in workers {
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={}={w}", worker::docker::LABEL_WORKER))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

/// A temporary folder for the services' data and the workers' folders, removed when dropped
/// (after everything that uses it).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("colorfaas-faults-{}", tests::rand_id()));
        std::fs::create_dir_all(&dir).expect("creating the suite's temporary folder");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the platform's processes and removes its workers' containers, even when the suite
/// panics half-way.
#[derive(Default)]
struct Teardown {
    platform: Option<Arc<Platform>>,
    workers: Vec<String>,
}

impl Teardown {
    fn arm(&mut self, p: &Arc<Platform>) {
        self.platform = Some(p.clone());
        self.workers = p.worker_ids().into_keys().collect();
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(p) = self.platform.take() {
            p.kill_all();
        }
        remove_containers(&self.workers);
    }
}
