//! Dead letters of async runs (`colorfaas dlq ls | redrive <run_id> | rm <run_id>`): runs whose
//! last attempt failed, or whose event expired before it started.

use reqwest::Method;
use serde_json::{json, Value};

use super::Ctx;
use crate::api::Subject;
use crate::error::{exit, Result};
use crate::output::{cell, int, short_time, table};

impl Ctx {
    pub(super) async fn dlq_ls(&self) -> Result<i32> {
        let (api, _) = self.session()?;
        let ds = api
            .portal(Method::GET, "/dead-letters", None, &Subject::Other)
            .await?;
        let list = ds.as_array().cloned().unwrap_or_default();
        self.show(&ds, || {
            if list.is_empty() {
                return "no dead letters".into();
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|d| {
                    vec![
                        cell(d, "run_id"),
                        cell(d, "function"),
                        short_time(d, "failed_at"),
                        int(d, "attempts").to_string(),
                        d.pointer("/error/code")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    ]
                })
                .collect();
            table(
                &["RUN ID", "FUNCTION", "FAILED (UTC)", "ATTEMPTS", "ERROR"],
                &rows,
            )
        });
        Ok(exit::OK)
    }

    pub(super) async fn dlq_redrive(&self, run_id: &str) -> Result<i32> {
        let (api, _) = self.session()?;
        let a = api
            .portal(
                Method::POST,
                &format!("/dead-letters/{run_id}/redrive"),
                Some(&json!({})),
                &Subject::Run(run_id.to_owned()),
            )
            .await?;
        let new_id = cell(&a, "run_id");
        self.show(&a, || {
            format!("redriven as run {new_id}\nfollow it with `colorfaas logs {new_id} --wait`")
        });
        Ok(exit::OK)
    }

    pub(super) async fn dlq_rm(&self, run_id: &str) -> Result<i32> {
        let (api, _) = self.session()?;
        api.portal(
            Method::DELETE,
            &format!("/dead-letters/{run_id}"),
            None,
            &Subject::Run(run_id.to_owned()),
        )
        .await?;
        self.show(&json!({"run_id": run_id, "deleted": true}), || {
            format!("deleted the dead letter of run {run_id}")
        });
        Ok(exit::OK)
    }
}
