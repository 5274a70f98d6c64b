//! Delete = release as a user sees it: what holds a deleted claim and what says so, user
//! finalizers on IPPrefixes, the server's own finalizer, and conditions that follow the spec.
mod common;

use common::TestServer;
use ipam_apiserver::api::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn example(file: &str) -> String {
    format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// The README's plan: the root, then `examples/plan.yaml`.
fn apply_plan(server: &TestServer) {
    server.kubectl_ok(&["apply", "-f", &example("platform-ula.yaml")]);
    server.kubectl_ok(&["apply", "-f", &example("plan.yaml")]);
}

fn api_error<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn kubectl_delete_of_the_plan_finishes_though_a_retain_host_stays_released_below() {
    let server = TestServer::start();
    apply_plan(&server);
    // Deleting the lot waits for nothing: the Retain /128 is Released once nic-0 goes, and a
    // Released block under a subnet whose claim goes is freed with it.
    server.kubectl_ok(&["delete", "-f", &example("plan.yaml"), "--timeout=60s"]);
    assert_eq!(
        server
            .kubectl_ok(&["get", "ippc", "-A", "-o", "name"])
            .trim(),
        ""
    );
    assert_eq!(
        server.kubectl_ok(&["get", "ipp", "-o", "name"]).trim(),
        "ipprefix.ipam.miloapis.com/platform-ula"
    );
    server.kubectl_until(
        &[
            "get",
            "ipp",
            "platform-ula",
            "-o",
            "jsonpath={.status.capacity.allocated}",
        ],
        "0",
    );
}

#[tokio::test]
async fn a_claim_waiting_for_bound_children_says_so_and_goes_with_the_last() {
    let server = TestServer::start();
    apply_plan(&server);
    // The pool and the location wait for the subnet, which waits for the Bound host.
    server.kubectl_ok(&[
        "delete",
        "ippc",
        "-n",
        "project-a",
        "pool",
        "dfw",
        "dfw-subnet",
        "--wait=false",
    ]);
    let reason = server.kubectl_ok(&[
        "get",
        "ippc",
        "-n",
        "project-a",
        "dfw-subnet",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Released\")].reason}",
    ]);
    assert_eq!(reason, "WaitingForChildren");
    let described = server.kubectl_ok(&["describe", "ippc", "-n", "project-a", "pool"]);
    assert!(described.contains("WaitingForChildren"), "{described}");
    assert!(
        described.contains(
            "waiting for 1 bound ipprefix below ipprefix \"project-a.pool\": \"project-a.dfw\""
        ),
        "{described}"
    );
    let subnet = server.kubectl_ok(&["describe", "ippc", "-n", "project-a", "dfw-subnet"]);
    assert!(subnet.contains("\"project-a.nic-0\""), "{subnet}");
    // The host goes (Retain: its block stays Released under the subnet): nothing Bound is
    // left, so every waiting claim goes, and the Released /128 with them.
    server.kubectl_ok(&["delete", "ippc", "-n", "project-a", "nic-0"]);
    assert_eq!(
        server
            .kubectl_ok(&["get", "ippc", "-n", "project-a", "-o", "name"])
            .trim(),
        ""
    );
    assert_eq!(
        server.kubectl_ok(&["get", "ipp", "-o", "name"]).trim(),
        "ipprefix.ipam.miloapis.com/platform-ula"
    );
}

#[tokio::test]
async fn kubectl_wait_for_bound_returns_after_a_reclaim_policy_change() {
    let server = TestServer::start();
    apply_plan(&server);
    server.kubectl_ok(&[
        "patch",
        "ippc",
        "-n",
        "project-a",
        "dfw-subnet",
        "--type=merge",
        "-p",
        r#"{"spec":{"reclaimPolicy":"Retain"}}"#,
    ]);
    let generation = server.kubectl_ok(&[
        "get",
        "ippc",
        "-n",
        "project-a",
        "dfw-subnet",
        "-o",
        "jsonpath={.metadata.generation}/{.status.conditions[?(@.type==\"Bound\")].observedGeneration}",
    ]);
    assert_eq!(generation, "2/2");
    // kubectl takes a condition observed at an older generation as not yet met, and waits.
    let out = server.kubectl_ok(&[
        "wait",
        "--for=condition=Bound",
        "-n",
        "project-a",
        "ippc/dfw-subnet",
        "--timeout=20s",
    ]);
    assert!(out.contains("condition met"), "{out}");
}

#[tokio::test]
async fn a_user_finalizer_on_a_claims_ipprefix_keeps_its_block_until_removed() {
    let server = TestServer::start();
    let client = server.client().await;
    let prefixes: Api<IPPrefix> = Api::all(client.clone());
    let claims: Api<IPPrefixClaim> = Api::namespaced(client, "ns");
    let pp = PostParams::default();
    prefixes
        .create(&pp, &IPPrefix::root("r", "10.0.0.0/30".parse().unwrap()))
        .await
        .unwrap();
    let host = |name: &str| IPPrefixClaim::new_host("ns", name, "r", IpFamily::IPv4);
    claims.create(&pp, &host("a")).await.unwrap();
    let finalizers = |f: serde_json::Value| Patch::Merge(json!({"metadata": {"finalizers": f}}));
    prefixes
        .patch(
            "ns.a",
            &PatchParams::default(),
            &finalizers(json!(["example.com/unconfigure"])),
        )
        .await
        .unwrap();

    claims.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(claims.get("a").await).code, 404);
    let kept = prefixes.get("ns.a").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_some());
    assert_eq!(kept.phase(), "Released");
    // Its block is still held: a static request names the holder, a new claim gets another.
    let mut exact = host("b");
    exact.spec.prefix = Some("10.0.0.0/32".into());
    let taken = api_error(claims.create(&pp, &exact).await);
    assert_eq!(taken.code, 409);
    assert!(
        taken.message.contains("ipprefix \"ns.a\""),
        "{}",
        taken.message
    );
    let other = claims.create(&pp, &host("c")).await.unwrap();
    assert_eq!(other.status.unwrap().prefix.as_deref(), Some("10.0.0.1/32"));

    // The controller is done: the IPPrefix goes and its block is free.
    prefixes
        .patch("ns.a", &PatchParams::default(), &finalizers(json!(null)))
        .await
        .unwrap();
    assert_eq!(api_error(prefixes.get("ns.a").await).code, 404);
    let again = claims.create(&pp, &exact).await.unwrap();
    assert_eq!(again.status.unwrap().prefix.as_deref(), Some("10.0.0.0/32"));
}

#[tokio::test]
async fn the_in_use_finalizer_is_the_servers_and_a_claim_without_children_never_waits() {
    let server = TestServer::start();
    let client = server.client().await;
    let prefixes: Api<IPPrefix> = Api::all(client.clone());
    let claims: Api<IPPrefixClaim> = Api::namespaced(client, "ns");
    let pp = PostParams::default();
    prefixes
        .create(&pp, &IPPrefix::root("r", "10.0.0.0/30".parse().unwrap()))
        .await
        .unwrap();
    let mut claim = IPPrefixClaim::new_host("ns", "a", "r", IpFamily::IPv4);
    claim.metadata.finalizers = Some(vec![PREFIX_IN_USE_FINALIZER.into()]);
    let refused = api_error(claims.create(&pp, &claim).await);
    assert_eq!(refused.code, 422);
    let cause = &refused.details.unwrap().causes[0];
    assert_eq!(cause.field, "metadata.finalizers[0]");
    assert!(
        cause.message.contains("set by the server"),
        "{}",
        cause.message
    );

    claim.metadata.finalizers = None;
    claims.create(&pp, &claim).await.unwrap();
    let add = Patch::Merge(json!({"metadata": {"finalizers": [PREFIX_IN_USE_FINALIZER]}}));
    let refused = api_error(claims.patch("a", &PatchParams::default(), &add).await);
    assert_eq!(refused.code, 422);
    // Nothing below it: the delete removes it at once.
    claims.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(claims.get("a").await).code, 404);
}
