//! Schedule expressions (pure logic): `rate(<n> <unit>)` with units seconds, minutes, hours
//! and days (`second`, `minute`, ... for n = 1, as on AWS), and `cron(<minute> <hour>
//! <day-of-month> <month> <day-of-week>)` in UTC with `*`, lists `a,b`, ranges `a-b` and steps
//! `*/n` / `a-b/n`; day-of-week 0–7 (0 and 7 are Sunday). As in Vixie cron, when both
//! day-of-month and day-of-week are restricted a day matching either fires.
//!
//! Ticks of a rate are `anchor + k × period` (the anchor is the schedule's creation time,
//! rounded up to a whole second); ticks of a cron are the matching minutes.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// One tick every `period_ms`.
    Rate {
        period_ms: i64,
    },
    Cron(Box<Cron>),
}

/// The sets of a cron expression's fields (bit `i` set = value `i` matches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Day-of-month was `*` (then only the day-of-week restricts days).
    any_day: bool,
    /// Day-of-week was `*`.
    any_weekday: bool,
}

/// Longest expression accepted.
pub const MAX_EXPRESSION: usize = 256;

impl Expr {
    /// Parses `rate(...)` or `cron(...)`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Expr, String> {
        let s = s.trim();
        if s.len() > MAX_EXPRESSION {
            return Err(format!("longer than {MAX_EXPRESSION} characters"));
        }
        if let Some(inner) = s.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
            return parse_rate(inner);
        }
        if let Some(inner) = s.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
            return Cron::parse(inner).map(|c| Expr::Cron(Box::new(c)));
        }
        Err(format!(
            "{s:?} is neither rate(<n> <unit>) (units: seconds, minutes, hours, days) nor cron(<minute> <hour> <day-of-month> <month> <day-of-week>)"
        ))
    }

    /// The shortest interval between two ticks (a cron's is at least one minute).
    pub fn min_interval_ms(&self) -> i64 {
        match self {
            Expr::Rate { period_ms } => *period_ms,
            Expr::Cron(_) => 60_000,
        }
    }

    /// The first tick strictly after `after_ms` (`anchor_ms` places a rate's ticks).
    pub fn next_after(&self, anchor_ms: i64, after_ms: i64) -> i64 {
        match self {
            Expr::Rate { period_ms } => {
                let p = *period_ms;
                if after_ms < anchor_ms {
                    return anchor_ms;
                }
                anchor_ms + ((after_ms - anchor_ms) / p + 1) * p
            }
            Expr::Cron(c) => c.next_after(after_ms),
        }
    }
}

/// The environment variable naming the shortest interval a schedule may have (default one
/// minute); the portal (which refuses shorter expressions) reads it too, or its twin
/// [`PORTAL_MIN_SCHEDULE_ENV`] when set, so both agree.
pub const MIN_SCHEDULE_ENV: &str = "DISPATCHER_MIN_SCHEDULE";
/// The portal's override of [`MIN_SCHEDULE_ENV`].
pub const PORTAL_MIN_SCHEDULE_ENV: &str = "PORTAL_MIN_SCHEDULE";

/// The shortest interval between ticks, in ms, from the first of `keys` set in `env`
/// (a duration such as `1m` or `1s`); at least one second.
pub fn min_schedule_ms(
    env: &crate::config::Env,
    keys: &[&str],
) -> Result<i64, crate::config::ConfigError> {
    for key in keys {
        if let Some(raw) = env.get(*key).filter(|v| !v.trim().is_empty()) {
            let d = crate::config::parse_duration(raw.trim())
                .map_err(|e| crate::config::ConfigError::new(*key, e))?;
            if d < std::time::Duration::from_secs(1) {
                return Err(crate::config::ConfigError::new(*key, "must be at least 1s"));
            }
            return Ok(d.as_millis() as i64);
        }
    }
    Ok(schemas::schedules::DEFAULT_MIN_SCHEDULE_MS)
}

/// The run id of schedule `schedule_id`'s tick at `tick_ms`: the same on every dispatcher
/// (a UUID of version 8 whose bits are the first 16 bytes of SHA-256 of
/// `"schedule:<id>@<tick_ms>"`), so the run record inserted under it before the invocation is
/// published makes a tick start at most one run, across failovers too.
pub fn tick_run_id(schedule_id: &str, tick_ms: i64) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("schedule:{schedule_id}@{tick_ms}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

/// A rate schedule's anchor: `created_ms` rounded up to a whole second.
pub fn rate_anchor(created_ms: i64) -> i64 {
    (created_ms + 999).div_euclid(1000) * 1000
}

fn parse_rate(inner: &str) -> Result<Expr, String> {
    let mut parts = inner.split_whitespace();
    let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "rate({inner}) must be rate(<n> <unit>), e.g. rate(5 minutes)"
        ));
    };
    let n: i64 = n
        .parse()
        .ok()
        .filter(|n| *n > 0 && *n <= 1_000_000)
        .ok_or_else(|| format!("{n:?} is not a whole number from 1 to 1000000"))?;
    let unit_ms = match unit {
        "seconds" | "second" => 1000,
        "minutes" | "minute" => 60_000,
        "hours" | "hour" => 3_600_000,
        "days" | "day" => 86_400_000,
        other => {
            return Err(format!(
                "{other:?} is not a unit: use seconds, minutes, hours or days"
            ))
        }
    };
    if n > 1 && !unit.ends_with('s') {
        return Err(format!("use the plural unit for {n}: {unit}s"));
    }
    Ok(Expr::Rate {
        period_ms: n * unit_ms,
    })
}

/// One field's set as bits, within `lo..=hi`.
fn field(s: &str, lo: u32, hi: u32, name: &str) -> Result<(u64, bool), String> {
    let bad = |why: String| format!("{name} field {s:?}: {why}");
    let mut bits = 0u64;
    let star = s == "*";
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st
                    .parse()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| bad(format!("step {st:?} is not a positive number")))?;
                (r, st)
            }
            None => (part, 1),
        };
        let num = |t: &str| -> Result<u32, String> {
            t.parse::<u32>()
                .ok()
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| bad(format!("{t:?} is not a number from {lo} to {hi}")))
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(bad(format!("range {a}-{b} is backwards")));
            }
            (a, b)
        } else {
            let a = num(range)?;
            // `a/n` means from a to the end, as in Vixie cron.
            (a, if step > 1 { hi } else { a })
        };
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Cron {
    /// Parses the five fields.
    pub fn parse(s: &str) -> Result<Cron, String> {
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "cron({s}) must have 5 fields (minute hour day-of-month month day-of-week), not {}",
                f.len()
            ));
        }
        let (minutes, _) = field(f[0], 0, 59, "minute")?;
        let (hours, _) = field(f[1], 0, 23, "hour")?;
        let (days, any_day) = field(f[2], 1, 31, "day-of-month")?;
        let (months, _) = field(f[3], 1, 12, "month")?;
        let (mut weekdays, any_weekday) = field(f[4], 0, 7, "day-of-week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: (weekdays & 0x7f) as u8,
            any_day,
            any_weekday,
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first matching minute strictly after `after_ms`; `i64::MAX` if none within 5 years
    /// (e.g. `cron(0 0 31 2 *)`).
    pub fn next_after(&self, after_ms: i64) -> i64 {
        let start = after_ms.div_euclid(60_000) * 60_000 + 60_000;
        let Some(mut t) = Utc.timestamp_millis_opt(start).single() else {
            return i64::MAX;
        };
        let limit = t + Duration::days(366 * 5);
        while t < limit {
            if self.months & (1 << t.month()) == 0 || !self.day_matches(&t) {
                // The next day's midnight.
                t = (t.date_naive() + Duration::days(1))
                    .and_hms_opt(0, 0, 0)
                    .map(|d| d.and_utc())
                    .unwrap_or(limit);
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.with_minute(0).unwrap_or(t) + Duration::hours(1);
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t += Duration::minutes(1);
                continue;
            }
            return t.timestamp_millis();
        }
        i64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn tick_run_ids_are_deterministic_uuids() {
        let a = tick_run_id("s1", 60_000);
        assert_eq!(a, tick_run_id("s1", 60_000));
        assert_ne!(a, tick_run_id("s1", 120_000));
        assert_ne!(a, tick_run_id("s2", 60_000));
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 8);
    }

    #[test]
    fn rates() {
        assert_eq!(
            Expr::parse("rate(5 minutes)").unwrap(),
            Expr::Rate { period_ms: 300_000 }
        );
        assert_eq!(
            Expr::parse(" rate(1 second) ").unwrap(),
            Expr::Rate { period_ms: 1000 }
        );
        assert_eq!(
            Expr::parse("rate(1 seconds)").unwrap(),
            Expr::Rate { period_ms: 1000 }
        );
        assert_eq!(
            Expr::parse("rate(2 days)").unwrap().min_interval_ms(),
            172_800_000
        );
        for bad in [
            "rate(0 minutes)",
            "rate(-1 minutes)",
            "rate(1.5 minutes)",
            "rate(5 minute)",
            "rate(5 weeks)",
            "rate(5)",
            "rate(5 minutes extra)",
            "rate 5 minutes",
            "every 5 minutes",
            "",
            "rate(99999999999 days)",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
        let r = Expr::Rate { period_ms: 1000 };
        assert_eq!(r.next_after(5000, 0), 5000);
        assert_eq!(r.next_after(5000, 5000), 6000);
        assert_eq!(r.next_after(5000, 5999), 6000);
        assert_eq!(rate_anchor(1001), 2000);
        assert_eq!(rate_anchor(2000), 2000);
    }

    #[test]
    fn cron_fields() {
        for bad in [
            "cron(* * * *)",
            "cron(60 * * * *)",
            "cron(* 24 * * *)",
            "cron(* * 0 * *)",
            "cron(* * * 13 *)",
            "cron(* * * * 8)",
            "cron(5-1 * * * *)",
            "cron(*/0 * * * *)",
            "cron(a * * * *)",
            "cron(* * * * * *)",
            "cron(1,,2 * * * *)",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Expr::parse("cron(* * * * *)").unwrap().min_interval_ms(),
            60_000
        );
    }

    fn next(expr: &str, after: &str) -> String {
        let Expr::Cron(c) = Expr::parse(expr).unwrap() else {
            panic!("not a cron")
        };
        gateway_fmt(c.next_after(at(after)))
    }

    fn gateway_fmt(ms: i64) -> String {
        Utc.timestamp_millis_opt(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn cron_next() {
        assert_eq!(
            next("cron(* * * * *)", "2026-12-07T04:05:30Z"),
            "2026-12-07T04:06:00Z"
        );
        assert_eq!(
            next("cron(* * * * *)", "2026-12-07T04:06:00Z"),
            "2026-12-07T04:07:00Z"
        );
        assert_eq!(
            next("cron(*/15 * * * *)", "2026-12-07T04:05:00Z"),
            "2026-12-07T04:15:00Z"
        );
        assert_eq!(
            next("cron(0 9 * * *)", "2026-12-07T09:00:00Z"),
            "2026-12-08T09:00:00Z"
        );
        assert_eq!(
            next("cron(30 2 1 * *)", "2026-12-07T00:00:00Z"),
            "2027-01-01T02:30:00Z"
        );
        // 2026-12-07 is a Monday; Saturday and Sunday (0 or 7).
        assert_eq!(
            next("cron(0 0 * * 6,7)", "2026-12-07T00:00:00Z"),
            "2026-12-12T00:00:00Z"
        );
        assert_eq!(
            next("cron(0 0 * * 0)", "2026-12-07T00:00:00Z"),
            "2026-12-13T00:00:00Z"
        );
        assert_eq!(
            next("cron(0 12 * * 1-5)", "2026-12-11T13:00:00Z"),
            "2026-12-14T12:00:00Z"
        );
        // Day-of-month or day-of-week when both are restricted.
        assert_eq!(
            next("cron(0 0 10 * 3)", "2026-12-07T01:00:00Z"),
            "2026-12-09T00:00:00Z"
        );
        assert_eq!(
            next("cron(0 0 29 2 *)", "2026-12-07T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("cron(0 10-12/2 * * *)", "2026-12-07T10:00:00Z"),
            "2026-12-07T12:00:00Z"
        );
        let Expr::Cron(c) = Expr::parse("cron(0 0 31 2 *)").unwrap() else {
            panic!()
        };
        assert_eq!(c.next_after(0), i64::MAX);
    }
}
