//! The binary shell in standalone mode, against the real process: PKI and kubeconfig, client
//! certificate authentication, health endpoints, the data-directory lock, restart, SIGTERM.
mod common;

use common::{run_command_to_exit, run_to_exit, server_command, TestServer};
use http::StatusCode;
use std::time::{Duration, Instant};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn assert_unauthorized_status(status: StatusCode, body: &[u8]) {
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let v = json(body);
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["code"], 401);
    assert_eq!(v["reason"], "Unauthorized");
}

#[test]
fn first_start_writes_a_kubeconfig_that_kubectl_uses() {
    let server = TestServer::start();
    assert!(server.kubeconfig.exists());
    let out = server.kubectl_ok(&["get", "--raw", "/healthz"]);
    assert_eq!(out.trim(), "ok");

    let kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&server.kubeconfig).unwrap()).unwrap();
    assert_eq!(kc["current-context"].as_str(), Some("ipam-standalone"));
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"].as_str(),
        Some(format!("https://127.0.0.1:{}", server.addr.port()).as_str())
    );

    // The kubeconfig and every private key are readable by the owner only.
    use std::os::unix::fs::PermissionsExt;
    let pki = server.data_dir.join("pki");
    for path in [
        server.kubeconfig.clone(),
        pki.join("ca.key"),
        pki.join("admin.key"),
        pki.join("apiserver.key"),
    ] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is mode {:o}", path.display(), mode);
    }
    // And the user is told how to use it.
    let kc_path = server.kubeconfig.canonicalize().unwrap();
    assert!(
        server
            .stderr()
            .contains(&format!("export KUBECONFIG={}", kc_path.display())),
        "{}",
        server.stderr()
    );
}

#[tokio::test]
async fn request_without_client_certificate_is_401_status() {
    let server = TestServer::start();
    for path in ["/apis", "/apis/ipam.miloapis.com/v1alpha1/ipprefixes", "/"] {
        let (status, headers, body) = server.raw_unauthenticated("GET", path, None, "").await;
        assert_unauthorized_status(status, &body);
        assert_eq!(headers[http::header::CONTENT_TYPE], "application/json");
    }
}

#[tokio::test]
async fn health_endpoints_need_no_client_certificate() {
    let server = TestServer::start();
    for path in ["/healthz", "/livez", "/readyz", "/readyz/ping"] {
        let (status, _, body) = server.raw_unauthenticated("GET", path, None, "").await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body, b"ok", "{path}");
    }
}

#[tokio::test]
async fn admin_client_certificate_is_authenticated() {
    let server = TestServer::start();
    // Whatever the router answers, it is not the authentication layer's 401.
    let (status, _, body) = server.raw("GET", "/apis", None, "").await;
    assert_ne!(
        status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_401_status() {
    let server = TestServer::start();

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    leaf.distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();

    let mut config = server.kube_config().await;
    config.auth_info = Default::default();
    config.auth_info.client_certificate_data = Some(base64(cert.pem()));
    config.auth_info.client_key_data = Some(base64(key.serialize_pem()).into());
    let (status, _, body) =
        common::send_with(config, common::request("GET", "/apis", None, "")).await;
    assert_unauthorized_status(status, &body);
}

fn base64(s: String) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn second_process_on_the_same_data_dir_fails_clearly() {
    let server = TestServer::start();
    let kubeconfig_before = std::fs::read(&server.kubeconfig).unwrap();

    let out = run_command_to_exit(server_command(&server.data_dir), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second process succeeded: {stderr}");
    assert!(
        stderr.contains("in use by another ipam-apiserver process"),
        "unclear error: {stderr}"
    );
    assert!(!stderr.contains("Serving securely"), "{stderr}");
    // The loser touched nothing: the first server's kubeconfig still points at it.
    assert_eq!(
        std::fs::read(&server.kubeconfig).unwrap(),
        kubeconfig_before
    );
    server.kubectl_ok(&["get", "--raw", "/healthz"]);
}

#[tokio::test]
async fn restart_reuses_the_ca_so_an_old_kubeconfig_keeps_working() {
    let mut server = TestServer::start();
    let old = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let old_port = server.addr.port();

    server.restart();
    let new_port = server.addr.port();
    let new = std::fs::read_to_string(&server.kubeconfig).unwrap();
    assert!(
        new.contains(&format!("https://127.0.0.1:{new_port}")),
        "{new}"
    );

    // The saved kubeconfig, with only the port brought up to date.
    let saved = server.data_dir.join("..").join("saved-kubeconfig");
    let old_adjusted = old.replace(
        &format!("https://127.0.0.1:{old_port}"),
        &format!("https://127.0.0.1:{new_port}"),
    );
    assert_ne!(
        old, old_adjusted,
        "old kubeconfig did not name the old port"
    );
    std::fs::write(&saved, &old_adjusted).unwrap();

    // kubectl verifies the server against the old CA data...
    let out = server.kubectl_with(&saved, &["get", "--raw", "/healthz"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and the server still accepts the old admin certificate.
    let config = common::kube_config_from(&saved).await;
    let (status, _, body) =
        common::send_with(config, common::request("GET", "/apis", None, "")).await;
    assert_ne!(
        status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Nothing had to be reissued: the whole kubeconfig is the same apart from the port.
    assert_eq!(old_adjusted, new);
}

#[tokio::test]
async fn sigterm_exits_zero_promptly_even_with_an_open_connection() {
    let mut server = TestServer::start();
    // Leave a pooled (idle, keep-alive) connection open.
    let client = server.client().await;
    let req = common::request("GET", "/healthz", None, "").map(kube::client::Body::from);
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let started = Instant::now();
    let status = server.stop();
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(5), "took {took:?} to exit");
    // A clean shutdown checkpoints the store, so the next start need not replay its log.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr().contains("store checkpointed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = server.stderr();
    assert!(stderr.contains("store checkpointed"), "{stderr}");
    drop(client);
}

#[test]
fn cluster_mode_without_kubeconfig_outside_a_cluster_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        [
            "serve".as_ref(),
            "--data-dir".as_ref(),
            dir.path().as_os_str(),
            "--tls-cert-file".as_ref(),
            "cert.pem".as_ref(),
            "--tls-private-key-file".as_ref(),
            "key.pem".as_ref(),
        ] as [&std::ffi::OsStr; 7],
        Duration::from_secs(30),
    );
    // (The e2e_cluster suite covers cluster mode with a real kube-apiserver.)
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no --kubeconfig and not in a cluster"),
        "{stderr}"
    );
}

#[test]
fn invalid_flags_are_all_reported_with_exit_code_2() {
    let out = run_to_exit(
        [
            "serve",
            "--standalone",
            "--client-ca-file",
            "ca.pem",
            "--watch-history",
            "0",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--client-ca-file cannot be used with --standalone"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--watch-history must be at least 1"),
        "{stderr}"
    );
}

/// The load tool against a real server: every create it counts is a Bound claim with its own
/// address, and it reports the server's memory and CPU per operation, its own CPU, and where
/// the server's writes waited. In list mode it says how full the pages it measures are.
#[test]
fn the_load_tool_makes_the_creates_it_reports_and_measures_the_server() {
    let server = TestServer::start();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-load"));
    cmd.arg("--data-dir")
        .arg(&server.data_dir)
        .args(["--mode", "create", "--clients", "4", "--count", "500"])
        .args(["--namespace", "loadtest", "--progress", "0"]);
    let out = run_command_to_exit(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" ok=500 failed=0 "), "{stdout}");
    assert!(
        stdout.contains(&format!("server pid={} ", server.pid().unwrap())),
        "{stdout}"
    );
    let per_op = |who: &str| -> f64 {
        stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{who} cpu="))?
                    .split("per-op=")
                    .nth(1)
            })
            .and_then(|v| v.strip_suffix("us")?.parse().ok())
            .unwrap_or_else(|| panic!("no {who} CPU line: {stdout}"))
    };
    assert!(per_op("server") > 0.0, "{stdout}");
    // The tool's own share may round to zero clock ticks over 500 creates; the line is there.
    assert!(per_op("load tool") >= 0.0, "{stdout}");
    // The server's own account of the run's writes: the 500 creates (and any status writes of
    // their parent), and the two queues each waited in.
    let stages = stdout
        .lines()
        .find_map(|l| l.strip_prefix("server writes="))
        .unwrap_or_else(|| panic!("no write-stage line: {stdout}"));
    let writes: f64 = stages.split(':').next().unwrap().parse().unwrap();
    assert!((500.0..1000.0).contains(&writes), "{stdout}");
    assert!(
        stages.contains(" writer-lock wait mean=") && stages.contains(" durable wait mean="),
        "{stdout}"
    );
    assert!(!stages.contains("=-"), "{stdout}");

    let list = json(
        server
            .kubectl_ok(&["get", "ipprefixclaims", "-n", "loadtest", "-o", "json"])
            .as_bytes(),
    );
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 500);
    let prefixes: std::collections::HashSet<&str> = items
        .iter()
        .map(|c| {
            assert_eq!(c["status"]["phase"], "Bound", "{c}");
            c["status"]["prefix"].as_str().unwrap()
        })
        .collect();
    assert_eq!(prefixes.len(), 500, "every claim has its own /128");

    // Paged lists of those claims, and of a namespace with none.
    let list_mode = |namespace: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-load"));
        cmd.arg("--data-dir")
            .arg(&server.data_dir)
            .args(["--mode", "list", "--clients", "2", "--count", "20"])
            .args(["--page", "100", "--namespace", namespace, "--progress", "0"]);
        let out = run_command_to_exit(cmd, Duration::from_secs(120));
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let full = list_mode("loadtest");
    assert!(
        full.contains("list: a page holds 100 claims (--page 100)\n"),
        "{full}"
    );
    assert!(full.contains(" ok=20 failed=0 "), "{full}");
    let empty = list_mode("nothing-here");
    assert!(
        empty.contains("list: a page holds 0 claims (--page 100); for full pages, create claims"),
        "{empty}"
    );
}
