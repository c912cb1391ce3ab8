//! The contract's JSON views of stored documents (the portal reuses them).

use schemas::RunDoc;
use serde_json::{json, Map, Value};

/// Epoch milliseconds as an RFC 3339 UTC string with millisecond precision
/// (`2024-05-01T12:00:00.123Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Stored JSON text back as JSON (text that is not JSON is kept as a string).
fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The contract's Run: `{run_id, function, version, status, args, result?, error?, logs,
/// cold_start, duration_ms, billed_micros, bill_id?, created_at, started_at?, finished_at?}`.
pub fn run_json(d: &RunDoc) -> Value {
    let mut m = Map::new();
    m.insert("run_id".into(), json!(d.id));
    m.insert("function".into(), json!(d.function));
    m.insert("version".into(), json!(d.version));
    m.insert("status".into(), json!(d.status.as_str()));
    match &d.schedule_id {
        Some(id) => {
            m.insert(
                "trigger".into(),
                json!(schemas::schedules::TRIGGER_SCHEDULE),
            );
            m.insert("schedule_id".into(), json!(id));
        }
        None => {
            m.insert("trigger".into(), json!(schemas::schedules::TRIGGER_INVOKE));
        }
    }
    m.insert("args".into(), json_text(&d.args_json));
    if let Some(r) = &d.result_json {
        m.insert("result".into(), json_text(r));
    }
    if let Some(e) = &d.error {
        m.insert(
            "error".into(),
            json!({"code": e.code, "message": e.message}),
        );
    }
    m.insert("logs".into(), json!(d.logs));
    m.insert("cold_start".into(), json!(d.cold_start));
    m.insert("duration_ms".into(), json!(d.duration_ms));
    m.insert("billed_micros".into(), json!(d.billed_micros));
    if let Some(b) = &d.bill_id {
        m.insert("bill_id".into(), json!(b));
    }
    m.insert("created_at".into(), json!(rfc3339_ms(d.created_at_ms)));
    if let Some(t) = d.started_at_ms {
        m.insert("started_at".into(), json!(rfc3339_ms(t)));
    }
    if let Some(t) = d.finished_at_ms {
        m.insert("finished_at".into(), json!(rfc3339_ms(t)));
    }
    m.insert(
        "attempts".into(),
        Value::Array(d.attempts.iter().map(attempt_json).collect()),
    );
    if let Some(t) = d.next_attempt_at_ms {
        m.insert("next_attempt_at".into(), json!(rfc3339_ms(t)));
    }
    Value::Object(m)
}

/// One of a run's `attempts`: `{attempt, status, error?, duration_ms, billed_micros,
/// started_at, finished_at}`.
pub fn attempt_json(a: &schemas::Attempt) -> Value {
    let mut m = Map::new();
    m.insert("attempt".into(), json!(a.attempt));
    m.insert("status".into(), json!(a.status.as_str()));
    if let Some(e) = &a.error {
        m.insert(
            "error".into(),
            json!({"code": e.code, "message": e.message}),
        );
    }
    m.insert("duration_ms".into(), json!(a.duration_ms));
    m.insert("billed_micros".into(), json!(a.billed_micros));
    if let Some(t) = a.started_at_ms {
        m.insert("started_at".into(), json!(rfc3339_ms(t)));
    }
    m.insert("finished_at".into(), json!(rfc3339_ms(a.finished_at_ms)));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{BillState, Resources, RunError, RunStatus};

    fn doc() -> RunDoc {
        RunDoc {
            id: "r1".into(),
            user_id: "u1".into(),
            function_id: "f1".into(),
            function: "adder".into(),
            version: 2,
            status: RunStatus::Pending,
            args_json: r#"{"a":1,"$b":{"c.d":2}}"#.into(),
            result_json: None,
            error: None,
            logs: String::new(),
            cold_start: false,
            duration_ms: 0,
            resources: Resources::new(500, 128, 64),
            billed_micros: 0,
            bill_state: BillState::Unbilled,
            bill_id: None,
            worker_id: None,
            epoch: 0,
            created_at_ms: 1_714_564_800_123,
            started_at_ms: None,
            finished_at_ms: None,
            hold: None,
            attempts: Vec::new(),
            next_attempt_at_ms: None,
            dead_letter: None,
            schedule_id: None,
        }
    }

    #[test]
    fn pending_run_has_no_optional_fields() {
        let v = run_json(&doc());
        assert_eq!(
            v,
            json!({
                "run_id": "r1", "function": "adder", "version": 2, "status": "pending",
                "args": {"a": 1, "$b": {"c.d": 2}}, "logs": "", "cold_start": false,
                "duration_ms": 0, "billed_micros": 0, "created_at": "2024-05-01T12:00:00.123Z",
                "attempts": [],
                "trigger": "invoke"
            })
        );
    }

    #[test]
    fn a_waiting_retry_shows_its_attempts_and_when_the_next_is_due() {
        let mut d = doc();
        d.attempts = vec![schemas::Attempt {
            attempt: 1,
            status: RunStatus::TimedOut,
            error: Some(RunError::new("timeout", "too slow")),
            duration_ms: 100,
            billed_micros: 7,
            started_at_ms: Some(1_714_564_800_200),
            finished_at_ms: 1_714_564_800_300,
        }];
        d.next_attempt_at_ms = Some(1_714_564_801_300);
        let v = run_json(&d);
        assert_eq!(v["next_attempt_at"], "2024-05-01T12:00:01.300Z");
        assert_eq!(
            v["attempts"],
            json!([{
                "attempt": 1, "status": "timed_out",
                "error": {"code": "timeout", "message": "too slow"},
                "duration_ms": 100, "billed_micros": 7,
                "started_at": "2024-05-01T12:00:00.200Z", "finished_at": "2024-05-01T12:00:00.300Z"
            }])
        );
    }

    #[test]
    fn scheduled_runs_name_their_schedule() {
        let mut d = doc();
        d.schedule_id = Some("s1".into());
        let v = run_json(&d);
        assert_eq!(
            (v["trigger"].as_str(), v["schedule_id"].as_str()),
            (Some("schedule"), Some("s1"))
        );
    }

    #[test]
    fn finished_run_has_result_error_bill_and_times() {
        let mut d = doc();
        d.status = RunStatus::Failed;
        d.result_json = Some("[1,2]".into());
        d.error = Some(RunError::new("function_error", "boom"));
        d.bill_id = Some("b1".into());
        d.cold_start = true;
        d.duration_ms = 12;
        d.billed_micros = 3;
        d.started_at_ms = Some(1_714_564_800_200);
        d.finished_at_ms = Some(1_714_564_801_000);
        let v = run_json(&d);
        assert_eq!(v["status"], "failed");
        assert_eq!(v["result"], json!([1, 2]));
        assert_eq!(
            v["error"],
            json!({"code": "function_error", "message": "boom"})
        );
        assert_eq!(v["bill_id"], "b1");
        assert_eq!(v["cold_start"], true);
        assert_eq!(v["started_at"], "2024-05-01T12:00:00.200Z");
        assert_eq!(v["finished_at"], "2024-05-01T12:00:01.000Z");
        // Stored text that is not JSON comes back as a string rather than being lost.
        d.result_json = Some("not json".into());
        assert_eq!(run_json(&d)["result"], "not json");
    }
}
