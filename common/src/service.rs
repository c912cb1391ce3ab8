//! What every service binary does once it has its configuration: build the async runtime,
//! bind the listener, run until SIGTERM or Ctrl-C, and exit non-zero when it cannot.

use std::future::Future;

/// The async runtime a service binary runs on. One thread builds a current-thread runtime:
/// tasks and I/O are polled on the calling thread, so a message handed from one task to
/// another never wakes a second thread (the hot paths here are chains of such hand-offs).
/// More threads build the work-stealing runtime with that many workers.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Runs service `name` on a runtime of `threads` threads: binds `addr` and hands the listener
/// to `run` (which serves until [`crate::shutdown::signal`]). Exits 2 when `addr` cannot be
/// bound, 1 when the runtime cannot start or `run` fails.
pub fn serve<F, Fut>(name: &str, threads: usize, addr: &str, run: F)
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match runtime(threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{name}: cannot listen on {addr}: {e}");
                std::process::exit(2);
            }
        };
        if let Err(e) = run(listener).await {
            tracing::error!(service = name, error = %format!("{e:#}"), "service failed");
            eprintln!("{name}: {e:#}");
            std::process::exit(1);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_runs_on_the_caller() {
        let caller = std::thread::current().id();
        let rt = runtime(1).unwrap();
        let ran_on = rt.block_on(async {
            tokio::spawn(async { std::thread::current().id() })
                .await
                .unwrap()
        });
        assert_eq!(ran_on, caller);
        let rt = runtime(2).unwrap();
        assert_eq!(rt.metrics().num_workers(), 2);
    }
}
