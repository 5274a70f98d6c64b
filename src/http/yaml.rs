//! YAML bodies, decoded into JSON values within a budget. An alias (`*a`) repeats its anchor's
//! whole subtree, so a small YAML document can stand for a huge one; the decoder counts what it
//! builds and stops at [`MAX_YAML_EXPANSION`] instead of materialising it.
use super::limits::{human_bytes, MAX_BODY_BYTES};
use crate::error::{ApiError, ApiResult};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::Cell;
use std::fmt;

/// What a YAML body may decode to, in bytes of the equivalent JSON: twice the body limit, as
/// plain YAML can be terser than JSON (`[a,b]`), but aliases cannot multiply it.
pub const MAX_YAML_EXPANSION: usize = 2 * MAX_BODY_BYTES;

/// Parse one YAML document into a JSON value: 400 when it is not YAML, 413 when it expands
/// past [`MAX_YAML_EXPANSION`].
pub fn parse(body: &[u8]) -> ApiResult<Value> {
    let budget = Budget {
        left: Cell::new(MAX_YAML_EXPANSION),
        exceeded: Cell::new(false),
    };
    let result = Node(&budget).deserialize(serde_yaml::Deserializer::from_slice(body));
    if budget.exceeded.get() {
        return Err(ApiError::RequestEntityTooLarge(format!(
            "the YAML body expands (through its aliases) to more than {} of JSON",
            human_bytes(MAX_YAML_EXPANSION)
        )));
    }
    result.map_err(|e| ApiError::BadRequest(format!("the request body is not valid YAML: {e}")))
}

struct Budget {
    left: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    /// Spend `n` (about the JSON length of what is being built).
    fn charge<E: serde::de::Error>(&self, n: usize) -> Result<(), E> {
        match self.left.get().checked_sub(n) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("the document is too large"))
            }
        }
    }
}

fn digits(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// One value, charged to the budget as it is built.
struct Node<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.charge(5)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.charge(digits(v.unsigned_abs()) + 2)?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.charge(digits(v) + 1)?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.charge(8)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.charge(v.len() + 3)?;
        Ok(Value::from(v))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.0.charge(v.len() + 3)?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.0.charge(5)?;
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.charge(2)?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Node(self.0))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.charge(2)?;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            self.0.charge(k.len() + 4)?;
            let v = map.next_value_seed(Node(self.0))?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_decodes_as_json_would() {
        let v = parse(b"a: 1\nb: [x, true, ~, 1.5]\nc: {d: e}\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "b": ["x", true, null, 1.5], "c": {"d": "e"}})
        );
        assert_eq!(parse(b"a: [").unwrap_err().code(), 400);
    }

    #[test]
    fn terse_yaml_as_large_as_a_body_may_be_is_decoded() {
        // Flow style is the tersest YAML: two bytes an item, four in JSON.
        let items = (MAX_BODY_BYTES - 16) / 2;
        let doc = format!("[{}a]", "a,".repeat(items - 1));
        assert_eq!(
            parse(doc.as_bytes()).unwrap().as_array().map(Vec::len),
            Some(items)
        );
    }

    #[test]
    fn aliases_that_multiply_a_document_are_413() {
        // 40 KB of YAML: an anchored list of 4,000 strings repeated by 4,000 aliases would be
        // 16 million strings (hundreds of MB) if expanded.
        let mut doc = String::from("a: &a [");
        doc.push_str(&vec!["xxxxxxxx"; 4000].join(","));
        doc.push_str("]\nb: [");
        doc.push_str(&vec!["*a"; 4000].join(","));
        doc.push_str("]\n");
        let err = parse(doc.as_bytes()).unwrap_err();
        assert_eq!(err.code(), 413, "{err}");
    }
}
