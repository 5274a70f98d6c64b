//! PATCH: merge, strategic-merge (as merge: our types have no patch strategies), JSON patch and
//! apply, each read-modify-written through the registry's update with optimistic concurrency.
use super::negotiate::{parse_json, parse_yaml, Params};
use super::respond::{to_value, Served};
use super::AppState;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::registry::codec::decode_body;
use crate::registry::{FieldValidation, Subresource};
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::collections::HashMap;

/// How many times a patch is re-applied to a fresh read when a concurrent write got in between,
/// as kube-apiserver does (unless the patch itself pins a resourceVersion).
const PATCH_RETRIES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Merge,
    Json,
    Apply,
}

fn patch_type(headers: &HeaderMap) -> ApiResult<PatchType> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match ct.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => Ok(PatchType::Merge),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
        ))),
    }
}

/// Apply the patch in the body; returns the result, its HTTP code and warnings.
pub async fn apply_patch<K: Served>(
    app: &AppState,
    path: &HashMap<String, String>,
    params: &Params,
    headers: &HeaderMap,
    body: &[u8],
    sub: Subresource,
) -> ApiResult<(K, StatusCode, Vec<String>)> {
    let kind = patch_type(headers)?;
    let namespace = path
        .get("namespace")
        .map(String::as_str)
        .unwrap_or_default();
    let name = path.get("name").map(String::as_str).unwrap_or_default();
    let dry_run = params.dry_run()?;
    let validation = FieldValidation::parse(params.get("fieldValidation"))?;
    if kind == PatchType::Apply && params.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::invalid(
            K::KIND,
            name,
            vec![FieldError::required(
                "fieldManager",
                "is required for apply patch",
            )],
        ));
    }
    let patch: Value = match kind {
        PatchType::Merge | PatchType::Json => parse_json(body)?,
        PatchType::Apply => parse_yaml(body)?,
    };
    let json_patch: Option<json_patch::Patch> = match kind {
        PatchType::Json => Some(
            serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is not valid: {e}")))?,
        ),
        _ => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "the patch must be a JSON object".into(),
                ));
            }
            None
        }
    };
    let pinned_rv = patch.pointer("/metadata/resourceVersion").is_some();
    for attempt in 0..PATCH_RETRIES {
        let current = match app.registry.get::<K>(namespace, name) {
            Ok(obj) => obj,
            Err(ApiError::NotFound(_)) if kind == PatchType::Apply && sub == Subresource::Main => {
                // Server-side apply creates what does not exist (and so allocates, as any create).
                let (obj, warnings) = decode_body::<K>(patch.clone(), validation)?;
                if obj.meta().name.as_deref() != Some(name) {
                    return Err(ApiError::BadRequest(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        obj.meta().name.as_deref().unwrap_or_default()
                    )));
                }
                let created = app.registry.create::<K>(namespace, obj, dry_run).await?;
                return Ok((created, StatusCode::CREATED, warnings));
            }
            Err(e) => return Err(e),
        };
        let mut doc = to_value(&current)?;
        match &json_patch {
            Some(p) => json_patch::patch(&mut doc, p).map_err(|e| {
                ApiError::invalid(
                    K::KIND,
                    name,
                    vec![FieldError::invalid(
                        "",
                        "",
                        format!("the JSON patch could not be applied: {e}"),
                    )],
                )
            })?,
            None => json_patch::merge(&mut doc, &patch),
        }
        if !pinned_rv {
            doc["metadata"]["resourceVersion"] =
                Value::from(current.meta().resource_version.clone().unwrap_or_default());
        }
        let (obj, warnings) = decode_body::<K>(doc, validation)?;
        match app
            .registry
            .update::<K>(namespace, name, obj, sub, dry_run)
            .await
        {
            Ok(updated) => return Ok((updated, StatusCode::OK, warnings)),
            Err(ApiError::Conflict { .. }) if !pinned_rv && attempt + 1 < PATCH_RETRIES => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal("patch retries exhausted".into()))
}
