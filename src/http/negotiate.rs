//! What the client sent and what it accepts: query parameters, bodies (JSON or YAML), and the
//! representation of the response (object, Table, PartialObjectMetadata).
use super::limits::{MAX_BODY_BYTES, MAX_BODY_DISCARDED_BYTES};
use super::protobuf;
use crate::error::{ApiError, ApiResult};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::request::Parts;
use http::HeaderMap;
use serde_json::Value;
use std::collections::HashMap;

/// Query parameters by name (the last value wins, except where noted).
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A copy with `name` set to `value`.
    pub fn with(mut self, name: &str, value: String) -> Self {
        self.0.insert(name.to_string(), value);
        self
    }

    pub fn flag(&self, name: &str) -> ApiResult<bool> {
        match self.get(name) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "{name} must be true or false, not {other:?}"
            ))),
        }
    }

    pub fn number(&self, name: &str) -> ApiResult<Option<u64>> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "{name} must be a non-negative integer, not {v:?}"
                    ))
                })
            })
            .transpose()
    }

    /// `dryRun=All` (the only value Kubernetes defines).
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "dryRun must be \"All\", not {other:?}"
            ))),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Params)
    }
}

/// `a=1&b=x+y`: percent-decoded, `+` as a space. A name or value that is not UTF-8 once decoded
/// is a 400, never silently replaced by U+FFFD (which could select or name something else).
fn parse_query(query: &str) -> ApiResult<HashMap<String, String>> {
    let decode = |s: &str| {
        let plus_as_space = s.replace('+', " ");
        percent_encoding::percent_decode_str(&plus_as_space)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "the query parameter {s:?} is not valid UTF-8 once percent-decoded"
                ))
            })
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// The parameters of the route's path (`{namespace}`, `{name}`), percent-decoded. A segment
/// that is not UTF-8 once decoded (`/ipprefixes/%ff`) is a 400 `Status`, as every error.
pub struct PathParams(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for PathParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathParams(p))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// A request body, read with a size limit; too large is a 413 `Status`.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let mut chunks = req.into_body().into_data_stream();
        let mut body = BytesMut::new();
        let mut read = 0usize;
        while let Some(chunk) = chunks.next().await {
            // A body cut off midway: the client is gone or broke the framing.
            let chunk = chunk.map_err(|e| {
                ApiError::BadRequest(format!("the request body could not be read: {e}"))
            })?;
            read = read.saturating_add(chunk.len());
            if read <= MAX_BODY_BYTES {
                body.extend_from_slice(&chunk);
            } else if read > MAX_BODY_BYTES + MAX_BODY_DISCARDED_BYTES {
                break;
            } else {
                // Too large: read on without keeping it, so a client still sending gets the
                // 413 rather than a connection reset under its upload.
                body = BytesMut::new();
            }
        }
        if read > MAX_BODY_BYTES {
            return Err(ApiError::RequestEntityTooLarge(format!(
                "the request body is larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        Ok(Body(body.freeze()))
    }
}

/// The media type of a Content-Type or Accept entry, lower-cased, without parameters.
fn essence(media: &str) -> String {
    media
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Parse a create/update body: JSON, or YAML (which kubectl and people also send).
pub fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    match essence(content_type).as_str() {
        "application/json" | "" => parse_json(body),
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_yaml(body),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {other})"
        ))),
    }
}

/// Whether the body is YAML by its `Content-Type` (else JSON; `parse_body` refused others).
pub fn body_is_yaml(headers: &HeaderMap) -> bool {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    matches!(
        essence(content_type).as_str(),
        "application/yaml" | "application/x-yaml" | "text/yaml"
    )
}

pub fn parse_json(body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

pub fn parse_yaml(body: &[u8]) -> ApiResult<Value> {
    let v = super::yaml::parse(body)?;
    if v.is_null() {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    Ok(v)
}

/// How the response should represent objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    Object {
        yaml: bool,
    },
    Table {
        beta: bool,
    },
    PartialObjectMetadata {
        beta: bool,
    },
    /// `meta.k8s.io/v1` PartialObjectMetadata in protobuf: what kube-controller-manager's
    /// metadata informers ask for first.
    PartialObjectMetadataProtobuf,
    /// Aggregated discovery, only meaningful on /apis and /api.
    Discovery {
        beta: bool,
    },
}

/// Pick the first acceptable representation from the Accept header, in order, as Kubernetes
/// does; 406 when none is served.
pub fn negotiate(headers: &HeaderMap) -> ApiResult<Representation> {
    let accept = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return Ok(Representation::Object { yaml: false });
    }
    for entry in accept.split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params: HashMap<String, String> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let json_like = matches!(media.as_str(), "application/json" | "*/*" | "application/*");
        let yaml = media == "application/yaml";
        let group = params.get("g").map(String::as_str);
        let version = params.get("v").map(String::as_str);
        if media == protobuf::MEDIA_TYPE {
            // Only metadata has a protobuf schema here, as for a custom resource.
            let metadata = matches!(
                params.get("as").map(String::as_str),
                Some("PartialObjectMetadata" | "PartialObjectMetadataList")
            );
            if metadata && group == Some("meta.k8s.io") && version == Some("v1") {
                return Ok(Representation::PartialObjectMetadataProtobuf);
            }
            continue;
        }
        if !json_like && !yaml {
            continue;
        }
        match params.get("as").map(String::as_str) {
            None => return Ok(Representation::Object { yaml }),
            Some(kind) if json_like => {
                let beta = version == Some("v1beta1");
                let meta =
                    group == Some("meta.k8s.io") && matches!(version, Some("v1") | Some("v1beta1"));
                match kind {
                    "Table" if meta => return Ok(Representation::Table { beta }),
                    "PartialObjectMetadata" | "PartialObjectMetadataList" if meta => {
                        return Ok(Representation::PartialObjectMetadata { beta })
                    }
                    "APIGroupDiscoveryList"
                        if group == Some("apidiscovery.k8s.io")
                            && matches!(version, Some("v2") | Some("v2beta1")) =>
                    {
                        return Ok(Representation::Discovery {
                            beta: version == Some("v2beta1"),
                        })
                    }
                    _ => continue,
                }
            }
            Some(_) => continue,
        }
    }
    Err(ApiError::NotAcceptable(format!(
        "none of the media types in Accept ({accept}) is served; use application/json, optionally with as=Table or as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, v.parse().unwrap());
        h
    }

    #[test]
    fn kubectl_get_gets_a_table() {
        let h = accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json");
        assert_eq!(
            negotiate(&h).unwrap(),
            Representation::Table { beta: false }
        );
    }

    #[test]
    fn garbage_collector_gets_partial_metadata_in_protobuf() {
        let h = accept("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json");
        assert_eq!(
            negotiate(&h).unwrap(),
            Representation::PartialObjectMetadataProtobuf
        );
    }

    #[test]
    fn protobuf_of_anything_but_v1_metadata_falls_through_to_json() {
        let h = accept("application/vnd.kubernetes.protobuf;as=Table;g=meta.k8s.io;v=v1,application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1");
        assert_eq!(
            negotiate(&h).unwrap(),
            Representation::PartialObjectMetadata { beta: true }
        );
    }

    #[test]
    fn unserved_representations_are_406() {
        assert_eq!(
            negotiate(&accept("application/vnd.kubernetes.protobuf"))
                .unwrap_err()
                .code(),
            406
        );
        assert_eq!(
            negotiate(&accept("application/json;as=Foo;g=meta.k8s.io;v=v1"))
                .unwrap_err()
                .code(),
            406
        );
        assert_eq!(
            negotiate(&accept("*/*")).unwrap(),
            Representation::Object { yaml: false }
        );
    }

    #[test]
    fn query_parameters_are_decoded_and_must_be_utf8() {
        let q = parse_query("labelSelector=a%3Db+c&&flag&x=%E2%9C%93").unwrap();
        assert_eq!(q["labelSelector"], "a=b c");
        assert_eq!(q["flag"], "");
        assert_eq!(q["x"], "✓");
        assert_eq!(parse_query("fieldManager=%ff").unwrap_err().code(), 400);
        assert_eq!(parse_query("%c3=1").unwrap_err().code(), 400);
    }

    #[test]
    fn bodies_must_be_json_or_yaml() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_body(&h, b"{\"a\":1}").unwrap()["a"], 1);
        assert_eq!(parse_body(&h, b"{nope").unwrap_err().code(), 400);
        h.insert(
            http::header::CONTENT_TYPE,
            "application/yaml".parse().unwrap(),
        );
        assert_eq!(parse_body(&h, b"a: 1\n").unwrap()["a"], 1);
        h.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(parse_body(&h, b"a").unwrap_err().code(), 415);
    }
}
