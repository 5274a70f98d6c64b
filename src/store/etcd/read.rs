//! Reads: a get, and a list whose batches are all read at one revision, so that the pages of
//! a list (each continued at the revision of the first) are one snapshot, as kube-apiserver's
//! are on etcd. etcd keeps that revision until it is compacted; a page continued past that is
//! `Expired`.
use super::*;

impl Inner {
    pub(super) async fn get(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError> {
        let mut kv = self.client.kv_client();
        let got = self.outcome(timeout(kv.get(self.etcd_key(key), None)).await)?;
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
        let mut kv = self.client.kv_client();
        let mut at = match at {
            ReadAt::Latest => None,
            ReadAt::Revision(r) => Some(r as i64),
        };
        let mut items = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_BATCH);
            if let Some(rev) = at {
                opts = opts.with_revision(rev);
            }
            let got = self.outcome(timeout(kv.get(from.clone(), Some(opts))).await);
            let got = match (got, at) {
                (Err(StoreError::Expired { .. }), Some(rev)) => {
                    return Err(StoreError::Expired {
                        requested: rev as Revision,
                        // Unknown: etcd does not say how far it compacted.
                        oldest: 0,
                    });
                }
                (got, _) => got?,
            };
            // Every batch at the first one's revision: one snapshot.
            let revision = *at.get_or_insert(header_revision(got.header()) as i64) as Revision;
            self.saw(header_revision(got.header()));
            for (i, kv) in got.kvs().iter().enumerate() {
                let Some(item) = self.versioned(kv) else {
                    continue;
                };
                if !range.contains(&item.key) || !filter(&item) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    // `count` is every key from `from` on at this revision, whatever the
                    // batch's limit: those not yet passed remain.
                    let remaining = (got.count().max(0) as usize).saturating_sub(i);
                    return Ok(ListPage {
                        items,
                        revision,
                        more: true,
                        remaining: Some(remaining),
                    });
                }
                items.push(item);
            }
            match got.kvs().last() {
                Some(last) if got.more() => {
                    from = last.key().to_vec();
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
}
