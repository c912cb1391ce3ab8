//! What every handler shares: configuration, the database, the login rate limiters, the
//! test-invocation machinery (the gateway's broker and run writer), the payment provider and the
//! metrics. Built once by [`crate::run`]; handlers hold it as `Arc<State>`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use accounts::PaymentProvider;
use common::metrics::{Registry, Value};
use mongodb::Database;

use crate::config::Config;
use crate::service::auth::{LoginLimits, SignupLimits};
use crate::service::invoke::Invoker;

/// The portal's metrics (Prometheus text at `/metrics`).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub amqp_connected: Value,
    pub logins_failed: Value,
    pub logins_limited: Value,
    pub signups_limited: Value,
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
                "colorfaas_portal_amqp_connected",
                "1 while connected to RabbitMQ (test invocations)",
                &[],
            ),
            logins_failed: registry.counter(
                "colorfaas_portal_logins_failed_total",
                "login attempts with a wrong email or password",
                &[],
            ),
            logins_limited: registry.counter(
                "colorfaas_portal_logins_limited_total",
                "login attempts refused by the rate limits",
                &[],
            ),
            signups_limited: registry.counter(
                "colorfaas_portal_signups_limited_total",
                "sign-ups refused by the per-address rate limit",
                &[],
            ),
            registry,
        }
    }

    /// One answered HTTP request; `route` is a low-cardinality label.
    pub fn request(&self, route: &str, status: u16) {
        self.registry
            .counter(
                "colorfaas_portal_requests_total",
                "HTTP requests by route and status",
                &[("route", route), ("status", &status.to_string())],
            )
            .inc();
    }
}

/// Everything the handlers (API and pages) share.
pub struct State {
    pub cfg: Config,
    pub db: Database,
    pub login: LoginLimits,
    /// Sign-ups per client address and the permits of password hashing.
    pub signup: SignupLimits,
    /// Runs `POST /functions/{name}/test` as a sync invoke.
    pub invoker: Invoker,
    /// Charges cards for top-ups (`PORTAL_PAYMENT_PROVIDER`); `None`: top-ups answer 503.
    pub provider: Option<Arc<dyn PaymentProvider>>,
    pub metrics: Metrics,
    /// Set once shutdown has begun (`/healthz` answers 503).
    pub draining: AtomicBool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("instance", &self.cfg.instance_id)
            .finish_non_exhaustive()
    }
}
