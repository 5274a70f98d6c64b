//! JSON patch (RFC 6902) within the request limits: at most [`JSON_PATCH_MAX_OPERATIONS`]
//! operations, `copy` operations adding at most [`JSON_PATCH_MAX_COPY_BYTES`] together, `move`
//! operations carrying at most [`JSON_PATCH_MAX_MOVED_VALUES`] deeper, and no operation nesting
//! the object deeper than [`MAX_DEPTH`]. Each operation is checked before it
//! is applied, so a patch that copies a map into itself is refused after a few doublings, not
//! after the server ran out of memory.
use crate::error::{ApiError, ApiResult, FieldError};
use crate::http::limits::{
    encoded_len_within, human_bytes, measure, JSON_PATCH_MAX_COPY_BYTES,
    JSON_PATCH_MAX_MOVED_VALUES, JSON_PATCH_MAX_OPERATIONS, MAX_DEPTH,
};
use json_patch::{Patch, PatchOperation};
use serde_json::Value;

/// The operations of a `application/json-patch+json` body: 400 when it is not a JSON patch,
/// 413 when it has more operations than the limit (as kube-apiserver answers).
pub fn decode(body: Value) -> ApiResult<Patch> {
    if let Some(n) = body.as_array().map(Vec::len) {
        if n > JSON_PATCH_MAX_OPERATIONS {
            return Err(ApiError::RequestEntityTooLarge(format!(
                "the allowed maximum operations in a JSON patch is {JSON_PATCH_MAX_OPERATIONS}, got {n}"
            )));
        }
    }
    serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("the JSON patch is not valid: {e}")))
}

/// Apply `patch` to `doc`, a working copy (left half-patched on error). A failed operation or
/// an exceeded limit is 422 on `kind` `name`, naming the operation and the limit.
pub fn apply(doc: &mut Value, patch: &Patch, kind: &str, name: &str) -> ApiResult<()> {
    let invalid = |message: String| {
        ApiError::invalid(
            kind,
            name,
            vec![FieldError::invalid(
                "",
                "",
                format!("the JSON patch could not be applied: {message}"),
            )],
        )
    };
    let mut copied = 0;
    let mut moved = 0;
    for (i, op) in patch.iter().enumerate() {
        let at = || format!("operation {i} ({})", op.path());
        // The value the operation puts into the document, to measure before it is placed.
        let placed: Option<&Value> = match op {
            PatchOperation::Add(o) => Some(&o.value),
            PatchOperation::Replace(o) => Some(&o.value),
            PatchOperation::Copy(o) => doc.pointer(o.from.as_str()),
            // A move keeps the value's own depth: only a move deeper can nest the object deeper.
            PatchOperation::Move(o) if o.path.count() > o.from.count() => {
                doc.pointer(o.from.as_str())
            }
            PatchOperation::Move(_) | PatchOperation::Remove(_) | PatchOperation::Test(_) => None,
        };
        if let (PatchOperation::Copy(_), Some(source)) = (op, placed) {
            match encoded_len_within(source, JSON_PATCH_MAX_COPY_BYTES - copied) {
                Some(n) => copied += n,
                None => {
                    return Err(invalid(format!(
                        "{}: the copy operations of one patch may add at most {} ({JSON_PATCH_MAX_COPY_BYTES} bytes) together",
                        at(),
                        human_bytes(JSON_PATCH_MAX_COPY_BYTES)
                    )))
                }
            }
        }
        if let Some(value) = placed {
            let is_move = matches!(op, PatchOperation::Move(_));
            let budget = if is_move {
                JSON_PATCH_MAX_MOVED_VALUES - moved
            } else {
                usize::MAX
            };
            let Some((value_depth, values)) = measure(value, budget) else {
                return Err(invalid(format!(
                    "{}: the move operations of one patch may carry at most {JSON_PATCH_MAX_MOVED_VALUES} values deeper into the object",
                    at()
                )));
            };
            if is_move {
                moved += values;
            }
            if op.path().count() + value_depth > MAX_DEPTH {
                return Err(invalid(format!(
                    "{}: the patched object may nest at most {MAX_DEPTH} levels deep",
                    at()
                )));
            }
        }
        json_patch::patch_unsafe(doc, std::slice::from_ref(op))
            .map_err(|e| invalid(format!("{}: {}", at(), e.kind)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::limits::depth;
    use serde_json::json;

    fn patch(ops: Value) -> Patch {
        decode(ops).expect("a JSON patch")
    }

    /// The 2.8 KB patch: an annotations map copied into itself, each copy doubling it.
    fn self_copies(n: usize) -> Value {
        let mut ops = vec![
            json!({"op": "add", "path": "/metadata/annotations", "value": {"a": "x".repeat(64)}}),
        ];
        for i in 0..n {
            ops.push(json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/c{i}")}));
        }
        Value::Array(ops)
    }

    #[test]
    fn copies_that_double_the_object_are_refused_at_the_copy_limit() {
        let mut doc = json!({"metadata": {"name": "x"}});
        let err = apply(&mut doc, &patch(self_copies(41)), "IPPrefixClaim", "x").unwrap_err();
        assert_eq!(err.code(), 422);
        assert!(err.to_string().contains("may add at most 3 MiB"), "{err}");
        assert!(doc.to_string().len() < 2 * JSON_PATCH_MAX_COPY_BYTES);
    }

    #[test]
    fn copies_within_the_limit_apply() {
        let mut doc = json!({"metadata": {"name": "x"}});
        apply(&mut doc, &patch(self_copies(3)), "IPPrefixClaim", "x").unwrap();
        assert_eq!(
            doc["metadata"]["annotations"]["c2"]["c1"]["c0"]["a"]
                .as_str()
                .map(str::len),
            Some(64)
        );
    }

    #[test]
    fn copies_into_themselves_cannot_nest_past_the_depth_limit() {
        // A chain of empty maps copied into its own end: tiny, but twice as deep each time.
        let mut ops = vec![json!({"op": "add", "path": "/a", "value": {}})];
        let mut path = "/a".to_string();
        for _ in 0..200 {
            ops.push(json!({"op": "copy", "from": "/a", "path": format!("{path}/b")}));
            path.push_str("/b");
        }
        let mut doc = json!({});
        let err = apply(&mut doc, &patch(Value::Array(ops)), "IPPrefix", "x").unwrap_err();
        assert!(err.to_string().contains("at most 128 levels"), "{err}");
        assert!(depth(&doc) <= MAX_DEPTH);
    }

    #[test]
    fn too_many_operations_are_413_and_failures_name_the_operation() {
        let ops =
            vec![json!({"op": "test", "path": "/a", "value": 1}); JSON_PATCH_MAX_OPERATIONS + 1];
        assert_eq!(decode(Value::Array(ops)).unwrap_err().code(), 413);
        let mut doc = json!({"a": 1});
        let err = apply(
            &mut doc,
            &patch(
                json!([{"op": "test", "path": "/a", "value": 1}, {"op": "remove", "path": "/b"}]),
            ),
            "IPPrefix",
            "x",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("operation 1 (/b): path is invalid"),
            "{err}"
        );
    }

    #[test]
    fn moving_a_large_value_deeper_again_and_again_is_refused() {
        let mut ops = vec![
            json!({"op": "add", "path": "/a", "value": vec![0; 100_000]}),
            json!({"op": "add", "path": "/x", "value": {}}),
        ];
        for _ in 0..50 {
            ops.push(json!({"op": "move", "from": "/a", "path": "/x/a"}));
            ops.push(json!({"op": "move", "from": "/x/a", "path": "/a"}));
        }
        let mut doc = json!({});
        let err = apply(&mut doc, &patch(Value::Array(ops)), "IPPrefix", "x").unwrap_err();
        assert!(
            err.to_string().contains("may carry at most 4000000 values"),
            "{err}"
        );
        // Moves that do not go deeper are not measured.
        let flat: Vec<Value> =
            std::iter::once(json!({"op": "add", "path": "/a", "value": vec![0; 100_000]}))
                .chain((0..50).flat_map(|_| {
                    [
                        json!({"op": "move", "from": "/a", "path": "/b"}),
                        json!({"op": "move", "from": "/b", "path": "/a"}),
                    ]
                }))
                .collect();
        let mut doc = json!({});
        apply(&mut doc, &patch(Value::Array(flat)), "IPPrefix", "x").unwrap();
    }
}
