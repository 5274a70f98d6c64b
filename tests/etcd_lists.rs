//! Lists of the real binary on a real etcd (from `$KUBEBUILDER_ASSETS/etcd`; skipped, saying
//! so, without it): the pages of a list are one snapshot at the first page's revision, with
//! `remainingItemCount`, as kube-apiserver's are; a page whose revision etcd compacted is 410.
mod common;
#[path = "common/etcd.rs"]
mod etcd;

use common::TestServer;
use etcd::Etcd;
use http::StatusCode;
use serde_json::{json, Value};

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

async fn create_claim(s: &TestServer, name: &str) {
    let claim = json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
        "metadata": {"name": name},
        "spec": {"parentRef": {"name": "pool"}, "prefixLength": 32}});
    let path = format!("{GV}/namespaces/ns/ipprefixclaims");
    let (status, body) = s.json("POST", &path, Some(claim)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A server on `etcd` holding the root `pool` and the claims `names` in namespace `ns`.
async fn server_with_claims(etcd: &Etcd, names: &[&str]) -> TestServer {
    let server = TestServer::start_with(&[], &["--etcd-servers", etcd.url.as_str()]);
    let root = json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
        "metadata": {"name": "pool"}, "spec": {"prefix": "10.0.0.0/24"}});
    let (status, body) = server
        .json("POST", &format!("{GV}/ipprefixes"), Some(root))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for name in names {
        create_claim(&server, name).await;
    }
    server
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn pages_are_one_snapshot_at_the_first_pages_revision() {
    let Some(etcd) = Etcd::start("pages_are_one_snapshot_at_the_first_pages_revision") else {
        return;
    };
    let claims = [
        "c-0", "c-1", "c-2", "c-3", "c-4", "c-5", "c-6", "c-7", "c-8",
    ];
    let server = server_with_claims(&etcd, &claims).await;
    let page = |token: &str| format!("{GV}/namespaces/ns/ipprefixclaims?limit=3&continue={token}");
    let (status, first) = server.json("GET", &page(""), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(names(&first), ["c-0", "c-1", "c-2"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 6, "{first}");
    let rv = first["metadata"]["resourceVersion"].clone();

    // Written after the first page, inside the later pages' range.
    create_claim(&server, "c-3a").await;
    create_claim(&server, "c-6a").await;
    let (status, _) = server
        .json(
            "DELETE",
            &format!("{GV}/namespaces/ns/ipprefixclaims/c-5"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let token = first["metadata"]["continue"].as_str().unwrap();
    let (status, second) = server.json("GET", &page(token), None).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        names(&second),
        ["c-3", "c-4", "c-5"],
        "the first page's snapshot"
    );
    assert_eq!(second["metadata"]["resourceVersion"], rv);
    assert_eq!(second["metadata"]["remainingItemCount"], 3, "{second}");
    let token = second["metadata"]["continue"].as_str().unwrap();
    let (status, third) = server.json("GET", &page(token), None).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    assert_eq!(names(&third), ["c-6", "c-7", "c-8"]);
    assert_eq!(third["metadata"]["resourceVersion"], rv);
    assert!(third["metadata"].get("continue").is_none(), "{third}");
    assert!(
        third["metadata"].get("remainingItemCount").is_none(),
        "{third}"
    );

    // A new list sees the writes.
    let (_, latest) = server
        .json("GET", &format!("{GV}/namespaces/ns/ipprefixclaims"), None)
        .await;
    let expected = [
        "c-0", "c-1", "c-2", "c-3", "c-3a", "c-4", "c-6", "c-6a", "c-7", "c-8",
    ];
    assert_eq!(names(&latest), expected);

    // A selector filters: how many of the rest match is unknown, so no count (as kube-apiserver).
    let (_, filtered) = server
        .json(
            "GET",
            &format!("{GV}/namespaces/ns/ipprefixclaims?limit=3&labelSelector=app!=x"),
            None,
        )
        .await;
    assert_eq!(names(&filtered), ["c-0", "c-1", "c-2"]);
    assert!(filtered["metadata"]["continue"].is_string(), "{filtered}");
    assert!(
        filtered["metadata"].get("remainingItemCount").is_none(),
        "{filtered}"
    );

    // kubectl pages through all of it, as a table and as names.
    let out = server.kubectl(&[
        "get",
        "ippc",
        "-n",
        "ns",
        "--chunk-size=2",
        "-o",
        "name",
        "-v=6",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = expected
        .iter()
        .map(|n| format!("ipprefixclaim.ipam.miloapis.com/{n}"))
        .collect();
    assert_eq!(listed, want);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.matches("continue=").count() >= 4,
        "kubectl did not page: {log}"
    );
    let table = server.kubectl_ok(&["get", "ippc", "-n", "ns", "--chunk-size=3"]);
    assert_eq!(table.lines().count(), 1 + expected.len(), "{table}");
}

#[tokio::test]
async fn a_page_whose_revision_etcd_compacted_is_410_expired() {
    let Some(etcd) = Etcd::start("a_page_whose_revision_etcd_compacted_is_410_expired") else {
        return;
    };
    let server = server_with_claims(&etcd, &["a", "b", "c"]).await;
    let path = format!("{GV}/namespaces/ns/ipprefixclaims?limit=1");
    let (_, first) = server.json("GET", &path, None).await;
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    create_claim(&server, "d").await;
    // Compact etcd up to now, as the compactor (or an operator) does.
    let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    let now = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(now, None).await.unwrap();
    let (status, body) = server
        .json("GET", &format!("{path}&continue={token}"), None)
        .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(body["reason"], "Expired");
    assert_eq!(
        body["message"],
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."
    );
    // A new list works.
    let (status, fresh) = server.json("GET", &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&fresh), ["a"]);
}

#[tokio::test]
async fn resource_version_0_reads_are_answered_from_the_cache_even_without_etcd() {
    let Some(mut etcd) = Etcd::start("resource_version_0_reads_are_answered_from_the_cache") else {
        return;
    };
    let server = server_with_claims(&etcd, &["a", "b"]).await;
    let claims = format!("{GV}/namespaces/ns/ipprefixclaims");
    // A consistent read first: the cache has every write acknowledged before it.
    let (_, list) = server.json("GET", &claims, None).await;
    assert_eq!(names(&list), ["a", "b"]);
    etcd.stop();
    // The latest state needs etcd's word: 503 naming etcd.
    // Once, as a client that does not retry 503 (kube-rs does, with backoff, by default).
    let mut config = server.kube_config().await;
    config.default_retry = false;
    let req = common::request("GET", &format!("{claims}/a"), None, Vec::new());
    let (status, _, body) = common::send_with(config, req).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["message"].as_str().unwrap().contains("etcd"), "{body}");
    // Any state will do: this replica's cache answers, as kube-apiserver's watch cache does.
    let (status, body) = server
        .json("GET", &format!("{claims}/a?resourceVersion=0"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["metadata"]["name"], "a");
    let (status, list) = server
        .json("GET", &format!("{claims}?resourceVersion=0"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(names(&list), ["a", "b"]);
    let (status, _) = server
        .json("GET", &format!("{claims}?resourceVersion=0&limit=1"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "a first page from the cache");
}
