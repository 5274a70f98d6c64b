//! Health endpoints for kubelet probes and load balancers: `/healthz`, `/livez`, `/readyz`, each
//! with a `ping` check at `/<endpoint>/ping`. Served without authentication (see
//! [`crate::auth::ALWAYS_ALLOWED_PATHS`]). `?verbose` lists the checks as k8s.io/apiserver does.
use axum::extract::RawQuery;
use axum::routing::get;
use axum::Router;

/// The health routes; merge them into the main router *inside* the authentication layer (the
/// layer lets these paths through unauthenticated).
pub fn routes() -> Router {
    let mut router = Router::new();
    for endpoint in ["healthz", "livez", "readyz"] {
        router = router
            .route(
                &format!("/{endpoint}"),
                get(move |RawQuery(q): RawQuery| async move { report(endpoint, q.as_deref()) }),
            )
            .route(&format!("/{endpoint}/ping"), get(|| async { "ok" }));
    }
    router
}

fn report(endpoint: &str, query: Option<&str>) -> String {
    let verbose = query
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "verbose" || kv.starts_with("verbose="));
    if verbose {
        format!("[+]ping ok\n{endpoint} check passed\n")
    } else {
        "ok".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, String) {
        let resp = routes()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn every_endpoint_answers_ok() {
        for path in ["/healthz", "/livez", "/readyz", "/readyz/ping"] {
            assert_eq!(
                get(path).await,
                (StatusCode::OK, "ok".to_string()),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn verbose_lists_checks() {
        let (status, body) = get("/livez?verbose").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "[+]ping ok\nlivez check passed\n");
    }
}
