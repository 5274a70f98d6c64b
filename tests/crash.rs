//! Durability under SIGKILL: 16 clients create and delete claims, the server is killed at a
//! random instant, restarted on the same data directory, and the stored state must agree with
//! every acknowledged answer:
//! - every acknowledged create is present, bound to the same prefix (unless later deleted),
//! - every acknowledged delete is gone,
//! - no two allocated blocks overlap, every child IPPrefix and claim point at each other,
//! - the parent's capacity counts exactly its children.
//!
//! Requests in flight at the kill may land either way; only their outcome is unknown.
//! `CRASH_ITERATIONS` (default 3) sets how many kill/restart rounds run.
//!
//! The same load under SIGTERM must end in a clean exit with the same guarantees, and with
//! nothing refused: the server drains what is in flight before it closes the store.
mod common;

use common::TestServer;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";
const ROOT: &str = "crash-root";
const WORKERS: usize = 16;

/// What one worker was told by the server.
#[derive(Default)]
struct Acked {
    /// claim name → allocated prefix, for acknowledged creates.
    created: HashMap<String, String>,
    /// Acknowledged deletes.
    deleted: HashSet<String>,
    /// Requests without an answer (in flight at the kill): either outcome is fine.
    uncertain: HashSet<String>,
    /// Creates answered 503 (the store refusing writes it can no longer make durable).
    refused: usize,
}

async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let mut req = http::Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let req = req
        .body(kube::client::Body::from(body))
        .map_err(|e| e.to_string())?;
    let resp = client.send(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect_bytes()
        .await
        .map_err(|e| e.to_string())?;
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, v))
}

async fn worker(client: kube::Client, round: usize, id: usize, stop: Instant) -> Acked {
    let base = format!("{GV}/namespaces/crash-{id}/ipprefixclaims");
    let mut acked = Acked::default();
    let mut live: Vec<String> = Vec::new();
    let mut seq = 0usize;
    // Keep going past `stop` until the kill cuts us off (a bounded number of extra rounds).
    let hard_stop = stop + Duration::from_secs(10);
    while Instant::now() < hard_stop {
        seq += 1;
        if seq % 3 == 0 && !live.is_empty() {
            let name = live.remove(seq % live.len());
            match send(&client, "DELETE", &format!("{base}/{name}"), None).await {
                Ok((200, _)) => {
                    acked.deleted.insert(name);
                }
                Ok((code, body)) => panic!("delete {name}: HTTP {code}: {body}"),
                Err(_) => {
                    acked.uncertain.insert(name);
                    return acked;
                }
            }
        } else {
            let name = format!("r{round}-w{id}-{seq}");
            let body = json!({
                "apiVersion": "ipam.miloapis.com/v1alpha1",
                "kind": "IPPrefixClaim",
                "metadata": {"name": name},
                "spec": {"prefixLength": 128, "parentRef": {"name": ROOT}},
            });
            match send(&client, "POST", &base, Some(body)).await {
                Ok((201, v)) => {
                    let prefix = v["status"]["prefix"].as_str().unwrap_or_default();
                    assert!(
                        !prefix.is_empty(),
                        "create {name} answered without a prefix"
                    );
                    acked.created.insert(name.clone(), prefix.to_string());
                    live.push(name);
                }
                // The store refuses writes it cannot make durable (e.g. shutting down): fine.
                Ok((503, _)) => {
                    acked.uncertain.insert(name);
                    acked.refused += 1;
                    return acked;
                }
                Ok((code, body)) => panic!("create {name}: HTTP {code}: {body}"),
                Err(_) => {
                    acked.uncertain.insert(name);
                    return acked;
                }
            }
        }
    }
    acked
}

fn items(list: &Value) -> &Vec<Value> {
    list["items"].as_array().expect("a list")
}

fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Check the restarted server against everything acknowledged so far.
async fn verify(server: &TestServer, acked: &Acked) {
    let client = server.client().await;
    let (code, claims) = send(&client, "GET", &format!("{GV}/ipprefixclaims"), None)
        .await
        .expect("list claims");
    assert_eq!(code, 200);
    let (code, prefixes) = send(&client, "GET", &format!("{GV}/ipprefixes"), None)
        .await
        .expect("list prefixes");
    assert_eq!(code, 200);

    let claims: BTreeMap<String, &Value> = items(&claims).iter().map(|c| (name_of(c), c)).collect();
    let prefixes: BTreeMap<String, &Value> =
        items(&prefixes).iter().map(|p| (name_of(p), p)).collect();

    for (name, prefix) in &acked.created {
        if acked.deleted.contains(name) || acked.uncertain.contains(name) {
            continue;
        }
        let claim = claims
            .get(name)
            .unwrap_or_else(|| panic!("acknowledged create {name} is missing after the crash"));
        assert_eq!(
            claim["status"]["prefix"].as_str(),
            Some(prefix.as_str()),
            "claim {name} came back with another prefix"
        );
    }
    for name in &acked.deleted {
        assert!(
            !claims.contains_key(name),
            "acknowledged delete of {name} came back after the crash"
        );
    }

    // Children of the root: each bound to a live claim that points back, no overlaps.
    let mut nets = Vec::new();
    for (pname, p) in &prefixes {
        if p["spec"]["parentRef"]["name"].as_str() != Some(ROOT) {
            continue;
        }
        let net: ipnet::IpNet = p["spec"]["prefix"].as_str().unwrap().parse().unwrap();
        nets.push(net);
        let claim_name = p["spec"]["claimRef"]["name"].as_str().unwrap_or_default();
        let claim = claims
            .get(claim_name)
            .unwrap_or_else(|| panic!("ipprefix {pname} is bound to missing claim {claim_name}"));
        assert_eq!(
            claim["status"]["prefixRef"]["name"].as_str(),
            Some(pname.as_str())
        );
        assert_eq!(claim["status"]["prefix"], p["spec"]["prefix"]);
    }
    for (name, c) in &claims {
        let pref = c["status"]["prefixRef"]["name"]
            .as_str()
            .unwrap_or_default();
        assert!(
            prefixes.contains_key(pref),
            "claim {name} is bound to missing ipprefix {pref:?}"
        );
    }
    nets.sort();
    for w in nets.windows(2) {
        assert!(
            !w[0].contains(&w[1].network()) && !w[1].contains(&w[0].network()),
            "{} and {} overlap",
            w[0],
            w[1]
        );
    }
    let root = prefixes.get(ROOT).expect("root survives");
    let allocated: u128 = nets.iter().map(|n| 1u128 << (128 - n.prefix_len())).sum();
    assert_eq!(
        root["status"]["capacity"]["allocated"].as_str(),
        Some(allocated.to_string().as_str()),
        "parent capacity disagrees with its {} children",
        nets.len()
    );
    assert_eq!(root["status"]["children"].as_i64(), Some(nets.len() as i64));
}

/// A fresh server with the /64 the workers claim from.
async fn start_with_root() -> TestServer {
    let server = tokio::task::block_in_place(TestServer::start);
    let client = server.client().await;
    let root = json!({
        "apiVersion": "ipam.miloapis.com/v1alpha1",
        "kind": "IPPrefix",
        "metadata": {"name": ROOT},
        "spec": {"prefix": "fd00:c0de::/64"},
    });
    let (code, body) = send(&client, "POST", &format!("{GV}/ipprefixes"), Some(root))
        .await
        .unwrap();
    assert_eq!(code, 201, "{body}");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_creates_and_deletes_loses_no_acknowledged_write() {
    let rounds: usize = std::env::var("CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut server = start_with_root().await;
    let mut all = Acked::default();
    for round in 0..rounds {
        let client = server.client().await;
        // Kill somewhere between 0.5 s and 1.5 s into the load.
        let kill_after = Duration::from_millis(500 + (round as u64 * 397) % 1000);
        let stop = Instant::now() + kill_after;
        let handles: Vec<_> = (0..WORKERS)
            .map(|id| tokio::spawn(worker(client.clone(), round, id, stop)))
            .collect();
        tokio::time::sleep_until(stop.into()).await;
        tokio::task::block_in_place(|| server.kill9());
        let mut ops = 0;
        for h in handles {
            let a = h.await.expect("worker panicked");
            ops += a.created.len() + a.deleted.len();
            all.created.extend(a.created);
            all.deleted.extend(a.deleted);
            all.uncertain.extend(a.uncertain);
        }
        assert!(
            ops > 0,
            "round {round}: no request was acknowledged before the kill"
        );
        tokio::task::block_in_place(|| server.restart());
        verify(&server, &all).await;
        eprintln!(
            "round {round}: killed after {kill_after:?}, {ops} acknowledged operations, state verified"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_creates_and_deletes_drains_them_and_keeps_every_acknowledged_write() {
    let mut server = start_with_root().await;
    let client = server.client().await;
    let stop = Instant::now() + Duration::from_millis(700);
    let handles: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(client.clone(), 0, id, stop)))
        .collect();
    tokio::time::sleep_until(stop.into()).await;
    let status = tokio::task::block_in_place(|| server.stop());
    assert!(status.success(), "exit status on SIGTERM: {status}");
    let mut all = Acked::default();
    for h in handles {
        let a = h.await.expect("worker panicked");
        all.created.extend(a.created);
        all.deleted.extend(a.deleted);
        all.uncertain.extend(a.uncertain);
        all.refused += a.refused;
    }
    assert!(
        !all.created.is_empty(),
        "no create was acknowledged before SIGTERM"
    );
    // Every request the server read was answered before the store closed: the clients saw
    // connections close, never a 503.
    assert_eq!(all.refused, 0, "creates refused while draining");
    // The clean exit flushed and checkpointed the store (the log is read by another thread).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr().contains("store checkpointed") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stderr = server.stderr();
    assert!(stderr.contains("store checkpointed"), "{stderr}");
    tokio::task::block_in_place(|| server.restart());
    verify(&server, &all).await;
    // A request that got no answer was never read: the server finished every request it had
    // begun and closed idle connections. So an unanswered create left nothing behind and an
    // unanswered delete removed nothing; a request cut off mid-way could have done either.
    let client = server.client().await;
    let (_, claims) = send(&client, "GET", &format!("{GV}/ipprefixclaims"), None)
        .await
        .expect("list claims");
    let stored: HashSet<String> = items(&claims).iter().map(name_of).collect();
    for name in &all.uncertain {
        let was_created = all.created.contains_key(name);
        assert_eq!(
            stored.contains(name),
            was_created,
            "{name}: an unanswered {} took effect",
            if was_created { "delete" } else { "create" }
        );
    }
    eprintln!(
        "{} creates and {} deletes acknowledged, {} requests unanswered at SIGTERM and without effect",
        all.created.len(),
        all.deleted.len(),
        all.uncertain.len()
    );
}
