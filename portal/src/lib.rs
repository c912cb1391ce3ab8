//! The developer portal: the handlebars pages (`pages`) and the `/api/v1` JSON API (`api`),
//! both on the service layer (`service`), served by warp, plus `GET /healthz` (200 only when
//! MongoDB and RabbitMQ are reachable) and `GET /metrics` (Prometheus text).
//!
//! MongoDB and RabbitMQ need not be up at start: `/healthz` says 503 and the calls that need
//! them answer 503 until they are.

pub mod api;
pub mod auth;
pub mod codecheck;
pub mod config;
pub mod error;
pub mod pages;
pub mod service;
pub mod state;
pub mod upload;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::runstore::RunWriter;
use gateway::broker::{Broker, Phase};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

pub use config::{Config, Flags};
pub use error::PortalError;
pub use state::State;

use service::auth::{LoginLimits, SignupLimits};
use service::invoke::Invoker;

/// The metrics label of a request path (low cardinality).
pub fn route_label(path: &str) -> &'static str {
    let api = |p: &str| path.starts_with(p);
    if api("/api/v1/functions") {
        if path.ends_with("/test") {
            "api_test"
        } else {
            "api_functions"
        }
    } else if api("/api/v1/runs") {
        "api_runs"
    } else if api("/api/v1/sessions") || api("/api/v1/users") {
        "api_auth"
    } else if api("/api/v1/account") || api("/api/v1/bills") || api("/api/v1/pricing") {
        "api_account"
    } else if api("/api/v1/keys") {
        "api_keys"
    } else if api("/api/") {
        "api_other"
    } else if path == "/healthz" || path == "/metrics" {
        "ops"
    } else if api("/static/") {
        "static"
    } else {
        "pages"
    }
}

async fn health(st: &State) -> Response {
    let mongo = tokio::time::timeout(Duration::from_secs(1), common::mongo::ping(&st.db))
        .await
        .is_ok_and(|r| r.is_ok());
    let amqp = st.invoker.broker.is_connected();
    let draining = st.draining.load(Ordering::SeqCst);
    let status = if mongo && amqp && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({
            "mongodb": mongo,
            "rabbitmq": amqp,
            "draining": draining,
        })),
        status,
    )
    .into_response()
}

async fn rejection(r: warp::Rejection) -> Result<Response, Infallible> {
    let e = if r.is_not_found() {
        PortalError::NoRoute
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        PortalError::MethodNotAllowed
    } else {
        PortalError::Internal(anyhow::anyhow!("unhandled rejection: {r:?}"))
    };
    Ok(e.into_response())
}

/// Every route of the portal: the JSON API, the pages, `/healthz` and `/metrics`.
pub fn routes(state: Arc<State>) -> BoxedFilter<(Response,)> {
    let st = state.clone();
    let healthz = warp::path!("healthz").and(warp::get()).then(move || {
        let st = st.clone();
        async move { health(&st).await }
    });
    let st = state.clone();
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        st.metrics
            .amqp_connected
            .set(i64::from(st.invoker.broker.is_connected()));
        let mut resp = st.metrics.registry.render().into_response();
        resp.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        resp
    });
    let m = state.metrics.clone();
    healthz
        .or(metrics)
        .unify()
        .or(api::routes(state.clone()))
        .unify()
        .or(pages::routes(state.clone()))
        .unify()
        .recover(rejection)
        .unify()
        .with(warp::log::custom(move |info| {
            m.request(route_label(info.path()), info.status().as_u16());
        }))
        .map(Reply::into_response)
        .boxed()
}

async fn ensure_indexes(db: mongodb::Database) {
    let mut failures = 0u32;
    loop {
        match common::mongo::ensure_indexes(&db).await {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %format!("{e:#}"), "creating MongoDB indexes failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    loop {
        match accounts::Prices::load_or_seed(&db).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "seeding prices failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// The configured card payment provider, if any.
fn payment_provider(
    kind: Option<config::PaymentProviderKind>,
) -> Option<Arc<dyn accounts::PaymentProvider>> {
    match kind? {
        config::PaymentProviderKind::Test => {
            tracing::warn!(
                "top-ups use the built-in TEST payment provider: any valid card number pays"
            );
            Some(Arc::new(accounts::TestProvider))
        }
    }
}

/// Runs the portal until `shutdown` resolves, then stops taking requests, lets those in flight
/// finish (at most the drain timeout) and flushes the run records of test invocations.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(instance = cfg.instance_id, backends = %cfg.backends, secrets_key = %common::secrets::describe(cfg.secrets_key.as_ref()), %addr, "portal starting");
    let db = common::mongo::connect(&cfg.backends.mongodb_uri, &cfg.backends.mongodb_db).await?;
    let indexes = tokio::spawn(ensure_indexes(db.clone()));
    let gw_metrics = gateway::metrics::Metrics::new();
    let (writer, writer_task) = RunWriter::spawn(db.clone());
    let broker = Broker::new(
        cfg.backends.amqp_url.clone(),
        cfg.backends.names(),
        format!("portal-{}", cfg.instance_id),
        cfg.publish_timeout,
        gw_metrics,
    );
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let manager = tokio::spawn(broker.clone().maintain(phase_rx, None, cfg.drain_timeout));
    let drain = cfg.drain_timeout;
    let state = Arc::new(State {
        db: db.clone(),
        login: LoginLimits::new(cfg.login_per_account, cfg.login_per_address),
        signup: SignupLimits::new(cfg.signup_per_hour, cfg.hash_concurrency),
        invoker: Invoker {
            broker,
            writer: writer.clone(),
            store: gateway::store::Store::new(db),
            inflight: Arc::new(Semaphore::new(cfg.max_inflight)),
            sync_grace: cfg.sync_grace,
            prices: accounts::PriceBook::new(),
        },
        provider: payment_provider(cfg.payment_provider),
        metrics: state::Metrics::new(),
        draining: AtomicBool::new(false),
        cfg,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let state = state.clone();
        let phase_tx = phase_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("portal draining");
            state.draining.store(true, Ordering::SeqCst);
            let _ = phase_tx.send(Phase::Draining);
            let _ = stop_tx.send(true);
        });
    }
    let pruner = {
        let state = state.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopping {
                    return;
                }
                state.login.prune();
                state.signup.prune();
                service::auth::purge_expired_sessions(&state).await;
            }
        })
    };
    let mut graceful = stop_rx.clone();
    let mut server = tokio::spawn(
        warp::serve(routes(state.clone()))
            .incoming(listener)
            .graceful(async move {
                let _ = graceful.wait_for(|s| *s).await;
            })
            .run(),
    );
    tracing::info!(%addr, "portal listening");
    let mut stop = stop_rx.clone();
    let served = tokio::select! {
        _ = &mut server => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    if !served && tokio::time::timeout(drain, &mut server).await.is_err() {
        tracing::warn!("drain timeout: abandoning requests still in flight");
        server.abort();
    }
    let _ = phase_tx.send(Phase::Stopped);
    let _ = manager.await;
    let _ = pruner.await;
    indexes.abort();
    writer.drain(common::runstore::SHUTDOWN_DRAIN).await;
    drop(writer);
    drop(state);
    if tokio::time::timeout(Duration::from_secs(5), writer_task)
        .await
        .is_err()
    {
        tracing::warn!("the run writer did not stop in time");
    }
    tracing::info!(%addr, "portal stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels() {
        assert_eq!(route_label("/api/v1/functions/a/test"), "api_test");
        assert_eq!(route_label("/api/v1/functions"), "api_functions");
        assert_eq!(route_label("/api/v1/bills/x/payments"), "api_account");
        assert_eq!(route_label("/functions/a"), "pages");
        assert_eq!(route_label("/healthz"), "ops");
    }
}
