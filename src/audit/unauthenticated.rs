//! Requests that authentication turned away (401), recorded as kube-apiserver's
//! `WithFailedAuthenticationAudit` records them: the policy is asked with no user, so rules
//! naming `users` or `userGroups` never match; the event has `"user":{}`, stage
//! `ResponseStarted` (the only one written), and the response status holds the code and which
//! credentials were tried ("Authentication failed, attempted: x509").
use super::event::Stage;
use super::middleware::{capture, new_audit_id, AUDIT_ID_HEADER};
use super::record::Head;
use super::Auditor;
use crate::auth::authz::request_attributes;
use crate::auth::OnRejected;
use crate::server::PeerCertificates;
use axum::response::Response;
use http::request::Parts;
use http::HeaderValue;
use std::sync::Arc;

impl Auditor {
    /// For [`crate::auth::Authenticator::on_rejected`]: each 401 authentication answers is
    /// recorded, if the policy says so, and carries an `Audit-Id`. Only a rejected request
    /// pays for it.
    pub fn authentication_failures(&self) -> OnRejected {
        let auditor = self.clone();
        Arc::new(move |req: &Parts, resp: &mut Response| record(&auditor, req, resp))
    }
}

fn record(auditor: &Auditor, req: &Parts, resp: &mut Response) {
    let id = req
        .headers
        .get(&AUDIT_ID_HEADER)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(new_audit_id);
    let query = req.uri.query().unwrap_or_default();
    let attrs = request_attributes(&req.method, req.uri.path(), query);
    let decision = auditor.0.policy.evaluate(None, &attrs);
    if decision.records(Stage::ResponseStarted) {
        let tried = Tried {
            authorization: req.headers.get(http::header::AUTHORIZATION).cloned(),
            certificate: req.extensions.get::<PeerCertificates>().is_some(),
        };
        let now = jiff::Timestamp::now();
        let mut record = capture(Head::of_parts(req), None, attrs, &decision, id.clone(), now);
        record.stage = Stage::ResponseStarted;
        record.code = resp.status().as_u16();
        record.message = Some(tried.message(query));
        auditor.0.sender.send(|out| record.write_line(out));
    }
    resp.headers_mut().insert(AUDIT_ID_HEADER, id);
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
