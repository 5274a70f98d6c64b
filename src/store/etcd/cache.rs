//! The watch-fed cache: the current value of every key under the root, kept by the one etcd
//! watch (`follow.rs`), filled at start by one list at a revision and then following etcd from
//! that revision. As kube-apiserver's Cacher with consistent reads from cache: a read learns
//! etcd's current revision, waits until the cache has reached it, and answers from memory.
use super::*;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::RwLock;

/// A key's value as the cache holds it.
#[derive(Clone)]
pub(super) struct Entry {
    pub revision: Revision,
    pub value: Bytes,
}

/// Keys from a start in order, read from the cache at one revision.
pub(super) struct Batch {
    pub entries: Vec<(Vec<u8>, Entry)>,
    pub revision: Revision,
    /// Keys from the start to the range's end (`entries` and the rest).
    pub count: usize,
    /// Keys follow the last entry.
    pub more: bool,
}

pub(super) struct Cache {
    state: RwLock<State>,
    /// The revision the cache has reached, for readers waiting on it.
    reached: tokio::sync::watch::Sender<Revision>,
}

struct State {
    /// By etcd key, so the cache lists in etcd's order and a list may go on in etcd.
    objects: BTreeMap<Box<[u8]>, Entry>,
    /// Every change up to this revision is in `objects`.
    revision: Revision,
    /// Filled and following etcd. Not after the watch fell behind a compaction (changes were
    /// missed) until it is filled again: reads go to etcd meanwhile.
    live: bool,
}

impl Cache {
    pub fn new() -> Cache {
        Cache {
            state: RwLock::new(State {
                objects: BTreeMap::new(),
                revision: 0,
                live: false,
            }),
            reached: tokio::sync::watch::channel(0).0,
        }
    }

    /// Everything under the root as of `revision`, in place of what the cache held.
    pub fn fill(&self, objects: BTreeMap<Box<[u8]>, Entry>, revision: Revision) {
        let mut state = write(&self.state);
        *state = State {
            objects,
            revision,
            live: true,
        };
        drop(state);
        self.reached.send_replace(revision);
    }

    /// Changes missed: serve nothing from the cache until it is filled again.
    pub fn lost(&self) {
        write(&self.state).live = false;
    }

    /// The changes of one watch response (`None`: a deletion), then everything up to
    /// `revision` is in.
    pub fn apply(&self, changes: Vec<(Vec<u8>, Option<Entry>)>, revision: Revision) {
        let mut state = write(&self.state);
        for (key, entry) in changes {
            match entry {
                Some(entry) => {
                    state.objects.insert(key.into_boxed_slice(), entry);
                }
                None => {
                    state.objects.remove(key.as_slice());
                }
            }
        }
        state.revision = state.revision.max(revision);
        let reached = state.revision;
        drop(state);
        self.reached.send_replace(reached);
    }

    /// Whether the cache reached `revision` within `wait` (and is live).
    pub async fn reached(&self, revision: Revision, wait: Duration) -> bool {
        let mut reached = self.reached.subscribe();
        let caught_up = tokio::time::timeout(wait, reached.wait_for(|r| *r >= revision)).await;
        matches!(caught_up, Ok(Ok(_))) && read(&self.state).live
    }

    pub fn live(&self) -> bool {
        read(&self.state).live
    }

    /// The value of `key` and the cache's revision, when live.
    pub fn get(&self, key: &[u8]) -> Option<(Option<Entry>, Revision)> {
        let state = read(&self.state);
        state
            .live
            .then(|| (state.objects.get(key).cloned(), state.revision))
    }

    /// Up to `limit` keys in `[from, end)`, when live.
    pub fn batch(&self, from: &[u8], end: &[u8], limit: usize) -> Option<Batch> {
        use std::ops::Bound;
        let state = read(&self.state);
        if !state.live {
            return None;
        }
        let range = (Bound::Included(from), Bound::Excluded(end));
        let mut keys = state.objects.range::<[u8], _>(range);
        let entries: Vec<(Vec<u8>, Entry)> = keys
            .by_ref()
            .take(limit)
            .map(|(k, e)| (k.to_vec(), e.clone()))
            .collect();
        let rest = keys.count();
        Some(Batch {
            count: entries.len() + rest,
            more: rest > 0,
            entries,
            revision: state.revision,
        })
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Keys per range request for values while filling. (Few in tests, so that a fill of a few
/// dozen keys takes several ranges and pages.)
const FILL_BATCH: usize = if cfg!(test) { 4 } else { 10_000 };
/// Keys per keys-only range request while filling: few pages (each walks etcd's index to the
/// end), each well within [`REQUEST_TIMEOUT`] (etcd 3.4 reads every value even for keys only:
/// ~1 s for 250,000 keys of 1 KB values).
const FILL_KEYS_BATCH: i64 = if cfg!(test) { 10 } else { 250_000 };
/// Value ranges read at once while filling: etcd reads the next while this replica stores one.
const FILL_PARALLEL: usize = 3;
/// Room for a fill batch of large objects (tonic's default is 4 MiB): whatever etcd sends
/// (its own limit is 2 GiB), since the values are kept in memory anyway.
const FILL_MESSAGE: usize = i32::MAX as usize;

impl Inner {
    /// Fill the cache with everything under the root as of `at` (`None`: now), read at one
    /// revision, and say which: the watch follows from there.
    ///
    /// In two passes at once, because etcd 3.4 walks its index from a range's start to its
    /// end for every range, whatever its limit: paged by a limit alone, a fill of 2×10^6 keys
    /// walks 10^6 keys per page. One pass reads the keys alone, in a few large pages, and
    /// marks every [`FILL_BATCH`]th; the other reads the values between the marks found so
    /// far, each range walking only its own keys, [`FILL_PARALLEL`] at a time.
    pub(super) async fn fill_cache(&self, at: Option<Revision>) -> Result<Revision, StoreError> {
        let started = std::time::Instant::now();
        let revision = match at {
            Some(r) => r,
            None => {
                // etcd's revision now (one key read: its header says).
                let mut kv = self.client.kv_client();
                let got = self.outcome(timeout(kv.get(self.last_write_key(), None)).await)?;
                header_revision(got.header())
            }
        };
        let (ranges, found) = futures::channel::mpsc::unbounded();
        let reads = found
            .map(|(from, to)| self.fill_range(from, to, revision))
            .buffer_unordered(FILL_PARALLEL);
        let fill = async {
            futures::pin_mut!(reads);
            let mut objects = BTreeMap::new();
            while let Some(kvs) = reads.next().await {
                for kv in kvs? {
                    let revision = kv.mod_revision().max(0) as Revision;
                    let (key, value) = kv.into_key_value();
                    if self.object_key(&key).is_some() {
                        let value = Bytes::from(value);
                        objects.insert(key.into_boxed_slice(), Entry { revision, value });
                    }
                }
            }
            Ok(objects)
        };
        let (_, objects) = futures::try_join!(self.fill_ranges(revision, ranges), fill)?;
        tracing::info!(
            objects = objects.len(),
            revision,
            elapsed = ?started.elapsed(),
            "etcd cache filled"
        );
        self.cache.fill(objects, revision);
        Ok(revision)
    }

    /// Send ranges of [`FILL_BATCH`] keys that together cover the root at `revision`, as the
    /// keys are read.
    async fn fill_ranges(
        &self,
        revision: Revision,
        ranges: futures::channel::mpsc::UnboundedSender<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let end = prefix_end(&self.root);
        let mut from = self.root.clone();
        let mut bound = self.root.clone();
        let mut seen = 0usize;
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(FILL_MESSAGE);
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_keys_only()
                .with_limit(FILL_KEYS_BATCH)
                .with_revision(revision as i64);
            let mut got = self.outcome(timeout(kv.get(from.clone(), Some(opts))).await)?;
            let more = got.more();
            let kvs = got.take_kvs();
            for kv in &kvs {
                if seen > 0 && seen % FILL_BATCH == 0 {
                    let next = kv.key().to_vec();
                    // Unbounded: the keys pass must not wait for the values it is ahead of.
                    let _ =
                        ranges.unbounded_send((std::mem::replace(&mut bound, next.clone()), next));
                }
                seen += 1;
            }
            match kvs.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    let _ = ranges.unbounded_send((bound, end));
                    return Ok(());
                }
            }
        }
    }

    /// Every key and value in `[from, to)` at `revision`.
    async fn fill_range(
        &self,
        from: Vec<u8>,
        to: Vec<u8>,
        revision: Revision,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(FILL_MESSAGE);
        let opts = GetOptions::new()
            .with_range(to)
            .with_revision(revision as i64);
        let mut got = self.outcome(timeout(kv.get(from, Some(opts))).await)?;
        Ok(got.take_kvs())
    }
}
