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
        self.client_until(cn, orgs, None)
    }

    /// A client certificate, valid until `not_after` when given.
    fn client_until(
        &self,
        cn: &str,
        orgs: &[&str],
        not_after: Option<std::time::SystemTime>,
    ) -> CertificateDer<'static> {
        let mut p = CertificateParams::default();
        if let Some(t) = not_after {
            p.not_after = t.into();
        }
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
        .merge(crate::http::health::routes(|| false))
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
async fn a_verified_certificate_is_not_remembered_past_its_expiry() {
    let ca = TestCa::new("ca");
    let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    let cert = ca.client_until("alice", &[], Some(expires));
    let authn = ca.authenticator();
    let (status, body) = call(authn.clone(), "/whoami", Some(cert.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Verified chains are remembered for seconds; never past the certificate's own expiry.
    tokio::time::sleep(std::time::Duration::from_millis(6200)).await;
    let (status, body) = call(authn, "/whoami", Some(cert)).await;
    assert_unauthorized_status(status, &body);
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

// Cluster mode: front-proxy headers, then the client CA.

fn roots_of(ca: &TestCa) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    Arc::new(roots)
}

/// Front proxy signed by `proxy` (allowed CN `front-proxy-client`), client CA `clients`.
fn delegated(proxy: &TestCa, clients: &TestCa) -> Arc<Authenticator> {
    let rh = Reloadable::default();
    rh.set(Some(requestheader::RequestHeaderAuthenticator {
        proxy_ca: ClientCertAuthenticator::new(roots_of(proxy)).unwrap(),
        allowed_names: vec!["front-proxy-client".into()],
        username_headers: vec![http::HeaderName::from_static("x-remote-user")],
        group_headers: vec![http::HeaderName::from_static("x-remote-group")],
        extra_prefixes: vec!["x-remote-extra-".into()],
    }));
    let cc = Reloadable::default();
    cc.set(Some(
        ClientCertAuthenticator::new(roots_of(clients)).unwrap(),
    ));
    Arc::new(Authenticator::new(vec![
        Method::RequestHeader(rh),
        Method::DynamicClientCert(cc),
    ]))
}

async fn call_with_headers(
    authn: Arc<Authenticator>,
    cert: Option<CertificateDer<'static>>,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = http::Request::get("/whoami");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::empty()).unwrap();
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

const SPOOF: [(&str, &str); 3] = [
    ("X-Remote-User", "admin"),
    ("X-Remote-Group", "system:masters"),
    ("X-Remote-Extra-Scopes", "all"),
];

#[tokio::test]
async fn front_proxy_certificate_asserts_the_user_in_headers() {
    let (proxy, clients) = (TestCa::new("front-proxy-ca"), TestCa::new("kube-ca"));
    let cert = proxy.client("front-proxy-client", &[]);
    let (status, body) = call_with_headers(delegated(&proxy, &clients), Some(cert), &SPOOF).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "admin|system:masters,system:authenticated")
    );
}

#[tokio::test]
async fn headers_from_a_client_ca_certificate_are_ignored() {
    let (proxy, clients) = (TestCa::new("front-proxy-ca"), TestCa::new("kube-ca"));
    let cert = clients.client("mallory", &[]);
    let (status, body) = call_with_headers(delegated(&proxy, &clients), Some(cert), &SPOOF).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "mallory|system:authenticated")
    );
}

#[tokio::test]
async fn front_proxy_ca_certificate_with_a_name_not_allowed_is_401() {
    let (proxy, clients) = (TestCa::new("front-proxy-ca"), TestCa::new("kube-ca"));
    let cert = proxy.client("someone-else", &[]);
    let (status, body) = call_with_headers(delegated(&proxy, &clients), Some(cert), &SPOOF).await;
    assert_unauthorized_status(status, &body);
}

#[tokio::test]
async fn headers_without_any_certificate_are_401() {
    let (proxy, clients) = (TestCa::new("front-proxy-ca"), TestCa::new("kube-ca"));
    let (status, body) = call_with_headers(delegated(&proxy, &clients), None, &SPOOF).await;
    assert_unauthorized_status(status, &body);
}

#[tokio::test]
async fn nothing_is_accepted_until_settings_are_loaded() {
    let (proxy, clients) = (TestCa::new("front-proxy-ca"), TestCa::new("kube-ca"));
    let authn = Arc::new(Authenticator::new(vec![
        Method::RequestHeader(Reloadable::default()),
        Method::DynamicClientCert(Reloadable::default()),
    ]));
    for cert in [
        proxy.client("front-proxy-client", &[]),
        clients.client("bob", &[]),
    ] {
        let (status, body) = call_with_headers(authn.clone(), Some(cert), &SPOOF).await;
        assert_unauthorized_status(status, &body);
    }
}

#[tokio::test]
async fn a_rotated_client_ca_file_is_picked_up_and_the_old_ca_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("client-ca.crt");
    let (old_ca, new_ca) = (TestCa::new("old-ca"), TestCa::new("new-ca"));
    std::fs::write(&ca_file, old_ca.cert.pem()).unwrap();
    let config = crate::options::ClusterConfig {
        tls_cert_file: "unused.crt".into(),
        tls_private_key_file: "unused.key".into(),
        client_ca_file: Some(ca_file.clone()),
        requestheader: Default::default(),
        kubeconfig: None,
        authentication_kubeconfig: None,
        authorization_kubeconfig: None,
    };
    let sources = delegated::Sources::from_flags(&config).unwrap();
    sources.apply(&Default::default()).unwrap();
    let authn = Arc::new(Authenticator::new(vec![Method::DynamicClientCert(
        sources.client_ca(),
    )]));
    // What a client of each CA gets from the server.
    let whoami = |ca: &TestCa, user: &str| {
        let (authn, cert) = (authn.clone(), ca.client(user, &[]));
        async move { call(authn, "/whoami", Some(cert)).await }
    };
    assert_eq!(
        whoami(&old_ca, "alice").await,
        (StatusCode::OK, "alice|system:authenticated".to_string())
    );
    let (status, body) = whoami(&new_ca, "bob").await;
    assert_unauthorized_status(status, &body);
    assert!(!sources.reload_ca_files().unwrap(), "nothing changed yet");

    // Half-written during rotation: an error, and the CA in use stays.
    std::fs::write(&ca_file, "-----BEGIN CERTIFICATE-----\n").unwrap();
    assert!(sources.reload_ca_files().is_err());
    assert_eq!(whoami(&old_ca, "carol").await.0, StatusCode::OK);

    std::fs::write(&ca_file, new_ca.cert.pem()).unwrap();
    assert!(sources.reload_ca_files().unwrap());
    assert_eq!(
        whoami(&new_ca, "dave").await,
        (StatusCode::OK, "dave|system:authenticated".to_string())
    );
    let (status, body) = whoami(&old_ca, "erin").await;
    assert_unauthorized_status(status, &body);
}
