//! Helpers of `hostile.rs`: calls through the gateway, run look-ups, the other tenant's
//! traffic, container and disk probes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{eventually, Sandbox};

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A sync call: HTTP status, body, and the run id (header or body).
pub async fn call(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    function: &str,
    args: &Value,
) -> (u16, Value, String) {
    let resp = client
        .post(format!("http://{gw}/v1/invoke/{function}"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-invocation-type", "sync")
        .body(args.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let header_id = resp
        .headers()
        .get("x-run-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let run_id = header_id
        .or_else(|| body["run_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{function}: no run id in {status} {body}"));
    (status, body, run_id)
}

/// An async call: its run id.
pub async fn call_async(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    args: &Value,
) -> String {
    let resp = client
        .post(format!("http://{gw}/v1/invoke/slow"))
        .bearer_auth(key)
        .header("x-invocation-type", "async")
        .body(args.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    body["run_id"].as_str().unwrap().to_owned()
}

/// `GET /v1/runs/{id}` once it is in `status` (or any final state when `None`).
pub async fn run_in(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    run_id: &str,
    status: Option<&str>,
) -> Value {
    eventually(
        Duration::from_secs(60),
        "the run reaches its state",
        || async {
            let url = format!("http://{gw}/v1/runs/{run_id}");
            let r = client.get(url).bearer_auth(key).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            let s = v["status"].as_str()?;
            let done = match status {
                Some(want) => s == want,
                None => !matches!(s, "pending" | "running"),
            };
            done.then_some(v)
        },
    )
    .await
}

pub async fn function_id(sb: &Sandbox, name: &str) -> String {
    sb.db
        .collection::<schemas::FunctionDoc>(schemas::names::collections::FUNCTIONS)
        .find_one(bson::doc! {"name": name})
        .await
        .unwrap()
        .unwrap()
        .id
}

pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The ids of `worker_id`'s running containers labelled `key` (a function key or a spare key).
pub async fn running_with_label(sb: &Sandbox, worker_id: &str, key: &str) -> Vec<String> {
    sb.containers_of(worker_id)
        .await
        .into_iter()
        .filter(|c| {
            let label = c
                .labels
                .as_ref()
                .and_then(|l| l.get(worker::docker::LABEL_FUNCTION));
            let running = c.state.as_ref().is_some_and(|s| s.to_string() == "running");
            label.map(String::as_str) == Some(key) && running
        })
        .filter_map(|c| c.id)
        .collect()
}

/// Another tenant calling its warm function in a loop while the attacks run.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>, hdrhistogram::Histogram<u64>)>,
}

impl Bystander {
    pub fn start(client: reqwest::Client, gw: SocketAddr, key: String) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let (mut n, mut failures) = (0usize, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                let t = Instant::now();
                let (status, body, _) = call(&client, gw, &key, "echo", &json!({"n": n})).await;
                let _ = h.record(t.elapsed().as_micros() as u64);
                if status != 200 || body != json!({"n": n}) {
                    failures.push(format!("{status} {body}"));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, failures, h)
        });
        Bystander { stop, task }
    }

    pub async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let (n, failures, h) = self.task.await.unwrap();
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "bystander: {n} calls, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(0.5),
            ms(0.99),
            h.max() as f64 / 1000.0
        );
        assert!(n > 0, "the other tenant made no call");
        assert!(
            failures.is_empty(),
            "the other tenant's calls failed: {failures:?}"
        );
    }
}

/// Bytes of a container's Docker log, rotated files included.
pub fn log_bytes(log_path: &str) -> u64 {
    let path = std::path::Path::new(log_path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let name = name.to_string_lossy().into_owned();
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

pub fn du(p: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p).map_or(0, |rd| rd.flatten().map(|e| du(&e.path())).sum())
}
