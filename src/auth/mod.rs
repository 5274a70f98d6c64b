//! Who is calling: an [`Authenticator`] turns a request into a [`UserInfo`], and the
//! [`authenticate`] middleware puts it in the request's extensions or answers 401.
//!
//! As in k8s.io/apiserver, authentication is a union of methods tried in order; the first that
//! recognises the request wins, and the user always gains the group `system:authenticated`.
//! Standalone mode has one method (client certificates from its own CA, [`x509`]); cluster mode
//! will add front-proxy request headers and TokenReview as further [`Method`] variants, without
//! changing the middleware.
pub mod standalone;
pub mod x509;

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The group every authenticated user belongs to.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// Paths served to anyone, authenticated or not (with their sub-paths, e.g. `/readyz/ping`).
pub const ALWAYS_ALLOWED_PATHS: [&str; 3] = ["/healthz", "/livez", "/readyz"];

/// An authenticated identity, as Kubernetes' `user.Info`: what authorization and audit see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// One way of establishing identity.
#[derive(Debug)]
pub enum Method {
    /// A client certificate chaining to a trusted CA: CommonName → username,
    /// Organizations → groups.
    ClientCert(x509::ClientCertAuthenticator),
    // Cluster mode adds: RequestHeader (front-proxy certificate + X-Remote-* headers, tried
    // first) and TokenReview (bearer tokens, async).
}

/// What one method concluded about a request.
#[derive(Debug)]
pub enum Verdict {
    /// The method recognises the request and vouches for this user.
    Authenticated(UserInfo),
    /// The method does not apply (e.g. no client certificate presented).
    NotApplicable,
    /// The method applies but the credentials are not acceptable; the reason is logged, never
    /// sent to the client.
    Rejected(String),
}

impl Method {
    async fn authenticate(&self, req: &Parts) -> Verdict {
        match self {
            Method::ClientCert(m) => m.authenticate(req),
        }
    }
}

/// A union of [`Method`]s, tried in order.
#[derive(Debug)]
pub struct Authenticator {
    methods: Vec<Method>,
}

impl Authenticator {
    pub fn new(methods: Vec<Method>) -> Self {
        Authenticator { methods }
    }

    /// The first method that authenticates the request decides; `Err` carries why every method
    /// declined (for the log). Takes the request head: the body is never needed, and `Parts`
    /// (unlike a body) can be held across an await in a `Send` future.
    pub async fn authenticate(&self, req: &Parts) -> Result<UserInfo, String> {
        let mut reasons = Vec::new();
        for method in &self.methods {
            match method.authenticate(req).await {
                Verdict::Authenticated(mut user) => {
                    if !user.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
                        user.groups.push(AUTHENTICATED_GROUP.to_string());
                    }
                    return Ok(user);
                }
                Verdict::NotApplicable => {}
                Verdict::Rejected(reason) => reasons.push(reason),
            }
        }
        if reasons.is_empty() {
            Err("no credentials presented".to_string())
        } else {
            Err(reasons.join("; "))
        }
    }
}

/// Axum middleware: insert the caller's [`UserInfo`] into the request, or answer 401 with a
/// `Status` body. Health endpoints ([`ALWAYS_ALLOWED_PATHS`]) pass without credentials.
pub async fn authenticate(
    State(authn): State<Arc<Authenticator>>,
    req: Request,
    next: Next,
) -> Response {
    if is_always_allowed(req.uri().path()) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    match authn.authenticate(&parts).await {
        Ok(user) => {
            parts.extensions.insert(user);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(reason) => {
            tracing::debug!(
                method = %parts.method,
                path = %parts.uri.path(),
                "unauthorized: {reason}"
            );
            ApiError::Unauthorized("Unauthorized".into()).into_response()
        }
    }
}

fn is_always_allowed(path: &str) -> bool {
    ALWAYS_ALLOWED_PATHS.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests;
