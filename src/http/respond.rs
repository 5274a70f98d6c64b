//! Objects and lists → responses in the negotiated representation.
use super::negotiate::Representation;
use super::protobuf;
use super::table::{self, IncludeObject, TableRow};
use crate::error::{ApiError, ApiResult};
use crate::registry::Kind;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use serde_json::Value;

/// What the HTTP layer needs of a kind beyond the registry's `Kind`.
pub trait Served: Kind + TableRow {}
impl<K: Kind + TableRow> Served for K {}

pub fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    bytes_response(
        code,
        "application/json",
        body.to_string().into_bytes(),
        warnings,
    )
}

fn bytes_response(
    code: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
    warnings: &[String],
) -> Response {
    let mut resp = (code, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    for w in warnings {
        // RFC 7234 warning: code 299, agent "-", quoted text, as kube-apiserver sends it.
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = HeaderValue::from_str(&text) {
            headers.append(http::header::WARNING, v);
        }
    }
    resp
}

fn yaml_response(code: StatusCode, body: &impl Serialize) -> ApiResult<Response> {
    let text = serde_yaml::to_string(body).map_err(|e| ApiError::Internal(format!("yaml: {e}")))?;
    let mut resp = (code, text).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    Ok(resp)
}

pub fn to_value<K: Kind>(obj: &K) -> ApiResult<Value> {
    serde_json::to_value(obj).map_err(|e| ApiError::Internal(format!("encode: {e}")))
}

pub(super) fn meta_api_version(beta: bool) -> &'static str {
    if beta {
        "meta.k8s.io/v1beta1"
    } else {
        "meta.k8s.io/v1"
    }
}

/// One object in the representation asked for.
fn object_value<K: Served>(
    obj: &K,
    repr: Representation,
    include: IncludeObject,
) -> ApiResult<Value> {
    match repr {
        Representation::Object { .. } | Representation::Discovery { .. } => to_value(obj),
        Representation::Table { .. } => Ok(table::table(
            std::slice::from_ref(obj),
            None,
            None,
            include,
            jiff::Timestamp::now(),
        )),
        Representation::PartialObjectMetadata { beta } => Ok(table::partial_object_metadata_for(
            meta_api_version(beta),
            obj.meta(),
        )),
        Representation::PartialObjectMetadataProtobuf => {
            Ok(table::partial_object_metadata(obj.meta()))
        }
    }
}

/// One object in the representation asked for, in its wire format (JSON, or protobuf for
/// metadata that asked for it). The full object, the common case, and its metadata alone are
/// written straight from the typed object: no `Value` tree in between.
pub fn object_bytes<K: Served>(
    obj: &K,
    repr: Representation,
    include: IncludeObject,
) -> ApiResult<Vec<u8>> {
    let encoded = match repr {
        Representation::Object { .. } => serde_json::to_vec(obj),
        Representation::PartialObjectMetadata { beta } => serde_json::to_vec(
            &table::PartialObjectMetadata::new(meta_api_version(beta), obj.meta()),
        ),
        Representation::PartialObjectMetadataProtobuf => {
            return Ok(protobuf::partial_object_metadata(obj.meta()))
        }
        _ => serde_json::to_vec(&object_value(obj, repr, include)?),
    };
    encoded.map_err(|e| ApiError::Internal(format!("encode: {e}")))
}

/// The Content-Type of a (non-watch) response in `repr`.
fn content_type(repr: Representation) -> &'static str {
    match repr {
        Representation::PartialObjectMetadataProtobuf => protobuf::MEDIA_TYPE,
        _ => "application/json",
    }
}

pub fn object_response<K: Served>(
    code: StatusCode,
    obj: &K,
    repr: Representation,
    include: IncludeObject,
    warnings: &[String],
) -> ApiResult<Response> {
    match repr {
        Representation::Object { yaml: true } => {
            yaml_response(code, &object_value(obj, repr, include)?)
        }
        _ => Ok(bytes_response(
            code,
            content_type(repr),
            object_bytes(obj, repr, include)?,
            warnings,
        )),
    }
}
