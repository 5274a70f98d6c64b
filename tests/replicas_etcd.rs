//! Several replicas of the real binary on one real etcd (from `$KUBEBUILDER_ASSETS/etcd`;
//! skipped, saying so, without it): what one replica writes, the others serve at once, and
//! an etcd outage is a fast 503 naming etcd, `/readyz` failing and `/livez` not.
mod common;
#[path = "common/etcd.rs"]
mod etcd;

use etcd::{free_port, replicas, Etcd};
use http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

fn root(name: &str, prefix: &str) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
           "metadata": {"name": name}, "spec": {"prefix": prefix}})
}

fn claim(name: &str, parent: &str, len: u8) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
           "metadata": {"name": name},
           "spec": {"parentRef": {"name": parent}, "prefixLength": len}})
}

#[tokio::test]
async fn a_claim_created_on_one_replica_is_read_at_once_on_the_others() {
    let Some(etcd) = Etcd::start("a_claim_created_on_one_replica_is_read_at_once") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let servers = replicas(&etcd, 2, scratch.path(), &[]);
    let (a, b) = (&servers[0], &servers[1]);
    let (status, _) = a
        .json(
            "POST",
            &format!("{GV}/ipprefixes"),
            Some(root("pool", "10.0.0.0/24")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // A watch on B from now on: it must see A's writes.
    let (status, list) = b
        .json("GET", &format!("{GV}/namespaces/ns/ipprefixclaims"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..20 {
        let name = format!("nic-{i}");
        let (status, created) = a
            .json(
                "POST",
                &format!("{GV}/namespaces/ns/ipprefixclaims"),
                Some(claim(&name, "pool", 32)),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        // Every time, not eventually.
        let (status, read) = b
            .json(
                "GET",
                &format!("{GV}/namespaces/ns/ipprefixclaims/{name}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{read}");
        assert_eq!(read["status"]["prefix"], created["status"]["prefix"]);
        assert_eq!(
            read["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
    }
    let (_, list) = b
        .json("GET", &format!("{GV}/namespaces/ns/ipprefixclaims"), None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 20);
    // B's watch delivers A's creates, in order.
    let (status, _, body) = b
        .raw(
            "GET",
            &format!("{GV}/namespaces/ns/ipprefixclaims?watch=true&resourceVersion={rv}&timeoutSeconds=2"),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<String> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "ADDED")
        .map(|e| {
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("nic-{i}")).collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn without_etcd_writes_are_a_fast_503_naming_etcd_and_only_readiness_fails() {
    let Some(mut etcd) = Etcd::start("without_etcd_writes_are_a_fast_503") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let servers = replicas(&etcd, 1, scratch.path(), &[]);
    let a = &servers[0];
    assert_eq!(
        a.json(
            "POST",
            &format!("{GV}/ipprefixes"),
            Some(root("r", "10.1.0.0/16"))
        )
        .await
        .0,
        StatusCode::CREATED
    );
    etcd.stop();
    // Once, as a client that does not retry 503 (kube-rs does, with backoff, by default).
    let mut config = a.kube_config().await;
    config.default_retry = false;
    let req = common::request(
        "POST",
        &format!("{GV}/ipprefixes"),
        Some("application/json"),
        root("s", "10.2.0.0/16").to_string(),
    );
    let (status, _, body) = common::send_with(config, req).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["kind"], "Status");
    assert!(body["message"].as_str().unwrap().contains("etcd"), "{body}");
    let (status, _, text) = a.raw("GET", "/readyz?verbose", None, Vec::new()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&text).contains("[-]etcd"));
    let (status, _, _) = a.raw("GET", "/livez", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn an_unreachable_etcd_fails_the_start_naming_the_flag() {
    let out = common::run_to_exit(
        [
            "serve",
            "--standalone",
            "--secure-port",
            "0",
            "--data-dir",
            &tempfile::tempdir().unwrap().path().display().to_string(),
            "--etcd-servers",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--etcd-servers"), "{stderr}");
}
