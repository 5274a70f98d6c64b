//! Delete = release: what happens to a block when the claim holding it goes.
//!
//! Only Bound descendants hold a deleting claim (a project pool with subnets in use). Released
//! and Available descendants, with nothing Bound below them, go with it since their parent block
//! is going; one with a user finalizer is kept terminating, holding its block, until the
//! finalizer is removed (Kubernetes removes an object only when its finalizers are gone).
//! Every change that may end a wait walks up from where it happened ([`settle`]), in the same
//! transaction.
use super::changes::{reason, ServerChange};
use super::meta;
use super::policy;
use super::prefix::{name_of, release_prefix};
use super::txn::{Stored, Txn};
use crate::api::*;
use crate::error::ApiResult;
use crate::store::Precondition;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// How many holders a waiting claim's condition names.
const NAMED_HOLDERS: usize = 3;
/// How many Bound descendants a waiting claim's condition counts ("at least" beyond): it is
/// counted again at each release below it, and a subnet may hold 2^16 hosts.
const COUNTED_HOLDERS: usize = 1000;

/// The Bound IPPrefixes below `name`, up to `limit` of them: the topmost ones only (what lies
/// below a Bound one is its own claim's concern). Read from the index, no object is read.
pub(super) fn bound_below(tx: &Txn<'_>, name: &str, limit: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut below = vec![name.to_string()];
    while let Some(p) = below.pop() {
        let Some(entry) = tx.state.pool(&p) else {
            continue;
        };
        for child in entry.holders.values() {
            if found.len() >= limit {
                return found;
            }
            if tx.state.is_bound(child) {
                found.push(child.clone());
            } else {
                below.push(child.clone());
            }
        }
    }
    found
}

/// [`bound_below`] for a waiting claim's condition.
pub(super) fn holders_of(tx: &Txn<'_>, name: &str) -> Vec<String> {
    bound_below(tx, name, COUNTED_HOLDERS)
}

/// Record that the child `name` is (no longer) Bound, undone with the transaction.
pub(super) fn set_bound(tx: &mut Txn<'_>, name: &str, bound: bool) {
    if tx.state.set_bound(name, bound) {
        let n = name.to_string();
        tx.on_undo(move |s| {
            s.set_bound(&n, !bound);
        });
    }
}

/// The direct children of `name`, in address order.
fn children_of(tx: &Txn<'_>, name: &str) -> Vec<String> {
    let Some(entry) = tx.state.pool(name) else {
        return Vec::new();
    };
    let mut kids: Vec<(&IpNet, &String)> = entry.holders.iter().collect();
    kids.sort();
    kids.into_iter().map(|(_, n)| n.clone()).collect()
}

/// The condition of a claim that waits for the Bound `holders` below its IPPrefix (as
/// counted by [`holders_of`]).
pub(super) fn waiting_condition(
    prefix: &str,
    holders: &[String],
    generation: Option<i64>,
) -> Condition {
    let mut named: Vec<&String> = holders.iter().collect();
    named.sort();
    let shown: Vec<String> = named
        .iter()
        .take(NAMED_HOLDERS)
        .map(|h| format!("\"{h}\""))
        .collect();
    let more = holders.len().saturating_sub(NAMED_HOLDERS);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let count = if holders.len() >= COUNTED_HOLDERS {
        format!("at least {}", holders.len())
    } else {
        holders.len().to_string()
    };
    let noun = if holders.len() == 1 {
        "ipprefix"
    } else {
        "ipprefixes"
    };
    Condition {
        type_: RELEASED_CONDITION.into(),
        status: "False".into(),
        reason: released_reason::WAITING_FOR_CHILDREN.into(),
        message: format!(
            "waiting for {count} bound {noun} below ipprefix \"{prefix}\": {}{tail}",
            shown.join(", ")
        ),
        last_transition_time: meta::now(),
        observed_generation: generation,
    }
}

/// Put `condition` in `claim`'s status, keeping `lastTransitionTime` when only the message
/// changed. Returns whether anything changed.
pub(super) fn set_condition(claim: &mut IPPrefixClaim, condition: Condition) -> bool {
    let status = claim.status.get_or_insert_with(Default::default);
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == condition.type_)
    {
        Some(c)
            if c.status == condition.status
                && c.reason == condition.reason
                && c.message == condition.message =>
        {
            false
        }
        Some(c) => {
            let since = c.last_transition_time.clone();
            let same_status = c.status == condition.status;
            *c = condition;
            if same_status {
                c.last_transition_time = since;
            }
            true
        }
        None => {
            status.conditions.push(condition);
            true
        }
    }
}

/// Release the block held by a claim that is going away, following the prefix's
/// reclaimPolicy: `Retain` keeps it `Released` for a claim of the same name, until its
/// retention (the claim's `retention_seconds`, capped by the parent's `maxRetentionSeconds`)
/// ends; `Delete` frees it
/// and the unbound prefixes below it, or, when a user finalizer keeps one of them, leaves it
/// terminating (`Released`, `deletionTimestamp`), still holding its block.
pub(super) async fn release_claimed_prefix(
    tx: &mut Txn<'_>,
    child: Stored<IPPrefix>,
    retention_seconds: Option<i64>,
) -> ApiResult<()> {
    let Stored {
        obj: mut prefix,
        revision,
    } = child;
    let name = name_of(&prefix);
    let retain = prefix
        .spec
        .reclaim_policy
        .as_deref()
        .and_then(ReclaimPolicy::parse)
        == Some(ReclaimPolicy::Retain);
    if retain {
        let parent = match &prefix.spec.parent_ref {
            Some(r) => tx.get::<IPPrefix>("", &r.name).await?,
            None => None,
        };
        let keep = policy::retention(parent.as_ref().map(|p| &p.obj), retention_seconds);
        let now = meta::now();
        let until = keep.map(|secs| {
            jiff::Timestamp::from_second(now.0.as_second().saturating_add(secs))
                .unwrap_or(jiff::Timestamp::MAX)
        });
        let status = prefix.status.get_or_insert_with(Default::default);
        status.phase = Some(prefix_phase::RELEASED.into());
        status.released_at = Some(now);
        status.retained_until = until.map(Time);
        prefix.metadata.resource_version = None;
        tx.put(&prefix, Precondition::Revision(revision))?;
        if let Some(until) = until {
            let previous = tx.state.expiries.insert(&name, until.as_second());
            let n = name.clone();
            tx.on_undo(move |s| {
                s.expiries.remove(&n);
                if let Some(at) = previous {
                    s.expiries.insert(&n, at);
                }
            });
        }
        set_bound(tx, &name, false);
        if let Some(c) = &prefix.spec.claim_ref {
            let key = (c.namespace.clone(), c.name.clone());
            tx.state.released.insert(key.clone(), name.clone());
            tx.on_undo(move |s| {
                s.released.remove(&key);
            });
        }
        // A Bound descendant fewer: a claim above may have waited for this one.
        return settle_above(tx, &prefix).await;
    }
    let freed_below = free_below(tx, &name).await?;
    if freed_below
        && prefix
            .metadata
            .finalizers
            .as_ref()
            .is_none_or(Vec::is_empty)
    {
        let parent = release_prefix(tx, &prefix).await?;
        tx.delete::<IPPrefix>("", &name, Precondition::Revision(revision));
        return match parent {
            Some(parent) => settle(tx, parent).await,
            None => Ok(()),
        };
    }
    // Kept by a finalizer (its own, or one below it): the block is released when it goes.
    terminate(tx, prefix.clone(), revision)?;
    settle_above(tx, &prefix).await
}

/// Mark `prefix` terminating: its claim is gone (`Released`) and something still keeps it.
/// A prefix without a user finalizer of its own waits behind the server's in-use finalizer.
fn terminate(tx: &mut Txn<'_>, mut prefix: IPPrefix, revision: u64) -> ApiResult<()> {
    let meta = &mut prefix.metadata;
    meta.deletion_timestamp.get_or_insert_with(meta::now);
    meta.deletion_grace_period_seconds = Some(0);
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if finalizers.is_empty() {
        finalizers.push(PREFIX_IN_USE_FINALIZER.to_string());
    }
    meta.resource_version = None;
    if prefix.spec.claim_ref.is_some() {
        prefix.status.get_or_insert_with(Default::default).phase =
            Some(prefix_phase::RELEASED.into());
    }
    tx.put(&prefix, Precondition::Revision(revision))?;
    set_bound(tx, &name_of(&prefix), false);
    Ok(())
}

/// Free every prefix below `name` (none is Bound: the caller checked), deepest first. Returns
/// whether all went; one kept by a user finalizer (and each prefix above it) is left
/// terminating instead, holding its block.
// Boxed: it recurses.
fn free_below<'a>(
    tx: &'a mut Txn<'_>,
    name: &'a str,
) -> futures::future::BoxFuture<'a, ApiResult<bool>> {
    Box::pin(async move {
        let mut all = true;
        for child in children_of(tx, name) {
            let kids_freed = free_below(tx, &child).await?;
            let Some(c) = tx.get::<IPPrefix>("", &child).await? else {
                continue;
            };
            if kids_freed && c.obj.metadata.finalizers.as_ref().is_none_or(Vec::is_empty) {
                release_prefix(tx, &c.obj).await?;
                tx.delete::<IPPrefix>("", &child, Precondition::Revision(c.revision));
            } else {
                all = false;
                terminate(tx, c.obj.clone(), c.revision)?;
            }
            tx.server_changes
                .push(ServerChange::delete_prefix(c.obj, reason::PARENT_FREED));
        }
        Ok(all)
    })
}

/// [`settle`] from the parent of `prefix`, if it has one.
async fn settle_above(tx: &mut Txn<'_>, prefix: &IPPrefix) -> ApiResult<()> {
    let Some(parent) = &prefix.spec.parent_ref else {
        return Ok(());
    };
    match tx.get::<IPPrefix>("", &parent.name).await? {
        Some(parent) => settle(tx, parent).await,
        None => Ok(()),
    }
}

/// Something below `prefix` was released or freed. Walking up: a terminating prefix that only
/// waited for its children goes; at the first Bound prefix, its claim, if it waits behind the
/// in-use finalizer, is released when nothing below holds it, or its condition is updated.
pub(super) async fn settle(tx: &mut Txn<'_>, prefix: Stored<IPPrefix>) -> ApiResult<()> {
    let mut current = prefix;
    loop {
        let p = &current.obj;
        let name = name_of(p);
        let only_in_use = p
            .metadata
            .finalizers
            .iter()
            .flatten()
            .all(|f| f == PREFIX_IN_USE_FINALIZER);
        if p.metadata.deletion_timestamp.is_some() && only_in_use {
            if tx.state.children(&name) > 0 {
                return Ok(());
            }
            let parent = release_prefix(tx, p).await?;
            tx.delete::<IPPrefix>("", &name, Precondition::Revision(current.revision));
            tx.server_changes.push(ServerChange::delete_prefix(
                current.obj,
                reason::NO_LONGER_IN_USE,
            ));
            match parent {
                Some(parent) => {
                    current = parent;
                    continue;
                }
                None => return Ok(()),
            }
        }
        if p.phase() == prefix_phase::BOUND {
            return settle_claim(tx, current).await;
        }
        let Some(parent) = &p.spec.parent_ref else {
            return Ok(());
        };
        match tx.get::<IPPrefix>("", &parent.name).await? {
            Some(parent) => current = parent,
            None => return Ok(()),
        }
    }
}

/// The claim bound to `prefix`, if it waits behind the in-use finalizer: released when nothing
/// below holds it any more, else its condition names what still does.
// Boxed: it and `release_claimed_prefix` call each other.
fn settle_claim<'a>(
    tx: &'a mut Txn<'_>,
    prefix: Stored<IPPrefix>,
) -> futures::future::BoxFuture<'a, ApiResult<()>> {
    Box::pin(async move {
        let Some(cr) = prefix.obj.spec.claim_ref.clone() else {
            return Ok(());
        };
        let Some(claim) = tx.get::<IPPrefixClaim>(&cr.namespace, &cr.name).await? else {
            return Ok(());
        };
        let finalizers = claim.obj.metadata.finalizers.clone().unwrap_or_default();
        if claim.obj.metadata.deletion_timestamp.is_none()
            || !finalizers.iter().any(|f| f == PREFIX_IN_USE_FINALIZER)
        {
            return Ok(());
        }
        let prefix_name = name_of(&prefix.obj);
        let holders = holders_of(tx, &prefix_name);
        let mut obj = claim.obj;
        obj.metadata.resource_version = None;
        if !holders.is_empty() {
            let condition = waiting_condition(&prefix_name, &holders, obj.metadata.generation);
            if set_condition(&mut obj, condition) {
                tx.put(&obj, Precondition::Revision(claim.revision))?;
            }
            return Ok(());
        }
        let remaining: Vec<String> = finalizers
            .into_iter()
            .filter(|f| f != PREFIX_IN_USE_FINALIZER)
            .collect();
        if remaining.is_empty() {
            release_claimed_prefix(tx, prefix, obj.spec.retention_seconds).await?;
            tx.delete::<IPPrefixClaim>(
                &cr.namespace,
                &cr.name,
                Precondition::Revision(claim.revision),
            );
            tx.server_changes
                .push(ServerChange::delete_claim(obj, reason::NO_LONGER_IN_USE));
        } else {
            // Other finalizers still hold it; the release happens when the last of them goes.
            obj.metadata.finalizers = Some(remaining);
            if let Some(s) = obj.status.as_mut() {
                s.conditions.retain(|c| c.type_ != RELEASED_CONDITION);
            }
            tx.put(&obj, Precondition::Revision(claim.revision))?;
        }
        Ok(())
    })
}
