//! What kube-apiserver refuses (or warns about) and so must this server: each case is the
//! request a client sends and the Status or warning it gets back.
mod common;

use common::TestServer;
use http::StatusCode;
use serde_json::{json, Value};

const CLAIMS: &str = "/apis/ipam.miloapis.com/v1alpha1/namespaces/ns/ipprefixclaims";
const PREFIXES: &str = "/apis/ipam.miloapis.com/v1alpha1/ipprefixes";
const JSON: Option<&str> = Some("application/json");
const MERGE: Option<&str> = Some("application/merge-patch+json");

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Value,
) -> (StatusCode, Vec<String>, Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (code, headers, bytes) = server.raw(method, path, ct, body).await;
    let warnings = headers
        .get_all(http::header::WARNING)
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect();
    (
        code,
        warnings,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn cause_fields(status: &Value) -> Vec<String> {
    status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["field"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn claim(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
           "metadata": {"name": name}, "spec": spec})
}

async fn root(server: &TestServer, name: &str, prefix: &str) {
    let body = json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
                      "metadata": {"name": name, "labels": {"tier": "root"}}, "spec": {"prefix": prefix}});
    let (code, _, s) = send(server, "POST", PREFIXES, JSON, body).await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
}

#[tokio::test]
async fn label_selector_expressions_follow_kubernetes_rules() {
    let server = TestServer::start();
    root(&server, "r", "10.0.0.0/24").await;
    let spec = json!({"prefixLength": 32, "parentSelector": {"matchExpressions": [
        {"key": "tier", "operator": "In", "values": []},
        {"key": "tier", "operator": "Exists", "values": ["root"]},
        {"key": "tier", "operator": "NotIn"},
    ]}});
    let (code, _, s) = send(&server, "POST", CLAIMS, JSON, claim("a", spec)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(
        cause_fields(&s),
        [
            "spec.parentSelector.matchExpressions[0].values",
            "spec.parentSelector.matchExpressions[1].values",
            "spec.parentSelector.matchExpressions[2].values",
        ]
    );
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("must be specified when `operator` is 'In' or 'NotIn'"),
        "{s}"
    );
}

#[tokio::test]
async fn owner_references_must_name_their_owner_completely() {
    let server = TestServer::start();
    root(&server, "r", "10.0.0.0/24").await;
    let mut body = claim("a", json!({"prefixLength": 32, "parentRef": {"name": "r"}}));
    body["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "", "kind": "", "name": "", "uid": ""}]);
    let (code, _, s) = send(&server, "POST", CLAIMS, JSON, body.clone()).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(
        cause_fields(&s),
        [
            "metadata.ownerReferences[0].apiVersion",
            "metadata.ownerReferences[0].kind",
            "metadata.ownerReferences[0].name",
            "metadata.ownerReferences[0].uid",
        ]
    );
    body["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "c"}]);
    let (code, _, s) = send(&server, "POST", CLAIMS, JSON, body).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert!(cause_fields(&s).iter().any(|f| f.ends_with("uid")), "{s}");
}

#[tokio::test]
async fn a_reserve_larger_than_its_block_is_invalid() {
    let server = TestServer::start();
    let body = json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
                      "metadata": {"name": "small"},
                      "spec": {"prefix": "10.0.0.0/30", "reserve": {"leading": 3, "trailing": 2}}});
    let (code, _, s) = send(&server, "POST", PREFIXES, JSON, body).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(cause_fields(&s), ["spec.reserve"]);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("reserves 5 addresses, more than the 4 of spec.prefix 10.0.0.0/30"),
        "{s}"
    );

    root(&server, "r", "10.0.0.0/24").await;
    // Known from the claim alone (length and family) ...
    let template = json!({"spec": {"reserve": {"leading": 5}}});
    let spec = json!({"prefixLength": 30, "ipFamily": "IPv4", "parentRef": {"name": "r"}, "childPrefixTemplate": template});
    let (code, _, s) = send(&server, "POST", CLAIMS, JSON, claim("a", spec)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(cause_fields(&s), ["spec.childPrefixTemplate.spec.reserve"]);
    // ... or from the block the parent gives; nothing is allocated either way.
    let spec =
        json!({"prefixLength": 31, "parentRef": {"name": "r"}, "childPrefixTemplate": template});
    let (code, _, s) = send(&server, "POST", CLAIMS, JSON, claim("b", spec)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(cause_fields(&s), ["spec.childPrefixTemplate.spec.reserve"]);
    let spec = json!({"prefixLength": 31, "parentRef": {"name": "r"}});
    let (_, _, made) = send(&server, "POST", CLAIMS, JSON, claim("c", spec)).await;
    assert_eq!(made["status"]["prefix"], "10.0.0.0/31");
}

#[tokio::test]
async fn no_new_finalizers_on_an_object_being_deleted() {
    let server = TestServer::start();
    root(&server, "r", "10.0.0.0/24").await;
    let mut body = claim("a", json!({"prefixLength": 32, "parentRef": {"name": "r"}}));
    body["metadata"]["finalizers"] = json!(["example.com/a"]);
    send(&server, "POST", CLAIMS, JSON, body).await;
    let (code, _, _) = send(&server, "DELETE", &format!("{CLAIMS}/a"), None, Value::Null).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let add = json!({"metadata": {"finalizers": ["example.com/a", "example.com/b"]}});
    let (code, _, s) = send(&server, "PATCH", &format!("{CLAIMS}/a"), MERGE, add).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(cause_fields(&s), ["metadata.finalizers[1]"]);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("no new finalizers can be added if the object is being deleted"),
        "{s}"
    );
    // Removing one is what finishes the delete.
    let done = json!({"metadata": {"finalizers": null}});
    let (code, _, _) = send(&server, "PATCH", &format!("{CLAIMS}/a"), MERGE, done).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _) = send(&server, "GET", &format!("{CLAIMS}/a"), None, Value::Null).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_continue_token_continues_only_the_list_it_came_from() {
    let server = TestServer::start();
    root(&server, "r", "10.0.0.0/24").await;
    for name in ["a", "b", "c"] {
        let spec = json!({"prefixLength": 32, "parentRef": {"name": "r"}});
        send(&server, "POST", CLAIMS, JSON, claim(name, spec)).await;
    }
    let (_, _, page) = send(
        &server,
        "GET",
        &format!("{CLAIMS}?limit=1"),
        None,
        Value::Null,
    )
    .await;
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    let elsewhere = [
        format!("{PREFIXES}?limit=1&continue={token}"),
        format!("/apis/ipam.miloapis.com/v1alpha1/namespaces/other/ipprefixclaims?limit=1&continue={token}"),
        format!("{CLAIMS}?limit=1&labelSelector=x%3Dy&continue={token}"),
        format!("{CLAIMS}?limit=1&fieldSelector=metadata.name%3Da&continue={token}"),
    ];
    for path in elsewhere {
        let (code, _, s) = send(&server, "GET", &path, None, Value::Null).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{path}: {s}");
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains("belongs to another list"),
            "{s}"
        );
    }
    let (code, _, next) = send(
        &server,
        "GET",
        &format!("{CLAIMS}?limit=1&continue={token}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(next["items"][0]["metadata"]["name"], "b");
}

#[tokio::test]
async fn duplicate_keys_are_refused_when_strict_and_warned_about_otherwise() {
    let server = TestServer::start();
    root(&server, "r", "10.0.0.0/24").await;
    let json_body = r#"{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefixClaim","metadata":{"name":"a","name":"b"},"spec":{"prefixLength":32,"parentRef":{"name":"r"}}}"#;
    let yaml_body = "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefixClaim\nmetadata:\n  name: c\nspec:\n  prefixLength: 32\n  prefixLength: 32\n  parentRef: {name: r}\n";
    for (body, ct, field, name) in [
        (json_body, "application/json", "metadata.name", "b"),
        (yaml_body, "application/yaml", "spec.prefixLength", "c"),
    ] {
        let (code, _, bytes) = server
            .raw(
                "POST",
                &format!("{CLAIMS}?fieldValidation=Strict"),
                Some(ct),
                body,
            )
            .await;
        let s: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains(&format!("duplicate field \"{field}\"")),
            "{s}"
        );
        let (code, headers, bytes) = server.raw("POST", CLAIMS, Some(ct), body).await;
        assert_eq!(
            code,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let made: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(made["metadata"]["name"], name);
        let warning = headers
            .get(http::header::WARNING)
            .expect("a warning")
            .to_str()
            .unwrap();
        // The header's quoting turns the field's double quotes into single ones.
        assert!(
            warning.contains(&format!("duplicate field '{field}'")),
            "{warning}"
        );
    }
}

#[tokio::test]
async fn a_status_write_keeps_the_servers_fields_and_says_so_whatever_the_verb() {
    let server = TestServer::start();
    root(&server, "r", "10.0.0.0/24").await;
    let spec = json!({"prefixLength": 32, "parentRef": {"name": "r"}});
    let (_, _, made) = send(&server, "POST", CLAIMS, JSON, claim("a", spec)).await;
    let status_path = format!("{CLAIMS}/a/status");
    let expect_ignored =
        |code: StatusCode, warnings: &[String], obj: &Value| {
            assert_eq!(code, StatusCode::OK, "{obj}");
            assert_eq!(obj["status"]["prefix"], "10.0.0.0/32");
            assert!(
                warnings.iter().any(|w| w
                    .contains("status.prefix is set by the server: the value written was ignored")),
                "{warnings:?}"
            );
        };
    let mut put = made.clone();
    put["status"]["prefix"] = json!("10.0.0.9/32");
    let (code, warnings, obj) = send(&server, "PUT", &status_path, JSON, put).await;
    expect_ignored(code, &warnings, &obj);
    let merge = json!({"status": {"prefix": "10.0.0.9/32"}});
    let (code, warnings, obj) = send(&server, "PATCH", &status_path, MERGE, merge).await;
    expect_ignored(code, &warnings, &obj);
    let ops = json!([{"op": "replace", "path": "/status/prefix", "value": "10.0.0.9/32"}]);
    let (code, warnings, obj) = send(
        &server,
        "PATCH",
        &status_path,
        Some("application/json-patch+json"),
        ops,
    )
    .await;
    expect_ignored(code, &warnings, &obj);
    let apply = json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
                       "metadata": {"name": "a"}, "status": {"prefix": "10.0.0.9/32"}});
    let (code, warnings, obj) = send(
        &server,
        "PATCH",
        &format!("{status_path}?fieldManager=me&force=true"),
        Some("application/apply-patch+yaml"),
        apply,
    )
    .await;
    expect_ignored(code, &warnings, &obj);
    // A condition of the client's own type is its to write, without a warning.
    let own = json!({"status": {"conditions": [{"type": "Configured", "status": "True", "reason": "Done",
                     "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    let (code, warnings, obj) = send(&server, "PATCH", &status_path, MERGE, own).await;
    assert_eq!(code, StatusCode::OK, "{obj}");
    assert!(warnings.is_empty(), "{warnings:?}");
}
