//! The operational HTTP endpoints every backend component serves: `GET /healthz` (200 only when
//! the component's own check says its dependencies are reachable, else 503, with a JSON body
//! naming each one) and `GET /metrics` (Prometheus text).

use std::future::Future;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio::sync::watch;
use warp::Filter;

use crate::metrics::Registry;

/// A health check: whether the component is healthy, and a JSON body that says why.
pub type HealthFuture = Pin<Box<dyn Future<Output = (bool, serde_json::Value)> + Send>>;

/// Serves `/healthz` and `/metrics` on `listener` until `stop` becomes true.
pub async fn serve<H>(
    listener: TcpListener,
    registry: Registry,
    health: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn() -> HealthFuture + Clone + Send + Sync + 'static,
{
    let healthz = warp::path("healthz").and(warp::get()).then(move || {
        let check = health();
        async move {
            let (ok, body) = check.await;
            let status = if ok {
                warp::http::StatusCode::OK
            } else {
                warp::http::StatusCode::SERVICE_UNAVAILABLE
            };
            warp::reply::with_status(warp::reply::json(&body), status)
        }
    });
    let metrics = warp::path("metrics")
        .and(warp::get())
        .map(move || registry.render());
    // Boxed: warp 0.4's server future is not spawnable otherwise.
    let routes = healthz.or(metrics).boxed();
    warp::serve(routes)
        .incoming(listener)
        .graceful(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run()
        .await;
}
