//! An apply configuration keeps only the fields its kind has.
use serde_json::Value;

/// Remove from `config` every field `K` does not decode (`apiVersion` and `kind` stay);
/// returns the warnings that name them (`unknown field "spec.x"`), as decoding words them.
pub fn unknown_fields<K: serde::de::DeserializeOwned>(config: &mut Value) -> Vec<String> {
    #[derive(Debug)]
    enum Segment {
        Key(String),
        Index(usize),
    }
    fn segments(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
        use serde_ignored::Path;
        match path {
            Path::Root => {}
            Path::Seq { parent, index } => {
                segments(parent, out);
                out.push(Segment::Index(*index));
            }
            Path::Map { parent, key } => {
                segments(parent, out);
                out.push(Segment::Key(key.clone()));
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => segments(parent, out),
        }
    }
    let mut unknown: Vec<Vec<Segment>> = Vec::new();
    let mut warnings = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| {
        let mut s = Vec::new();
        segments(&path, &mut s);
        if !matches!(s.as_slice(), [Segment::Key(k)] if k == "apiVersion" || k == "kind") {
            warnings.push(format!("unknown field \"{path}\""));
            unknown.push(s);
        }
    };
    let de = serde_ignored::Deserializer::new(config.clone(), &mut record);
    // Decoding errors were reported by decode_body already; only the ignored paths matter.
    let _ = K::deserialize(de);
    // Last first, so removing an array element does not shift the index of another to remove.
    for path in unknown.iter().rev() {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let mut node = Some(&mut *config);
        for seg in parents {
            node = match (node, seg) {
                (Some(Value::Object(m)), Segment::Key(k)) => m.get_mut(k),
                (Some(Value::Array(a)), Segment::Index(i)) => a.get_mut(*i),
                _ => None,
            };
        }
        match (node, last) {
            (Some(Value::Object(m)), Segment::Key(k)) => {
                m.remove(k);
            }
            (Some(Value::Array(a)), Segment::Index(i)) if *i < a.len() => {
                a.remove(*i);
            }
            _ => {}
        }
    }
    warnings
}
