//! `X-Callback-Url`: finished runs routed to the callbacks queue are POSTed, as the contract's
//! Run JSON, to the URL the caller gave, retried with exponential back-off a bounded number of
//! times. The message is acknowledged after a success or after giving up.

use std::time::Duration;

use lapin::message::Delivery;
use mongodb::Database;
use schemas::names::collections;
use schemas::{ResultMsg, RunDoc, MESSAGE_VERSION};

use crate::metrics::Metrics;

/// Longest callback URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Checks an `X-Callback-Url` value: an absolute http(s) URL with a host.
pub fn validate_url(raw: &str) -> Result<String, String> {
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

/// Delivers callbacks.
pub struct Callbacks {
    db: Database,
    client: reqwest::Client,
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
        attempts: u32,
        backoff: Duration,
        timeout: Duration,
        metrics: Metrics,
    ) -> anyhow::Result<Callbacks> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("colorfaas-gateway")
            .build()?;
        Ok(Callbacks {
            db,
            client,
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
        match self.post(&url, &body).await {
            Ok(n) => {
                self.metrics.callback("delivered");
                tracing::debug!(run_id = r.run_id, attempts = n, "callback delivered");
            }
            Err(last) => {
                self.metrics.callback("gave_up");
                tracing::warn!(
                    run_id = r.run_id,
                    url,
                    attempts = self.attempts,
                    error = last,
                    "giving up on a callback"
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
        let (args_json, created_at_ms, bill_id) = match stored {
            Ok(Ok(Some(d))) => (d.args_json, d.created_at_ms, d.bill_id),
            _ => (
                "null".to_owned(),
                r.started_at_ms.unwrap_or(r.finished_at_ms),
                None,
            ),
        };
        let mut doc = common::runstore::finished_doc(r, args_json, created_at_ms);
        doc.bill_id = bill_id;
        crate::views::run_json(&doc)
    }

    /// POSTs `body` until a 2xx answer or the attempts run out; the number of attempts made,
    /// or the last error.
    pub async fn post(&self, url: &str, body: &serde_json::Value) -> Result<u32, String> {
        let mut last = String::new();
        for attempt in 0..self.attempts {
            tokio::time::sleep(backoff(self.backoff, attempt)).await;
            match self.client.post(url).json(body).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(attempt + 1),
                Ok(resp) => last = format!("answered {}", resp.status()),
                Err(e) => last = e.to_string(),
            }
            tracing::debug!(
                url,
                attempt = attempt + 1,
                error = last,
                "callback attempt failed"
            );
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls() {
        assert_eq!(
            validate_url("http://127.0.0.1:9000/hook").unwrap(),
            "http://127.0.0.1:9000/hook"
        );
        assert!(validate_url("https://example.com/x?y=1").is_ok());
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
