//! The portal in a real browser: headless Chromium driven through `chromedriver` (WebDriver)
//! with `fantoccini`, against the whole pipeline (gateway, dispatcher, worker, Docker) and the
//! portal of a sandbox. It walks the seed's three use cases — develop (register, log in, upload
//! a python3 function, test it from its page), manage (search the task page, watch the status
//! refresh itself, open a run's logs) and pay (top up, Bill, open the bill, Pay, history) — and
//! checks CSRF refusals, isolation between users, escaping, and the phone width.
//!
//! Every step saves a screenshot under `target/browser-artifacts/<step>.png`; a failing step
//! panics naming the step, the page it was on and what was missing.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tests::{eventually, Sandbox};

const NO_RATE_LIMIT: [(&str, &str); 2] = [
    ("GATEWAY_RATE_PER_SEC", "1000000"),
    ("GATEWAY_BURST", "1000000"),
];

/// The function the walk uploads: adds two numbers and prints a log line.
const ADDER_PY: &str = "def handle(event, context):\n    total = event[\"num1\"] + event[\"num2\"]\n    print(\"adding\", event[\"num1\"], \"and\", event[\"num2\"])\n    return {\"sum\": total}\n";

/// How long a page may take to show what a step waits for (a cold start included).
const WAIT: Duration = Duration::from_secs(60);

/// `chromedriver` on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = ["chromedriver", "/usr/bin/chromedriver"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok()
            })
            .expect(
                "chromedriver is installed (Debian: chromium-driver; scripts/stack.sh installs it)",
            );
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let d = Driver { child, port };
        let url = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(30), "chromedriver answers", || async {
            let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            (v["value"]["ready"] == true).then_some(())
        })
        .await;
        d
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let mut opts = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--hide-scrollbars"],
        });
        if let Some(bin) = chromium {
            opts["binary"] = json!(bin);
        }
        caps.insert("goog:chromeOptions".into(), opts);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser, the portal's address, and where screenshots go.
struct Walk {
    c: Client,
    base: String,
    artifacts: PathBuf,
}

impl Walk {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn goto(&self, path: &str) -> anyhow::Result<()> {
        self.c
            .goto(&self.url(path))
            .await
            .with_context(|| format!("opening {path}"))
    }

    /// Runs one step; saves `<name>.png` whatever happens; on failure panics with the step's
    /// name, the page it is about, the URL the browser was on, and the reason.
    async fn step<F: Future<Output = anyhow::Result<()>>>(&self, name: &str, page: &str, f: F) {
        let res = f.await;
        let shot = self.artifacts.join(format!("{name}.png"));
        if let Ok(png) = self.c.screenshot().await {
            let _ = std::fs::write(&shot, png);
        }
        if let Err(e) = res {
            let at = self
                .c
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_else(|_| "?".into());
            let heading = self.text("h1").await.unwrap_or_default();
            panic!(
                "step `{name}` failed on the {page} page (browser at {at}, heading “{heading}”): {e:#}\n  screenshot: {}",
                shot.display()
            );
        }
    }

    async fn find(&self, css: &str) -> anyhow::Result<Element> {
        self.c
            .find(Locator::Css(css))
            .await
            .map_err(|_| anyhow!("no element `{css}` on the page"))
    }

    async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.find(css).await?.text().await?)
    }

    async fn fill(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let el = self.find(css).await?;
        el.clear()
            .await
            .with_context(|| format!("clearing `{css}`"))?;
        el.send_keys(value)
            .await
            .with_context(|| format!("typing into `{css}`"))
    }

    async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.find(css)
            .await?
            .click()
            .await
            .with_context(|| format!("clicking `{css}`"))
    }

    async fn value(&self, css: &str) -> anyhow::Result<String> {
        Ok(self
            .find(css)
            .await?
            .prop("value")
            .await?
            .unwrap_or_default())
    }

    /// Waits until `css`'s text contains `needle`.
    async fn wait_text(&self, css: &str, needle: &str) -> anyhow::Result<String> {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < WAIT {
            if let Ok(t) = self.text(css).await {
                if t.contains(needle) {
                    return Ok(t);
                }
                last = t;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("`{css}` never showed “{needle}” within {WAIT:?} (last text: “{last}”)")
    }

    /// Waits until `css`'s text is exactly `want` (trimmed).
    async fn wait_exact(&self, css: &str, want: &str) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < WAIT {
            if let Ok(t) = self.text(css).await {
                if t.trim() == want {
                    return Ok(());
                }
                last = t;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("`{css}` never read “{want}” within {WAIT:?} (last text: “{last}”)")
    }

    /// Expects the browser to be on `path` (without the query).
    async fn expect_path(&self, path_prefix: &str) -> anyhow::Result<String> {
        let t0 = Instant::now();
        loop {
            let u = self.c.current_url().await?;
            if u.path().starts_with(path_prefix) {
                return Ok(u.path().to_owned());
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("expected to be on {path_prefix}, but the browser is on {u}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the page is wider than the window (it must never be, at any width).
    async fn overflows(&self) -> anyhow::Result<bool> {
        let v = self
            .c
            .execute(
                "return document.documentElement.scrollWidth > window.innerWidth + 1;",
                vec![],
            )
            .await?;
        Ok(v.as_bool().unwrap_or(true))
    }
}

/// A client that keeps a session cookie, for the checks made outside the browser.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn status_with_cookie(client: &reqwest::Client, url: &str, session: &str) -> u16 {
    client
        .get(url)
        .header("cookie", format!("cf_session={session}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_portal_in_a_real_browser() {
    let mut sb = Sandbox::new("browser").await;
    let (w, d, gw) = sb.start_pipeline(&[], &NO_RATE_LIMIT).await;
    let gateway_url = format!("http://{}", gw.addr);
    let portal = sb
        .start_portal(&[("PORTAL_GATEWAY_URL", &gateway_url)])
        .await;
    let base = format!("http://{}", portal.addr);
    let gateway: SocketAddr = gw.addr;
    let icon = http()
        .get(format!("{base}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            icon.status().as_u16(),
            icon.headers()["content-type"].to_str().unwrap()
        ),
        (200, "image/svg+xml")
    );
    let driver = Driver::start().await;
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let walk = Walk {
        c: driver.browser().await,
        base: base.clone(),
        artifacts: artifacts.clone(),
    };
    let w_ = &walk;
    let src_dir = std::env::temp_dir().join(format!("colorfaas-browser-{}", tests::rand_id()));
    std::fs::create_dir_all(&src_dir).unwrap();
    let main_py = src_dir.join("main.py");
    std::fs::write(&main_py, ADDER_PY).unwrap();
    let email = format!("dev-{}@example.com", tests::rand_id());
    let password = "correct horse battery";
    let xss = "<script>alert(1)</script> adds two numbers";

    // ---- use case 1: development -------------------------------------------------------
    w_.step("01-register", "register", async {
        w_.goto("/register").await?;
        w_.fill("#name", "Ada Dev").await?;
        w_.fill("#email", &email).await?;
        w_.fill("#password", "short").await?;
        w_.click("#register-form button[type=submit]").await?;
        // The browser's own minlength check may stop the form: either way the account must
        // not exist, and the server explains when the form reaches it.
        if w_.c.current_url().await?.path() == "/register" {
            if let Ok(t) = w_.text(".field-error").await {
                anyhow::ensure!(
                    t.contains("8"),
                    "the password error does not say what to fix: {t}"
                );
                anyhow::ensure!(
                    w_.value("#email").await? == email,
                    "the typed email was not kept"
                );
            }
        }
        w_.goto("/register").await?;
        w_.fill("#name", "Ada Dev").await?;
        w_.fill("#email", &email).await?;
        w_.fill("#password", password).await?;
        w_.click("#register-form button[type=submit]").await?;
        w_.expect_path("/login").await?;
        w_.wait_text("#notice", "Log in").await?;
        Ok(())
    })
    .await;

    w_.step("02-login", "login", async {
        w_.fill("#email", &email).await?;
        w_.fill("#password", "wrong password").await?;
        w_.click("#login-form button[type=submit]").await?;
        w_.wait_text("#error", "").await?;
        anyhow::ensure!(
            w_.value("#email").await? == email,
            "the email was not kept after a failed login"
        );
        anyhow::ensure!(
            w_.value("#password").await?.is_empty(),
            "the password was echoed back"
        );
        w_.fill("#password", password).await?;
        w_.click("#login-form button[type=submit]").await?;
        w_.expect_path("/functions").await?;
        w_.wait_text("#empty", "no functions yet").await?;
        w_.wait_text("#who", "Ada Dev").await?;
        Ok(())
    })
    .await;

    w_.step("03-upload-form-error", "add function", async {
        w_.click("#new-function").await?;
        w_.expect_path("/functions/new").await?;
        // The name field's pattern is the contract's name rule in the browser's own regex
        // engine (a pattern the browser cannot compile is ignored and matches everything).
        for (name, bad) in [
            ("-adder", true),
            ("Adder", true),
            ("a_b", true),
            ("adder-2", false),
        ] {
            let mismatch =
                w_.c.execute(
                    "const e = document.getElementById('name'); e.value = arguments[0]; \
                     return e.validity.patternMismatch;",
                    vec![json!(name)],
                )
                .await?;
            anyhow::ensure!(
                mismatch == json!(bad),
                "the name field's pattern judges {name:?} {mismatch} (want {bad})"
            );
        }
        w_.fill("#name", "adder").await?;
        w_.find("#code")
            .await?
            .send_keys(&main_py.to_string_lossy())
            .await?;
        w_.find("#runtime")
            .await?
            .select_by_value("python3")
            .await?;
        w_.fill("#handler", "main.handle").await?;
        w_.fill("#description", xss).await?;
        w_.fill("#args_schema", "num1:int\nnum2:integer").await?;
        w_.click("#save").await?;
        let err = w_
            .wait_text("#args_schema + .field-error", "integer")
            .await?;
        anyhow::ensure!(
            err.contains("int"),
            "the schema error does not list the types: {err}"
        );
        anyhow::ensure!(
            w_.value("#name").await? == "adder",
            "the typed name was not kept"
        );
        anyhow::ensure!(
            w_.value("#description").await? == xss,
            "the description was not kept"
        );
        Ok(())
    })
    .await;

    w_.step("04-upload", "add function", async {
        w_.find("#code")
            .await?
            .send_keys(&main_py.to_string_lossy())
            .await?;
        w_.fill("#args_schema", "num1:int\nnum2:int").await?;
        w_.click("#save").await?;
        w_.expect_path("/functions/adder").await?;
        w_.wait_text("#function-name", "adder").await?;
        // The description is shown as text: no script ran, no element was created.
        w_.wait_text("#description", "<script>alert(1)</script>")
            .await?;
        anyhow::ensure!(
            w_.c.get_alert_text().await.is_err(),
            "an alert dialog opened"
        );
        anyhow::ensure!(
            w_.c.find(Locator::Css("#description script"))
                .await
                .is_err(),
            "the description became a script element"
        );
        Ok(())
    })
    .await;

    let run_id = std::sync::Mutex::new(String::new());
    w_.step("05-test-from-page", "function detail", async {
        w_.fill("#arg-num1", "2").await?;
        w_.fill("#arg-num2", "40").await?;
        w_.click("#run-test").await?;
        w_.wait_text("#result-status", "succeeded").await?;
        w_.wait_text("#result-output", "42").await?;
        w_.wait_text("#result-logs", "adding 2 and 40").await?;
        let start = w_.text("#result-start").await?;
        anyhow::ensure!(
            start == "cold" || start == "warm",
            "cold/warm not shown: {start}"
        );
        let dur = w_.text("#result-duration").await?;
        anyhow::ensure!(
            dur.contains("ms") || dur.contains(" s"),
            "no duration: {dur}"
        );
        let cost = w_.text("#result-cost").await?;
        anyhow::ensure!(
            cost.contains('.') && cost.split('.').nth(1).map(|f| f.len()) == Some(6),
            "cost is not shown with 6 decimals: {cost}"
        );
        *run_id.lock().unwrap() = w_.text("#result-run").await?;
        // A missing argument is refused by the server, saying which, keeping what was typed.
        w_.fill("#arg-num1", "").await?;
        w_.click("#run-test").await?;
        w_.wait_text(".field-error", "num1").await?;
        anyhow::ensure!(
            w_.value("#arg-num2").await? == "40",
            "the typed arg was not kept"
        );
        Ok(())
    })
    .await;
    let run_id = run_id.into_inner().unwrap();
    // Tables show the last 8 characters of an id.
    let short_run = {
        let s = run_id.replace('-', "");
        s[s.len().saturating_sub(8)..].to_owned()
    };

    // ---- API key (needed to call the gateway below) -----------------------------------------
    let secret = std::sync::Mutex::new(String::new());
    w_.step("06-api-key", "API keys", async {
        w_.goto("/keys").await?;
        w_.wait_text("#no-keys", "No API keys").await?;
        w_.fill("#label", "browser test").await?;
        w_.click("#create-key").await?;
        let s = w_.wait_text("#secret", "").await?;
        anyhow::ensure!(s.len() >= 16, "the new key's secret is not shown: {s}");
        *secret.lock().unwrap() = s.trim().to_owned();
        w_.wait_text("#keys", "browser test").await?;
        Ok(())
    })
    .await;
    let secret = secret.into_inner().unwrap();

    // ---- use case 3: manage functions --------------------------------------------------------
    w_.step("07-task-search", "tasks", async {
        w_.goto("/tasks").await?;
        w_.fill("#q", "nothing-like-this").await?;
        w_.click("#search").await?;
        w_.wait_text("#no-match", "nothing-like-this").await?;
        w_.fill("#q", "add").await?;
        w_.click("#search").await?;
        w_.wait_text("#status-table", "adder").await?;
        w_.wait_text(
            "#status-table [data-function=adder] [data-status=succeeded]",
            "1",
        )
        .await?;
        w_.wait_text("#runs-table", &short_run).await?;
        Ok(())
    })
    .await;

    w_.step("08-task-status-refreshes", "tasks", async {
        // A call from an application, while the page stays open: the counts change without a
        // reload.
        let resp = reqwest::Client::new()
            .post(format!("http://{gateway}/v1/invoke/adder"))
            .bearer_auth(&secret)
            .json(&json!({"num1": 1, "num2": 2}))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status() == 200,
            "the gateway call failed: {}",
            resp.status()
        );
        w_.wait_text(
            "#status-table [data-function=adder] [data-status=succeeded]",
            "2",
        )
        .await?;
        Ok(())
    })
    .await;

    w_.step("09-run-logs", "run detail", async {
        w_.goto("/tasks?q=adder").await?;
        w_.click(&format!("#runs-table [data-run='{run_id}'] a"))
            .await?;
        w_.expect_path(&format!("/runs/{run_id}")).await?;
        w_.wait_text("#run-status", "succeeded").await?;
        w_.wait_text("#run-logs", "adding 2 and 40").await?;
        w_.wait_text("#run-result", "42").await?;
        Ok(())
    })
    .await;

    w_.step("10-modify", "modify function", async {
        w_.goto("/functions/adder").await?;
        w_.click("#modify").await?;
        w_.expect_path("/functions/adder/edit").await?;
        w_.fill("#timeout_ms", "4000").await?;
        w_.click("#save").await?;
        w_.expect_path("/functions/adder").await?;
        w_.wait_text("#spec", "4000").await?;
        w_.wait_exact("#version", "2").await?;
        // How to call it from outside, with example args from its schema.
        w_.wait_text("#invoke-url", &format!("{gateway_url}/v1/invoke/adder"))
            .await?;
        w_.wait_text("#curl", "Bearer $COLORFAAS_KEY").await?;
        w_.wait_text("#curl", "/v1/invoke/adder").await?;
        Ok(())
    })
    .await;

    // ---- use case 2: pay the bill ------------------------------------------------------------
    w_.step("11-topup", "account", async {
        w_.goto("/account").await?;
        w_.fill("#card_number", "4242424242424241").await?;
        w_.fill("#card_expiry", "12/39").await?;
        w_.fill("#card_cvc", "123").await?;
        w_.fill("#amount", "10").await?;
        w_.click("#topup").await?;
        w_.wait_text(".field-error", "card").await?;
        anyhow::ensure!(
            w_.value("#amount").await? == "10",
            "the amount was not kept"
        );
        anyhow::ensure!(
            w_.value("#card_number").await?.is_empty(),
            "the card number was echoed back"
        );
        w_.fill("#card_number", "4242424242424242").await?;
        w_.fill("#card_cvc", "123").await?;
        w_.click("#topup").await?;
        w_.expect_path("/account").await?;
        w_.wait_text("#balance", "11.000000").await?;
        w_.wait_text("#history", "4242").await?;
        Ok(())
    })
    .await;

    let bill_path = std::sync::Mutex::new(String::new());
    w_.step("12-bill", "account", async {
        w_.click("#bill").await?;
        let p = w_.expect_path("/bills/").await?;
        w_.wait_text("#bill-status", "unpaid").await?;
        w_.wait_text("#bill-items", &short_run).await?;
        w_.wait_text("#bill-items", "adder").await?;
        *bill_path.lock().unwrap() = p;
        Ok(())
    })
    .await;
    let bill_path = bill_path.into_inner().unwrap();
    let bill_micros = std::sync::Mutex::new(0i64);

    w_.step("13-pay", "payment", async {
        w_.click("#pay").await?;
        w_.expect_path(&format!("{bill_path}/pay")).await?;
        w_.click("#method-balance").await?;
        w_.click("#confirm-pay").await?;
        w_.expect_path(&bill_path).await?;
        w_.wait_exact("#bill-status", "paid").await?;
        w_.wait_text("#paid-at", "UTC").await?;
        *bill_micros.lock().unwrap() = micros(&w_.text("#bill-amount").await?)?;
        Ok(())
    })
    .await;

    w_.step("14-history", "account", async {
        w_.goto("/account").await?;
        w_.wait_text("#history", "bill").await?;
        w_.wait_text("#bills", "paid").await?;
        let paid = *bill_micros.lock().unwrap();
        anyhow::ensure!(paid > 0, "the bill had an amount");
        let balance = micros(&w_.text("#balance").await?)?;
        anyhow::ensure!(
            balance == 11_000_000 - paid,
            "the balance {balance} is not 11 units less the bill's {paid} micros"
        );
        Ok(())
    })
    .await;

    // ---- phone width -------------------------------------------------------------------------
    for (path, name) in [
        ("/tasks?q=adder", "15-phone-tasks"),
        ("/account", "16-phone-account"),
        ("/functions/adder", "17-phone-function"),
    ] {
        w_.step(name, path, async {
            w_.c.set_window_size(390, 844).await?;
            w_.goto(path).await?;
            anyhow::ensure!(
                !w_.overflows().await?,
                "the page is wider than a 390 px phone screen"
            );
            Ok(())
        })
        .await;
    }
    w_.c.set_window_size(1280, 900).await.unwrap();
    w_.step("18-laptop-functions", "functions", async {
        w_.goto("/functions").await?;
        anyhow::ensure!(
            !w_.overflows().await?,
            "the page is wider than a 1280 px window"
        );
        w_.wait_text("#functions", "<script>alert(1)</script>")
            .await?;
        Ok(())
    })
    .await;

    // ---- CSRF: a form post without (or with a wrong) token is refused ------------------------
    let cookie = walk
        .c
        .get_named_cookie("cf_session")
        .await
        .expect("the session cookie");
    assert_eq!(
        cookie.http_only(),
        Some(true),
        "the session cookie is not HttpOnly"
    );
    assert_eq!(
        format!("{:?}", cookie.same_site()),
        "Some(Lax)",
        "the session cookie is not SameSite=Lax"
    );
    let session = cookie.value().to_owned();
    let client = http();
    // Before a session: a login post without the pre-session token is refused too.
    let r = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("email={email}&password=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a login post without its token was not refused"
    );
    for (what, body) in [
        ("no token", "label=forged"),
        ("a wrong token", "label=forged&csrf=0000"),
    ] {
        let r = client
            .post(format!("{base}/keys"))
            .header("cookie", format!("cf_session={session}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "a form post with {what} was not refused");
        let page = r.text().await.unwrap();
        assert!(
            page.contains("security token"),
            "the 403 page does not explain itself: {page}"
        );
    }
    let r = client
        .post(format!("{base}/account/bill"))
        .header("cookie", format!("cf_session={session}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "Bill without a token was not refused");
    walk.step("19-keys-unchanged", "API keys", async {
        w_.goto("/keys").await?;
        let t = w_.text("#keys").await?;
        anyhow::ensure!(!t.contains("forged"), "a forged post created a key");
        Ok(())
    })
    .await;

    // ---- isolation: user B cannot reach A's objects by URL -----------------------------------
    let b_email = format!("other-{}@example.com", tests::rand_id());
    walk.step("20-user-b", "register (user B)", async {
        w_.goto("/").await?;
        w_.click("#logout").await?;
        w_.expect_path("/login").await?;
        w_.goto("/register").await?;
        w_.fill("#name", "Bob Other").await?;
        w_.fill("#email", &b_email).await?;
        w_.fill("#password", password).await?;
        w_.click("#register-form button[type=submit]").await?;
        w_.expect_path("/login").await?;
        w_.fill("#email", &b_email).await?;
        w_.fill("#password", password).await?;
        w_.click("#login-form button[type=submit]").await?;
        w_.expect_path("/functions").await?;
        Ok(())
    })
    .await;
    let a_urls = [
        "/functions/adder".to_owned(),
        "/functions/adder/edit".to_owned(),
        "/functions/adder/delete".to_owned(),
        format!("/runs/{run_id}"),
        bill_path.clone(),
        format!("{bill_path}/pay"),
    ];
    for (i, u) in a_urls.iter().enumerate() {
        walk.step(&format!("21-isolation-{i}"), u, async {
            w_.goto(u).await?;
            w_.wait_text("h1", "Not found").await?;
            Ok(())
        })
        .await;
    }
    let b_session = walk
        .c
        .get_named_cookie("cf_session")
        .await
        .unwrap()
        .value()
        .to_owned();
    for u in &a_urls {
        assert_eq!(
            status_with_cookie(&client, &format!("{base}{u}"), &b_session).await,
            404,
            "user B got {u}"
        );
    }
    walk.step("22-user-b-empty-tasks", "tasks (user B)", async {
        w_.goto("/tasks?q=adder").await?;
        w_.wait_text("#no-match", "adder").await?;
        Ok(())
    })
    .await;

    // ---- delete with confirmation (as A) ---------------------------------------------------------
    walk.step("23-delete", "delete function", async {
        w_.click("#logout").await?;
        w_.expect_path("/login").await?;
        w_.fill("#email", &email).await?;
        w_.fill("#password", password).await?;
        w_.click("#login-form button[type=submit]").await?;
        w_.expect_path("/functions").await?;
        w_.goto("/functions/adder").await?;
        w_.click("#delete").await?;
        w_.expect_path("/functions/adder/delete").await?;
        w_.wait_text("#confirm-delete", "Delete adder?").await?;
        w_.click("#confirm").await?;
        w_.expect_path("/functions").await?;
        w_.wait_text("#empty", "no functions yet").await?;
        Ok(())
    })
    .await;

    let _ = walk.c.clone().close().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&src_dir);
    portal.stop().await.unwrap();
    gw.stop().await.unwrap();
    d.stop().await.unwrap();
    w.stop().await.unwrap();
    sb.cleanup().await;
    eprintln!("screenshots: {}", artifacts.display());
}

/// Micros of an amount as the pages show it (units with six decimals, maybe more text after).
fn micros(shown: &str) -> anyhow::Result<i64> {
    let n: String = shown
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    let (whole, frac) = n.split_once('.').unwrap_or((&n, ""));
    anyhow::ensure!(frac.len() <= 6, "more than six decimals in {shown:?}");
    let frac = format!("{frac:0<6}");
    let sign = if whole.starts_with('-') { -1 } else { 1 };
    let whole: i64 = whole.trim_start_matches('-').parse().unwrap_or(0);
    Ok(sign * (whole * 1_000_000 + frac.parse::<i64>()?))
}
