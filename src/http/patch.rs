//! PATCH: merge, strategic-merge (as merge: our types have no patch strategies), JSON patch and
//! server-side apply, each read-modify-written through the registry's update with optimistic
//! concurrency, recording the field manager. Every kind of patch is bounded: the object it
//! makes may not exceed [`super::limits::MAX_OBJECT_BYTES`], and a JSON patch is checked per
//! operation (`json.rs`).
mod json;
mod prune;

use super::limits::check_object_size;
use super::negotiate::{parse_json, parse_yaml, Params};
use super::respond::{to_value, Served};
use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::registry::codec::decode_body;
use crate::registry::managed_fields::{self, Scope};
use crate::registry::{FieldManager, FieldValidation, Subresource};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;

/// How many times a patch is re-applied to a fresh read when a concurrent write got in between,
/// as kube-apiserver does (unless the patch itself pins a resourceVersion).
const PATCH_RETRIES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

fn patch_type(headers: &HeaderMap) -> ApiResult<PatchType> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match ct.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
        ))),
    }
}

/// The manager of a create, PUT or non-apply PATCH: `fieldManager`, else from the User-Agent.
pub fn update_manager(params: &Params, headers: &HeaderMap) -> ApiResult<FieldManager> {
    let ua = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    FieldManager::update(params.get("fieldManager"), ua)
}

/// Apply the patch in the body; returns the result, its HTTP code and warnings.
pub async fn apply_patch<K: Served>(
    app: &AppState,
    user: Option<&crate::auth::UserInfo>,
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
    let force = params.flag("force")?;
    if kind == PatchType::Apply {
        let manager = FieldManager::apply(params.get("fieldManager"), force)?;
        let config = parse_yaml(body)?;
        return server_side_apply::<K>(
            app, user, namespace, name, config, &manager, validation, sub, dry_run,
        )
        .await;
    }
    if params.get("force").is_some() {
        return Err(ApiError::BadRequest(
            "force: Forbidden: may not be specified for non-apply patch".into(),
        ));
    }
    let manager = update_manager(params, headers)?;
    let mut patch: Value = parse_json(body)?;
    let json_patch: Option<json_patch::Patch> = match kind {
        PatchType::Json => Some(json::decode(std::mem::take(&mut patch))?),
        _ => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "the patch must be a JSON object".into(),
                ));
            }
            if kind == PatchType::Strategic {
                strip_directives(&mut patch);
            }
            None
        }
    };
    let pinned_rv = patch.pointer("/metadata/resourceVersion").is_some();
    for attempt in 0..PATCH_RETRIES {
        let current = app.registry.get::<K>(namespace, name).await?;
        let mut doc = to_value(&current)?;
        match &json_patch {
            Some(p) => json::apply(&mut doc, p, K::KIND, name)?,
            None => json_patch::merge(&mut doc, &patch),
        }
        check_object_size(&doc)?;
        if !pinned_rv {
            set_resource_version(&mut doc, current.meta().resource_version.as_deref());
        }
        let (obj, mut warnings) = decode_body::<K>(doc, validation)?;
        let written = (sub == Subresource::Status).then(|| obj.clone());
        match app
            .registry
            .update_managed::<K>(namespace, name, obj, sub, dry_run, Some(&manager))
            .await
        {
            Ok(updated) => {
                if let Some(written) = written {
                    warnings.extend(super::handlers::ignored_status(&written, &updated)?);
                }
                return Ok((updated, StatusCode::OK, warnings));
            }
            Err(ApiError::Conflict { .. }) if !pinned_rv && attempt + 1 < PATCH_RETRIES => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal("patch retries exhausted".into()))
}

/// Strategic-merge directives (`$patch`, `$setElementOrder/...`, `$retainKeys`, ...) have no
/// effect on our types, which declare no patch strategies: `$patch: delete` deletes the map it
/// is in, the others are dropped.
fn strip_directives(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|k, _| !k.starts_with('$'));
        for (_, child) in m.iter_mut() {
            if child.get("$patch").and_then(Value::as_str) == Some("delete") {
                *child = Value::Null;
            } else {
                strip_directives(child);
            }
        }
    }
}

/// Server-side apply: merge the configuration into the live object under field ownership, or
/// create the object from it when it does not exist (which allocates, as any create).
#[allow(clippy::too_many_arguments)]
async fn server_side_apply<K: Served>(
    app: &AppState,
    user: Option<&crate::auth::UserInfo>,
    namespace: &str,
    name: &str,
    mut config: Value,
    manager: &FieldManager,
    validation: FieldValidation,
    sub: Subresource,
    dry_run: bool,
) -> ApiResult<(K, StatusCode, Vec<String>)> {
    let Some(meta) = config
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return Err(ApiError::BadRequest(
            "the apply configuration must be an object".into(),
        ));
    };
    if meta.remove("managedFields").is_some_and(|m| !m.is_null()) {
        return Err(ApiError::BadRequest(
            "metadata.managedFields must be nil in an apply configuration".into(),
        ));
    }
    match meta.get("name").and_then(Value::as_str) {
        Some(n) if n != name => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
        _ => {
            meta.insert("name".into(), Value::from(name));
        }
    }
    if config.get("apiVersion").is_none() || config.get("kind").is_none() {
        return Err(ApiError::BadRequest(
            "apiVersion and kind must be set in an apply configuration".into(),
        ));
    }
    // Type errors are judged on the configuration itself, before ownership; a field it leaves
    // out may be set by other managers, so what is required is judged on the merged object.
    match decode_body::<K>(config.clone(), validation) {
        Ok(_) | Err(ApiError::Invalid { .. }) => {}
        Err(e) => return Err(e),
    }
    // Fields the kind does not have are dropped (warned about, or refused when strict), as
    // Kubernetes drops them from an apply configuration: nobody owns them, and they cannot make
    // the field sets of managedFields as deep and as wide as the client likes.
    let unknown = prune::unknown_fields::<K>(&mut config);
    let config_warnings = match validation {
        FieldValidation::Strict if !unknown.is_empty() => {
            return Err(ApiError::BadRequest(format!(
                "strict decoding error: {}",
                unknown.join(", ")
            )))
        }
        FieldValidation::Ignore => Vec::new(),
        _ => unknown,
    };
    let scope = match sub {
        Subresource::Main => Scope::Main,
        Subresource::Status => Scope::Status,
    };
    let api_version = K::api_version(&());
    let pinned_rv = config.pointer("/metadata/resourceVersion").is_some();
    for attempt in 0..PATCH_RETRIES {
        let retry = !pinned_rv && attempt + 1 < PATCH_RETRIES;
        let current = match app.registry.get::<K>(namespace, name).await {
            Ok(obj) => Some(obj),
            Err(ApiError::NotFound(_)) if sub == Subresource::Main => None,
            Err(e) => return Err(e),
        };
        let (live, managed) = match &current {
            Some(obj) => (
                to_value(obj)?,
                obj.meta().managed_fields.clone().unwrap_or_default(),
            ),
            None => (
                json!({"apiVersion": api_version, "kind": K::KIND, "metadata": {"name": name}}),
                Vec::new(),
            ),
        };
        let applied = managed_fields::apply(&live, managed, &config, manager, scope, &api_version)
            .map_err(|c| managed_fields::conflict_error(K::RESOURCE, name, &api_version, &c))?;
        let mut doc = applied.object;
        check_object_size(&doc)?;
        if let (Some(obj), false) = (&current, pinned_rv) {
            set_resource_version(&mut doc, obj.meta().resource_version.as_deref());
        }
        // What is required is judged on the merged object (unknown fields were pruned from the
        // configuration above, and warned about or refused there).
        let (mut obj, mut warnings) = decode_body::<K>(doc, validation)?;
        obj.meta_mut().managed_fields = Some(applied.managed_fields).filter(|m| !m.is_empty());
        let written = (sub == Subresource::Status).then(|| obj.clone());
        let result = match current {
            Some(_) => app
                .registry
                .update_managed::<K>(namespace, name, obj, sub, dry_run, Some(manager))
                .await
                .map(|o| (o, StatusCode::OK)),
            // Apply as create is a create: same admission (`use` on the parent) as a POST.
            None => {
                super::handlers::create_admitted::<K>(app, user, namespace, obj, dry_run, manager)
                    .await
                    .map(|o| (o, StatusCode::CREATED))
            }
        };
        match result {
            Ok((obj, code)) => {
                if let Some(written) = written {
                    warnings.extend(super::handlers::ignored_status(&written, &obj)?);
                }
                return Ok((obj, code, [config_warnings, warnings].concat()));
            }
            Err(ApiError::Conflict { .. } | ApiError::AlreadyExists(_)) if retry => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal("apply retries exhausted".into()))
}

/// Pin a patched document to the resourceVersion it was made from (optimistic concurrency).
/// A patch may have turned the document or its metadata into something that is not an object;
/// that is left alone for decoding to refuse with a 400, never indexed into (which would panic).
fn set_resource_version(doc: &mut Value, resource_version: Option<&str>) {
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::from(resource_version.unwrap_or_default()),
        );
    }
}
