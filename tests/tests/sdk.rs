//! The `colorfaas` CLI as a user runs it: the built binary in a process of its own, with its
//! config folder in a temporary directory, against a real portal and the real pipeline
//! (gateway → RabbitMQ → dispatcher → worker → Docker) of a sandbox: `init` → local test →
//! `run-local` → `deploy` → `invoke` → `logs` for python3, node and exec, and the errors a user
//! meets (bad manifests, an unreachable portal, not logged in).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tests::{eventually, Sandbox};
use tokio::io::AsyncWriteExt as _;

/// Enough budget that no test here is ever rate limited.
const NO_RATE_LIMIT: [(&str, &str); 2] = [
    ("GATEWAY_RATE_PER_SEC", "1000000"),
    ("GATEWAY_BURST", "1000000"),
];

static BUILT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

/// The `colorfaas` binary, built (or found up to date) by cargo first.
async fn binary() -> PathBuf {
    BUILT
        .get_or_init(|| async {
            let status = tokio::process::Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "sdk", "--bin", "colorfaas"])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .status()
                .await
                .expect("running cargo");
            assert!(status.success(), "cargo build -p sdk failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug").join("colorfaas")
        })
        .await
        .clone()
}

fn temp_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join("colorfaas-tests")
        .join(format!("sdk-{what}-{}", tests::rand_id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One user's CLI: a config folder of its own and the addresses it talks to.
struct Cli {
    bin: PathBuf,
    home: PathBuf,
    config: PathBuf,
    portal: String,
    gateway: String,
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

impl Cli {
    async fn new(portal: &str, gateway: &str) -> Cli {
        let home = temp_dir("home");
        Cli {
            bin: binary().await,
            config: home.join("cfg"),
            home,
            portal: portal.to_owned(),
            gateway: gateway.to_owned(),
        }
    }

    async fn run_in(&self, cwd: &Path, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("COLORFAAS_CONFIG_DIR", &self.config)
            .env("COLORFAAS_PORTAL", &self.portal)
            .env("COLORFAAS_GATEWAY", &self.gateway)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Ok(h) = std::env::var("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", h);
        }
        let mut child = cmd.spawn().expect("spawning colorfaas");
        if let Some(input) = stdin {
            let mut s = child.stdin.take().unwrap();
            s.write_all(input.as_bytes()).await.unwrap();
            drop(s);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("colorfaas {args:?} did not finish in 120 s"))
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_in(&self.home, args, None).await
    }

    /// Runs a command that must exit 0.
    async fn ok_in(&self, cwd: &Path, args: &[&str]) -> Out {
        let out = self.run_in(cwd, args, None).await;
        assert_eq!(out.code, 0, "colorfaas {args:?}: {out:?}");
        out
    }

    /// Runs a command with `--json` that must exit 0; its stdout parsed.
    async fn json_in(&self, cwd: &Path, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.ok_in(cwd, &all).await.json()
    }

    async fn json(&self, args: &[&str]) -> Value {
        self.json_in(&self.home, args).await
    }
}

/// Asserts an exit code and that stderr says `what`.
fn assert_fails(out: &Out, code: i32, what: &[&str]) {
    assert_eq!(out.code, code, "{out:?}");
    for w in what {
        assert!(out.stderr.contains(w), "stderr lacks {w:?}: {out:?}");
    }
}

/// A port nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the folder's local test (what `init` tells the author to run) in the runtime's
/// image, where that runtime is sure to be installed.
async fn local_test_passes(runtime: &str, dir: &Path) {
    let (image, cmd): (&str, &[&str]) = match runtime {
        "python3" => ("colorfaas/runtime-python3", &["python3", "test_main.py"]),
        "node" => ("colorfaas/runtime-node", &["node", "test.js"]),
        _ => ("colorfaas/runtime-exec", &["sh", "test.sh"]),
    };
    let out = tokio::process::Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--user", "10001:10001"])
        .arg("-v")
        .arg(format!("{}:/fn:ro", dir.display()))
        .args(["-w", "/fn", "--entrypoint", cmd[0], image])
        .args(&cmd[1..])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{runtime} local test failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_exit_2_with_a_clear_message() {
    let cli = Cli::new("http://127.0.0.1:9", "http://127.0.0.1:9").await;
    let work = temp_dir("manifests");
    let cases = [
        (
            r#"{"name": "Bad_Name", "runtime": "python3", "handler": "main.handle"}"#,
            "invalid function name \"Bad_Name\"",
        ),
        (
            r#"{"name": "ok", "runtime": "ruby", "handler": "main.handle"}"#,
            "unknown runtime \"ruby\": use one of python3, node, exec",
        ),
        (r#"{"name": "ok", "runtime": "#, "invalid manifest"),
        (
            r#"{"name": "ok", "runtime": "python3", "handler": "main.handle", "timeout": 5}"#,
            "unknown field `timeout`",
        ),
        (
            r#"{"name": "ok", "runtime": "python3", "handler": "missing.handle"}"#,
            "missing.py not found",
        ),
    ];
    for (i, (manifest, want)) in cases.iter().enumerate() {
        let dir = work.join(format!("f{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("colorfaas.json"), manifest).unwrap();
        std::fs::write(dir.join("main.py"), "def handle(e, c):\n    return 1\n").unwrap();
        for cmd in ["deploy", "run-local"] {
            let out = cli.run_in(&dir, &[cmd], None).await;
            assert_fails(&out, 2, &[want, "colorfaas.json"]);
        }
        // --json: the error as JSON on stdout.
        let out = cli.run_in(&dir, &["--json", "deploy"], None).await;
        assert_eq!(out.code, 2);
        assert_eq!(out.json()["error"]["exit_code"], 2);
    }
    // No manifest at all, and bad names or runtimes for init.
    let out = cli.run_in(&work, &["deploy"], None).await;
    assert_fails(&out, 2, &["no colorfaas.json", "colorfaas init"]);
    let out = cli
        .run_in(&work, &["init", "Nope!", "--runtime", "node"], None)
        .await;
    assert_fails(&out, 2, &["invalid function name"]);
    let out = cli
        .run_in(&work, &["init", "ok", "--runtime", "ruby"], None)
        .await;
    assert_fails(&out, 2, &["ruby"]);
    std::fs::remove_dir_all(&work).unwrap();
    std::fs::remove_dir_all(&cli.home).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_portal_exits_5_and_says_how_to_start_it() {
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let cli = Cli::new(&dead, &dead).await;
    let out = cli
        .run_in(
            &cli.home,
            &["login", "--email", "a@example.com", "--password-stdin"],
            Some("password1\n"),
        )
        .await;
    assert_fails(
        &out,
        5,
        &[
            &format!("portal unreachable at {dead}"),
            "bash scripts/run.sh",
        ],
    );
    assert!(!cli.config.join("config.json").exists());
    // --json: the same error, parseable.
    let out = cli
        .run_in(
            &cli.home,
            &[
                "--json",
                "login",
                "--email",
                "a@example.com",
                "--password-stdin",
            ],
            Some("password1\n"),
        )
        .await;
    assert_eq!(out.code, 5);
    assert_eq!(out.json()["error"]["code"], "unreachable");
    std::fs::remove_dir_all(&cli.home).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_need_a_login_exit_3_without_one() {
    let cli = Cli::new("http://127.0.0.1:9", "http://127.0.0.1:9").await;
    for args in [
        &["ls"][..],
        &["invoke", "hello", "--data", "{}"],
        &["logs", "r1"],
        &["runs", "hello"],
        &["keys", "ls"],
        &["bills"],
        &["pay", "b1"],
        &["rm", "hello", "--yes"],
    ] {
        let out = cli.run(args).await;
        assert_fails(&out, 3, &["not logged in", "colorfaas login"]);
    }
    // logout without a login is not an error.
    let out = cli.run(&["logout"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    std::fs::remove_dir_all(&cli.home).unwrap();
}

/// The user's walk for each runtime, against a real portal and the real pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_run_local_deploy_invoke_logs_for_every_runtime() {
    let mut sb = Sandbox::new("sdk-walk").await;
    let (w, d, gw) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    let portal = sb.start_portal(&[]).await;
    let portal_url = format!("http://{}", portal.addr);
    let cli = Cli::new(&portal_url, &format!("http://{}", gw.addr)).await;

    // Register through the API, log in through the CLI (password on stdin).
    let email = format!("dev-{}@example.com", tests::rand_id());
    let r = reqwest::Client::new()
        .post(format!("{portal_url}/api/v1/users"))
        .json(&json!({"email": email, "name": "Dev", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let out = cli
        .run_in(
            &cli.home,
            &["login", "--email", &email, "--password-stdin"],
            Some("wrong password\n"),
        )
        .await;
    assert_fails(&out, 3, &["login failed"]);
    let out = cli
        .run_in(
            &cli.home,
            &["--json", "login", "--email", &email, "--password-stdin"],
            Some("correct horse\n"),
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let login = out.json();
    assert_eq!(login["email"], email.as_str());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cli.config), 0o700);
        assert_eq!(mode(&cli.config.join("config.json")), 0o600);
    }
    let keys = cli.json(&["keys", "ls"]).await;
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .any(|k| k["key_id"] == login["key_id"]),
        "the CLI's key is listed: {keys}"
    );
    // Money for the runs (a new account may start at zero: the budget cap).
    // December of the year after next: always a future expiry.
    let year = 1970 + schemas::now_ms() / 31_556_952_000 + 2;
    let expiry = format!("12/{:02}", year % 100);
    let topped = cli
        .json(&[
            "topup",
            "--amount",
            "10",
            "--card",
            "4242424242424242",
            "--expiry",
            &expiry,
            "--cvc",
            "123",
        ])
        .await;
    assert!(
        topped["balance_micros"].as_i64().unwrap() >= 10_000_000,
        "{topped}"
    );

    let work = temp_dir("walk");
    for runtime in ["python3", "node", "exec"] {
        let name = format!("hello-{runtime}");
        let init = cli
            .json_in(&work, &["init", &name, "--runtime", runtime])
            .await;
        let dir = work.join(&name);
        assert_eq!(init["dir"].as_str().map(PathBuf::from), Some(dir.clone()));
        local_test_passes(runtime, &dir).await;

        // run-local: people's output, then JSON with another event.
        let out = cli.ok_in(&dir, &["run-local"]).await;
        let result: Value = serde_json::from_str(&out.stdout).expect("the result on stdout");
        assert_eq!(result, json!({"message": "hello, Ada!", "function": name}));
        assert!(out.stderr.contains("greeting Ada"), "{out:?}");
        assert!(out.stderr.contains("succeeded in"), "{out:?}");
        let local = cli
            .json_in(&dir, &["run-local", "--data", r#"{"name": "Bob"}"#])
            .await;
        assert_eq!(local["status"], "succeeded");
        assert_eq!(local["result"]["message"], "hello, Bob!");
        assert!(local["logs"].as_str().unwrap().contains("greeting Bob"));

        // deploy creates, a second deploy updates.
        let f = cli.json_in(&dir, &["deploy"]).await;
        assert_eq!(
            (f["name"].as_str(), f["version"].as_i64()),
            (Some(name.as_str()), Some(1)),
            "{f}"
        );
        assert_eq!(f["runtime"], runtime);
        let out = cli.ok_in(&dir, &["deploy"]).await;
        assert!(
            out.stdout.contains(&format!("updated {name} version 2")),
            "{out:?}"
        );

        // invoke: JSON, then people's output.
        let inv = cli
            .json(&["invoke", &name, "--data", r#"{"name": "Eve"}"#])
            .await;
        assert_eq!(inv["status"], "succeeded");
        assert_eq!(
            inv["result"],
            json!({"message": "hello, Eve!", "function": name})
        );
        assert_eq!(inv["cold_start"], true);
        let run_id = inv["run_id"].as_str().unwrap().to_owned();
        assert!(run_id.len() >= 32, "{inv}");
        let out = cli
            .ok_in(
                &cli.home,
                &["invoke", &name, "--data", r#"{"name": "Max"}"#],
            )
            .await;
        let result: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(result["message"], "hello, Max!");
        assert!(out.stderr.contains("· warm ·"), "{out:?}");

        // logs of that run: JSON and people's, once the record is written.
        let run = eventually(
            Duration::from_secs(30),
            "the run's record is final",
            || async {
                let out = cli.run(&["--json", "logs", &run_id]).await;
                (out.code == 0 && out.json()["status"] == "succeeded").then(|| out.json())
            },
        )
        .await;
        assert!(
            run["logs"].as_str().unwrap().contains("greeting Eve"),
            "{run}"
        );
        assert_eq!(run["result"]["message"], "hello, Eve!");
        let out = cli.ok_in(&cli.home, &["logs", &run_id]).await;
        assert!(
            out.stdout.contains("--- logs ---") && out.stdout.contains("greeting Eve"),
            "{out:?}"
        );

        // async, then waiting on its logs.
        let acc = cli
            .json(&["invoke", &name, "--async", "--data", r#"{"name": "Zed"}"#])
            .await;
        let async_id = acc["run_id"].as_str().unwrap().to_owned();
        let run = cli
            .json(&["logs", &async_id, "--wait", "--wait-secs", "60"])
            .await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["result"]["message"], "hello, Zed!");

        let runs = cli.json(&["runs", &name]).await;
        let ids: Vec<&str> = runs
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["run_id"].as_str())
            .collect();
        assert!(
            ids.contains(&run_id.as_str()) && ids.contains(&async_id.as_str()),
            "{runs}"
        );
        let out = cli.ok_in(&cli.home, &["runs", &name]).await;
        assert!(out.stdout.starts_with("RUN ID"), "{out:?}");

        // Args that do not match args_schema, and a function that does not exist.
        let out = cli
            .run(&["invoke", &name, "--data", r#"{"name": 5}"#])
            .await;
        assert_fails(&out, 2, &["schema mismatch"]);
        let out = cli.run(&["invoke", "no-such-fn", "--data", "{}"]).await;
        assert_fails(&out, 4, &["not found", "colorfaas ls"]);
    }

    // A failing function: exit 1 and a pointer to its logs.
    let dir = work.join("hello-python3");
    std::fs::write(
        dir.join("main.py"),
        "def handle(event, context):\n    print('about to fail')\n    raise ValueError('boom')\n",
    )
    .unwrap();
    let out = cli.run_in(&dir, &["run-local"], None).await;
    assert_fails(&out, 1, &["ValueError: boom", "about to fail"]);
    cli.ok_in(&dir, &["deploy"]).await;
    // (The gateway may serve the old version from its cache for a few seconds.)
    let out = eventually(Duration::from_secs(30), "the new version fails", || async {
        let out = cli
            .run(&[
                "--json",
                "invoke",
                "hello-python3",
                "--data",
                r#"{"name": "Ann"}"#,
            ])
            .await;
        (out.code == 1).then_some(out)
    })
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    let failed = out.json();
    let failed_id = failed["run_id"].as_str().unwrap().to_owned();
    assert!(
        out.stderr.contains(&format!("colorfaas logs {failed_id}")),
        "{out:?}"
    );
    let out = eventually(
        Duration::from_secs(30),
        "the failed run's record is final",
        || async {
            let out = cli.run(&["logs", &failed_id]).await;
            (out.code == 1).then_some(out)
        },
    )
    .await;
    assert!(
        out.stdout.contains("about to fail") && out.stdout.contains("boom"),
        "{out:?}"
    );

    // ls, people's and JSON.
    let fs = cli.json(&["ls"]).await;
    let mut names: Vec<&str> = fs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["hello-exec", "hello-node", "hello-python3"]);
    let out = cli.ok_in(&cli.home, &["ls"]).await;
    assert!(
        out.stdout.starts_with("NAME") && out.stdout.contains("hello-node"),
        "{out:?}"
    );

    // Bills: a billing pass, then paying the bill.
    let s = billing_job::bill_once(&sb.db, &billing_job::BillOptions::default())
        .await
        .unwrap();
    assert!(s.runs >= 1, "{s:?}");
    let bills = cli.json(&["bills"]).await;
    let bill = &bills.as_array().unwrap()[0];
    assert_eq!(bill["status"], "unpaid");
    let bill_id = bill["bill_id"].as_str().unwrap().to_owned();
    let paid = cli.json(&["pay", &bill_id]).await;
    assert_eq!(paid["status"], "paid");
    let out = cli.run(&["pay", &bill_id]).await;
    assert_fails(&out, 7, &["cannot be paid"]);

    // rm asks first (no terminal: refuses), --yes deletes.
    let out = cli.run(&["rm", "hello-exec"]).await;
    assert_fails(&out, 2, &["--yes"]);
    cli.ok_in(&cli.home, &["rm", "hello-exec", "--yes"]).await;
    let out = eventually(
        Duration::from_secs(30),
        "the gateway forgets hello-exec",
        || async {
            let out = cli
                .run(&["invoke", "hello-exec", "--data", r#"{"name": "Ann"}"#])
                .await;
            (out.code != 0).then_some(out)
        },
    )
    .await;
    assert_fails(&out, 4, &["not found"]);

    // Keys: create, revoke.
    let k = cli.json(&["keys", "create", "--label", "ci"]).await;
    let key_id = k["key_id"].as_str().unwrap().to_owned();
    assert!(!k["key"].as_str().unwrap().is_empty());
    cli.json(&["keys", "revoke", &key_id]).await;
    let out = cli.run(&["keys", "revoke", &key_id]).await;
    assert_fails(&out, 4, &["not found"]);

    // logout revokes the CLI's key and forgets the credentials.
    let api_key = serde_json::from_str::<Value>(
        &std::fs::read_to_string(cli.config.join("config.json")).unwrap(),
    )
    .unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    cli.ok_in(&cli.home, &["logout"]).await;
    assert!(!cli.config.join("config.json").exists());
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "the CLI's key is revoked at logout",
        || async {
            let r = client
                .post(format!("http://{}/v1/invoke/hello-node", gw.addr))
                .bearer_auth(&api_key)
                .body("{}")
                .send()
                .await
                .ok()?;
            (r.status() == 401).then_some(())
        },
    )
    .await;
    let out = cli.run(&["ls"]).await;
    assert_fails(&out, 3, &["not logged in"]);

    std::fs::remove_dir_all(&work).unwrap();
    std::fs::remove_dir_all(&cli.home).unwrap();
    portal.stop().await.unwrap();
    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
}
