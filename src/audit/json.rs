//! The few pieces of JSON the audit line is written with: field names as constants, values
//! escaped as serde_json escapes them. A derived `Serialize` escapes every field name and a
//! typed `Event` needs a `String` per field; by hand, a line costs one pass over its bytes.
use std::io::Write;

/// A JSON string: quoted, escaped exactly as serde_json escapes it (checked by the tests).
pub fn str(out: &mut Vec<u8>, s: &str) {
    // A fold rather than `any`: without the early exit the check is vectorized.
    if s.bytes().fold(false, |found, b| found | needs_escape(b)) {
        // Rare (a header value with a quote, a message with a newline): serde_json's escaping
        // is the reference. Writing to a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Any value with a `Serialize` impl (a request or response object).
pub fn value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let _ = serde_json::to_writer(&mut *out, v);
}

/// A value its `Display` writes, quoted; for what needs no escaping (addresses, timestamps).
pub fn display(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    let _ = write!(out, "\"{v}\"");
}

/// The fields of one JSON object, written in order; a field is skipped where the derived
/// `Serialize` of the same struct skips it (an empty string).
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    pub fn start(out: &'a mut Vec<u8>) -> Object<'a> {
        out.push(b'{');
        Object { out, first: true }
    }

    /// The field's name, for a value the caller writes next.
    pub fn key(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        // Names are this module's callers' constants: nothing to escape.
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// A string field, left out when empty.
    pub fn non_empty(&mut self, name: &str, value: &str) {
        if !value.is_empty() {
            let out = self.key(name);
            str(out, value);
        }
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut every_ascii: String = (0u8..0x80).map(char::from).collect();
        every_ascii.push_str("é ☃ \u{2028} 🦀");
        for s in ["", "plain /apis/x?y=z&w", every_ascii.as_str(), "a\"b\\c\n"] {
            let mut out = Vec::new();
            str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn an_object_leaves_out_empty_strings_and_separates_fields() {
        let mut out = Vec::new();
        let mut o = Object::start(&mut out);
        o.non_empty("a", "");
        o.non_empty("b", "x");
        o.key("c").extend_from_slice(b"1");
        o.end();
        assert_eq!(out, br#"{"b":"x","c":1}"#);
    }
}
