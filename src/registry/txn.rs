//! A write transaction: reads see its own writes, writes become one atomic store commit, and
//! in-memory index changes are undone unless the commit is applied.
use super::changes::ServerChange;
use super::codec;
use super::kind::Kind;
use super::state::State;
use crate::api::IPPrefix;
use crate::error::{ApiError, ApiResult};
use crate::store::{
    Committed, ObjectKey, Op, Precondition, ReadAt, Revision, Store, StoreError, GUARDS,
};
use bytes::Bytes;
use std::collections::HashMap;

/// An object as read, with the revision it was read at.
#[derive(Debug, Clone)]
pub struct Stored<K> {
    pub obj: K,
    pub revision: Revision,
}

// `Sync` as well: a transaction is borrowed across the store's awaits.
pub(super) type Undo = Box<dyn FnOnce(&mut State) + Send + Sync>;
pub(super) type Taken = Box<dyn FnOnce() -> ApiError + Send + Sync>;

pub struct Txn<'a> {
    store: &'a dyn Store,
    pub state: &'a mut State,
    ops: Vec<Op>,
    /// Index into `ops` by key, so a second write to a key replaces the first.
    op_index: HashMap<ObjectKey, usize>,
    /// The newest value this transaction wrote per key (`None`: deleted), and the revision the
    /// key had when first read.
    overlay: HashMap<ObjectKey, (Option<Bytes>, Revision)>,
    undo: Vec<Undo>,
    /// Keys written by [`Txn::put_new`], and the error for each if it turns out to be taken.
    if_taken: Vec<(ObjectKey, Taken)>,
    applied: bool,
    /// The parents the caller may allocate from (verb `use`), when authorization applies.
    pub allowed_parents: Option<std::collections::HashSet<String>>,
    /// Blocks taken from / returned to parents, counted in metrics once the commit applies.
    pub allocations: u64,
    pub releases: u64,
    /// The indexes this transaction decided from and changes (see `guards.rs`), when other
    /// processes write to the store too.
    guards: Vec<ObjectKey>,
    /// What the server changed on its own, reported once the commit applies.
    pub server_changes: Vec<ServerChange>,
    /// Writes made by [`Txn::put_status`]: a transaction of nothing else may join the open
    /// commit group (see `group.rs`).
    status_puts: usize,
}

/// What a successful commit returns: the revision of every written key, and durability.
pub struct TxnCommit {
    pub revisions: HashMap<ObjectKey, Revision>,
    pub committed: Option<Committed>,
    /// A create that joined the open group (see `group.rs`): its keys, and its answer once the
    /// group is committed.
    grouped: Option<(
        Vec<ObjectKey>,
        tokio::sync::oneshot::Receiver<ApiResult<Revision>>,
    )>,
    pub server_changes: Vec<ServerChange>,
}

impl TxnCommit {
    /// Whether this is a create in a group that has no answer yet.
    pub fn awaits_group(&self) -> bool {
        self.grouped
            .as_ref()
            .is_some_and(|(_, answer)| answer.is_empty())
    }

    /// Wait until the commit is on disk (a dry run has nothing to wait for), recording how
    /// long in `ipam_store_durable_wait_seconds`.
    pub async fn wait_durable(&mut self) -> ApiResult<()> {
        if let Some((keys, answer)) = self.grouped.take() {
            let revision = answer.await.map_err(|_| {
                ApiError::Internal("a commit group ended without an answer".into())
            })??;
            self.revisions = keys.into_iter().map(|k| (k, revision)).collect();
            return Ok(());
        }
        let Some(committed) = self.committed.take() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let durable = committed.durable.await;
        crate::metrics::global()
            .durable_wait
            .observe(started.elapsed().as_secs_f64());
        durable.map_err(store_error)
    }
}

impl<'a> Txn<'a> {
    pub fn new(store: &'a dyn Store, state: &'a mut State) -> Self {
        Txn {
            store,
            state,
            ops: Vec::new(),
            op_index: HashMap::new(),
            overlay: HashMap::new(),
            undo: Vec::new(),
            if_taken: Vec::new(),
            applied: false,
            allowed_parents: None,
            allocations: 0,
            releases: 0,
            guards: Vec::new(),
            server_changes: Vec::new(),
            status_puts: 0,
        }
    }

    /// This transaction decides from, and changes, what `guard` stands for: its commit fails
    /// with [`ApiError::IndexBehind`] if another process changed that since this process's
    /// indexes last saw it.
    pub fn guard(&mut self, guard: ObjectKey) {
        if self.store.shared() && !self.guards.contains(&guard) {
            self.guards.push(guard);
        }
    }

    pub fn key<K: Kind>(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey::new(
            K::RESOURCE,
            if K::NAMESPACED { namespace } else { "" },
            name,
        )
    }

    /// Whether the caller may allocate from `parent` (verb `use`; always, without
    /// authorization).
    pub fn may_use(&self, parent: &str) -> bool {
        self.allowed_parents
            .as_ref()
            .is_none_or(|a| a.contains(parent))
    }

    /// Read an object, seeing this transaction's own writes.
    pub async fn get<K: Kind>(&self, namespace: &str, name: &str) -> ApiResult<Option<Stored<K>>> {
        let key = Self::key::<K>(namespace, name);
        if let Some((value, revision)) = self.overlay.get(&key) {
            return value
                .as_ref()
                .map(|v| {
                    Ok(Stored {
                        obj: codec::decode_stored::<K>(v, *revision)?,
                        revision: *revision,
                    })
                })
                .transpose();
        }
        match self.store.get(&key).await.map_err(store_error)? {
            None => Ok(None),
            Some(v) => Ok(Some(Stored {
                obj: codec::decode_stored::<K>(&v.value, v.revision)?,
                revision: v.revision,
            })),
        }
    }

    /// An IPPrefix read as a parent: like [`Txn::get`], decoded once per stored revision
    /// (see `State::parents`).
    pub async fn get_parent(&mut self, name: &str) -> ApiResult<Option<Stored<IPPrefix>>> {
        // An entry is never one this transaction wrote (`forget_parent` drops it, and a
        // written one is not put back below), so a hit is the stored value (but for the
        // status, see `State::parents`).
        if let Some(parent) = self.state.parents.get(name) {
            return Ok(Some(parent.clone()));
        }
        let written = self.overlay.contains_key(&Self::key::<IPPrefix>("", name));
        let parent = self.get::<IPPrefix>("", name).await?;
        if let (false, Some(p)) = (written, &parent) {
            self.state.parents.insert(name.to_string(), p.clone());
        }
        Ok(parent)
    }

    /// Every object of a kind (cluster-wide), in key order, ignoring this transaction's writes.
    pub async fn list_all<K: Kind>(&self) -> ApiResult<Vec<Stored<K>>> {
        let range = crate::store::KeyRange {
            resource: K::RESOURCE,
            namespace: None,
        };
        let page = self
            .store
            .list(&range, None, ReadAt::Latest, None, &mut |_| true)
            .await
            .map_err(store_error)?;
        page.items
            .into_iter()
            .map(|v| {
                Ok(Stored {
                    obj: codec::decode_stored::<K>(&v.value, v.revision)?,
                    revision: v.revision,
                })
            })
            .collect()
    }

    fn key_of<K: Kind>(obj: &K) -> ObjectKey {
        let meta = obj.meta();
        Self::key::<K>(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }

    /// Write an object. `precondition` applies to the key's state before this transaction.
    pub fn put<K: Kind>(&mut self, obj: &K, precondition: Precondition) -> ApiResult<()> {
        let key = Self::key_of(obj);
        self.forget_parent::<K>(&key);
        self.put_at(key, obj, precondition)
    }

    /// Write an IPPrefix whose only change is its derived status (the status writer), keeping
    /// its decoded copy in `State::parents`: allocation reads a parent's spec and metadata,
    /// never its status or revision. Dropping it made the next claim of every refreshed parent
    /// read it again under the writer lock, on etcd a quorum read each, which took half the
    /// claims a second with 64 busy parents.
    pub fn put_status(&mut self, prefix: &IPPrefix, precondition: Precondition) -> ApiResult<()> {
        self.status_puts += 1;
        self.put_at(Self::key_of(prefix), prefix, precondition)
    }

    fn put_at<K: Kind>(
        &mut self,
        key: ObjectKey,
        obj: &K,
        precondition: Precondition,
    ) -> ApiResult<()> {
        let value = codec::encode(obj)?;
        let read_revision = match precondition {
            Precondition::Revision(r) => r,
            _ => 0,
        };
        self.overlay
            .entry(key.clone())
            .and_modify(|e| e.0 = Some(value.clone()))
            .or_insert((Some(value.clone()), read_revision));
        self.push(Op::Put {
            key,
            value,
            precondition,
        });
        Ok(())
    }

    /// Write a new object without reading its key first: if the key is taken, the commit fails
    /// with `taken()` (a dry run checks it too). For names that are nearly always free (a
    /// claim's child prefix), this saves a read under the writer lock; the store checks the
    /// `Absent` precondition anyway.
    pub fn put_new<K: Kind>(
        &mut self,
        obj: &K,
        taken: impl FnOnce() -> ApiError + Send + Sync + 'static,
    ) -> ApiResult<()> {
        let key = Self::key_of(obj);
        if self
            .overlay
            .get(&key)
            .is_some_and(|(value, _)| value.is_some())
        {
            return Err(taken());
        }
        self.forget_parent::<K>(&key);
        self.put_at(key.clone(), obj, Precondition::Absent)?;
        self.if_taken.push((key, Box::new(taken)));
        Ok(())
    }

    pub fn delete<K: Kind>(&mut self, namespace: &str, name: &str, precondition: Precondition) {
        let key = Self::key::<K>(namespace, name);
        self.forget_parent::<K>(&key);
        self.overlay
            .entry(key.clone())
            .and_modify(|e| e.0 = None)
            .or_insert((None, 0));
        self.push(Op::Delete { key, precondition });
    }

    /// A write to an IPPrefix makes its decoded copy stale, whether or not the commit applies.
    fn forget_parent<K: Kind>(&mut self, key: &ObjectKey) {
        if K::RESOURCE == IPPrefix::RESOURCE {
            self.state.parents.remove(key.name.as_str());
        }
    }

    fn push(&mut self, op: Op) {
        match self.op_index.get(op.key()) {
            Some(&i) => {
                // Keep the first precondition: it is about the state before this transaction.
                let first = match &self.ops[i] {
                    Op::Put { precondition, .. } | Op::Delete { precondition, .. } => *precondition,
                    Op::Guard { .. } => Precondition::None,
                };
                self.ops[i] = match op {
                    Op::Put { key, value, .. } => Op::Put {
                        key,
                        value,
                        precondition: first,
                    },
                    Op::Delete { key, .. } => Op::Delete {
                        key,
                        precondition: first,
                    },
                    guard @ Op::Guard { .. } => guard,
                };
            }
            None => {
                self.op_index.insert(op.key().clone(), self.ops.len());
                self.ops.push(op);
            }
        }
    }

    /// Register how to reverse an in-memory index change if the transaction is not applied.
    pub fn on_undo(&mut self, f: impl FnOnce(&mut State) + Send + Sync + 'static) {
        self.undo.push(Box::new(f));
    }

    /// Apply atomically (or, for a dry run, undo everything and write nothing).
    pub async fn commit(mut self, dry_run: bool) -> ApiResult<TxnCommit> {
        if dry_run || self.ops.is_empty() {
            self.rollback();
            for (key, taken) in std::mem::take(&mut self.if_taken) {
                if self.store.get(&key).await.map_err(store_error)?.is_some() {
                    return Err(taken());
                }
            }
            return Ok(TxnCommit {
                revisions: HashMap::new(),
                committed: None,
                grouped: None,
                server_changes: Vec::new(),
            });
        }
        if self.store.shared() {
            let creates_only = self.ops.iter().all(|op| {
                matches!(
                    op,
                    Op::Put {
                        precondition: Precondition::Absent,
                        ..
                    }
                )
            });
            // A status refresh reads no index change a create makes (it counts them all, as
            // decided), and no create writes a parent: it may share their transaction
            // instead of committing the group first and then itself, two round trips with
            // the writer lock held.
            let status_only = self.status_puts == self.ops.len()
                && self.guards.is_empty()
                && self.undo.is_empty();
            if creates_only || status_only {
                return Ok(self.join_group().await);
            }
            // What this commit read must not miss what the group writes.
            super::group::commit(self.state, self.store).await;
        }
        let mut ops = std::mem::take(&mut self.ops);
        let keys: Vec<ObjectKey> = ops.iter().map(|o| o.key().clone()).collect();
        for guard in &self.guards {
            ops.push(Op::Guard {
                key: guard.clone(),
                at_most: self.state.guards.at_most(guard),
            });
        }
        let committed = self
            .store
            .commit(ops)
            .await
            .map_err(|e| commit_error(&e, &mut self.if_taken))?;
        self.applied = true;
        if self.store.shared() {
            let revision = committed.revisions.first().copied().unwrap_or_default();
            self.state.guards.committed(revision, &self.guards);
        }
        let metrics = crate::metrics::global();
        metrics.allocations.inc_by(self.allocations);
        metrics.releases.inc_by(self.releases);
        let revisions = keys
            .into_iter()
            .zip(committed.revisions.iter().copied())
            .collect();
        Ok(TxnCommit {
            revisions,
            committed: Some(committed),
            grouped: None,
            server_changes: std::mem::take(&mut self.server_changes),
        })
    }

    /// Join the open commit group (see `group.rs`), committing it first if this one does not
    /// fit. The index changes stay; the group undoes them if this create fails.
    async fn join_group(mut self) -> TxnCommit {
        let ops = std::mem::take(&mut self.ops);
        let keys = ops.iter().map(|op| op.key().clone()).collect();
        let guards = self
            .guards
            .iter()
            .map(|g| (g.clone(), self.state.guards.at_most(g)))
            .collect();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let member = super::group::Member {
            ops,
            guards,
            undo: std::mem::take(&mut self.undo),
            if_taken: std::mem::take(&mut self.if_taken),
            allocations: self.allocations,
            reply,
        };
        if !self.state.group.admits(&member) {
            super::group::commit(self.state, self.store).await;
        }
        self.state.group.join(member);
        self.applied = true;
        TxnCommit {
            revisions: HashMap::new(),
            committed: None,
            grouped: Some((keys, answer)),
            // Only creates and status refreshes join a group; the server changes nothing on
            // its own in one.
            server_changes: Vec::new(),
        }
    }

    fn rollback(&mut self) {
        while let Some(undo) = self.undo.pop() {
            undo(self.state);
        }
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if !self.applied {
            self.rollback();
        }
    }
}

/// Why a commit failed, as its writer answers: another replica changed an index it decided
/// from (a guard), a name it creates is taken (`if_taken`, see [`Txn::put_new`]), or the
/// store's own word.
pub(super) fn commit_error(e: &StoreError, if_taken: &mut Vec<(ObjectKey, Taken)>) -> ApiError {
    match e {
        StoreError::PreconditionFailed { key, actual, .. } if key.resource == GUARDS => {
            ApiError::IndexBehind {
                guard: format!("{}/{}", key.namespace, key.name),
                revision: actual.unwrap_or_default(),
            }
        }
        StoreError::PreconditionFailed { key, .. } => {
            match if_taken.iter().position(|(k, _)| k == key) {
                Some(i) => (if_taken.swap_remove(i).1)(),
                None => store_error(e.clone()),
            }
        }
        e => store_error(e.clone()),
    }
}

/// Storage words → API errors, at the registry boundary.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::PreconditionFailed { key, .. } => ApiError::conflict(
            key.resource,
            &key.name,
            format!(
                "Operation cannot be fulfilled on {}.{} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                key.resource,
                crate::api::GROUP,
                key.name
            ),
        ),
        StoreError::Expired { requested, oldest } => ApiError::Expired(format!(
            "too old resource version: {requested} ({oldest})"
        )),
        StoreError::Unavailable(m) => ApiError::ServiceUnavailable(format!("storage is unavailable: {m}")),
        StoreError::Corrupt(m) => ApiError::Internal(format!("storage is damaged: {m}")),
    }
}
