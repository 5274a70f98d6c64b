//! HTTP: routing, content negotiation and the Kubernetes endpoints. Resource endpoints are
//! written once (`handlers.rs`) and instantiated per kind here.
pub mod discovery;
mod duplicates;
mod handlers;
pub mod health;
pub mod limits;
mod list;
pub mod metrics;
pub mod negotiate;
pub mod openapi;
mod patch;
pub mod protobuf;
mod respond;
pub mod table;
mod watch;
mod yaml;

use crate::api::{IPPrefix, IPPrefixClaim};
use crate::cluster::Cluster;
use crate::error::{ApiError, ApiResult};
use crate::registry::Registry;
use axum::response::Response;
use axum::routing::{get, MethodRouter};
use axum::Router;
use http::{HeaderMap, HeaderValue, StatusCode};
use negotiate::{negotiate, PathParams, Representation};
use respond::{json_response, Served};
use serde_json::Value;
use std::sync::Arc;

/// Shared by every handler: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    /// Cluster-mode admission and events; `None` standalone.
    pub cluster: Option<Arc<Cluster>>,
}

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

/// The API, without authentication (the caller layers it on).
pub fn router(registry: Registry) -> Router {
    router_with(registry, None)
}

/// [`router`] with cluster-mode admission (`use` on claim parents, NamespaceLifecycle) and
/// Events.
pub fn router_with(registry: Registry, cluster: Option<Arc<Cluster>>) -> Router {
    let standalone = cluster.is_none();
    let state = AppState { registry, cluster };
    let router = Router::new()
        .route("/version", get(|| async { ok_json(discovery::version()) }))
        .route("/api", get(|| async { ok_json(discovery::api_versions()) }))
        .route("/apis", get(apis))
        .route(
            "/apis/ipam.miloapis.com",
            get(|| async { ok_json(discovery::api_group()) }),
        )
        .route(
            GV,
            get(|| async { ok_json(discovery::api_resource_list()) }),
        )
        .route("/metrics", get(metrics::serve))
        .route("/openapi/v2", get(openapi_v2))
        .route(
            "/openapi/v3",
            get(|| async { ok_json(openapi::openapi_v3_index()) }),
        )
        .route(
            "/openapi/v3/apis/ipam.miloapis.com/v1alpha1",
            get(|| async { ok_json(openapi::openapi_v3_group_version()) }),
        )
        .merge(resource_routes::<IPPrefix>(&format!("{GV}/ipprefixes")))
        .merge(resource_routes::<IPPrefixClaim>(&format!(
            "{GV}/namespaces/{{namespace}}/ipprefixclaims"
        )))
        .route(
            &format!("{GV}/ipprefixclaims"),
            get(handlers::list_or_watch::<IPPrefixClaim>),
        )
        .route(
            &format!("{GV}/watch/ipprefixes"),
            get(handlers::watch_legacy::<IPPrefix>),
        )
        .route(
            &format!("{GV}/watch/ipprefixes/{{name}}"),
            get(handlers::watch_legacy::<IPPrefix>),
        )
        .route(
            &format!("{GV}/watch/ipprefixclaims"),
            get(handlers::watch_legacy::<IPPrefixClaim>),
        )
        .route(
            &format!("{GV}/watch/namespaces/{{namespace}}/ipprefixclaims"),
            get(handlers::watch_legacy::<IPPrefixClaim>),
        )
        .route(
            &format!("{GV}/watch/namespaces/{{namespace}}/ipprefixclaims/{{name}}"),
            get(handlers::watch_legacy::<IPPrefixClaim>),
        );
    let router = if standalone {
        router.route("/api/v1/namespaces/{namespace}", get(standalone_namespace))
    } else {
        router
    };
    router
        .fallback(|| async { ApiError::UnknownPath })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed(
                "the server does not allow this method on the requested resource".into(),
            )
        })
        .with_state(state)
        .layer(axum::middleware::from_fn(metrics::track))
}

/// Standalone, a claim may be in any namespace, so every (well-formed) namespace exists as far
/// as a client asks. kubectl looks the namespace up after any NotFound in it and prints that
/// lookup's 404, were it one, instead of the object's.
async fn standalone_namespace(PathParams(path): PathParams) -> ApiResult<Response> {
    let name = path
        .get("namespace")
        .map(String::as_str)
        .unwrap_or_default();
    if crate::registry::meta::validate_dns_label(name).is_err() {
        return Err(ApiError::NotFound(crate::error::Subject {
            kind: "namespaces".into(),
            group: String::new(),
            name: name.into(),
        }));
    }
    Ok(ok_json(serde_json::json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {"name": name},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })))
}

/// Collection, object and status routes of one kind under `base`.
fn resource_routes<K: Served>(base: &str) -> Router<AppState> {
    let collection: MethodRouter<AppState> = get(handlers::list_or_watch::<K>)
        .post(handlers::create::<K>)
        .delete(handlers::delete_collection::<K>);
    let object = get(handlers::get::<K>)
        .put(handlers::replace::<K, false>)
        .patch(handlers::patch::<K, false>)
        .delete(handlers::delete::<K>);
    let status = get(handlers::get::<K>)
        .put(handlers::replace::<K, true>)
        .patch(handlers::patch::<K, true>);
    Router::new()
        .route(base, collection)
        .route(&format!("{base}/{{name}}"), object)
        .route(&format!("{base}/{{name}}/status"), status)
}

fn ok_json(v: Value) -> Response {
    json_response(StatusCode::OK, &v, &[])
}

/// `/apis`: the legacy group list, or aggregated discovery when asked for it.
async fn apis(headers: HeaderMap) -> ApiResult<Response> {
    match negotiate(&headers)? {
        Representation::Discovery { beta } => {
            let (api_version, content_type) = if beta {
                (
                    "apidiscovery.k8s.io/v2beta1",
                    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
                )
            } else {
                (
                    "apidiscovery.k8s.io/v2",
                    discovery::AGGREGATED_DISCOVERY_CONTENT_TYPE,
                )
            };
            let mut resp = ok_json(discovery::aggregated_discovery_for(api_version));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            Ok(resp)
        }
        _ => Ok(ok_json(discovery::api_group_list())),
    }
}

/// `/openapi/v2`, JSON only: a protobuf-only client gets 406 and falls back.
async fn openapi_v2(headers: HeaderMap) -> ApiResult<Response> {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !accept.is_empty() && !accept.contains("json") && !accept.contains("*/*") {
        return Err(ApiError::NotAcceptable(
            "only application/json is served for /openapi/v2".into(),
        ));
    }
    Ok(ok_json(openapi::openapi_v2()))
}
