//! etcd's history is compacted once across replicas, as kube-apiserver's compactor does it.
use super::*;

/// Compact etcd every `interval`, once across replicas: only the leader tries, and as
/// kube-apiserver's compactor it compacts only if its compare-and-swap on one key wins (an
/// ex-leader that has not noticed yet loses it), to the revision it saw one interval earlier,
/// so at least one interval of history is always kept.
pub(super) async fn compact_every(store: std::sync::Weak<Inner>, interval: Duration) {
    let mut last_version = 0i64;
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        if !*inner.leading.borrow() {
            // A follower only keeps count: should it lead next interval, it compacts to here.
            previous = Some(inner.revision.load(Ordering::Acquire) as i64);
            continue;
        }
        let key = [inner.root.as_slice(), b"compact_rev_key"].concat();
        let mut kv = inner.client.kv_client();
        let txn = Txn::new()
            .when([Compare::version(
                key.clone(),
                CompareOp::Equal,
                last_version,
            )])
            .and_then([TxnOp::put(key.clone(), Vec::new(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let done = match timeout(kv.txn(txn)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "etcd compaction skipped");
                continue;
            }
        };
        let revision = header_revision(done.header()) as i64;
        if !done.succeeded() {
            // Another replica compacted this interval; follow its count.
            for r in done.op_responses() {
                if let TxnOpResponse::Get(got) = r {
                    last_version = got.kvs().first().map_or(0, |kv| kv.version());
                }
            }
            previous = Some(revision);
            continue;
        }
        last_version += 1;
        if let Some(to) = previous {
            match timeout(kv.compact(to, None)).await {
                Ok(_) => tracing::info!(revision = to, "etcd compacted"),
                Err(e) => tracing::warn!(error = %e, "etcd compaction failed"),
            }
        }
        previous = Some(revision);
    }
}
