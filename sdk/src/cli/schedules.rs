//! `colorfaas schedules ls|add|pause|resume|rm`: a function's timer triggers (portal
//! `/functions/{name}/schedules` and `/schedules/{id}`).

use reqwest::Method;
use serde_json::{json, Value};

use super::input::parse_data;
use super::{Ctx, SchedulesCmd};
use crate::api::Subject;
use crate::error::{exit, Result};
use crate::output::{cell, table};

fn row(s: &Value) -> Vec<String> {
    vec![
        cell(s, "schedule_id"),
        cell(s, "expression"),
        if s["enabled"].as_bool() == Some(true) {
            "active".to_owned()
        } else {
            "paused".to_owned()
        },
        s["next_run_at"].as_str().unwrap_or("-").to_owned(),
        s["args"].to_string(),
    ]
}

const HEAD: [&str; 5] = ["SCHEDULE", "EXPRESSION", "STATE", "NEXT RUN (UTC)", "ARGS"];

impl Ctx {
    pub(super) async fn schedules(&self, cmd: SchedulesCmd) -> Result<i32> {
        let (api, _) = self.session()?;
        match cmd {
            SchedulesCmd::Ls { name } => {
                let v = api
                    .portal(
                        Method::GET,
                        &format!("/functions/{name}/schedules"),
                        None,
                        &Subject::Function(name.clone()),
                    )
                    .await?;
                let list = v.as_array().cloned().unwrap_or_default();
                self.show(&v, || {
                    if list.is_empty() {
                        return format!(
                            "no schedules: `colorfaas schedules add {name} 'rate(5 minutes)'`"
                        );
                    }
                    table(&HEAD, &list.iter().map(row).collect::<Vec<_>>())
                });
            }
            SchedulesCmd::Add {
                name,
                expression,
                data,
                paused,
            } => {
                let args = match data {
                    Some(d) => parse_data(&d)?,
                    None => json!({}),
                };
                let body = json!({"expression": expression, "args": args, "enabled": !paused});
                let v = api
                    .portal(
                        Method::POST,
                        &format!("/functions/{name}/schedules"),
                        Some(&body),
                        &Subject::Function(name.clone()),
                    )
                    .await?;
                self.show(&v, || table(&HEAD, &[row(&v)]));
            }
            SchedulesCmd::Pause { schedule_id } => {
                self.set_enabled(&api, &schedule_id, false).await?
            }
            SchedulesCmd::Resume { schedule_id } => {
                self.set_enabled(&api, &schedule_id, true).await?
            }
            SchedulesCmd::Rm { schedule_id } => {
                api.portal(
                    Method::DELETE,
                    &format!("/schedules/{schedule_id}"),
                    None,
                    &Subject::Other,
                )
                .await?;
                self.show(&json!({"deleted": schedule_id}), || {
                    format!("deleted schedule {schedule_id}")
                });
            }
        }
        Ok(exit::OK)
    }

    async fn set_enabled(&self, api: &crate::api::Api, id: &str, enabled: bool) -> Result<()> {
        let v = api
            .portal(
                Method::PATCH,
                &format!("/schedules/{id}"),
                Some(&json!({ "enabled": enabled })),
                &Subject::Other,
            )
            .await?;
        self.show(&v, || table(&HEAD, &[row(&v)]));
        Ok(())
    }
}
