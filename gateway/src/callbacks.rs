//! `X-Callback-Url`: finished runs routed to the callbacks queue are POSTed, as the contract's
//! Run JSON, to the URL the caller gave, retried with exponential back-off a bounded number of
//! times. The message is acknowledged after a success or after giving up. Callbacks never reach
//! inside the platform ([`crate::egress`]): URLs with credentials or special-use IP literals are
//! refused at acceptance (400), and again at delivery, where names are resolved and vetted on
//! the connection itself; a refused callback is given up at once. Redirects are not followed and
//! no proxy is used. Logs show a URL only as `scheme://host:port/path`.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use mongodb::Database;
use schemas::names::collections;
use schemas::{ResultMsg, RunDoc, MESSAGE_VERSION};

use crate::egress::{self, AddressPolicy, PolicyResolver, Refused};
use crate::metrics::Metrics;

/// Longest callback URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Checks an `X-Callback-Url` value: an absolute http(s) URL with a host, without credentials,
/// whose host (when it is an IP literal) the policy permits. Names are vetted at delivery.
pub fn validate_url(raw: &str, policy: &AddressPolicy) -> Result<String, String> {
    let raw = raw.trim();
    if raw.len() > MAX_URL_LEN {
        return Err(format!(
            "X-Callback-Url is longer than {MAX_URL_LEN} characters"
        ));
    }
    let url =
        reqwest::Url::parse(raw).map_err(|e| format!("X-Callback-Url is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "X-Callback-Url must be an http or https URL, not {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("X-Callback-Url has no host".to_owned());
    }
    egress::check_target(&url, policy).map_err(|Refused(why)| format!("X-Callback-Url: {why}"))?;
    Ok(url.to_string())
}

/// The wait before attempt `n` (0-based; the first attempt does not wait).
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    base.saturating_mul(1 << (attempt - 1).min(16))
        .min(Duration::from_secs(60))
}

/// How a delivery ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undelivered {
    /// Every attempt failed; the last error.
    GaveUp(String),
    /// The address policy refused the target: no attempt connects, none is retried.
    Refused(String),
}

/// Delivers callbacks.
pub struct Callbacks {
    db: Database,
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    attempts: u32,
    backoff: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Callbacks")
    }
}

impl Callbacks {
    pub fn new(
        db: Database,
        policy: AddressPolicy,
        attempts: u32,
        backoff: Duration,
        timeout: Duration,
        metrics: Metrics,
    ) -> anyhow::Result<Callbacks> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver::new(policy.clone())))
            .user_agent("colorfaas-gateway")
            .build()?;
        Ok(Callbacks {
            db,
            client,
            policy,
            attempts: attempts.max(1),
            backoff,
            metrics,
        })
    }

    /// Unacknowledged callbacks one gateway works on at once.
    pub fn prefetch(&self) -> u16 {
        32
    }

    /// One message from the callbacks queue.
    pub async fn handle(&self, d: Delivery) {
        let r: ResultMsg = match serde_json::from_slice(&d.data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, bytes = d.data.len(), "dead-lettering an unreadable callback message");
                return crate::broker::dead_letter(&d).await;
            }
        };
        if r.v != MESSAGE_VERSION {
            tracing::warn!(
                run_id = r.run_id,
                v = r.v,
                "dead-lettering a callback message of an unknown version"
            );
            return crate::broker::dead_letter(&d).await;
        }
        let Some(url) = r.callback_url.clone() else {
            crate::broker::ack(&d).await;
            return;
        };
        let body = self.run_body(&r).await;
        let shown = egress::redact(&url);
        match self.post(&url, &body).await {
            Ok(n) => {
                self.metrics.callback("delivered");
                tracing::debug!(
                    run_id = r.run_id,
                    url = shown,
                    attempts = n,
                    "callback delivered"
                );
            }
            Err(Undelivered::GaveUp(last)) => {
                self.metrics.callback("gave_up");
                tracing::warn!(
                    run_id = r.run_id,
                    url = shown,
                    attempts = self.attempts,
                    error = last,
                    "giving up on a callback"
                );
            }
            Err(Undelivered::Refused(why)) => {
                self.metrics.callback("refused");
                tracing::warn!(
                    run_id = r.run_id,
                    url = shown,
                    reason = why,
                    "callback refused by the address policy; not retried"
                );
            }
        }
        crate::broker::ack(&d).await;
    }

    /// The Run JSON of a finished run: the stored record's args and creation time, and the
    /// result message's outcome (the final record may not be stored yet).
    async fn run_body(&self, r: &ResultMsg) -> serde_json::Value {
        let stored = tokio::time::timeout(
            Duration::from_secs(3),
            self.db
                .collection::<RunDoc>(collections::RUNS)
                .find_one(bson::doc! {"_id": &r.run_id}),
        )
        .await;
        let (args_json, created_at_ms, bill_id, attempts) = match stored {
            Ok(Ok(Some(d))) => (d.args_json, d.created_at_ms, d.bill_id, d.attempts),
            _ => (
                "null".to_owned(),
                r.started_at_ms.unwrap_or(r.finished_at_ms),
                None,
                Vec::new(),
            ),
        };
        let mut doc = common::runstore::finished_doc(r, args_json, created_at_ms);
        doc.bill_id = bill_id;
        // Every attempt of an async run (its result message's billed sum covers them).
        doc.attempts = attempts;
        crate::views::run_json(&doc)
    }

    /// POSTs `body` until a 2xx answer or the attempts run out; the number of attempts made,
    /// or why not. A target the address policy refuses is not retried.
    pub async fn post(&self, url: &str, body: &serde_json::Value) -> Result<u32, Undelivered> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Undelivered::Refused(format!("not a valid URL: {e}")))?;
        egress::check_target(&parsed, &self.policy)
            .map_err(|Refused(why)| Undelivered::Refused(why))?;
        let shown = egress::redact(url);
        let mut last = String::new();
        for attempt in 0..self.attempts {
            tokio::time::sleep(backoff(self.backoff, attempt)).await;
            match self.client.post(parsed.clone()).json(body).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(attempt + 1),
                Ok(resp) => last = format!("answered {}", resp.status()),
                Err(e) => {
                    if let Some(Refused(why)) = egress::refusal(&e) {
                        return Err(Undelivered::Refused(why.clone()));
                    }
                    last = error_chain(&e.without_url());
                }
            }
            tracing::debug!(
                url = shown,
                attempt = attempt + 1,
                error = last,
                "callback attempt failed"
            );
        }
        Err(Undelivered::GaveUp(last))
    }
}

/// An error and its sources, `: `-separated (reqwest's own message alone says little).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls() {
        let public = AddressPolicy::public_only();
        let validate_url = |u: &str| validate_url(u, &public);
        assert_eq!(
            validate_url("http://8.8.8.8:9000/hook").unwrap(),
            "http://8.8.8.8:9000/hook"
        );
        assert!(validate_url("https://example.com/x?y=1").is_ok());
        // Names are checked when the callback is made; literals and credentials now.
        assert!(validate_url("http://localhost:15672/").is_ok());
        let e = validate_url("http://guest:guest@127.0.0.1:15672/api/bindings").unwrap_err();
        assert!(e.contains("credentials"), "{e}");
        let e = validate_url("http://127.0.0.1:9000/hook").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let allow = AddressPolicy::parse("127.0.0.1/32").unwrap();
        assert!(super::validate_url("http://127.0.0.1:9000/hook", &allow).is_ok());
        for bad in [
            "",
            "not a url",
            "ftp://example.com/",
            "file:///etc/passwd",
            "/relative",
            "http://",
        ] {
            assert!(validate_url(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(validate_url(&format!("http://h/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(500);
        let waits: Vec<u64> = (0..5).map(|n| backoff(b, n).as_millis() as u64).collect();
        assert_eq!(waits, [0, 500, 1000, 2000, 4000]);
        assert_eq!(backoff(b, 40), Duration::from_secs(60));
    }
}
