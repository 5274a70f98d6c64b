//! Object metadata: the rules every Kubernetes object follows, whatever its kind.
use crate::error::FieldError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::BTreeMap;

const DNS1123_SUBDOMAIN_MAX: usize = 253;
const DNS1123_LABEL_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const TOTAL_ANNOTATION_SIZE_MAX: usize = 256 * 1024;

/// A DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, starting and ending alphanumeric,
/// at most 253 characters. Its dot-separated parts have no length of their own (Kubernetes'
/// regex does not limit them to 63 as a DNS-1123 label is).
pub fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if s.is_empty() || !s.split('.').all(is_dns_label_chars) {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
    }
    Ok(())
}

/// A DNS-1123 label (namespace names).
pub fn validate_dns_label(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !is_dns_label_chars(s) {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into());
    }
    Ok(())
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, of any length (the callers bound the length).
fn is_dns_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A label or annotation key: `[prefix/]name`, name ≤ 63 of `[A-Za-z0-9._-]` starting and ending
/// alphanumeric, prefix a DNS subdomain.
pub fn validate_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        validate_dns_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.is_empty() || name.len() > 63 || !is_qualified_segment(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters".into());
    }
    Ok(())
}

/// A label value: empty, or ≤ 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn validate_label_value(v: &str) -> Result<(), String> {
    if v.len() > LABEL_VALUE_MAX {
        return Err(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !v.is_empty() && !is_qualified_segment(v) {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

fn is_qualified_segment(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Labels and annotations, reported under `path` (e.g. `metadata`).
pub fn validate_labels_annotations(
    path: &str,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
    errs: &mut Vec<FieldError>,
) {
    for (k, v) in labels.into_iter().flatten() {
        if let Err(e) = validate_label_key(k) {
            errs.push(FieldError::invalid(format!("{path}.labels"), k, e));
        }
        if let Err(e) = validate_label_value(v) {
            errs.push(FieldError::invalid(format!("{path}.labels"), v, e));
        }
    }
    let mut size = 0;
    for (k, v) in annotations.into_iter().flatten() {
        if let Err(e) = validate_label_key(&k.to_lowercase()) {
            errs.push(FieldError::invalid(format!("{path}.annotations"), k, e));
        }
        size += k.len() + v.len();
    }
    if size > TOTAL_ANNOTATION_SIZE_MAX {
        errs.push(FieldError::too_long(
            format!("{path}.annotations"),
            TOTAL_ANNOTATION_SIZE_MAX,
        ));
    }
}

/// The metadata rules of every object: name, labels, annotations, finalizers.
pub fn validate_object_meta(meta: &ObjectMeta, namespaced: bool, errs: &mut Vec<FieldError>) {
    match meta.name.as_deref() {
        None | Some("") => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            if let Err(e) = validate_dns_subdomain(name) {
                errs.push(FieldError::invalid(
                    "metadata.name",
                    format!("\"{name}\""),
                    e,
                ));
            }
        }
    }
    if namespaced {
        match meta.namespace.as_deref() {
            None | Some("") => errs.push(FieldError::required("metadata.namespace", "")),
            Some(ns) => {
                if let Err(e) = validate_dns_label(ns) {
                    errs.push(FieldError::invalid(
                        "metadata.namespace",
                        format!("\"{ns}\""),
                        e,
                    ));
                }
            }
        }
    } else if meta.namespace.as_deref().is_some_and(|ns| !ns.is_empty()) {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    validate_labels_annotations(
        "metadata",
        meta.labels.as_ref(),
        meta.annotations.as_ref(),
        errs,
    );
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        if let Err(e) = validate_label_key(f) {
            errs.push(FieldError::invalid(
                format!("metadata.finalizers[{i}]"),
                f,
                e,
            ));
        }
    }
    validate_owner_references(meta, errs);
}

/// Kubernetes' checks of `metadata.ownerReferences`: each names its owner completely.
fn validate_owner_references(meta: &ObjectMeta, errs: &mut Vec<FieldError>) {
    for (i, r) in meta.owner_references.iter().flatten().enumerate() {
        let fields = [
            ("apiVersion", &r.api_version, "version"),
            ("kind", &r.kind, "kind"),
            ("name", &r.name, "name"),
            ("uid", &r.uid, "uid"),
        ];
        for (field, value, what) in fields {
            if value.is_empty() {
                errs.push(FieldError::invalid(
                    format!("metadata.ownerReferences[{i}].{field}"),
                    "\"\"",
                    format!("{what} must not be empty"),
                ));
            }
        }
    }
}

/// Finalizers a write may not add: the server's own (`ipam.miloapis.com/prefix-in-use`, which
/// only the server sets on an object that waits for its children), and any finalizer at all
/// on an object being deleted, as Kubernetes. `old` is `None` on create.
pub fn validate_new_finalizers(
    new: &ObjectMeta,
    old: Option<&ObjectMeta>,
    errs: &mut Vec<FieldError>,
) {
    let had = |f: &String| {
        old.and_then(|o| o.finalizers.as_ref())
            .is_some_and(|fs| fs.contains(f))
    };
    let terminating = old.is_some_and(|o| o.deletion_timestamp.is_some());
    for (i, f) in new.finalizers.iter().flatten().enumerate() {
        if had(f) {
            continue;
        }
        let path = format!("metadata.finalizers[{i}]");
        if f == crate::api::PREFIX_IN_USE_FINALIZER {
            errs.push(FieldError::forbidden(
                path,
                format!("{f} is set by the server on a deleted object whose children are still bound; it cannot be added by a client"),
            ));
        } else if terminating {
            errs.push(FieldError::forbidden(
                path,
                "no new finalizers can be added if the object is being deleted",
            ));
        }
    }
}

/// The finalizers of `meta` other than the server's in-use finalizer.
pub fn user_finalizers(meta: &ObjectMeta) -> Vec<String> {
    meta.finalizers
        .iter()
        .flatten()
        .filter(|f| *f != crate::api::PREFIX_IN_USE_FINALIZER)
        .cloned()
        .collect()
}

/// A name from `generateName`: the prefix plus five random characters, as Kubernetes does.
pub fn generate_name(prefix: &str) -> String {
    // Kubernetes' alphabet: no vowels (no words) and no look-alike characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let suffix: String = bytes[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    let max_prefix = DNS1123_SUBDOMAIN_MAX - 5;
    let prefix = if prefix.len() > max_prefix {
        &prefix[..max_prefix]
    } else {
        prefix
    };
    format!("{prefix}{suffix}")
}

pub fn now() -> Time {
    // Kubernetes timestamps have second precision on the wire.
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Fields the server owns on create: a fresh uid, timestamps, generation 1.
pub fn prepare_for_create(meta: &mut ObjectMeta) {
    meta.uid = Some(uuid::Uuid::new_v4().to_string());
    meta.creation_timestamp = Some(now());
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    meta.generation = Some(1);
    meta.resource_version = None;
    meta.self_link = None;
}

/// Fields a client may not change on update: identity and server-owned timestamps.
pub fn keep_system_fields(new: &mut ObjectMeta, old: &ObjectMeta) {
    new.uid = old.uid.clone();
    new.creation_timestamp = old.creation_timestamp.clone();
    new.deletion_timestamp = old.deletion_timestamp.clone();
    new.deletion_grace_period_seconds = old.deletion_grace_period_seconds;
    new.generation = old.generation;
    new.generate_name = old.generate_name.clone();
    new.self_link = None;
    new.resource_version = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dns_subdomains() {
        assert!(validate_dns_subdomain("project-a.web-0").is_ok());
        for bad in ["", "Web", "-a", "a-", "a_b", "a..b", &"a".repeat(254)] {
            assert!(validate_dns_subdomain(bad).is_err(), "{bad}");
        }
        // Only the total is limited, not each dot-separated part; a namespace (a label) is.
        let long_part = format!("project-a.{}", "w".repeat(100));
        assert!(validate_dns_subdomain(&long_part).is_ok());
        assert!(validate_dns_subdomain(&"a".repeat(253)).is_ok());
        assert!(validate_dns_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn label_keys_may_have_a_dns_prefix() {
        assert!(validate_label_key("ipam.miloapis.com/tier").is_ok());
        assert!(validate_label_key("tier").is_ok());
        assert!(validate_label_key("Bad_Prefix/tier").is_err());
        assert!(validate_label_key("tier-").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("a b").is_err());
    }

    #[test]
    fn generated_names_keep_the_prefix_and_add_five_characters() {
        let n = generate_name("web-");
        assert!(n.starts_with("web-") && n.len() == 9, "{n}");
        assert!(validate_dns_subdomain(&n).is_ok());
        assert_ne!(generate_name("web-"), generate_name("web-"));
    }
}
