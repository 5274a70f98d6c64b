//! The HTTPS server: a rustls accept loop in front of an axum [`Router`], after axum's
//! `low-level-rustls` example, with mini-redis's shape: [`run`] takes a bound listener and a
//! shutdown future, so `main` passes ctrl-c/SIGTERM and tests bind port 0.
//!
//! Each connection is one task: the TLS handshake happens inside it (a slow or stalled client
//! holds up nobody), then HTTP/1.1 or HTTP/2 (ALPN `h2`, `http/1.1`) is served by hyper-util's
//! auto builder. Every request carries, as extensions:
//! - [`PeerCertificates`] when the client presented a certificate,
//! - [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo) with the client's address,
//! - [`Shutdown`], so long-lived responses (watches) can end themselves when draining begins.
//!
//! Connections are bounded in number and closed when idle (see [`connections`]): the TLS
//! handshake has [`HANDSHAKE_TIMEOUT`], a request's headers [`HEADER_READ_TIMEOUT`], and a
//! connection with no request in flight the idle timeout (which covers the wait for the first
//! byte, HTTP/1.1 keep-alive and HTTP/2 without open streams); HTTP/2 pings find dead peers
//! and TCP keep-alive dead HTTP/1.1 ones, whose watches would otherwise be busy forever.
//!
//! Shutdown: stop accepting, ask every connection to finish gracefully (HTTP/1 closes after the
//! in-flight response, HTTP/2 sends GOAWAY), wait at most [`DRAIN_TIMEOUT`], then drop whatever
//! is left — a watch stream that ignores [`Shutdown`] cannot hold the process up.
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use connections::{Connections, InFlight, Slot};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests before dropping their connections.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1 client may take to send a request's headers. hyper runs this timer
/// while it waits for the next request too, so it also bounds HTTP/1.1 keep-alive.
/// kube-apiserver: 32 s.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings every so often; a peer that does not answer within
/// [`H2_KEEP_ALIVE_TIMEOUT`] is gone (client-go's own: 30 s, 15 s).
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(15);
/// TCP keep-alive probes: after this much silence, then as often, up to
/// [`TCP_KEEP_ALIVE_PROBES`] unanswered (Go's net package, so kube-apiserver's).
const TCP_KEEP_ALIVE: Duration = Duration::from_secs(15);
const TCP_KEEP_ALIVE_PROBES: u32 = 9;
/// How long an idle connection being closed may take (an HTTP/2 GOAWAY and its ping) before
/// it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub mod connections;
pub use connections::ConnectionLimits;

/// The certificate chain the client presented in the TLS handshake, leaf first.
///
/// The handshake proved the client holds the leaf's private key; whether the chain is *trusted*
/// is the authenticator's decision ([`crate::auth`]), because which CA applies depends on the
/// authentication method (client CA, front-proxy CA), as in k8s.io/apiserver.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// Tells a request handler that the server is draining; cheap to clone.
///
/// Handlers streaming indefinitely (watch) should end their response when [`Shutdown::wait`]
/// completes; clients then reconnect elsewhere. Those that do not are cut off after
/// [`DRAIN_TIMEOUT`].
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once draining has begun (or the server is gone).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the sender is gone: the server has stopped, which is a shutdown too.
        let _ = rx.wait_for(|draining| *draining).await;
    }
}

/// Serve `app` over TLS on `listener` until `shutdown` completes, then drain.
///
/// Returns once every connection has finished or been dropped after [`DRAIN_TIMEOUT`]. Errors
/// accepting a single connection are logged and do not stop the server.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_with_drain_timeout(listener, tls, app, limits, shutdown, DRAIN_TIMEOUT).await
}

/// [`run`] with another drain bound (tests).
pub(crate) async fn run_with_drain_timeout(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let (draining_tx, draining_rx) = watch::channel(false);
    let open = Connections::new(limits.max_connections);
    let builder = Arc::new(http_builder());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Refused: dropping the socket closes it at once.
                    let Some(slot) = open.admit() else { continue };
                    connections.spawn(serve_connection(
                        Connection {
                            tcp,
                            peer,
                            slot,
                            idle_timeout: limits.idle_timeout,
                        },
                        acceptor.clone(),
                        builder.clone(),
                        app.clone(),
                        Shutdown(draining_rx.clone()),
                    ));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }

    drop(listener);
    let _ = draining_tx.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!("draining {open} open connection(s)");
    }
    let drained = tokio::time::timeout(drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connection(s) still open after {drain_timeout:?}; closing them",
            connections.len()
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// hyper's settings for every connection: HTTP/1.1 or HTTP/2, whichever the client speaks.
fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// An accepted connection and its place among the open ones.
struct Connection {
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    idle_timeout: Option<Duration>,
}

async fn serve_connection(
    connection: Connection,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    shutdown: Shutdown,
) {
    let Connection {
        tcp,
        peer,
        mut slot,
        idle_timeout,
    } = connection;
    let _ = tcp.set_nodelay(true);
    set_tcp_keep_alive(&tcp);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let stream = tokio::select! {
        why = slot.idle_close(idle_timeout) => {
            slot.closing(why);
            return;
        }
        r = handshake => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = shutdown.wait() => return,
    };

    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .filter(|chain| !chain.is_empty())
        .map(|chain| PeerCertificates(Arc::new(chain.to_vec())));

    let request_shutdown = shutdown.clone();
    let tracker = slot.tracker();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let in_flight = tracker.request_started();
        let ext = req.extensions_mut();
        if let Some(certs) = &certs {
            ext.insert(certs.clone());
        }
        ext.insert(ConnectInfo(peer));
        ext.insert(request_shutdown.clone());
        let response = app.clone().oneshot(req);
        async move {
            let response = response.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(Tracked {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
    });

    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        why = slot.idle_close(idle_timeout) => {
            slot.closing(why);
            conn.as_mut().graceful_shutdown();
            loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    () = tokio::time::sleep(CLOSE_GRACE) => {
                        // An HTTP/2 peer that neither answers nor closes is dropped, unless a
                        // request arrived as the close began: that one may finish.
                        if !slot.busy() {
                            break Ok(());
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended with an error: {e}");
    }
}

/// A response body that keeps its connection busy until it is finished or dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Probe a silent peer, so a dead one's connection (with a watch on it, busy forever) closes.
fn set_tcp_keep_alive(tcp: &TcpStream) {
    use rustix::net::sockopt;
    let _ = sockopt::set_socket_keepalive(tcp, true)
        .and_then(|()| sockopt::set_tcp_keepidle(tcp, TCP_KEEP_ALIVE))
        .and_then(|()| sockopt::set_tcp_keepintvl(tcp, TCP_KEEP_ALIVE))
        .and_then(|()| sockopt::set_tcp_keepcnt(tcp, TCP_KEEP_ALIVE_PROBES));
}

/// Errors that concern one connection only (the client gave up before we accepted it).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests;
