//! Objects ↔ stored bytes, and request bodies → typed objects with `fieldValidation`.
use super::kind::Kind;
use crate::error::{ApiError, ApiResult};
use crate::store::Revision;
use bytes::Bytes;
use serde_json::Value;

/// Serialize for storage. The resourceVersion is not stored: the store's revision is the truth,
/// stamped in on every read (as etcd's mod revision is).
pub fn encode<K: Kind>(obj: &K) -> ApiResult<Bytes> {
    if obj.meta().resource_version.is_none() {
        // The usual case (writers clear it): serialize once, without a `Value` in between.
        return serde_json::to_vec(obj)
            .map(Bytes::from)
            .map_err(|e| ApiError::Internal(format!("encode: {e}")));
    }
    let mut v =
        serde_json::to_value(obj).map_err(|e| ApiError::Internal(format!("encode: {e}")))?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("encode: {e}")))
}

/// An object as a JSON value (for patches and field ownership).
pub fn to_value<K: Kind>(obj: &K) -> ApiResult<Value> {
    serde_json::to_value(obj).map_err(|e| ApiError::Internal(format!("encode: {e}")))
}

pub fn decode_stored<K: Kind>(bytes: &[u8], revision: Revision) -> ApiResult<K> {
    let mut obj: K = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Internal(format!("stored {} is damaged: {e}", K::RESOURCE)))?;
    obj.meta_mut().resource_version = Some(revision.to_string());
    Ok(obj)
}

/// How unknown or duplicate fields in a request body are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn (`Warning` header). The Kubernetes default.
    #[default]
    Warn,
    /// Refuse the request with 400.
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", not {other:?}"
            ))),
        }
    }
}

/// A typed object from a request body that has already been parsed as JSON, checking
/// `apiVersion`/`kind` and unknown fields. Returns the warnings to send back.
pub fn decode_body<K: Kind>(
    value: Value,
    validation: FieldValidation,
) -> ApiResult<(K, Vec<String>)> {
    check_type_meta::<K>(&value)?;
    // For a field error's subject; the value itself goes to the deserializer.
    let body_name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| {
        let p = path.to_string();
        // kube's derived types ignore apiVersion/kind at the root: checked above.
        if p != "apiVersion" && p != "kind" {
            unknown.push(p);
        }
    };
    let de = serde_ignored::Deserializer::new(value, &mut record);
    let obj: K = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if let Some(field) = missing_field(&inner.to_string()) {
            // Well-formed but incomplete: a field error, as Kubernetes' schema validation
            // reports a required field (422 `Required value`), not a decoding failure.
            let field = match path.as_str() {
                "." | "" => field.to_string(),
                parent => format!("{parent}.{field}"),
            };
            return ApiError::invalid(
                K::KIND,
                &body_name,
                vec![crate::error::FieldError::required(field, "")],
            );
        }
        if path == "." || path.is_empty() {
            ApiError::BadRequest(format!("unable to decode {}: {inner}", K::KIND))
        } else {
            ApiError::BadRequest(format!("unable to decode {}: {path}: {inner}", K::KIND))
        }
    })?;
    let warnings: Vec<String> = unknown
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    match validation {
        FieldValidation::Strict if !warnings.is_empty() => Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            warnings.join(", ")
        ))),
        FieldValidation::Ignore => Ok((obj, Vec::new())),
        _ => Ok((obj, warnings)),
    }
}

/// The field serde found missing, from its error message (``missing field `prefix` ``).
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split('`')
        .next()
        .filter(|f| !f.is_empty())
}

fn check_type_meta<K: Kind>(value: &Value) -> ApiResult<()> {
    let Some(obj) = value.as_object() else {
        return Err(ApiError::BadRequest(format!(
            "the body must be a JSON object, a {}",
            K::KIND
        )));
    };
    let expected_version = K::api_version(&());
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v == expected_version => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected_version})"
            )))
        }
        // Kubernetes fills in a missing apiVersion/kind from the URL.
        None => {}
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k == K::KIND => Ok(()),
        Some(k) => Err(ApiError::BadRequest(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            K::KIND
        ))),
        None => Ok(()),
    }
}
