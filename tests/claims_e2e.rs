//! Allocate on create, release on delete: the claim semantics through the running binary.
mod common;

use common::TestServer;
use futures::future::join_all;
use ipam_apiserver::api::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::collections::{BTreeMap, HashSet};

fn root(name: &str, prefix: &str) -> IPPrefix {
    IPPrefix::root(name, prefix.parse().expect("a CIDR"))
}

struct Apis {
    prefixes: Api<IPPrefix>,
    client: kube::Client,
}

impl Apis {
    async fn new(server: &TestServer) -> Apis {
        let client = server.client().await;
        Apis {
            prefixes: Api::all(client.clone()),
            client,
        }
    }

    /// Create the root IPPrefix `name` over `prefix`.
    async fn create_root(&self, name: &str, prefix: &str) {
        self.prefixes
            .create(&PostParams::default(), &root(name, prefix))
            .await
            .expect("root create");
    }

    fn claims(&self, ns: &str) -> Api<IPPrefixClaim> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Create `claim` and return the prefix in the 201 response.
    async fn claim(&self, claim: IPPrefixClaim) -> String {
        let ns = claim.metadata.namespace.clone().unwrap();
        let made = self
            .claims(&ns)
            .create(&PostParams::default(), &claim)
            .await
            .expect("claim create");
        made.status
            .expect("status in the create response")
            .prefix
            .expect("status.prefix")
    }

    async fn claim_err(&self, claim: IPPrefixClaim) -> kube::core::Status {
        let ns = claim.metadata.namespace.clone().unwrap();
        match self
            .claims(&ns)
            .create(&PostParams::default(), &claim)
            .await
        {
            Err(kube::Error::Api(s)) => *s,
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    /// The IPPrefix `name` once its status counts the child prefixes that exist: the server
    /// writes a parent's status right after its children change, not inside each claim's
    /// transaction.
    async fn settled(&self, name: &str) -> IPPrefix {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let prefix = self.prefixes.get(name).await.unwrap();
            let children = self
                .prefixes
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|p| p.spec.parent_ref.as_ref().is_some_and(|r| r.name == name))
                .count();
            let counted = prefix.status.as_ref().and_then(|s| s.children);
            if counted == Some(children as i64) {
                return prefix;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ipprefix {name} still counts {counted:?} children, {children} exist"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn capacity(&self, name: &str) -> PrefixCapacity {
        self.settled(name).await.status.unwrap().capacity.unwrap()
    }
}

fn host(ns: &str, name: &str, parent: &str) -> IPPrefixClaim {
    IPPrefixClaim::new_host(ns, name, parent, IpFamily::IPv6)
}

#[tokio::test]
async fn address_plan_of_a_cloud_network_gets_exact_addresses() {
    let server = TestServer::start();
    let api = Apis::new(&server).await;
    api.create_root("platform", "fd20::/20").await;
    assert_eq!(
        api.claim(IPPrefixClaim::new_with_length(
            "project-a",
            "pool",
            "platform",
            48
        ))
        .await,
        "fd20::/48"
    );
    assert_eq!(
        api.claim(IPPrefixClaim::new_with_length(
            "project-b",
            "pool",
            "platform",
            48
        ))
        .await,
        "fd20:0:1::/48"
    );
    assert_eq!(
        api.claim(IPPrefixClaim::new_with_length(
            "project-a",
            "dfw",
            "project-a.pool",
            56
        ))
        .await,
        "fd20::/56"
    );
    let subnet = IPPrefixClaim::new_with_length("project-a", "dfw-subnet", "project-a.dfw", 64)
        .reserve(1, 0);
    assert_eq!(api.claim(subnet).await, "fd20::/64");
    let sub = "project-a.dfw-subnet";
    assert_eq!(
        api.claim(host("project-a", "nic-0", sub)).await,
        "fd20::1/128"
    );
    assert_eq!(
        api.claim(host("project-a", "nic-1", sub)).await,
        "fd20::2/128"
    );
    // The claim carries everything a consumer needs.
    let nic = api.claims("project-a").get("nic-1").await.unwrap();
    let st = nic.status.as_ref().unwrap();
    assert_eq!(st.address.as_deref(), Some("fd20::2"));
    assert_eq!(st.ip_family.as_deref(), Some("IPv6"));
    assert_eq!(st.prefix_ref.as_ref().unwrap().name, "project-a.nic-1");
    assert_eq!(st.parent_ref.as_ref().unwrap().name, sub);
    assert_eq!(
        (
            st.conditions[0].type_.as_str(),
            st.conditions[0].status.as_str(),
            st.conditions[0].reason.as_str()
        ),
        ("Bound", "True", "Allocated")
    );
    assert_eq!(nic.allocated_address(), Some("fd20::2".parse().unwrap()));
    // The audit trail: the IPPrefix made for the claim says who holds it.
    let held = api.prefixes.get("project-a.nic-1").await.unwrap();
    assert_eq!(held.phase(), "Bound");
    let claim_ref = held.spec.claim_ref.unwrap();
    assert_eq!(
        (claim_ref.namespace.as_str(), claim_ref.name.as_str()),
        ("project-a", "nic-1")
    );
    assert_eq!(claim_ref.uid, nic.metadata.uid);

    // A static host request, then release and first-fit reuse.
    let mut fixed = host("project-a", "nic-fixed", sub);
    fixed.spec.prefix = Some("fd20::10/128".into());
    assert_eq!(api.claim(fixed.clone()).await, "fd20::10/128");
    fixed.metadata.name = Some("nic-fixed-2".into());
    let taken = api.claim_err(fixed).await;
    assert_eq!(taken.code, 409);
    assert!(
        taken.message.contains("project-a.nic-fixed"),
        "{}",
        taken.message
    );
    api.claims("project-a")
        .delete("nic-0", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        api.prefixes
            .get_opt("project-a.nic-0")
            .await
            .unwrap()
            .is_none(),
        "Delete policy removes the IPPrefix"
    );
    assert_eq!(
        api.claim(host("project-a", "nic-2", sub)).await,
        "fd20::1/128"
    );

    // Retain: Released, kept from others, rebound by the same name.
    let mut kept = host("project-a", "nic-kept", sub);
    kept.spec.reclaim_policy = Some("Retain".into());
    assert_eq!(api.claim(kept.clone()).await, "fd20::3/128");
    api.claims("project-a")
        .delete("nic-kept", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api.prefixes
            .get("project-a.nic-kept")
            .await
            .unwrap()
            .phase(),
        "Released"
    );
    assert_eq!(
        api.claim(host("project-a", "nic-other", sub)).await,
        "fd20::4/128"
    );
    let rebound = api
        .claims("project-a")
        .create(&PostParams::default(), &kept)
        .await
        .unwrap();
    let st = rebound.status.unwrap();
    assert_eq!(st.prefix.as_deref(), Some("fd20::3/128"));
    assert_eq!(st.conditions[0].reason, "Rebound");
    // Deleting the Released prefix frees it for anyone.
    let mut kept_again = kept.clone();
    kept_again.spec.reclaim_policy = Some("Retain".into());
    api.claims("project-a")
        .delete("nic-kept", &DeleteParams::default())
        .await
        .unwrap();
    api.prefixes
        .delete("project-a.nic-kept", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api.claim(host("project-a", "nic-new", sub)).await,
        "fd20::3/128"
    );

    // The subnet's status adds up: ::0 reserved, five hosts held.
    let cap = api.capacity(sub).await;
    assert_eq!((cap.allocated.as_str(), cap.excluded.as_str()), ("5", "1"));
    assert_eq!(cap.total, "18446744073709551616");
    assert_eq!(cap.available, "18446744073709551610");
}

#[tokio::test]
async fn ipv4_slash28_with_reserve_two_and_one_gives_13_hosts_and_the_14th_is_exhausted() {
    let server = TestServer::start();
    let api = Apis::new(&server).await;
    api.create_root("v4", "10.128.0.0/16").await;
    let net = IPPrefixClaim::new_with_length("p", "net", "v4", 28).reserve(2, 1);
    assert_eq!(api.claim(net).await, "10.128.0.0/28");
    let mut hosts = Vec::new();
    for i in 0..13 {
        hosts.push(
            api.claim(IPPrefixClaim::new_host(
                "p",
                &format!("h{i}"),
                "p.net",
                IpFamily::IPv4,
            ))
            .await,
        );
    }
    let expected: Vec<String> = (2..15).map(|i| format!("10.128.0.{i}/32")).collect();
    assert_eq!(hosts, expected);
    let status = api
        .claim_err(IPPrefixClaim::new_host("p", "h13", "p.net", IpFamily::IPv4))
        .await;
    assert_eq!((status.code, status.reason.as_str()), (409, "Exhausted"));
    assert_eq!(
        status.message,
        "no free /32 in ipprefix \"p.net\" (10.128.0.0/28; full)"
    );
    assert!(
        api.claims("p").get_opt("h13").await.unwrap().is_none(),
        "nothing written"
    );
    let cap = api.capacity("p.net").await;
    assert_eq!(
        (
            cap.total.as_str(),
            cap.allocated.as_str(),
            cap.excluded.as_str(),
            cap.available.as_str()
        ),
        ("16", "13", "3", "0")
    );
    let p = api.settled("p.net").await;
    assert_eq!(p.status.unwrap().utilization.as_deref(), Some("100.00%"));
}

#[tokio::test]
async fn a_thousand_parallel_creates_on_room_for_256_bind_exactly_256() {
    let server = TestServer::start();
    let api = Apis::new(&server).await;
    api.create_root("room", "fd20::/120").await;
    let claims = api.claims("load");
    let results = join_all((0..1000).map(|i| {
        let claims = claims.clone();
        async move {
            claims
                .create(
                    &PostParams::default(),
                    &IPPrefixClaim::new_host("load", &format!("c{i}"), "room", IpFamily::IPv6),
                )
                .await
        }
    }))
    .await;
    let mut bound = HashSet::new();
    let mut exhausted = 0;
    for r in results {
        match r {
            Ok(c) => assert!(
                bound.insert(c.status.unwrap().prefix.unwrap()),
                "a prefix was handed out twice"
            ),
            Err(kube::Error::Api(s)) if s.reason == "Exhausted" => exhausted += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!((bound.len(), exhausted), (256, 744));
    let listed = claims.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 256);
    assert_eq!(api.capacity("room").await.available, "0");
}

#[tokio::test]
async fn selector_parents_fill_in_name_order_under_concurrency() {
    let server = TestServer::start();
    let api = Apis::new(&server).await;
    for (name, prefix) in [("b-second", "10.0.1.0/25"), ("a-first", "10.0.0.0/25")] {
        let mut p = root(name, prefix);
        p.metadata.labels = Some(BTreeMap::from([("pool".to_string(), "hosts".to_string())]));
        api.prefixes
            .create(&PostParams::default(), &p)
            .await
            .unwrap();
    }
    let claims = api.claims("sel");
    let by_selector = |i: usize| {
        let mut c = IPPrefixClaim::new(
            &format!("c{i}"),
            IPPrefixClaimSpec {
                prefix_length: Some(32),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("sel".into());
        c.spec.parent_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("pool".to_string(), "hosts".to_string())])),
            ..Default::default()
        });
        c
    };
    let results = join_all((0..300).map(|i| {
        let claims = claims.clone();
        let c = by_selector(i);
        async move { claims.create(&PostParams::default(), &c).await }
    }))
    .await;
    let mut per_parent: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut exhausted = 0;
    for r in results {
        match r {
            Ok(c) => {
                let rv = c.metadata.resource_version.unwrap().parse().unwrap();
                per_parent
                    .entry(c.status.unwrap().parent_ref.unwrap().name)
                    .or_default()
                    .push(rv);
            }
            Err(kube::Error::Api(s)) if s.reason == "Exhausted" => exhausted += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(exhausted, 300 - 256);
    let first = &per_parent["a-first"];
    let second = &per_parent["b-second"];
    assert_eq!((first.len(), second.len()), (128, 128));
    assert!(
        first.iter().max() < second.iter().min(),
        "the second parent must fill only after the first is full"
    );
}

#[tokio::test]
async fn a_slash128_against_a_slash64_and_a_template_on_a_host_claim_are_fine() {
    let server = TestServer::start();
    let api = Apis::new(&server).await;
    api.create_root("subnet", "fd20:0:0:1::/64").await;
    let mut nic = host("ns", "nic", "subnet");
    nic.spec.child_prefix_template = Some(ChildPrefixTemplate {
        metadata: Some(TemplateMetadata {
            name: Some("nic-address".into()),
            labels: BTreeMap::from([("role".to_string(), "nic".to_string())]),
            annotations: BTreeMap::from([("owner".to_string(), "team-net".to_string())]),
        }),
        spec: None,
    });
    assert_eq!(api.claim(nic).await, "fd20:0:0:1::/128");
    let child = api.prefixes.get("nic-address").await.unwrap();
    assert_eq!(child.metadata.labels.unwrap()["role"], "nic");
    assert_eq!(child.metadata.annotations.unwrap()["owner"], "team-net");
    let st = child.status.unwrap();
    assert_eq!(
        st.largest_free_prefix_length, None,
        "a /128 has nothing to hand out"
    );
    assert_eq!(st.capacity.unwrap().total, "1");
    // A length not longer than the parent's is refused, naming the parent.
    let status = api
        .claim_err(IPPrefixClaim::new_with_length(
            "ns", "too-big", "subnet", 64,
        ))
        .await;
    assert_eq!(status.code, 422);
    assert!(status.message.contains("subnet"), "{}", status.message);
}

#[tokio::test]
async fn utilization_of_a_pool_full_of_hosts_is_100_percent() {
    let server = TestServer::start();
    let api = Apis::new(&server).await;
    api.create_root("tiny", "fd20::/124").await;
    for i in 0..8 {
        api.claim(host("ns", &format!("h{i}"), "tiny")).await;
    }
    let st = api.settled("tiny").await.status.unwrap();
    assert_eq!(st.utilization.as_deref(), Some("50.00%"));
    assert_eq!(st.largest_free_prefix_length, Some(125));
    for i in 8..16 {
        api.claim(host("ns", &format!("h{i}"), "tiny")).await;
    }
    let st = api.settled("tiny").await.status.unwrap();
    assert_eq!(st.utilization.as_deref(), Some("100.00%"));
    assert_eq!(st.largest_free_prefix_length, None);
    assert_eq!(st.children, Some(16));
}

#[test]
fn kubectl_shows_the_allocation_and_protects_what_is_in_use() {
    let server = TestServer::start();
    let manifest = server.data_dir.join("plan.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefix
metadata: {name: root}
spec: {prefix: 10.0.0.0/8}
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: pool, namespace: team}
spec: {prefixLength: 16, parentRef: {name: root}}
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: subnet, namespace: team}
spec: {prefixLength: 24, parentRef: {name: team.pool}}
"#,
    )
    .unwrap();
    server.kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let claims = server.kubectl_ok(&["get", "ippc", "-n", "team", "-o", "wide"]);
    let header: Vec<&str> = claims.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PREFIX", "PARENT", "PHASE", "AGE", "FAMILY", "LENGTH", "IPPREFIX", "RECLAIM"]
    );
    let subnet: Vec<&str> = claims
        .lines()
        .find(|l| l.starts_with("subnet"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &subnet[..4],
        ["subnet", "10.0.0.0/24", "team.pool", "Bound"]
    );
    assert_eq!(&subnet[5..], ["IPv4", "24", "team.subnet", "Delete"]);
    let by_parent = server.kubectl_ok(&[
        "get",
        "ipp",
        "--field-selector",
        "spec.parentRef.name=team.pool",
        "-o",
        "name",
    ]);
    assert_eq!(by_parent.trim(), "ipprefix.ipam.miloapis.com/team.subnet");
    let by_len = server.kubectl_ok(&[
        "get",
        "ippc",
        "-A",
        "--field-selector",
        "spec.prefixLength=16",
        "-o",
        "name",
    ]);
    assert_eq!(by_len.trim(), "ipprefixclaim.ipam.miloapis.com/pool");
    // Deleting the bound IPPrefix directly is refused with the way out.
    let out = server.kubectl(&["delete", "ipp", "team.subnet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("delete claim team/subnet instead"));
    // The pool claim waits for its subnet; deleting both in the "wrong" order still ends empty.
    server.kubectl_ok(&["delete", "ippc", "-n", "team", "pool", "--wait=false"]);
    let pool = server.kubectl_ok(&[
        "get",
        "ippc",
        "-n",
        "team",
        "pool",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert!(pool.contains("ipam.miloapis.com/prefix-in-use"), "{pool}");
    server.kubectl_ok(&["delete", "ippc", "-n", "team", "subnet"]);
    assert_eq!(
        server
            .kubectl_ok(&["get", "ippc", "-n", "team", "-o", "name"])
            .trim(),
        ""
    );
    server.kubectl_until(
        &[
            "get",
            "ipp",
            "root",
            "-o",
            "jsonpath={.status.capacity.allocated}",
        ],
        "0",
    );
}

#[tokio::test]
async fn dry_run_returns_the_would_be_allocation_without_writing() {
    let server = TestServer::start();
    let api = Apis::new(&server).await;
    api.create_root("r", "10.0.0.0/30").await;
    let claims = api.claims("ns");
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let would = claims
        .create(
            &pp,
            &IPPrefixClaim::new_host("ns", "c", "r", IpFamily::IPv4),
        )
        .await
        .unwrap();
    assert_eq!(would.status.unwrap().prefix.as_deref(), Some("10.0.0.0/32"));
    assert!(claims.get_opt("c").await.unwrap().is_none());
    assert!(api.prefixes.get_opt("ns.c").await.unwrap().is_none());
    assert_eq!(api.capacity("r").await.allocated, "0");
}

#[tokio::test]
async fn claim_spec_is_immutable_except_reclaim_policy_which_follows_to_the_prefix() {
    let server = TestServer::start();
    let api = Apis::new(&server).await;
    api.create_root("r", "10.0.0.0/24").await;
    api.claim(IPPrefixClaim::new_host("ns", "c", "r", IpFamily::IPv4))
        .await;
    let claims = api.claims("ns");
    let mut c = claims.get("c").await.unwrap();
    c.spec.prefix_length = Some(31);
    let err = claims
        .replace("c", &PostParams::default(), &c)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else { panic!() };
    assert_eq!(s.code, 422);
    assert!(s.message.contains("spec.prefixLength"), "{}", s.message);
    let mut c = claims.get("c").await.unwrap();
    c.spec.reclaim_policy = Some("Retain".into());
    claims
        .replace("c", &PostParams::default(), &c)
        .await
        .unwrap();
    assert_eq!(
        api.prefixes
            .get("ns.c")
            .await
            .unwrap()
            .spec
            .reclaim_policy
            .as_deref(),
        Some("Retain")
    );
}

/// `/metrics` (Prometheus text, as the admin user) as one string.
async fn metrics(server: &TestServer) -> String {
    let (status, _, body) = server.raw("GET", "/metrics", None, Vec::new()).await;
    assert_eq!(status, 200);
    String::from_utf8(body).expect("metrics are text")
}

/// The value of the one sample named exactly `series` (name and labels), or 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

/// `/metrics` counts what a user did: requests by verb, resource and code with their latency,
/// every block handed out and returned (a dry run hands out nothing), every exhaustion, the
/// group commits that made the writes durable and the two queues each write waited in, and
/// the root's utilization.
#[tokio::test]
async fn metrics_count_the_requests_allocations_and_commits_a_user_made() {
    let server = TestServer::start();
    let api = Apis::new(&server).await;
    api.create_root("metered", "fd00:7::/126").await;
    for i in 0..4 {
        api.claim(host("m", &format!("h{i}"), "metered")).await;
    }
    let full = api.claim_err(host("m", "h4", "metered")).await;
    assert_eq!((full.code, full.reason.as_str()), (409, "Exhausted"));
    api.claims("m")
        .delete("h0", &DeleteParams::default())
        .await
        .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.claims("m")
        .create(&dry, &host("m", "h5", "metered"))
        .await
        .expect("a dry run has room again");
    api.settled("metered").await;

    // The status write is visible before its fsync, which its durable wait counts after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut m = metrics(&server).await;
    while sample(&m, "ipam_store_durable_wait_seconds_count") < 7.0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        m = metrics(&server).await;
    }
    let requests = |verb: &str, resource: &str, code: u16| {
        let labels =
            format!("{{verb=\"{verb}\",resource=\"{resource}\",subresource=\"\",code=\"{code}\"}}");
        (
            sample(&m, &format!("ipam_apiserver_requests_total{labels}")),
            sample(
                &m,
                &format!("ipam_apiserver_request_duration_seconds_count{labels}"),
            ),
        )
    };
    assert_eq!(requests("create", "ipprefixes", 201), (1.0, 1.0), "{m}");
    assert_eq!(requests("create", "ipprefixclaims", 201), (5.0, 5.0), "{m}");
    assert_eq!(requests("create", "ipprefixclaims", 409), (1.0, 1.0), "{m}");
    assert_eq!(requests("delete", "ipprefixclaims", 200), (1.0, 1.0), "{m}");
    assert_eq!(sample(&m, "ipam_allocations_total"), 4.0, "{m}");
    assert_eq!(sample(&m, "ipam_releases_total"), 1.0, "{m}");
    assert_eq!(sample(&m, "ipam_exhaustions_total"), 1.0, "{m}");
    assert_eq!(
        sample(
            &m,
            "ipam_root_prefix_utilization_ratio{name=\"metered\",prefix=\"fd00:7::/126\",address_space=\"\"}"
        ),
        0.75,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "ipam_root_prefix_children{name=\"metered\",prefix=\"fd00:7::/126\",address_space=\"\"}"
        ),
        3.0,
        "{m}"
    );
    // Six writes committed (the root, four claims, a delete) and the parent's status after
    // them; the exhausted claim and the dry run waited for the lock but committed nothing.
    let lock_waits = sample(&m, "ipam_registry_writer_lock_wait_seconds_count");
    let durable_waits = sample(&m, "ipam_store_durable_wait_seconds_count");
    let committed = sample(&m, "ipam_store_commit_batch_size_sum");
    assert!(durable_waits >= 7.0, "{m}");
    assert!(lock_waits >= durable_waits + 2.0, "{m}");
    assert!(committed >= durable_waits, "{m}");
    let fsyncs = sample(&m, "ipam_store_fsync_duration_seconds_count");
    assert!(
        (1.0..=committed).contains(&fsyncs),
        "one fsync covers one or more commits: {m}"
    );
    assert_eq!(sample(&m, "ipam_store_fsync_failures_total"), 0.0, "{m}");
}
