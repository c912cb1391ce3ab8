//! Formatting for people: money from integer micros (never floats), times, durations, ids; and
//! parsing the money and resource numbers people type.

/// Micros as units with 6 decimals: `1234567` → `"1.234567"`, `-5` → `"-0.000005"`.
pub fn money(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

/// Parses units typed by a person (`"10"`, `"10.5"`, `"0.000001"`, `"1,000.25"`) into micros.
/// Refuses negatives, more than 6 decimals and overflow, with a sentence saying why.
pub fn parse_money(s: &str) -> Result<i64, String> {
    let t: String = s
        .trim()
        .chars()
        .filter(|c| *c != ',' && *c != '_')
        .collect();
    if t.is_empty() {
        return Err("enter an amount, e.g. 10.00".into());
    }
    if t.starts_with('-') {
        return Err("the amount must be more than 0".into());
    }
    let (whole, frac) = t.split_once('.').unwrap_or((&t, ""));
    let digits = |x: &str| x.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return Err(format!("“{}” is not an amount; write e.g. 10.50", s.trim()));
    }
    if frac.len() > 6 {
        return Err("at most 6 decimals (one micro-unit is 0.000001)".into());
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| "the amount is too large".to_owned())?
    };
    let frac_micros: i64 = format!("{frac:0<6}").parse().unwrap_or(0);
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac_micros))
        .ok_or_else(|| "the amount is too large".to_owned())
}

/// Milliseconds since the epoch as `2026-11-28 08:30:12 UTC`.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "–".into())
}

/// A duration in milliseconds: `850 ms`, `12.345 s`, `3 min 05 s`.
pub fn duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{}.{:03} s", ms / 1_000, ms % 1_000)
    } else {
        format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1_000)
    }
}

/// The last 8 characters of an id, for tables (links carry the whole id). The end, because
/// time-ordered ids (UUIDv7) share their first characters for a minute at a time.
pub fn short_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().filter(|c| *c != '-').collect();
    chars[chars.len().saturating_sub(8)..].iter().collect()
}

/// A status as a person reads it: `timed_out` → `timed out`.
pub fn status_label(s: &str) -> String {
    s.replace('_', " ")
}

/// `500 millicores CPU · 128 MB memory · 64 MB disk`.
pub fn resources(r: &schemas::Resources) -> String {
    format!(
        "{} millicores CPU · {} MB memory · {} MB disk",
        r.cpu_millicores, r.memory_mb, r.disk_mb
    )
}

/// A bytes count for people: `812 B`, `12.4 KB`, `3.0 MB` (integer arithmetic).
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{}.{} KB", n / 1024, (n % 1024) * 10 / 1024)
    } else {
        let mb = 1024 * 1024;
        format!("{}.{} MB", n / mb, (n % mb) * 10 / mb)
    }
}

/// Parses a positive whole number field; the error names the field.
pub fn parse_positive(label: &str, s: &str, max: u64) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err(format!("{label} must be at least 1")),
        Ok(v) if v > max => Err(format!("{label} must be at most {max}")),
        Ok(v) => Ok(v),
        Err(_) if s.trim().is_empty() => Err(format!("enter the {label}")),
        Err(_) => Err(format!(
            "{label} must be a whole number, not “{}”",
            s.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_integer_formatted() {
        assert_eq!(money(0), "0.000000");
        assert_eq!(money(1_234_567), "1.234567");
        assert_eq!(money(-5), "-0.000005");
        assert_eq!(money(i64::MIN), "-9223372036854.775808");
        assert_eq!(money(i64::MAX), "9223372036854.775807");
    }

    #[test]
    fn money_parses_what_people_type() {
        assert_eq!(parse_money("10"), Ok(10_000_000));
        assert_eq!(parse_money(" 10.5 "), Ok(10_500_000));
        assert_eq!(parse_money("0.000001"), Ok(1));
        assert_eq!(parse_money(".25"), Ok(250_000));
        assert_eq!(parse_money("1,000.25"), Ok(1_000_250_000));
        assert!(parse_money("0.0000001").is_err());
        assert!(parse_money("-1").is_err());
        assert!(parse_money("abc").is_err());
        assert!(parse_money("").is_err());
        assert!(parse_money(".").is_err());
        assert!(parse_money("99999999999999999999").is_err());
        for m in [0, 1, 999_999, 1_000_000, 123_456_789_012] {
            assert_eq!(parse_money(&money(m)), Ok(m));
        }
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.345 s");
        assert_eq!(duration(185_000), "3 min 05 s");
        assert_eq!(status_label("timed_out"), "timed out");
        assert_eq!(bytes(1536), "1.5 KB");
        assert_eq!(short_id("0192f0c1-aaaa-7bbb-8ccc-0123456789ab"), "456789ab");
        assert_eq!(short_id("b1"), "b1");
    }

    #[test]
    fn positive_numbers() {
        assert_eq!(parse_positive("memory", "128", 1024), Ok(128));
        assert!(parse_positive("memory", "0", 1024).is_err());
        assert!(parse_positive("memory", "2048", 1024).is_err());
        assert!(parse_positive("memory", "12x", 1024)
            .unwrap_err()
            .contains("whole number"));
    }
}
