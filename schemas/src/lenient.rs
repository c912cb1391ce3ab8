//! Serde helpers that read values back the same whatever server stored them: a boolean may come
//! back as an integer (0/1) from some MongoDB-wire servers.

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
    fn accepts_bool_and_int() {
        let t: T = bson::from_document(bson::doc! {"b": 1_i32}).unwrap();
        assert!(t.b);
        let t: T = bson::from_document(bson::doc! {"b": false}).unwrap();
        assert!(!t.b);
        let t: T = serde_json::from_str(r#"{"b": 0}"#).unwrap();
        assert!(!t.b);
    }
}
