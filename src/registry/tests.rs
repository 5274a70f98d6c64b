//! The claim semantics through the registry, against a real sled store in a temp dir.
use super::*;
use crate::api::*;
use crate::error::ApiError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

async fn open() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (open_in(dir.path(), 10_000).await.unwrap(), dir)
}

async fn open_in(
    dir: &std::path::Path,
    history: usize,
) -> Result<Registry, crate::store::StoreError> {
    let store = crate::store::SledStore::open(dir, history)?;
    Registry::new(Arc::new(store)).await
}

fn root(name: &str, prefix: &str) -> IPPrefix {
    IPPrefix::root(name, prefix.parse().expect("a CIDR"))
}

fn claim(ns: &str, name: &str, parent: &str, len: u8) -> IPPrefixClaim {
    IPPrefixClaim::new_with_length(ns, name, parent, len)
}

/// An IPPrefix's status once the status writer has run (the process runs it continuously).
async fn status_of(reg: &Registry, name: &str) -> IPPrefixStatus {
    reg.write_stale_statuses().await.unwrap();
    reg.get::<IPPrefix>("", name).await.unwrap().status.unwrap()
}

/// Open the registry again once the previous one's store has let go of the directory.
async fn reopen(dir: &std::path::Path) -> Registry {
    loop {
        match open_in(dir, 100).await {
            Ok(r) => return r,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

async fn bound(reg: &Registry, c: IPPrefixClaim) -> String {
    let ns = c.metadata.namespace.clone().unwrap();
    let created = reg.create(&ns, c, false).await.expect("claim create");
    created.status.unwrap().prefix.unwrap()
}

fn no_finalizers() -> DeleteOptions {
    DeleteOptions::default()
}

/// The parents a caller may `use`: just `name`.
fn only(name: &str) -> Option<std::collections::HashSet<String>> {
    Some(std::collections::HashSet::from([name.to_string()]))
}

/// A registry with the root `subnet` (fd20::/64), and the claim p/nic for a /128 from it that
/// keeps its block when deleted (`Retain`), not yet created.
async fn subnet_and_retained_nic() -> (Registry, tempfile::TempDir, IPPrefixClaim) {
    let (reg, dir) = open().await;
    reg.create("", root("subnet", "fd20::/64"), false)
        .await
        .unwrap();
    let mut nic = claim("p", "nic", "subnet", 128);
    nic.spec.reclaim_policy = Some("Retain".into());
    (reg, dir, nic)
}

#[tokio::test]
async fn address_plan_for_a_cloud_network_gets_exact_first_fit_answers() {
    let (reg, _dir) = open().await;
    reg.create("", root("platform", "fd20::/20"), false)
        .await
        .unwrap();
    assert_eq!(
        bound(&reg, claim("project-a", "pool", "platform", 48)).await,
        "fd20::/48"
    );
    assert_eq!(
        bound(&reg, claim("project-b", "pool", "platform", 48)).await,
        "fd20:0:1::/48"
    );
    assert_eq!(
        bound(&reg, claim("project-a", "dfw", "project-a.pool", 56)).await,
        "fd20::/56"
    );
    let mut subnet = claim("project-a", "dfw-subnet", "project-a.dfw", 64);
    subnet.spec.child_prefix_template = Some(ChildPrefixTemplate {
        spec: Some(TemplateSpec {
            reserve: Some(ReserveSpec {
                leading: Some(1),
                trailing: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(bound(&reg, subnet).await, "fd20::/64");
    let parent = "project-a.dfw-subnet";
    assert_eq!(
        bound(&reg, claim("project-a", "nic-0", parent, 128)).await,
        "fd20::1/128"
    );
    assert_eq!(
        bound(&reg, claim("project-a", "nic-1", parent, 128)).await,
        "fd20::2/128"
    );
    // A static host request.
    let mut fixed = claim("project-a", "nic-fixed", parent, 128);
    fixed.spec.prefix = Some("fd20::10/128".into());
    assert_eq!(bound(&reg, fixed).await, "fd20::10/128");
    // Release and first-fit reuse.
    reg.delete::<IPPrefixClaim>("project-a", "nic-0", &no_finalizers())
        .await
        .unwrap();
    assert_eq!(
        bound(&reg, claim("project-a", "nic-2", parent, 128)).await,
        "fd20::1/128"
    );
    assert_eq!(
        bound(&reg, claim("project-a", "nic-3", parent, 128)).await,
        "fd20::3/128"
    );
    let status = status_of(&reg, parent).await;
    assert_eq!(status.children, Some(4));
    assert_eq!(status.capacity.unwrap().allocated, "4");
}

#[tokio::test]
async fn ipv4_slash28_with_reserve_gives_13_hosts_then_exhausted() {
    let (reg, _dir) = open().await;
    reg.create("", root("v4", "10.128.0.0/16"), false)
        .await
        .unwrap();
    let mut net = claim("p", "net", "v4", 28);
    net.spec.child_prefix_template = Some(ChildPrefixTemplate {
        spec: Some(TemplateSpec {
            reserve: Some(ReserveSpec {
                leading: Some(2),
                trailing: Some(1),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(bound(&reg, net).await, "10.128.0.0/28");
    let mut got = Vec::new();
    for i in 0..13 {
        got.push(bound(&reg, claim("p", &format!("h{i}"), "p.net", 32)).await);
    }
    assert_eq!(got.first().unwrap(), "10.128.0.2/32");
    assert_eq!(got.last().unwrap(), "10.128.0.14/32");
    let err = reg
        .create("p", claim("p", "h13", "p.net", 32), false)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Exhausted");
    assert_eq!(err.code(), 409);
    assert_eq!(
        err.to_string(),
        "no free /32 in ipprefix \"p.net\" (10.128.0.0/28; full)"
    );
    assert!(matches!(
        reg.get::<IPPrefixClaim>("p", "h13").await,
        Err(ApiError::NotFound(_))
    ));
    let status = status_of(&reg, "p.net").await;
    assert_eq!(status.capacity.unwrap().available, "0");
}

#[tokio::test]
async fn exhausted_message_names_parent_and_largest_free_block() {
    let (reg, _dir) = open().await;
    reg.create("", root("dfw", "fd20:1::/56"), false)
        .await
        .unwrap();
    bound(&reg, claim("p", "a", "dfw", 57)).await;
    let err = reg.create("p", claim("p", "b", "dfw", 56 + 8), false).await;
    assert!(err.is_ok());
    let err = reg
        .create("p", claim("p", "c", "dfw", 57), false)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free /57 in ipprefix \"dfw\" (fd20:1::/56; largest free block /58)"
    );
}

#[tokio::test]
async fn retained_prefix_is_released_and_rebound_by_the_same_claim_name_only() {
    let (reg, _dir, nic) = subnet_and_retained_nic().await;
    assert_eq!(bound(&reg, nic.clone()).await, "fd20::/128");
    reg.delete::<IPPrefixClaim>("p", "nic", &no_finalizers())
        .await
        .unwrap();
    let kept: IPPrefix = reg.get("", "p.nic").await.unwrap();
    assert_eq!(kept.phase(), "Released");
    // Another claim does not get it.
    assert_eq!(
        bound(&reg, claim("p", "other", "subnet", 128)).await,
        "fd20::1/128"
    );
    // The same name does, with reason Rebound, if the caller may still use the parent.
    let err = reg
        .create_with_access("p", nic.clone(), false, only("elsewhere"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), 403, "{err}");
    assert!(err.to_string().contains("\"subnet\""), "{err}");
    assert_eq!(
        reg.get::<IPPrefix>("", "p.nic").await.unwrap().phase(),
        "Released"
    );
    let again = reg.create("p", nic, false).await.unwrap();
    let st = again.status.unwrap();
    assert_eq!(st.prefix.as_deref(), Some("fd20::/128"));
    assert_eq!(st.conditions[0].reason, "Rebound");
    assert_eq!(
        reg.get::<IPPrefix>("", "p.nic").await.unwrap().phase(),
        "Bound"
    );
}

/// A replace that leaves out `reclaimPolicy` gets the default, as a create does, and the bound
/// IPPrefix follows; it is not refused as a missing field.
#[tokio::test]
async fn an_update_without_reclaim_policy_gets_the_default() {
    let (reg, _dir, nic) = subnet_and_retained_nic().await;
    bound(&reg, nic).await;
    let mut replaced = reg.get::<IPPrefixClaim>("p", "nic").await.unwrap();
    replaced.spec.reclaim_policy = None;
    let updated = reg
        .update("p", "nic", replaced, Subresource::Main, false)
        .await
        .unwrap();
    assert_eq!(updated.spec.reclaim_policy.as_deref(), Some("Delete"));
    let child = reg.get::<IPPrefix>("", "p.nic").await.unwrap();
    assert_eq!(child.spec.reclaim_policy.as_deref(), Some("Delete"));
}

#[tokio::test]
async fn bound_prefix_and_parent_with_children_refuse_delete() {
    let (reg, _dir) = open().await;
    reg.create("", root("r", "10.0.0.0/8"), false)
        .await
        .unwrap();
    bound(&reg, claim("ns", "c", "r", 16)).await;
    let err = reg
        .delete::<IPPrefix>("", "ns.c", &no_finalizers())
        .await
        .unwrap_err();
    assert_eq!(err.code(), 409);
    assert!(
        err.to_string().contains("delete claim ns/c instead"),
        "{err}"
    );
    let err = reg
        .delete::<IPPrefix>("", "r", &no_finalizers())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has 1 child prefixes"), "{err}");

    // Neither a propagation policy nor a finalizer turns the refusal into "terminating": a
    // terminating parent would refuse every new claim while keeping all its children.
    let mut with_finalizer = reg.get::<IPPrefix>("", "r").await.unwrap();
    with_finalizer.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    reg.update("", "r", with_finalizer, Subresource::Main, false)
        .await
        .unwrap();
    for policy in [
        None,
        Some(PropagationPolicy::Orphan),
        Some(PropagationPolicy::Foreground),
        Some(PropagationPolicy::Background),
    ] {
        let opts = DeleteOptions {
            propagation_policy: policy,
            ..DeleteOptions::default()
        };
        for (name, says) in [("ns.c", "delete claim ns/c instead"), ("r", "has 1 child")] {
            let before = reg.get::<IPPrefix>("", name).await.unwrap();
            let err = reg.delete::<IPPrefix>("", name, &opts).await.unwrap_err();
            assert_eq!(err.code(), 409, "{name} {policy:?}");
            assert!(err.to_string().contains(says), "{name} {policy:?}: {err}");
            let after = reg.get::<IPPrefix>("", name).await.unwrap();
            assert_eq!(after.metadata, before.metadata, "{name} {policy:?}");
        }
    }
    // Free of children, the parent goes into terminating behind its finalizer as usual.
    reg.delete::<IPPrefixClaim>("ns", "c", &no_finalizers())
        .await
        .unwrap();
    let (r, gone) = reg
        .delete::<IPPrefix>("", "r", &no_finalizers())
        .await
        .unwrap();
    assert!(!gone);
    assert!(r.metadata.deletion_timestamp.is_some());
}

/// A taken claim name is found by the commit, not by a read first; it is still AlreadyExists,
/// whether the pool has room (nothing is allocated) or not (AlreadyExists wins over exhaustion,
/// dry run or not).
#[tokio::test]
async fn a_taken_claim_name_is_already_exists_and_allocates_nothing() {
    let (reg, _dir) = open().await;
    reg.create("", root("r", "fd20::/127"), false)
        .await
        .unwrap();
    assert_eq!(bound(&reg, claim("ns", "a", "r", 128)).await, "fd20::/128");
    let again = |dry_run| reg.create("ns", claim("ns", "a", "r", 128), dry_run);
    let already_exists = |err: ApiError| {
        assert!(matches!(err, ApiError::AlreadyExists(_)), "{err}");
        assert_eq!(
            (err.code().as_u16(), err.to_string()),
            (
                409,
                "ipprefixclaims.ipam.miloapis.com \"a\" already exists".to_string()
            )
        );
    };
    for dry_run in [true, false] {
        already_exists(again(dry_run).await.unwrap_err());
    }
    assert_eq!(bound(&reg, claim("ns", "b", "r", 128)).await, "fd20::1/128");
    for dry_run in [true, false] {
        already_exists(again(dry_run).await.unwrap_err()); // on a full pool
    }
    let err = reg
        .create("ns", claim("ns", "c", "r", 128), false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no free /128"), "{err}");
}

/// A claim's child prefix name is checked by the commit, not read first; a taken one still
/// refuses the claim, in a dry run too, and allocates nothing.
#[tokio::test]
async fn a_taken_child_name_refuses_the_claim_and_allocates_nothing() {
    let (reg, _dir) = open().await;
    reg.create("", root("r", "fd20::/64"), false).await.unwrap();
    reg.create("", root("taken", "10.0.0.0/8"), false)
        .await
        .unwrap();
    for dry_run in [true, false] {
        let mut c = claim("ns", "c", "r", 128);
        c.spec.child_prefix_template = Some(ChildPrefixTemplate {
            metadata: Some(TemplateMetadata {
                name: Some("taken".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = reg.create("ns", c, dry_run).await.unwrap_err();
        assert_eq!(err.code(), 409, "dry run {dry_run}: {err}");
        assert!(
            err.to_string().contains(
                "ipprefix \"taken\" already exists; choose another name with spec.childPrefixTemplate.metadata.name"
            ),
            "dry run {dry_run}: {err}"
        );
    }
    assert!(matches!(
        reg.get::<IPPrefixClaim>("ns", "c").await,
        Err(ApiError::NotFound(_))
    ));
    assert_eq!(
        reg.get::<IPPrefix>("", "taken").await.unwrap().spec.prefix,
        "10.0.0.0/8"
    );
    assert_eq!(bound(&reg, claim("ns", "d", "r", 128)).await, "fd20::/128");
}

/// Claims read their parent through a decoded copy kept across transactions; a change to the
/// parent must reach the next claim all the same.
#[tokio::test]
async fn a_claim_sees_its_parent_as_last_written() {
    let (reg, _dir) = open().await;
    let mut parent = root("r", "fd20::/64");
    parent.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    reg.create("", parent, false).await.unwrap();
    assert_eq!(bound(&reg, claim("ns", "a", "r", 128)).await, "fd20::/128");
    reg.delete::<IPPrefixClaim>("ns", "a", &no_finalizers())
        .await
        .unwrap();
    let (terminating, gone) = reg
        .delete::<IPPrefix>("", "r", &no_finalizers())
        .await
        .unwrap();
    assert!(!gone && terminating.metadata.deletion_timestamp.is_some());
    let err = reg
        .create("ns", claim("ns", "b", "r", 128), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), 409);
    assert!(
        err.to_string()
            .contains("parent ipprefix \"r\" is being deleted"),
        "{err}"
    );
}

#[tokio::test]
async fn claim_with_children_waits_behind_finalizer_and_goes_with_its_last_child() {
    let (reg, _dir) = open().await;
    reg.create("", root("r", "fd20::/20"), false).await.unwrap();
    bound(&reg, claim("ns", "pool", "r", 48)).await;
    bound(&reg, claim("ns", "sub", "ns.pool", 64)).await;
    assert_eq!(status_of(&reg, "r").await.children, Some(1));
    let (obj, gone) = reg
        .delete::<IPPrefixClaim>("ns", "pool", &no_finalizers())
        .await
        .unwrap();
    assert!(!gone);
    assert!(obj.metadata.deletion_timestamp.is_some());
    assert_eq!(
        obj.metadata.finalizers.as_deref(),
        Some(&[PREFIX_IN_USE_FINALIZER.to_string()][..])
    );
    let (_, gone) = reg
        .delete::<IPPrefixClaim>("ns", "sub", &no_finalizers())
        .await
        .unwrap();
    assert!(gone);
    assert!(matches!(
        reg.get::<IPPrefixClaim>("ns", "pool").await,
        Err(ApiError::NotFound(_))
    ));
    assert!(matches!(
        reg.get::<IPPrefix>("", "ns.pool").await,
        Err(ApiError::NotFound(_))
    ));
    let status = status_of(&reg, "r").await;
    assert_eq!(status.capacity.unwrap().allocated, "0");
    assert_eq!(status.children, Some(0));
}

#[tokio::test]
async fn overlapping_roots_and_static_carves_conflict_naming_the_holder() {
    let (reg, _dir) = open().await;
    reg.create("", root("a", "fd20::/20"), false).await.unwrap();
    let err = reg
        .create("", root("b", "fd20:1::/48"), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), 409);
    assert!(err.to_string().contains("\"a\""), "{err}");
    let carve = |name: &str, prefix: &str| {
        IPPrefix::new(
            name,
            IPPrefixSpec {
                prefix: prefix.into(),
                parent_ref: Some(PrefixReference::new("a")),
                ..Default::default()
            },
        )
    };
    let made = reg
        .create("", carve("static", "fd20:0:5::/48"), false)
        .await
        .unwrap();
    assert_eq!(made.phase(), "Available");
    let err = reg
        .create("", carve("static2", "fd20:0:5::/56"), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), 409);
    assert!(err.to_string().contains("ipprefix \"static\""), "{err}");
}

#[tokio::test]
async fn invalid_claim_reports_every_cause_and_writes_nothing() {
    let (reg, _dir) = open().await;
    let rev = reg.store().revision();
    let mut bad = IPPrefixClaim::new(
        "bad",
        IPPrefixClaimSpec {
            prefix_length: Some(200),
            ..Default::default()
        },
    );
    bad.spec.prefix = Some("fd20::1/64".into());
    bad.spec.reclaim_policy = Some("Keep".into());
    let err = reg.create("ns", bad, false).await.unwrap_err();
    let ApiError::Invalid { causes, .. } = &err else {
        panic!("{err:?}")
    };
    let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.prefix",
            "spec.prefixLength",
            "spec.parentRef",
            "spec.reclaimPolicy"
        ]
    );
    assert_eq!(reg.store().revision(), rev);
}

#[tokio::test]
async fn selector_fills_parents_in_name_order() {
    let (reg, _dir) = open().await;
    let labelled = |name: &str, prefix: &str| {
        let mut p = root(name, prefix);
        p.metadata.labels = Some(BTreeMap::from([("tier".to_string(), "hosts".to_string())]));
        p
    };
    reg.create("", labelled("b-second", "10.0.1.0/31"), false)
        .await
        .unwrap();
    reg.create("", labelled("a-first", "10.0.0.0/31"), false)
        .await
        .unwrap();
    let by_selector = |name: &str| {
        let mut c = IPPrefixClaim::new(
            name,
            IPPrefixClaimSpec {
                prefix_length: Some(32),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("ns".into());
        c.spec.parent_selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some(BTreeMap::from([("tier".to_string(), "hosts".to_string())])),
                ..Default::default()
            },
        );
        c
    };
    let mut got = Vec::new();
    for i in 0..4 {
        got.push(bound(&reg, by_selector(&format!("h{i}"))).await);
    }
    assert_eq!(
        got,
        vec!["10.0.0.0/32", "10.0.0.1/32", "10.0.1.0/32", "10.0.1.1/32"]
    );
    let err = reg
        .create("ns", by_selector("h4"), false)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Exhausted");
}

#[tokio::test]
async fn dry_run_allocates_nothing() {
    let (reg, _dir) = open().await;
    reg.create("", root("r", "10.0.0.0/30"), false)
        .await
        .unwrap();
    let rev = reg.store().revision();
    let would = reg
        .create("ns", claim("ns", "c", "r", 32), true)
        .await
        .unwrap();
    assert_eq!(would.status.unwrap().prefix.as_deref(), Some("10.0.0.0/32"));
    assert_eq!(reg.store().revision(), rev);
    assert_eq!(bound(&reg, claim("ns", "c", "r", 32)).await, "10.0.0.0/32");
}

#[tokio::test]
async fn restart_rebuilds_pools_from_storage() {
    let (reg, dir) = open().await;
    reg.create("", root("r", "10.0.0.0/24"), false)
        .await
        .unwrap();
    bound(&reg, claim("ns", "a", "r", 32)).await;
    bound(&reg, claim("ns", "b", "r", 32)).await;
    reg.store().flush().unwrap();
    drop(reg);
    let reg = reopen(dir.path()).await;
    assert_eq!(bound(&reg, claim("ns", "c", "r", 32)).await, "10.0.0.2/32");
}

#[tokio::test]
async fn claims_leave_their_parent_alone_until_the_status_writer_stores_one_status() {
    let (reg, _dir) = open().await;
    let created = reg
        .create("", root("r", "10.0.0.0/24"), false)
        .await
        .unwrap();
    for i in 0..20 {
        bound(&reg, claim("ns", &format!("c{i}"), "r", 32)).await;
    }
    // A user who read the parent before the burst can still update it: its resourceVersion
    // did not move with every claim.
    let mut edited = created.clone();
    edited.spec.exclude = vec!["10.0.0.128/25".into()];
    let edited = reg
        .update("", "r", edited, Subresource::Main, false)
        .await
        .unwrap();
    assert_eq!(edited.status.as_ref().unwrap().children, Some(20));
    // One write covers the burst; then nothing is stale.
    let c20 = bound(&reg, claim("ns", "c20", "r", 32)).await;
    assert_eq!(c20, "10.0.0.20/32");
    assert_eq!(reg.write_stale_statuses().await.unwrap(), 1);
    assert_eq!(reg.write_stale_statuses().await.unwrap(), 0);
    let stored: IPPrefix = reg.get("", "r").await.unwrap();
    assert_eq!(stored.spec.exclude, vec!["10.0.0.128/25".to_string()]);
    let status = stored.status.unwrap();
    assert_eq!(status.children, Some(21));
    assert_eq!(status.capacity.unwrap().allocated, "21");
}

#[tokio::test]
async fn status_left_behind_by_a_stop_is_brought_up_to_date_at_open() {
    let (reg, dir) = open().await;
    reg.create("", root("r", "10.0.0.0/24"), false)
        .await
        .unwrap();
    reg.create("", root("emptied", "10.1.0.0/24"), false)
        .await
        .unwrap();
    bound(&reg, claim("ns", "gone", "emptied", 32)).await;
    reg.write_stale_statuses().await.unwrap();
    // Stopped before the status writer ran again.
    bound(&reg, claim("ns", "a", "r", 32)).await;
    bound(&reg, claim("ns", "b", "r", 32)).await;
    reg.delete::<IPPrefixClaim>("ns", "gone", &no_finalizers())
        .await
        .unwrap();
    reg.store().flush().unwrap();
    drop(reg);
    let reg = reopen(dir.path()).await;
    let stale: IPPrefix = reg.get("", "emptied").await.unwrap();
    assert_eq!(stale.status.unwrap().children, Some(1));
    assert_eq!(reg.write_stale_statuses().await.unwrap(), 2);
    let r = reg.get::<IPPrefix>("", "r").await.unwrap().status.unwrap();
    assert_eq!(
        (r.children, r.capacity.unwrap().allocated.as_str()),
        (Some(2), "2")
    );
    let emptied = reg
        .get::<IPPrefix>("", "emptied")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(emptied.children, Some(0));
}

#[tokio::test]
async fn the_status_writer_stores_a_change_without_being_asked() {
    let (reg, _dir) = open().await;
    tokio::spawn(
        reg.clone()
            .run_status_writer(std::time::Duration::from_millis(20)),
    );
    reg.create("", root("r", "10.0.0.0/24"), false)
        .await
        .unwrap();
    for i in 0..3 {
        bound(&reg, claim("ns", &format!("c{i}"), "r", 32)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = reg.get::<IPPrefix>("", "r").await.unwrap().status.unwrap();
        if status.children == Some(3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status still {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn claims_allocate_only_from_parents_the_caller_may_use() {
    let (reg, _dir) = open().await;
    reg.create("", root("allowed", "10.0.0.0/24"), false)
        .await
        .unwrap();
    reg.create("", root("secret", "10.1.0.0/24"), false)
        .await
        .unwrap();
    let err = reg
        .create_with_access("ns", claim("ns", "c", "secret", 32), false, only("allowed"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), 403);
    assert!(err.to_string().contains("\"secret\""), "{err}");
    let ok = reg
        .create_with_access(
            "ns",
            claim("ns", "c", "allowed", 32),
            false,
            only("allowed"),
        )
        .await
        .unwrap();
    assert_eq!(ok.status.unwrap().prefix.as_deref(), Some("10.0.0.0/32"));

    // By selector: parents the caller may not use are passed over; if it may use none of those
    // that match, the claim is forbidden, not exhausted.
    for name in ["allowed", "secret"] {
        let mut p = reg.get::<IPPrefix>("", name).await.unwrap();
        p.metadata.labels = Some(BTreeMap::from([("pool".to_string(), "a".to_string())]));
        reg.update("", name, p, Subresource::Main, false)
            .await
            .unwrap();
    }
    let by_selector = |name: &str, pool: &str| {
        let mut c = claim("ns", name, "", 32);
        c.spec.parent_ref = None;
        c.spec.parent_selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some(BTreeMap::from([("pool".to_string(), pool.to_string())])),
                ..Default::default()
            },
        );
        c
    };
    let picked = reg
        .create_with_access("ns", by_selector("s1", "a"), false, only("secret"))
        .await
        .unwrap();
    assert_eq!(
        picked.status.unwrap().prefix.as_deref(),
        Some("10.1.0.0/32")
    );
    let rev = reg.store().revision();
    let err = reg
        .create_with_access("ns", by_selector("s2", "a"), false, only("other"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), 403, "{err}");
    assert!(
        err.to_string()
            .contains("not allowed to use any ipprefix matching spec.parentSelector"),
        "{err}"
    );
    assert_eq!(reg.store().revision(), rev);
    // No parent matches at all: nothing to be forbidden from, so exhausted as before.
    let err = reg
        .create_with_access("ns", by_selector("s3", "b"), false, only("other"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code().as_u16(), err.reason()),
        (409, "Exhausted"),
        "{err}"
    );
}

#[tokio::test]
async fn a_filtered_watch_sees_objects_leave_and_enter_its_selection() {
    let (reg, _dir) = open().await;
    let opts = WatchOptions {
        resource_version: Some(reg.store().revision().to_string()),
        list: ListOptions {
            label_selector: Some(selector::parse_label_selector("tier=a").unwrap()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut watch = reg.watch::<IPPrefix>(None, opts).await.unwrap();
    let labelled = |tier: &str, policy: &str| {
        let mut p = root("p", "10.0.0.0/8");
        p.metadata.labels = Some(BTreeMap::from([("tier".to_string(), tier.to_string())]));
        p.spec.reclaim_policy = Some(policy.into());
        p
    };
    reg.create("", labelled("a", "Delete"), false)
        .await
        .unwrap();
    for (tier, policy) in [
        ("b", "Delete"),
        ("b", "Retain"),
        ("a", "Retain"),
        ("a", "Delete"),
    ] {
        let mut p: IPPrefix = reg.get("", "p").await.unwrap();
        p.metadata.labels = labelled(tier, policy).metadata.labels;
        p.spec.reclaim_policy = Some(policy.into());
        reg.update("", "p", p, Subresource::Main, false)
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap();
        seen.push(match ev {
            WatchEvent::Added(p) => format!("ADDED {}", p.metadata.labels.unwrap()["tier"]),
            WatchEvent::Modified(p) => format!("MODIFIED {}", p.metadata.labels.unwrap()["tier"]),
            WatchEvent::Deleted(p) => format!("DELETED {}", p.metadata.labels.unwrap()["tier"]),
            other => format!("{other:?}"),
        });
    }
    // The change within tier=b is not this watcher's business.
    assert_eq!(seen, ["ADDED a", "DELETED b", "ADDED a", "MODIFIED a"]);
}

#[tokio::test]
async fn a_deletions_only_watch_gets_just_the_deletions_in_order() {
    let (reg, _dir) = open().await;
    let opts = |reg: &Registry| WatchOptions {
        resource_version: Some(reg.store().revision().to_string()),
        ..Default::default()
    };
    let mut deletions = reg.watch::<IPPrefix>(None, opts(&reg)).await.unwrap();
    deletions.deletions_only();
    let mut everything = reg.watch::<IPPrefix>(None, opts(&reg)).await.unwrap();
    for (name, net) in [
        ("a", "10.0.0.0/8"),
        ("b", "11.0.0.0/8"),
        ("c", "12.0.0.0/8"),
    ] {
        reg.create("", root(name, net), false).await.unwrap();
    }
    let mut b: IPPrefix = reg.get("", "b").await.unwrap();
    b.spec.reclaim_policy = Some("Retain".into());
    reg.update("", "b", b, Subresource::Main, false)
        .await
        .unwrap();
    for name in ["c", "a"] {
        reg.delete::<IPPrefix>("", name, &Default::default())
            .await
            .unwrap();
    }
    let next = |w: &mut crate::registry::Watch<IPPrefix>| {
        let ev = futures::FutureExt::now_or_never(w.next()).flatten();
        ev.map(|ev| match ev {
            WatchEvent::Added(p) => format!("ADDED {}", p.metadata.name.unwrap()),
            WatchEvent::Modified(p) => format!("MODIFIED {}", p.metadata.name.unwrap()),
            WatchEvent::Deleted(p) => format!("DELETED {}", p.metadata.name.unwrap()),
            other => format!("{other:?}"),
        })
    };
    let all: Vec<String> = std::iter::from_fn(|| next(&mut everything)).collect();
    assert_eq!(all.len(), 6, "{all:?}");
    let deleted: Vec<String> = std::iter::from_fn(|| next(&mut deletions)).collect();
    assert_eq!(deleted, ["DELETED c", "DELETED a"]);
}

/// The real sled store, reporting a failed fsync once `fail` is set (the state a full disk or a
/// broken device leaves it in, with writes applied in memory that never reached the disk), and
/// counting the registry's commit intents.
struct WatchedStore {
    inner: crate::store::SledStore,
    fail: AtomicBool,
    /// Writers that said a commit is on its way and have not let go yet.
    intents: Arc<AtomicUsize>,
    /// Commits made while no intent was alive.
    unannounced: AtomicUsize,
}

impl WatchedStore {
    fn open(dir: &std::path::Path) -> Arc<WatchedStore> {
        Arc::new(WatchedStore {
            inner: crate::store::SledStore::open(dir, 100).unwrap(),
            fail: Default::default(),
            intents: Default::default(),
            unannounced: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl crate::store::Store for WatchedStore {
    async fn get(
        &self,
        key: &crate::store::ObjectKey,
    ) -> Result<Option<crate::store::Versioned>, crate::store::StoreError> {
        self.inner.get(key).await
    }
    async fn list(
        &self,
        range: &crate::store::KeyRange,
        start_after: Option<&crate::store::ObjectKey>,
        at: crate::store::ReadAt,
        limit: Option<usize>,
        filter: &mut crate::store::ListFilter<'_>,
    ) -> Result<crate::store::ListPage, crate::store::StoreError> {
        self.inner.list(range, start_after, at, limit, filter).await
    }
    async fn commit(
        &self,
        ops: Vec<crate::store::Op>,
    ) -> Result<crate::store::Committed, crate::store::StoreError> {
        if self.intents.load(SeqCst) == 0 {
            self.unannounced.fetch_add(1, SeqCst);
        }
        self.inner.commit(ops).await
    }
    fn intend_commit(&self) -> crate::store::CommitIntent {
        self.intents.fetch_add(1, SeqCst);
        let intents = self.intents.clone();
        crate::store::CommitIntent::new(Arc::new(move || {
            intents.fetch_sub(1, SeqCst);
        }))
    }
    fn revision(&self) -> crate::store::Revision {
        self.inner.revision()
    }
    fn oldest_watchable(&self) -> crate::store::Revision {
        self.inner.oldest_watchable()
    }
    fn watch(
        &self,
        after: crate::store::Revision,
    ) -> Result<crate::store::EventStream, crate::store::StoreError> {
        self.inner.watch(after)
    }
    fn flush(&self) -> Result<(), crate::store::StoreError> {
        self.inner.flush()
    }
    fn failure(&self) -> Option<String> {
        self.fail
            .load(SeqCst)
            .then(|| "fsync failed: injected".to_string())
    }
}

#[tokio::test]
async fn after_a_failed_fsync_nothing_is_served_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = WatchedStore::open(dir.path());
    let reg = Registry::new(store.clone()).await.unwrap();
    reg.create("", root("r", "10.0.0.0/24"), false)
        .await
        .unwrap();
    bound(&reg, claim("ns", "c", "r", 32)).await;
    store.fail.store(true, SeqCst);
    let unavailable = |e: ApiError| {
        assert_eq!(
            (e.code().as_u16(), e.reason()),
            (503, "ServiceUnavailable"),
            "{e}"
        )
    };
    unavailable(reg.get::<IPPrefixClaim>("ns", "c").await.unwrap_err());
    unavailable(
        reg.list::<IPPrefix>(None, &ListOptions::default())
            .await
            .unwrap_err(),
    );
    unavailable(
        reg.create("ns", claim("ns", "c", "r", 32), false)
            .await
            .unwrap_err(),
    );
    unavailable(
        reg.delete::<IPPrefixClaim>("ns", "c", &DeleteOptions::default())
            .await
            .unwrap_err(),
    );
    unavailable(
        reg.watch::<IPPrefix>(None, WatchOptions::default())
            .await
            .err()
            .unwrap(),
    );
}

#[tokio::test]
async fn every_commit_is_announced_and_no_announcement_outlives_its_request() {
    // The store may hold a group's fsync while a writer is on its way: a commit it was not told
    // of waits for the next fsync, and an announcement left behind would hold every fsync.
    let dir = tempfile::tempdir().unwrap();
    let store = WatchedStore::open(dir.path());
    let reg = Registry::new(store.clone()).await.unwrap();
    let left = || (store.intents.load(SeqCst), store.unannounced.load(SeqCst));
    reg.create("", root("r", "10.0.0.0/30"), false)
        .await
        .unwrap();
    bound(&reg, claim("ns", "a", "r", 32)).await;
    reg.create("ns", claim("ns", "dry", "r", 32), true)
        .await
        .unwrap();
    for failed in [
        reg.create("ns", claim("ns", "a", "r", 32), false).await, // name taken
        reg.create("ns", claim("ns", "b", "missing", 32), false)
            .await, // no such parent
        reg.create("ns", claim("ns", "c", "r", 24), false).await, // larger than the parent
    ] {
        failed.unwrap_err();
    }
    let mut a = reg.get::<IPPrefixClaim>("ns", "a").await.unwrap();
    a.metadata.labels = Some(BTreeMap::from([("tier".into(), "web".into())]));
    reg.update("ns", "a", a, Subresource::Main, false)
        .await
        .unwrap();
    reg.delete::<IPPrefixClaim>("ns", "a", &no_finalizers())
        .await
        .unwrap();
    reg.delete::<IPPrefixClaim>("ns", "a", &no_finalizers())
        .await
        .unwrap_err();
    reg.write_stale_statuses().await.unwrap();
    assert_eq!(left(), (0, 0), "(intents alive, commits made unannounced)");
}

/// What holds a deleting claim (its Bound descendants) is indexed, and the index is rebuilt
/// at start: after a restart, a Released host and a static carve under a subnet hold nothing,
/// a Bound host does, and a rebound host holds again.
#[tokio::test]
async fn only_bound_descendants_hold_a_deleting_claim_also_after_a_restart() {
    let (reg, dir) = open().await;
    reg.create("", root("r", "fd20::/48"), false).await.unwrap();
    bound(&reg, claim("ns", "subnet", "r", 64)).await;
    let mut nic = claim("ns", "nic", "ns.subnet", 128);
    nic.spec.reclaim_policy = Some("Retain".into());
    bound(&reg, nic.clone()).await;
    bound(&reg, claim("ns", "other", "ns.subnet", 128)).await;
    let mut carve = IPPrefix::root("carve", "fd20::100/120".parse().unwrap());
    carve.spec.parent_ref = Some(PrefixReference::new("ns.subnet"));
    reg.create("", carve, false).await.unwrap();
    reg.delete::<IPPrefixClaim>("ns", "nic", &no_finalizers())
        .await
        .unwrap();
    reg.store().flush().unwrap();
    drop(reg);
    let reg = reopen(dir.path()).await;

    // Only the Bound host holds the subnet's claim, and its condition says so.
    let (waiting, gone) = reg
        .delete::<IPPrefixClaim>("ns", "subnet", &no_finalizers())
        .await
        .unwrap();
    assert!(!gone);
    let released = waiting.status.unwrap().conditions;
    let released = released.iter().find(|c| c.type_ == "Released").unwrap();
    assert_eq!(released.reason, "WaitingForChildren");
    assert_eq!(
        released.message,
        "waiting for 1 bound ipprefix below ipprefix \"ns.subnet\": \"ns.other\""
    );
    // A host that comes back under its name is Bound again, and holds it too.
    bound(&reg, nic).await;
    reg.delete::<IPPrefixClaim>("ns", "other", &no_finalizers())
        .await
        .unwrap();
    let still: IPPrefixClaim = reg.get("ns", "subnet").await.unwrap();
    let message = &still.status.unwrap().conditions[1].message;
    assert!(message.contains("\"ns.nic\""), "{message}");
    // Once it goes (Retain: Released), the subnet, the Released host and the carve go.
    reg.delete::<IPPrefixClaim>("ns", "nic", &no_finalizers())
        .await
        .unwrap();
    assert!(matches!(
        reg.get::<IPPrefixClaim>("ns", "subnet").await,
        Err(ApiError::NotFound(_))
    ));
    for gone in ["ns.subnet", "ns.nic", "ns.other", "carve"] {
        assert!(
            matches!(
                reg.get::<IPPrefix>("", gone).await,
                Err(ApiError::NotFound(_))
            ),
            "{gone}"
        );
    }
    assert_eq!(status_of(&reg, "r").await.children, Some(0));
}

#[tokio::test]
async fn prefix_usage_keeps_the_most_utilized_pools_up_to_the_limit() {
    let (reg, _dir) = open().await;
    for (name, cidr) in [
        ("a", "10.0.0.0/24"),
        ("b", "10.1.0.0/24"),
        ("c", "10.2.0.0/24"),
    ] {
        reg.create("", root(name, cidr), false).await.unwrap();
    }
    bound(&reg, claim("ns", "half", "b", 25)).await;
    bound(&reg, claim("ns", "quarter", "a", 26)).await;
    let (kept, omitted) = reg.prefix_usage(1).await;
    let names: Vec<(&str, f64, Option<u8>)> = kept
        .iter()
        .map(|p| (p.name.as_str(), p.utilization, p.largest_free))
        .collect();
    // c has no children: no series at all.
    assert_eq!((names, omitted), (vec![("b", 0.5, Some(25))], 1));
    let (kept, omitted) = reg.prefix_usage(1000).await;
    assert_eq!(kept.len(), 2);
    assert_eq!((kept[1].name.as_str(), omitted), ("a", 0));
}

#[tokio::test]
async fn the_containing_chain_is_read_from_the_index_root_first() {
    let (reg, _dir) = open().await;
    reg.create("", root("r", "fd20::/48"), false).await.unwrap();
    reg.create("", root("v4", "10.0.0.0/8"), false)
        .await
        .unwrap();
    assert_eq!(bound(&reg, claim("ns", "pool", "r", 56)).await, "fd20::/56");
    assert_eq!(
        bound(&reg, claim("ns", "host", "ns.pool", 128)).await,
        "fd20::/128"
    );
    let reg = &reg;
    let chain = |s: &str| {
        let net = super::selector::parse_address_or_cidr(s).unwrap();
        async move { reg.lock().await.containing_chain(net) }
    };
    assert_eq!(chain("fd20::").await, ["r", "ns.pool", "ns.host"]);
    assert_eq!(chain("fd20::1").await, ["r", "ns.pool"]);
    assert_eq!(chain("fd20:0:0:100::/56").await, ["r"]);
    assert_eq!(chain("10.9.9.9").await, ["v4"]);
    assert!(chain("fd21::").await.is_empty());
}
