//! sled's own behaviour: its format, crash recovery, group commit and checkpoints. What every
//! store must do is in `tests.rs`.
use super::*;

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

fn open(dir: &std::path::Path) -> SledStore {
    SledStore::open(dir, 100).expect("open store")
}

async fn commit(store: &SledStore, ops: Vec<Op>) -> Vec<Revision> {
    let c = store.commit(ops).await.expect("commit");
    c.durable.await.expect("durable");
    c.revisions
}

#[tokio::test]
async fn reopen_keeps_objects_and_revision_counter() {
    let dir = tempfile::tempdir().unwrap();
    commit_and_close(dir.path(), &["a", "b"]).await;
    let store = reopen(dir.path()).await;
    assert_eq!(store.revision(), 2);
    assert_eq!(store.get(&key("b")).await.unwrap().unwrap().revision, 2);
    assert_eq!(
        commit(&store, vec![put("c", "1", Precondition::Absent)]).await,
        vec![3]
    );
}

/// Why opening `dir` is refused, once sled has let go of the file lock it holds a moment after
/// the handle that made the directory is dropped.
fn refusal(dir: &std::path::Path) -> StoreError {
    let mut err = SledStore::open(dir, 10).err().expect("must refuse");
    for _ in 0..100 {
        if !err.to_string().contains("in use by another") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        err = SledStore::open(dir, 10).err().expect("must refuse");
    }
    err
}

#[tokio::test]
async fn foreign_data_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.insert("something", "else").unwrap();
        db.flush().unwrap();
    }
    let err = refusal(dir.path());
    assert!(
        err.to_string()
            .contains("not an ipam-apiserver data directory"),
        "{err}"
    );
}

#[tokio::test]
async fn foreign_files_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("db"), b"someone else's file").unwrap();
    let err = refusal(dir.path());
    assert!(
        err.to_string()
            .contains("not an ipam-apiserver data directory"),
        "{err}"
    );
    // sled would have reinitialized it; the preflight check keeps it as it was.
    assert_eq!(
        std::fs::read(db.join("db")).unwrap(),
        b"someone else's file"
    );
}

/// One commit creating each of `names` (value "1"), then close the store.
async fn commit_and_close(dir: &std::path::Path, names: &[&str]) {
    let store = open(dir);
    let puts = names
        .iter()
        .map(|n| put(n, "1", Precondition::Absent))
        .collect();
    commit(&store, puts).await;
    store.close();
}

/// `open` once the previous handle's store thread has released the directory (sled releases its
/// file lock when the last handle drops).
async fn once_free<T, E>(open: impl Fn() -> Result<T, E>) -> T {
    loop {
        match open() {
            Ok(opened) => break opened,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// Open the store again once the directory is free.
async fn reopen(dir: &std::path::Path) -> SledStore {
    once_free(|| SledStore::open(dir, 100)).await
}

#[tokio::test]
async fn a_commit_cut_short_by_a_crash_is_finished_at_open() {
    use super::sled_store::{encode_commit, encode_value, object_key, KEY_COMMIT};
    let dir = tempfile::tempdir().unwrap();
    commit_and_close(dir.path(), &["a", "gone"]).await;
    {
        // What a crash leaves after the group of commits 3..=5 wrote its record and only its
        // first key.
        let db = once_free(|| sled::open(dir.path().join("db"))).await;
        let writes = [
            (object_key(&key("b")), Some(encode_value(3, b"new").into())),
            (object_key(&key("a")), Some(encode_value(4, b"2").into())),
            (object_key(&key("gone")), None),
        ];
        db.insert(KEY_COMMIT, encode_commit(5, writes.iter()))
            .unwrap();
        db.insert(writes[0].0.as_slice(), writes[0].1.as_deref().unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let store = reopen(dir.path()).await;
    assert_eq!(store.revision(), 5);
    let b = store.get(&key("b")).await.unwrap().unwrap();
    assert_eq!((b.revision, b.value.as_ref()), (3, b"new".as_ref()));
    let a = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!((a.revision, a.value.as_ref()), (4, b"2".as_ref()));
    assert!(store.get(&key("gone")).await.unwrap().is_none());
    assert_eq!(
        commit(&store, vec![put("c", "1", Precondition::Absent)]).await,
        vec![6]
    );
}

#[tokio::test]
async fn commits_handed_over_together_are_all_kept_behind_bounded_records() {
    use super::sled_store::{decode_commit, GROUP_MAX_COMMITS, KEY_COMMIT};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Handed over back to back, faster than an fsync: the store thread takes most of them
    // from its queue at once, more than one record may cover.
    let n = 5 * GROUP_MAX_COMMITS;
    let pending: Vec<_> = (0..n)
        .map(|i| {
            let ops = vec![
                put(
                    &format!("claim-{i:03}"),
                    &i.to_string(),
                    Precondition::Absent,
                ),
                put(
                    &format!("child-{i:03}"),
                    &i.to_string(),
                    Precondition::Absent,
                ),
            ];
            store.commit_now(ops).expect("commit")
        })
        .collect();
    for c in pending {
        c.durable.await.expect("durable");
    }
    let check = |store: &SledStore| {
        for i in 0..n {
            for name in [format!("claim-{i:03}"), format!("child-{i:03}")] {
                let got = store.get_now(&key(&name)).unwrap().expect("kept");
                assert_eq!(
                    got.revision,
                    2 * i as u64 + if name.starts_with("claim") { 1 } else { 2 }
                );
                assert_eq!(got.value.as_ref(), i.to_string().as_bytes());
            }
        }
    };
    check(&store);
    store.close();
    drop(store);
    {
        let db = once_free(|| sled::open(dir.path().join("db"))).await;
        let record = db.get(KEY_COMMIT).unwrap().expect("a roll-forward record");
        let (revision, writes) = decode_commit(&record).expect("decodes");
        assert_eq!(revision, 2 * n as u64);
        assert!(
            !writes.is_empty() && writes.len() <= 2 * GROUP_MAX_COMMITS,
            "{} writes in one record",
            writes.len()
        );
    }
    check(&reopen(dir.path()).await);
}

#[tokio::test]
async fn a_format_1_directory_is_upgraded_in_place() {
    use super::sled_store::{encode_value, object_key, KEY_FORMAT};
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.insert(KEY_FORMAT, "ipam-apiserver/1").unwrap();
        db.insert("m/revision", &7u64.to_be_bytes()).unwrap();
        db.insert(object_key(&key("a")), encode_value(7, b"old"))
            .unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.revision(), 7);
    let a = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!((a.revision, a.value.as_ref()), (7, b"old".as_ref()));
    assert_eq!(
        commit(&store, vec![put("a", "new", Precondition::Revision(7))]).await,
        vec![8]
    );
    store.close();
    drop(store);
    let store = reopen(dir.path()).await;
    assert_eq!(store.revision(), 8);
}

#[test]
fn a_range_lays_unwritten_values_over_sleds_in_key_order() {
    use super::sled_store::Overlaid;
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("db")).unwrap();
    for k in ["p/a", "p/b", "p/d", "p/f", "q/a"] {
        db.insert(k, "old").unwrap();
    }
    let over: Vec<(Vec<u8>, Option<Bytes>)> = [
        ("p/b", Some("new")), // replaces sled's value
        ("p/c", Some("new")), // between two of sled's keys
        ("p/d", None),        // removed, not yet from sled
        ("p/g", Some("new")), // after sled's last key
        ("q/b", Some("new")), // outside the prefix
        ("o/z", Some("new")), // before the prefix
    ]
    .into_iter()
    .map(|(k, v)| {
        (
            k.as_bytes().to_vec(),
            v.map(|v| Bytes::from_static(v.as_bytes())),
        )
    })
    .collect();
    let read = |start: &str| -> Vec<String> {
        let pairs = over.iter().map(|(k, v)| (k, v));
        Overlaid::new(&db, pairs, start.into(), b"p/".to_vec())
            .map(|e| {
                let (k, v) = e.unwrap();
                format!(
                    "{}={}",
                    String::from_utf8(k).unwrap(),
                    std::str::from_utf8(&v).unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        read("p/"),
        ["p/a=old", "p/b=new", "p/c=new", "p/f=old", "p/g=new"]
    );
    assert_eq!(read("p/b\0"), ["p/c=new", "p/f=old", "p/g=new"]);
    assert_eq!(read("p/f"), ["p/f=old", "p/g=new"]);
}

#[tokio::test]
async fn a_checkpoint_of_a_closed_store_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    commit_and_close(dir.path(), &["a", "b"]).await;
    SledStore::checkpoint(dir.path(), std::time::Duration::from_secs(10)).expect("checkpoint");
    let store = reopen(dir.path()).await;
    assert_eq!(store.revision(), 2);
    assert_eq!(store.get(&key("b")).await.unwrap().unwrap().revision, 2);
}

#[tokio::test]
async fn a_checkpoint_waits_for_the_closing_store_and_gives_up_on_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = SledStore::checkpoint(dir.path(), std::time::Duration::from_millis(100))
        .expect_err("the store is open");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    commit(&store, vec![put("a", "1", Precondition::Absent)]).await;
    drop(store); // closes in the background; the checkpoint waits for it
    SledStore::checkpoint(dir.path(), std::time::Duration::from_secs(10)).expect("checkpoint");
    assert_eq!(reopen(dir.path()).await.revision(), 1);
}

#[test]
fn group_commit_waits_only_for_writers_on_their_way() {
    use super::sled_store::{next_step, Next, GROUP_COMMIT_MAX_DELAY, GROUP_COMMIT_STEP};
    let soon = std::time::Duration::from_micros(100);
    let late = GROUP_COMMIT_MAX_DELAY - std::time::Duration::from_micros(50);
    // A lone writer's commit: nobody else is coming, so its fsync starts at once.
    assert_eq!(next_step(false, 0, soon, false), Next::Flush);
    // Writers on their way share this fsync: wait one step for them, never past the delay.
    assert_eq!(
        next_step(false, 3, soon, false),
        Next::Wait(GROUP_COMMIT_STEP.min(GROUP_COMMIT_MAX_DELAY - soon))
    );
    assert_eq!(
        next_step(false, 3, late, false),
        Next::Wait(std::time::Duration::from_micros(50))
    );
    assert_eq!(
        next_step(false, 3, GROUP_COMMIT_MAX_DELAY, false),
        Next::Flush
    );
    // What arrived meanwhile is written in first; past the delay it waits for the next fsync.
    assert_eq!(next_step(true, 0, soon, false), Next::Write);
    assert_eq!(
        next_step(true, 3, GROUP_COMMIT_MAX_DELAY, false),
        Next::Flush
    );
    // Shutting down: no waiting.
    assert_eq!(next_step(false, 3, soon, true), Next::Flush);
}

#[tokio::test]
async fn a_writer_that_never_commits_delays_an_fsync_but_never_stalls_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let _on_its_way = store.intend_commit();
    // Resolves once the group-commit delay is up, though the announced writer never comes.
    let revisions = commit(&store, vec![put("a", "1", Precondition::Absent)]).await;
    assert_eq!(revisions, [1]);
}

#[test]
fn a_flush_syncs_each_blob_sled_wrote_once() {
    // sled writes a value over a quarter of a segment (128 KiB) to a file of its own, with no
    // sync of its own; the flush must sync each such file, and only the new ones.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = sled::Config::new().path(&path).open().unwrap();
    let files = sled_store::SledFiles::open(&path).unwrap();
    let big = vec![b'x'; 300 * 1024];
    db.insert(b"small", b"1".as_slice()).unwrap();
    db.flush().unwrap();
    assert_eq!(files.sync().unwrap(), 0, "a small value is no blob");
    db.insert(b"big-1", big.as_slice()).unwrap();
    db.flush().unwrap();
    let first = files.sync().unwrap();
    assert!(first >= 1, "the big value went to a blob: {first}");
    assert_eq!(files.sync().unwrap(), 0, "nothing new to sync");
    db.insert(b"big-2", big.as_slice()).unwrap();
    db.flush().unwrap();
    assert!(files.sync().unwrap() >= 1, "the second blob is synced too");
}

#[tokio::test]
async fn a_value_too_big_for_the_log_is_durable_and_kept_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let big = "y".repeat(300 * 1024);
    {
        let store = open(dir.path());
        commit(&store, vec![put("big", &big, Precondition::Absent)]).await;
        store.close();
    }
    let store = reopen(dir.path()).await;
    let got = store.get(&key("big")).await.unwrap().expect("kept");
    assert_eq!(got.value.len(), big.len());
    assert!(got.value.iter().all(|&b| b == b'y'));
}

#[tokio::test]
async fn sled_always_leads() {
    // One process has the data directory: the work done once is always its to do.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut leadership = open(dir.path()).leadership();
    assert!(leadership.is_leader());
    leadership.acquired().await;
}
