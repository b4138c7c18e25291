//! JSON read as a `serde_json::Value` that refuses duplicate object keys
//! at any depth, as the derived readers refuse duplicate fields: a JSON
//! package means the same whichever path reads it.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parse `text` as JSON; an object with a key given twice is an error
/// naming the key.
pub(super) fn parse(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Strict>(text).map(|s| s.0)
}

/// A [`Value`] whose objects had no duplicate key. Numbers are read as
/// serde_json reads them without its `arbitrary_precision` feature (off
/// in every crate here; `reads_what_serde_json_reads` would fail with it).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_what_serde_json_reads() {
        for text in [
            r#"{"a":1,"b":[true,null,"x",-2,3.5,18446744073709551615],"c":{"d":{}}}"#,
            "[]",
            "\"s\"",
            "0",
            "[-9223372036854775808, 18446744073709551616, -0, 1E5, 5e-324]",
            r#"{"\u0041":"\ud83d\ude00"}"#,
        ] {
            let ours = parse(text).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
        // What serde_json refuses, refused: a number out of range, and
        // nesting past its recursion limit (no stack overflow).
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for text in ["1e400", deep.as_str()] {
            assert!(serde_json::from_str::<serde_json::Value>(text).is_err());
            assert!(parse(text).is_err(), "{}", &text[..text.len().min(20)]);
        }
    }

    #[test]
    fn refuses_a_duplicate_key_at_any_depth() {
        for (text, key) in [
            (r#"{"a":1,"a":2}"#, "a"),
            (r#"{"x":[{"b":1,"c":2,"b":3}]}"#, "b"),
            (r#"{"x":{"y":{"z":1,"z":1}}}"#, "z"),
            // Keys are compared unescaped.
            (r#"{"A":1,"\u0041":2}"#, "A"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("duplicate key `{key}`")), "{text}: {e}");
        }
        // The same key in two objects is no duplicate.
        assert!(parse(r#"[{"a":1},{"a":2}]"#).is_ok());
    }
}
