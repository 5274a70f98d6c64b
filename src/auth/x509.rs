//! Client certificates: the TLS side asks for one, the authenticator judges it.
//!
//! Like Go's `tls.RequestClientCert` in kube-apiserver, the handshake ([`RequestClientCert`])
//! only proves the client holds the certificate's key; chain verification happens per
//! authentication method ([`ClientCertAuthenticator`]), because cluster mode trusts different
//! CAs for different purposes (client CA vs. front-proxy CA). A certificate from an unknown CA
//! therefore yields an HTTP 401 `Status`, not a TLS alert the user has to decode.
use super::{UserInfo, Verdict};
use crate::server::PeerCertificates;
use http::request::Parts;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The one crypto provider everything TLS here uses, named explicitly so that another provider
/// appearing in the dependency graph cannot make rustls' process default ambiguous.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS client-certificate policy: request a certificate (hinting the CAs we trust), accept the
/// handshake without one, verify the client's proof of key possession, and leave trust to the
/// authenticator. Never install this without an authenticator in front of every route.
#[derive(Debug)]
pub struct RequestClientCert {
    /// Subjects sent as `certificate_authorities`; empty means "any CA". Go clients only send a
    /// certificate whose issuer is among the hints when there are hints.
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl RequestClientCert {
    /// `hints`: every CA whose certificates some authentication method accepts.
    pub fn new(hints: Arc<RootCertStore>) -> Result<Self, rustls::server::VerifierBuilderError> {
        if hints.is_empty() {
            return Err(rustls::server::VerifierBuilderError::NoRootAnchors);
        }
        Ok(RequestClientCert {
            hints: hints.subjects(),
            provider: crypto_provider(),
        })
    }

    /// Request a certificate without naming CAs, so clients send whatever they have. For cluster
    /// mode, where the trusted CAs come from a ConfigMap and change while connections are open.
    pub fn without_hints() -> Self {
        RequestClientCert {
            hints: Vec::new(),
            provider: crypto_provider(),
        }
    }
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Trust is decided per request by the authenticator; see the module docs.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Authenticates a request by its client certificate: the chain must verify against `roots`
/// (validity, client-auth usage); CommonName → username, Organizations → groups.
#[derive(Debug)]
pub struct ClientCertAuthenticator {
    verifier: Arc<dyn ClientCertVerifier>,
    /// Recently verified chains (SHA-256 of the DER chain) → user and when the entry lapses.
    /// Verifying an ECDSA chain costs about as much as serving a whole create, and a client
    /// sends thousands of requests over one connection; kube-apiserver caches the same way.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], (UserInfo, std::time::Instant)>>,
}

/// How long a verified chain is trusted without verifying it again.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Bound on remembered chains; the cache is emptied when it would grow past this.
const VERIFIED_MAX: usize = 4096;

impl ClientCertAuthenticator {
    pub fn new(roots: Arc<RootCertStore>) -> Result<Self, rustls::server::VerifierBuilderError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots, crypto_provider()).build()?;
        Ok(ClientCertAuthenticator {
            verifier,
            verified: Default::default(),
        })
    }

    pub(super) fn authenticate(&self, req: &Parts) -> Verdict {
        match req.extensions.get::<PeerCertificates>() {
            None => Verdict::NotApplicable,
            Some(certs) => match self.verify_cached(&certs.0) {
                Ok(user) => Verdict::Authenticated(user),
                Err(reason) => Verdict::Rejected(reason),
            },
        }
    }

    /// [`Self::verify`], remembering a success for [`VERIFIED_TTL`].
    pub(super) fn verify_cached(&self, chain: &[CertificateDer<'_>]) -> Result<UserInfo, String> {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        for cert in chain {
            hasher.update((cert.len() as u64).to_be_bytes());
            hasher.update(cert.as_ref());
        }
        let key: [u8; 32] = hasher.finalize().into();
        let now = std::time::Instant::now();
        let lock = || self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((user, until)) = lock().get(&key) {
            if *until > now {
                return Ok(user.clone());
            }
        }
        let user = self.verify(chain)?;
        // Never remember a chain past the moment one of its certificates expires.
        let ttl = time_to_expiry(chain).map_or(VERIFIED_TTL, |left| left.min(VERIFIED_TTL));
        let mut cache = lock();
        if cache.len() >= VERIFIED_MAX {
            cache.clear();
        }
        cache.insert(key, (user.clone(), now + ttl));
        Ok(user)
    }

    /// Verify `chain` (leaf first) now and map it to a user.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<UserInfo, String> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| "empty client certificate chain".to_string())?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| format!("client certificate not accepted: {e}"))?;
        user_from_certificate(leaf)
    }
}

/// How long until the first certificate of `chain` expires (zero if one already has); `None`
/// when a certificate cannot be parsed (verification has then failed anyway).
fn time_to_expiry(chain: &[CertificateDer<'_>]) -> Option<std::time::Duration> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    chain
        .iter()
        .map(|der| {
            let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
            let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
            Some(std::time::Duration::from_secs(
                not_after.saturating_sub(now),
            ))
        })
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()
}

/// The user a certificate names: CommonName → username, each Organization → a group.
/// A certificate without a CommonName names nobody (as in k8s.io/apiserver).
pub fn user_from_certificate(cert: &CertificateDer<'_>) -> Result<UserInfo, String> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("client certificate cannot be parsed: {e}"))?;
    let subject = cert.subject();
    let username = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or_else(|| "client certificate has no CommonName".to_string())?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    Ok(UserInfo {
        username,
        groups,
        extra: Default::default(),
    })
}
