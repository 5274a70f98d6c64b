//! kube-rs against the real binary: the way most controllers write (`Patch::Apply`) and read
//! (watchers, reflectors, paged lists).
mod common;

use common::TestServer;
use futures::StreamExt;
use ipam_apiserver::api::{IPPrefix, IPPrefixClaim, IpFamily};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

async fn root(client: &kube::Client, name: &str, prefix: &str) {
    let api: Api<IPPrefix> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &IPPrefix::root(name, prefix.parse().unwrap()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn patch_apply_creates_then_updates_recording_managed_fields() {
    let server = TestServer::start();
    let client = server.client().await;
    let prefixes: Api<IPPrefix> = Api::all(client.clone());
    let ssa = PatchParams::apply("network-operator");

    // Apply as create: the root and a claim that allocates.
    let root = IPPrefix::root("platform", "fd20::/20".parse().unwrap());
    let created = prefixes
        .patch("platform", &ssa, &Patch::Apply(&root))
        .await
        .unwrap();
    let mf = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("network-operator"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    assert_eq!(
        mf[0].fields_v1.as_ref().unwrap().0,
        serde_json::json!({"f:spec": {"f:prefix": {}}})
    );

    let claims: Api<IPPrefixClaim> = Api::namespaced(client.clone(), "project-a");
    let claim = IPPrefixClaim::new_with_length("project-a", "pool", "platform", 48);
    let bound = claims
        .patch("pool", &ssa, &Patch::Apply(&claim))
        .await
        .unwrap();
    assert_eq!(bound.allocated_prefix(), Some("fd20::/48".parse().unwrap()));

    // The same config again: nothing changes, not even the resourceVersion.
    let again = claims
        .patch("pool", &ssa, &Patch::Apply(&claim))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        bound.metadata.resource_version
    );
    assert_eq!(again.metadata.managed_fields, bound.metadata.managed_fields);

    // A changed config updates in place (the allocation stays).
    let retained = claims
        .patch("pool", &ssa, &Patch::Apply(&claim.clone().retain()))
        .await
        .unwrap();
    assert_eq!(retained.spec.reclaim_policy.as_deref(), Some("Retain"));
    assert_eq!(retained.allocated_prefix(), bound.allocated_prefix());
    assert_ne!(
        retained.metadata.resource_version,
        bound.metadata.resource_version
    );
    let fields = &retained.metadata.managed_fields.as_ref().unwrap()[0];
    assert_eq!(
        fields.fields_v1.as_ref().unwrap().0["f:spec"]["f:reclaimPolicy"],
        serde_json::json!({})
    );

    // Another manager changing an owned field conflicts (409) unless forced.
    let other = PatchParams::apply("someone-else");
    let mut delete = claim.clone();
    delete.spec.reclaim_policy = Some("Delete".into());
    let err = claims
        .patch("pool", &other, &Patch::Apply(&delete))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("conflict with \"network-operator\""),
                "{}",
                s.message
            );
            assert!(s.message.contains(".spec.reclaimPolicy"), "{}", s.message);
        }
        other => panic!("expected 409, got {other:?}"),
    }
    let forced = claims
        .patch("pool", &other.force(), &Patch::Apply(&delete))
        .await
        .unwrap();
    assert_eq!(forced.spec.reclaim_policy.as_deref(), Some("Delete"));
    let managers: Vec<_> = forced
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|e| (e.manager.unwrap(), e.operation.unwrap()))
        .collect();
    assert!(managers.contains(&("someone-else".into(), "Apply".into())));

    // A merge patch records an Update by the named manager.
    let patched = claims
        .patch(
            "pool",
            &PatchParams {
                field_manager: Some("patcher".into()),
                ..Default::default()
            },
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"team": "net"}}})),
        )
        .await
        .unwrap();
    let entry = patched
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|e| e.manager.as_deref() == Some("patcher"))
        .unwrap();
    assert_eq!(entry.operation.as_deref(), Some("Update"));
}

/// name → resourceVersion
fn versions<'a>(items: impl IntoIterator<Item = &'a IPPrefixClaim>) -> BTreeMap<String, String> {
    items
        .into_iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap(),
                c.metadata.resource_version.clone().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_and_reflector_stay_in_sync_with_500_concurrent_claims() {
    let server = TestServer::start();
    let client = server.client().await;
    root(&client, "hosts", "fd20::/112").await;
    let claims: Api<IPPrefixClaim> = Api::namespaced(client.clone(), "p");

    // One reflector listing then watching, one with a streaming list (sendInitialEvents).
    let mut readers = Vec::new();
    let mut tasks = Vec::new();
    for config in [
        watcher::Config::default().page_size(50),
        watcher::Config::default().streaming_lists(),
    ] {
        let (reader, writer) = reflector::store();
        let stream =
            reflector(writer, watcher(claims.clone(), config).default_backoff()).applied_objects();
        tasks.push(tokio::spawn(stream.for_each(|_| async {})));
        readers.push(reader);
    }
    for r in &readers {
        tokio::time::timeout(Duration::from_secs(20), r.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
    }

    // 500 creates, 16 at a time; every third is deleted again right after.
    futures::stream::iter(0..500)
        .for_each_concurrent(16, |i| {
            let claims = claims.clone();
            async move {
                let name = format!("nic-{i}");
                let c = IPPrefixClaim::new_host("p", &name, "hosts", IpFamily::IPv6);
                claims.create(&PostParams::default(), &c).await.unwrap();
                if i % 3 == 0 {
                    claims
                        .delete(&name, &DeleteParams::default())
                        .await
                        .unwrap();
                }
            }
        })
        .await;

    let expected = versions(&claims.list(&ListParams::default()).await.unwrap().items);
    assert_eq!(expected.len(), 500 - 167);
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in &readers {
        loop {
            let state = r.state();
            let seen = versions(state.iter().map(|a| a.as_ref()));
            if seen == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reflector out of sync: {} objects, expected {}",
                seen.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Stop the watchers before the server goes away, or they would retry against nothing.
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_with_limit_returns_every_object_exactly_once_during_writes() {
    let server = TestServer::start();
    let client = server.client().await;
    root(&client, "hosts", "fd20::/112").await;
    let claims: Api<IPPrefixClaim> = Api::namespaced(client.clone(), "p");
    let mut stable = HashSet::new();
    for i in 0..120 {
        let name = format!("stable-{i:03}");
        claims
            .create(
                &PostParams::default(),
                &IPPrefixClaim::new_host("p", &name, "hosts", IpFamily::IPv6),
            )
            .await
            .unwrap();
        stable.insert(name);
    }
    // Churn: claims created and deleted while the pages are read.
    let churn = {
        let claims = claims.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let name = format!("churn-{i:03}");
                let c = IPPrefixClaim::new_host("p", &name, "hosts", IpFamily::IPv6);
                if claims.create(&PostParams::default(), &c).await.is_err() {
                    break;
                }
                if i % 2 == 0 {
                    let _ = claims.delete(&name, &DeleteParams::default()).await;
                }
            }
        })
    };
    for _ in 0..3 {
        let mut names = Vec::new();
        let mut params = ListParams::default().limit(7);
        let mut pages = 0;
        loop {
            let page = claims.list(&params).await.unwrap();
            pages += 1;
            names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(pages >= 18, "{pages} pages");
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "an object was listed twice");
        for s in &stable {
            assert!(unique.contains(s), "{s} missing from the paged list");
        }
    }
    churn.abort();
}

#[tokio::test]
async fn list_resource_version_semantics() {
    let server = TestServer::start();
    let client = server.client().await;
    root(&client, "hosts", "fd20::/112").await;
    let prefixes: Api<IPPrefix> = Api::all(client.clone());
    let list = prefixes.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    // NotOlderThan the current revision, and Exact at it, are served.
    let lp = ListParams::default().at(&rv);
    assert_eq!(
        prefixes
            .list(&lp.clone().matching(kube::api::VersionMatch::NotOlderThan))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        prefixes
            .list(&lp.matching(kube::api::VersionMatch::Exact))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // Once something changed, Exact at an older revision is 410 (no history of states kept).
    root(&client, "other", "10.0.0.0/8").await;
    let err = prefixes
        .list(
            &ListParams::default()
                .at(&rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 410),
        "{err:?}"
    );
    // A future revision is 504 Timeout, as kube-apiserver answers "too large resource version"
    // (through kubectl: kube-rs retries 504s with backoff, as it would against kube-apiserver).
    let out = server.kubectl(&[
        "get",
        "--raw",
        "/apis/ipam.miloapis.com/v1alpha1/ipprefixes?resourceVersion=999999",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(Timeout): Too large resource version"),
        "{err}"
    );
}
