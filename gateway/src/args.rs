//! Checks an invocation's args against the function's `args_schema` (the seed's `Func_Args`):
//! every declared argument must be present with its type; extra keys are allowed.

use schemas::ArgType;
use serde_json::Value;

/// The JSON type name of `v`, for messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "float",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// True when `v` has type `t`: int is a JSON integer, float any number.
pub fn matches(t: ArgType, v: &Value) -> bool {
    match t {
        ArgType::Int => v.as_i64().is_some() || v.as_u64().is_some(),
        ArgType::Float => v.is_number(),
        ArgType::String => v.is_string(),
        ArgType::Bool => v.is_boolean(),
        ArgType::Object => v.is_object(),
        ArgType::Array => v.is_array(),
    }
}

/// Checks `args` against `schema`; the error names the first offending argument.
pub fn validate(schema: &[(String, ArgType)], args: &Value) -> Result<(), String> {
    if schema.is_empty() {
        return Ok(());
    }
    let Some(obj) = args.as_object() else {
        return Err(format!(
            "the args must be a JSON object with {}; got {}",
            schema
                .iter()
                .map(|(n, t)| format!("{n:?} ({})", t.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            type_name(args)
        ));
    };
    for (name, t) in schema {
        match obj.get(name) {
            None => return Err(format!("missing argument {name:?} ({})", t.as_str())),
            Some(v) if !matches(*t, v) => {
                return Err(format!(
                    "argument {name:?} must be {}, not {}",
                    t.as_str(),
                    type_name(v)
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(pairs: &[(&str, ArgType)]) -> Vec<(String, ArgType)> {
        pairs.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect()
    }

    #[test]
    fn empty_schema_accepts_anything() {
        for v in [
            json!(null),
            json!(1),
            json!("x"),
            json!([1]),
            json!({"a": 1}),
        ] {
            assert!(validate(&[], &v).is_ok());
        }
    }

    #[test]
    fn every_type() {
        use ArgType::*;
        let s = schema(&[
            ("i", Int),
            ("f", Float),
            ("s", String),
            ("b", Bool),
            ("o", Object),
            ("a", Array),
        ]);
        let good = json!({"i": -3, "f": 1.5, "s": "x", "b": true, "o": {}, "a": [], "extra": 1});
        assert!(validate(&s, &good).is_ok());
        // A float argument accepts integers too.
        let mut v = good.clone();
        v["f"] = json!(2);
        assert!(validate(&s, &v).is_ok());
        // Big unsigned integers are integers.
        v["i"] = json!(u64::MAX);
        assert!(validate(&s, &v).is_ok());

        for (key, bad, want) in [
            ("i", json!(1.5), "argument \"i\" must be int, not float"),
            ("i", json!("1"), "argument \"i\" must be int, not string"),
            (
                "f",
                json!("1.5"),
                "argument \"f\" must be float, not string",
            ),
            ("s", json!(1), "argument \"s\" must be string, not int"),
            ("b", json!(0), "argument \"b\" must be bool, not int"),
            ("o", json!([]), "argument \"o\" must be object, not array"),
            ("a", json!({}), "argument \"a\" must be array, not object"),
            ("a", json!(null), "argument \"a\" must be array, not null"),
        ] {
            let mut v = good.clone();
            v[key] = bad;
            assert_eq!(validate(&s, &v).unwrap_err(), want);
        }
    }

    #[test]
    fn missing_and_non_object() {
        let s = schema(&[("num1", ArgType::Int), ("num2", ArgType::Int)]);
        assert_eq!(
            validate(&s, &json!({"num1": 1})).unwrap_err(),
            "missing argument \"num2\" (int)"
        );
        let e = validate(&s, &json!([1, 2])).unwrap_err();
        assert!(e.contains("JSON object") && e.contains("\"num1\""), "{e}");
    }
}
