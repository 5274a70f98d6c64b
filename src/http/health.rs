//! Health endpoints for kubelet probes and load balancers: `/healthz`, `/livez`, `/readyz`, each
//! with its checks at `/<endpoint>/<check>`. Served without authentication (see
//! [`crate::auth::ALWAYS_ALLOWED_PATHS`]), in k8s.io/apiserver's format: `ok`, or with
//! `?verbose` one `[+]`/`[-]` line per check; a failed check answers 500 with those lines.
//!
//! The `store` check fails once the store has failed (a failed fsync): from then on the server
//! answers every API request 503 until it restarts, so liveness should restart it and readiness
//! should take it out of its Service, as kube-apiserver's `etcd` check does.
//!
//! On etcd, `/readyz` also has an `etcd` check: it fails while etcd does not answer (no quorum),
//! so the Service routes around the replica, but `/livez` does not, since a restart would not
//! bring etcd back.
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use std::sync::Arc;

/// The checks, in the order they are reported (`etcd` on `/readyz` only, with etcd).
const CHECKS: [&str; 3] = ["ping", "store", "etcd"];

/// What the checks ask: whether the store has failed (`Registry::store_failed`), and whether
/// etcd, when it is the store, does not answer now.
#[derive(Clone)]
struct Probes {
    store_failed: Arc<dyn Fn() -> bool + Send + Sync>,
    etcd_down: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

type StoreFailed = Probes;

/// The health routes; merge them into the main router *inside* the authentication layer (the
/// layer lets these paths through unauthenticated).
pub fn routes(store_failed: impl Fn() -> bool + Send + Sync + 'static) -> Router {
    routes_for(Probes {
        store_failed: Arc::new(store_failed),
        etcd_down: None,
    })
}

/// [`routes`] with the `etcd` readiness check.
pub fn routes_with_etcd(
    store_failed: impl Fn() -> bool + Send + Sync + 'static,
    etcd_down: impl Fn() -> bool + Send + Sync + 'static,
) -> Router {
    routes_for(Probes {
        store_failed: Arc::new(store_failed),
        etcd_down: Some(Arc::new(etcd_down)),
    })
}

/// The checks of `endpoint`.
fn checks(endpoint: &str, probes: &Probes) -> &'static [&'static str] {
    match (endpoint, &probes.etcd_down) {
        ("readyz", Some(_)) => &CHECKS,
        _ => &CHECKS[..2],
    }
}

fn routes_for(probes: Probes) -> Router {
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
        for &check in checks(endpoint, &probes) {
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
    router.with_state(probes)
}

/// Why `check` fails, if it does. The reason is not given: these paths are open to anyone, and
/// the log has said it once, when the store failed.
fn failure(check: &str, probes: &StoreFailed) -> Option<&'static str> {
    match check {
        "store" if (probes.store_failed)() => Some("reason withheld"),
        "etcd" if probes.etcd_down.as_ref().is_some_and(|down| down()) => {
            Some("etcd does not answer")
        }
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
    for &check in checks(endpoint, store_failed) {
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

    #[tokio::test]
    async fn etcd_down_fails_readiness_only() {
        let down = Arc::new(AtomicBool::new(false));
        let router = routes_with_etcd(|| false, {
            let down = down.clone();
            move || down.load(Ordering::SeqCst)
        });
        assert_eq!(
            get(&router, "/readyz?verbose").await,
            (
                StatusCode::OK,
                "[+]ping ok\n[+]store ok\n[+]etcd ok\nreadyz check passed\n".to_string()
            )
        );
        down.store(true, Ordering::SeqCst);
        assert_eq!(
            get(&router, "/readyz").await,
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "[+]ping ok\n[+]store ok\n[-]etcd failed: etcd does not answer\nreadyz check failed\n"
                    .to_string()
            )
        );
        assert_eq!(
            get(&router, "/readyz/etcd").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        for path in ["/livez", "/healthz"] {
            assert_eq!(
                get(&router, path).await,
                (StatusCode::OK, "ok".into()),
                "{path}"
            );
        }
    }
}
