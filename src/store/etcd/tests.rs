//! The conformance suite against a real etcd, started by each test from `$KUBEBUILDER_ASSETS/etcd`
//! (skipped, saying so, without it), and what only etcd does.
use super::*;
use crate::store::tests as conformance;
use std::process::{Child, Command, Stdio};

/// One etcd member on free loopback ports in a temp dir, killed on drop.
pub(crate) struct TestEtcd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("a free port");
    listener.local_addr().expect("its address").port()
}

impl TestEtcd {
    /// `None` (said on stderr) when `KUBEBUILDER_ASSETS` is not set.
    pub(crate) fn start(test: &str) -> Option<TestEtcd> {
        let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|a| !a.is_empty()) else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: KUBEBUILDER_ASSETS is not set, so there is no etcd to test against. Run with KUBEBUILDER_ASSETS=$(../shared/envtest/assets.sh) (as .ci/run does)."
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(std::path::Path::new(&assets).join("etcd"))
            .args(["--data-dir", &dir.path().join("etcd").display().to_string()])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        Some(TestEtcd {
            child,
            url,
            _dir: dir,
        })
    }

    /// Kill etcd (as a crash or a partition would look to its clients).
    pub(crate) fn kill(&mut self) {
        self.child.kill().expect("kill etcd");
        self.child.wait().expect("etcd exits");
    }

    pub(crate) fn options(&self, prefix: &str, history: usize) -> EtcdOptions {
        EtcdOptions {
            servers: vec![self.url.clone()],
            prefix: prefix.to_string(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            compaction_interval: Duration::ZERO,
            watch_history: history.into(),
            leader_lease: Duration::from_secs(2),
        }
    }

    /// A plain client for writes behind the store's back, once etcd answers.
    pub(crate) async fn raw_client(&self) -> Client {
        drop(self.store("/registry", 100).await);
        Client::connect([self.url.as_str()], None).await.unwrap()
    }

    /// A store on this etcd, once etcd answers.
    pub(crate) async fn store(&self, prefix: &str, history: usize) -> EtcdStore {
        let opts = self.options(prefix, history);
        for _ in 0..100 {
            if let Ok(store) = EtcdStore::connect(&opts).await {
                return store;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        EtcdStore::connect(&opts).await.expect("etcd answers")
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(etcd) = TestEtcd::start(stringify!($name)) else { return };
            conformance::$name(&etcd.store("/registry", 100).await).await
        }
    )*};
}

conformance!(
    a_commit_gives_its_keys_a_newer_revision,
    a_failed_precondition_writes_nothing_of_the_commit,
    a_list_pages_in_key_order_and_scopes_by_namespace,
    a_list_continued_at_its_revision,
    a_watch_sees_events_in_order_and_resumes,
);

#[tokio::test]
async fn a_watch_from_before_the_history_is_expired() {
    let Some(etcd) = TestEtcd::start("a_watch_from_before_the_history_is_expired") else {
        return;
    };
    let store = etcd.store("/registry", 2).await;
    let compacted = store.clone();
    conformance::a_watch_from_before_the_history_is_expired(&store, async move {
        compacted
            .compact(compacted.revision())
            .await
            .expect("compact");
    })
    .await
}

#[tokio::test]
async fn a_list_continued_at_a_compacted_revision_is_expired() {
    let Some(etcd) = TestEtcd::start("a_list_continued_at_a_compacted_revision_is_expired") else {
        return;
    };
    let store = etcd.store("/registry", 100).await;
    let key = |n: &str| ObjectKey::new("ipprefixes", "", n);
    for n in ["a", "b", "c"] {
        let c = store
            .commit(vec![Op::Put {
                key: key(n),
                value: Bytes::from_static(b"{}"),
                precondition: Precondition::Absent,
            }])
            .await
            .unwrap();
        c.durable.await.unwrap();
    }
    let all = KeyRange {
        resource: "ipprefixes",
        namespace: None,
    };
    let first = store
        .list(&all, None, ReadAt::Latest, Some(1), &mut |_| true)
        .await
        .unwrap();
    let c = store
        .commit(vec![Op::Delete {
            key: key("c"),
            precondition: Precondition::None,
        }])
        .await
        .unwrap();
    store.compact(c.revisions[0]).await.expect("compact");
    let err = store
        .list(
            &all,
            Some(&key("a")),
            ReadAt::Revision(first.revision),
            Some(1),
            &mut |_| true,
        )
        .await
        .expect_err("compacted");
    assert!(
        matches!(err, StoreError::Expired { requested, .. } if requested == first.revision),
        "{err:?}"
    );
}

#[tokio::test]
async fn keys_live_under_the_prefix_and_group_as_kubernetes_keeps_them() {
    let Some(etcd) = TestEtcd::start("keys_live_under_the_prefix") else {
        return;
    };
    let store = etcd.store("/custom", 100).await;
    let c = store
        .commit(vec![
            Op::Put {
                key: ObjectKey::new("ipprefixes", "", "root"),
                value: Bytes::from_static(b"{}"),
                precondition: Precondition::Absent,
            },
            Op::Put {
                key: ObjectKey::new("ipprefixclaims", "ns", "c"),
                value: Bytes::from_static(b"{}"),
                precondition: Precondition::Absent,
            },
        ])
        .await
        .unwrap();
    c.durable.await.unwrap();
    let mut client = Client::connect([etcd.url.as_str()], None).await.unwrap();
    let got = client
        .get(
            "/custom/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    // The election's key comes and goes with its lease.
    let keys: Vec<&str> = got
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap())
        .filter(|k| !k.ends_with("/leader"))
        .collect();
    assert_eq!(
        keys,
        [
            "/custom/ipam.miloapis.com/ipprefixclaims/ns/c",
            "/custom/ipam.miloapis.com/ipprefixes/root",
            // Bumped by every commit (consistent reads).
            "/custom/ipam.miloapis.com/last-write",
        ]
    );
}

#[tokio::test]
async fn another_stores_writes_reach_this_ones_watch_and_reads() {
    let Some(etcd) = TestEtcd::start("another_stores_writes_reach_this_ones_watch") else {
        return;
    };
    let (a, b) = (
        etcd.store("/registry", 100).await,
        etcd.store("/registry", 100).await,
    );
    let mut watch = b.watch(b.revision()).unwrap();
    let key = ObjectKey::new("ipprefixes", "", "r");
    let c = a
        .commit(vec![Op::Put {
            key: key.clone(),
            value: Bytes::from_static(b"1"),
            precondition: Precondition::Absent,
        }])
        .await
        .unwrap();
    assert_eq!(b.get(&key).await.unwrap().unwrap().revision, c.revisions[0]);
    use futures::StreamExt;
    let ev = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (ev.event_type, ev.object.revision),
        (EventType::Added, c.revisions[0])
    );
    // Both wrote on the same read: one of them wins.
    let err = b
        .commit(vec![Op::Put {
            key: key.clone(),
            value: Bytes::from_static(b"2"),
            precondition: Precondition::Absent,
        }])
        .await
        .err()
        .expect("taken");
    assert!(
        matches!(err, StoreError::PreconditionFailed { actual: Some(r), .. } if r == c.revisions[0]),
        "{err:?}"
    );
}

#[tokio::test]
async fn unreachable_etcd_fails_at_start_naming_the_flag() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let opts = EtcdOptions {
        servers: vec![url.clone()],
        prefix: "/registry".into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        compaction_interval: Duration::ZERO,
        watch_history: 10.into(),
        leader_lease: Duration::from_secs(2),
    };
    let err = EtcdStore::connect(&opts).await.err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("--etcd-servers") && msg.contains(&url),
        "{msg}"
    );
}

#[tokio::test]
async fn etcd_gone_is_unavailable_fast_and_not_ready() {
    let Some(mut etcd) = TestEtcd::start("etcd_gone_is_unavailable_fast_and_not_ready") else {
        return;
    };
    let store = etcd.store("/registry", 100).await;
    assert_eq!(store.ready(), Ok(()));
    etcd.child.kill().unwrap();
    etcd.child.wait().unwrap();
    let err = store
        .get(&ObjectKey::new("ipprefixes", "", "x"))
        .await
        .expect_err("no etcd");
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("etcd")),
        "{err:?}"
    );
    assert!(store.ready().unwrap_err().contains("etcd"));
    assert_eq!(store.failure(), None);
}

#[tokio::test]
async fn reads_come_from_the_cache_and_see_every_acknowledged_write() {
    let Some(etcd) = TestEtcd::start("reads_come_from_the_cache_and_see_every_acknowledged_write")
    else {
        return;
    };
    let mut raw = etcd.raw_client().await;
    // Written before the store starts: its cache is filled with it.
    raw.put("/registry/ipam.miloapis.com/ipprefixes/before", "0", None)
        .await
        .unwrap();
    let store = etcd.store("/registry", 100).await;
    let key = |n: &str| ObjectKey::new("ipprefixes", "", n);
    assert_eq!(store.get(&key("before")).await.unwrap().unwrap().value, "0");
    // Another replica writes: every read here must see what it acknowledged.
    let other = etcd.store("/registry", 100).await;
    for i in 0..20 {
        let put = other
            .commit(vec![Op::Put {
                key: key(&format!("k{i:02}")),
                value: Bytes::from(i.to_string()),
                precondition: Precondition::Absent,
            }])
            .await
            .unwrap();
        // Writes elsewhere in etcd move its revision with no event under our root: the cache
        // must learn it is current all the same.
        raw.put(format!("/elsewhere/{i}"), "x", None).await.unwrap();
        let got = store.get(&key(&format!("k{i:02}"))).await.unwrap().unwrap();
        assert_eq!(
            (got.revision, got.value.as_ref()),
            (put.revisions[0], i.to_string().as_bytes())
        );
        assert_eq!(every_ipprefix(&store).await.items.len(), i + 2);
    }
    other
        .commit(vec![Op::Delete {
            key: key("k00"),
            precondition: Precondition::None,
        }])
        .await
        .unwrap();
    assert_eq!(store.get(&key("k00")).await.unwrap(), None);
    // Every read above was answered from the cache, none by giving up on it.
    assert_eq!(store.inner.fallbacks.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_start_fills_the_cache_with_every_key_at_one_revision() {
    let Some(etcd) = TestEtcd::start("a_start_fills_the_cache_with_every_key") else {
        return;
    };
    let mut raw = etcd.raw_client().await;
    // More keys than one keys page and one value range hold (small in tests), with keys
    // just outside the root on both sides.
    raw.put("/registry/ipam.miloapis.co", "outside", None)
        .await
        .unwrap();
    raw.put("/registry/ipam.miloapis.com0", "outside", None)
        .await
        .unwrap();
    let mut written = Vec::new();
    for i in 0..37 {
        let put = raw
            .put(
                format!("/registry/ipam.miloapis.com/ipprefixes/p{i:02}"),
                format!("v{i}"),
                None,
            )
            .await
            .unwrap();
        written.push((
            format!("p{i:02}"),
            put.header().unwrap().revision() as Revision,
        ));
    }
    let store = etcd.store("/registry", 100).await;
    let page = every_ipprefix(&store).await;
    let listed: Vec<(String, Revision, String)> = page
        .items
        .iter()
        .map(|v| {
            let value = String::from_utf8(v.value.to_vec()).unwrap();
            (v.key.name.clone(), v.revision, value)
        })
        .collect();
    let expected: Vec<(String, Revision, String)> = written
        .iter()
        .enumerate()
        .map(|(i, (name, rev))| (name.clone(), *rev, format!("v{i}")))
        .collect();
    assert_eq!(listed, expected);
    // Answered by the filled cache.
    assert_eq!(store.inner.fallbacks.load(Ordering::Relaxed), 0);
    assert!(!page.more);
}

/// A consistent list of every IPPrefix key.
async fn every_ipprefix(store: &EtcdStore) -> ListPage {
    let all = KeyRange {
        resource: "ipprefixes",
        namespace: None,
    };
    store
        .list(&all, None, ReadAt::Latest, None, &mut |_| true)
        .await
        .unwrap()
}
