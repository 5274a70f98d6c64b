//! Health endpoints for kubelet probes and load balancers: `/healthz`, `/livez`, `/readyz`, each
//! with its checks at `/<endpoint>/<check>`. Served without authentication (see
//! [`crate::auth::ALWAYS_ALLOWED_PATHS`]), in k8s.io/apiserver's format: `ok`, or with
//! `?verbose` one `[+]`/`[-]` line per check; a failed check answers 500 with those lines.
//!
//! The `store` check fails once the store has failed (a failed fsync): from then on the server
//! answers every API request 503 until it restarts, so liveness should restart it and readiness
//! should take it out of its Service, as kube-apiserver's `etcd` check does.
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use std::sync::Arc;

/// The checks, in the order they are reported.
const CHECKS: [&str; 2] = ["ping", "store"];

/// Whether the store has failed (`Registry::store_failed`).
type StoreFailed = Arc<dyn Fn() -> bool + Send + Sync>;

/// The health routes; merge them into the main router *inside* the authentication layer (the
/// layer lets these paths through unauthenticated).
pub fn routes(store_failed: impl Fn() -> bool + Send + Sync + 'static) -> Router {
    let mut router = Router::new();
    for endpoint in ["healthz", "livez", "readyz"] {
        router = router.route(
            &format!("/{endpoint}"),
            get(
                move |State(failed): State<StoreFailed>, RawQuery(q): RawQuery| async move {
                    report(endpoint, &failed, q.as_deref())
                },
            ),
        );
        for check in CHECKS {
            router = router.route(
                &format!("/{endpoint}/{check}"),
                get(move |State(failed): State<StoreFailed>| async move {
                    match failure(check, &failed) {
                        None => (StatusCode::OK, "ok").into_response(),
                        Some(why) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("internal server error: {why}\n"),
                        )
                            .into_response(),
                    }
                }),
            );
        }
    }
    router.with_state(Arc::new(store_failed) as StoreFailed)
}

/// Why `check` fails, if it does. The reason is not given: these paths are open to anyone, and
/// the log has said it once, when the store failed.
fn failure(check: &str, store_failed: &StoreFailed) -> Option<&'static str> {
    match check {
        "store" if store_failed() => Some("reason withheld"),
        _ => None,
    }
}

fn report(endpoint: &str, store_failed: &StoreFailed, query: Option<&str>) -> Response {
    let verbose = query
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "verbose" || kv.starts_with("verbose="));
    let mut lines = String::new();
    let mut healthy = true;
    for check in CHECKS {
        match failure(check, store_failed) {
            None => lines.push_str(&format!("[+]{check} ok\n")),
            Some(why) => {
                healthy = false;
                lines.push_str(&format!("[-]{check} failed: {why}\n"));
            }
        }
    }
    match (healthy, verbose) {
        (true, false) => (StatusCode::OK, "ok".to_string()).into_response(),
        (true, true) => {
            (StatusCode::OK, format!("{lines}{endpoint} check passed\n")).into_response()
        }
        (false, _) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{lines}{endpoint} check failed\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn every_endpoint_and_check_answers_ok() {
        let router = routes(|| false);
        for path in [
            "/healthz",
            "/livez",
            "/readyz",
            "/readyz/ping",
            "/livez/store",
        ] {
            assert_eq!(
                get(&router, path).await,
                (StatusCode::OK, "ok".to_string()),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn verbose_lists_checks() {
        let (status, body) = get(&routes(|| false), "/livez?verbose").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "[+]ping ok\n[+]store ok\nlivez check passed\n");
    }

    #[tokio::test]
    async fn a_failed_store_fails_every_endpoint_from_then_on() {
        let failed = Arc::new(AtomicBool::new(false));
        let router = routes({
            let failed = failed.clone();
            move || failed.load(Ordering::SeqCst)
        });
        assert_eq!(get(&router, "/readyz").await.0, StatusCode::OK);
        failed.store(true, Ordering::SeqCst);
        for endpoint in ["healthz", "livez", "readyz"] {
            assert_eq!(
                get(&router, &format!("/{endpoint}")).await,
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "[+]ping ok\n[-]store failed: reason withheld\n{endpoint} check failed\n"
                    )
                )
            );
            assert_eq!(
                get(&router, &format!("/{endpoint}/store")).await,
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal server error: reason withheld\n".to_string()
                )
            );
            assert_eq!(
                get(&router, &format!("/{endpoint}/ping")).await,
                (StatusCode::OK, "ok".to_string())
            );
        }
    }
}
