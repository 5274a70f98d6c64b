//! The resource endpoints, written once for every kind (`K: Served`).
use super::list::list_response;
use super::negotiate::{negotiate, parse_body, Body, Params, PathParams, Representation};
use super::patch::{apply_patch, update_manager};
use super::respond::{object_response, Served};
use super::table::IncludeObject;
use super::watch::watch_response;
use super::AppState;
use crate::audit;
use crate::auth::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::registry::codec::decode_body;
use crate::registry::selector::{contains_requirement, parse_field_selector, parse_label_selector};
use crate::registry::{
    DeleteOptions, FieldValidation, ListOptions, Preconditions, PropagationPolicy, Subresource,
    WatchOptions,
};
use crate::server::Shutdown;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::collections::HashMap;

fn namespace_of(path: &HashMap<String, String>) -> &str {
    path.get("namespace")
        .map(String::as_str)
        .unwrap_or_default()
}

fn name_of(path: &HashMap<String, String>) -> &str {
    path.get("name").map(String::as_str).unwrap_or_default()
}

fn list_options<K: Served>(params: &Params) -> ApiResult<ListOptions> {
    Ok(ListOptions {
        label_selector: params
            .get("labelSelector")
            .map(parse_label_selector)
            .transpose()?,
        field_selector: params
            .get("fieldSelector")
            .map(|s| parse_field_selector(s, &K::selectable_fields()))
            .transpose()?
            .unwrap_or_default(),
        limit: params
            .number("limit")?
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
        continue_token: params.get("continue").map(str::to_string),
        // Checked by `check_list_version`; `Exact` reads the latest state, which it must be.
        not_older_than: params
            .get("resourceVersion")
            .filter(|_| params.get("resourceVersionMatch") != Some("Exact"))
            .and_then(|rv| rv.parse().ok()),
    })
}

fn include_object(params: &Params) -> ApiResult<IncludeObject> {
    IncludeObject::parse(params.get("includeObject"))
}

/// GET on a collection: a list, or a watch with `watch=true`.
pub async fn list_or_watch<K: Served>(
    State(app): State<AppState>,
    PathParams(path): PathParams,
    params: Params,
    headers: HeaderMap,
    shutdown: Option<Extension<Shutdown>>,
) -> ApiResult<Response> {
    let repr = negotiate(&headers)?;
    let namespace = path.get("namespace").map(String::as_str);
    if params.flag("watch")? {
        return watch_response::<K>(&app, namespace, &params, repr, shutdown.map(|e| e.0)).await;
    }
    app.registry.check_list_version(
        params.get("resourceVersion"),
        params.get("resourceVersionMatch"),
        params.get("continue"),
    )?;
    let opts = list_options::<K>(&params)?;
    let include = include_object(&params)?;
    if contains_requirement(&opts.field_selector).is_some() {
        // The containing chain, read from the index: a few prefixes at most.
        let list = app.registry.list_indexed::<K>(namespace, &opts).await?;
        return Ok(list_response(list, repr, include));
    }
    let list = app.registry.list_chunks::<K>(namespace, &opts).await?;
    Ok(list_response(list, repr, include))
}

/// The legacy `/watch/...` paths: a watch of a collection or, with a name, of one object.
pub async fn watch_legacy<K: Served>(
    State(app): State<AppState>,
    PathParams(path): PathParams,
    params: Params,
    headers: HeaderMap,
    shutdown: Option<Extension<Shutdown>>,
) -> ApiResult<Response> {
    let repr = negotiate(&headers)?;
    let mut params = params;
    if let Some(name) = path.get("name") {
        let selector = match params.get("fieldSelector").filter(|s| !s.is_empty()) {
            Some(s) => format!("{s},metadata.name={name}"),
            None => format!("metadata.name={name}"),
        };
        params = params.with("fieldSelector", selector);
    }
    watch_response::<K>(
        &app,
        path.get("namespace").map(String::as_str),
        &params,
        repr,
        shutdown.map(|e| e.0),
    )
    .await
}

pub async fn get<K: Served>(
    State(app): State<AppState>,
    PathParams(path): PathParams,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let repr = negotiate(&headers)?;
    let obj = app
        .registry
        .get_at::<K>(
            namespace_of(&path),
            name_of(&path),
            params.get("resourceVersion"),
        )
        .await?;
    object_response(StatusCode::OK, &obj, repr, include_object(&params)?, &[])
}

/// Decode a create/update body into `K` under the request's `fieldValidation`.
fn decode<K: Served>(
    headers: &HeaderMap,
    params: &Params,
    body: &[u8],
) -> ApiResult<(K, Vec<String>)> {
    let value: Value = parse_body(headers, body)?;
    let validation = FieldValidation::parse(params.get("fieldValidation"))?;
    let duplicates: Vec<String> =
        super::duplicates::duplicate_fields(body, super::negotiate::body_is_yaml(headers))
            .iter()
            .map(|p| format!("duplicate field \"{p}\""))
            .collect();
    if validation == FieldValidation::Strict && !duplicates.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            duplicates.join(", ")
        )));
    }
    let (obj, mut warnings) = decode_body::<K>(value, validation)?;
    if validation == FieldValidation::Warn {
        warnings.extend(duplicates);
    }
    Ok((obj, warnings))
}

pub async fn create<K: Served>(
    State(app): State<AppState>,
    PathParams(path): PathParams,
    params: Params,
    headers: HeaderMap,
    user: Option<Extension<UserInfo>>,
    Body(body): Body,
) -> ApiResult<Response> {
    let repr = negotiate(&headers)?;
    let (obj, warnings) = decode::<K>(&headers, &params, &body)?;
    let manager = update_manager(&params, &headers)?;
    let user = user.as_ref().map(|u| &u.0);
    let created = create_admitted::<K>(
        &app,
        user,
        namespace_of(&path),
        obj,
        params.dry_run()?,
        &manager,
    )
    .await?;
    let resp = object_response(
        StatusCode::CREATED,
        &created,
        repr,
        IncludeObject::Object,
        &warnings,
    )?;
    Ok(audit::written(resp, created))
}

/// PUT on an object (`STATUS = false`) or on its `/status` subresource (`STATUS = true`).
pub async fn replace<K: Served, const STATUS: bool>(
    State(app): State<AppState>,
    PathParams(path): PathParams,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let sub = subresource::<STATUS>();
    let repr = negotiate(&headers)?;
    let (obj, mut warnings) = decode::<K>(&headers, &params, &body)?;
    let manager = update_manager(&params, &headers)?;
    let written = (sub == Subresource::Status).then(|| obj.clone());
    let updated = app
        .registry
        .update_managed::<K>(
            namespace_of(&path),
            name_of(&path),
            obj,
            sub,
            params.dry_run()?,
            Some(&manager),
        )
        .await?;
    if let Some(written) = written {
        warnings.extend(ignored_status(&written, &updated)?);
    }
    let resp = object_response(
        StatusCode::OK,
        &updated,
        repr,
        IncludeObject::Object,
        &warnings,
    )?;
    Ok(audit::written(resp, updated))
}

/// PATCH on an object (`STATUS = false`) or on its `/status` subresource (`STATUS = true`).
pub async fn patch<K: Served, const STATUS: bool>(
    State(app): State<AppState>,
    PathParams(path): PathParams,
    params: Params,
    headers: HeaderMap,
    user: Option<Extension<UserInfo>>,
    Body(body): Body,
) -> ApiResult<Response> {
    let repr = negotiate(&headers)?;
    let user = user.as_ref().map(|u| &u.0);
    let (obj, code, warnings) = apply_patch::<K>(
        &app,
        user,
        &path,
        &params,
        &headers,
        &body,
        subresource::<STATUS>(),
    )
    .await?;
    let resp = object_response(code, &obj, repr, IncludeObject::Object, &warnings)?;
    Ok(audit::written(resp, obj))
}

/// Warnings for the server-owned status fields a `/status` write tried to change.
pub(super) fn ignored_status<K: Served>(written: &K, stored: &K) -> ApiResult<Vec<String>> {
    Ok(crate::registry::ignored_status_writes(
        &crate::registry::codec::to_value(written)?,
        &crate::registry::codec::to_value(stored)?,
    ))
}

fn subresource<const STATUS: bool>() -> Subresource {
    if STATUS {
        Subresource::Status
    } else {
        Subresource::Main
    }
}

/// `DeleteOptions` from the body (optional) and the query, the query winning.
fn delete_options(params: &Params, body: &[u8]) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = super::negotiate::parse_json(body)?;
        if let Some(kind) = v.get("kind").and_then(Value::as_str) {
            if kind != "DeleteOptions" {
                return Err(ApiError::BadRequest(format!(
                    "expected a DeleteOptions body, got kind {kind:?}"
                )));
            }
        }
        let pre = &v["preconditions"];
        opts.preconditions = Preconditions {
            uid: pre.get("uid").and_then(Value::as_str).map(str::to_string),
            resource_version: pre
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            opts.propagation_policy = Some(parse_policy(p)?);
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            opts.propagation_policy
                .get_or_insert(PropagationPolicy::Orphan);
        }
        if let Some(d) = v.get("dryRun").and_then(Value::as_array) {
            opts.dry_run = d.iter().any(|x| x == "All");
        }
    }
    if let Some(p) = params.get("propagationPolicy") {
        opts.propagation_policy = Some(parse_policy(p)?);
    }
    if params.flag("orphanDependents")? {
        opts.propagation_policy = Some(PropagationPolicy::Orphan);
    }
    opts.dry_run |= params.dry_run()?;
    Ok(opts)
}

fn parse_policy(p: &str) -> ApiResult<PropagationPolicy> {
    match p {
        "Orphan" => Ok(PropagationPolicy::Orphan),
        "Background" => Ok(PropagationPolicy::Background),
        "Foreground" => Ok(PropagationPolicy::Foreground),
        other => Err(ApiError::BadRequest(format!(
            "propagationPolicy must be one of \"Orphan\", \"Background\" or \"Foreground\", not {other:?}"
        ))),
    }
}

pub async fn delete<K: Served>(
    State(app): State<AppState>,
    PathParams(path): PathParams,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let repr = negotiate(&headers)?;
    let opts = delete_options(&params, &body)?;
    let (obj, gone) = app
        .registry
        .delete::<K>(namespace_of(&path), name_of(&path), &opts)
        .await?;
    // 200 when removed, 202 when it waits for finalizers, as kube-apiserver answers.
    let code = if gone || opts.dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let resp = object_response(code, &obj, repr, IncludeObject::Object, &[])?;
    Ok(audit::written(resp, obj))
}

pub async fn delete_collection<K: Served>(
    State(app): State<AppState>,
    PathParams(path): PathParams,
    params: Params,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let repr = negotiate(&headers)?;
    let opts = delete_options(&params, &body)?;
    let list = list_options::<K>(&params)?;
    let deleted = app
        .registry
        .delete_collection::<K>(path.get("namespace").map(String::as_str), &list, &opts)
        .await?;
    let repr = match repr {
        Representation::Table { .. } => Representation::Object { yaml: false },
        other => other,
    };
    // The removed objects, for the audit log (the list is written as a stream from its own).
    let items = deleted.items.clone();
    Ok(audit::written(
        list_response(deleted, repr, IncludeObject::Object),
        items,
    ))
}

pub fn watch_options<K: Served>(params: &Params) -> ApiResult<WatchOptions> {
    Ok(WatchOptions {
        resource_version: params.get("resourceVersion").map(str::to_string),
        list: list_options::<K>(params)?,
        allow_bookmarks: params.flag("allowWatchBookmarks")?,
        send_initial_events: params.flag("sendInitialEvents")?,
    })
}

/// Create as the request's user: in cluster mode the namespace must be live and a claim may
/// allocate only from parents the user may `use`; Events record the outcome. Shared by POST and
/// by server-side apply of an object that does not exist yet.
pub(super) async fn create_admitted<K: Served>(
    app: &AppState,
    user: Option<&UserInfo>,
    namespace: &str,
    obj: K,
    dry_run: bool,
    manager: &crate::registry::managed_fields::FieldManager,
) -> ApiResult<K> {
    let Some(cluster) = &app.cluster else {
        return app
            .registry
            .create_managed::<K>(namespace, obj, dry_run, None, manager)
            .await;
    };
    // A claim narrowed to the one parent that had room may find it taken by a concurrent
    // create: admission asks again (at most twice), as allocation would have moved on.
    let mut again = 2;
    loop {
        let access = cluster
            .admit_create(
                &app.registry,
                user,
                namespace,
                &obj,
                K::NAMESPACED,
                K::RESOURCE,
            )
            .await?;
        let result = app
            .registry
            .create_managed::<K>(namespace, obj.clone(), dry_run, access.allowed, manager)
            .await;
        if access.narrowed && again > 0 && matches!(result, Err(ApiError::Exhausted { .. })) {
            again -= 1;
            continue;
        }
        cluster.created(namespace, &obj, &result, dry_run);
        return result;
    }
}
