//! Developing commands: `init`, `run-local`, `deploy` (with a progress line for large packages).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Method;
use schemas::Runtime;
use serde_json::json;

use super::input::{parse_data, read_json_file};
use super::Ctx;
use crate::api::{Server, Subject};
use crate::error::{exit, Result};
use crate::manifest::Manifest;
use crate::output::{self, cell};
use crate::{local, package, templates};

impl Ctx {
    pub(super) fn init(&self, name: &str, runtime: &str, parent: &Path) -> Result<i32> {
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
                    Runtime::parse(runtime).map_or("", templates::local_test_command),
                )
            },
        );
        Ok(exit::OK)
    }

    /// Folders never packed: the CLI's config folder.
    pub(super) fn exclusions(&self) -> Vec<PathBuf> {
        self.config_dir().into_iter().collect()
    }

    pub(super) async fn run_local(
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
                r.status.as_str().replace('_', " "),
                r.duration_ms,
                r.start_ms,
                m.runtime
            );
        }
        Ok(local::exit_code(&r))
    }

    pub(super) async fn deploy(&self, dir: &Path) -> Result<i32> {
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
