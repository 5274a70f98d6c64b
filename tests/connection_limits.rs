//! No flood of connections takes the server down: silent connections are closed when idle, a
//! flood beyond the open-file limit locks no client out, and running out of file descriptors
//! fails writes without fencing the store.
mod common;

use common::TestServer;
use ipam_apiserver::auth::standalone::StandalonePki;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const PREFIXES: &str = "/apis/ipam.miloapis.com/v1alpha1/ipprefixes";

fn prefix(name: &str, cidr: &str) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefix","metadata":{{"name":"{name}"}},"spec":{{"prefix":"{cidr}"}}}}"#
    )
    .into_bytes()
}

/// TLS straight to the server, trusting its standalone CA; with the admin certificate or none.
struct Tls {
    anonymous: TlsConnector,
    admin: TlsConnector,
    addr: std::net::SocketAddr,
}

impl Tls {
    fn new(server: &TestServer) -> Tls {
        let pki = StandalonePki::load_or_create(&server.data_dir, IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("the server's PKI");
        let builder = || {
            rustls::ClientConfig::builder_with_provider(
                ipam_apiserver::auth::x509::crypto_provider(),
            )
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.roots().unwrap())
        };
        let (cert, key) = pki.admin_identity_pem();
        let chain = rustls_pemfile::certs(&mut cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .unwrap()
            .unwrap();
        Tls {
            anonymous: TlsConnector::from(Arc::new(builder().with_no_client_auth())),
            admin: TlsConnector::from(Arc::new(
                builder().with_client_auth_cert(chain, key).unwrap(),
            )),
            addr: server.addr,
        }
    }

    /// A completed handshake, or why not.
    async fn connect(&self, admin: bool) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let connector = if admin { &self.admin } else { &self.anonymous };
        connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
    }

    /// `n` connections that complete the handshake and then say nothing (each given 10 s).
    async fn silent(&self, n: usize) -> Vec<TlsStream<TcpStream>> {
        let attempts =
            (0..n).map(|_| tokio::time::timeout(Duration::from_secs(10), self.connect(false)));
        futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter_map(|r| r.ok().and_then(Result::ok))
            .collect()
    }
}

/// `(code, body)` of one request on a fresh connection, which must be answered within 30 s.
async fn request(server: &TestServer, method: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let content_type = (!body.is_empty()).then_some("application/json");
    let (code, _, body) = tokio::time::timeout(
        Duration::from_secs(30),
        server.raw(method, path, content_type, body),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {path} not answered within 30 s"));
    (code.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

/// The value of the metric line starting with `name` (labels included) in `/metrics`.
async fn metric(server: &TestServer, name: &str) -> f64 {
    let (code, text) = request(server, "GET", "/metrics", Vec::new()).await;
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_beyond_the_fd_limit_locks_no_client_out() {
    // 512 open files: the server allows 192 connections and keeps the rest for itself.
    let server = TestServer::start_with(&["prlimit", "--nofile=512:512", "--"], &[]);
    let tls = Tls::new(&server);

    // More connections than the server has file descriptors, handshaken and silent.
    let mut flood = tls.silent(600).await;
    for i in 0..4 {
        // The attacker keeps coming; legitimate clients are served meanwhile, writes included.
        flood.extend(tls.silent(100).await);
        let (code, body) = request(
            &server,
            "POST",
            PREFIXES,
            prefix(&format!("during-{i}"), &format!("10.{i}.0.0/16")),
        )
        .await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(request(&server, "GET", "/readyz", Vec::new()).await.0, 200);
    }
    assert!(server.stderr().contains("max_connections=192"));
    // 192, and up to 64 evicted ones the runtime has not yet got round to closing.
    let open = metric(&server, "ipam_apiserver_open_connections ").await;
    assert!(open <= 256.0, "{open} connections open");
    let evicted = metric(
        &server,
        "ipam_apiserver_closed_idle_connections_total{reason=\"evicted\"} ",
    )
    .await;
    assert!(
        evicted > 0.0,
        "the flood made room by closing idle connections"
    );

    // The attacker leaves: the server writes and is ready, and never ran out of descriptors.
    drop(flood);
    let (code, body) = request(&server, "POST", PREFIXES, prefix("after", "10.9.0.0/16")).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = request(&server, "GET", "/readyz?verbose", Vec::new()).await;
    assert_eq!(code, 200, "{body}");
    let log = server.stderr();
    assert!(
        !log.contains("Too many open files") && !log.contains("os error 24"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_are_closed_but_a_watch_is_not() {
    let server = TestServer::start_with(&[], &["--idle-connection-timeout", "1s"]);
    let tls = Tls::new(&server);

    let mut silent = tls.connect(false).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), silent.read_to_end(&mut sink))
        .await
        .expect("a silent connection is closed after the idle timeout")
        .ok();

    // A watch over HTTP/1.1 stays open through several idle timeouts and sees a late create.
    let mut watch = tls.connect(true).await.unwrap();
    watch
        .write_all(format!("GET {PREFIXES}?watch=1 HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 1024];
    let n = watch.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (code, body) = request(&server, "POST", PREFIXES, prefix("late", "10.0.0.0/8")).await;
    assert_eq!(code, 201, "{body}");
    let mut seen = String::new();
    while !seen.contains("\"late\"") {
        let mut buf = vec![0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(15), watch.read(&mut buf))
            .await
            .expect("the watch delivers the event")
            .unwrap();
        assert!(n > 0, "the watch was closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// `POST path` on an open connection with `Connection: close`: `(code, whole response)`. Raw,
/// because a client library would retry the 503 (and then meet the object it created).
async fn post_once(tls: &mut TlsStream<TcpStream>, path: &str, body: &[u8]) -> (u16, String) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut out))
        .await
        .expect("answered within 30 s")
        .ok();
    let out = String::from_utf8_lossy(&out).into_owned();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

/// `prlimit --pid pid --nofile=<soft>:` (the hard limit stays).
fn set_soft_fd_limit(pid: u32, soft: u64) {
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "prlimit --nofile={soft}:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_fails_writes_but_does_not_fence_the_store() {
    let mut server = TestServer::start();
    let pid = server.pid().unwrap();
    let (code, body) = request(&server, "POST", PREFIXES, prefix("before", "10.1.0.0/16")).await;
    assert_eq!(code, 201, "{body}");

    // No descriptor left: the fsync cannot open what it syncs.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft: u64 = limits
        .lines()
        .find_map(|l| {
            l.strip_prefix("Max open files")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    // The kernel hands out the lowest free number, and refuses one at or above the limit. A
    // descriptor the server closes meanwhile (an earlier connection's) makes room again, so
    // the write may get through: then try again with the new lowest free number.
    let mut attempt = 0;
    let (code, response) = loop {
        // Opened before the descriptors run out.
        let mut starved = Tls::new(&server).connect(true).await.unwrap();
        let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let lowest_free = (0..).find(|fd| !used.contains(fd)).unwrap();
        set_soft_fd_limit(pid, lowest_free);
        let name = format!("starved-{attempt}");
        let (code, response) = post_once(
            &mut starved,
            PREFIXES,
            &prefix(&name, &format!("10.{}.0.0/16", 2 + attempt)),
        )
        .await;
        set_soft_fd_limit(pid, soft);
        attempt += 1;
        if code != 201 || attempt == 5 {
            break (code, response);
        }
    };
    assert_eq!(code, 503, "{response}");
    assert!(response.contains("Too many open files"), "{response}");

    // Descriptors are back: the store works, and the probes pass.
    let (code, body) = request(&server, "GET", "/readyz?verbose", Vec::new()).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = request(&server, "POST", PREFIXES, prefix("after", "10.3.0.0/16")).await;
    assert_eq!(code, 201, "{body}");

    // What was acknowledged survives a restart.
    server.restart();
    for name in ["before", "after"] {
        let (code, body) = request(&server, "GET", &format!("{PREFIXES}/{name}"), Vec::new()).await;
        assert_eq!(code, 200, "{name}: {body}");
    }
}

/// Read until the server closes `stream` (EOF or error); panics after `within`.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), within: Duration, what: &str) {
    let mut sink = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut sink))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {within:?}"))
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_level_abuse_is_cut_off_and_the_server_serves_on() {
    let server = TestServer::start_with(&[], &["--idle-connection-timeout", "1s"]);
    let tls = Tls::new(&server);

    // Half a TLS handshake: a ClientHello's first bytes, then nothing.
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    closed_within(&mut half, Duration::from_secs(15), "half a handshake").await;

    // Slowloris: a request head trickled a byte at a time never completes a request, so the
    // connection stays idle and is closed on time however steady the trickle.
    let mut slow = tls.connect(false).await.unwrap();
    let trickle = async {
        for b in b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), trickle)
        .await
        .expect("a trickled request head is cut off");

    // Bytes that are no HTTP at all.
    let mut garbage = tls.connect(false).await.unwrap();
    garbage.write_all(&[0xff; 4096]).await.unwrap();
    closed_within(&mut garbage, Duration::from_secs(15), "garbage").await;

    // An HTTP/2 preface followed by junk frames.
    let mut h2 = tls.connect(false).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff")
        .await
        .unwrap();
    closed_within(&mut h2, Duration::from_secs(15), "HTTP/2 junk").await;

    let (code, body) = request(&server, "GET", "/readyz?verbose", Vec::new()).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = request(&server, "POST", PREFIXES, prefix("fine", "10.0.0.0/8")).await;
    assert_eq!(code, 201, "{body}");
}
