//! Requests written to hurt, against the real binary: each is answered with a Kubernetes
//! `Status`, the server's memory stays bounded (read from `/proc`), what was refused is left as
//! it was, and the server goes on serving.
mod common;

use common::TestServer;
use futures::StreamExt;
use http::StatusCode;
use ipam_apiserver::api::IPPrefix;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

/// Peak resident memory of the server so far, in MiB (`VmHWM`).
fn peak_rss_mib(server: &TestServer) -> u64 {
    let pid = server.pid().expect("server running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib / 1024
}

/// The answer as a `Status`, checking it is one with the HTTP code.
fn status_of(code: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Value {
    assert_eq!(
        headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{code}: {}",
        String::from_utf8_lossy(body)
    );
    let v: Value = serde_json::from_slice(body).expect("a JSON body");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"], code.as_u16(), "{v}");
    v
}

async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let (code, headers, bytes) = server
        .raw("POST", path, Some("application/json"), body.to_string())
        .await;
    let v: Value = serde_json::from_slice(&bytes).expect("a JSON body");
    if !code.is_success() {
        status_of(code, &headers, &bytes);
    }
    (code, v)
}

async fn get(server: &TestServer, path: &str) -> Value {
    let (code, _, body) = server.raw("GET", path, None, Vec::new()).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("a JSON body")
}

fn root(name: &str, prefix: &str) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
           "metadata": {"name": name}, "spec": {"prefix": prefix}})
}

fn claim(name: &str, parent: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["parentRef"] = json!({"name": parent});
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
           "metadata": {"name": name}, "spec": spec})
}

/// The issue's patch: add an annotations map, then copy it into itself `copies` times (each
/// copy doubles it: 2^copies times the map if applied).
fn self_copying_patch(copies: usize) -> Vec<u8> {
    let mut ops = vec![json!({"op": "add", "path": "/metadata/annotations",
                              "value": {"a": "x".repeat(64)}})];
    for i in 0..copies {
        ops.push(json!({"op": "copy", "from": "/metadata/annotations",
                        "path": format!("/metadata/annotations/c{i}")}));
    }
    Value::Array(ops).to_string().into_bytes()
}

#[tokio::test]
async fn a_patch_that_copies_a_map_into_itself_is_refused_with_bounded_memory() {
    let server = TestServer::start();
    let claims = format!("{GV}/namespaces/p/ipprefixclaims");
    assert_eq!(
        post(
            &server,
            &format!("{GV}/ipprefixes"),
            root("r", "10.0.0.0/8")
        )
        .await
        .0,
        StatusCode::CREATED
    );
    assert_eq!(
        post(
            &server,
            &claims,
            claim("web", "r", json!({"prefixLength": 24}))
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let before = get(&server, &format!("{claims}/web")).await;

    for copies in [20, 24, 41] {
        let body = self_copying_patch(copies);
        assert!(body.len() < 4096, "{} bytes", body.len());
        let (code, headers, bytes) = server
            .raw(
                "PATCH",
                &format!("{claims}/web"),
                Some("application/json-patch+json"),
                body,
            )
            .await;
        assert_eq!(
            code,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{copies} copies: {}",
            String::from_utf8_lossy(&bytes)
        );
        let status = status_of(code, &headers, &bytes);
        let message = status["message"].as_str().unwrap_or_default();
        assert!(message.contains("may add at most 3 MiB"), "{message}");
    }
    let peak = peak_rss_mib(&server);
    eprintln!("peak RSS after the self-copying patches: {peak} MiB");
    assert!(peak < 256, "the server peaked at {peak} MiB");
    assert_eq!(
        get(&server, &format!("{claims}/web")).await,
        before,
        "the claim changed"
    );
    // Still serving, and still allocating.
    assert_eq!(
        post(
            &server,
            &claims,
            claim("db", "r", json!({"prefixLength": 24}))
        )
        .await
        .0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn patches_cannot_grow_an_object_past_the_object_limit() {
    let server = TestServer::start();
    let prefix = format!("{GV}/ipprefixes/big");
    assert_eq!(
        post(
            &server,
            &format!("{GV}/ipprefixes"),
            root("big", "10.0.0.0/8")
        )
        .await
        .0,
        StatusCode::CREATED
    );
    // Two merge patches of ~1.9 MiB of labels each: each body is under the body limit, but
    // together they would make an object of ~3.8 MiB.
    let labels = |round: usize| -> Value {
        let m: serde_json::Map<String, Value> = (0..30_000)
            .map(|i| (format!("k{round}-{i:05}"), Value::from("v".repeat(50))))
            .collect();
        json!({"metadata": {"labels": m}})
    };
    let (code, _, body) = server
        .raw(
            "PATCH",
            &prefix,
            Some("application/merge-patch+json"),
            labels(1).to_string(),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (code, headers, body) = server
        .raw(
            "PATCH",
            &prefix,
            Some("application/merge-patch+json"),
            labels(2).to_string(),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let status = status_of(code, &headers, &body);
    assert_eq!(status["reason"], "RequestEntityTooLarge");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("3 MiB"),
        "{status}"
    );
    let stored = get(&server, &prefix).await;
    assert_eq!(
        stored["metadata"]["labels"].as_object().map(|m| m.len()),
        Some(30_000)
    );
}

#[tokio::test]
async fn yaml_aliases_cannot_multiply_a_body() {
    let server = TestServer::start();
    assert_eq!(
        post(
            &server,
            &format!("{GV}/ipprefixes"),
            root("r", "10.0.0.0/8")
        )
        .await
        .0,
        StatusCode::CREATED
    );
    // 100 KB of YAML standing for 10,000 copies of a 10,000-item list (~1 GB expanded).
    let mut doc = String::from(
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata:\n  name: r\n  annotations:\n    a: &a [",
    );
    doc.push_str(&vec!["xxxxxxxx"; 10_000].join(","));
    doc.push_str("]\n    b: [");
    doc.push_str(&vec!["*a"; 10_000].join(","));
    doc.push_str("]\n");
    let (code, headers, body) = server
        .raw(
            "PATCH",
            &format!("{GV}/ipprefixes/r?fieldManager=bomb"),
            Some("application/apply-patch+yaml"),
            doc.clone(),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    status_of(code, &headers, &body);
    let (code, _, body) = server
        .raw(
            "POST",
            &format!("{GV}/ipprefixes"),
            Some("application/yaml"),
            doc,
        )
        .await;
    assert_eq!(
        code,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let peak = peak_rss_mib(&server);
    eprintln!("peak RSS after the YAML alias bombs: {peak} MiB");
    assert!(peak < 256, "the server peaked at {peak} MiB");
    get(&server, &format!("{GV}/ipprefixes/r")).await;
}

#[tokio::test]
async fn a_huge_watch_timeout_is_served_and_zero_means_the_default() {
    let server = TestServer::start();
    let client = server.client().await;
    // i64::MAX seconds: the handler used to panic on the deadline's overflow (no response).
    let req = http::Request::get(format!(
        "{GV}/ipprefixes?watch=true&timeoutSeconds=9223372036854775807"
    ))
    .body(kube::client::Body::empty())
    .unwrap();
    let resp = client.send(req).await.expect("a response");
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);

    // timeoutSeconds=0 is the server's default: the watch stays open and sees a later create.
    let api: Api<IPPrefix> = Api::all(client);
    let mut events = api
        .watch(&WatchParams::default().timeout(0), "0")
        .await
        .expect("watch")
        .boxed();
    api.create(
        &PostParams::default(),
        &IPPrefix::root("later", "10.1.0.0/16".parse().unwrap()),
    )
    .await
    .expect("create");
    match events.next().await {
        Some(Ok(WatchEvent::Added(p))) => assert_eq!(p.metadata.name.as_deref(), Some("later")),
        other => panic!("expected the ADDED event, got {other:?}"),
    }
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

#[tokio::test]
async fn undecodable_names_and_parameters_are_400_statuses() {
    let server = TestServer::start();
    for path in [
        format!("{GV}/ipprefixes/%ff"),
        format!("{GV}/namespaces/%c3%28/ipprefixclaims"),
        format!("{GV}/namespaces/p/ipprefixclaims/a%80b/status"),
        format!("{GV}/ipprefixes?labelSelector=%ff"),
        format!("{GV}/ipprefixes/x?fieldManager=%fe"),
    ] {
        let (code, headers, body) = server.raw("GET", &path, None, Vec::new()).await;
        assert_eq!(
            code,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        let status = status_of(code, &headers, &body);
        assert_eq!(status["reason"], "BadRequest", "{path}");
    }
}

#[tokio::test]
async fn ipv4_mapped_ipv6_prefixes_are_refused() {
    let server = TestServer::start();
    let prefixes = format!("{GV}/ipprefixes");
    assert_eq!(
        post(&server, &prefixes, root("v4", "10.0.0.0/8")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        post(&server, &prefixes, root("v6", "fd00::/64")).await.0,
        StatusCode::CREATED
    );
    let (code, status) = post(&server, &prefixes, root("mapped", "::ffff:10.0.0.0/104")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"], "spec.prefix",
        "{status}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("use 10.0.0.0/8"),
        "{status}"
    );

    let claims = format!("{GV}/namespaces/p/ipprefixclaims");
    let (code, status) = post(
        &server,
        &claims,
        claim("h", "v6", json!({"prefix": "::ffff:10.0.0.1/128"})),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"], "spec.prefix",
        "{status}"
    );
    let mut excluded = root("ex", "::/64");
    excluded["spec"]["exclude"] = json!(["::ffff:10.0.0.0/120"]);
    let (code, status) = post(&server, &prefixes, excluded).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"], "spec.exclude[0]",
        "{status}"
    );
}

#[tokio::test]
async fn subdomain_names_limit_the_total_not_each_part() {
    let server = TestServer::start();
    let prefixes = format!("{GV}/ipprefixes");
    let long_part = format!("site.{}", "a".repeat(100));
    let (code, body) = post(&server, &prefixes, root(&long_part, "10.0.0.0/8")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, status) = post(&server, &prefixes, root(&"b".repeat(254), "10.1.0.0/16")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"], "metadata.name",
        "{status}"
    );
}

#[tokio::test]
async fn a_single_address_parent_has_no_room_for_a_longer_prefix() {
    let server = TestServer::start();
    assert_eq!(
        post(
            &server,
            &format!("{GV}/ipprefixes"),
            root("one", "10.0.0.1/32")
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let (code, status) = post(
        &server,
        &format!("{GV}/namespaces/p/ipprefixclaims"),
        claim("c", "one", json!({"prefixLength": 33})),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let cause = &status["details"]["causes"][0];
    assert_eq!(cause["field"], "spec.prefixLength", "{status}");
    let message = cause["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "ipprefix \"one\" (10.0.0.1/32) is a single address: it has no room for a /33"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn unknown_paths_are_kube_apiservers_404_and_kubectl_shows_the_objects_not_found() {
    let server = TestServer::start();
    for path in [
        "/api/v1/pods",
        "/apis/foo/v1/bar",
        "/nope",
        "/api/v1/namespaces/x/pods",
    ] {
        let (code, headers, body) = server.raw("GET", path, None, Vec::new()).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        let status = status_of(code, &headers, &body);
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(
            status["message"],
            "the server could not find the requested resource"
        );
        assert_eq!(status["details"], json!({}), "{path}");
    }
    // Standalone, any namespace may hold claims: kubectl's lookup of the namespace after a
    // NotFound finds it, so kubectl prints the claim's NotFound.
    let ns = get(&server, "/api/v1/namespaces/p").await;
    assert_eq!(
        (ns["kind"].as_str(), ns["status"]["phase"].as_str()),
        (Some("Namespace"), Some("Active"))
    );
    let out = server.kubectl(&["get", "ippc", "nope", "-n", "p"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "Error from server (NotFound): ipprefixclaims.ipam.miloapis.com \"nope\" not found",
        "{stderr}"
    );
}

#[tokio::test]
async fn an_apply_configuration_with_deep_unknown_fields_is_pruned_not_tracked() {
    let server = TestServer::start();
    let prefixes = format!("{GV}/ipprefixes");
    assert_eq!(
        post(&server, &prefixes, root("r", "10.0.0.0/8")).await.0,
        StatusCode::CREATED
    );
    // 1 MB: 100,000 leaves 120 levels down, under a field IPPrefix does not have. Tracked in
    // managedFields, that was 12 million path elements (1.4 GB, 79 s).
    let wide: serde_json::Map<String, Value> = (0..100_000)
        .map(|i| (format!("k{i}"), Value::from(1)))
        .collect();
    let mut deep = Value::Object(wide);
    for _ in 0..120 {
        let mut level = serde_json::Map::new();
        level.insert("aaaaaaaaaaaaaaaaaaaaaaaa".into(), deep);
        deep = Value::Object(level);
        // A partial configuration (no spec) with an unknown field is still refused when strict.
        let partial = json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
        "metadata": {"name": "r", "labels": {"team": "b"}}, "spec": {"nope": 1}});
        let (code, _, body) = server
            .raw(
                "PATCH",
                &format!("{prefixes}/r?fieldManager=m&fieldValidation=Strict"),
                Some("application/apply-patch+yaml"),
                partial.to_string(),
            )
            .await;
        assert_eq!(
            code,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(String::from_utf8_lossy(&body).contains("unknown field"));
    }
    let config = json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
        "metadata": {"name": "r", "labels": {"team": "a"}},
        "spec": {"prefix": "10.0.0.0/8", "x": deep}});
    let (code, headers, body) = server
        .raw(
            "PATCH",
            &format!("{prefixes}/r?fieldManager=m"),
            Some("application/apply-patch+yaml"),
            config.to_string(),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let warning = headers
        .get("warning")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(warning.contains("unknown field 'spec.x'"), "{warning}");
    let peak = peak_rss_mib(&server);
    assert!(peak < 256, "the server peaked at {peak} MiB");
    let stored = get(&server, &format!("{prefixes}/r")).await;
    assert_eq!(stored["metadata"]["labels"]["team"], "a");
    assert!(stored["spec"].get("x").is_none(), "{}", stored["spec"]);
    let applied = stored["metadata"]["managedFields"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["manager"] == "m"))
        .expect("the applier's entry");
    assert_eq!(
        applied["fieldsV1"],
        json!({"f:metadata": {"f:labels": {".": {}, "f:team": {}}}, "f:spec": {"f:prefix": {}}})
    );
}
