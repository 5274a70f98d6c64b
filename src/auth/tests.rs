use super::x509::ClientCertAuthenticator;
use super::*;
use crate::server::PeerCertificates;
use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tower::ServiceExt;

struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        TestCa {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    fn client(&self, cn: &str, orgs: &[&str]) -> CertificateDer<'static> {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if !cn.is_empty() {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, &self.cert, &self.key)
            .unwrap()
            .der()
            .clone()
    }

    fn authenticator(&self) -> Arc<Authenticator> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let m = ClientCertAuthenticator::new(Arc::new(roots)).unwrap();
        Arc::new(Authenticator::new(vec![Method::ClientCert(m)]))
    }
}

fn app(authn: Arc<Authenticator>) -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|Extension(user): Extension<UserInfo>| async move {
                format!("{}|{}", user.username, user.groups.join(","))
            }),
        )
        .merge(crate::http::health::routes())
        .fallback(|| async { "fallback" })
        .layer(axum::middleware::from_fn_with_state(authn, authenticate))
}

async fn call(
    authn: Arc<Authenticator>,
    path: &str,
    cert: Option<CertificateDer<'static>>,
) -> (StatusCode, String) {
    let mut req = http::Request::get(path).body(Body::empty()).unwrap();
    if let Some(cert) = cert {
        req.extensions_mut()
            .insert(PeerCertificates(Arc::new(vec![cert])));
    }
    let resp = app(authn).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn assert_unauthorized_status(status: StatusCode, body: &str) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["code"], 401);
    assert_eq!(v["reason"], "Unauthorized");
    assert_eq!(v["message"], "Unauthorized");
}

#[tokio::test]
async fn cert_from_our_ca_names_user_and_groups_plus_authenticated() {
    let ca = TestCa::new("ca");
    // (rcgen keeps one value per attribute type, so one Organization here.)
    let cert = ca.client("alice", &["devs"]);
    let (status, body) = call(ca.authenticator(), "/whoami", Some(cert)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "alice|devs,system:authenticated");
}

#[tokio::test]
async fn no_cert_is_401_status() {
    let ca = TestCa::new("ca");
    let (status, body) = call(ca.authenticator(), "/apis", None).await;
    assert_unauthorized_status(status, &body);
}

#[tokio::test]
async fn cert_from_another_ca_is_401_status() {
    let ours = TestCa::new("ours");
    let theirs = TestCa::new("theirs");
    let cert = theirs.client("mallory", &["system:masters"]);
    let (status, body) = call(ours.authenticator(), "/whoami", Some(cert)).await;
    assert_unauthorized_status(status, &body);
}

#[tokio::test]
async fn cert_without_common_name_is_401() {
    let ca = TestCa::new("ca");
    let cert = ca.client("", &["devs"]);
    let (status, body) = call(ca.authenticator(), "/whoami", Some(cert)).await;
    assert_unauthorized_status(status, &body);
}

#[tokio::test]
async fn health_paths_need_no_credentials_but_lookalikes_do() {
    let ca = TestCa::new("ca");
    for path in ["/healthz", "/livez", "/readyz", "/readyz/ping"] {
        let (status, body) = call(ca.authenticator(), path, None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "{path}");
    }
    for path in ["/healthzz", "/readyzfoo", "/apis/healthz"] {
        let (status, body) = call(ca.authenticator(), path, None).await;
        assert_unauthorized_status(status, &body);
    }
}
