//! Storage: one trait, so a distributed store can replace sled without touching the layers above.
//!
//! The store knows keys, opaque values and revisions, never Kubernetes types. Like etcd, it
//! assigns the revision (`resourceVersion`) itself: every written key gets its own, strictly
//! increasing across the whole store, and the registry stamps it into the object on read.

pub mod etcd;
mod events;
mod leadership;
mod sled_store;

pub use etcd::{EtcdOptions, EtcdStore};
pub use events::{EventType, HistoryLimits, SharedEncoding, StoreEvent};
pub use leadership::Leadership;
pub use sled_store::SledStore;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::sync::Arc;

/// A store-wide, increasing version: the `resourceVersion` of Kubernetes. Every commit gets a
/// newer one than the commits before it; the keys of one commit may share one (etcd gives a
/// whole transaction one revision).
pub type Revision = u64;

/// Where an object lives: resource plural, namespace (empty when cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub resource: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(
        resource: &'static str,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        ObjectKey {
            resource,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The byte key: `resource/namespace/name`. Names and namespaces cannot contain `/`, so
    /// the order is by namespace then name, as etcd orders Kubernetes keys.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}/{}/{}", self.resource, self.namespace, self.name).into_bytes()
    }

    pub fn decode(resource: &'static str, bytes: &[u8]) -> Option<ObjectKey> {
        let s = std::str::from_utf8(bytes).ok()?;
        let rest = s.strip_prefix(resource)?.strip_prefix('/')?;
        let (ns, name) = rest.split_once('/')?;
        Some(ObjectKey::new(resource, ns, name))
    }
}

/// A range of keys to list: one resource, optionally one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub resource: &'static str,
    pub namespace: Option<String>,
}

impl KeyRange {
    pub fn prefix(&self) -> Vec<u8> {
        match &self.namespace {
            Some(ns) => format!("{}/{}/", self.resource, ns).into_bytes(),
            None => format!("{}/", self.resource).into_bytes(),
        }
    }

    pub fn contains(&self, key: &ObjectKey) -> bool {
        key.resource == self.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
    }
}

/// A stored value with the revision that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub key: ObjectKey,
    pub revision: Revision,
    pub value: Bytes,
}

/// What must hold for an operation to apply; checked atomically with the whole commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No condition.
    None,
    /// The key must not exist (create).
    Absent,
    /// The key must exist at exactly this revision (optimistic concurrency).
    Revision(Revision),
}

impl Precondition {
    /// Whether a key last written at `actual` (`None`: absent) meets it.
    pub fn holds(self, actual: Option<Revision>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::Absent => actual.is_none(),
            Precondition::Revision(r) => actual == Some(r),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: ObjectKey,
        value: Bytes,
        precondition: Precondition,
    },
    Delete {
        key: ObjectKey,
        precondition: Precondition,
    },
    /// Stands for an index kept in memory above the store (one parent's children, the roots of
    /// one address space): the commit applies only if no commit after `at_most` changed what
    /// the guard stands for, and it counts as such a change itself. On a store with a single
    /// writer (sled) it always holds and writes nothing; on a shared store (etcd) it is a key
    /// compared and bumped in the same transaction as the writes, which is what keeps several
    /// writers, each deciding from its own index, from handing out one block twice.
    Guard { key: ObjectKey, at_most: Revision },
}

impl Op {
    pub fn key(&self) -> &ObjectKey {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Guard { key, .. } => key,
        }
    }
}

/// The storage words. The registry turns them into API errors exactly once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("precondition failed for {key:?}: expected {expected:?}, found revision {actual:?}")]
    PreconditionFailed {
        key: ObjectKey,
        expected: Precondition,
        actual: Option<Revision>,
    },
    #[error("revision {requested} is older than the oldest retained revision {oldest}")]
    Expired {
        requested: Revision,
        oldest: Revision,
    },
    /// Writes cannot be made durable (I/O error, disk full, failed fsync). Nothing acknowledged.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The data directory is not ours, or is damaged.
    #[error("{0}")]
    Corrupt(String),
}

/// The outcome of a commit: applied (visible to reads) now, durable when `durable` resolves.
pub struct Committed {
    /// The revision of each op, in op order.
    pub revisions: Vec<Revision>,
    /// Resolves once the commit is on disk (group commit: many commits share one fsync).
    pub durable: BoxFuture<'static, Result<(), StoreError>>,
}

/// A writer on its way to [`Store::commit`]: waiting for its turn or preparing its ops. Drop it
/// once the commit is handed over, or given up.
#[derive(Default)]
pub struct CommitIntent {
    ended: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl CommitIntent {
    /// `ended` runs when the intent is dropped.
    pub fn new(ended: Arc<dyn Fn() + Send + Sync>) -> Self {
        CommitIntent { ended: Some(ended) }
    }
}

impl Drop for CommitIntent {
    fn drop(&mut self) {
        if let Some(ended) = &self.ended {
            ended()
        }
    }
}

/// A page of a list: items in key order and the revision the list was read at.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Versioned>,
    pub revision: Revision,
    /// More keys follow the last item.
    pub more: bool,
    /// When `more`: how many keys of the range follow the last item at `revision` (whether or
    /// not the filter would take them), where the store knows it cheaply (etcd); else `None`.
    pub remaining: Option<usize>,
}

/// Which state a read sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAt {
    /// The latest: every write acknowledged anywhere before the read began.
    Latest,
    /// As of this revision (the later pages of a list). A store that keeps past versions
    /// ([`Store::keeps_versions`]: etcd, until it compacts them, then `Expired`) reads them; one
    /// that keeps only the latest state (sled) reads that.
    Revision(Revision),
    /// Any state at or after this revision (`resourceVersion` N, or 0: whatever is at hand):
    /// a store with a cache answers from it without asking for the latest.
    NotOlderThan(Revision),
}

/// Which listed values count (see [`Store::list`]).
pub type ListFilter<'a> = dyn for<'v> FnMut(&'v Versioned) -> bool + Send + 'a;

/// A watcher's events in revision order: `Err(Expired)` ends it when it fell too far behind
/// (the client lists again), and it ends when the store shuts down.
pub type EventStream = BoxStream<'static, Result<Arc<StoreEvent>, StoreError>>;

/// The storage boundary. Reads and commits are async: on etcd they are network calls.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError>;

    /// [`Store::get`] as of `at` ([`ReadAt::NotOlderThan`] may answer from a cache at once).
    async fn get_at(&self, key: &ObjectKey, at: ReadAt) -> Result<Option<Versioned>, StoreError> {
        let _ = at;
        self.get(key).await
    }

    /// Keys in `range` after `start_after` in key order as of `at`, at most `limit` of them.
    /// `filter` decides which values count towards `limit`.
    async fn list(
        &self,
        range: &KeyRange,
        start_after: Option<&ObjectKey>,
        at: ReadAt,
        limit: Option<usize>,
        filter: &mut ListFilter<'_>,
    ) -> Result<ListPage, StoreError>;

    /// Whether [`ReadAt::Revision`] reads that revision (so the pages of a list are one
    /// snapshot) rather than the latest state.
    fn keeps_versions(&self) -> bool {
        false
    }

    /// Apply all ops atomically, or none if any precondition fails.
    async fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError>;

    /// The newest revision this store has applied (its own commits and, on a shared store,
    /// every other writer's that it has seen).
    fn revision(&self) -> Revision;

    /// The newest revision at which a key now in `range` was written, asked of the store now
    /// (etcd: a quorum read), so it includes every such write acknowledged anywhere before
    /// the call; 0 when the range is empty. A single-writer store answers what it applied.
    async fn newest_in(&self, _range: &KeyRange) -> Result<Revision, StoreError> {
        Ok(self.revision())
    }

    /// The oldest revision a watch may start after; older ones are `Expired`.
    fn oldest_watchable(&self) -> Revision;

    /// Durable events with a revision greater than `after`, then live ones as they become durable.
    fn watch(&self, after: Revision) -> Result<EventStream, StoreError>;

    /// Flush everything to disk (shutdown).
    fn flush(&self) -> Result<(), StoreError>;

    /// Say that a commit is on its way, for as long as the returned value lives. A store that
    /// makes many commits durable with one fsync may hold that fsync for it, so it shares this
    /// one instead of waiting for the next; with nobody on the way it need not wait at all.
    /// Only a hint: other stores ignore it.
    fn intend_commit(&self) -> CommitIntent {
        CommitIntent::default()
    }

    /// Why the store can no longer be trusted (a failed fsync), if it cannot. Its in-memory state
    /// may then hold writes that never reached the disk, so nothing should be served from it.
    fn failure(&self) -> Option<String>;

    /// Whether the store can serve now, for `/readyz` (`Err` says why): etcd without quorum is
    /// not ready, yet no reason to restart (`failure` stays `None`).
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether other processes write to this store too (etcd shared by replicas). Then the
    /// registry follows [`Store::watch`] to keep its indexes in step with their writes and
    /// puts [`Op::Guard`]s in its commits; with a single writer neither is needed.
    fn shared(&self) -> bool {
        false
    }

    /// Stop leading and let another process lead at once (a clean shutdown), instead of
    /// after the lease ends. Nothing to do for a store no other process shares.
    async fn resign(&self) {}

    /// The most ops one commit may hold (etcd limits a transaction's operations).
    fn max_commit_ops(&self) -> usize {
        usize::MAX
    }

    /// Whether this process does the work that must happen once across every process sharing
    /// the store (status refresh, retention expiry, Released events, compaction). A store no
    /// other process shares always leads.
    fn leadership(&self) -> Leadership {
        Leadership::always()
    }

    /// Publish how other processes reach this one (an opaque `contact`, e.g. a URL and a
    /// credential), for them to read while this process leads ([`Store::leader_contact`]).
    /// Nothing to publish to on a store no other process shares.
    fn advertise(&self, _contact: String) {}

    /// What the process leading now published ([`Store::advertise`]), when another process
    /// leads and it published something; as last seen, so it may lag a change of leader.
    fn leader_contact(&self) -> Option<Arc<str>> {
        None
    }
}

/// The resource name of guard keys ([`Op::Guard`]): never an API resource, never listed.
pub const GUARDS: &str = "guards";

#[cfg(test)]
mod sled_tests;
#[cfg(test)]
pub(crate) mod tests;
