//! Three replicas of the real binary on a real 3-member etcd, under load, losing replicas and
//! etcd members to SIGKILL, and etcd losing quorum (skipped, saying so, without
//! `KUBEBUILDER_ASSETS`). What must hold afterwards is what a user would check: every
//! acknowledged write is there, nothing overlaps, every replica answers alike, and a watch saw
//! it all once, in order.
//!
//! `IPAM_SOAK=1` runs many more kill rounds (`IPAM_CHAOS_ROUNDS=N`: exactly N, 0 for load
//! alone); `IPAM_CHAOS_SEED=N` replays one run's choices (the seed is printed; the kill timing
//! still varies).
mod common;
#[path = "common/etcd_cluster.rs"]
mod etcd_cluster;

use etcd_cluster::*;
use futures::StreamExt;
use http::StatusCode;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, WatchEvent, WatchParams};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: &str = "chaos";
/// Two parents, one per family, so both allocators are under load; blocks of mixed lengths,
/// so a block handed out twice shows as an overlap, not only as an equal prefix.
const PARENTS: [(&str, &str, std::ops::RangeInclusive<u8>); 2] = [
    ("chaos-v6", "fd00:c4a0::/104", 120..=128),
    ("chaos-v4", "10.99.0.0/16", 26..=32),
];

/// xorshift64*: the run's choices from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seed() -> u64 {
    std::env::var("IPAM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(0u8) | 1
        })
}

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    /// 201: name → (parent, prefix).
    created: BTreeMap<String, (String, String)>,
    /// No answer, or 503: the create may or may not have happened.
    create_unknown: BTreeSet<String>,
    /// 200/202 to a delete.
    deleted: BTreeSet<String>,
    delete_unknown: BTreeSet<String>,
    exhausted: usize,
    /// 503 answers (etcd unavailable to a replica that is up), with the last one's message.
    unavailable: usize,
    last_unavailable: String,
    /// Answers no client should ever get.
    unexpected: Vec<String>,
}

/// One client's loop: create a claim through replica `r`, now and then delete one of its own
/// acknowledged ones, until `stop`.
async fn worker(
    w: usize,
    r: usize,
    mut rng: Rng,
    clients: Arc<Mutex<Vec<Option<kube::Client>>>>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut mine: Vec<String> = Vec::new();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let client = clients.lock().unwrap()[r].clone();
        let Some(client) = client else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        seq += 1;
        let name = format!("w{w}-{seq}");
        let (parent, _, lengths) = &PARENTS[rng.below(PARENTS.len())];
        let len = lengths.start() + rng.below(lengths.clone().count()) as u8;
        let body = claim(&name, parent, len);
        let outcome = call(&client, "POST", &claims_path(NS), Some(&body)).await;
        let unanswered = !matches!(outcome, Ok((s, _)) if s != StatusCode::SERVICE_UNAVAILABLE);
        {
            let mut l = ledger.lock().unwrap();
            match outcome {
                Ok((StatusCode::CREATED, b)) => {
                    let prefix = b["status"]["prefix"].as_str().unwrap_or_default();
                    l.created
                        .insert(name.clone(), (parent.to_string(), prefix.to_string()));
                    mine.push(name);
                }
                Ok((StatusCode::CONFLICT, b)) if b["reason"] == "Exhausted" => l.exhausted += 1,
                Ok((s, b)) if s == StatusCode::SERVICE_UNAVAILABLE => {
                    l.create_unknown.insert(name);
                    l.unavailable += 1;
                    l.last_unavailable = b["message"].to_string();
                }
                Ok((s, b)) => l.unexpected.push(format!("create {name} via {r}: {s} {b}")),
                Err(_) => {
                    l.create_unknown.insert(name);
                }
            }
        }
        if unanswered {
            // As a client would, and so a task on a runtime being torn down reaches an await.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if !mine.is_empty() && rng.below(5) < 2 {
            let name = mine.swap_remove(rng.below(mine.len()));
            let path = format!("{}/{name}", claims_path(NS));
            let outcome = call(&client, "DELETE", &path, None).await;
            let mut l = ledger.lock().unwrap();
            match outcome {
                Ok((s, _)) if s == StatusCode::OK || s == StatusCode::ACCEPTED => {
                    l.deleted.insert(name);
                }
                Ok((s, b)) if s == StatusCode::SERVICE_UNAVAILABLE => {
                    l.delete_unknown.insert(name);
                    l.unavailable += 1;
                    l.last_unavailable = b["message"].to_string();
                }
                Ok((s, b)) => l.unexpected.push(format!("delete {name} via {r}: {s} {b}")),
                Err(_) => {
                    l.delete_unknown.insert(name);
                }
            }
        }
    }
}

/// Stops the workers when the test ends, also by a panic (they would outlive it otherwise).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A watch event as seen: type, name, resourceVersion, prefix.
type Seen = (&'static str, String, u64, String);

fn claims_api(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("ipam.miloapis.com", "v1alpha1", "IPPrefixClaim");
    Api::namespaced_with(
        client,
        NS,
        &ApiResource::from_gvk_with_plural(&gvk, "ipprefixclaims"),
    )
}

/// Watch claims from `rv` on, as a client does: a watch that ends is opened again from the
/// last resourceVersion seen; an ERROR event is recorded (none may come: nothing compacts).
fn watch_from(
    client: kube::Client,
    rv: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    errors: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api = claims_api(client);
        let mut rv = rv;
        loop {
            let stream = match api.watch(&WatchParams::default(), &rv).await {
                Ok(s) => s,
                Err(e) => {
                    errors.lock().unwrap().push(format!("watch from {rv}: {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let (kind, o) = match ev {
                    Ok(WatchEvent::Added(o)) => ("ADDED", o),
                    Ok(WatchEvent::Modified(o)) => ("MODIFIED", o),
                    Ok(WatchEvent::Deleted(o)) => ("DELETED", o),
                    Ok(WatchEvent::Bookmark(b)) => {
                        rv = b.metadata.resource_version;
                        continue;
                    }
                    Ok(WatchEvent::Error(s)) => {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("watch from {rv}: {s:?}"));
                        break;
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(format!("watch from {rv}: {e}"));
                        break;
                    }
                };
                rv = o.metadata.resource_version.clone().unwrap_or_default();
                let prefix = o.data["status"]["prefix"].as_str().unwrap_or_default();
                seen.lock().unwrap().push((
                    kind,
                    o.metadata.name.clone().unwrap_or_default(),
                    rv.parse().unwrap_or(0),
                    prefix.to_string(),
                ));
            }
        }
    })
}

/// The number of addresses in `prefix`, in decimal as `status.capacity` writes it.
fn size(prefix: &str) -> u128 {
    let net: ipnet::IpNet = prefix.parse().unwrap();
    1u128 << (net.max_prefix_len() - net.prefix_len())
}

async fn ready(client: &kube::Client) -> Result<(), String> {
    match call(client, "GET", "/readyz?verbose", None).await {
        Ok((StatusCode::OK, _)) => Ok(()),
        Ok((s, b)) => Err(format!("{s} {b}")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_rounds_under_load_lose_no_acknowledged_write_and_overlap_nothing() {
    let test = "kill_rounds_under_load_lose_no_acknowledged_write";
    let Some(etcd) = EtcdCluster::start(test, 3) else {
        return;
    };
    let seed = seed();
    eprintln!("{test}: IPAM_CHAOS_SEED={seed}");
    let soak = std::env::var_os("IPAM_SOAK").is_some();
    let rounds = std::env::var("IPAM_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if soak { 20 } else { 4 });
    let mut replicas = Replicas::start(&etcd, 3, &["--etcd-compaction-interval", "0"]);
    let clients = replicas.clients().await;
    for (name, prefix, _) in &PARENTS {
        create_root(&clients[0], name, prefix).await;
    }

    // Replica 0 is never killed: its watch, opened before the chaos, must see all of it.
    let (_, list) = must(&clients[0], "GET", &claims_path(NS), None).await;
    let start_rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watch_errors = Arc::new(Mutex::new(Vec::new()));
    let watch = watch_from(
        clients[0].clone(),
        start_rv,
        seen.clone(),
        watch_errors.clone(),
    );

    let shared = Arc::new(Mutex::new(
        clients.iter().cloned().map(Some).collect::<Vec<_>>(),
    ));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let mut rng = Rng(seed);
    let workers: Vec<_> = (0..6)
        .map(|w| {
            tokio::spawn(worker(
                w,
                w % 3,
                Rng(rng.next() | 1),
                shared.clone(),
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();

    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(1_500 + rng.below(2_000) as u64)).await;
        let (replica, member) = (1 + round % 2, rng.below(3));
        eprintln!("round {round}: kill -9 replica {replica} and etcd member {member}");
        shared.lock().unwrap()[replica] = None;
        replicas.servers[replica].kill9();
        tokio::task::block_in_place(|| etcd.kill_member(member));
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1_500) as u64)).await;
        // The replica starts while the member is still down (once the others have a leader),
        // then the member comes back.
        tokio::task::block_in_place(|| {
            etcd.wait_healthy((member + 1) % 3);
            replicas.servers[replica].restart();
            etcd.restart_member(member);
        });
        shared.lock().unwrap()[replica] = Some(client_of(&replicas.servers[replica]).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let clients: Vec<kube::Client> = shared
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.clone().unwrap())
        .collect();
    for (i, c) in clients.iter().enumerate() {
        eventually(
            &format!("replica {i} ready"),
            Duration::from_secs(60),
            || ready(c),
        )
        .await;
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let logs = || format!("{}{}", replicas.logs(), etcd.logs());
    eprintln!(
        "{test}: {} created, {} deleted, {} Exhausted, {} creates and {} deletes unanswered, {} of them 503 (last: {})",
        ledger.created.len(),
        ledger.deleted.len(),
        ledger.exhausted,
        ledger.create_unknown.len(),
        ledger.delete_unknown.len(),
        ledger.unavailable,
        ledger.last_unavailable
    );
    assert_eq!(
        ledger.unexpected,
        Vec::<String>::new(),
        "seed {seed}{}",
        logs()
    );
    assert!(
        ledger.created.len() > 50,
        "too little load got through: {}",
        ledger.created.len()
    );

    // Every replica answers the same claims and the same blocks.
    let mut lists = Vec::new();
    let mut blocks = Vec::new();
    for c in &clients {
        let (status, list) = must(c, "GET", &claims_path(NS), None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let claims: BTreeMap<String, (String, String, String)> = items(&list)
            .iter()
            .map(|o| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    name_of(o),
                    (
                        s(&o["status"]["parentRef"]["name"]),
                        s(&o["status"]["prefix"]),
                        s(&o["metadata"]["resourceVersion"]),
                    ),
                )
            })
            .collect();
        lists.push(claims);
        let (_, all) = must(c, "GET", &prefixes_path(), None).await;
        let children: BTreeMap<String, (String, String, String)> = items(&all)
            .iter()
            .filter(|p| p["spec"]["parentRef"]["name"].is_string())
            .map(|p| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    name_of(p),
                    (
                        s(&p["spec"]["parentRef"]["name"]),
                        s(&p["spec"]["prefix"]),
                        s(&p["spec"]["claimRef"]["name"]),
                    ),
                )
            })
            .collect();
        blocks.push(children);
    }
    for i in 1..clients.len() {
        assert!(
            lists[i] == lists[0],
            "replica {i} lists other claims than replica 0 (seed {seed})"
        );
        assert!(
            blocks[i] == blocks[0],
            "replica {i} lists other IPPrefixes than replica 0 (seed {seed})"
        );
    }
    let (claims, children) = (&lists[0], &blocks[0]);

    // Every acknowledged create is there with its block, every acknowledged delete is gone,
    // and nothing is there that no client asked for.
    for (name, (parent, prefix)) in &ledger.created {
        if ledger.deleted.contains(name) {
            assert!(
                !claims.contains_key(name),
                "{name}: deleted (acknowledged) but listed (seed {seed})"
            );
        } else if !ledger.delete_unknown.contains(name) {
            let got = claims.get(name).unwrap_or_else(|| {
                panic!(
                    "{name}: created (acknowledged) but not listed (seed {seed}){}",
                    logs()
                )
            });
            assert_eq!((&got.0, &got.1), (parent, prefix), "{name} (seed {seed})");
        }
    }
    for name in claims.keys() {
        assert!(
            ledger.created.contains_key(name) || ledger.create_unknown.contains(name),
            "{name}: listed, never created"
        );
    }
    // Each claim has its one child block, nothing half-written: children and claims match.
    let mut by_claim: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for (child, (parent, prefix, claim_name)) in children {
        assert!(
            by_claim.insert(claim_name, (parent, prefix)).is_none(),
            "two IPPrefixes bound to claim {claim_name} (one is {child}; seed {seed})"
        );
    }
    for (name, (parent, prefix, _)) in claims {
        assert_eq!(
            by_claim.get(name.as_str()),
            Some(&(parent.as_str(), prefix.as_str())),
            "claim {name}'s block (seed {seed})"
        );
    }
    assert_eq!(
        by_claim.len(),
        claims.len(),
        "IPPrefixes without a claim (seed {seed})"
    );
    for (parent, _, _) in &PARENTS {
        let mine: Vec<String> = children
            .values()
            .filter(|c| c.0 == *parent)
            .map(|c| c.1.clone())
            .collect();
        assert_eq!(
            overlaps(&mine),
            vec![],
            "{parent}: children overlap (seed {seed})"
        );
        let count = mine.len();
        let allocated: u128 = mine.iter().map(|p| size(p)).sum();
        let client = clients[2].clone();
        eventually(
            &format!("{parent}'s status counts its {count} children"),
            Duration::from_secs(30),
            || {
                let client = client.clone();
                async move {
                    let (_, p) = must(
                        &client,
                        "GET",
                        &format!("{}/{parent}", prefixes_path()),
                        None,
                    )
                    .await;
                    let s = &p["status"];
                    if s["children"] == count && s["capacity"]["allocated"] == allocated.to_string()
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

    // The watch on replica 0 saw every event once, in revision order: replayed, it ends where
    // the lists are.
    let listed: BTreeMap<String, String> = claims
        .iter()
        .map(|(n, c)| (n.clone(), c.1.clone()))
        .collect();
    let replay = |events: &[Seen]| -> Result<BTreeMap<String, String>, String> {
        let mut state = BTreeMap::new();
        let mut added = BTreeSet::new();
        let mut last = 0;
        for (kind, name, rv, prefix) in events {
            if *rv < last {
                return Err(format!("{kind} {name} at {rv} after {last}"));
            }
            last = *rv;
            match *kind {
                "ADDED" if added.insert(name.clone()) => {
                    state.insert(name.clone(), prefix.clone());
                }
                "MODIFIED" | "DELETED" if state.contains_key(name) => {
                    if *kind == "DELETED" {
                        state.remove(name);
                    }
                }
                _ => return Err(format!("{kind} {name} at {rv}: out of place")),
            }
        }
        Ok(state)
    };
    eventually(
        "the watch on replica 0 ends where the lists are",
        Duration::from_secs(30),
        || {
            let events = seen.lock().unwrap().clone();
            let result = replay(&events);
            let listed = &listed;
            async move {
                match result {
                    Ok(state) if state == *listed => Ok(()),
                    Ok(state) => Err(format!(
                        "{} claims from the watch, {} listed",
                        state.len(),
                        listed.len()
                    )),
                    Err(e) => panic!("the watch on replica 0: {e} (seed {seed})"),
                }
            }
        },
    )
    .await;
    watch.abort();
    let errors = watch_errors.lock().unwrap().clone();
    assert_eq!(
        errors,
        Vec::<String>::new(),
        "the watch on replica 0 (seed {seed})"
    );
    let events = seen.lock().unwrap().clone();
    for (name, (_, prefix)) in &ledger.created {
        assert!(
            events
                .iter()
                .any(|e| e.0 == "ADDED" && &e.1 == name && &e.3 == prefix),
            "the watch missed {name}'s creation (seed {seed})"
        );
    }
    for name in &ledger.deleted {
        assert!(
            events.iter().any(|e| e.0 == "DELETED" && &e.1 == name),
            "the watch missed {name}'s deletion (seed {seed})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_without_quorum_is_a_prompt_503_and_service_resumes_by_itself() {
    let test = "etcd_without_quorum_is_a_prompt_503";
    let Some(etcd) = EtcdCluster::start(test, 3) else {
        return;
    };
    let replicas = Replicas::start(&etcd, 2, &[]);
    let clients = replicas.clients().await;
    create_root(&clients[0], "quorum", "10.77.0.0/16").await;
    let mut acknowledged = BTreeMap::new();
    for i in 0..10 {
        let name = format!("before-{i}");
        let (status, body) = must(
            &clients[i % 2],
            "POST",
            &claims_path("q"),
            Some(&claim(&name, "quorum", 28)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        acknowledged.insert(name, body["status"]["prefix"].clone());
    }

    etcd.kill_member(1);
    etcd.kill_member(2);
    // Each replica, each write: a Status naming etcd, answered (not a hang; the server's own
    // bound on an etcd call is 5 s, this one is generous for a busy machine).
    for (r, client) in clients.iter().enumerate() {
        let name = format!("during-{r}");
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            call(
                client,
                "POST",
                &claims_path("q"),
                Some(&claim(&name, "quorum", 28)),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "replica {r}: a create without etcd quorum hung{}",
                replicas.logs()
            )
        })
        .unwrap_or_else(|e| panic!("replica {r}: no answer: {e}"));
        let (status, body) = answer;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "replica {r}: {body}"
        );
        assert_eq!(body["kind"], "Status", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("etcd"),
            "{body}"
        );
        eventually(
            &format!("replica {r}: /readyz fails on etcd"),
            Duration::from_secs(30),
            || {
                let client = client.clone();
                async move {
                    let (status, body) = client_text(&client, "/readyz?verbose").await?;
                    if status == StatusCode::OK || !body.contains("[-]etcd") {
                        return Err(format!("{status} {body}"));
                    }
                    Ok(())
                }
            },
        )
        .await;
        let (status, body) = client_text(client, "/livez").await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "replica {r}: /livez without etcd: {body}"
        );
    }

    // Back: the same processes serve again, with nothing acknowledged lost.
    etcd.restart_member(1);
    etcd.restart_member(2);
    for (r, client) in clients.iter().enumerate() {
        let mut attempt = 0;
        eventually(
            &format!("replica {r} creates again"),
            Duration::from_secs(60),
            || {
                attempt += 1;
                let name = format!("after-{r}-{attempt}");
                let client = client.clone();
                async move {
                    match call(
                        &client,
                        "POST",
                        &claims_path("q"),
                        Some(&claim(&name, "quorum", 28)),
                    )
                    .await
                    {
                        Ok((StatusCode::CREATED, _)) => Ok(()),
                        Ok((s, b)) => Err(format!("{s} {b}")),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await;
        eventually(
            &format!("replica {r} ready"),
            Duration::from_secs(30),
            || ready(client),
        )
        .await;
        for s in replicas.servers.iter() {
            assert!(s.pid().is_some(), "a replica exited");
        }
    }
    for (r, client) in clients.iter().enumerate() {
        let (_, list) = must(client, "GET", &claims_path("q"), None).await;
        let (_, all) = must(client, "GET", &prefixes_path(), None).await;
        let children: Vec<String> = items(&all)
            .iter()
            .filter(|p| p["spec"]["parentRef"]["name"] == "quorum")
            .filter_map(|p| Some(p["spec"]["prefix"].as_str()?.to_string()))
            .collect();
        assert_eq!(overlaps(&children), vec![], "replica {r}: blocks overlap");
        let blocks: BTreeSet<&str> = children.iter().map(String::as_str).collect();
        for (name, prefix) in &acknowledged {
            let found = items(&list).iter().find(|c| name_of(c) == *name);
            assert_eq!(
                found.map(|c| &c["status"]["prefix"]),
                Some(prefix),
                "replica {r}: {name}"
            );
        }
        // Nothing half-written: whatever claim exists (the 503'd ones may or may not) has its block.
        for c in items(&list) {
            assert_eq!(c["status"]["phase"], "Bound", "replica {r}: {c}");
            let prefix = c["status"]["prefix"].as_str().unwrap_or_default();
            assert!(
                blocks.contains(prefix),
                "replica {r}: {} has no IPPrefix",
                name_of(c)
            );
        }
        assert_eq!(
            blocks.len(),
            items(&list).len(),
            "replica {r}: IPPrefixes without a claim"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_etcd_member_down_replicas_start_and_every_write_succeeds() {
    let test = "with_one_etcd_member_down_replicas_start";
    let Some(etcd) = EtcdCluster::start(test, 3) else {
        return;
    };
    // The first of the endpoints is gone; the other two are a quorum.
    etcd.kill_member(0);
    etcd.wait_healthy(1);
    etcd.wait_healthy(2);
    let mut replicas = tokio::task::block_in_place(|| Replicas::start(&etcd, 1, &[]));
    let client = replicas.client(0).await;
    create_root(&client, "degraded", "10.66.0.0/16").await;
    // Several starts, many writes: none may depend on which endpoint a call goes to.
    for round in 0..3 {
        if round > 0 {
            replicas.servers[0].kill9();
            tokio::task::block_in_place(|| replicas.servers[0].restart());
        }
        let client = replicas.client(0).await;
        for i in 0..20 {
            let name = format!("nic-{round}-{i}");
            let (status, body) = must(
                &client,
                "POST",
                &claims_path("d"),
                Some(&claim(&name, "degraded", 32)),
            )
            .await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{name} with a quorum of etcd up: {body}"
            );
        }
    }
}

/// GET `path` as text (health endpoints answer text).
async fn client_text(client: &kube::Client, path: &str) -> Result<(StatusCode, String), String> {
    let req = common::request("GET", path, None, Vec::new());
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect_bytes().await.map_err(|e| e.to_string())?;
    Ok((parts.status, String::from_utf8_lossy(&bytes).into_owned()))
}
