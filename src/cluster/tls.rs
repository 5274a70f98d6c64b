//! The serving certificate from `--tls-cert-file`/`--tls-private-key-file`, reloaded when the
//! files change (cert-manager rotates the Secret; the kubelet updates the mounted files).
//! New handshakes get the new certificate; open connections keep theirs.
use crate::auth::x509::{crypto_provider, RequestClientCert};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the files are compared with what is being served.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Serves the current key pair; [`ReloadingCert::reload`] replaces it.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// What is served, and the file bytes it came from (to notice a change).
    current: RwLock<(Arc<CertifiedKey>, Vec<u8>)>,
}

impl ReloadingCert {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, String> {
        let (key, bytes) = load_pair(cert_file, key_file)?;
        Ok(Arc::new(ReloadingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new((key, bytes)),
        }))
    }

    /// Re-read the files; `Ok(true)` when the served certificate changed. A pair that does not
    /// load (half-written during rotation) is an error and the old pair stays.
    pub fn reload(&self) -> Result<bool, String> {
        let (key, bytes) = load_pair(&self.cert_file, &self.key_file)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.1 == bytes {
            return Ok(false);
        }
        *current = (key, bytes);
        Ok(true)
    }

    /// Check the files every [`RELOAD_INTERVAL`] for the life of the process.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                match this.reload() {
                    Ok(true) => tracing::info!(
                        "serving certificate reloaded from {}",
                        this.cert_file.display()
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("serving certificate not reloaded: {e}"),
                }
            }
        });
    }

    /// The certificate served now (DER of the leaf), which other replicas pin.
    pub fn leaf_der(&self) -> Option<Vec<u8>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.0.cert.first().map(|c| c.to_vec())
    }

    /// The TLS configuration serving this certificate and requesting (not verifying) client
    /// certificates; see [`RequestClientCert`].
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(RequestClientCert::without_hints()))
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

fn load_pair(cert_file: &Path, key_file: &Path) -> Result<(Arc<CertifiedKey>, Vec<u8>), String> {
    let cert_pem = std::fs::read(cert_file).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let key_pem = std::fs::read(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert_file.display()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{}: {e}", key_file.display()))?
        .ok_or_else(|| format!("{}: no private key", key_file.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &crypto_provider()).map_err(|e| {
        format!(
            "{} does not match {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    let mut bytes = cert_pem;
    bytes.extend_from_slice(&key_pem);
    Ok((Arc::new(certified), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, cn: &str) {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    }

    fn served_der(c: &ReloadingCert) -> Vec<u8> {
        c.current.read().unwrap().0.cert[0].as_ref().to_vec()
    }

    #[test]
    fn rotated_files_are_served_and_a_broken_pair_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "one");
        let c =
            ReloadingCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        let first = served_der(&c);
        assert!(!c.reload().unwrap(), "unchanged files are not a change");

        write_pair(dir.path(), "two");
        assert!(c.reload().unwrap());
        let second = served_der(&c);
        assert_ne!(first, second);

        // Half-way through a rotation: the key does not match the certificate.
        let other = tempfile::tempdir().unwrap();
        write_pair(other.path(), "three");
        std::fs::copy(other.path().join("tls.crt"), dir.path().join("tls.crt")).unwrap();
        assert!(c.reload().is_err());
        assert_eq!(served_der(&c), second);
        assert!(c.server_config().is_ok());
    }
}
