//! The `colorfaas` command line: argument parsing (clap), the shared context of every command, and
//! one file per command group: `account` (login, logout, account, topup), `develop` (init,
//! run-local, deploy), `running` (invoke, runs, logs), `manage` (ls, rm, keys, bills, pay),
//! `schedules` (schedules ls|add|pause|resume|rm);
//! `input` reads what commands take from files, standard input and the terminal.

mod account;
mod develop;
mod dlq;
mod input;
mod manage;
mod running;
mod schedules;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use schemas::{RunStatus, Runtime};
use serde_json::Value;

use crate::api::Api;
use crate::config::{self, Credentials};
use crate::error::{exit, CliError, Result};

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
        #[arg(long, short, value_parser = Runtime::ALL.map(Runtime::as_str))]
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
        #[arg(long, value_parser = RunStatus::ALL.map(RunStatus::as_str))]
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
    /// Manage a function's schedules (timer triggers; UTC).
    #[command(subcommand)]
    Schedules(SchedulesCmd),
    /// List your bills.
    Bills,
    /// Pay a bill from the balance.
    Pay { bill_id: String },
    /// Dead letters: async runs whose last attempt failed, or whose event expired.
    #[command(subcommand)]
    Dlq(DlqCmd),
}

#[derive(Debug, Subcommand)]
enum DlqCmd {
    /// List dead letters, newest first.
    Ls,
    /// Run a dead letter's args again as a new async run (the function's current version).
    Redrive { run_id: String },
    /// Delete a dead letter (the run itself stays).
    Rm { run_id: String },
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

#[derive(Debug, Subcommand)]
enum SchedulesCmd {
    /// List a function's schedules with their next run.
    Ls { name: String },
    /// Schedule a function: each tick starts one async run.
    Add {
        name: String,
        /// `rate(<n> <unit>)` (seconds, minutes, hours, days) or `cron(<5 fields, UTC>)`.
        expression: String,
        /// The args of every run as JSON text, or @file, or @- for standard input [default: {}].
        #[arg(long, short)]
        data: Option<String>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// Pause a schedule (ticks while paused are not run later).
    Pause { schedule_id: String },
    /// Resume a paused schedule from its next tick.
    Resume { schedule_id: String },
    /// Delete a schedule.
    Rm { schedule_id: String },
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
            Cmd::Schedules(c) => self.schedules(c).await,
            Cmd::Bills => self.bills().await,
            Cmd::Pay { bill_id } => self.pay(&bill_id).await,
            Cmd::Dlq(DlqCmd::Ls) => self.dlq_ls().await,
            Cmd::Dlq(DlqCmd::Redrive { run_id }) => self.dlq_redrive(&run_id).await,
            Cmd::Dlq(DlqCmd::Rm { run_id }) => self.dlq_rm(&run_id).await,
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
}
