//! `GET /api/v1/functions/{name}/metrics?window=1h|24h|7d`: a function's runs per bucket, read
//! from the pre-aggregated buckets the run writer keeps (`common::fnmetrics`), never from the
//! runs. The series is dense (a bucket per minute for `1h`, per hour for `24h` and `7d`, empty
//! ones as zeros) and oldest first; p50 and p99 are bin upper bounds, null without runs.

use serde_json::{json, Value};

use common::fnmetrics::{self, Bucket, HOUR, MINUTE};

use super::functions;
use crate::error::PortalError;
use crate::state::State;

/// A window: its name, bucket size and number of buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub name: &'static str,
    pub size_ms: i64,
    pub buckets: i64,
}

pub const WINDOWS: [Window; 3] = [
    Window {
        name: "1h",
        size_ms: MINUTE,
        buckets: 60,
    },
    Window {
        name: "24h",
        size_ms: HOUR,
        buckets: 24,
    },
    Window {
        name: "7d",
        size_ms: HOUR,
        buckets: 168,
    },
];

/// The window named `w` (default `1h`); 400 otherwise.
pub fn window(w: Option<&str>) -> Result<Window, PortalError> {
    let w = w.map(str::trim).filter(|w| !w.is_empty()).unwrap_or("1h");
    WINDOWS.into_iter().find(|x| x.name == w).ok_or_else(|| {
        PortalError::invalid(
            "window",
            format!("{w:?} is not a window: use 1h, 24h or 7d"),
        )
    })
}

/// The dense series of `win` ending with the bucket holding `now_ms`.
pub fn series(win: Window, now_ms: i64, stored: &[Bucket]) -> Vec<Bucket> {
    let last = now_ms - now_ms.rem_euclid(win.size_ms);
    (0..win.buckets)
        .map(|i| last - (win.buckets - 1 - i) * win.size_ms)
        .map(|start| {
            stored
                .iter()
                .find(|b| b.start_ms == start)
                .cloned()
                .unwrap_or(Bucket {
                    start_ms: start,
                    ..Default::default()
                })
        })
        .collect()
}

pub fn bucket_json(b: &Bucket) -> Value {
    json!({
        "start": super::rfc3339(b.start_ms),
        "invocations": b.invocations,
        "succeeded": b.succeeded,
        "failed": b.failed,
        "timed_out": b.timed_out,
        "throttled": b.throttled,
        "cold_starts": b.cold_starts,
        "duration_ms_p50": b.percentile_ms(0.5),
        "duration_ms_p99": b.percentile_ms(0.99),
    })
}

/// The user's function's metrics over a window; 404 for another user's or no function.
pub async fn of_function(
    st: &State,
    user_id: &str,
    name: &str,
    win: Window,
) -> Result<Vec<Bucket>, PortalError> {
    let f = functions::find(st, user_id, name)
        .await?
        .ok_or(PortalError::NotFound("function"))?;
    let now = schemas::now_ms();
    let since = now - now.rem_euclid(win.size_ms) - (win.buckets - 1) * win.size_ms;
    let stored = fnmetrics::read(&st.db, user_id, &f.id, win.size_ms, since)
        .await
        .map_err(|e| PortalError::Unavailable(format!("reading metrics failed: {e:#}")))?;
    Ok(series(win, now, &stored))
}

/// The contract's answer.
pub fn metrics_json(win: Window, buckets: &[Bucket]) -> Value {
    json!({
        "window": win.name,
        "buckets": buckets.iter().map(bucket_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_dense_series() {
        assert_eq!(window(None).unwrap().name, "1h");
        assert_eq!(window(Some("7d")).unwrap().buckets, 168);
        assert_eq!(window(Some("2h")).unwrap_err().field(), Some("window"));
        let w = window(Some("24h")).unwrap();
        let now = 10 * HOUR + 5 * MINUTE;
        let stored = [Bucket {
            start_ms: 9 * HOUR,
            invocations: 4,
            ..Default::default()
        }];
        let s = series(w, now, &stored);
        assert_eq!(s.len(), 24);
        assert_eq!(s.last().unwrap().start_ms, 10 * HOUR);
        assert_eq!(s[22].invocations, 4);
        assert_eq!(s.iter().map(|b| b.invocations).sum::<u64>(), 4);
        let v = metrics_json(w, &s);
        assert_eq!(v["buckets"][22]["duration_ms_p50"], Value::Null);
    }
}
