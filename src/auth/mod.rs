//! Who is calling: an [`Authenticator`] turns a request into a [`UserInfo`], and the
//! [`authenticate`] middleware puts it in the request's extensions or answers 401.
//!
//! As in k8s.io/apiserver, authentication is a union of methods tried in order; the first that
//! recognises the request wins, and the user always gains the group `system:authenticated`.
//! Standalone mode has one method (client certificates from its own CA, [`x509`]); cluster mode
//! tries front-proxy request headers ([`requestheader`]), then client certificates from the
//! cluster's client CA, then bearer tokens ([`tokenreview`]); see [`delegated`]. What the caller
//! may do is [`authz`]'s question.
pub mod authz;
pub mod delegated;
pub mod requestheader;
pub mod standalone;
pub mod tokenreview;
pub mod x509;

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

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
    /// As `ClientCert`, with the CA replaced while serving (from a watched ConfigMap); not
    /// applicable while no CA is known.
    DynamicClientCert(Reloadable<x509::ClientCertAuthenticator>),
    /// A front-proxy certificate with the user in request headers; not applicable while no
    /// front-proxy configuration is known.
    RequestHeader(Reloadable<requestheader::RequestHeaderAuthenticator>),
    /// A bearer token, reviewed by the cluster.
    TokenReview(tokenreview::TokenReviewAuthenticator),
}

/// A value replaced while the server runs (a CA bundle from a ConfigMap); readers take a cheap
/// snapshot. A std lock: held only to clone or swap an `Arc`.
#[derive(Debug)]
pub struct Reloadable<T>(Arc<RwLock<Option<Arc<T>>>>);

impl<T> Clone for Reloadable<T> {
    fn clone(&self) -> Self {
        Reloadable(self.0.clone())
    }
}

impl<T> Default for Reloadable<T> {
    fn default() -> Self {
        Reloadable(Arc::new(RwLock::new(None)))
    }
}

impl<T> Reloadable<T> {
    pub fn get(&self) -> Option<Arc<T>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, value: Option<T>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value.map(Arc::new);
    }
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
            Method::DynamicClientCert(m) => match m.get() {
                Some(m) => m.authenticate(req),
                None => Verdict::NotApplicable,
            },
            Method::RequestHeader(m) => match m.get() {
                Some(m) => m.authenticate(req),
                None => Verdict::NotApplicable,
            },
            Method::TokenReview(m) => m.authenticate(req).await,
        }
    }
}

/// Told of each request authentication turns away, with the 401 about to be sent (the audit
/// log records it and names it in an `Audit-Id`). Authentication knows nothing of who listens.
pub type OnRejected = Arc<dyn Fn(&Parts, &mut Response) + Send + Sync>;

/// A union of [`Method`]s, tried in order.
pub struct Authenticator {
    methods: Vec<Method>,
    on_rejected: OnceLock<OnRejected>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(methods: Vec<Method>) -> Self {
        Authenticator {
            methods,
            on_rejected: OnceLock::new(),
        }
    }

    /// Call `hook` for every 401 from then on. Set once, before serving; a second call is
    /// ignored.
    pub fn on_rejected(&self, hook: OnRejected) {
        let _ = self.on_rejected.set(hook);
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
            let mut resp = ApiError::Unauthorized("Unauthorized".into()).into_response();
            if let Some(hook) = authn.on_rejected.get() {
                hook(&parts, &mut resp);
            }
            resp
        }
    }
}

pub fn is_always_allowed(path: &str) -> bool {
    ALWAYS_ALLOWED_PATHS.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests;
