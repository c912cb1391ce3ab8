//! The faults, each injected with real signals (or `rabbitmqctl`, or `docker kill`) into the
//! suite's own services and the platform's processes while the load runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bson::doc;
use common::wire;
use futures::TryStreamExt;
use tests::services::{MongoServer, RabbitNode, ZkServer};

use crate::load::{self, Ledger, SyncOutcome, Target};
use crate::platform::{Platform, SESSION_TIMEOUT};

/// Recovery the issue asks for after RabbitMQ, MongoDB, worker, gateway (and container) faults.
const RECOVERY: Duration = Duration::from_secs(5);
/// How long `stop_app` keeps RabbitMQ's application stopped.
const RABBIT_STOPPED: Duration = Duration::from_secs(3);
/// How long a killed RabbitMQ or MongoDB stays down before it is started again.
const DOWN: Duration = Duration::from_secs(1);
/// How long paused processes (ZooKeeper, the leader) stay paused: longer than the session.
const PAUSED: Duration = Duration::from_millis(2 * SESSION_TIMEOUT.as_millis() as u64 + 1000);
/// How long a victim run of the container fault sleeps (the kill lands in the middle).
const VICTIM_SLEEP_S: f64 = 4.0;

/// A fault of the suite, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    RabbitStopApp,
    RabbitKill,
    MongoKill,
    ZkRestart,
    ZkPause,
    LeaderKill,
    LeaderPause,
    WorkerKill,
    GatewayKill,
    ContainerKill,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::RabbitStopApp,
        Fault::RabbitKill,
        Fault::MongoKill,
        Fault::ZkRestart,
        Fault::ZkPause,
        Fault::LeaderKill,
        Fault::LeaderPause,
        Fault::WorkerKill,
        Fault::GatewayKill,
        Fault::ContainerKill,
    ];

    /// The name used in the matrix and in `FAULTS_ONLY`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::RabbitStopApp => "rabbitmq-stop-app",
            Fault::RabbitKill => "rabbitmq-kill",
            Fault::MongoKill => "mongodb-kill",
            Fault::ZkRestart => "zookeeper-restart",
            Fault::ZkPause => "zookeeper-pause",
            Fault::LeaderKill => "leader-kill",
            Fault::LeaderPause => "leader-pause",
            Fault::WorkerKill => "worker-kill",
            Fault::GatewayKill => "gateway-kill",
            Fault::ContainerKill => "container-kill",
        }
    }

    /// The recovery bound: ZooKeeper session timeout + 3 s for faults that move leadership,
    /// 5 s for the others.
    pub fn bound(self) -> Duration {
        match self {
            Fault::ZkRestart | Fault::ZkPause | Fault::LeaderKill | Fault::LeaderPause => {
                SESSION_TIMEOUT + Duration::from_secs(3)
            }
            _ => RECOVERY,
        }
    }
}

/// Everything the faults act on.
#[derive(Debug)]
pub struct Ctx {
    pub rabbit: RabbitNode,
    pub zk: ZkServer,
    pub mongo: MongoServer,
    pub platform: Arc<Platform>,
    pub ledger: Arc<Ledger>,
    pub target: Target,
    pub db: mongodb::Database,
    /// The load's function, and the container fault's own function and its function key.
    pub function: String,
    pub victim: String,
    pub victim_key: String,
}

/// What an injection did.
#[derive(Debug)]
pub struct Injected {
    /// From when recovery is measured.
    pub cleared: Instant,
    /// The function whose sync answers measure recovery.
    pub recovery_fn: String,
    /// A component the suite killed and restarts once recovery is measured.
    pub restart: Option<String>,
    pub notes: Vec<String>,
}

/// Injects `fault`; returns once the fault is cleared (or, for leader, worker and container
/// faults, once it happened: the rest of the platform must take over).
pub async fn inject(fault: Fault, ctx: &mut Ctx) -> anyhow::Result<Injected> {
    let mut notes = Vec::new();
    let mut restart = None;
    let mut recovery_fn = ctx.function.clone();
    let t0 = Instant::now();
    let secs = |t: Instant| format!("{:.1} s", t.elapsed().as_secs_f64());
    let cleared = match fault {
        Fault::RabbitStopApp => {
            ctx.rabbit.stop_app().await?;
            let stopped = Instant::now();
            tokio::time::sleep(RABBIT_STOPPED).await;
            let starting = Instant::now();
            ctx.rabbit.start_app().await?;
            notes.push(format!(
                "stop_app took {}, stopped {}, start_app took {}",
                format_args!("{:.1} s", (stopped - t0).as_secs_f64()),
                format_args!("{:.1} s", (starting - stopped).as_secs_f64()),
                secs(starting)
            ));
            Instant::now()
        }
        Fault::RabbitKill => {
            ctx.rabbit.kill();
            tokio::time::sleep(DOWN).await;
            ctx.rabbit.restart().await?;
            notes.push(format!(
                "broker down for {} (killed, then booted)",
                secs(t0)
            ));
            Instant::now()
        }
        Fault::MongoKill => {
            ctx.mongo.kill();
            tokio::time::sleep(DOWN).await;
            ctx.mongo.restart().await?;
            notes.push(format!("database down for {}", secs(t0)));
            Instant::now()
        }
        Fault::ZkRestart => {
            ctx.zk.restart().await?;
            notes.push(format!("zookeeper down for {}", secs(t0)));
            Instant::now()
        }
        Fault::ZkPause => {
            ctx.zk.pause()?;
            tokio::time::sleep(PAUSED).await;
            ctx.zk.resume()?;
            notes.push(format!("zookeeper paused for {}", secs(t0)));
            Instant::now()
        }
        Fault::LeaderKill => {
            let leader = one_leader(&ctx.platform).await?;
            ctx.platform.signal(&leader, "KILL")?;
            notes.push(format!("SIGKILLed leader {leader}"));
            restart = Some(leader);
            Instant::now()
        }
        Fault::LeaderPause => {
            let leader = one_leader(&ctx.platform).await?;
            ctx.platform.signal(&leader, "STOP")?;
            // Measured from the pause: the standby must take over while the leader is frozen.
            let stopped = Instant::now();
            tokio::time::sleep(PAUSED).await;
            ctx.platform.signal(&leader, "CONT")?;
            notes.push(format!("SIGSTOPped leader {leader} for {}", secs(stopped)));
            stopped
        }
        Fault::WorkerKill => {
            let (name, how) = busy_worker(ctx).await?;
            ctx.platform.signal(&name, "KILL")?;
            notes.push(format!("SIGKILLed worker {name} {how}"));
            restart = Some(name);
            Instant::now()
        }
        Fault::GatewayKill => {
            ctx.platform.signal("gw", "KILL")?;
            ctx.platform.spawn("gw")?;
            notes.push("SIGKILLed the gateway and started it again".to_owned());
            Instant::now()
        }
        Fault::ContainerKill => {
            recovery_fn = ctx.victim.clone();
            let (killed, run_id) = kill_victim_container(ctx).await?;
            notes.push(format!("docker-killed container {killed} running {run_id}"));
            let cleared = Instant::now();
            // The recovery of this fault is the victim function's next right sync answer.
            let deadline = cleared + Duration::from_secs(60);
            while Instant::now() < deadline
                && load::call_sync(&ctx.ledger, &ctx.target, &ctx.victim).await
                    != SyncOutcome::Right
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            cleared
        }
    };
    Ok(Injected {
        cleared,
        recovery_fn,
        restart,
        notes,
    })
}

/// The one dispatcher that leads (waiting up to 30 s for there to be exactly one).
async fn one_leader(p: &Platform) -> anyhow::Result<String> {
    let t0 = Instant::now();
    loop {
        let leaders = p.leaders().await;
        if leaders.len() == 1 {
            return Ok(leaders[0].clone());
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "no single leader to fault (leaders: {leaders:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A worker with a run in progress (its record says `running`), waiting up to 20 s for one;
/// else `w1`.
async fn busy_worker(ctx: &Ctx) -> anyhow::Result<(String, String)> {
    let workers = ctx.platform.worker_ids();
    let ids: Vec<&String> = workers.keys().collect();
    let runs = ctx
        .db
        .collection::<bson::Document>(schemas::names::collections::RUNS);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        let running: Vec<bson::Document> = runs
            .find(doc! {"status": "running", "worker_id": {"$in": &ids}})
            .limit(1)
            .await?
            .try_collect()
            .await?;
        if let Some(d) = running.first() {
            let w = wire::string(d.get("worker_id")).unwrap_or_default();
            if let Some(name) = workers.get(w) {
                let run = wire::string(d.get("_id")).unwrap_or_default();
                return Ok((name.clone(), format!("while it ran {run}")));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(("w1".to_owned(), "(no run was seen running)".to_owned()))
}

/// Starts a long victim run and `docker kill`s its container mid-run (once the run has been
/// going for 1.5 s). Returns the container and the run.
async fn kill_victim_container(ctx: &Ctx) -> anyhow::Result<(String, String)> {
    let run_id = load::call_async(
        &ctx.ledger,
        &ctx.target,
        &ctx.victim,
        Some(VICTIM_SLEEP_S),
        true,
    )
    .await
    .context("the victim invocation was not accepted")?;
    let runs = ctx
        .db
        .collection::<bson::Document>(schemas::names::collections::RUNS);
    let t0 = Instant::now();
    loop {
        let d = runs.find_one(doc! {"_id": &run_id}).await?;
        let started = d.as_ref().and_then(|d| {
            (wire::string(d.get("status")) == Some("running"))
                .then(|| wire::int(d.get("started_at_ms")))
        });
        if started.is_some_and(|s| s > 0 && s + 1500 <= schemas::now_ms()) {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "the victim run {run_id} was not seen running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let docker = bollard::Docker::connect_with_defaults()?;
    let ours = ctx.platform.worker_ids();
    let containers = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!(
                    "{}={}",
                    worker::docker::LABEL_FUNCTION,
                    ctx.victim_key
                )],
            )])),
            ..Default::default()
        }))
        .await?;
    let mut killed = Vec::new();
    for c in containers {
        let owner = c
            .labels
            .as_ref()
            .and_then(|l| l.get(worker::docker::LABEL_WORKER))
            .cloned()
            .unwrap_or_default();
        if let (Some(id), true) = (c.id, ours.contains_key(&owner)) {
            docker.kill_container(&id, None).await?;
            killed.push(id[..12.min(id.len())].to_owned());
        }
    }
    anyhow::ensure!(
        !killed.is_empty(),
        "no container of the victim function was found"
    );
    Ok((killed.join(","), run_id))
}
