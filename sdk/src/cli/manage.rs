//! Managing commands: `ls`, `rm`, `keys`, `bills`, `pay`.

use std::io::IsTerminal as _;

use reqwest::Method;
use schemas::BillStatus;
use serde_json::{json, Value};

use super::account::create_key;
use super::input::prompt;
use super::{Ctx, KeysCmd};
use crate::api::{Server, Subject};
use crate::error::{exit, CliError, Result};
use crate::output::{self, cell, int, short_time, table};

impl Ctx {
    pub(super) async fn ls(&self, filter: Option<String>) -> Result<i32> {
        let (api, _) = self.session()?;
        let mut req = api.portal_req(Method::GET, "/functions");
        if let Some(q) = &filter {
            req = req.query(&[("q", q)]);
        }
        let fs = api.call(Server::Portal, req, &Subject::Other).await?.body;
        let list = fs.as_array().cloned().unwrap_or_default();
        self.show(&fs, || {
            if list.is_empty() {
                return "no functions yet: `colorfaas init <name> --runtime python3`, then `colorfaas deploy`".into();
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|f| {
                    let st = f.get("status").cloned().unwrap_or(Value::Null);
                    vec![
                        cell(f, "name"),
                        cell(f, "runtime"),
                        cell(f, "version"),
                        cell(f, "mode"),
                        format!(
                            "{}/{}/{}",
                            int(&st, "succeeded"),
                            int(&st, "failed"),
                            int(&st, "timed_out")
                        ),
                        format!("{}", int(&st, "pending") + int(&st, "running")),
                        short_time(&st, "last_run_at"),
                        short_time(f, "updated_at"),
                    ]
                })
                .collect();
            table(
                &["NAME", "RUNTIME", "VERSION", "MODE", "OK/FAILED/TIMED OUT", "ACTIVE", "LAST RUN (UTC)", "UPDATED (UTC)"],
                &rows,
            )
        });
        Ok(exit::OK)
    }

    pub(super) async fn rm(&self, name: &str, yes: bool) -> Result<i32> {
        let (api, _) = self.session()?;
        if !yes {
            if !std::io::stdin().is_terminal() {
                return Err(
                    CliError::usage(format!("not deleting {name} without confirmation"))
                        .hint(format!("run `colorfaas rm {name} --yes`")),
                );
            }
            let answer = prompt(&format!("delete function {name} and its code? [y/N] "))?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                eprintln!("not deleted");
                return Ok(exit::USAGE);
            }
        }
        api.portal(
            Method::DELETE,
            &format!("/functions/{name}"),
            None,
            &Subject::Function(name.to_owned()),
        )
        .await?;
        self.show(&json!({"deleted": name}), || format!("deleted {name}"));
        Ok(exit::OK)
    }

    pub(super) async fn keys(&self, cmd: KeysCmd) -> Result<i32> {
        let (api, creds) = self.session()?;
        match cmd {
            KeysCmd::Create { label } => {
                let k = create_key(&api, &label).await?;
                self.show(&k, || {
                    format!(
                        "created API key {} ({label})\n{}\nthe secret is shown only now: store it somewhere safe",
                        cell(&k, "key_id"),
                        cell(&k, "key")
                    )
                });
            }
            KeysCmd::Ls => {
                let ks = api
                    .portal(Method::GET, "/keys", None, &Subject::Other)
                    .await?;
                let list = ks.as_array().cloned().unwrap_or_default();
                self.show(&ks, || {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|k| {
                            let id = cell(k, "key_id");
                            let mine = if id == creds.key_id { "(this CLI)" } else { "" };
                            vec![
                                id,
                                cell(k, "label"),
                                short_time(k, "created_at"),
                                mine.into(),
                            ]
                        })
                        .collect();
                    table(&["KEY ID", "LABEL", "CREATED (UTC)", ""], &rows)
                });
            }
            KeysCmd::Revoke { key_id } => {
                api.portal(
                    Method::DELETE,
                    &format!("/keys/{key_id}"),
                    None,
                    &Subject::Key(key_id.clone()),
                )
                .await?;
                self.show(&json!({"revoked": key_id}), || {
                    let mut s = format!("revoked API key {key_id}");
                    if key_id == creds.key_id {
                        s.push_str(
                            "\nthat was this CLI's key: run `colorfaas login` to invoke again",
                        );
                    }
                    s
                });
            }
        }
        Ok(exit::OK)
    }

    pub(super) async fn bills(&self) -> Result<i32> {
        let (api, _) = self.session()?;
        let bs = api
            .portal(Method::GET, "/bills", None, &Subject::Other)
            .await?;
        let list = bs.as_array().cloned().unwrap_or_default();
        self.show(&bs, || {
            if list.is_empty() {
                return "no bills yet".into();
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|b| {
                    vec![
                        cell(b, "bill_id"),
                        format!(
                            "{} – {}",
                            short_time(b, "period_start"),
                            short_time(b, "period_end")
                        ),
                        output::units(int(b, "amount_micros")),
                        cell(b, "status"),
                        b.get("items")
                            .and_then(Value::as_array)
                            .map_or(0, Vec::len)
                            .to_string(),
                    ]
                })
                .collect();
            let mut t = table(
                &["BILL ID", "PERIOD (UTC)", "AMOUNT", "STATUS", "RUNS"],
                &rows,
            );
            if list
                .iter()
                .any(|b| cell(b, "status") == BillStatus::Unpaid.as_str())
            {
                t.push_str("pay one with `colorfaas pay <bill_id>`\n");
            }
            t
        });
        Ok(exit::OK)
    }

    pub(super) async fn pay(&self, bill_id: &str) -> Result<i32> {
        let (api, _) = self.session()?;
        let b = api
            .portal(
                Method::POST,
                &format!("/bills/{bill_id}/payments"),
                Some(&json!({})),
                &Subject::Bill(bill_id.to_owned()),
            )
            .await?;
        self.show(&b, || {
            format!(
                "paid bill {bill_id}: {} ({})",
                output::money(int(&b, "amount_micros")),
                cell(&b, "status")
            )
        });
        Ok(exit::OK)
    }
}
