//! The `colorfaas` command line: argument parsing (clap) and one function per command.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::api::{Api, Server, Subject};
use crate::config::{self, Credentials};
use crate::error::{exit, CliError, Result};
use crate::manifest::{self, Manifest};
use crate::output::{self, cell, int, short_time, table};
use crate::{local, package, templates};

const EXIT_CODES: &str = "Exit codes: 0 ok · 1 the function failed or timed out · 2 bad usage, manifest or request · \
3 not logged in / credentials refused · 4 not found · 5 portal or gateway unreachable · 6 payment required · \
7 conflict · 8 busy (rate limited, no capacity) · 9 local problem (Docker, files) · 10 server error.\n\
Environment: COLORFAAS_PORTAL (default http://127.0.0.1:8080), COLORFAAS_GATEWAY (default http://127.0.0.1:8081), \
COLORFAAS_CONFIG_DIR (default $XDG_CONFIG_HOME/colorfaas or ~/.config/colorfaas).";

/// Develop, run, deploy and invoke Color FaaS functions.
#[derive(Debug, Parser)]
#[command(name = "colorfaas", version, after_help = EXIT_CODES)]
struct Cli {
    /// Print the API's JSON instead of text (errors too: {"error": {...}}).
    #[arg(long, global = true)]
    json: bool,
    /// The portal's address [env: COLORFAAS_PORTAL; default: as logged in, else http://127.0.0.1:8080].
    #[arg(long, global = true, value_name = "URL")]
    portal: Option<String>,
    /// The gateway's address [env: COLORFAAS_GATEWAY; default: as logged in, else http://127.0.0.1:8081].
    #[arg(long, global = true, value_name = "URL")]
    gateway: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Log in to the portal and store a session and a new API key for this computer.
    Login {
        /// Your account's email (asked when missing).
        #[arg(long)]
        email: Option<String>,
        /// Read the password from standard input (else it is asked on the terminal).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Revoke this computer's API key, end the session and forget the credentials.
    Logout,
    /// Show the account: email, name, balance.
    Account,
    /// Add money to the balance with a card (the built-in test provider accepts any Luhn-valid card).
    Topup {
        /// Amount in units, e.g. 10 or 2.5 (exact to the micro).
        #[arg(long)]
        amount: String,
        #[arg(long, value_name = "NUMBER")]
        card: String,
        /// Expiry as MM/YY.
        #[arg(long)]
        expiry: String,
        #[arg(long)]
        cvc: String,
    },
    /// Create a function folder: handler, manifest, sample event, ignore file and a local test.
    Init {
        /// The function's name: 1-50 of a-z, 0-9 and -, starting with a letter or digit.
        name: String,
        #[arg(long, short, value_parser = ["python3", "node", "exec"])]
        runtime: String,
        /// Where to create the folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run the function once in its runtime image, locked down like on the platform, without the platform.
    RunLocal {
        /// The event JSON file [default: event.json when present, else {}].
        #[arg(long)]
        event: Option<PathBuf>,
        /// The event as JSON text, or @file, or @- for standard input.
        #[arg(long, short, conflicts_with = "event")]
        data: Option<String>,
        /// The function folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Package the function folder and create or update the function; prints its new version.
    Deploy {
        /// The function folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Invoke a function through the gateway with this computer's API key.
    Invoke {
        name: String,
        /// The arguments as JSON text, or @file, or @- for standard input [default: {}].
        #[arg(long, short)]
        data: Option<String>,
        /// Queue the run and return its id at once (X-Invocation-Type: async).
        #[arg(long = "async", conflicts_with = "sync")]
        asynchronous: bool,
        /// Wait for the result even when the function's mode is async.
        #[arg(long)]
        sync: bool,
        /// With --async: POST the finished run to this URL.
        #[arg(long, requires = "asynchronous")]
        callback_url: Option<String>,
    },
    /// List a function's runs, newest first.
    Runs {
        name: String,
        /// Only runs with this status.
        #[arg(long, value_parser = ["pending", "running", "succeeded", "failed", "timed_out"])]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show a run: status, logs, result or error.
    Logs {
        run_id: String,
        /// Wait until the run has finished.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
    },
    /// List your functions.
    Ls {
        /// Only names containing this.
        filter: Option<String>,
    },
    /// Delete a function.
    Rm {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// List your bills.
    Bills,
    /// Pay a bill from the balance.
    Pay { bill_id: String },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Create an API key (its secret is shown once).
    Create {
        #[arg(long, default_value = "colorfaas-cli")]
        label: String,
    },
    /// List API keys.
    Ls,
    /// Revoke an API key.
    Revoke { key_id: String },
}

/// Runs the CLI with `args` (program name first) and environment `env`; returns the exit code.
pub fn run(args: Vec<OsString>, env: HashMap<String, String>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let json = cli.json;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return exit::LOCAL;
        }
    };
    let ctx = Ctx {
        env,
        json,
        portal: cli.portal,
        gateway: cli.gateway,
    };
    match rt.block_on(ctx.dispatch(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            if json {
                println!("{}", e.to_json());
            }
            eprintln!("error: {e}");
            e.code
        }
    }
}

struct Ctx {
    env: HashMap<String, String>,
    json: bool,
    portal: Option<String>,
    gateway: Option<String>,
}

impl Ctx {
    async fn dispatch(&self, cmd: Cmd) -> Result<i32> {
        match cmd {
            Cmd::Login {
                email,
                password_stdin,
            } => self.login(email, password_stdin).await,
            Cmd::Logout => self.logout().await,
            Cmd::Account => self.account().await,
            Cmd::Topup {
                amount,
                card,
                expiry,
                cvc,
            } => self.topup(&amount, card, expiry, cvc).await,
            Cmd::Init { name, runtime, dir } => self.init(&name, &runtime, &dir),
            Cmd::RunLocal { event, data, dir } => self.run_local(event, data, &dir).await,
            Cmd::Deploy { dir } => self.deploy(&dir).await,
            Cmd::Invoke {
                name,
                data,
                asynchronous,
                sync,
                callback_url,
            } => {
                self.invoke(&name, data, asynchronous, sync, callback_url)
                    .await
            }
            Cmd::Runs {
                name,
                status,
                limit,
            } => self.runs(&name, status, limit).await,
            Cmd::Logs {
                run_id,
                wait,
                wait_secs,
            } => {
                self.logs(&run_id, wait, Duration::from_secs(wait_secs))
                    .await
            }
            Cmd::Ls { filter } => self.ls(filter).await,
            Cmd::Rm { name, yes } => self.rm(&name, yes).await,
            Cmd::Keys(k) => self.keys(k).await,
            Cmd::Bills => self.bills().await,
            Cmd::Pay { bill_id } => self.pay(&bill_id).await,
        }
    }

    fn config_dir(&self) -> Result<PathBuf> {
        config::config_dir(&self.env)
    }

    fn addresses(&self, stored: Option<&Credentials>) -> (String, String) {
        (
            config::pick(
                self.portal.as_deref(),
                &self.env,
                config::ENV_PORTAL,
                stored.map(|c| c.portal.as_str()),
                config::DEFAULT_PORTAL,
            ),
            config::pick(
                self.gateway.as_deref(),
                &self.env,
                config::ENV_GATEWAY,
                stored.map(|c| c.gateway.as_str()),
                config::DEFAULT_GATEWAY,
            ),
        )
    }

    /// The API with the stored credentials, or "not logged in".
    fn session(&self) -> Result<(Api, Credentials)> {
        let dir = self.config_dir()?;
        let creds = config::load(&dir)?.ok_or_else(CliError::not_logged_in)?;
        let (portal, gateway) = self.addresses(Some(&creds));
        let mut api = Api::new(portal, gateway);
        api.token = Some(creds.token.clone());
        api.api_key = Some(creds.api_key.clone());
        Ok((api, creds))
    }

    /// Prints `v` as JSON in `--json` mode, else `human()`.
    fn show(&self, v: &Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{v}");
        } else {
            let text = human();
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
    }

    // ---- account ----------------------------------------------------------------------

    async fn login(&self, email: Option<String>, password_stdin: bool) -> Result<i32> {
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
        let k = api
            .portal(
                Method::POST,
                "/keys",
                Some(&json!({"label": label})),
                &Subject::Other,
            )
            .await?;
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

    async fn logout(&self) -> Result<i32> {
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

    async fn account(&self) -> Result<i32> {
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

    async fn topup(&self, amount: &str, card: String, expiry: String, cvc: String) -> Result<i32> {
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

    // ---- developing ---------------------------------------------------------------------

    fn init(&self, name: &str, runtime: &str, parent: &Path) -> Result<i32> {
        let (dir, files) = templates::init(parent, name, runtime)?;
        self.show(
            &json!({"name": name, "runtime": runtime, "files": files,
                    "dir": dir.canonicalize().unwrap_or_else(|_| dir.clone())}),
            || {
                format!(
                    "created {}/ ({runtime}): {}\n\nnext:\n  cd {}\n  {}    # the local test, with your own {runtime}\n  colorfaas run-local    # in the runtime image, as the platform runs it\n  colorfaas deploy\n  colorfaas invoke {name} --data @event.json\n",
                    dir.display(),
                    files.join(" "),
                    dir.display(),
                    templates::local_test_command(runtime),
                )
            },
        );
        Ok(exit::OK)
    }

    /// Folders never packed: the CLI's config folder.
    fn exclusions(&self) -> Vec<PathBuf> {
        self.config_dir().into_iter().collect()
    }

    async fn run_local(
        &self,
        event: Option<PathBuf>,
        data: Option<String>,
        dir: &Path,
    ) -> Result<i32> {
        let m = Manifest::load(dir)?;
        let event = match (event, data) {
            (_, Some(d)) => parse_data(&d)?,
            (Some(f), None) => read_json_file(&f)?,
            (None, None) => {
                let f = dir.join("event.json");
                if f.exists() {
                    read_json_file(&f)?
                } else {
                    json!({})
                }
            }
        };
        let r = local::run(dir, &m, &event, &self.exclusions()).await?;
        if self.json {
            println!("{}", r.to_json());
        } else {
            if !r.logs.is_empty() {
                eprintln!("--- logs ---");
                eprint!("{}", r.logs);
                if !r.logs.ends_with('\n') {
                    eprintln!();
                }
                eprintln!("---");
            }
            if let Some(res) = &r.result {
                println!("{}", output::pretty(res));
            }
            if let Some((code, msg)) = &r.error {
                eprintln!("error ({code}): {msg}");
            }
            eprintln!(
                "{} in {} ms (container start {} ms, {} image, no network)",
                r.status.replace('_', " "),
                r.duration_ms,
                r.start_ms,
                m.runtime
            );
        }
        Ok(local::exit_code(&r))
    }

    async fn deploy(&self, dir: &Path) -> Result<i32> {
        let m = Manifest::load(dir)?;
        let (api, _) = self.session()?;
        let tty = std::io::stderr().is_terminal() && !self.json;
        let mut progress = Progress::new(tty, "packing");
        let (listing, pkg) =
            package::package_dir(dir, &m, &self.exclusions(), &mut |n| progress.update(n))?;
        progress.done();
        for l in &listing.skipped_links {
            eprintln!("note: left out {l}: packages cannot hold symbolic links");
        }
        let spec = m.spec(
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pkg.bytes()),
            pkg.filename(),
        );
        let body = serde_json::to_vec(&spec).expect("a spec serializes");
        let subject = Subject::Function(m.name.clone());
        let path = format!("/functions/{}", m.name);
        // Update when the function exists (one upload), else create; a create that loses a
        // race to another deploy of the same name (409 name_taken) becomes an update.
        let exists = match api
            .send(Server::Portal, api.portal_req(Method::GET, &path))
            .await?
        {
            Ok(_) => true,
            Err(f) if f.status == 404 => false,
            Err(f) => return Err(crate::api::failure_error(&f, &subject)),
        };
        let put = |body: Vec<u8>| upload(api.portal_req(Method::PUT, &path), body, tty);
        let (f, verb) = if exists {
            (
                api.call(Server::Portal, put(body), &subject).await?.body,
                "updated",
            )
        } else {
            let post = upload(
                api.portal_req(Method::POST, "/functions"),
                body.clone(),
                tty,
            );
            match api.send(Server::Portal, post).await? {
                Ok(a) => (a.body, "created"),
                Err(f) if f.status == 409 && f.code == "name_taken" => (
                    api.call(Server::Portal, put(body), &subject).await?.body,
                    "updated",
                ),
                Err(f) => return Err(crate::api::failure_error(&f, &subject)),
            }
        };
        self.show(&f, || {
            format!(
                "{verb} {} version {} ({}, {} file{})",
                m.name,
                cell(&f, "version"),
                pkg.describe(),
                listing.files.len(),
                if listing.files.len() == 1 { "" } else { "s" }
            )
        });
        Ok(exit::OK)
    }

    // ---- running --------------------------------------------------------------------------

    async fn invoke(
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
            req = req.header("x-invocation-type", "async");
        } else if sync {
            req = req.header("x-invocation-type", "sync");
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

    async fn runs(&self, name: &str, status: Option<String>, limit: u32) -> Result<i32> {
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

    async fn logs(&self, run_id: &str, wait: bool, wait_for: Duration) -> Result<i32> {
        let (api, _) = self.session()?;
        let subject = Subject::Run(run_id.to_owned());
        let t0 = Instant::now();
        let run = loop {
            let r = api
                .portal(Method::GET, &format!("/runs/{run_id}"), None, &subject)
                .await?;
            let status = r.get("status").and_then(Value::as_str).unwrap_or("");
            let done = matches!(status, "succeeded" | "failed" | "timed_out");
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
        Ok(match status.as_str() {
            "failed" | "timed_out" => exit::FUNCTION_FAILED,
            _ => exit::OK,
        })
    }

    // ---- managing -------------------------------------------------------------------------

    async fn ls(&self, filter: Option<String>) -> Result<i32> {
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

    async fn rm(&self, name: &str, yes: bool) -> Result<i32> {
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

    async fn keys(&self, cmd: KeysCmd) -> Result<i32> {
        let (api, creds) = self.session()?;
        match cmd {
            KeysCmd::Create { label } => {
                let k = api
                    .portal(
                        Method::POST,
                        "/keys",
                        Some(&json!({"label": label})),
                        &Subject::Other,
                    )
                    .await?;
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

    async fn bills(&self) -> Result<i32> {
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
            if list.iter().any(|b| cell(b, "status") == "unpaid") {
                t.push_str("pay one with `colorfaas pay <bill_id>`\n");
            }
            t
        });
        Ok(exit::OK)
    }

    async fn pay(&self, bill_id: &str) -> Result<i32> {
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

/// `--data`: JSON text, `@file`, or `@-` for standard input.
fn parse_data(d: &str) -> Result<Value> {
    match d.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::local(format!("cannot read standard input: {e}")))?;
            serde_json::from_str(&s)
                .map_err(|e| CliError::usage(format!("standard input is not valid JSON: {e}")))
        }
        Some(file) => read_json_file(Path::new(file)),
        None => serde_json::from_str(d).map_err(|e| {
            CliError::usage(format!("--data is not valid JSON: {e}"))
                .hint("quote it for the shell, e.g. --data '{\"name\": \"Ada\"}', or pass a file with --data @event.json")
        }),
    }
}

fn read_json_file(f: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(f)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", f.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::usage(format!("{} is not valid JSON: {e}", f.display())))
}

/// Asks a question on the terminal (or reads a line from piped stdin).
fn prompt(question: &str) -> Result<String> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::local(format!("cannot read standard input: {e}")))?;
    Ok(line.trim().to_owned())
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

/// Bytes packed or uploaded, on a terminal only, for packages over 1 MiB.
struct Progress {
    on: bool,
    what: &'static str,
    last: Instant,
    shown: bool,
}

impl Progress {
    const MIN_BYTES: u64 = 1024 * 1024;

    fn new(on: bool, what: &'static str) -> Progress {
        Progress {
            on,
            what,
            last: Instant::now(),
            shown: false,
        }
    }

    fn update(&mut self, n: u64) {
        if !self.on || n < Self::MIN_BYTES || self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        eprint!("\r{}: {}   ", self.what, package::human_bytes(n));
        let _ = std::io::stderr().flush();
    }

    fn done(&mut self) {
        if self.shown {
            eprintln!("\r{}: done{}", self.what, " ".repeat(16));
        }
    }
}

/// The request with `body`, streamed with a progress line when `tty` and the body is large.
fn upload(req: reqwest::RequestBuilder, body: Vec<u8>, tty: bool) -> reqwest::RequestBuilder {
    let req = req.header("content-type", "application/json");
    let total = body.len() as u64;
    if !tty || total < Progress::MIN_BYTES {
        return req.body(body);
    }
    let body = bytes::Bytes::from(body);
    let chunk = 256 * 1024;
    let chunks: Vec<bytes::Bytes> = (0..body.len())
        .step_by(chunk)
        .map(|i| body.slice(i..(i + chunk).min(body.len())))
        .collect();
    let mut sent = 0u64;
    let stream = futures::stream::iter(chunks.into_iter().map(move |c| {
        sent += c.len() as u64;
        eprint!(
            "\ruploading: {} of {}   ",
            package::human_bytes(sent),
            package::human_bytes(total)
        );
        if sent == total {
            eprintln!();
        }
        Ok::<_, std::io::Error>(c)
    }));
    req.header("content-length", total)
        .body(reqwest::Body::wrap_stream(stream))
}
