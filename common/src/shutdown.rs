//! Shutdown signals: a future that resolves on SIGTERM or Ctrl-C.

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown signal received, draining");
}

/// Resolves once `flag` is true (at once if it already is, or if its sender is gone). Holds no
/// borrow of the value afterwards, so it is safe in `select!` arms whose bodies await.
pub async fn until_set(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await.map(drop);
}
