//! The conformance suite: what every [`Store`] must do, whatever its backend. Each check takes
//! a fresh, empty store; `sled` below runs them on sled, `etcd::tests` on a real etcd.
//! Revisions are compared, never assumed: etcd's start wherever the cluster is, and one commit
//! may give all its keys the same one.
use super::*;
use futures::StreamExt;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("ipprefixes", "", name)
}

fn put(name: &str, value: &str, precondition: Precondition) -> Op {
    Op::Put {
        key: key(name),
        value: Bytes::from(value.to_string()),
        precondition,
    }
}

async fn commit(store: &dyn Store, ops: Vec<Op>) -> Vec<Revision> {
    let c = store.commit(ops).await.expect("commit");
    c.durable.await.expect("durable");
    c.revisions
}

pub(crate) async fn a_commit_gives_its_keys_a_newer_revision(store: &dyn Store) {
    let before = store.revision();
    let first = commit(
        store,
        vec![
            put("a", "1", Precondition::Absent),
            put("b", "2", Precondition::Absent),
        ],
    )
    .await;
    assert_eq!(first.len(), 2);
    assert!(
        first[0] > before && first[1] >= first[0],
        "{before} {first:?}"
    );
    assert!(store.revision() >= first[1]);
    let second = commit(store, vec![put("a", "3", Precondition::Revision(first[0]))]).await;
    assert!(second[0] > first[1], "{first:?} {second:?}");
    let a = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!((a.revision, a.value.as_ref()), (second[0], b"3".as_ref()));
    let b = store.get(&key("b")).await.unwrap().unwrap();
    assert_eq!((b.revision, b.value.as_ref()), (first[1], b"2".as_ref()));
}

pub(crate) async fn a_failed_precondition_writes_nothing_of_the_commit(store: &dyn Store) {
    let rev = commit(store, vec![put("a", "1", Precondition::Absent)]).await[0];
    let err = store
        .commit(vec![
            put("b", "2", Precondition::Absent),
            put("a", "x", Precondition::Absent),
        ])
        .await
        .err()
        .expect("second put must fail");
    match err {
        StoreError::PreconditionFailed { key: k, actual, .. } => {
            assert_eq!((k, actual), (key("a"), Some(rev)))
        }
        other => panic!("{other:?}"),
    }
    assert!(store.get(&key("b")).await.unwrap().is_none());
    let err = store
        .commit(vec![put("a", "x", Precondition::Revision(rev + 100))])
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::PreconditionFailed { .. }));
    let err = store
        .commit(vec![Op::Delete {
            key: key("never"),
            precondition: Precondition::None,
        }])
        .await
        .err()
        .expect("deleting a missing key fails");
    assert!(matches!(err, StoreError::PreconditionFailed { .. }));
    assert_eq!(store.get(&key("a")).await.unwrap().unwrap().value, "1");
}

pub(crate) async fn a_list_pages_in_key_order_and_scopes_by_namespace(store: &dyn Store) {
    let claim = |ns: &str, name: &str| Op::Put {
        key: ObjectKey::new("ipprefixclaims", ns, name),
        value: Bytes::from_static(b"{}"),
        precondition: Precondition::Absent,
    };
    let last = commit(
        store,
        vec![
            claim("b", "x"),
            claim("a", "z"),
            claim("a", "y"),
            claim("ab", "w"),
        ],
    )
    .await;
    let all = KeyRange {
        resource: "ipprefixclaims",
        namespace: None,
    };
    let names = |page: &ListPage| -> Vec<String> {
        page.items
            .iter()
            .map(|v| format!("{}/{}", v.key.namespace, v.key.name))
            .collect()
    };
    let page = store
        .list(&all, None, ReadAt::Latest, Some(2), &mut |_| true)
        .await
        .unwrap();
    assert_eq!(names(&page), vec!["a/y", "a/z"]);
    assert!(page.more);
    assert!(page.revision >= last[3]);
    let page = store
        .list(
            &all,
            Some(&page.items[1].key),
            ReadAt::Latest,
            Some(5),
            &mut |_| true,
        )
        .await
        .unwrap();
    assert_eq!(names(&page), vec!["ab/w", "b/x"]);
    assert!(!page.more);
    // The filter decides what counts towards the limit.
    let page = store
        .list(&all, None, ReadAt::Latest, Some(1), &mut |v| {
            v.key.namespace == "b"
        })
        .await
        .unwrap();
    assert_eq!(names(&page), vec!["b/x"]);
    let ns_a = KeyRange {
        resource: "ipprefixclaims",
        namespace: Some("a".into()),
    };
    let page = store
        .list(&ns_a, None, ReadAt::Latest, None, &mut |_| true)
        .await
        .unwrap();
    assert_eq!(names(&page), vec!["a/y", "a/z"]);
    let prefixes = KeyRange {
        resource: "ipprefixes",
        namespace: None,
    };
    let page = store
        .list(&prefixes, None, ReadAt::Latest, None, &mut |_| true)
        .await;
    assert!(page.unwrap().items.is_empty());
}

/// Later pages read at the first page's revision: on a store that keeps versions they are one
/// snapshot (and say how many keys remain); on one that does not, they see the latest state.
pub(crate) async fn a_list_continued_at_its_revision(store: &dyn Store) {
    let names = ["a", "b", "c", "d", "e"];
    for n in names {
        commit(store, vec![put(n, "1", Precondition::Absent)]).await;
    }
    let all = KeyRange {
        resource: "ipprefixes",
        namespace: None,
    };
    let first = store
        .list(&all, None, ReadAt::Latest, Some(2), &mut |_| true)
        .await
        .unwrap();
    assert!(first.more);
    let at = ReadAt::Revision(first.revision);
    // Written after the first page: after its last key, and in place of a later one.
    let rev_d = store.get(&key("d")).await.unwrap().unwrap().revision;
    commit(
        store,
        vec![
            put("bb", "new", Precondition::Absent),
            put("d", "2", Precondition::Revision(rev_d)),
            Op::Delete {
                key: key("e"),
                precondition: Precondition::None,
            },
        ],
    )
    .await;
    let rest = store
        .list(&all, Some(&first.items[1].key), at, Some(2), &mut |_| true)
        .await
        .unwrap();
    let seen = |page: &ListPage| -> Vec<(String, String)> {
        page.items
            .iter()
            .map(|v| {
                let value = String::from_utf8_lossy(&v.value).into_owned();
                (v.key.name.clone(), value)
            })
            .collect()
    };
    let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
    if store.keeps_versions() {
        assert_eq!(rest.revision, first.revision);
        assert_eq!(seen(&rest), vec![pair("c", "1"), pair("d", "1")]);
        assert!(rest.more);
        assert_eq!((first.remaining, rest.remaining), (Some(3), Some(1)));
        let last = store
            .list(&all, Some(&rest.items[1].key), at, None, &mut |_| true)
            .await
            .unwrap();
        assert_eq!(seen(&last), vec![pair("e", "1")]);
        assert!(!last.more);
    } else {
        assert_eq!(
            seen(&rest),
            vec![pair("bb", "new"), pair("c", "1")],
            "the latest state"
        );
    }
}

pub(crate) async fn a_watch_sees_events_in_order_and_resumes(store: &dyn Store) {
    let start = store.revision();
    let mut w = store.watch(start).unwrap();
    let r1 = commit(store, vec![put("a", "1", Precondition::Absent)]).await[0];
    let r2 = commit(store, vec![put("a", "2", Precondition::Revision(r1))]).await[0];
    let r3 = commit(
        store,
        vec![
            Op::Delete {
                key: key("a"),
                precondition: Precondition::None,
            },
            put("b", "1", Precondition::Absent),
        ],
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ev = w.next().await.unwrap().unwrap();
        seen.push((
            ev.event_type,
            ev.object.key.name.clone(),
            ev.object.revision,
            ev.object.value.clone(),
            ev.previous.clone(),
        ));
    }
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    assert_eq!(
        seen,
        vec![
            (EventType::Added, "a".into(), r1, b("1"), None),
            (EventType::Modified, "a".into(), r2, b("2"), Some(b("1"))),
            (EventType::Deleted, "a".into(), r3[0], b("2"), None),
            (EventType::Added, "b".into(), r3[1], b("1"), None),
        ]
    );
    // Resume after r1: the later ones only, those of one commit together.
    let mut w = store.watch(r1).unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().object.revision, r2);
    assert_eq!(w.next().await.unwrap().unwrap().object.revision, r3[0]);
    assert_eq!(w.next().await.unwrap().unwrap().object.key, key("b"));
}

/// `expire` makes the store forget the history before its current revision (sled: a short
/// history; etcd: a compaction).
pub(crate) async fn a_watch_from_before_the_history_is_expired(
    store: &dyn Store,
    expire: impl std::future::Future<Output = ()>,
) {
    let start = store.revision();
    for i in 0..5 {
        commit(
            store,
            vec![put(&format!("k{i}"), "v", Precondition::Absent)],
        )
        .await;
    }
    expire.await;
    assert!(store.oldest_watchable() > start);
    match store.watch(start) {
        Err(StoreError::Expired { .. }) => {}
        Ok(mut w) => assert!(matches!(
            w.next().await,
            Some(Err(StoreError::Expired { .. }))
        )),
        Err(other) => panic!("{other:?}"),
    }
    let now = store.revision();
    let mut w = store.watch(now).unwrap();
    let next = commit(store, vec![put("k9", "v", Precondition::Absent)]).await[0];
    assert_eq!(w.next().await.unwrap().unwrap().object.revision, next);
}

mod sled {
    use super::*;

    fn open(history: usize) -> (SledStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (SledStore::open(dir.path(), history).unwrap(), dir)
    }

    #[tokio::test]
    async fn a_commit_gives_its_keys_a_newer_revision() {
        super::a_commit_gives_its_keys_a_newer_revision(&open(100).0).await
    }

    #[tokio::test]
    async fn a_failed_precondition_writes_nothing_of_the_commit() {
        super::a_failed_precondition_writes_nothing_of_the_commit(&open(100).0).await
    }

    #[tokio::test]
    async fn a_list_pages_in_key_order_and_scopes_by_namespace() {
        super::a_list_pages_in_key_order_and_scopes_by_namespace(&open(100).0).await
    }

    #[tokio::test]
    async fn a_list_continued_at_its_revision() {
        super::a_list_continued_at_its_revision(&open(100).0).await
    }

    #[tokio::test]
    async fn a_watch_sees_events_in_order_and_resumes() {
        super::a_watch_sees_events_in_order_and_resumes(&open(100).0).await
    }

    #[tokio::test]
    async fn a_watch_from_before_the_history_is_expired() {
        // A history of two events: five commits push the first ones out.
        super::a_watch_from_before_the_history_is_expired(&open(2).0, async {}).await
    }
}
