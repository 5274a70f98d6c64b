//! Requests that authentication turned away (401), recorded as kube-apiserver's
//! `WithFailedAuthenticationAudit` records them: the policy is asked with no user, so rules
//! naming `users` or `userGroups` never match; the event has `"user":{}`, stage
//! `ResponseStarted` (the only one written), and the response status holds the code and which
//! credentials were tried ("Authentication failed, attempted: x509").
use super::event::Stage;
use super::middleware::{capture, new_audit_id, with_audit_id, AUDIT_ID_HEADER};
use super::record::Head;
use super::Auditor;
use crate::auth::authz::request_attributes;
use crate::server::PeerCertificates;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, StatusCode};

/// Sits outside authentication. A request that got past it was audited (or not, by the
/// policy) inside, and its response already carries an `Audit-Id`; one without is a 401 from
/// authentication itself.
pub async fn audit_failed_authentication(
    State(auditor): State<Auditor>,
    req: Request,
    next: Next,
) -> Response {
    let received = jiff::Timestamp::now();
    // The request is gone once served: keep what a 401's event needs (cheap clones only).
    let method = req.method().clone();
    let head = Head::of(&req);
    let incoming_id = req
        .headers()
        .get(AUDIT_ID_HEADER)
        .filter(|v| !v.is_empty())
        .cloned();
    let tried = Tried {
        authorization: req.headers().get(http::header::AUTHORIZATION).cloned(),
        certificate: req.extensions().get::<PeerCertificates>().is_some(),
    };
    let resp = next.run(req).await;
    if resp.status() != StatusCode::UNAUTHORIZED || resp.headers().contains_key(AUDIT_ID_HEADER) {
        return resp;
    }
    let id = incoming_id.unwrap_or_else(new_audit_id);
    let attrs = request_attributes(
        &method,
        head.uri.path(),
        head.uri.query().unwrap_or_default(),
    );
    let decision = auditor.0.policy.evaluate(None, &attrs);
    if decision.records(Stage::ResponseStarted) {
        let message = tried.message(head.uri.query().unwrap_or_default());
        let mut record = capture(head, attrs, &decision, id.clone(), received);
        record.stage = Stage::ResponseStarted;
        record.stage_at = jiff::Timestamp::now();
        record.code = resp.status().as_u16();
        record.message = Some(message);
        auditor.0.sender.send(record.into());
    }
    with_audit_id(resp, id)
}

/// The credentials a request came with.
struct Tried {
    authorization: Option<HeaderValue>,
    certificate: bool,
}

impl Tried {
    /// kube-apiserver's message: which kinds of credentials were tried.
    fn message(&self, query: &str) -> String {
        let mut methods = Vec::new();
        let auth = self
            .authorization
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or_default();
        let mut words = auth.split(' ');
        let scheme = words.next().unwrap_or_default().to_ascii_lowercase();
        let has_credentials = words.next().is_some();
        if scheme == "basic" && has_credentials {
            methods.push("basic");
        }
        if scheme == "bearer" && has_credentials {
            methods.push("bearer");
        }
        let token = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .unwrap_or_default()
            .into_iter()
            .any(|(k, v)| k == "access_token" && !v.trim().is_empty());
        if token {
            methods.push("access_token");
        }
        if self.certificate {
            methods.push("x509");
        }
        if methods.is_empty() {
            "Authentication failed, no credentials provided".to_string()
        } else {
            format!("Authentication failed, attempted: {}", methods.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tried(auth: Option<&'static str>, certificate: bool) -> Tried {
        Tried {
            authorization: auth.map(HeaderValue::from_static),
            certificate,
        }
    }

    #[test]
    fn the_message_names_the_credentials_tried() {
        assert_eq!(
            tried(None, false).message(""),
            "Authentication failed, no credentials provided"
        );
        assert_eq!(
            tried(Some("Bearer abc"), true).message("access_token=x"),
            "Authentication failed, attempted: bearer, access_token, x509"
        );
        assert_eq!(
            tried(Some("Basic Zm9vOmJhcg=="), false).message("watch=true"),
            "Authentication failed, attempted: basic"
        );
    }
}
