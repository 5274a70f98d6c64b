//! Cluster-mode authentication, delegated to the cluster as every aggregated API server does:
//! front-proxy headers ([`RequestHeaderAuthenticator`]), then client certificates chaining to the
//! cluster's client CA, then bearer tokens through TokenReview.
//!
//! The CAs, allowed names and header names come from the flags when given, else from the
//! ConfigMap `kube-system/extension-apiserver-authentication` that kube-apiserver maintains;
//! the ConfigMap is watched and the CA files given by flags are re-read every
//! [`CA_FILE_RELOAD_INTERVAL`], and the settings replaced as either changes (CA rotation).
use super::requestheader::RequestHeaderAuthenticator;
use super::tokenreview::TokenReviewAuthenticator;
use super::x509::ClientCertAuthenticator;
use super::{Authenticator, Method, Reloadable};
use crate::options::ClusterConfig;
use futures::StreamExt;
use http::HeaderName;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::watcher;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub const AUTH_CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";
/// How often CA files given by flags are compared with what is in use.
pub const CA_FILE_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The settings as the flags give them, files already read.
#[derive(Debug, Clone, Default)]
struct Flags {
    client_ca_pem: Option<String>,
    requestheader_ca_pem: Option<String>,
    allowed_names: Option<Vec<String>>,
    username_headers: Option<Vec<String>>,
    group_headers: Option<Vec<String>>,
    extra_headers_prefix: Option<Vec<String>>,
}

impl Flags {
    fn complete(&self) -> bool {
        self.client_ca_pem.is_some()
            && self.requestheader_ca_pem.is_some()
            && self.allowed_names.is_some()
            && self.username_headers.is_some()
            && self.group_headers.is_some()
            && self.extra_headers_prefix.is_some()
    }
}

/// The CA files named by flags, re-read while the server runs.
#[derive(Debug, Clone, Default)]
struct CaFiles {
    client_ca: Option<std::path::PathBuf>,
    requestheader_ca: Option<std::path::PathBuf>,
}

/// What the authenticator's reloadable parts are built from.
#[derive(Clone)]
pub(super) struct Sources {
    files: CaFiles,
    /// The flags (CA files as last read) and the ConfigMap data last applied: either may change.
    inputs: Arc<std::sync::Mutex<(Flags, BTreeMap<String, String>)>>,
    client_ca: Reloadable<ClientCertAuthenticator>,
    requestheader: Reloadable<RequestHeaderAuthenticator>,
}

/// Build the cluster-mode authenticator. Reads the ConfigMap once before returning (so the
/// first request is judged with the cluster's settings) and, unless the flags give everything,
/// keeps watching it in a background task. `authn_client` reaches kube-apiserver for the
/// ConfigMap and TokenReviews.
pub async fn authenticator(
    config: &ClusterConfig,
    authn_client: kube::Client,
) -> Result<Arc<Authenticator>, String> {
    let sources = Sources::from_flags(config)?;
    if sources.files.client_ca.is_some() || sources.files.requestheader_ca.is_some() {
        tokio::spawn(sources.clone().follow_ca_files());
    }
    if sources.flags_complete() {
        sources.apply(&BTreeMap::new())?;
    } else {
        let api: Api<ConfigMap> = Api::namespaced(authn_client.clone(), AUTH_CONFIGMAP_NAMESPACE);
        let data = match api.get_opt(AUTH_CONFIGMAP).await {
            Ok(cm) => cm.and_then(|cm| cm.data).unwrap_or_default(),
            Err(e) => {
                return Err(format!(
                    "cannot read {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP} (is the RoleBinding to extension-apiserver-authentication-reader in place?): {e}"
                ))
            }
        };
        sources.apply(&data)?;
        tokio::spawn(sources.clone().watch(api));
    }
    Ok(Arc::new(Authenticator::new(vec![
        Method::RequestHeader(sources.requestheader.clone()),
        Method::DynamicClientCert(sources.client_ca.clone()),
        Method::TokenReview(TokenReviewAuthenticator::new(authn_client)),
    ])))
}

impl Sources {
    /// The sources as the flags give them, CA files read now.
    pub(super) fn from_flags(config: &ClusterConfig) -> Result<Sources, String> {
        let rh = &config.requestheader;
        let files = CaFiles {
            client_ca: config.client_ca_file.clone(),
            requestheader_ca: rh.client_ca_file.clone(),
        };
        let flags = Flags {
            client_ca_pem: files.client_ca.as_deref().map(read).transpose()?,
            requestheader_ca_pem: files.requestheader_ca.as_deref().map(read).transpose()?,
            allowed_names: rh.allowed_names.clone(),
            username_headers: rh.username_headers.clone(),
            group_headers: rh.group_headers.clone(),
            extra_headers_prefix: rh.extra_headers_prefix.clone(),
        };
        Ok(Sources {
            files,
            inputs: Arc::new(std::sync::Mutex::new((flags, BTreeMap::new()))),
            client_ca: Reloadable::default(),
            requestheader: Reloadable::default(),
        })
    }

    fn inputs(&self) -> std::sync::MutexGuard<'_, (Flags, BTreeMap<String, String>)> {
        self.inputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flags_complete(&self) -> bool {
        self.inputs().0.complete()
    }

    /// The client-CA authenticator, as the request path holds it.
    #[cfg(test)]
    pub(super) fn client_ca(&self) -> Reloadable<ClientCertAuthenticator> {
        self.client_ca.clone()
    }

    /// Re-read the CA files; when one changed, rebuild the settings with it and the last
    /// ConfigMap data. `Ok(true)` when something changed. A file that does not read or parse
    /// (half-written during rotation) is an error and the settings in use stay.
    pub(super) fn reload_ca_files(&self) -> Result<bool, String> {
        let client_ca_pem = self.files.client_ca.as_deref().map(read).transpose()?;
        let requestheader_ca_pem = self
            .files
            .requestheader_ca
            .as_deref()
            .map(read)
            .transpose()?;
        // Held while building, so a ConfigMap update cannot interleave with a file change.
        let mut inputs = self.inputs();
        if inputs.0.client_ca_pem == client_ca_pem
            && inputs.0.requestheader_ca_pem == requestheader_ca_pem
        {
            return Ok(false);
        }
        let flags = Flags {
            client_ca_pem,
            requestheader_ca_pem,
            ..inputs.0.clone()
        };
        self.build(&flags, &inputs.1)?;
        inputs.0 = flags;
        Ok(true)
    }

    /// Follow the CA files for the life of the process.
    async fn follow_ca_files(self) {
        let mut tick = tokio::time::interval(CA_FILE_RELOAD_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.reload_ca_files() {
                Ok(true) => tracing::info!("client CA files reloaded"),
                Ok(false) => {}
                Err(e) => tracing::warn!("client CA files not reloaded: {e}"),
            }
        }
    }

    /// Replace the settings from the ConfigMap's `data` (flags win).
    pub(super) fn apply(&self, data: &BTreeMap<String, String>) -> Result<(), String> {
        let mut inputs = self.inputs();
        self.build(&inputs.0, data)?;
        inputs.1 = data.clone();
        Ok(())
    }

    /// Build and install the authenticators from `f` and `data`; nothing changes on an error.
    fn build(&self, f: &Flags, data: &BTreeMap<String, String>) -> Result<(), String> {
        let client_ca_pem = f
            .client_ca_pem
            .clone()
            .or_else(|| data.get("client-ca-file").cloned());
        let client_ca = match client_ca_pem.filter(|p| !p.trim().is_empty()) {
            Some(pem) => Some(
                ClientCertAuthenticator::new(roots(&pem).map_err(|e| format!("client CA: {e}"))?)
                    .map_err(|e| format!("client CA: {e}"))?,
            ),
            None => None,
        };
        let rh_pem = f
            .requestheader_ca_pem
            .clone()
            .or_else(|| data.get("requestheader-client-ca-file").cloned());
        let list = |flag: &Option<Vec<String>>, key: &str| -> Result<Vec<String>, String> {
            match flag {
                Some(v) => Ok(v.clone()),
                None => match data.get(key) {
                    Some(json) if !json.trim().is_empty() => serde_json::from_str(json)
                        .map_err(|e| format!("{AUTH_CONFIGMAP} {key}: {e}")),
                    _ => Ok(Vec::new()),
                },
            }
        };
        let headers = |v: Vec<String>| -> Result<Vec<HeaderName>, String> {
            v.iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|e| format!("{h:?}: {e}")))
                .collect()
        };
        let requestheader = match rh_pem.filter(|p| !p.trim().is_empty()) {
            Some(pem) => Some(RequestHeaderAuthenticator {
                proxy_ca: ClientCertAuthenticator::new(
                    roots(&pem).map_err(|e| format!("requestheader client CA: {e}"))?,
                )
                .map_err(|e| format!("requestheader client CA: {e}"))?,
                allowed_names: list(&f.allowed_names, "requestheader-allowed-names")?,
                username_headers: headers(list(
                    &f.username_headers,
                    "requestheader-username-headers",
                )?)?,
                group_headers: headers(list(&f.group_headers, "requestheader-group-headers")?)?,
                extra_prefixes: list(
                    &f.extra_headers_prefix,
                    "requestheader-extra-headers-prefix",
                )?
                .into_iter()
                .map(|p| p.to_lowercase())
                .collect(),
            }),
            None => None,
        };
        tracing::info!(
            client_ca = client_ca.is_some(),
            requestheader = requestheader.is_some(),
            "authentication settings loaded"
        );
        self.client_ca.set(client_ca);
        self.requestheader.set(requestheader);
        Ok(())
    }

    /// Follow the ConfigMap for the life of the process; a bad update is logged and the
    /// previous settings kept.
    async fn watch(self, api: Api<ConfigMap>) {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={AUTH_CONFIGMAP}"));
        let mut stream = watcher(api, cfg).boxed();
        let mut last: Option<BTreeMap<String, String>> = None;
        while let Some(event) = stream.next().await {
            let cm = match event {
                Ok(watcher::Event::Apply(cm)) | Ok(watcher::Event::InitApply(cm)) => cm,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("watching {AUTH_CONFIGMAP}: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let data = cm.data.unwrap_or_default();
            if last.as_ref() == Some(&data) {
                continue;
            }
            match self.apply(&data) {
                Ok(()) => last = Some(data),
                Err(e) => tracing::error!("{AUTH_CONFIGMAP} not applied: {e}"),
            }
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A root store from a PEM bundle; an error when it holds no certificate.
pub fn roots(pem: &str) -> Result<Arc<RootCertStore>, String> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err("no usable CA certificate in the bundle".into());
    }
    Ok(Arc::new(store))
}
