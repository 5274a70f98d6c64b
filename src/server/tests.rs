use super::*;
use crate::auth::standalone::StandalonePki;
use axum::body::Body;
use axum::extract::Extension;
use axum::routing::get;
use bytes::Bytes;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

struct Harness {
    addr: SocketAddr,
    pki: StandalonePki,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(app: Router, drain_timeout: Duration) -> Harness {
    start_with(app, drain_timeout, ConnectionLimits::default()).await
}

async fn start_with(app: Router, drain_timeout: Duration, limits: ConnectionLimits) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let pki = StandalonePki::load_or_create(dir.path(), IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let tls = pki.server_config().unwrap();
    let done = tokio::spawn(run_with_drain_timeout(
        listener,
        tls,
        app,
        limits,
        async {
            let _ = stopped.await;
        },
        drain_timeout,
    ));
    Harness {
        addr,
        pki,
        stop: Some(stop),
        done,
        _dir: dir,
    }
}

impl Harness {
    /// A TLS connection, with the admin certificate if `with_cert`.
    async fn connect(&self, with_cert: bool) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.connect_alpn(with_cert, &[]).await
    }

    async fn connect_alpn(
        &self,
        with_cert: bool,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.try_connect_alpn(with_cert, alpn).await.unwrap()
    }

    /// A TLS connection, or why the handshake failed.
    async fn try_connect_alpn(
        &self,
        with_cert: bool,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let builder =
            rustls::ClientConfig::builder_with_provider(crate::auth::x509::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(self.pki.roots().unwrap());
        let mut config = if with_cert {
            let (cert, key) = self.pki.admin_identity_pem();
            let chain = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut key.as_bytes())
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(self.addr).await?;
        TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
    }

    /// `GET path` over HTTP/1.1 with `Connection: close`; the whole response as text.
    async fn get(&self, path: &str, with_cert: bool) -> String {
        let mut tls = self.connect(with_cert).await;
        send_get(&mut tls, path).await;
        let mut out = String::new();
        tls.read_to_string(&mut out).await.unwrap();
        out
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }
}

async fn send_get(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
}

async fn peer_cert_count(certs: Option<Extension<PeerCertificates>>) -> String {
    certs.map_or(0, |Extension(c)| c.0.len()).to_string()
}

#[tokio::test]
async fn presented_client_certificate_reaches_the_handler() {
    let app = Router::new().route("/certs", get(peer_cert_count));
    let mut h = start(app, Duration::from_secs(5)).await;
    assert!(h.get("/certs", true).await.ends_with("\r\n\r\n1"));
    assert!(h.get("/certs", false).await.ends_with("\r\n\r\n0"));
    h.shutdown();
    h.done.await.unwrap().unwrap();
}

#[tokio::test]
async fn alpn_prefers_h2_and_offers_http11() {
    let mut h = start(Router::new(), Duration::from_secs(5)).await;
    let tls = h.connect_alpn(true, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let tls = h.connect_alpn(true, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    h.shutdown();
    h.done.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stalled_handshake_blocks_no_one() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let mut h = start(app, Duration::from_secs(5)).await;
    // Connect and say nothing: the handshake never starts.
    let _silent = TcpStream::connect(h.addr).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), h.get("/", false))
        .await
        .expect("second client served while the first stalls");
    assert!(resp.ends_with("hello"), "{resp}");
    h.shutdown();
    // The stalled connection does not hold up shutdown either.
    tokio::time::timeout(Duration::from_secs(2), h.done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let app = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        }),
    );
    let mut h = start(app, Duration::from_secs(10)).await;
    let mut tls = h.connect(false).await;
    send_get(&mut tls, "/slow").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.shutdown();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("done"), "{out}");
    h.done.await.unwrap().unwrap();
    // And nothing new is accepted once draining began.
    assert!(TcpStream::connect(h.addr).await.is_err());
}

fn endless() -> Body {
    let chunks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b"event\n")), ()))
    });
    Body::from_stream(chunks)
}

#[tokio::test]
async fn shutdown_cuts_off_a_stream_that_ignores_it_after_the_drain_timeout() {
    let app = Router::new().route("/watch", get(|| async { endless() }));
    let mut h = start(app, Duration::from_millis(300)).await;
    let mut tls = h.connect(true).await;
    send_get(&mut tls, "/watch").await;
    let mut buf = [0u8; 256];
    assert!(tls.read(&mut buf).await.unwrap() > 0);

    let started = Instant::now();
    h.shutdown();
    tokio::time::timeout(Duration::from_secs(3), h.done)
        .await
        .expect("run returns after the drain timeout")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The client sees the stream end.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut rest))
        .await
        .expect("connection closed");
}

#[tokio::test]
async fn streams_that_watch_for_shutdown_end_promptly() {
    let app = Router::new().route(
        "/watch",
        get(|Extension(shutdown): Extension<Shutdown>| async move {
            let chunks = futures::stream::unfold(shutdown, |shutdown| async move {
                tokio::select! {
                    () = shutdown.wait() => None,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {
                        Some((Ok::<_, Infallible>(Bytes::from_static(b"event\n")), shutdown))
                    }
                }
            });
            Body::from_stream(chunks)
        }),
    );
    let mut h = start(app, Duration::from_secs(30)).await;
    let mut tls = h.connect(true).await;
    send_get(&mut tls, "/watch").await;
    let mut buf = [0u8; 256];
    assert!(tls.read(&mut buf).await.unwrap() > 0);

    let started = Instant::now();
    h.shutdown();
    let mut rest = String::new();
    tls.read_to_string(&mut rest).await.unwrap();
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "chunked body ends cleanly: {rest:?}"
    );
    h.done.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn limits(max_connections: usize, idle_timeout: Duration) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        idle_timeout: Some(idle_timeout),
    }
}

/// Read until the server closes the connection (EOF or an error); fails after `within`.
async fn closed_by_server(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, within: Duration) {
    let mut sink = Vec::new();
    tokio::time::timeout(within, tls.read_to_end(&mut sink))
        .await
        .expect("the server closes the connection")
        .ok();
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let h = start_with(
        app,
        Duration::from_secs(5),
        limits(100, Duration::from_millis(300)),
    )
    .await;
    // HTTP/1.1 (no ALPN: hyper waits for the first bytes to tell the protocol).
    let mut silent = h.connect(false).await;
    closed_by_server(&mut silent, Duration::from_secs(10)).await;
    // HTTP/2: the preface and SETTINGS, then no stream; the server answers with a GOAWAY and
    // closes.
    let mut h2 = h.connect_alpn(false, &[b"h2"]).await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    h2.flush().await.unwrap();
    closed_by_server(&mut h2, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_once_idle_after_its_request() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let h = start_with(
        app,
        Duration::from_secs(5),
        limits(100, Duration::from_millis(300)),
    )
    .await;
    let mut tls = h.connect(false).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .expect("the server closes the idle keep-alive connection")
        .ok();
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("hello"),
        "{out}"
    );
}

#[tokio::test]
async fn a_stream_outlives_the_idle_timeout() {
    let app = Router::new().route("/watch", get(|| async { endless() }));
    let h = start_with(
        app,
        Duration::from_secs(1),
        limits(100, Duration::from_millis(100)),
    )
    .await;
    let mut tls = h.connect(true).await;
    send_get(&mut tls, "/watch").await;
    // Ten idle timeouts later the stream still delivers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0;
    while seen < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("events keep coming")
            .unwrap();
        assert!(n > 0, "the stream was cut");
        seen += 1;
    }
}

#[tokio::test]
async fn at_the_limit_the_connection_idle_the_longest_makes_room() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let h = start_with(
        app,
        Duration::from_secs(5),
        limits(2, Duration::from_secs(600)),
    )
    .await;
    let mut oldest = h.connect(false).await;
    let _newer = h.connect(false).await;
    let resp = tokio::time::timeout(Duration::from_secs(10), h.get("/", false))
        .await
        .expect("a third client is served at the limit of two");
    assert!(resp.ends_with("hello"), "{resp}");
    closed_by_server(&mut oldest, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn at_the_limit_with_every_connection_busy_a_new_one_is_refused() {
    let app = Router::new().route("/watch", get(|| async { endless() }));
    let h = start_with(
        app,
        Duration::from_secs(1),
        limits(1, Duration::from_secs(600)),
    )
    .await;
    let mut watching = h.connect(true).await;
    send_get(&mut watching, "/watch").await;
    let mut buf = [0u8; 256];
    assert!(watching.read(&mut buf).await.unwrap() > 0);
    let refused = tokio::time::timeout(Duration::from_secs(10), h.try_connect_alpn(false, &[]))
        .await
        .expect("refused at once, not left waiting");
    assert!(refused.is_err(), "a second connection is refused");
    // The busy one is untouched.
    assert!(watching.read(&mut buf).await.unwrap() > 0);
}

#[tokio::test]
async fn an_http2_stream_outlives_the_idle_timeout_and_the_idle_connection_then_closes() {
    let app = Router::new().route("/watch", get(|| async { endless() }));
    let h = start_with(
        app,
        Duration::from_secs(1),
        limits(100, Duration::from_millis(200)),
    )
    .await;
    let tls = h.connect_alpn(true, &[b"h2"]).await;
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("https://localhost/watch")
        .body(Body::empty())
        .unwrap();
    let mut body = client.send_request(req).await.unwrap().into_body();
    // Five idle timeouts later the stream still delivers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        let frame = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| hyper::body::Body::poll_frame(Pin::new(&mut body), cx)),
        )
        .await
        .expect("events keep coming");
        assert!(matches!(frame, Some(Ok(_))), "the stream was cut");
    }
    // No stream left: the server closes the connection (GOAWAY) after the idle timeout.
    drop(body);
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap()
        .ok();
}

#[test]
fn the_connection_limit_leaves_room_below_the_fd_limit() {
    assert_eq!(ConnectionLimits::max_for_fd_limit(256), 16);
    assert_eq!(ConnectionLimits::max_for_fd_limit(512), 192);
    assert_eq!(ConnectionLimits::max_for_fd_limit(1024), 576);
    assert_eq!(ConnectionLimits::max_for_fd_limit(1 << 20), 786_240);
}
