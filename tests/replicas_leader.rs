//! The work done once across replicas on etcd (parent status refresh, retention expiry,
//! Released events, compaction) runs on the one replica that leads, through the real binary on
//! one real etcd (from `$KUBEBUILDER_ASSETS/etcd`; skipped, saying so, without it): exactly one
//! leads, a follower does none of it, and a leader killed with SIGKILL is replaced.
mod common;
#[path = "common/etcd.rs"]
mod etcd;

use common::TestServer;
use etcd::{replicas, Etcd};
use http::StatusCode;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";
/// The leader's lease in these tests: a killed leader is replaced within it.
const LEASE: &str = "6s";

async fn create(s: &TestServer, path: &str, body: Value) -> Value {
    let (status, made) = s.json("POST", &format!("{GV}/{path}"), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}\n{}", s.stderr());
    made
}

fn root(name: &str, prefix: &str) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
           "metadata": {"name": name}, "spec": {"prefix": prefix}})
}

fn claim(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
           "metadata": {"name": name}, "spec": spec})
}

/// `ipam_leader` on `s`'s `/metrics`.
async fn leads(s: &TestServer) -> bool {
    let (status, _, body) = s.raw("GET", "/metrics", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("ipam_leader "))
        .unwrap_or_else(|| panic!("no ipam_leader in /metrics:\n{text}"));
    line == "ipam_leader 1"
}

/// Which of `servers` lead, once exactly one does.
async fn the_leader(servers: &[&TestServer]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leading = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            if leads(s).await {
                leading.push(i);
            }
        }
        if let [one] = leading[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "leading: {leading:?} of {}",
            servers.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many Released IPPrefixes `s` freed at their deadline, from its log.
fn freed(s: &TestServer) -> usize {
    s.stderr()
        .lines()
        .filter(|l| l.contains("retention ended for Released IPPrefixes"))
        .filter_map(|l| {
            l.split("freed=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

async fn children(s: &TestServer, name: &str) -> Value {
    let (status, got) = s
        .json("GET", &format!("{GV}/ipprefixes/{name}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    got["status"]["children"].clone()
}

/// Polls `s` until `name`'s `status.children` is `n`.
async fn until_children(s: &TestServer, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = children(s, name).await;
        if now == json!(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ipprefix {name}: status.children stayed {now}, not {n}\n{}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn one_replica_leads_and_a_killed_leader_is_replaced() {
    let Some(etcd) = Etcd::start("one_replica_leads_and_a_killed_leader_is_replaced") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let mut servers = replicas(
        &etcd,
        2,
        scratch.path(),
        &["--leader-elect-lease-duration", LEASE],
    );
    let first = the_leader(&[&servers[0], &servers[1]]).await;
    let (l, f) = (first, 1 - first);

    // A block retained for one second, released through the follower (whose index then holds
    // its deadline): the follower must not free it.
    create(&servers[l], "ipprefixes", root("pool", "10.0.0.0/24")).await;
    create(
        &servers[f],
        "namespaces/ns/ipprefixclaims",
        claim(
            "c",
            json!({"parentRef": {"name": "pool"}, "prefixLength": 32,
                   "reclaimPolicy": "Retain", "retentionSeconds": 1}),
        ),
    )
    .await;
    let (status, gone) = servers[f]
        .json(
            "DELETE",
            &format!("{GV}/namespaces/ns/ipprefixclaims/c"),
            None,
        )
        .await;
    assert!(status.is_success(), "{gone}");
    let (_, released) = servers[f]
        .json("GET", &format!("{GV}/ipprefixes/ns.c"), None)
        .await;
    assert_eq!(released["status"]["phase"], "Released", "{released}");
    let until: jiff::Timestamp = released["status"]["retainedUntil"]
        .as_str()
        .expect("retainedUntil")
        .parse()
        .unwrap();
    // Well past the deadline, with the follower's expiry task due all along.
    while jiff::Timestamp::now() <= until + jiff::SignedDuration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        freed(&servers[f]),
        0,
        "a follower freed a block:\n{}",
        servers[f].stderr()
    );
    assert!(leads(&servers[l]).await && !leads(&servers[f]).await);

    // SIGKILL: the leader's lease is not given back, it ends. The follower takes over within it.
    let killed = Instant::now();
    servers[l].kill9();
    assert_eq!(the_leader(&[&servers[f]]).await, 0);
    eprintln!("a new leader {:?} after the SIGKILL", killed.elapsed());
    // The block is freed once, by whichever replica led when it was due.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = servers[f]
            .json("GET", &format!("{GV}/ipprefixes/ns.c"), None)
            .await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "{}", servers[f].stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(freed(&servers[l]) + freed(&servers[f]), 1);

    // The new leader keeps parent status current.
    create(&servers[f], "ipprefixes", root("after", "10.1.0.0/24")).await;
    for i in 0..3 {
        create(
            &servers[f],
            "namespaces/ns/ipprefixclaims",
            claim(
                &format!("n{i}"),
                json!({"parentRef": {"name": "after"}, "prefixLength": 30}),
            ),
        )
        .await;
    }
    until_children(&servers[f], "after", 3).await;

    // The killed replica comes back as a follower: still exactly one leads.
    servers[l].restart();
    assert_eq!(the_leader(&[&servers[0], &servers[1]]).await, f);
    assert!(!leads(&servers[l]).await);

    // SIGTERM: the leader gives its lease back on the way out, and the other leads.
    let stopped = Instant::now();
    let status = servers[f].stop();
    assert!(status.success(), "{status}: {}", servers[f].stderr());
    assert!(
        servers[f].stderr().contains("no longer leading: resigned"),
        "{}",
        servers[f].stderr()
    );
    assert_eq!(the_leader(&[&servers[l]]).await, 0);
    eprintln!("a new leader {:?} after the SIGTERM", stopped.elapsed());
}

/// The leader's status writer counts from its own index, which follows the other replicas'
/// writes; every replica marks the parent stale, only the leader writes it.
#[tokio::test]
async fn parent_status_counts_children_created_through_every_replica() {
    let Some(etcd) = Etcd::start("parent_status_counts_children_created_through_every_replica")
    else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let servers = replicas(
        &etcd,
        3,
        scratch.path(),
        &["--leader-elect-lease-duration", LEASE],
    );
    the_leader(&[&servers[0], &servers[1], &servers[2]]).await;
    create(&servers[0], "ipprefixes", root("pool", "10.0.0.0/24")).await;
    for round in 0..4 {
        for (i, s) in servers.iter().enumerate() {
            create(
                s,
                "namespaces/ns/ipprefixclaims",
                claim(
                    &format!("c{round}-{i}"),
                    json!({"parentRef": {"name": "pool"}, "prefixLength": 32}),
                ),
            )
            .await;
        }
    }
    for s in &servers {
        until_children(s, "pool", 12).await;
    }
}

fn signal(s: &TestServer, sig: &str) {
    let pid = s.pid().expect("running").to_string();
    let status = Command::new("kill").args([sig, &pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// A leader paused past its lease (SIGSTOP: a long GC pause, a frozen VM) wakes to find another
/// replica leading: it steps down, and the status the new leader wrote stays.
#[tokio::test]
async fn a_leader_paused_past_its_lease_steps_down_when_it_wakes() {
    let Some(etcd) = Etcd::start("a_leader_paused_past_its_lease_steps_down_when_it_wakes") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let servers = replicas(
        &etcd,
        2,
        scratch.path(),
        &["--leader-elect-lease-duration", LEASE],
    );
    let l = the_leader(&[&servers[0], &servers[1]]).await;
    let f = 1 - l;
    create(&servers[l], "ipprefixes", root("pool", "10.0.0.0/24")).await;
    // Claims c<i>, each a /30 of the pool, through `server`.
    let claims_in_pool = async |server: &TestServer, claims: std::ops::Range<usize>| {
        for i in claims {
            let spec = json!({"parentRef": {"name": "pool"}, "prefixLength": 30});
            let claim = claim(&format!("c{i}"), spec);
            create(server, "namespaces/ns/ipprefixclaims", claim).await;
        }
    };
    claims_in_pool(&servers[l], 0..2).await;
    until_children(&servers[l], "pool", 2).await;

    signal(&servers[l], "-STOP");
    assert_eq!(the_leader(&[&servers[f]]).await, 0);
    claims_in_pool(&servers[f], 2..5).await;
    until_children(&servers[f], "pool", 5).await;

    signal(&servers[l], "-CONT");
    // It finds its lease gone at its next renewal.
    let deadline = Instant::now() + Duration::from_secs(60);
    while leads(&servers[l]).await {
        assert!(Instant::now() < deadline, "{}", servers[l].stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        servers[l].stderr().contains("no longer leading"),
        "{}",
        servers[l].stderr()
    );
    assert_eq!(the_leader(&[&servers[0], &servers[1]]).await, f);
    for s in &servers {
        assert_eq!(children(s, "pool").await, json!(5));
    }
}

/// A counter or gauge on `s`'s `/metrics` (0 when absent).
async fn metric(s: &TestServer, name: &str) -> u64 {
    let (status, _, body) = s.raw("GET", "/metrics", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

/// Creates a /32 claim named `name` from `pool` through `s`; its prefix, or the status of a
/// create that failed.
async fn try_claim(s: &TestServer, name: &str) -> Result<String, (StatusCode, Value)> {
    let body = claim(
        name,
        json!({"parentRef": {"name": "pool"}, "prefixLength": 32}),
    );
    let (status, made) = s
        .json(
            "POST",
            &format!("{GV}/namespaces/ns/ipprefixclaims"),
            Some(body),
        )
        .await;
    match status {
        StatusCode::CREATED => Ok(made["status"]["prefix"].as_str().unwrap().to_string()),
        _ => Err((status, made)),
    }
}

/// Creates claims through follower `f` until it hands one to the leader (it learns the
/// leader's address from etcd within a second or two of the leader publishing it).
async fn until_forwarding(f: &TestServer, tag: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut made = Vec::new();
    for i in 0.. {
        let before = metric(f, "ipam_forwarded_writes_total").await;
        made.push(try_claim(f, &format!("warm-{tag}-{i}")).await.unwrap());
        if metric(f, "ipam_forwarded_writes_total").await > before {
            return made;
        }
        assert!(
            Instant::now() < deadline,
            "no create forwarded\n{}",
            f.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

#[tokio::test]
async fn writes_arriving_at_followers_are_decided_by_the_leader() {
    let Some(etcd) = Etcd::start("writes_arriving_at_followers_are_decided_by_the_leader") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let servers = replicas(&etcd, 3, scratch.path(), &[]);
    let l = the_leader(&servers.iter().collect::<Vec<_>>()).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    create(&servers[l], "ipprefixes", root("pool", "10.1.0.0/16")).await;
    let mut prefixes = Vec::new();
    for &f in &followers {
        prefixes.extend(until_forwarding(&servers[f], &f.to_string()).await);
    }

    let allocated = |s| metric(s, "ipam_allocations_total");
    let forwarded = |s| metric(s, "ipam_forwarded_writes_total");
    let mut before = Vec::new();
    for s in &servers {
        before.push((allocated(s).await, forwarded(s).await));
    }
    for i in 0..10 {
        for &f in &followers {
            prefixes.push(try_claim(&servers[f], &format!("c-{f}-{i}")).await.unwrap());
        }
    }
    // Each follower handed all ten on; the leader allocated them, the followers none.
    for &f in &followers {
        assert_eq!(forwarded(&servers[f]).await, before[f].1 + 10);
        assert_eq!(allocated(&servers[f]).await, before[f].0);
    }
    assert_eq!(allocated(&servers[l]).await, before[l].0 + 20);
    // As one replica deciding in order would: the lowest blocks, each once.
    let expected: Vec<String> = (0..prefixes.len())
        .map(|i| format!("10.1.0.{i}/32"))
        .collect();
    assert_eq!(prefixes, expected);
    // And readable through every replica at once.
    for s in &servers {
        let (status, got) = s
            .json(
                "GET",
                &format!("{GV}/namespaces/ns/ipprefixclaims/c-{}-9", followers[1]),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["status"]["prefix"], json!(prefixes.last().unwrap()));
    }

    // Deletes too: the leader frees the blocks, the followers none.
    let released = |s| metric(s, "ipam_releases_total");
    let mut before = Vec::new();
    for s in &servers {
        before.push((released(s).await, forwarded(s).await));
    }
    for &f in &followers {
        let (status, gone) = servers[f]
            .json(
                "DELETE",
                &format!("{GV}/namespaces/ns/ipprefixclaims/c-{f}-0"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{gone}");
    }
    for &f in &followers {
        assert_eq!(forwarded(&servers[f]).await, before[f].1 + 1);
        assert_eq!(released(&servers[f]).await, before[f].0);
    }
    assert_eq!(released(&servers[l]).await, before[l].0 + 2);
    for s in &servers {
        let (status, _) = s
            .json(
                "GET",
                &format!("{GV}/namespaces/ns/ipprefixclaims/c-{}-0", followers[0]),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    // Only a replica that holds the leader's token may hand it a create.
    let forged = json!({"namespace": "ns",
        "object": claim("forged", json!({"parentRef": {"name": "pool"}, "prefixLength": 32})),
        "allowedParents": null, "manager": null});
    let (status, _, _) = servers[l]
        .raw_unauthenticated(
            "POST",
            "/internal/ipam.miloapis.com/creates/ipprefixclaims",
            Some("application/json"),
            forged.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = servers[l]
        .json(
            "GET",
            &format!("{GV}/namespaces/ns/ipprefixclaims/forged"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A leader that stops answering (SIGSTOP) does not stop creates: the followers decide them
/// themselves, safely, since every commit carries its guards.
#[tokio::test]
async fn followers_decide_creates_themselves_while_the_leader_is_paused() {
    let Some(etcd) = Etcd::start("followers_decide_creates_themselves_while_the_leader") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let servers = replicas(
        &etcd,
        3,
        scratch.path(),
        &["--leader-elect-lease-duration", "60s"],
    );
    let l = the_leader(&servers.iter().collect::<Vec<_>>()).await;
    let f = (l + 1) % 3;
    create(&servers[l], "ipprefixes", root("pool", "10.2.0.0/16")).await;
    let mut prefixes = until_forwarding(&servers[f], "f").await;
    let not_sent = metric(&servers[f], "ipam_forwards_not_sent_total").await;

    // The lease outlives this test's waits: the paused replica stays the leader in etcd.
    signal(&servers[l], "-STOP");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut created = 0;
    for i in 0.. {
        match try_claim(&servers[f], &format!("p-{i}")).await {
            Ok(prefix) => {
                prefixes.push(prefix);
                created += 1;
            }
            // Sent before the follower found the leader gone: may or may not have happened.
            Err((StatusCode::SERVICE_UNAVAILABLE, _)) => {}
            Err((status, body)) => panic!("{status} {body}\n{}", servers[f].stderr()),
        }
        if created == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "creates stopped\n{}",
            servers[f].stderr()
        );
    }
    assert!(metric(&servers[f], "ipam_forwards_not_sent_total").await > not_sent);
    signal(&servers[l], "-CONT");

    // Nothing handed out twice, whoever decided it.
    let mut unique = prefixes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), prefixes.len(), "{prefixes:?}");
}
