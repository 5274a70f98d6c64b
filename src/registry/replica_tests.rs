//! Several registries (replicas) on one real etcd, in one process: the guards keep them from
//! handing out one block twice, and each follows the others' writes. The real binary's replicas
//! are tested in `tests/replicas_*.rs`; here the races are tighter (no HTTP in between).
use super::*;
use crate::api::*;
use crate::error::ApiError;
use crate::store::etcd::tests::TestEtcd;
use std::collections::BTreeSet;
use std::sync::Arc;

async fn replica(etcd: &TestEtcd) -> Registry {
    Registry::new(Arc::new(etcd.store("/registry", 10_000).await))
        .await
        .expect("registry on etcd")
}

fn claim(name: &str, parent: &str, len: u8) -> IPPrefixClaim {
    IPPrefixClaim::new_with_length("p", name, parent, len)
}

/// Until `f` holds, or panic after 10 s.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_for_one_parent_never_hand_out_a_block_twice() {
    let Some(etcd) = TestEtcd::start("replicas_racing_for_one_parent") else {
        return;
    };
    let (a, b) = (replica(&etcd).await, replica(&etcd).await);
    a.create(
        "",
        IPPrefix::root("lan", "fd20::/120".parse().unwrap()),
        false,
    )
    .await
    .unwrap();
    // 400 claims for 256 addresses, half through each replica, all at once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400 {
        let reg = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            reg.create("p", claim(&format!("nic-{i}"), "lan", 128), false)
                .await
        });
    }
    let (mut prefixes, mut exhausted) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(c) => prefixes.push(c.status.unwrap().prefix.unwrap()),
            Err(ApiError::Exhausted { .. }) => exhausted += 1,
            Err(e) => panic!("unexpected answer: {e}"),
        }
    }
    let distinct: BTreeSet<&String> = prefixes.iter().collect();
    assert_eq!((prefixes.len(), distinct.len(), exhausted), (256, 256, 144));
    // A third replica, loaded from etcd alone, sees the same 256 children.
    let c = replica(&etcd).await;
    for reg in [&a, &b, &c] {
        eventually("every replica counts 256 children", async || {
            reg.write_stale_statuses().await.ok();
            let lan = reg.get::<IPPrefix>("", "lan").await.unwrap();
            lan.status.and_then(|s| s.children) == Some(256)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_freed_through_one_replica_is_allocated_by_another() {
    let Some(etcd) = TestEtcd::start("a_block_freed_through_one_replica") else {
        return;
    };
    let (a, b) = (replica(&etcd).await, replica(&etcd).await);
    a.create(
        "",
        IPPrefix::root("tiny", "fd20::/127".parse().unwrap()),
        false,
    )
    .await
    .unwrap();
    for name in ["one", "two"] {
        a.create("p", claim(name, "tiny", 128), false)
            .await
            .unwrap();
    }
    // b learned of both from a's writes: the parent is full there too.
    let full = b.create("p", claim("three", "tiny", 128), false).await;
    assert!(matches!(full, Err(ApiError::Exhausted { .. })), "{full:?}");
    b.delete::<IPPrefixClaim>("p", "one", &DeleteOptions::default())
        .await
        .unwrap();
    // a follows b's delete: the freed address is a's to give again.
    let again = a
        .create("p", claim("four", "tiny", 128), false)
        .await
        .unwrap();
    assert_eq!(again.status.unwrap().prefix.as_deref(), Some("fd20::/128"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_to_create_overlapping_roots_create_one() {
    let Some(etcd) = TestEtcd::start("replicas_racing_to_create_overlapping_roots") else {
        return;
    };
    let (a, b) = (replica(&etcd).await, replica(&etcd).await);
    for round in 0..20 {
        let wide = IPPrefix::root(
            &format!("wide-{round}"),
            format!("fd{round:02x}::/48").parse().unwrap(),
        );
        let narrow = IPPrefix::root(
            &format!("narrow-{round}"),
            format!("fd{round:02x}::/64").parse().unwrap(),
        );
        let (x, y) = tokio::join!(a.create("", wide, false), b.create("", narrow, false));
        assert!(
            x.is_ok() != y.is_ok(),
            "round {round}: exactly one of two overlapping roots is created: {x:?} / {y:?}"
        );
        let loser = x.err().or(y.err()).unwrap();
        assert!(
            loser.to_string().contains("overlaps root ipprefix"),
            "{loser}"
        );
    }
}
