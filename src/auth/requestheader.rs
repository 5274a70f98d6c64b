//! Front-proxy authentication: kube-apiserver proxies a request with its front-proxy client
//! certificate and tells us who the user is in `X-Remote-User`, `X-Remote-Group` and
//! `X-Remote-Extra-<key>` headers (names configurable).
//!
//! The headers are believed only when the connection's certificate chains to the requestheader
//! client CA *and* its CommonName is among the allowed names (any name when the list is empty),
//! as k8s.io/apiserver's `requestheader` authenticator. Any other request's headers are never
//! read, so a client cannot name itself `admin` by sending a header.
use super::x509::ClientCertAuthenticator;
use super::{UserInfo, Verdict};
use crate::server::PeerCertificates;
use http::request::Parts;
use http::HeaderName;
use std::collections::BTreeMap;

/// One front-proxy configuration (from flags or `extension-apiserver-authentication`).
#[derive(Debug)]
pub struct RequestHeaderAuthenticator {
    /// Verifies the proxy's certificate against the requestheader client CA.
    pub proxy_ca: ClientCertAuthenticator,
    /// Proxy certificate CommonNames allowed to assert identities; empty: any.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<HeaderName>,
    pub group_headers: Vec<HeaderName>,
    /// Lower-case header-name prefixes for extra user info (`x-remote-extra-`).
    pub extra_prefixes: Vec<String>,
}

impl RequestHeaderAuthenticator {
    pub(super) fn authenticate(&self, req: &Parts) -> Verdict {
        let Some(certs) = req.extensions.get::<PeerCertificates>() else {
            return Verdict::NotApplicable;
        };
        // A certificate from another CA is not a front-proxy request; the next method judges it.
        let Ok(proxy) = self.proxy_ca.verify_cached(&certs.0) else {
            return Verdict::NotApplicable;
        };
        if !self.allowed_names.is_empty() && !self.allowed_names.contains(&proxy.username) {
            return Verdict::Rejected(format!(
                "front-proxy certificate CN {:?} is not in the allowed names {:?}",
                proxy.username, self.allowed_names
            ));
        }
        let Some(username) = self
            .username_headers
            .iter()
            .find_map(|h| req.headers.get(h).and_then(|v| v.to_str().ok()))
            .filter(|u| !u.is_empty())
        else {
            // As k8s.io/apiserver: a proxied request without a user is not authenticated here.
            return Verdict::NotApplicable;
        };
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| req.headers.get_all(h))
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &req.headers {
            let name = name.as_str(); // header names are lower-case in `http`
            for prefix in &self.extra_prefixes {
                if let Some(key) = name.strip_prefix(prefix.as_str()) {
                    if let Ok(v) = value.to_str() {
                        extra
                            .entry(unescape_extra_key(key))
                            .or_default()
                            .push(v.to_string());
                    }
                }
            }
        }
        Verdict::Authenticated(UserInfo {
            username: username.to_string(),
            groups,
            extra,
        })
    }
}

/// Extra keys are lower-cased and percent-encoded by the proxy (`X-Remote-Extra-Scopes%2fa`).
fn unescape_extra_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&key[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_lowercase()
}

#[cfg(test)]
mod unescape_tests {
    #[test]
    fn extra_keys_are_percent_decoded_and_lowercased() {
        assert_eq!(super::unescape_extra_key("Scopes"), "scopes");
        assert_eq!(
            super::unescape_extra_key("example.com%2fteam"),
            "example.com/team"
        );
        assert_eq!(super::unescape_extra_key("bad%zz"), "bad%zz");
        assert_eq!(super::unescape_extra_key("end%2"), "end%2");
    }
}
