//! STAND-IN (shell branch): replaced by the real router at merge. Only `pub mod health;` and the
//! `router` signature are relied on by `main.rs`.
pub mod health;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

/// Stand-in: every path is a 404 `Status`.
pub fn router(registry: crate::registry::Registry) -> axum::Router {
    let _ = registry;
    axum::Router::new().fallback(|| async {
        let status = Status {
            status: Some("Failure".into()),
            message: Some("the server could not find the requested resource".into()),
            reason: Some("NotFound".into()),
            code: Some(404),
            ..Default::default()
        };
        (
            http::StatusCode::NOT_FOUND,
            [(http::header::CONTENT_TYPE, "application/json")],
            crate::error::status_json(&status).to_string(),
        )
    })
}
