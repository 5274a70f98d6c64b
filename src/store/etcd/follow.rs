//! One etcd watch over the objects' keys feeds the retained history every watcher reads and
//! the cache that answers reads (as kube-apiserver's watch cache sits on one etcd watch), and
//! a probe keeps readiness current.
use super::*;

/// Follow etcd's changes to the objects from `after` on, into the history and the cache, for
/// as long as the store lives. A broken watch is opened again from the last revision seen; one
/// that fell behind a compaction leaves the history expired (its watchers list again) and the
/// cache is filled again.
pub(super) async fn follow(store: std::sync::Weak<Inner>, mut after: Revision) {
    loop {
        let Some(inner) = store.upgrade() else {
            return;
        };
        if !inner.cache.live() {
            match inner.fill_cache(None).await {
                Ok(filled) => {
                    after = filled;
                    inner.history.restart(after);
                }
                Err(e) => {
                    tracing::warn!("etcd cache not filled again yet: {e}");
                    drop(inner);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let (start, end) = inner.objects_range();
        let opts = WatchOptions::new()
            .with_range(end)
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(after as i64 + 1);
        let mut watch_client = inner.client.watch_client();
        drop(inner);
        let mut stream = match watch_client.watch(start, Some(opts)).await {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(inner) = store.upgrade() {
                    let _ = inner.outcome::<()>(Err(etcd_error(e)));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let message = stream.message().await;
            let Some(inner) = store.upgrade() else {
                return;
            };
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    let _ = inner.outcome::<()>(Err(etcd_error(e)));
                    break;
                }
            };
            if response.canceled() {
                tracing::warn!(
                    compacted = response.compact_revision(),
                    after,
                    "etcd watch cancelled: {}",
                    response.cancel_reason()
                );
                if response.compact_revision() > 0 {
                    // What happened between `after` and the compaction is gone: watchers
                    // from before it must list again, and the cache is filled again.
                    after = response.compact_revision() as Revision - 1;
                    inner.cache.lost();
                    inner.history.restart(after);
                }
                break;
            }
            let mut events = Vec::with_capacity(response.events().len());
            let mut changes = Vec::with_capacity(response.events().len());
            for ev in response.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(key) = inner.object_key(kv.key()) else {
                    continue;
                };
                let revision = kv.mod_revision().max(0) as Revision;
                // The cache and the history share the value.
                let change = match ev.event_type() {
                    EtcdEventType::Put => Some(read::entry(kv)),
                    EtcdEventType::Delete => None,
                };
                let value = change.as_ref().map(|c| c.value.clone());
                changes.push((kv.key().to_vec(), change));
                let previous = ev.prev_kv().map(|p| Bytes::copy_from_slice(p.value()));
                let event = match ev.event_type() {
                    EtcdEventType::Put => {
                        let event_type = if kv.create_revision() == kv.mod_revision() {
                            EventType::Added
                        } else {
                            EventType::Modified
                        };
                        let value = value.unwrap_or_default();
                        let object = Versioned {
                            key,
                            revision,
                            value,
                        };
                        let previous = previous.filter(|_| event_type == EventType::Modified);
                        StoreEvent::new(event_type, object, previous)
                    }
                    EtcdEventType::Delete => {
                        // A delete reports the object as it was last stored.
                        let Some(value) = previous else {
                            tracing::warn!(?key, revision, "etcd delete without its last value");
                            continue;
                        };
                        let object = Versioned {
                            key,
                            revision,
                            value,
                        };
                        StoreEvent::new(EventType::Deleted, object, None)
                    }
                };
                after = after.max(revision);
                events.push(event);
            }
            if response.events().is_empty() && !response.created() {
                // A progress notification: no object changed up to its revision.
                // (Not the watch's creation, nor a response of keys not ours: a watch catching
                // up has etcd's revision now in every header, with more events to come.)
                after = after.max(header_revision(response.header()));
            }
            inner.cache.apply(changes, after);
            inner.history.publish(events);
            inner.saw(after);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ask etcd every `period` whether it answers (a quorum read), so readiness follows etcd with
/// no requests coming in, and comes back by itself.
pub(super) async fn probe_every(store: std::sync::Weak<Inner>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        let mut kv = inner.client.kv_client();
        let probe = kv.get(
            inner.root.clone(),
            Some(GetOptions::new().with_count_only()),
        );
        let _ = inner.outcome(timeout(probe).await);
    }
}
