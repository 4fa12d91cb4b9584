//! JSON bodies (`application/json`: WeChat Pay v3), part of the body step:
//! [`JsonBody`] keeps the raw bytes (the v3 signature covers them exactly)
//! and the parsed value. An object with a repeated key is malformed.

use bytes::Bytes;

use super::ParseError;

/// A JSON body: the exact bytes received and the parsed value.
#[derive(Debug, Clone)]
pub struct JsonBody {
    raw: Bytes,
    value: serde_json::Value,
}

impl JsonBody {
    /// Parses a JSON document, refusing an object with a repeated key.
    pub fn parse(body: &[u8]) -> Result<JsonBody, ParseError> {
        if body.trim_ascii().is_empty() {
            return Err(ParseError::Empty);
        }
        let strict: StrictValue = serde_json::from_slice(body).map_err(|e| ParseError::Json {
            reason: e.to_string(),
        })?;
        Ok(JsonBody {
            raw: Bytes::copy_from_slice(body),
            value: strict.0,
        })
    }

    /// The body exactly as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn value(&self) -> &serde_json::Value {
        &self.value
    }
}

/// Parses JSON that is not a body of its own (WeChat v3's decrypted
/// resource) as strictly as a body: an object with a repeated key is an
/// error, never resolved to one of its values.
pub fn strict_value(text: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::from_slice::<StrictValue>(text).map(|strict| strict.0)
}

/// A `serde_json::Value` whose objects never repeat a key.
struct StrictValue(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "key `{}` appears more than once",
                    key.chars().take(64).collect::<String>()
                )));
            }
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{Format, parse};
    use http::HeaderMap;
    use http::header::CONTENT_TYPE;

    #[test]
    fn json_keeps_raw_bytes_and_refuses_repeated_keys() {
        let raw = br#"{"b":1, "a":{"x":[1,2,{"y":null}]},"c":"\u4e3b\/"}"#;
        let j = JsonBody::parse(raw).unwrap();
        assert_eq!(j.raw(), raw);
        assert_eq!(j.value()["c"], "主/");
        assert_eq!(j.value()["a"]["x"][2]["y"], serde_json::Value::Null);
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"r":{"a":1,"a":1}}"#,
            br#"[{"a":1,"a":1}]"#,
            b"{",
            b"",
            b"{} {}",
        ] {
            assert!(
                JsonBody::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(parse(Format::Json, &h, b"{}").is_ok());
        h.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(parse(Format::Json, &h, b"{}").is_err());
    }
}
