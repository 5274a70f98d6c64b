//! Keeping the in-memory indexes in step with the store: built from a list at start; on a
//! store other replicas write to, every change they make is replayed from the store's watch,
//! the same way a local commit changes the indexes (as each kube-apiserver keeps its watch
//! cache fed from etcd); a replica whose watch fell behind compaction lists again and
//! rebuilds, holding the writer lock so nothing is decided from the stale indexes meanwhile.
use super::generic::Inner;
use super::kind::Kind;
use super::state::{decode_for_index, new_pool, IndexEntry, PoolEntry, Root, State};
use super::txn::Stored;
use crate::api::IPPrefix;
use crate::store::ObjectKey;
use crate::store::{EventType, KeyRange, ReadAt, Revision, Store, StoreError, StoreEvent};
use futures::{FutureExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Every index, rebuilt from the stored IPPrefixes, and the revision they were listed at.
pub(super) async fn load_indexes(store: &dyn Store) -> Result<(State, Revision), StoreError> {
    let started = std::time::Instant::now();
    let range = KeyRange {
        resource: "ipprefixes",
        namespace: None,
    };
    // Decoded while scanning, on a second thread (scanning and decoding each take about
    // half of a restart), keeping no more stored bytes than the batches in flight: with
    // 10^6 prefixes the values alone would be most of the process's memory at start.
    const BATCH: usize = 4096;
    let (batches, received) = std::sync::mpsc::sync_channel::<Vec<bytes::Bytes>>(4);
    let decoder = std::thread::Builder::new()
        .name("index-decoder".into())
        .spawn(move || {
            let mut prefixes = Vec::new();
            for batch in received {
                for value in batch {
                    prefixes.push(decode_for_index(&value)?);
                }
            }
            Ok::<_, String>(prefixes)
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start index decoder: {e}")))?;
    let mut batch = Vec::with_capacity(BATCH);
    let scanned = store
        .list(&range, None, ReadAt::Latest, None, &mut |v| {
            batch.push(v.value.clone());
            if batch.len() == BATCH {
                // A send fails only when the decoder stopped at a damaged value; its error
                // is reported below.
                let _ = batches.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
            }
            false
        })
        .await;
    let _ = batches.send(batch);
    drop(batches);
    let decoded = decoder
        .join()
        .map_err(|_| StoreError::Corrupt("the index decoder panicked".into()))?;
    let revision = scanned?.revision;
    let prefixes = decoded.map_err(StoreError::Corrupt)?;
    let count = prefixes.len();
    let state = State::rebuild(prefixes).map_err(StoreError::Corrupt)?;
    tracing::info!(
        prefixes = count,
        revision,
        elapsed = ?started.elapsed(),
        "registry loaded"
    );
    Ok((state, revision))
}

/// Replay the store's changes after `after` into the indexes, for as long as the registry
/// lives. Only changes other processes made are applied: this process's own commits changed
/// the indexes when they were made (`Guards::is_own`).
///
/// The events go through a queue that whoever takes the writer lock next applies first
/// ([`catch_up`], called by `Registry::lock`), not only this task: the lock is fair, and this
/// task waiting behind every queued request would let the index lag, and the guards fail,
/// for the length of that queue.
pub(super) async fn follow(registry: Weak<Inner>, mut after: Revision) {
    loop {
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let mut events = match inner.store.watch(after) {
            Ok(events) => events,
            Err(StoreError::Expired { .. }) => {
                let mut state = inner.state.lock().await;
                after = reload(&inner, &mut state).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the store; retrying");
                drop(inner);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        drop(inner);
        loop {
            let Some(first) = events.next().await else {
                return; // the store shut down
            };
            let Some(inner) = registry.upgrade() else {
                return;
            };
            // The events of one store commit are published together: take every ready one,
            // so no commit is applied in part.
            let mut batch = vec![first];
            while let Some(Some(next)) = events.next().now_or_never() {
                batch.push(next);
            }
            let ended = batch.iter().any(Result::is_err);
            let batch: Vec<_> = batch.into_iter().filter_map(Result::ok).collect();
            lock(&inner.remote).push_back(batch);
            let mut state = inner.state.lock().await;
            let failed = catch_up(&inner, &mut state).await.is_err();
            if ended || failed {
                // Expired by a compaction (or a change that could not be indexed): list again.
                after = reload(&inner, &mut state).await;
                if ended {
                    break;
                }
            }
        }
    }
}

/// Apply the queued changes of other processes to `state` (the caller holds the writer lock).
/// `Err` when the indexes must be rebuilt: a change could not be indexed, and advancing past
/// it would let a guard pass on a stale index.
pub(super) async fn catch_up(inner: &Inner, state: &mut State) -> Result<(), ()> {
    loop {
        let Some(batch) = lock(&inner.remote).pop_front() else {
            return Ok(());
        };
        if batch.is_empty() {
            continue;
        }
        let batch = decode(state, batch);
        // Another replica's change may overlap what the open group holds: the members that
        // decided from what it changed go (their commit would fail on its guard), or, where
        // that is not known, the group is settled first.
        match touched_guards(&batch) {
            Some((guards, revision)) => super::group::drop_concerned(state, &guards, revision),
            None => super::group::commit(state, &*inner.store).await,
        }
        apply(state, &*inner.store, batch).await?;
    }
}

/// Another process's change to an IPPrefix, decoded once for the indexes (`None`: absent,
/// or a value that could not be decoded).
struct Remote {
    event: Arc<StoreEvent>,
    old: Option<IndexEntry>,
    new: Option<IndexEntry>,
}

/// What of one batch of store events the indexes lack.
struct Decoded {
    changes: Vec<Remote>,
    /// Every change up to here is in the indexes once the batch is applied.
    newest: Option<Revision>,
    /// Every value could be decoded.
    intact: bool,
}

fn decode(state: &State, batch: Vec<Arc<StoreEvent>>) -> Decoded {
    let (mut changes, mut newest, mut intact) = (Vec::new(), None, true);
    for event in batch {
        let revision = event.object.revision;
        // Already in the indexes: a rebuild listed past it.
        if revision <= state.guards.applied() {
            continue;
        }
        newest = Some(revision);
        if state.guards.is_own(revision)
            || event.object.key.resource != <IPPrefix as Kind>::RESOURCE
        {
            continue;
        }
        let mut entry = |bytes: &[u8]| match decode_for_index(bytes) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!(key = ?event.object.key, error = %e, "cannot index a stored ipprefix");
                intact = false;
                None
            }
        };
        let (old, new) = match event.event_type {
            EventType::Added => (None, entry(&event.object.value)),
            EventType::Modified => (
                event.previous.as_deref().and_then(&mut entry),
                entry(&event.object.value),
            ),
            EventType::Deleted => (entry(&event.object.value), None),
        };
        changes.push(Remote { event, old, new });
    }
    Decoded {
        changes,
        newest,
        intact,
    }
}

/// The guards other processes' changes in `batch` bumped, and the newest revision among
/// them; `None` when that is not known for certain (a value that could not be decoded).
fn touched_guards(batch: &Decoded) -> Option<(HashSet<ObjectKey>, Revision)> {
    if !batch.intact {
        return None;
    }
    let mut guards = HashSet::new();
    let mut newest = 0;
    for change in &batch.changes {
        newest = newest.max(change.event.object.revision);
        for entry in [&change.old, &change.new].into_iter().flatten() {
            // What a change to this prefix may touch: its parent's children, or the roots of
            // its address space; and, as a parent itself, its own children's room.
            guards.insert(match &entry.parent {
                Some(parent) => super::guards::pool(parent),
                None => super::guards::roots(entry.address_space.as_deref()),
            });
            guards.insert(super::guards::pool(&entry.name));
        }
    }
    Some((guards, newest))
}

async fn apply(state: &mut State, store: &dyn Store, batch: Decoded) -> Result<(), ()> {
    for Remote { event, old, new } in batch.changes {
        refresh_parent(state, &event);
        if observe(state, store, old, new).await.is_err() {
            return Err(());
        }
    }
    if let Some(revision) = batch.newest {
        state.guards.advance(revision);
    }
    Ok(())
}

/// Rebuild every index from a fresh list, the caller holding the writer lock, so nothing is
/// decided from the stale ones meanwhile. Returns the list's revision.
pub(super) async fn reload(inner: &Inner, state: &mut State) -> Revision {
    super::group::commit(state, &*inner.store).await;
    loop {
        match load_indexes(&*inner.store).await {
            Ok((fresh, revision)) => {
                tracing::warn!(revision, "indexes rebuilt from a new list of the store");
                state.replace_indexes(fresh, revision);
                return revision;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot rebuild the indexes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keep a parent decoded for allocation (`State::parents`) in step with another process's
/// change to it: replaced in place, so the next create in it does not read it from the store
/// under the writer lock (a round trip to etcd). Only an entry already there and older moves
/// forward: one this process dropped when it wrote the parent itself stays out until read.
fn refresh_parent(state: &mut State, event: &StoreEvent) {
    let name = event.object.key.name.as_str();
    let Some(cached) = state.parents.get(name) else {
        return;
    };
    if cached.revision >= event.object.revision {
        return;
    }
    let fresh = match event.event_type {
        EventType::Deleted => None,
        _ => super::codec::decode_stored::<IPPrefix>(&event.object.value, event.object.revision)
            .ok()
            .map(|obj| Stored {
                obj,
                revision: event.object.revision,
            }),
    };
    match fresh {
        Some(fresh) => {
            state.parents.insert(name.to_string(), fresh);
        }
        None => {
            state.parents.remove(name);
        }
    }
}

/// Change the indexes as an IPPrefix changed from `old` to `new` (either absent: created,
/// deleted) by another process. `Err` when the store could not be read for it.
pub(super) async fn observe(
    state: &mut State,
    store: &dyn Store,
    old: Option<IndexEntry>,
    new: Option<IndexEntry>,
) -> Result<(), StoreError> {
    if let Some(old) = &old {
        forget(state, old, new.as_ref());
    }
    match &new {
        Some(new) => {
            let moved = old
                .as_ref()
                .is_none_or(|o| o.parent != new.parent || o.net != new.net);
            record(state, store, new, moved).await
        }
        None => Ok(()),
    }
}

fn forget(state: &mut State, old: &IndexEntry, new: Option<&IndexEntry>) {
    let same_block = new.is_some_and(|n| n.parent == old.parent && n.net == old.net);
    match &old.parent {
        Some(parent) if !same_block => {
            if let Some(entry) = state.pool_entry_mut(parent) {
                if entry.holders.get(&old.net) == Some(&old.name) {
                    let _ = entry.pool.release(old.net);
                    entry.holders.remove(&old.net);
                }
            }
            state.mark_status_stale(parent);
        }
        Some(_) => {}
        None => {
            if !same_block {
                state.roots.remove(&old.name);
            }
        }
    }
    if let Some(claim) = &old.released_for {
        if state.released.get(claim) == Some(&old.name) {
            state.released.remove(claim);
        }
    }
    state.expiries.remove(&old.name);
    state.set_bound(&old.name, true);
    if new.is_none() {
        state.drop_pool(&old.name);
        state.expiries.waiting.remove(&old.name);
    }
}

/// `moved`: its block is new to its parent (created, or another block or parent than before).
async fn record(
    state: &mut State,
    store: &dyn Store,
    new: &IndexEntry,
    moved: bool,
) -> Result<(), StoreError> {
    match &new.parent {
        Some(parent) => {
            if state.pool(parent).is_none() {
                let Some(pool) = read_pool(store, parent).await? else {
                    return Ok(());
                };
                state.insert_pool(parent.clone(), pool);
            }
            if let Some(entry) = state.pool_entry_mut(parent) {
                if entry.holders.get(&new.net) != Some(&new.name) {
                    match entry.pool.allocate_exact(new.net) {
                        Ok(()) => {
                            entry.holders.insert(new.net, new.name.clone());
                        }
                        // Another replica's guard passed, so this cannot be: say so loudly.
                        Err(e) => tracing::error!(
                            prefix = %new.net, parent, name = new.name, error = %e,
                            "a stored child does not fit this replica's index of its parent"
                        ),
                    }
                }
            }
            if moved {
                state.mark_status_stale(parent);
            }
            if !new.bound {
                state.set_bound(&new.name, false);
            }
        }
        None => state.roots.insert(
            new.name.clone(),
            Root {
                net: new.net,
                space: new.address_space.clone(),
            },
        ),
    }
    if let Some(claim) = &new.released_for {
        state.released.insert(claim.clone(), new.name.clone());
    }
    if let Some(at) = new.retained_until {
        state.expiries.insert(&new.name, at);
    }
    if let Some(entry) = state.pool_entry_mut(&new.name) {
        let _ = entry.pool.set_exclusions(&new.exclude);
        let _ = entry.pool.set_reserve(new.reserve);
    }
    Ok(())
}

/// The pool of `parent` with no children yet, from its stored spec; `None` when it is gone
/// (it can only go once its children have: a later event deletes this one too).
async fn read_pool(store: &dyn Store, parent: &str) -> Result<Option<PoolEntry>, StoreError> {
    let key = crate::store::ObjectKey::new(<IPPrefix as Kind>::RESOURCE, "", parent);
    let Some(stored) = store.get(&key).await? else {
        return Ok(None);
    };
    let damaged = |e: String| StoreError::Corrupt(format!("ipprefix {parent:?}: {e}"));
    let prefix: IPPrefix =
        serde_json::from_slice(&stored.value).map_err(|e| damaged(e.to_string()))?;
    let pool = new_pool(&prefix).map_err(|e| damaged(e.to_string()))?;
    Ok(Some(PoolEntry {
        pool,
        holders: HashMap::new(),
    }))
}
