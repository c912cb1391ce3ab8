//! Running commands: `invoke` (through the gateway), `runs`, `logs`.

use std::time::{Duration, Instant};

use reqwest::Method;
use schemas::{Mode, RunStatus};
use serde_json::{json, Value};

use super::input::parse_data;
use super::Ctx;
use crate::api::{Server, Subject};
use crate::error::{exit, CliError, Result};
use crate::manifest;
use crate::output::{self, cell, int, short_time, table};

impl Ctx {
    pub(super) async fn invoke(
        &self,
        name: &str,
        data: Option<String>,
        asynchronous: bool,
        sync: bool,
        callback_url: Option<String>,
    ) -> Result<i32> {
        if !manifest::valid_name(name) {
            return Err(manifest::name_error(name));
        }
        let body = match &data {
            Some(d) => parse_data(d)?.to_string(),
            None => "{}".to_owned(),
        };
        let (api, _) = self.session()?;
        let mut req = api
            .gateway_req(Method::POST, &format!("/v1/invoke/{name}"))
            .header("content-type", "application/json")
            .body(body);
        if asynchronous {
            req = req.header("x-invocation-type", Mode::Async.as_str());
        } else if sync {
            req = req.header("x-invocation-type", Mode::Sync.as_str());
        }
        if let Some(u) = callback_url {
            req = req.header("x-callback-url", u);
        }
        let a = api
            .call(Server::Gateway, req, &Subject::Invoke(name.to_owned()))
            .await?;
        let run_id = a
            .header("x-run-id")
            .map(str::to_owned)
            .or_else(|| {
                a.body
                    .get("run_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        if a.status == 202 {
            self.show(&json!({"run_id": run_id, "status": "pending"}), || {
                format!("accepted: run {run_id}\nfollow it with `colorfaas logs {run_id} --wait`")
            });
            return Ok(exit::OK);
        }
        let num = |h: &str| a.header(h).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let cold = a.header("x-cold-start") == Some("true");
        let (duration, billed) = (num("x-duration-ms"), num("x-billed-micros"));
        if self.json {
            println!(
                "{}",
                json!({"run_id": run_id, "status": "succeeded", "result": a.body,
                       "duration_ms": duration, "cold_start": cold, "billed_micros": billed})
            );
        } else {
            println!("{}", output::pretty(&a.body));
            eprintln!(
                "run {run_id} · {duration} ms · {} · billed {}",
                if cold { "cold start" } else { "warm" },
                output::money(billed)
            );
        }
        Ok(exit::OK)
    }

    pub(super) async fn runs(&self, name: &str, status: Option<String>, limit: u32) -> Result<i32> {
        let (api, _) = self.session()?;
        let subject = Subject::Function(name.to_owned());
        api.portal(Method::GET, &format!("/functions/{name}"), None, &subject)
            .await?;
        let req = api
            .portal_req(Method::GET, "/runs")
            .query(&[("function", name.to_owned()), ("limit", limit.to_string())]);
        let req = match &status {
            Some(s) => req.query(&[("status", s)]),
            None => req,
        };
        let runs = api.call(Server::Portal, req, &subject).await?.body;
        let list = runs.as_array().cloned().unwrap_or_default();
        self.show(&runs, || {
            if list.is_empty() {
                return format!("no runs of {name} yet: `colorfaas invoke {name}` starts one");
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    vec![
                        cell(r, "run_id"),
                        cell(r, "status"),
                        cell(r, "version"),
                        format!("{} ms", int(r, "duration_ms")),
                        if output::boolean(r, "cold_start") {
                            "cold"
                        } else {
                            "warm"
                        }
                        .into(),
                        output::units(int(r, "billed_micros")),
                        short_time(r, "created_at"),
                    ]
                })
                .collect();
            table(
                &[
                    "RUN ID",
                    "STATUS",
                    "VERSION",
                    "DURATION",
                    "START",
                    "BILLED",
                    "CREATED (UTC)",
                ],
                &rows,
            )
        });
        Ok(exit::OK)
    }

    pub(super) async fn logs(&self, run_id: &str, wait: bool, wait_for: Duration) -> Result<i32> {
        let (api, _) = self.session()?;
        let subject = Subject::Run(run_id.to_owned());
        let t0 = Instant::now();
        let run = loop {
            let r = api
                .portal(Method::GET, &format!("/runs/{run_id}"), None, &subject)
                .await?;
            let status = r.get("status").and_then(Value::as_str).unwrap_or("");
            let done = RunStatus::parse(status).is_some_and(RunStatus::is_final);
            if done || !wait {
                break r;
            }
            if t0.elapsed() > wait_for {
                return Err(CliError::new(
                    exit::BUSY,
                    format!(
                        "run {run_id} is still {status} after {} s",
                        wait_for.as_secs()
                    ),
                )
                .hint("wait longer with --wait-secs, or look again later"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let status = cell(&run, "status");
        self.show(&run, || {
            let mut s = format!(
                "run {} · {} v{} · {} · {} ms · {} · billed {}\n",
                cell(&run, "run_id"),
                cell(&run, "function"),
                cell(&run, "version"),
                status,
                int(&run, "duration_ms"),
                if output::boolean(&run, "cold_start") {
                    "cold start"
                } else {
                    "warm"
                },
                output::money(int(&run, "billed_micros")),
            );
            let logs = run.get("logs").and_then(Value::as_str).unwrap_or("");
            if logs.is_empty() {
                s.push_str("--- no logs ---\n");
            } else {
                s.push_str("--- logs ---\n");
                s.push_str(logs);
                if !logs.ends_with('\n') {
                    s.push('\n');
                }
            }
            if let Some(e) = run.get("error").filter(|e| !e.is_null()) {
                s.push_str(&format!(
                    "--- error ---\n{}: {}\n",
                    cell(e, "code"),
                    cell(e, "message")
                ));
            }
            if let Some(r) = run.get("result") {
                s.push_str(&format!("--- result ---\n{}\n", output::pretty(r)));
            }
            s
        });
        Ok(match RunStatus::parse(&status) {
            Some(RunStatus::Failed | RunStatus::TimedOut) => exit::FUNCTION_FAILED,
            _ => exit::OK,
        })
    }
}
