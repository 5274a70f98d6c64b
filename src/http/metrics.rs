//! `/metrics` and the layer that counts every request by verb, resource, subresource and code.
//!
//! Routed inside [`super::router`], so it sits behind the same authentication as the API.
use super::AppState;
use crate::metrics::{global, PrefixLabels, RequestLabels, RootLabels};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode, Uri};
use std::time::Instant;

const GV_PREFIX: &str = "/apis/ipam.miloapis.com/v1alpha1/";
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Middleware: count the request and, unless it is a watch, observe its latency.
pub async fn track(req: Request, next: Next) -> Response {
    let (verb, resource, subresource) = classify(req.method(), req.uri());
    let start = Instant::now();
    let resp = next.run(req).await;
    let labels = RequestLabels {
        verb,
        resource,
        subresource,
        code: resp.status().as_u16(),
    };
    let m = global();
    m.requests.get_or_create(&labels).inc();
    if verb != "watch" {
        m.request_duration
            .get_or_create(&labels)
            .observe(start.elapsed().as_secs_f64());
    }
    resp
}

/// `GET /metrics`: the registry's text exposition, with root and per-prefix utilization
/// refreshed.
pub async fn serve(State(app): State<AppState>) -> Response {
    let m = global();
    m.root_utilization.clear();
    m.root_children.clear();
    for root in app.registry.root_usage().await {
        let labels = RootLabels {
            name: root.name,
            prefix: root.prefix,
            address_space: root.address_space,
        };
        m.root_utilization
            .get_or_create(&labels)
            .set(root.utilization);
        m.root_children
            .get_or_create(&labels)
            .set(i64::try_from(root.children).unwrap_or(i64::MAX));
    }
    m.prefix_utilization.clear();
    m.prefix_largest_free.clear();
    m.prefix_children.clear();
    m.prefix_default_length.clear();
    let (prefixes, omitted) = app.registry.prefix_usage(m.prefix_series_limit()).await;
    for p in prefixes {
        let labels = PrefixLabels {
            name: p.name,
            prefix: p.prefix,
        };
        m.prefix_utilization
            .get_or_create(&labels)
            .set(p.utilization);
        m.prefix_largest_free
            .get_or_create(&labels)
            .set(i64::from(p.largest_free.unwrap_or(p.max_len + 1)));
        m.prefix_children
            .get_or_create(&labels)
            .set(i64::try_from(p.children).unwrap_or(i64::MAX));
        if let Some(len) = p.default_length {
            m.prefix_default_length
                .get_or_create(&labels)
                .set(i64::from(len));
        }
    }
    m.prefix_series_omitted
        .set(i64::try_from(omitted).unwrap_or(i64::MAX));
    let mut resp = (StatusCode::OK, m.encode()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

/// (verb, resource, subresource) as Kubernetes names them.
pub fn classify(method: &Method, uri: &Uri) -> (&'static str, &'static str, &'static str) {
    let path = uri.path();
    let Some(rest) = path.strip_prefix(GV_PREFIX) else {
        return (method_verb(method), non_resource(path), "");
    };
    let (watch_path, rest) = match rest.strip_prefix("watch/") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let segments = match segments.as_slice() {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        all => all,
    };
    let (resource, has_name, subresource) = match segments {
        [r] => (resource_name(r), false, ""),
        [r, _] => (resource_name(r), true, ""),
        [r, _, "status"] => (resource_name(r), true, "status"),
        _ => ("other", false, ""),
    };
    let watch = watch_path
        || uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
        });
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if has_name => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if has_name => "delete",
        Method::DELETE => "deletecollection",
        _ => method_verb(method),
    };
    (verb, resource, subresource)
}

fn resource_name(segment: &str) -> &'static str {
    match segment {
        "ipprefixes" => "ipprefixes",
        "ipprefixclaims" => "ipprefixclaims",
        _ => "other",
    }
}

fn non_resource(path: &str) -> &'static str {
    match path {
        "/metrics" => "metrics",
        "/api" | "/apis" | "/version" => "discovery",
        p if p.starts_with("/apis/") || p.starts_with("/api/") => "discovery",
        p if p.starts_with("/openapi") => "openapi",
        p if p.starts_with("/healthz") || p.starts_with("/livez") || p.starts_with("/readyz") => {
            "health"
        }
        _ => "other",
    }
}

fn method_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "get",
        Method::HEAD => "head",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::classify;
    use http::{Method, Uri};

    fn c(m: Method, u: &str) -> (&'static str, &'static str, &'static str) {
        classify(&m, &u.parse::<Uri>().unwrap())
    }

    #[test]
    fn requests_are_classified_as_kubernetes_names_them() {
        let gv = "/apis/ipam.miloapis.com/v1alpha1";
        assert_eq!(
            c(Method::POST, &format!("{gv}/namespaces/a/ipprefixclaims")),
            ("create", "ipprefixclaims", "")
        );
        assert_eq!(
            c(Method::GET, &format!("{gv}/ipprefixes?watch=true")),
            ("watch", "ipprefixes", "")
        );
        assert_eq!(
            c(
                Method::GET,
                &format!("{gv}/watch/namespaces/a/ipprefixclaims")
            ),
            ("watch", "ipprefixclaims", "")
        );
        assert_eq!(
            c(Method::PUT, &format!("{gv}/ipprefixes/x/status")),
            ("update", "ipprefixes", "status")
        );
        assert_eq!(
            c(Method::DELETE, &format!("{gv}/namespaces/a/ipprefixclaims")),
            ("deletecollection", "ipprefixclaims", "")
        );
        assert_eq!(c(Method::GET, "/metrics"), ("get", "metrics", ""));
        assert_eq!(c(Method::GET, "/openapi/v2"), ("get", "openapi", ""));
    }
}
