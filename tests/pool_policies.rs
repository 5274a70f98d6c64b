//! What a parent asks of its pool: allowed and default lengths, address spaces, and retention
//! that ends. Through the running binary, over HTTPS and with kubectl.
mod common;

use common::TestServer;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const PREFIXES: &str = "/apis/ipam.miloapis.com/v1alpha1/ipprefixes";

fn claims(ns: &str) -> String {
    format!("/apis/ipam.miloapis.com/v1alpha1/namespaces/{ns}/ipprefixclaims")
}

async fn call(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (content_type, bytes) = match &body {
        Some(b) => (Some("application/json"), serde_json::to_vec(b).unwrap()),
        None => (None, Vec::new()),
    };
    let (code, _, resp) = server.raw(method, path, content_type, bytes).await;
    let value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
    (code.as_u16(), value)
}

/// POST `body` to `path`, asserting 201; returns the created object.
async fn create(server: &TestServer, path: &str, body: Value) -> Value {
    let (code, obj) = call(server, "POST", path, Some(body.clone())).await;
    assert_eq!(code, 201, "create {body}: {obj}");
    obj
}

fn prefix(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
           "metadata": {"name": name}, "spec": spec})
}

fn claim(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The (field, reason, message) of every cause of a 422 Status.
fn causes(status: &Value) -> Vec<(String, String, String)> {
    status["details"]["causes"]
        .as_array()
        .unwrap_or_else(|| panic!("no causes: {status}"))
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("field"), s("reason"), s("message"))
        })
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.to_string_lossy().into_owned()
}

const SEED_PLAN: &str = "apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefix
metadata: {name: platform}
spec:
  prefix: fd20::/20
  allowedPrefixLengths: {min: 48, max: 48}
  defaultPrefixLength: 48
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: net, namespace: p}
spec:
  parentRef: {name: platform}
  childPrefixTemplate:
    spec:
      allowedPrefixLengths: {min: 64, max: 64}
      defaultPrefixLength: 64
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: dfw, namespace: p}
spec:
  parentRef: {name: p.net}
  childPrefixTemplate:
    spec:
      defaultPrefixLength: 128
      reserve: {leading: 1}
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: nic-1, namespace: p}
spec:
  parentRef: {name: p.dfw}
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: nic-2, namespace: p}
spec:
  parentRef: {name: p.dfw}
";

#[test]
fn seed_plan_claims_that_name_only_a_parent_get_its_default_length() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let plan = write(dir.path(), "plan.yaml", SEED_PLAN);
    server.kubectl_ok(&["apply", "-f", &plan]);
    let out = server.kubectl_ok(&[
        "get",
        "ippc",
        "-n",
        "p",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.prefix} {end}",
    ]);
    assert_eq!(
        out.trim(),
        "dfw=fd20::/64 net=fd20::/48 nic-1=fd20::1/128 nic-2=fd20::2/128"
    );
    // The per-network block carries the template's policy.
    let out = server.kubectl_ok(&[
        "get",
        "ipp",
        "p.net",
        "-o",
        "jsonpath={.spec.allowedPrefixLengths.min}-{.spec.allowedPrefixLengths.max}/{.spec.defaultPrefixLength}",
    ]);
    assert_eq!(out, "64-64/64");
    // kubectl explain knows the new fields.
    let out = server.kubectl_ok(&["explain", "ipprefix.spec.defaultPrefixLength"]);
    assert!(
        out.contains("The length a claim from this prefix gets when it gives neither"),
        "{out}"
    );
    let out = server.kubectl_ok(&["explain", "ipprefixclaim.spec.retentionSeconds"]);
    assert!(out.contains("Only with `Retain`"), "{out}");
    // A length the network does not allow is refused, naming the field and the range.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: big, namespace: p}
spec:
  parentRef: {name: p.net}
  prefixLength: 56
",
    );
    let out = server.kubectl(&["create", "-f", &bad]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "spec.prefixLength: Invalid value: 56: must have a length between 64 and 64: spec.allowedPrefixLengths of the parent ipprefix \"p.net\" (fd20::/48)"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn lengths_outside_the_allowed_range_are_422_naming_the_field_and_range() {
    let server = TestServer::start();
    create(
        &server,
        PREFIXES,
        prefix(
            "root",
            json!({"prefix": "10.0.0.0/8", "allowedPrefixLengths": {"min": 16, "max": 24}}),
        ),
    )
    .await;
    let range = "must have a length between 16 and 24: spec.allowedPrefixLengths of the parent ipprefix \"root\" (10.0.0.0/8)";

    // A claim by length.
    let (code, s) = call(
        &server,
        "POST",
        &claims("ns"),
        Some(claim(
            "ns",
            "c",
            json!({"parentRef": {"name": "root"}, "prefixLength": 28}),
        )),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")), "{s}");
    assert_eq!(
        causes(&s),
        [(
            "spec.prefixLength".to_string(),
            "FieldValueInvalid".to_string(),
            format!("Invalid value: 28: {range}")
        )]
    );
    // A claim for an exact block.
    let (code, s) = call(
        &server,
        "POST",
        &claims("ns"),
        Some(claim(
            "ns",
            "c",
            json!({"parentRef": {"name": "root"}, "prefix": "10.16.0.0/12"}),
        )),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(
        causes(&s),
        [(
            "spec.prefix".to_string(),
            "FieldValueInvalid".to_string(),
            format!("Invalid value: \"10.16.0.0/12\": {range}")
        )]
    );
    // A static carve.
    let (code, s) = call(
        &server,
        "POST",
        PREFIXES,
        Some(prefix(
            "carve",
            json!({"prefix": "10.9.9.0/25", "parentRef": {"name": "root"}}),
        )),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(
        causes(&s),
        [(
            "spec.prefix".to_string(),
            "FieldValueInvalid".to_string(),
            format!("Invalid value: \"10.9.9.0/25\": {range}")
        )]
    );
    // Neither a length nor a default.
    let (code, s) = call(
        &server,
        "POST",
        &claims("ns"),
        Some(claim("ns", "c", json!({"parentRef": {"name": "root"}}))),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(
        causes(&s),
        [(
            "spec.prefixLength".to_string(),
            "FieldValueRequired".to_string(),
            "Required value: required unless spec.prefix is set or the parent ipprefix \"root\" has spec.defaultPrefixLength".to_string()
        )]
    );
    // Within the range: allocated; nothing above was written.
    let made = create(
        &server,
        &claims("ns"),
        claim(
            "ns",
            "c",
            json!({"parentRef": {"name": "root"}, "prefixLength": 24}),
        ),
    )
    .await;
    assert_eq!(made["status"]["prefix"], "10.0.0.0/24");

    // The policy itself: every bad field at once.
    let (code, s) = call(
        &server,
        "POST",
        PREFIXES,
        Some(prefix(
            "bad",
            json!({"prefix": "fd20::/48", "allowedPrefixLengths": {"min": 64, "max": 56},
                   "defaultPrefixLength": 40, "maxRetentionSeconds": -1}),
        )),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    let fields: Vec<_> = causes(&s).into_iter().map(|c| (c.0, c.2)).collect();
    assert_eq!(
        fields,
        [
            ("spec.maxRetentionSeconds".to_string(), "Invalid value: -1: must be greater than or equal to 0".to_string()),
            ("spec.defaultPrefixLength".to_string(), "Invalid value: 40: must be between 49 and 128: longer than spec.prefix (fd20::/48), at most a single IPv6 address".to_string()),
            ("spec.allowedPrefixLengths.min".to_string(), "Invalid value: 64: must be less than or equal to spec.allowedPrefixLengths.max (56)".to_string()),
        ]
    );
    let (code, s) = call(
        &server,
        "POST",
        PREFIXES,
        Some(prefix(
            "bad",
            json!({"prefix": "10.0.0.0/8", "addressSpace": "x",
                   "allowedPrefixLengths": {"min": 16, "max": 33}, "defaultPrefixLength": 12}),
        )),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    let fields: Vec<_> = causes(&s).into_iter().map(|c| (c.0, c.2)).collect();
    assert_eq!(
        fields,
        [
            ("spec.allowedPrefixLengths.max".to_string(), "Invalid value: 33: must be between 9 and 32: longer than spec.prefix (10.0.0.0/8), at most a single IPv4 address".to_string()),
            ("spec.defaultPrefixLength".to_string(), "Invalid value: 12: must be within spec.allowedPrefixLengths (16 to 32)".to_string()),
        ]
    );
}

#[tokio::test]
async fn a_selector_takes_the_default_of_each_parent_it_chooses() {
    let server = TestServer::start();
    for (name, net, default) in [("a", "10.0.0.0/30", 31), ("b", "10.1.0.0/16", 24)] {
        let mut p = prefix(name, json!({"prefix": net, "defaultPrefixLength": default}));
        p["metadata"]["labels"] = json!({"pool": "x"});
        create(&server, PREFIXES, p).await;
    }
    let sel = json!({"parentSelector": {"matchLabels": {"pool": "x"}}});
    let mut got = Vec::new();
    for i in 0..3 {
        let made = create(
            &server,
            &claims("ns"),
            claim("ns", &format!("c{i}"), sel.clone()),
        )
        .await;
        got.push(made["status"]["prefix"].as_str().unwrap().to_string());
    }
    assert_eq!(got, ["10.0.0.0/31", "10.0.0.2/31", "10.1.0.0/24"]);
}

#[tokio::test]
async fn roots_overlap_only_across_address_spaces() {
    let server = TestServer::start();
    for space in ["a", "b"] {
        create(
            &server,
            PREFIXES,
            prefix(
                &format!("tenant-{space}"),
                json!({"prefix": "10.0.0.0/8", "addressSpace": space}),
            ),
        )
        .await;
        let made = create(
            &server,
            &claims(space),
            claim(
                space,
                "net",
                json!({"parentRef": {"name": format!("tenant-{space}")}, "prefix": "10.0.0.0/24"}),
            ),
        )
        .await;
        assert_eq!(made["status"]["prefix"], "10.0.0.0/24");
    }
    let (code, s) = call(
        &server,
        "POST",
        PREFIXES,
        Some(prefix(
            "third",
            json!({"prefix": "10.0.0.0/16", "addressSpace": "a"}),
        )),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (409, Some("Conflict")), "{s}");
    assert_eq!(
        s["message"],
        "root prefix 10.0.0.0/16 overlaps root ipprefix \"tenant-a\" (10.0.0.0/8) in address space \"a\""
    );
    // The shared space (no addressSpace) is a space of its own.
    create(
        &server,
        PREFIXES,
        prefix("shared", json!({"prefix": "10.0.0.0/8"})),
    )
    .await;
    // The space is immutable, and a carve is in its parent's space.
    let (code, _, body) = server
        .raw(
            "PATCH",
            &format!("{PREFIXES}/tenant-a"),
            Some("application/merge-patch+json"),
            r#"{"spec":{"addressSpace":"c"}}"#,
        )
        .await;
    let s: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code.as_u16(), 422, "{s}");
    assert_eq!(
        causes(&s),
        [(
            "spec.addressSpace".to_string(),
            "FieldValueInvalid".to_string(),
            "Invalid value: \"c\": field is immutable".to_string()
        )]
    );
    let (code, s) = call(
        &server,
        "POST",
        PREFIXES,
        Some(prefix("carve", json!({"prefix": "10.1.0.0/16", "parentRef": {"name": "tenant-a"}, "addressSpace": "b"}))),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(
        causes(&s)[0].2,
        "Invalid value: \"b\": must be the address space of the parent ipprefix \"tenant-a\" (\"a\")"
    );
    // Everything under a root is in its space: the field selector finds the tree.
    let out = server.kubectl_ok(&[
        "get",
        "ipp",
        "--field-selector",
        "spec.addressSpace=a",
        "-o",
        "name",
    ]);
    assert_eq!(
        out,
        "ipprefix.ipam.miloapis.com/a.net\nipprefix.ipam.miloapis.com/tenant-a\n"
    );
    // Per-root metrics tell the two 10.0.0.0/8 roots apart.
    let (_, _, body) = server.raw("GET", "/metrics", None, Vec::new()).await;
    let metrics = String::from_utf8(body).unwrap();
    for space in ["a", "b"] {
        let line = format!(
            "ipam_root_prefix_children{{name=\"tenant-{space}\",prefix=\"10.0.0.0/8\",address_space=\"{space}\"}} 1"
        );
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
}

/// The IPPrefix `name`, or `None` once it is gone.
async fn get_prefix(server: &TestServer, name: &str) -> Option<Value> {
    let (code, obj) = call(server, "GET", &format!("{PREFIXES}/{name}"), None).await;
    match code {
        200 => Some(obj),
        404 => None,
        other => panic!("GET ipprefix {name}: {other} {obj}"),
    }
}

/// Wait (bounded) until the IPPrefix `name` is gone; returns when it was first seen gone.
async fn until_gone(server: &TestServer, name: &str, bound: Duration) -> jiff::Timestamp {
    let give_up = Instant::now() + bound;
    loop {
        if get_prefix(server, name).await.is_none() {
            return jiff::Timestamp::now();
        }
        assert!(
            Instant::now() < give_up,
            "ipprefix {name} still there after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn timestamp(v: &Value) -> jiff::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap()
}

/// A root 10.0.0.0/24 and a Retain claim `ns/c` for a /32 keeping it `retention` seconds.
async fn retained_claim(
    server: &TestServer,
    retention: Option<i64>,
    root_max: Option<i64>,
) -> Value {
    let mut spec = json!({"prefix": "10.0.0.0/24"});
    if let Some(m) = root_max {
        spec["maxRetentionSeconds"] = json!(m);
    }
    create(server, PREFIXES, prefix("root", spec)).await;
    let mut spec =
        json!({"parentRef": {"name": "root"}, "prefixLength": 32, "reclaimPolicy": "Retain"});
    if let Some(r) = retention {
        spec["retentionSeconds"] = json!(r);
    }
    create(server, &claims("ns"), claim("ns", "c", spec)).await
}

async fn delete_claim(server: &TestServer, name: &str) {
    let (code, s) = call(server, "DELETE", &format!("{}/{name}", claims("ns")), None).await;
    assert_eq!(code, 200, "{s}");
}

#[tokio::test]
async fn a_retained_block_is_freed_at_its_deadline() {
    let server = TestServer::start();
    retained_claim(&server, Some(2), None).await;
    delete_claim(&server, "c").await;
    let released = get_prefix(&server, "ns.c").await.expect("Released prefix");
    let status = &released["status"];
    assert_eq!(status["phase"], "Released");
    let (at, until) = (
        timestamp(&status["releasedAt"]),
        timestamp(&status["retainedUntil"]),
    );
    assert_eq!(until.as_second() - at.as_second(), 2);
    // kubectl shows the deadline too.
    let out = server.kubectl_ok(&[
        "get",
        "ipp",
        "ns.c",
        "-o",
        "jsonpath={.status.retainedUntil}",
    ]);
    assert_eq!(out, status["retainedUntil"].as_str().unwrap());

    let gone = until_gone(&server, "ns.c", Duration::from_secs(15)).await;
    eprintln!(
        "freed {} ms after retainedUntil",
        (gone - until).get_milliseconds()
    );
    // The block is free again: another claim gets it.
    let made = create(
        &server,
        &claims("ns"),
        claim(
            "ns",
            "other",
            json!({"parentRef": {"name": "root"}, "prefixLength": 32}),
        ),
    )
    .await;
    assert_eq!(made["status"]["prefix"], "10.0.0.0/32");
}

#[tokio::test]
async fn the_parent_caps_retention_and_supplies_it_when_the_claim_gives_none() {
    let server = TestServer::start();
    retained_claim(&server, Some(3600), Some(60)).await;
    create(
        &server,
        &claims("ns"),
        claim(
            "ns",
            "d",
            json!({"parentRef": {"name": "root"}, "prefixLength": 32, "reclaimPolicy": "Retain"}),
        ),
    )
    .await;
    delete_claim(&server, "c").await;
    delete_claim(&server, "d").await;
    for name in ["ns.c", "ns.d"] {
        let p = get_prefix(&server, name).await.unwrap();
        let s = &p["status"];
        let secs =
            timestamp(&s["retainedUntil"]).as_second() - timestamp(&s["releasedAt"]).as_second();
        assert_eq!(secs, 60, "{name}: {s}");
    }
    // retentionSeconds needs Retain.
    let (code, s) = call(
        &server,
        "POST",
        &claims("ns"),
        Some(claim(
            "ns",
            "e",
            json!({"parentRef": {"name": "root"}, "prefixLength": 32, "retentionSeconds": 5}),
        )),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(
        causes(&s),
        [(
            "spec.retentionSeconds".to_string(),
            "FieldValueForbidden".to_string(),
            "Forbidden: may be set only with spec.reclaimPolicy: Retain".to_string()
        )]
    );
    // Without any limit a Released block has no deadline.
    create(
        &server,
        PREFIXES,
        prefix("open", json!({"prefix": "10.1.0.0/24"})),
    )
    .await;
    create(
        &server,
        &claims("ns"),
        claim(
            "ns",
            "f",
            json!({"parentRef": {"name": "open"}, "prefixLength": 32, "reclaimPolicy": "Retain"}),
        ),
    )
    .await;
    delete_claim(&server, "f").await;
    let p = get_prefix(&server, "ns.f").await.unwrap();
    assert!(p["status"]["releasedAt"].is_string(), "{p}");
    assert!(p["status"].get("retainedUntil").is_none(), "{p}");
}

#[tokio::test]
async fn a_server_down_at_the_deadline_frees_the_block_when_it_is_back() {
    let mut server = TestServer::start();
    retained_claim(&server, Some(1), None).await;
    delete_claim(&server, "c").await;
    let released = get_prefix(&server, "ns.c").await.unwrap();
    let until = timestamp(&released["status"]["retainedUntil"]);
    assert!(server.stop().success());
    // Down across the deadline.
    while jiff::Timestamp::now() <= until + jiff::SignedDuration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    server.restart();
    until_gone(&server, "ns.c", Duration::from_secs(15)).await;
    let made = create(
        &server,
        &claims("ns"),
        claim(
            "ns",
            "other",
            json!({"parentRef": {"name": "root"}, "prefixLength": 32}),
        ),
    )
    .await;
    assert_eq!(made["status"]["prefix"], "10.0.0.0/32");
}

#[tokio::test]
async fn a_rebind_before_the_deadline_keeps_the_block() {
    let server = TestServer::start();
    retained_claim(&server, Some(2), None).await;
    delete_claim(&server, "c").await;
    let until = timestamp(&get_prefix(&server, "ns.c").await.unwrap()["status"]["retainedUntil"]);
    let again = create(
        &server,
        &claims("ns"),
        claim("ns", "c", json!({"parentRef": {"name": "root"}, "prefixLength": 32, "reclaimPolicy": "Retain", "retentionSeconds": 2})),
    )
    .await;
    assert_eq!(again["status"]["conditions"][0]["reason"], "Rebound");
    let bound = get_prefix(&server, "ns.c").await.unwrap();
    assert_eq!(bound["status"]["phase"], "Bound");
    assert!(bound["status"].get("releasedAt").is_none(), "{bound}");
    assert!(bound["status"].get("retainedUntil").is_none(), "{bound}");
    // Past the old deadline, the block is still the claim's.
    while jiff::Timestamp::now() <= until + jiff::SignedDuration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bound = get_prefix(&server, "ns.c").await.expect("still there");
    assert_eq!(bound["status"]["phase"], "Bound");
    assert_eq!(bound["spec"]["prefix"], "10.0.0.0/32");
}

/// 10,000 Released blocks whose retention ends in the same second are all freed, and the server
/// keeps answering meanwhile. Prints how long the expiry took (for the README).
#[tokio::test]
async fn ten_thousand_blocks_expiring_in_the_same_second_are_all_freed() {
    use futures::stream::{self, StreamExt};
    const N: usize = 10_000;
    let server = TestServer::start();
    create(
        &server,
        PREFIXES,
        prefix("root", json!({"prefix": "fd20::/64"})),
    )
    .await;
    let server = &server;
    // Retain, no retention of its own: the root's maxRetentionSeconds applies, read at release.
    let retained = |name: &str| {
        claim(
            "ns",
            name,
            json!({"parentRef": {"name": "root"}, "prefixLength": 128, "reclaimPolicy": "Retain"}),
        )
    };
    let retained = &retained;
    let created = Instant::now();
    stream::iter(0..N)
        .for_each_concurrent(32, |i| async move {
            create(server, &claims("ns"), retained(&format!("c{i}"))).await;
        })
        .await;
    eprintln!("{N} claims created in {:?}", created.elapsed());
    // Released in chunks; before each, the root's maxRetentionSeconds is set so that a release
    // in this second ends at `due`. A chunk that ran into the next second is one second late:
    // those are bound again (rebind) and released once more.
    let due = jiff::Timestamp::now().as_second() + 120;
    let started = Instant::now();
    let mut pending: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        for chunk in pending.chunks(64) {
            let max = due - jiff::Timestamp::now().as_second();
            let body = format!(r#"{{"spec":{{"maxRetentionSeconds":{max}}}}}"#);
            let (code, _, resp) = server
                .raw(
                    "PATCH",
                    &format!("{PREFIXES}/root"),
                    Some("application/merge-patch+json"),
                    body,
                )
                .await;
            assert_eq!(code.as_u16(), 200, "{}", String::from_utf8_lossy(&resp));
            stream::iter(chunk)
                .for_each_concurrent(32, |name| delete_claim(server, name))
                .await;
        }
        let (_, list) = call(server, "GET", PREFIXES, None).await;
        pending = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"]["phase"] == "Released")
            .filter(|p| timestamp(&p["status"]["retainedUntil"]).as_second() != due)
            .map(|p| p["spec"]["claimRef"]["name"].as_str().unwrap().to_string())
            .collect();
        stream::iter(&pending)
            .for_each_concurrent(32, |name| async move {
                let again = create(server, &claims("ns"), retained(name)).await;
                assert_eq!(again["status"]["conditions"][0]["reason"], "Rebound");
            })
            .await;
    }
    eprintln!("released in {:?} ({rounds} rounds)", started.elapsed());
    assert!(
        jiff::Timestamp::now().as_second() < due,
        "releasing took {:?}: past the deadline",
        started.elapsed()
    );
    let (_, list) = call(server, "GET", PREFIXES, None).await;
    let on_time = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"]["retainedUntil"].is_string())
        .filter(|p| timestamp(&p["status"]["retainedUntil"]).as_second() == due)
        .count();
    assert_eq!(on_time, N);
    while jiff::Timestamp::now().as_second() < due {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_deadline = Instant::now();
    // Meanwhile the server answers reads and writes.
    let made = create(
        server,
        &claims("other"),
        claim(
            "other",
            "x",
            json!({"parentRef": {"name": "root"}, "prefixLength": 128}),
        ),
    )
    .await;
    let answered = at_deadline.elapsed();
    assert!(made["status"]["prefix"].is_string());
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, list) = call(
            server,
            "GET",
            &format!("{PREFIXES}?fieldSelector=status.phase%3DReleased&limit=1"),
            None,
        )
        .await;
        if list["items"].as_array().is_some_and(|i| i.is_empty()) {
            break;
        }
        assert!(Instant::now() < give_up, "Released prefixes left: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{N} Released prefixes freed {:?} after their deadline; a create at the deadline answered in {answered:?}",
        at_deadline.elapsed()
    );
    // Only the root and the one new claim's block are left.
    let (_, list) = call(server, "GET", PREFIXES, None).await;
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, [json!("other.x"), json!("root")]);
}

#[tokio::test]
async fn a_released_block_past_its_deadline_waits_for_its_children() {
    let server = TestServer::start();
    retained_claim(&server, Some(1), None).await;
    // A /32 has no room for children: retain a /30 instead, with a static carve inside it.
    create(
        &server,
        &claims("ns"),
        claim("ns", "net", json!({"parentRef": {"name": "root"}, "prefixLength": 30, "reclaimPolicy": "Retain", "retentionSeconds": 1})),
    )
    .await;
    delete_claim(&server, "net").await;
    create(
        &server,
        PREFIXES,
        prefix(
            "carve",
            json!({"prefix": "10.0.0.4/32", "parentRef": {"name": "ns.net"}}),
        ),
    )
    .await;
    let until = timestamp(&get_prefix(&server, "ns.net").await.unwrap()["status"]["retainedUntil"]);
    while jiff::Timestamp::now() <= until + jiff::SignedDuration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = get_prefix(&server, "ns.net")
        .await
        .expect("waits for its child");
    assert_eq!(waiting["status"]["phase"], "Released");
    // Its last child goes: so does it.
    let (code, s) = call(&server, "DELETE", &format!("{PREFIXES}/carve"), None).await;
    assert_eq!(code, 200, "{s}");
    until_gone(&server, "ns.net", Duration::from_secs(15)).await;
}
