//! A test consumer bound to the results exchange (routing key `#`) on a durable queue of its
//! own, reconnecting after every broker fault: it records each result message per run id, so
//! the suite can count how many times a run was executed to completion (distinct worker and
//! start time) and how many messages were plain duplicates. Results of earlier attempts
//! (routing key `run.attempt`: a retry or a re-run after a platform failure follows) are not
//! completions and are left out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use schemas::names::AmqpNames;
use schemas::ResultMsg;

/// What one run's result messages say.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Distinct executions: `(worker_id, started_at_ms)`.
    pub executions: HashSet<(String, Option<i64>)>,
    /// Result messages received.
    pub messages: u32,
}

/// The running consumer.
#[derive(Debug)]
pub struct Observer {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Starts consuming the results of `names` on the broker at `url`.
    pub fn start(url: String, names: AmqpNames) -> Observer {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(consume_forever(url, names, seen.clone(), stop.clone()));
        Observer { seen, stop, task }
    }

    /// Everything seen so far, per run id.
    pub fn seen(&self) -> HashMap<String, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

async fn consume_forever(
    url: String,
    names: AmqpNames,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = consume(&url, &names, &seen, &stop).await {
            tracing::debug!(error = %format!("{e:#}"), "results observer reconnecting");
        }
        if !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One connection's worth of consuming; returns when it breaks or the suite stops.
async fn consume(
    url: &str,
    names: &AmqpNames,
    seen: &Mutex<HashMap<String, Seen>>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let conn = common::amqp::connect(url, "faults results observer").await?;
    let ch = conn.create_channel().await?;
    common::amqp::declare_topology(&ch, names).await?;
    let queue = format!("{}.faults.observer", names.prefix);
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.as_str().into(),
        names.results_exchange().as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "faults-observer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while !stop.load(Ordering::SeqCst) {
        let next = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
        let d = match next {
            Err(_) => continue,
            Ok(Some(d)) => d?,
            Ok(None) => anyhow::bail!("the observer's consumer ended"),
        };
        // Results of attempts that are retried (or re-run after a platform failure) are not
        // completions: only a run's final result is.
        let attempt = d.routing_key.as_str() == schemas::names::RK_RESULT_ATTEMPT;
        if let (false, Ok(r)) = (attempt, serde_json::from_slice::<ResultMsg>(&d.data)) {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let s = seen.entry(r.run_id).or_default();
            s.messages += 1;
            s.executions.insert((r.worker_id, r.started_at_ms));
        }
        d.ack(BasicAckOptions::default()).await?;
    }
    let _ = conn.close(200, "observer done".into()).await;
    Ok(())
}
