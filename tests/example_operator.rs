//! The network-operator example's flow against the real server, with the exact addresses.
mod common;

#[path = "../examples/network_operator.rs"]
#[allow(unused)]
mod operator;

use common::TestServer;
use ipam_apiserver::api::{IPPrefix, IPPrefixClaim};
use kube::api::{Api, ListParams};
use std::time::{Duration, Instant};

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn network_operator_flow_allocates_the_expected_addresses() {
    let server = TestServer::start();
    let client = server.client().await;
    assert_eq!(
        operator::ensure_root(&client).await.unwrap(),
        net("fd20::/20")
    );
    // Running a step twice is a no-op (server-side apply).
    assert_eq!(
        operator::ensure_root(&client).await.unwrap(),
        net("fd20::/20")
    );

    let a = "project-a";
    assert_eq!(
        operator::enable_networking(&client, a).await.unwrap(),
        net("fd20::/48")
    );
    assert_eq!(
        operator::enable_networking(&client, a).await.unwrap(),
        net("fd20::/48")
    );
    assert_eq!(
        operator::enable_networking(&client, "project-b")
            .await
            .unwrap(),
        net("fd20:0:1::/48")
    );
    assert_eq!(
        operator::ensure_subnet(&client, a, "dfw").await.unwrap(),
        net("fd20::/64")
    );
    assert_eq!(
        operator::ensure_subnet(&client, a, "ord").await.unwrap(),
        net("fd20:0:0:1::/64")
    );
    // The gateway (fd20::) is reserved: interfaces start at ::1.
    assert_eq!(
        operator::ensure_interface(&client, a, "dfw", "vm-1")
            .await
            .unwrap(),
        ip("fd20::1")
    );
    assert_eq!(
        operator::ensure_interface(&client, a, "dfw", "vm-2")
            .await
            .unwrap(),
        ip("fd20::2")
    );
    assert_eq!(
        operator::ensure_interface(&client, a, "ord", "vm-9")
            .await
            .unwrap(),
        ip("fd20:0:0:1::1")
    );

    // Deleted and recreated under the same name: the same address, never handed to another.
    operator::delete_interface(&client, a, "vm-1")
        .await
        .unwrap();
    let prefixes: Api<IPPrefix> = Api::all(client.clone());
    let released = prefixes
        .list(&ListParams::default().fields("status.phase=Released"))
        .await
        .unwrap();
    assert_eq!(released.items.len(), 1);
    assert_eq!(
        operator::ensure_interface(&client, a, "dfw", "vm-3")
            .await
            .unwrap(),
        ip("fd20::3")
    );
    assert_eq!(
        operator::ensure_interface(&client, a, "dfw", "vm-1")
            .await
            .unwrap(),
        ip("fd20::1")
    );
    let claims: Api<IPPrefixClaim> = Api::namespaced(client.clone(), a);
    let vm1 = claims.get("nic-vm-1").await.unwrap();
    let cond = &vm1.status.as_ref().unwrap().conditions[0];
    assert_eq!(cond.reason, "Rebound");

    // Deleting the project releases everything it held; project-b is untouched.
    operator::disable_networking(&client, a).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<String> = prefixes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|p| p.spec.prefix)
            .collect();
        let claims_left = claims
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if claims_left == 0 && left == vec!["fd20::/20".to_string(), "fd20:0:1::/48".to_string()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "project-a not released: prefixes {left:?}, {claims_left} claims"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its /48 is free again: the next project gets it.
    assert_eq!(
        operator::enable_networking(&client, "project-c")
            .await
            .unwrap(),
        net("fd20::/48")
    );
}
