//! The gateway's metrics: requests by route and status, a request latency histogram, the two
//! stages an invocation waits on before it is accepted (the broker's publish confirm, the pending
//! record's write), accepted invocations, callbacks and the RabbitMQ connection, rendered as
//! Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::metrics::{Registry, Value};

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A cumulative Prometheus histogram.
#[derive(Debug, Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {cumulative}\n"));
        }
        let count = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str(&format!("{name}_sum {sum}\n{name}_count {count}\n"));
    }
}

/// Handles to the gateway's metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    latency: Arc<Histogram>,
    publish: Arc<Histogram>,
    record: Arc<Histogram>,
    pub amqp_connected: Value,
    pub amqp_reconnects: Value,
    pub sync_waiting: Value,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::default();
        Metrics {
            amqp_connected: registry.gauge(
                "colorfaas_gateway_amqp_connected",
                "1 while connected to RabbitMQ",
                &[],
            ),
            amqp_reconnects: registry.counter(
                "colorfaas_gateway_amqp_reconnects_total",
                "connections to RabbitMQ re-established after a loss",
                &[],
            ),
            sync_waiting: registry.gauge(
                "colorfaas_gateway_sync_waiting",
                "sync calls waiting for their result",
                &[],
            ),
            latency: Arc::default(),
            publish: Arc::default(),
            record: Arc::default(),
            registry,
        }
    }

    /// One answered HTTP request.
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.registry
            .counter(
                "colorfaas_gateway_requests_total",
                "HTTP requests by route and status",
                &[("route", route), ("status", &status.to_string())],
            )
            .inc();
        self.latency.observe(elapsed);
    }

    /// One invocation published and confirmed by the broker (or not, within the timeout).
    pub fn publish_waited(&self, elapsed: Duration) {
        self.publish.observe(elapsed);
    }

    /// One pending run record an async acceptance waited to be stored.
    pub fn record_waited(&self, elapsed: Duration) {
        self.record.observe(elapsed);
    }

    /// One accepted invocation.
    pub fn accepted(&self, mode: schemas::Mode) {
        let mode = mode.as_str();
        self.registry
            .counter(
                "colorfaas_gateway_invocations_total",
                "invocations published to RabbitMQ, by mode",
                &[("mode", mode)],
            )
            .inc();
    }

    /// One invocation answered from an earlier run with the same `Idempotency-Key`.
    pub fn idempotent_repeat(&self) {
        self.registry
            .counter(
                "colorfaas_gateway_idempotent_repeats_total",
                "invocations answered from the run of an earlier call with the same Idempotency-Key",
                &[],
            )
            .inc();
    }

    /// One callback delivered, given up on, or refused by the address policy.
    pub fn callback(&self, outcome: &str) {
        self.registry
            .counter(
                "colorfaas_gateway_callbacks_total",
                "callbacks by outcome (delivered, gave_up, refused)",
                &[("outcome", outcome)],
            )
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = self.registry.render();
        self.latency.render(
            "colorfaas_gateway_request_duration_seconds",
            "HTTP request latency",
            &mut out,
        );
        self.publish.render(
            "colorfaas_gateway_publish_confirm_seconds",
            "from publishing an invocation to the broker's confirm",
            &mut out,
        );
        self.record.render(
            "colorfaas_gateway_pending_record_seconds",
            "from queueing an async run's pending record to its write being stored",
            &mut out,
        );
        out
    }
}

/// The metrics label of a request path.
pub fn route_label(path: &str) -> &'static str {
    if path.starts_with("/v1/invoke/") {
        "invoke"
    } else if path.starts_with("/v1/runs/") {
        "runs"
    } else if path == "/healthz" {
        "healthz"
    } else if path == "/metrics" {
        "metrics"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_and_latency() {
        let m = Metrics::new();
        m.request("invoke", 202, Duration::from_millis(3));
        m.request("invoke", 202, Duration::from_millis(300));
        m.request("runs", 404, Duration::from_secs(20));
        m.accepted(schemas::Mode::Async);
        let text = m.render();
        assert!(
            text.contains("colorfaas_gateway_requests_total{route=\"invoke\",status=\"202\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE colorfaas_gateway_request_duration_seconds histogram"));
        assert!(text.contains("colorfaas_gateway_request_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("colorfaas_gateway_request_duration_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("colorfaas_gateway_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("colorfaas_gateway_request_duration_seconds_count 3"));
        assert!(text.contains("colorfaas_gateway_invocations_total{mode=\"async\"} 1"));
        // The acceptance stages are their own histograms.
        m.publish_waited(Duration::from_micros(1500));
        m.record_waited(Duration::from_millis(40));
        let text = m.render();
        assert!(text.contains("colorfaas_gateway_publish_confirm_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("colorfaas_gateway_publish_confirm_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("colorfaas_gateway_publish_confirm_seconds_sum 0.0015"));
        assert!(text.contains("colorfaas_gateway_pending_record_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("colorfaas_gateway_pending_record_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("colorfaas_gateway_pending_record_seconds_count 1"));
        assert_eq!(route_label("/v1/invoke/adder"), "invoke");
        assert_eq!(route_label("/nope"), "other");
    }
}
