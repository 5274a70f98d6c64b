//! etcd's compaction as clients meet it (a real etcd; skipped, saying so, without
//! `KUBEBUILDER_ASSETS`): the replicas compact etcd every `--etcd-compaction-interval`; a watch
//! from a revision that is gone is 410 Expired, and a kube-rs watcher that meets that 410 lists
//! again and carries on.
mod common;
#[path = "common/etcd_cluster.rs"]
mod etcd_cluster;

use etcd_cluster::*;
use futures::StreamExt;
use http::StatusCode;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP forwarder standing for a Service in front of the replicas: clients keep one address
/// while the replica behind it changes.
struct Service {
    addr: SocketAddr,
    backend: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start(backend: SocketAddr) -> Service {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Arc::new(Mutex::new(backend));
        let to = backend.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *to.lock().unwrap();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Service {
            addr,
            backend,
            task,
        }
    }

    fn route_to(&self, backend: SocketAddr) {
        *self.backend.lock().unwrap() = backend;
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the watcher handed its user, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String),
    Delete(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_is_410_and_a_kube_rs_watcher_lists_again() {
    let test = "a_watch_from_a_compacted_revision_is_410";
    let Some(etcd) = EtcdCluster::start(test, 1) else {
        return;
    };
    let compacting = [
        "--etcd-servers",
        etcd.servers.as_str(),
        "--etcd-compaction-interval",
        "1s",
        // Only the leader compacts: when replica A goes, B leads within this.
        "--leader-elect-lease-duration",
        "3s",
    ];
    let mut replicas = Replicas::start(&etcd, 1, &compacting[2..]);
    let a = replicas.client(0).await;
    create_root(&a, "cpool", "10.55.0.0/16").await;
    let (status, c1) = must(
        &a,
        "POST",
        &claims_path("w"),
        Some(&claim("c1", "cpool", 32)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{c1}");
    let r1 = c1["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // A kube-rs watcher on claims in "w", through the Service, which routes to replica A.
    let service = Service::start(replicas.servers[0].addr).await;
    let mut config = replicas.servers[0].kube_config().await;
    config.cluster_url = format!("https://{}", service.addr).parse().unwrap();
    let gvk = GroupVersionKind::gvk("ipam.miloapis.com", "v1alpha1", "IPPrefixClaim");
    let api: Api<DynamicObject> = Api::namespaced_with(
        kube::Client::try_from(config).unwrap(),
        "w",
        &ApiResource::from_gvk_with_plural(&gvk, "ipprefixclaims"),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let watching = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(ev) = events.next().await {
            let name = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
            let ev = match ev {
                Ok(watcher::Event::Init) => Seen::Init,
                Ok(watcher::Event::InitApply(o)) => Seen::InitApply(name(&o)),
                Ok(watcher::Event::InitDone) => Seen::InitDone,
                Ok(watcher::Event::Apply(o)) => Seen::Apply(name(&o)),
                Ok(watcher::Event::Delete(o)) => Seen::Delete(name(&o)),
                Err(_) => continue, // the backoff retries
            };
            sink.lock().unwrap().push(ev);
        }
    });
    let names = |seen: &[Seen]| -> (usize, BTreeSet<String>) {
        // The watcher's user's view: a list replaces everything, then events apply.
        let (mut inits, mut state, mut listing) = (0, BTreeSet::new(), BTreeSet::new());
        for ev in seen {
            match ev {
                Seen::Init => {
                    inits += 1;
                    listing.clear();
                }
                Seen::InitApply(n) => {
                    listing.insert(n.clone());
                }
                Seen::InitDone => state = std::mem::take(&mut listing),
                Seen::Apply(n) => {
                    state.insert(n.clone());
                }
                Seen::Delete(n) => {
                    state.remove(n);
                }
            }
        }
        (inits, state)
    };
    let expect = |inits: usize, want: &[&str]| {
        let seen = seen.clone();
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        move || {
            let got = names(&seen.lock().unwrap());
            let ok = got == (inits, want.clone());
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            }
        }
    };
    eventually(
        "the watcher lists c1",
        Duration::from_secs(30),
        expect(1, &["c1"]),
    )
    .await;

    // Replica A goes; etcd moves on past anything A could have told the watcher, then replica B
    // starts, changes "w" while the watcher is cut off, and compacts etcd past all of it.
    replicas.servers[0].kill9();
    let mut kv = etcd.client().await;
    let bump = kv.put("/ipam-test/bump", "1", None).await.unwrap();
    let gone = bump.header().unwrap().revision();
    let b = replicas.add(&compacting);
    let b_client = replicas.client(b).await;
    let (status, body) = must(
        &b_client,
        "DELETE",
        &format!("{}/c1", claims_path("w")),
        None,
    )
    .await;
    assert!(status.is_success(), "{body}");
    let (status, body) = must(
        &b_client,
        "POST",
        &claims_path("w"),
        Some(&claim("c2", "cpool", 32)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut filler = 0;
    eventually(
        "the replicas compact etcd past the watcher's revision",
        Duration::from_secs(90),
        || {
            filler += 1;
            let (b_client, name) = (b_client.clone(), format!("f{filler}"));
            let mut kv = kv.clone();
            async move {
                let (status, body) = must(
                    &b_client,
                    "POST",
                    &claims_path("filler"),
                    Some(&claim(&name, "cpool", 32)),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                let opts = etcd_client::GetOptions::new().with_revision(gone);
                match kv.get("/ipam-test/bump", Some(opts)).await {
                    Err(e) if e.to_string().contains("compacted") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;

    // A watch from c1's revision is 410 Expired: as kube-apiserver answers it, a watch whose
    // one event is the 410 (watchers list again on that event).
    let path = format!(
        "{}?watch=true&resourceVersion={r1}&timeoutSeconds=5",
        claims_path("w")
    );
    let (status, text) = text_of(&b_client, &path).await;
    let event: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("a watch from compacted revision {r1}: {status} {text}: {e}"));
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["code"].as_u64(),
            event["object"]["reason"].as_str()
        ),
        (Some("ERROR"), Some(410), Some("Expired")),
        "a watch from compacted revision {r1}"
    );

    // The watcher, routed to B, meets that 410, lists again (c1 gone, c2 there) and follows.
    service.route_to(replicas.servers[b].addr);
    eventually(
        "the watcher lists again after the 410",
        Duration::from_secs(60),
        expect(2, &["c2"]),
    )
    .await;
    let (status, body) = must(
        &b_client,
        "POST",
        &claims_path("w"),
        Some(&claim("c3", "cpool", 32)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    eventually(
        "the watcher sees c3",
        Duration::from_secs(30),
        expect(2, &["c2", "c3"]),
    )
    .await;
    watching.abort();
}

/// GET `path`, the body as text (a watch's lines, or a Status).
async fn text_of(client: &kube::Client, path: &str) -> (StatusCode, String) {
    let req = common::request("GET", path, None, Vec::new());
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    (parts.status, String::from_utf8_lossy(&bytes).into_owned())
}
