//! Output for people: aligned tables, money in units with its micros, short times.

use serde_json::Value;

/// An aligned table: a header row, then the rows; columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// `1234567` micros → `1.234567`.
pub fn units(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let a = micros.unsigned_abs();
    format!("{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
}

/// Money for people: `1.234567 (1234567 micros)`.
pub fn money(micros: i64) -> String {
    format!("{} ({micros} micros)", units(micros))
}

/// An amount in units (`10`, `0.5`, `2.000001`) as exact micros.
pub fn parse_units(s: &str) -> Option<i64> {
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 6
    {
        return None;
    }
    let w: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let f: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    w.checked_mul(1_000_000)?.checked_add(f)
}

/// A JSON field as text for a table cell (`-` when missing).
pub fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// An integer field, leniently (numbers, or numbers in strings).
pub fn int(v: &Value, key: &str) -> i64 {
    match v.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as i64),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Bool(b)) => *b as i64,
        _ => 0,
    }
}

/// A boolean field, leniently (`true`, `1`).
pub fn boolean(v: &Value, key: &str) -> bool {
    match v.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(Value::String(s)) => s == "true" || s == "1",
        _ => false,
    }
}

/// An RFC 3339 time shortened for a table: `2024-05-01T12:00:00.123Z` → `2024-05-01 12:00:00`.
pub fn short_time(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_str) {
        Some(t) if t.len() >= 19 => t[..19].replace('T', " "),
        Some(t) => t.to_owned(),
        None => "-".to_owned(),
    }
}

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "RUNTIME"],
            &[
                vec!["a".into(), "python3".into()],
                vec!["long-name".into(), "node".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME       RUNTIME\na          python3\nlong-name  node\n"
        );
    }

    #[test]
    fn money_is_exact() {
        assert_eq!(units(1_234_567), "1.234567");
        assert_eq!(units(-5), "-0.000005");
        assert_eq!(money(3), "0.000003 (3 micros)");
        assert_eq!(parse_units("10"), Some(10_000_000));
        assert_eq!(parse_units("0.5"), Some(500_000));
        assert_eq!(parse_units("2.000001"), Some(2_000_001));
        assert_eq!(parse_units(".25"), Some(250_000));
        for bad in ["", ".", "1.0000001", "-1", "1e3", "abc"] {
            assert_eq!(parse_units(bad), None, "{bad}");
        }
    }

    #[test]
    fn lenient_fields() {
        let v = json!({"a": 1, "b": "2", "c": true, "d": 1, "t": "2024-05-01T12:00:00.123Z"});
        assert_eq!(int(&v, "a"), 1);
        assert_eq!(int(&v, "b"), 2);
        assert!(boolean(&v, "c"));
        assert!(boolean(&v, "d"));
        assert!(!boolean(&v, "x"));
        assert_eq!(short_time(&v, "t"), "2024-05-01 12:00:00");
        assert_eq!(cell(&v, "x"), "-");
    }
}
