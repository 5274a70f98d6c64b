//! Group commit on a shared store (etcd): creates that queue for the writer lock while one
//! etcd round trip is in flight share the next transaction, as creates on sled share one fsync.
//!
//! A create decides under the writer lock as always (its index changes kept with their undo),
//! then joins the open group instead of committing, lets go of the lock, and takes it again:
//! whoever queued meanwhile has joined the group by then, and the first member back commits
//! the whole group as one store transaction, holding the lock for the round trip. The lock
//! held across it means nobody decides from a member's index changes before the group's fate
//! is known, and the group only ever holds creates (every op a `Put` of an absent key), whose
//! decisions read nothing another member writes, and status refreshes of parents (a `Put`
//! conditional on the revision read), which no create writes. Every other commit, and the
//! replay of other replicas' writes, first commits the open group.
//!
//! A failed compare fails only the members it concerns (the one whose key was taken; every
//! member deciding from a guard another replica bumped): their index changes are undone and
//! they answer or retry on their own; the rest go again in the next transaction.
use super::state::State;
use super::txn::{commit_error, Taken, Undo};
use crate::error::ApiResult;
use crate::store::{ObjectKey, Op, Revision, Store, StoreError};
use std::collections::{BTreeMap, HashSet};
use tokio::sync::oneshot;

/// etcd's default `--max-txn-ops` (128) bounds a transaction's compares and its writes alike;
/// the store adds one write of its own to every commit.
const MAX_OPS: usize = 127;
/// Under etcd's default 1.5 MiB request limit, with room for the keys and framing.
const MAX_BYTES: usize = 1024 * 1024;

/// One create (or status refresh) waiting in the group.
pub(super) struct Member {
    /// Its writes: a create's each a `Put` of an absent key, a status refresh's each
    /// conditional on the parent's revision.
    pub ops: Vec<Op>,
    /// Its guards, each with the revision its index included (`Guards::at_most`).
    pub guards: Vec<(ObjectKey, Revision)>,
    pub undo: Vec<Undo>,
    pub if_taken: Vec<(ObjectKey, Taken)>,
    pub allocations: u64,
    pub reply: oneshot::Sender<ApiResult<Revision>>,
}

#[derive(Default)]
pub struct Group {
    members: Vec<Member>,
    keys: HashSet<ObjectKey>,
    guards: HashSet<ObjectKey>,
    bytes: usize,
}

impl Group {
    /// Whether `member` can join without passing etcd's limits or writing a key twice (which
    /// etcd refuses in one transaction).
    pub(super) fn admits(&self, member: &Member) -> bool {
        if self.members.is_empty() {
            return true;
        }
        let new_guards = member
            .guards
            .iter()
            .filter(|(g, _)| !self.guards.contains(g))
            .count();
        let bytes: usize = member.ops.iter().map(op_bytes).sum();
        self.keys.len() + self.guards.len() + member.ops.len() + new_guards <= MAX_OPS
            && self.bytes + bytes <= MAX_BYTES
            && member.ops.iter().all(|op| !self.keys.contains(op.key()))
    }

    pub(super) fn join(&mut self, member: Member) {
        for op in &member.ops {
            self.keys.insert(op.key().clone());
            self.bytes += op_bytes(op);
        }
        for (guard, _) in &member.guards {
            self.guards.insert(guard.clone());
        }
        self.members.push(member);
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Take out the members that decided from one of `guards`, keeping the rest's bookkeeping.
    fn take_concerned(&mut self, guards: &HashSet<ObjectKey>) -> Vec<Member> {
        let (concerned, rest): (Vec<Member>, Vec<Member>) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|m| m.guards.iter().any(|(g, _)| guards.contains(g)));
        *self = Group::default();
        for member in rest {
            self.join(member);
        }
        concerned
    }
}

/// Fail now, with no transaction, the members that decided from one of `guards`, which
/// another replica bumped at `revision` (its change is about to enter the indexes): etcd
/// would refuse their compares anyway. Their index changes are undone before that change is
/// applied, so it never meets them; they decide again at once. The rest stay in the group.
pub(super) fn drop_concerned(state: &mut State, guards: &HashSet<ObjectKey>, revision: Revision) {
    let concerned = state.group.take_concerned(guards);
    for member in concerned.into_iter().rev() {
        let Member {
            undo,
            guards: decided_from,
            reply,
            ..
        } = member;
        for undo in undo.into_iter().rev() {
            undo(state);
        }
        let guard = decided_from
            .iter()
            .find(|(g, _)| guards.contains(g))
            .map(|(g, _)| format!("{}/{}", g.namespace, g.name))
            .unwrap_or_default();
        let _ = reply.send(Err(crate::error::ApiError::IndexBehind { guard, revision }));
    }
}

fn op_bytes(op: &Op) -> usize {
    let key = op.key();
    let value = match op {
        Op::Put { value, .. } => value.len(),
        _ => 0,
    };
    key.resource.len() + key.namespace.len() + key.name.len() + value + 16
}

/// Commit the open group, if any, as one store transaction; the caller holds the writer lock.
/// Every member gets its answer through its `reply`.
pub(super) async fn commit(state: &mut State, store: &dyn Store) {
    let mut members = std::mem::take(&mut state.group).members;
    while !members.is_empty() {
        // One compare per guard: the oldest index any member decided from.
        let mut guards: BTreeMap<ObjectKey, Revision> = BTreeMap::new();
        for (guard, at_most) in members.iter().flat_map(|m| &m.guards) {
            let oldest = guards.entry(guard.clone()).or_insert(*at_most);
            *oldest = (*oldest).min(*at_most);
        }
        crate::metrics::global()
            .commit_batch
            .observe(members.len() as f64);
        let mut ops: Vec<Op> = members.iter().flat_map(|m| m.ops.clone()).collect();
        ops.extend(guards.iter().map(|(key, at_most)| Op::Guard {
            key: key.clone(),
            at_most: *at_most,
        }));
        let outcome = match store.commit(ops).await {
            Ok(committed) => {
                let revision = committed.revisions.first().copied().unwrap_or_default();
                committed.durable.await.map(|()| revision)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(revision) => {
                state.guards.committed(revision, guards.keys());
                let metrics = crate::metrics::global();
                for member in members.drain(..) {
                    metrics.allocations.inc_by(member.allocations);
                    let _ = member.reply.send(Ok(revision));
                }
            }
            Err(e) => {
                let (failed, rest): (Vec<Member>, Vec<Member>) = match &e {
                    StoreError::PreconditionFailed { key, .. } => {
                        let concerned = |m: &Member| {
                            m.ops.iter().any(|op| op.key() == key)
                                || m.guards.iter().any(|(g, _)| g == key)
                        };
                        if members.iter().any(concerned) {
                            members.into_iter().partition(concerned)
                        } else {
                            (members, Vec::new())
                        }
                    }
                    _ => (members, Vec::new()),
                };
                for member in failed.into_iter().rev() {
                    let Member {
                        undo,
                        mut if_taken,
                        reply,
                        ..
                    } = member;
                    for undo in undo.into_iter().rev() {
                        undo(state);
                    }
                    let _ = reply.send(Err(commit_error(&e, &mut if_taken)));
                }
                members = rest;
            }
        }
    }
}
