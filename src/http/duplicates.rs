//! Duplicate keys in a JSON or YAML body. Parsing into a `Value` keeps the last of them
//! silently; kube-apiserver reports each (`duplicate field "metadata.name"`): a 400 with
//! `fieldValidation=Strict`, a warning otherwise.
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// The paths of keys given twice in `body` (already known to parse), in order.
pub fn duplicate_fields(body: &[u8], yaml: bool) -> Vec<String> {
    let mut found = Vec::new();
    let walker = Walk {
        path: String::new(),
        found: &mut found,
    };
    // The body was parsed before; an error here only means nothing more to report.
    if yaml {
        let _ = walker.deserialize(serde_yaml::Deserializer::from_slice(body));
    } else {
        let _ = walker.deserialize(&mut serde_json::Deserializer::from_slice(body));
    }
    found
}

/// Visits one value at `path`, recording duplicate keys of every map inside it.
struct Walk<'f> {
    path: String,
    found: &'f mut Vec<String>,
}

impl Walk<'_> {
    fn child(&mut self, segment: &str) -> Walk<'_> {
        Walk {
            path: segment.to_string(),
            found: self.found,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<Key>()? {
            let path = match self.path.as_str() {
                "" => key.0.clone(),
                parent => format!("{parent}.{}", key.0),
            };
            if !seen.insert(key.0) {
                self.found.push(path.clone());
            }
            map.next_value_seed(self.child(&path))?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let path = format!("{}[{i}]", self.path);
            if seq.next_element_seed(self.child(&path))?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key as text (YAML keys may be numbers or booleans).
struct Key(String);

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Key, E> {
                Ok(Key("null".into()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_fields;

    #[test]
    fn json_duplicates_are_found_at_any_depth() {
        let body = br#"{"a":1,"metadata":{"name":"x","name":"y"},"spec":{"exclude":[{"k":1,"k":2}]},"a":2}"#;
        assert_eq!(
            duplicate_fields(body, false),
            ["metadata.name", "spec.exclude[0].k", "a"]
        );
        assert!(duplicate_fields(br#"{"a":{"b":1},"b":{"a":1}}"#, false).is_empty());
    }

    #[test]
    fn yaml_duplicates_are_found() {
        let body = b"metadata:\n  name: x\n  name: y\nspec: {}\n";
        assert_eq!(duplicate_fields(body, true), ["metadata.name"]);
    }
}
