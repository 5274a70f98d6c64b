//! What one request may cost the server: the bounds a body and the object a patch makes must
//! stay within, whatever the client sends, so no request can exhaust memory or the stack.
use serde_json::Value;

/// The largest request body accepted, as kube-apiserver's default (`MaxRequestBodyBytes`).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How much of a body beyond [`MAX_BODY_BYTES`] is read and thrown away before the 413 is
/// sent: a client that is still uploading then reads the answer instead of a reset connection
/// (Go's server, and so kube-apiserver, drains a rejected body the same way). Larger bodies
/// get the 413 and a closed connection.
pub const MAX_BODY_DISCARDED_BYTES: usize = 4 * 1024 * 1024;

/// The largest object a patch may produce (JSON-encoded): what a PUT could send, so a patch
/// cannot make an object no body could carry.
pub const MAX_OBJECT_BYTES: usize = MAX_BODY_BYTES;

/// The most operations in one JSON patch, as kube-apiserver (`maxJSONPatchOperations`).
pub const JSON_PATCH_MAX_OPERATIONS: usize = 10_000;

/// The most bytes the `copy` operations of one JSON patch may add together, as kube-apiserver
/// (`JSONPatchMaxCopyBytes`, json-patch's `AccumulatedCopySizeLimit`): copies are the one way a
/// small patch grows an object faster than its own size.
pub const JSON_PATCH_MAX_COPY_BYTES: usize = MAX_BODY_BYTES;

/// The deepest nesting of a patched object, the same as a JSON body's (serde_json's recursion
/// limit): encoding, decoding and dropping a value recurse once per level, so a patch must not
/// nest deeper than a body can.
pub const MAX_DEPTH: usize = 128;

/// The most values (counting those inside each one) the `move` operations of one JSON patch
/// may carry deeper into the object: each such move is measured for [`MAX_DEPTH`], and a patch
/// moving a large value back and forth must not cost seconds of CPU. A patch can add or copy far
/// fewer values than this (its body and copies are 3 MiB each), so only moves meet it.
pub const JSON_PATCH_MAX_MOVED_VALUES: usize = 4_000_000;

/// The JSON-encoded length of `v`, or `None` once it exceeds `limit` (counted without
/// building the text, and stopped as soon as the limit is passed).
pub fn encoded_len_within(v: &Value, limit: usize) -> Option<usize> {
    struct Counter {
        n: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len();
            if self.n > self.limit {
                return Err(std::io::Error::other("limit exceeded"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { n: 0, limit };
    serde_json::to_writer(&mut counter, v).ok()?;
    Some(counter.n)
}

/// How many levels of arrays and objects `v` nests (a scalar is 0) and how many values it
/// holds (itself included), or `None` once more than `max_values` were counted (stopped there).
/// Recurses once per level: call it only on values inside a document already known to be at
/// most [`MAX_DEPTH`] deep.
pub fn measure(v: &Value, max_values: usize) -> Option<(usize, usize)> {
    fn walk(v: &Value, count: &mut usize, max: usize) -> Option<usize> {
        *count += 1;
        if *count > max {
            return None;
        }
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(m) => Box::new(m.values()),
            _ => return Some(0),
        };
        let mut deepest = 0;
        for child in children {
            deepest = deepest.max(walk(child, count, max)?);
        }
        Some(deepest + 1)
    }
    let mut count = 0;
    let depth = walk(v, &mut count, max_values)?;
    Some((depth, count))
}

/// How many levels of arrays and objects `v` nests (see [`measure`]).
pub fn depth(v: &Value) -> usize {
    measure(v, usize::MAX).map_or(0, |(d, _)| d)
}

/// "3 MiB" for the messages that name a limit.
pub fn human_bytes(n: usize) -> String {
    if n % (1024 * 1024) == 0 {
        format!("{} MiB", n / (1024 * 1024))
    } else if n % 1024 == 0 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

/// The object a patch produced must encode to at most [`MAX_OBJECT_BYTES`]: 413 otherwise, as
/// kube-apiserver answers an object its storage refuses as too large.
pub fn check_object_size(doc: &Value) -> crate::error::ApiResult<()> {
    match encoded_len_within(doc, MAX_OBJECT_BYTES) {
        Some(_) => Ok(()),
        None => Err(crate::error::ApiError::RequestEntityTooLarge(format!(
            "the patched object is larger than the limit of {} ({MAX_OBJECT_BYTES} bytes)",
            human_bytes(MAX_OBJECT_BYTES)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encoded_len_stops_at_the_limit() {
        let v = json!({"a": [1, 2, 3], "b": "xyz"});
        let exact = v.to_string().len();
        assert_eq!(encoded_len_within(&v, exact), Some(exact));
        assert_eq!(encoded_len_within(&v, exact - 1), None);
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": []}]})), 4);
        assert_eq!(measure(&json!({"a": [1, {"b": []}]}), 5), Some((4, 5)));
        assert_eq!(measure(&json!({"a": [1, {"b": []}]}), 4), None);
    }
}
