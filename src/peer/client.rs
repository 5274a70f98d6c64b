//! Sends creates and deletes to the leader: one HTTP/2 connection, reused by every write
//! until the leader changes or the connection ends.
use super::pinned::Pinned;
use super::{Contact, WRITES_PATH};
use crate::error::ApiError;
use crate::registry::{ForwardWrites, Forwarded, Write};
use axum::body::Body;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// TCP, TLS and HTTP/2 handshakes together: a leader that does not get this far in time is
/// not waited for (the write is decided here).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connection, writes are decided here this long before the next try: every
/// write must not wait out [`CONNECT_TIMEOUT`] for a leader that is gone.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// A sent write is answered within this or the client hears 503 (the leader's own etcd
/// calls are bounded well within it).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings find a leader that stopped answering (paused, cut off) without waiting for
/// each write to time out.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read (an object, or a Status).
const MAX_ANSWER: usize = 16 << 20;

#[derive(Default)]
pub struct Forwarder {
    conn: tokio::sync::Mutex<Conn>,
}

#[derive(Default)]
enum Conn {
    #[default]
    None,
    Open {
        contact: Arc<str>,
        /// `https://<leader>/internal/ipam.miloapis.com`.
        base: Arc<str>,
        bearer: http::HeaderValue,
        send: SendRequest<Body>,
    },
    Failed {
        contact: Arc<str>,
        at: Instant,
    },
}

impl Forwarder {
    /// The connection to the leader published as `contact`, opened when there is none; `None`
    /// when it cannot be opened now.
    async fn connection(
        &self,
        contact: &str,
    ) -> Option<(SendRequest<Body>, Arc<str>, http::HeaderValue)> {
        let mut conn = self.conn.lock().await;
        match &*conn {
            Conn::Open {
                contact: c,
                base,
                bearer,
                send,
            } if &**c == contact && !send.is_closed() => {
                return Some((send.clone(), base.clone(), bearer.clone()));
            }
            Conn::Failed { contact: c, at } if &**c == contact && at.elapsed() < RETRY_AFTER => {
                return None;
            }
            _ => {}
        }
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, connect(contact)).await;
        match opened {
            Ok(Ok((send, base, bearer))) => {
                *conn = Conn::Open {
                    contact: Arc::from(contact),
                    base: base.clone(),
                    bearer: bearer.clone(),
                    send: send.clone(),
                };
                Some((send, base, bearer))
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("no connection within {CONNECT_TIMEOUT:?}"),
                };
                tracing::debug!(
                    error = why,
                    "the leader cannot be reached; writes are decided here meanwhile"
                );
                *conn = Conn::Failed {
                    contact: Arc::from(contact),
                    at: Instant::now(),
                };
                None
            }
        }
    }

    /// Forget the connection to `contact` (it refused a write): the next write reconnects.
    async fn drop_connection(&self, contact: &str) {
        let mut conn = self.conn.lock().await;
        if matches!(&*conn, Conn::Open { contact: c, .. } if &**c == contact) {
            *conn = Conn::Failed {
                contact: Arc::from(contact),
                at: Instant::now(),
            };
        }
    }
}

#[async_trait::async_trait]
impl ForwardWrites for Forwarder {
    async fn send(
        &self,
        leader: &str,
        write: Write,
        resource: &'static str,
        body: Vec<u8>,
    ) -> Forwarded {
        let Some((mut send, base, bearer)) = self.connection(leader).await else {
            return Forwarded::NotSent;
        };
        let request = http::Request::post(format!("{base}/{}/{resource}", write.as_str()))
            .header(http::header::AUTHORIZATION, bearer)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body));
        let Ok(request) = request else {
            return Forwarded::NotSent;
        };
        // A connection that ended before this write went out: nothing was sent.
        if send.ready().await.is_err() {
            self.drop_connection(leader).await;
            return Forwarded::NotSent;
        }
        let answered = tokio::time::timeout(ANSWER_TIMEOUT, async {
            let response = send
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_ANSWER)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body))
        })
        .await;
        let unknown = |why: String| {
            Forwarded::Answered(Err(ApiError::ServiceUnavailable(format!(
                "the leader replica deciding this write did not answer ({why}); it may or may not have happened"
            ))))
        };
        match answered {
            Ok(Ok((status, body))) if status == http::StatusCode::OK => {
                Forwarded::Answered(Ok(body))
            }
            Ok(Ok((status, _))) => {
                // Refused before it was looked at (a token from before the leader restarted,
                // a replica without the route).
                tracing::debug!(%status, "the leader refused a forwarded write; deciding it here");
                self.drop_connection(leader).await;
                Forwarded::NotSent
            }
            Ok(Err(e)) => unknown(e),
            Err(_) => unknown(format!("nothing within {ANSWER_TIMEOUT:?}")),
        }
    }
}

/// Open an HTTP/2 connection to the replica published as `contact`.
async fn connect(
    contact: &str,
) -> Result<(SendRequest<Body>, Arc<str>, http::HeaderValue), String> {
    let contact: Contact =
        serde_json::from_str(contact).map_err(|e| format!("the leader's contact: {e}"))?;
    let base: http::Uri = contact
        .url
        .parse()
        .map_err(|e| format!("{}: {e}", contact.url))?;
    let authority = base
        .authority()
        .ok_or_else(|| format!("{}: no host", contact.url))?
        .clone();
    let base: Arc<str> = Arc::from(format!("https://{authority}{WRITES_PATH}"));
    let bearer = http::HeaderValue::from_str(&format!("Bearer {}", contact.token))
        .map_err(|e| e.to_string())?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut config =
        rustls::ClientConfig::builder_with_provider(crate::auth::x509::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned::new(&contact.cert_sha256)))
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{authority}: TLS: {e}"))?;
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("{authority}: HTTP/2: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "the connection to the leader ended");
        }
    });
    Ok((send, base, bearer))
}
