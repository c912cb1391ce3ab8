//! Account commands: `login`, `logout`, `account`, `topup`.

use std::io::{IsTerminal as _, Read as _};

use reqwest::Method;
use serde_json::{json, Value};

use super::input::prompt;
use super::Ctx;
use crate::api::{Api, Server, Subject};
use crate::config::{self, Credentials};
use crate::error::{exit, CliError, Result};
use crate::output::{self, cell, int};

impl Ctx {
    pub(super) async fn login(&self, email: Option<String>, password_stdin: bool) -> Result<i32> {
        let dir = self.config_dir()?;
        let old = config::load(&dir).ok().flatten();
        let (portal, gateway) = self.addresses(None);
        let email = match email {
            Some(e) => e,
            None if password_stdin => {
                return Err(CliError::usage("--password-stdin needs --email"))
            }
            None => prompt("email: ")?,
        };
        let password = if password_stdin {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| {
                CliError::local(format!("cannot read the password from stdin: {e}"))
            })?;
            s.trim_end_matches(['\n', '\r']).to_owned()
        } else {
            read_password()?
        };
        let mut api = Api::new(portal.clone(), gateway.clone());
        let s = api
            .portal(
                Method::POST,
                "/sessions",
                Some(&json!({"email": email, "password": password})),
                &Subject::Login,
            )
            .await?;
        let token = str_field(&s, "token")?;
        let user_id = s
            .get("user_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        api.token = Some(token.clone());
        // A key left by an earlier login on this computer is replaced, not piled up.
        if let Some(old) = old.filter(|o| o.portal == portal && o.email == email) {
            let _ = api
                .send(
                    Server::Portal,
                    api.portal_req(Method::DELETE, &format!("/keys/{}", old.key_id)),
                )
                .await;
        }
        let label = format!("colorfaas-cli@{}", hostname());
        let k = create_key(&api, &label).await?;
        let creds = Credentials {
            portal: portal.clone(),
            gateway: gateway.clone(),
            email: email.clone(),
            user_id: user_id.clone(),
            token,
            key_id: str_field(&k, "key_id")?,
            api_key: str_field(&k, "key")?,
        };
        config::save(&dir, &creds)?;
        let file = config::config_file(&dir);
        self.show(
            &json!({"portal": portal, "gateway": gateway, "email": email, "user_id": user_id,
                    "key_id": creds.key_id, "key_label": label, "config": file}),
            || {
                format!(
                    "logged in to {portal} as {email}\nAPI key {} ({label}) for the gateway {gateway}\ncredentials stored in {} (owner-only)",
                    creds.key_id,
                    file.display()
                )
            },
        );
        Ok(exit::OK)
    }

    pub(super) async fn logout(&self) -> Result<i32> {
        let dir = self.config_dir()?;
        let Ok((api, creds)) = self.session() else {
            self.show(&json!({"logged_out": false}), || {
                "not logged in; nothing to do".into()
            });
            return Ok(exit::OK);
        };
        let file = config::config_file(&dir);
        let unreachable = |e: CliError| {
            if e.code == exit::UNREACHABLE {
                e.hint(format!(
                    "start the portal and run `colorfaas logout` again, or delete {} to forget the credentials without revoking the key",
                    file.display()
                ))
            } else {
                e
            }
        };
        let mut notes = Vec::new();
        match api
            .send(
                Server::Portal,
                api.portal_req(Method::DELETE, &format!("/keys/{}", creds.key_id)),
            )
            .await
            .map_err(unreachable)?
        {
            Ok(_) => notes.push(format!("revoked API key {}", creds.key_id)),
            Err(f) if f.status == 404 => {
                notes.push(format!("API key {} was already revoked", creds.key_id))
            }
            Err(f) => notes.push(format!(
                "could not revoke API key {} ({}); revoke it in the portal",
                creds.key_id, f.message
            )),
        }
        match api
            .send(Server::Portal, api.portal_req(Method::DELETE, "/sessions"))
            .await
            .map_err(unreachable)?
        {
            Ok(_) => notes.push("ended the session".into()),
            Err(_) => notes.push("the session had already ended".into()),
        }
        config::remove(&dir)?;
        notes.push(format!("deleted {}", file.display()));
        self.show(&json!({"logged_out": true, "notes": notes}), || {
            format!("logged out of {}\n  {}", creds.portal, notes.join("\n  "))
        });
        Ok(exit::OK)
    }

    pub(super) async fn account(&self) -> Result<i32> {
        let (api, _) = self.session()?;
        let a = api
            .portal(Method::GET, "/account", None, &Subject::Other)
            .await?;
        self.show(&a, || {
            format!(
                "{} <{}>\nuser {}\nbalance {}",
                cell(&a, "name"),
                cell(&a, "email"),
                cell(&a, "user_id"),
                output::money(int(&a, "balance_micros"))
            )
        });
        Ok(exit::OK)
    }

    pub(super) async fn topup(
        &self,
        amount: &str,
        card: String,
        expiry: String,
        cvc: String,
    ) -> Result<i32> {
        let micros = output::parse_units(amount)
            .filter(|m| *m > 0)
            .ok_or_else(|| {
                CliError::usage(format!("--amount {amount:?} is not a positive amount"))
                    .hint("write it in units with up to 6 decimals, e.g. 10 or 2.5")
            })?;
        let (api, _) = self.session()?;
        let r = api
            .portal(
                Method::POST,
                "/account/topups",
                Some(&json!({"amount_micros": micros, "card_number": card,
                             "card_expiry": expiry, "card_cvc": cvc})),
                &Subject::Other,
            )
            .await?;
        self.show(&r, || {
            format!(
                "added {}; balance {}",
                output::units(micros),
                output::money(int(&r, "balance_micros"))
            )
        });
        Ok(exit::OK)
    }
}

/// Creates an API key labelled `label`: `{key_id, key}` (the secret is in the answer only).
pub(super) async fn create_key(api: &Api, label: &str) -> Result<Value> {
    api.portal(
        Method::POST,
        "/keys",
        Some(&json!({"label": label})),
        &Subject::Other,
    )
    .await
}

fn str_field(v: &Value, key: &str) -> Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            CliError::new(
                exit::SERVER,
                format!("the portal's answer has no {key:?}: {v}"),
            )
        })
}

/// Reads a password on the terminal without echo.
fn read_password() -> Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage("no password: standard input is not a terminal")
            .hint("pipe it with `--password-stdin`, e.g. `printf '%s' \"$PW\" | colorfaas login --email you@example.com --password-stdin`"));
    }
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let hidden = stty("-echo");
    let answer = prompt("password: ");
    if hidden {
        stty("echo");
        eprintln!();
    }
    answer
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
