//! The audit log through the running binary: what a claim's life leaves in it, across
//! rotations; the default policy; a disk that is full.
mod common;

use common::TestServer;
use serde_json::Value;
use std::path::{Path, PathBuf};

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

const ROOT: &str = r#"
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefix
metadata: {name: root}
spec: {prefix: "fd20::/48"}
"#;

fn claim_yaml(name: &str, reclaim_policy: &str) -> String {
    format!(
        r#"
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {{name: {name}, namespace: p}}
spec:
  parentRef: {{name: root}}
  prefixLength: 64
  reclaimPolicy: {reclaim_policy}
"#
    )
}

/// `kubectl create -f` of `yaml`, written to a file in `dir`.
fn kubectl_create(server: &TestServer, dir: &Path, yaml: &str) -> String {
    let file = dir.join("object.yaml");
    std::fs::write(&file, yaml).unwrap();
    server.kubectl_ok(&["create", "-f", file.to_str().unwrap(), "-o", "json"])
}

/// Rotated files beside `log`, oldest first (their names hold the time).
fn backups(log: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("audit-") && name.ends_with(".log")
        })
        .collect();
    found.sort();
    found
}

/// Every event in the backups and then the live file, in the order written.
fn events(log: &Path) -> Vec<Value> {
    backups(log)
        .iter()
        .chain(std::iter::once(&log.to_path_buf()))
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Requests recorded at RequestResponse (the OpenAPI document, ~100s of KB each) until the
/// log rotates once more.
async fn fill_until_rotated(server: &TestServer, log: &Path) {
    let newest = backups(log).last().cloned();
    for _ in 0..500 {
        let (status, _, _) = server.raw("GET", "/openapi/v2", None, Vec::new()).await;
        assert!(status.is_success());
        if backups(log).last() != newest.as_ref() {
            return;
        }
    }
    panic!("the audit log did not rotate; backups: {:?}", backups(log));
}

fn claim_events<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["objectRef"]["resource"] == "ipprefixclaims" && e["objectRef"]["name"] == name
        })
        .collect()
}

/// A server logging to `audit.log` in a fresh directory (there while the `TempDir` lives) under
/// the audit `policy` (YAML), with `more` flags.
fn audited_with_policy(policy: &str, more: &[&str]) -> (tempfile::TempDir, PathBuf, TestServer) {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("audit.log");
    let policy_file = logs.path().join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    let mut args = vec![
        "--audit-log-path",
        log.to_str().unwrap(),
        "--audit-policy-file",
        policy_file.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    let server = TestServer::start_with(&[], &args);
    (logs, log, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claims_create_release_rebind_and_delete_stay_in_the_log_across_rotations() {
    let (logs, log, mut server) = audited_with_policy(
        r#"
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: RequestResponse
  nonResourceURLs: ["/openapi/v2"]
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
"#,
        &["--audit-log-maxsize", "1", "--audit-log-maxbackup", "3"],
    );
    let scratch = logs.path();
    kubectl_create(&server, scratch, ROOT);
    let made: Value = serde_json::from_str(&kubectl_create(
        &server,
        scratch,
        &claim_yaml("web", "Retain"),
    ))
    .unwrap();
    let prefix = made["status"]["prefix"].as_str().unwrap().to_string();
    fill_until_rotated(&server, &log).await;
    server.kubectl_ok(&["delete", "ipprefixclaim", "web", "-n", "p"]);
    fill_until_rotated(&server, &log).await;
    let rebound: Value = serde_json::from_str(&kubectl_create(
        &server,
        scratch,
        &claim_yaml("web", "Delete"),
    ))
    .unwrap();
    assert_eq!(rebound["status"]["prefix"], prefix.as_str());
    assert_eq!(rebound["status"]["conditions"][0]["reason"], "Rebound");
    server.kubectl_ok(&["delete", "ipprefixclaim", "web", "-n", "p"]);
    // SIGTERM: the server writes what is queued before it exits.
    assert!(server.stop().success());

    let all = events(&log);
    assert!(
        backups(&log).len() >= 2,
        "rotated twice: {:?}",
        backups(&log)
    );
    let lifecycle = claim_events(&all, "web");
    let summary: Vec<(String, u64)> = lifecycle
        .iter()
        .map(|e| {
            (
                e["verb"].as_str().unwrap().to_string(),
                e["responseStatus"]["code"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("create".to_string(), 201),
            ("delete".to_string(), 200),
            ("create".to_string(), 201),
            ("delete".to_string(), 200)
        ],
        "{lifecycle:#?}"
    );
    let mut ids = std::collections::HashSet::new();
    let mut last_received = String::new();
    for e in &lifecycle {
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(e["level"], "Metadata");
        assert_eq!(e["stage"], "ResponseComplete");
        assert_eq!(e["user"]["username"], "admin");
        assert!(
            e["user"]["groups"]
                .as_array()
                .unwrap()
                .contains(&"system:masters".into()),
            "{e}"
        );
        assert_eq!(e["sourceIPs"], serde_json::json!(["127.0.0.1"]));
        assert!(
            e["userAgent"].as_str().unwrap().starts_with("kubectl"),
            "{e}"
        );
        assert_eq!(e["objectRef"]["namespace"], "p");
        assert_eq!(e["objectRef"]["apiGroup"], "ipam.miloapis.com");
        assert_eq!(e["objectRef"]["apiVersion"], "v1alpha1");
        assert_eq!(
            e["annotations"],
            serde_json::json!({
                "ipam.miloapis.com/prefix": prefix,
                "ipam.miloapis.com/parent": "root",
                "ipam.miloapis.com/ipprefix": "p.web",
            }),
            "{e}"
        );
        assert!(e.get("requestObject").is_none() && e.get("responseObject").is_none());
        assert!(ids.insert(e["auditID"].as_str().unwrap().to_string()));
        let received = e["requestReceivedTimestamp"].as_str().unwrap().to_string();
        assert!(received >= last_received, "{received} < {last_received}");
        assert!(e["stageTimestamp"].as_str().unwrap() >= received.as_str());
        last_received = received;
    }
    // The two creates name the uid of the claim each made; the first and second claims differ.
    assert_ne!(
        lifecycle[0]["objectRef"]["uid"],
        lifecycle[2]["objectRef"]["uid"]
    );
    assert_eq!(lifecycle[0]["objectRef"]["uid"], made["metadata"]["uid"]);
    let padding = all
        .iter()
        .filter(|e| e["requestURI"] == "/openapi/v2")
        .count();
    assert!(padding > 0);
    assert!(all
        .iter()
        .filter(|e| e["requestURI"] == "/openapi/v2")
        .all(|e| e["level"] == "RequestResponse" && e["responseObject"]["swagger"] == "2.0"));

    // Two more rotations: only the newest three backups stay.
    server.restart();
    fill_until_rotated(&server, &log).await;
    fill_until_rotated(&server, &log).await;
    assert_eq!(backups(&log).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_policy_every_write_is_recorded_at_metadata_and_no_read() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("audit.log");
    let mut server = TestServer::start_with(&[], &["--audit-log-path", log.to_str().unwrap()]);
    let small_root = r#"{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefix","metadata":{"name":"tiny"},"spec":{"prefix":"fd30::/127"}}"#;
    let (status, _, _) = server
        .raw(
            "POST",
            &format!("{GV}/ipprefixes"),
            Some("application/json"),
            small_root,
        )
        .await;
    assert_eq!(status, 201);
    let claim = |name: &str| {
        format!(
            r#"{{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefixClaim","metadata":{{"name":"{name}"}},"spec":{{"parentRef":{{"name":"tiny"}},"prefixLength":128}}}}"#
        )
    };
    let claims = format!("{GV}/namespaces/q/ipprefixclaims");
    for (name, want) in [("a", 201), ("b", 201), ("c", 409)] {
        let (status, headers, _) = server
            .raw("POST", &claims, Some("application/json"), claim(name))
            .await;
        assert_eq!(status, want);
        assert!(headers.contains_key("audit-id"));
    }
    server.raw("GET", &claims, None, Vec::new()).await;
    let (status, _, _) = server.raw("DELETE", &claims, None, Vec::new()).await;
    assert_eq!(status, 200);
    assert!(server.stop().success());

    let all = events(&log);
    let seen: Vec<(&str, &str, &str, u64)> = all
        .iter()
        .map(|e| {
            (
                e["verb"].as_str().unwrap(),
                e["objectRef"]["resource"].as_str().unwrap(),
                e["objectRef"]["name"].as_str().unwrap_or_default(),
                e["responseStatus"]["code"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("create", "ipprefixes", "tiny", 201),
            ("create", "ipprefixclaims", "a", 201),
            ("create", "ipprefixclaims", "b", 201),
            ("create", "ipprefixclaims", "c", 409),
            ("deletecollection", "ipprefixclaims", "", 200),
        ]
    );
    assert!(all.iter().all(|e| e["level"] == "Metadata"));
    assert_eq!(
        all[0]["annotations"]["ipam.miloapis.com/prefix"],
        "fd30::/127"
    );
    assert_eq!(
        all[1]["annotations"]["ipam.miloapis.com/prefix"],
        "fd30::/128"
    );
    assert_eq!(
        all[2]["annotations"]["ipam.miloapis.com/prefix"],
        "fd30::1/128"
    );
    let refused = &all[3];
    assert_eq!(refused["responseStatus"]["reason"], "Exhausted");
    assert!(
        refused["responseStatus"]["message"]
            .as_str()
            .unwrap()
            .contains("no free /128"),
        "{refused}"
    );
    assert!(refused.get("annotations").is_none(), "{refused}");
    // A namespace emptied in one request still names every block it freed.
    assert_eq!(
        all[4]["annotations"]["ipam.miloapis.com/prefix"],
        "fd30::/128,fd30::1/128"
    );
    assert_eq!(
        all[4]["annotations"]["ipam.miloapis.com/ipprefix"],
        "q.a,q.b"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_loses_audit_events_but_never_an_allocation() {
    let server = TestServer::start_with(&[], &["--audit-log-path", "/dev/full"]);
    let root = r#"{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefix","metadata":{"name":"r"},"spec":{"prefix":"10.0.0.0/24"}}"#;
    let (status, _, _) = server
        .raw(
            "POST",
            &format!("{GV}/ipprefixes"),
            Some("application/json"),
            root,
        )
        .await;
    assert_eq!(status, 201);
    for i in 0..20 {
        let claim = format!(
            r#"{{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefixClaim","metadata":{{"name":"c{i}"}},"spec":{{"parentRef":{{"name":"r"}},"prefixLength":32}}}}"#
        );
        let (status, _, _) = server
            .raw(
                "POST",
                &format!("{GV}/namespaces/d/ipprefixclaims"),
                Some("application/json"),
                claim,
            )
            .await;
        assert_eq!(status, 201);
    }
    // The writer reports on its own thread: wait (bounded) for the count and the log line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, body) = server.raw("GET", "/metrics", None, Vec::new()).await;
        let metrics = String::from_utf8(body).unwrap();
        let failures = metrics
            .lines()
            .find_map(|l| l.strip_prefix("ipam_audit_write_failures_total "))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap_or(0.0);
        if failures >= 1.0 && server.stderr().contains("audit log: write failed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failure counted or logged; metrics:\n{metrics}\nstderr:\n{}",
            server.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_records_request_bodies_and_a_watch_from_start_to_end() {
    let (_logs, log, mut server) = audited_with_policy(
        r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitManagedFields: true
rules:
- level: Request
  verbs: [create]
- level: Metadata
  verbs: [watch]
"#,
        &[],
    );
    let root = r#"{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefix","metadata":{"name":"w","managedFields":[{"manager":"x","operation":"Update"}]},"spec":{"prefix":"10.9.0.0/16"}}"#;
    let (status, _, _) = server
        .raw(
            "POST",
            &format!("{GV}/ipprefixes"),
            Some("application/json"),
            root,
        )
        .await;
    assert_eq!(status, 201);
    let (status, _, _) = server
        .raw(
            "GET",
            &format!("{GV}/ipprefixes?watch=true&timeoutSeconds=1"),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200);
    assert!(server.stop().success());

    let all = events(&log);
    let stages: Vec<(&str, &str)> = all
        .iter()
        .map(|e| (e["verb"].as_str().unwrap(), e["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stages,
        [
            ("create", "ResponseComplete"),
            ("watch", "ResponseStarted"),
            ("watch", "ResponseComplete"),
        ]
    );
    let create = &all[0];
    assert_eq!(create["level"], "Request");
    assert_eq!(create["requestObject"]["spec"]["prefix"], "10.9.0.0/16");
    assert!(create["requestObject"]["metadata"]
        .get("managedFields")
        .is_none());
    assert!(create.get("responseObject").is_none());
    assert_eq!(all[1]["auditID"], all[2]["auditID"]);
    assert!(all[2]["stageTimestamp"].as_str() > all[1]["stageTimestamp"].as_str());
}

/// Wait (bounded) until `log` holds an event `wanted` picks; the writer batches and flushes on
/// its own thread.
async fn event_eventually(log: &Path, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(e) = events(log).into_iter().find(|e| wanted(e)) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such event; the log holds {:#?}",
            events(log)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn by_the_server(e: &Value) -> bool {
    e["user"]["username"] == "system:apiserver"
}

async fn post(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, _, body) = server
        .raw("POST", path, Some("application/json"), body.to_string())
        .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// A server logging to `audit.log` in a fresh directory (there while the `TempDir` lives), with
/// the root IPPrefix `root` on fd20::/48.
async fn audited_with_root() -> (tempfile::TempDir, PathBuf, TestServer) {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("audit.log");
    let server = TestServer::start_with(&[], &["--audit-log-path", log.to_str().unwrap()]);
    post(
        &server,
        &format!("{GV}/ipprefixes"),
        serde_json::json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
            "metadata": {"name": "root"}, "spec": {"prefix": "fd20::/48"}}),
    )
    .await;
    (logs, log, server)
}

/// The status of a bodiless `method` on `path`.
async fn status_of(server: &TestServer, method: &str, path: &str) -> u16 {
    server.raw(method, path, None, Vec::new()).await.0.as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retention_that_ends_is_recorded_as_the_servers_delete_naming_the_block() {
    let (_logs, log, server) = audited_with_root().await;
    let claims = format!("{GV}/namespaces/p/ipprefixclaims");
    let made = post(
        &server,
        &claims,
        serde_json::json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
            "metadata": {"name": "web"},
            "spec": {"parentRef": {"name": "root"}, "prefixLength": 64,
                     "reclaimPolicy": "Retain", "retentionSeconds": 1}}),
    )
    .await;
    let prefix = made["status"]["prefix"].as_str().unwrap().to_string();
    assert_eq!(
        status_of(&server, "DELETE", &format!("{claims}/web")).await,
        200
    );

    let expiry = event_eventually(&log, by_the_server).await;
    assert_eq!(expiry["verb"], "delete", "{expiry}");
    assert_eq!(expiry["level"], "Metadata");
    assert_eq!(expiry["stage"], "ResponseComplete");
    assert_eq!(
        expiry["user"]["groups"],
        serde_json::json!(["system:masters"])
    );
    assert_eq!(expiry["objectRef"]["resource"], "ipprefixes");
    assert_eq!(expiry["objectRef"]["name"], "p.web");
    assert_eq!(
        expiry["requestURI"],
        "/apis/ipam.miloapis.com/v1alpha1/ipprefixes/p.web"
    );
    assert_eq!(expiry["responseStatus"]["code"], 200);
    assert_eq!(
        expiry["annotations"],
        serde_json::json!({
            "ipam.miloapis.com/prefix": prefix,
            "ipam.miloapis.com/parent": "root",
            "ipam.miloapis.com/ipprefix": "p.web",
            "ipam.miloapis.com/claim": "p/web",
            "ipam.miloapis.com/reason": "RetentionExpired",
        })
    );
    // The block is free: the IPPrefix is gone.
    assert_eq!(
        status_of(&server, "GET", &format!("{GV}/ipprefixes/p.web")).await,
        404
    );
    // The user's delete came before, by the user.
    let all = events(&log);
    let expiry_at = all.iter().position(by_the_server).unwrap();
    let delete_at = all
        .iter()
        .position(|e| e["verb"] == "delete" && e["user"]["username"] == "admin")
        .unwrap();
    assert!(delete_at < expiry_at, "{all:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn released_children_freed_with_their_parent_are_recorded_as_the_servers_deletes() {
    let (_logs, log, server) = audited_with_root().await;
    let claims = format!("{GV}/namespaces/p/ipprefixclaims");
    let claim = |name: &str, parent: &str, length: u8, policy: &str| {
        serde_json::json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
            "metadata": {"name": name},
            "spec": {"parentRef": {"name": parent}, "prefixLength": length,
                     "reclaimPolicy": policy}})
    };
    post(&server, &claims, claim("pool", "root", 56, "Delete")).await;
    let host = post(&server, &claims, claim("host", "p.pool", 64, "Retain")).await;
    let block = host["status"]["prefix"].as_str().unwrap().to_string();
    for name in ["host", "pool"] {
        assert_eq!(
            status_of(&server, "DELETE", &format!("{claims}/{name}")).await,
            200
        );
    }
    let freed = event_eventually(&log, by_the_server).await;
    assert_eq!(freed["verb"], "delete", "{freed}");
    assert_eq!(freed["objectRef"]["name"], "p.host");
    assert_eq!(
        freed["annotations"],
        serde_json::json!({
            "ipam.miloapis.com/prefix": block,
            "ipam.miloapis.com/parent": "p.pool",
            "ipam.miloapis.com/ipprefix": "p.host",
            "ipam.miloapis.com/claim": "p/host",
            "ipam.miloapis.com/reason": "ParentFreed",
        })
    );
    assert_eq!(
        status_of(&server, "GET", &format!("{GV}/ipprefixes/p.host")).await,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_valid_credentials_are_recorded_with_their_401() {
    // The policy is asked with no user: a rule naming groups never matches a 401.
    let (_logs, log, mut server) = audited_with_policy(
        r#"
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: RequestResponse
  userGroups: ["system:masters"]
- level: Metadata
"#,
        &[],
    );
    let claims = format!("{GV}/namespaces/q/ipprefixclaims");
    let body = r#"{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefixClaim","metadata":{"name":"x"},"spec":{"parentRef":{"name":"r"},"prefixLength":32}}"#;
    let (status, headers, _) = server
        .raw_unauthenticated("POST", &claims, Some("application/json"), body)
        .await;
    assert_eq!(status, 401);
    let no_credentials_id = headers["audit-id"].to_str().unwrap().to_string();
    // A bearer token this server does not accept.
    let mut config = server.kube_config().await;
    config.auth_info = Default::default();
    let mut req = common::request("GET", &format!("{claims}/x"), None, Vec::new());
    req.headers_mut()
        .insert("authorization", "Bearer not-a-token".parse().unwrap());
    let (status, headers, _) = common::send_with(config, req).await;
    assert_eq!(status, 401);
    let bearer_id = headers["audit-id"].to_str().unwrap().to_string();
    assert!(server.stop().success());

    let all = events(&log);
    let refused: Vec<&Value> = all
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 401)
        .collect();
    assert_eq!(refused.len(), 2, "{all:#?}");
    let (create, get) = (refused[0], refused[1]);
    for e in [create, get] {
        assert_eq!(e["level"], "Metadata", "{e}");
        assert_eq!(e["stage"], "ResponseStarted", "{e}");
        assert_eq!(e["user"], serde_json::json!({}), "{e}");
        assert_eq!(e["sourceIPs"], serde_json::json!(["127.0.0.1"]));
        assert_eq!(e["objectRef"]["resource"], "ipprefixclaims");
        assert_eq!(e["objectRef"]["namespace"], "q");
        assert!(e.get("requestObject").is_none(), "{e}");
    }
    assert_eq!(create["verb"], "create");
    assert_eq!(create["auditID"], no_credentials_id.as_str());
    assert_eq!(
        create["responseStatus"]["message"],
        "Authentication failed, no credentials provided"
    );
    assert_eq!(get["verb"], "get");
    assert_eq!(get["objectRef"]["name"], "x");
    assert_eq!(get["auditID"], bearer_id.as_str());
    assert_eq!(
        get["responseStatus"]["message"],
        "Authentication failed, attempted: bearer"
    );
}
