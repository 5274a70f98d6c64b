//! Three replicas of the real binary on a real 3-member etcd (skipped, saying so, without
//! `KUBEBUILDER_ASSETS`): creates racing through all of them into one parent never hand out
//! one block twice, and what one replica acknowledged the others serve at once.
mod common;
#[path = "common/etcd_cluster.rs"]
mod etcd_cluster;

use etcd_cluster::*;
use futures::StreamExt;
use http::StatusCode;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Exactly this many /128s fit in the parent (an IPv6 /120, nothing reserved or excluded).
const ROOM: usize = 256;
const CREATES: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_racing_through_three_replicas_fill_one_parent_exactly_once() {
    let Some(etcd) = EtcdCluster::start("creates_racing_through_three_replicas", 3) else {
        return;
    };
    let replicas = Replicas::start(&etcd, 3, &[]);
    let clients = replicas.clients().await;
    create_root(&clients[0], "race", "fd00:21::/120").await;

    // All at once (up to 256 in flight), claim i through replica i % 3.
    let outcomes: Vec<(String, StatusCode, Value)> = futures::stream::iter((0..CREATES).map(|i| {
        let client = clients[i % 3].clone();
        async move {
            let name = format!("c-{i:04}");
            let (status, body) = must(
                &client,
                "POST",
                &claims_path("race"),
                Some(&claim(&name, "race", 128)),
            )
            .await;
            (name, status, body)
        }
    }))
    .buffer_unordered(256)
    .collect()
    .await;

    let mut bound = BTreeMap::new();
    let mut exhausted = 0;
    for (name, status, body) in &outcomes {
        match (*status, body["reason"].as_str()) {
            (StatusCode::CREATED, _) => {
                assert_eq!(body["status"]["phase"], "Bound", "{body}");
                let prefix = body["status"]["prefix"].as_str().unwrap().to_string();
                bound.insert(name.clone(), prefix);
            }
            (StatusCode::CONFLICT, Some("Exhausted")) => exhausted += 1,
            _ => panic!(
                "{name}: neither bound nor Exhausted: {status} {body}{}",
                replicas.logs()
            ),
        }
    }
    let prefixes: Vec<String> = bound.values().cloned().collect();
    let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, prefix) in &bound {
        holders.entry(prefix).or_default().push(name);
    }
    let twice: Vec<_> = holders.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {} bound claims share a block with another, e.g. {:?}",
        twice.iter().map(|(_, h)| h.len()).sum::<usize>(),
        bound.len(),
        &twice[..twice.len().min(3)]
    );
    assert_eq!(
        (bound.len(), exhausted),
        (ROOM, CREATES - ROOM),
        "bound and Exhausted"
    );

    // Every replica lists the same 256 claims with the same blocks, and the same children.
    for (i, client) in clients.iter().enumerate() {
        let (status, list) = must(client, "GET", &claims_path("race"), None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let listed: BTreeMap<String, String> = items(&list)
            .iter()
            .map(|c| {
                let prefix = c["status"]["prefix"].as_str().unwrap_or_default();
                (name_of(c), prefix.to_string())
            })
            .collect();
        assert_eq!(listed, bound, "replica {i} lists other claims");
        let (_, children) = must(
            client,
            "GET",
            &format!("{}?fieldSelector=spec.parentRef.name=race", prefixes_path()),
            None,
        )
        .await;
        let mut blocks: Vec<String> = items(&children)
            .iter()
            .map(|p| p["spec"]["prefix"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(overlaps(&blocks), vec![], "replica {i}: children overlap");
        blocks.sort();
        let mut expected = prefixes.clone();
        expected.sort();
        assert_eq!(
            blocks, expected,
            "replica {i}: children are not the claims' blocks"
        );
    }

    // The parent's status counts them (written after the commits, possibly by another replica).
    eventually(
        "the parent's status counts 256 children",
        Duration::from_secs(30),
        || {
            let client = clients[1].clone();
            async move {
                let (_, parent) =
                    must(&client, "GET", &format!("{}/race", prefixes_path()), None).await;
                let s = &parent["status"];
                if s["children"] == 256
                    && s["capacity"]["allocated"] == "256"
                    && s["capacity"]["available"] == "0"
                {
                    Ok(())
                } else {
                    Err(s.to_string())
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_acknowledged_the_others_read_at_once_every_time() {
    let Some(etcd) = EtcdCluster::start("what_one_replica_acknowledged_the_others_read", 3) else {
        return;
    };
    let replicas = Replicas::start(&etcd, 3, &[]);
    let clients = replicas.clients().await;
    create_root(&clients[2], "ryw", "10.21.0.0/16").await;
    for i in 0..200 {
        let name = format!("nic-{i}");
        let (writer, others) = (i % 3, [(i + 1) % 3, (i + 2) % 3]);
        let (status, created) = must(
            &clients[writer],
            "POST",
            &claims_path("ryw"),
            Some(&claim(&name, "ryw", 32)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        for r in others {
            let path = format!("{}/{name}", claims_path("ryw"));
            let (status, read) = must(&clients[r], "GET", &path, None).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{name} created through replica {writer}, read through {r}: {read}"
            );
            assert_eq!(read["status"]["prefix"], created["status"]["prefix"]);
            assert_eq!(
                read["metadata"]["resourceVersion"],
                created["metadata"]["resourceVersion"]
            );
        }
        // A delete, too, is seen at once elsewhere.
        if i % 10 == 9 {
            let path = format!("{}/{name}", claims_path("ryw"));
            let (status, body) = must(&clients[others[0]], "DELETE", &path, None).await;
            assert!(status.is_success(), "{body}");
            for r in [writer, others[1]] {
                let (status, read) = must(&clients[r], "GET", &path, None).await;
                assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "{name} deleted through replica {}, read through {r}: {read}",
                    others[0]
                );
            }
        }
    }
}
