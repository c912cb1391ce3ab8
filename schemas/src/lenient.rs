//! Reading values back the same whatever server stored them: a boolean may come back as an
//! integer (0/1) from some MongoDB-wire servers, and a number as int32, int64 or double.

use bson::Bson;

/// Any numeric BSON value as `i64` (doubles are truncated); anything else is 0.
pub fn int(v: Option<&Bson>) -> i64 {
    match v {
        Some(Bson::Int32(i)) => i64::from(*i),
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Double(f)) if f.is_finite() => *f as i64,
        Some(Bson::Boolean(b)) => i64::from(*b),
        _ => 0,
    }
}

/// A numeric field as `u64`, negative values clamped to 0.
pub fn uint(v: Option<&Bson>) -> u64 {
    int(v).max(0) as u64
}

/// A string field, if it is one.
pub fn string(v: Option<&Bson>) -> Option<&str> {
    match v {
        Some(Bson::String(s)) => Some(s),
        _ => None,
    }
}

/// `bool` that also accepts integers (non-zero is true). Writes a real boolean.
pub mod bool {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            B(bool),
            I(i64),
            F(f64),
        }
        Ok(match Any::deserialize(d)? {
            Any::B(b) => b,
            Any::I(i) => i != 0,
            Any::F(f) => f != 0.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct T {
        #[serde(with = "super::bool")]
        b: bool,
    }

    #[test]
    fn numbers_of_any_width() {
        use bson::Bson;
        assert_eq!(super::int(Some(&Bson::Int32(7))), 7);
        assert_eq!(super::int(Some(&Bson::Int64(1 << 40))), 1 << 40);
        assert_eq!(super::int(Some(&Bson::Double(3.9))), 3);
        assert_eq!(super::int(Some(&Bson::String("x".into()))), 0);
        assert_eq!(super::int(None), 0);
        assert_eq!(super::uint(Some(&Bson::Int32(-3))), 0);
        assert_eq!(super::string(Some(&Bson::String("s".into()))), Some("s"));
    }

    #[test]
    fn accepts_bool_and_int() {
        let t: T = bson::from_document(bson::doc! {"b": 1_i32}).unwrap();
        assert!(t.b);
        let t: T = bson::from_document(bson::doc! {"b": false}).unwrap();
        assert!(!t.b);
        let t: T = serde_json::from_str(r#"{"b": 0}"#).unwrap();
        assert!(!t.b);
    }
}
