//! Reads. A get or a list without a revision is a consistent read, as kube-apiserver's from
//! its cache: learn etcd's current revision (one quorum call, shared by the readers that
//! arrive while another is on its way), wait until the watch-fed cache has reached it, and
//! answer from memory; past [`CACHE_WAIT`], or while the cache is being filled again, from
//! etcd. The later batches and pages of a list are read in etcd at the first one's revision,
//! so a paged list is one snapshot; etcd keeps that revision until it is compacted, and a page
//! continued past that is `Expired`.
use super::cache::{Batch, Entry};
use super::*;
use futures::future::{BoxFuture, FutureExt, Shared};

/// How long a consistent read waits for the cache before it reads etcd instead. The watch
/// is normally a few milliseconds behind; longer means it is stuck or refilling.
const CACHE_WAIT: Duration = Duration::from_secs(3);

type Answer = Shared<BoxFuture<'static, Result<Revision, StoreError>>>;

/// The next quorum call for etcd's current revision, shared by the readers that wait for it.
#[derive(Default)]
pub(super) struct CurrentRevision {
    next: Mutex<Option<(Arc<std::sync::atomic::AtomicBool>, Answer)>>,
}

impl Inner {
    /// The revision of the last change to the API's keys, asked of etcd now (a quorum read of
    /// the key every commit bumps): every write acknowledged before this call began is at or
    /// below it, and the cache reaches it through the watch's own events. (Not etcd's revision
    /// as a whole: writes to other keys of a shared etcd move that without an event for us,
    /// and asking the watch for a progress notification instead is unsafe on etcd before
    /// 3.4.24, which can send one ahead of events still on their way.)
    /// A call already sent may have been answered before that, so a reader joins only a call
    /// not yet sent (the next one, sent once the one on its way is answered).
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let answer = {
            let mut next = lock(&self.current.next);
            match &*next {
                Some((sent, answer)) if !sent.load(Ordering::SeqCst) => answer.clone(),
                _ => {
                    let before = next.take().map(|(_, answer)| answer);
                    let sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let mark = sent.clone();
                    let mut kv = self.client.kv_client();
                    let last_write = self.last_write_key();
                    let answer = async move {
                        if let Some(before) = before {
                            let _ = before.await;
                        }
                        mark.store(true, Ordering::SeqCst);
                        let got = timeout(kv.get(last_write, None)).await?;
                        Ok(got
                            .kvs()
                            .first()
                            .map_or(0, |kv| kv.mod_revision().max(0) as Revision))
                    }
                    .boxed()
                    .shared();
                    *next = Some((sent, answer.clone()));
                    answer
                }
            }
        };
        self.outcome(answer.await)
    }

    /// Whether the cache holds every write acknowledged before this call began.
    async fn cache_is_fresh(&self) -> Result<bool, StoreError> {
        if !self.cache.live() {
            return Ok(false);
        }
        let current = self.current_revision().await?;
        let fresh = self.cache.reached(current, CACHE_WAIT).await;
        if !fresh {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(fresh)
    }

    /// Whether the cache may answer a read `at`: for the latest state, once it reached etcd's
    /// revision now; for `NotOlderThan`, once it reached that one, asking etcd nothing.
    async fn cache_answers(&self, at: ReadAt) -> Result<bool, StoreError> {
        match at {
            ReadAt::Latest => self.cache_is_fresh().await,
            ReadAt::NotOlderThan(r) => {
                Ok(self.cache.live() && self.cache.reached(r, CACHE_WAIT).await)
            }
            ReadAt::Revision(_) => Ok(false),
        }
    }

    pub(super) async fn get(
        &self,
        key: &ObjectKey,
        at: ReadAt,
    ) -> Result<Option<Versioned>, StoreError> {
        let raw = self.etcd_key(key);
        if self.cache_answers(at).await? {
            if let Some((entry, _)) = self.cache.get(&raw) {
                return Ok(entry.map(|e| Versioned {
                    key: key.clone(),
                    revision: e.revision,
                    value: e.value,
                }));
            }
        }
        let mut kv = self.client.kv_client();
        let got = self.outcome(timeout(kv.get(raw, None)).await)?;
        self.saw(header_revision(got.header()));
        Ok(got.kvs().first().and_then(|kv| self.versioned(kv)))
    }

    pub(super) async fn list(
        &self,
        range: &KeyRange,
        start_after: Option<&ObjectKey>,
        at: ReadAt,
        limit: Option<usize>,
        filter: &mut ListFilter<'_>,
    ) -> Result<ListPage, StoreError> {
        let prefix = self.range_start(range);
        let end = prefix_end(&prefix);
        let mut from = match start_after {
            Some(k) => {
                let mut s = self.etcd_key(k);
                s.push(0); // the smallest key after `k`
                s.max(prefix.clone())
            }
            None => prefix.clone(),
        };
        let first = at;
        let mut at = match at {
            ReadAt::Latest | ReadAt::NotOlderThan(_) => None,
            ReadAt::Revision(r) => Some(r),
        };
        let mut items = Vec::new();
        loop {
            let batch = match at {
                // A list with no limit takes the whole range from the cache at once: one
                // snapshot from memory. (Later batches read in etcd would each walk etcd's
                // index to the range's end: see `fill_cache`.)
                None if self.cache_answers(first).await? => {
                    let batch = limit.map_or(usize::MAX, |_| LIST_BATCH as usize);
                    self.cache.batch(&from, &end, batch)
                }
                _ => None,
            };
            let batch = match batch {
                Some(batch) => batch,
                None => self.etcd_batch(&from, &end, at).await?,
            };
            // Every batch at the first one's revision: one snapshot.
            let revision = *at.get_or_insert(batch.revision);
            for (i, (key, entry)) in batch.entries.iter().enumerate() {
                let Some(key) = self.object_key(key) else {
                    continue;
                };
                let item = Versioned {
                    key,
                    revision: entry.revision,
                    value: entry.value.clone(),
                };
                if !range.contains(&item.key) || !filter(&item) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    // `count` is every key from `from` on: those not yet passed remain.
                    return Ok(ListPage {
                        items,
                        revision,
                        more: true,
                        remaining: Some(batch.count.saturating_sub(i)),
                    });
                }
                items.push(item);
            }
            match batch.entries.last() {
                Some((last, _)) if batch.more => {
                    from = last.clone();
                    from.push(0);
                }
                _ => {
                    return Ok(ListPage {
                        items,
                        revision,
                        more: false,
                        remaining: None,
                    })
                }
            }
        }
    }

    /// Up to [`LIST_BATCH`] keys in `[from, end)` read in etcd, at `at` (`None`: now).
    async fn etcd_batch(
        &self,
        from: &[u8],
        end: &[u8],
        at: Option<Revision>,
    ) -> Result<Batch, StoreError> {
        let mut opts = GetOptions::new()
            .with_range(end.to_vec())
            .with_limit(LIST_BATCH);
        if let Some(rev) = at {
            opts = opts.with_revision(rev as i64);
        }
        let mut kv = self.client.kv_client();
        let got = match self.outcome(timeout(kv.get(from.to_vec(), Some(opts))).await) {
            Err(StoreError::Expired { .. }) if at.is_some() => {
                return Err(StoreError::Expired {
                    requested: at.unwrap_or_default(),
                    // Unknown: etcd does not say how far it compacted.
                    oldest: 0,
                });
            }
            got => got?,
        };
        let revision = header_revision(got.header());
        self.saw(revision);
        Ok(Batch {
            entries: got
                .kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), entry(kv)))
                .collect(),
            revision: at.unwrap_or(revision),
            count: got.count().max(0) as usize,
            more: got.more(),
        })
    }
}

pub(super) fn entry(kv: &KeyValue) -> Entry {
    Entry {
        revision: kv.mod_revision().max(0) as Revision,
        value: Bytes::copy_from_slice(kv.value()),
    }
}
