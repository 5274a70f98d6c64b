//! The OpenAPI documents: `/openapi/v2` (Swagger 2.0) and `/openapi/v3` with its one
//! group-version document, which `kubectl explain`, client-side tooling and the aggregator read.
//!
//! Schemas come from the Rust types (schemars) so they cannot drift from what the server decodes;
//! operations follow kube-apiserver's naming. The documents never change while the process runs,
//! so each is computed once.
mod paths;
mod schemas;

use paths::Flavor;
use serde_json::{json, Value};
use sha2::{Digest, Sha512};
use std::sync::LazyLock;

/// The key of our group-version in the `/openapi/v3` index.
pub const V3_GROUP_VERSION_PATH: &str = "apis/ipam.miloapis.com/v1alpha1";

static V2: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": paths::paths(Flavor::Swagger2),
        "definitions": schemas::definitions(),
    })
});

static V3: LazyLock<Value> = LazyLock::new(|| {
    let mut schemas = Value::Object(schemas::definitions());
    if let Some(defs) = schemas.as_object_mut() {
        for schema in defs.values_mut() {
            schemas::to_v3(schema);
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": paths::paths(Flavor::OpenApi3),
        "components": { "schemas": schemas },
    })
});

/// SHA-512 of the serialized group-version document, upper-case hex, as kube-apiserver's
/// `?hash=` (clients cache by URL, so the hash changes whenever the document does).
static V3_HASH: LazyLock<String> = LazyLock::new(|| {
    let bytes = serde_json::to_vec(&*V3).unwrap_or_default();
    Sha512::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
});

fn info() -> Value {
    json!({ "title": "ipam-apiserver", "version": concat!("v", env!("CARGO_PKG_VERSION")) })
}

/// `GET /openapi/v2`: Swagger 2.0 with every definition and path of the group.
/// (client-go asks for this document as protobuf; serve it only as JSON and answer a
/// protobuf-only `Accept` with 406.)
pub fn openapi_v2() -> Value {
    V2.clone()
}

/// `GET /openapi/v3`: the index of group-version documents.
pub fn openapi_v3_index() -> Value {
    json!({
        "paths": {
            V3_GROUP_VERSION_PATH: {
                "serverRelativeURL": format!(
                    "/openapi/v3/{V3_GROUP_VERSION_PATH}?hash={}",
                    openapi_v3_hash()
                ),
            },
        },
    })
}

/// `GET /openapi/v3/apis/ipam.miloapis.com/v1alpha1`: OpenAPI 3.0 document of the group-version.
pub fn openapi_v3_group_version() -> Value {
    V3.clone()
}

/// The content hash in the index's `serverRelativeURL`. When a request's `?hash=` equals it,
/// kube-apiserver answers with `Cache-Control: public, immutable`; otherwise it redirects or
/// serves with `no-cache`.
pub fn openapi_v3_hash() -> &'static str {
    &V3_HASH
}

#[cfg(test)]
mod tests;
