//! Replica to replica, on etcd: the leader decides and commits the creates and deletes the
//! other replicas receive (see `registry/forward.rs` for why).
//!
//! - Each replica publishes a [`Contact`] with its leadership (`Store::advertise`): its URL, a
//!   random token and the SHA-256 of its serving certificate. It lives in etcd, readable only by
//!   whoever may read the API's data anyway.
//! - A replica forwards a create or delete to the leader's URL over HTTP/2, trusting exactly
//!   the pinned certificate and presenting the token ([`client::Forwarder`]).
//! - The leader serves [`WRITES_PATH`] outside authentication, audit and authorization: the
//!   forwarding replica did those for the original request; the token is what is checked.
use crate::registry::{Registry, Write};
use crate::store::Store;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod client;
mod pinned;

/// Where forwarded writes go, followed by `/creates/<resource>` or `/deletes/<resource>`;
/// never an API path (no `/api`, `/apis` prefix).
pub const WRITES_PATH: &str = "/internal/ipam.miloapis.com";

/// How a replica is reached by the others; published with its leadership.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    /// `https://<advertise address>:<port>`.
    pub url: String,
    /// What a forwarded request presents (`Authorization: Bearer`).
    pub token: String,
    /// Hex SHA-256 of the serving certificate (DER), the only one a forwarding replica trusts.
    pub cert_sha256: String,
}

/// This replica's side: its token, and the route answering forwarded writes.
#[derive(Clone)]
pub struct Peer {
    token: Arc<str>,
}

impl Default for Peer {
    fn default() -> Self {
        Self::new()
    }
}

impl Peer {
    /// A new random token, for this process's lifetime.
    pub fn new() -> Peer {
        let mut bytes = [0u8; 32];
        let random = crate::auth::x509::crypto_provider().secure_random;
        if random.fill(&mut bytes).is_err() {
            // No randomness: publish nothing anyone could guess.
            tracing::warn!("no random token for forwarded writes; this replica takes none");
            return Peer {
                token: Arc::from(""),
            };
        }
        Peer {
            token: Arc::from(hex(&bytes)),
        }
    }

    /// The route answering writes forwarded by other replicas (merged outside the API's
    /// authentication and audit layers).
    pub fn routes(&self, registry: Registry) -> Router {
        Router::new()
            .route(
                &format!("{WRITES_PATH}/{{write}}/{{resource}}"),
                post(forwarded_write),
            )
            .with_state((registry, self.token.clone()))
    }

    /// Publish this replica's contact through `store` now, and again whenever the serving
    /// certificate (`serving_cert`, DER of the leaf) changes, e.g. when it is reloaded.
    pub fn advertise(
        &self,
        store: Arc<dyn Store>,
        url: String,
        serving_cert: impl Fn() -> Option<Vec<u8>> + Send + 'static,
    ) {
        if self.token.is_empty() {
            return;
        }
        let token = self.token.to_string();
        tokio::spawn(async move {
            let mut published = None;
            loop {
                let pin = serving_cert().map(|der| hex(&Sha256::digest(der)));
                if pin.is_some() && pin != published {
                    let contact = Contact {
                        url: url.clone(),
                        token: token.clone(),
                        cert_sha256: pin.clone().unwrap_or_default(),
                    };
                    match serde_json::to_string(&contact) {
                        Ok(c) => store.advertise(c),
                        Err(e) => tracing::warn!(error = %e, "contact not published"),
                    }
                    published = pin;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        });
    }
}

/// The URL other replicas reach this one at: `--advertise-address`, else the address it is
/// bound to, else the local address this host would use to reach `toward` (an etcd member,
/// reachable from every replica).
pub fn url(advertise: Option<std::net::IpAddr>, bound: SocketAddr, toward: &[String]) -> String {
    let ip = advertise
        .or_else(|| (!bound.ip().is_unspecified()).then(|| bound.ip()))
        .or_else(|| toward.iter().find_map(|s| local_ip_toward(s)))
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    format!("https://{}", SocketAddr::new(ip, bound.port()))
}

/// The source address the kernel picks for `url`'s host: a UDP socket "connected" there
/// sends nothing.
fn local_ip_toward(url: &str) -> Option<std::net::IpAddr> {
    let authority = url.split("://").nth(1).unwrap_or(url);
    let authority = authority.split('/').next()?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()?
        .next()?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(addr).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `headers` carry `token` as a bearer token (compared as digests: no early exit on
/// the first differing byte of the token itself).
fn presents(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    !token.is_empty() && Sha256::digest(given) == Sha256::digest(token)
}

async fn forwarded_write(
    State((registry, token)): State<(Registry, Arc<str>)>,
    Path((write, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !presents(&headers, &token) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let write = match write.as_str() {
        "creates" => Write::Create,
        "deletes" => Write::Delete,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    // To its end even if the forwarding replica goes away meanwhile (see
    // `Registry::uncancelled`).
    let answer =
        tokio::spawn(async move { registry.write_forwarded(write, &resource, &body).await })
            .await
            .unwrap_or_default();
    ([(http::header::CONTENT_TYPE, "application/json")], answer).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_taken_only_with_the_token() {
        let mut headers = HeaderMap::new();
        assert!(!presents(&headers, "abc"));
        headers.insert(http::header::AUTHORIZATION, "Bearer abd".parse().unwrap());
        assert!(!presents(&headers, "abc"));
        headers.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert!(presents(&headers, "abc"));
        // A replica without a token takes nothing, not even an empty one.
        headers.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert!(!presents(&headers, ""));
    }

    #[test]
    fn the_url_is_the_bound_address_unless_told_or_unspecified() {
        let bound: SocketAddr = "10.1.2.3:8443".parse().unwrap();
        assert_eq!(url(None, bound, &[]), "https://10.1.2.3:8443");
        let told = Some("10.9.9.9".parse().unwrap());
        assert_eq!(url(told, bound, &[]), "https://10.9.9.9:8443");
        let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let toward = ["http://127.0.0.1:2379".to_string()];
        assert_eq!(url(None, any, &toward), "https://127.0.0.1:8443");
        let v6: SocketAddr = "[fd00::1]:443".parse().unwrap();
        assert_eq!(url(None, v6, &[]), "https://[fd00::1]:443");
    }
}
