//! Status the server derives: an IPPrefix's capacity from its pool, its phase from its claim.
use super::state::{new_pool, State};
use super::txn::{Stored, Txn};
use crate::alloc::Pool;
use crate::api::{IPPrefix, IPPrefixStatus, IpFamily, PrefixCapacity};
use crate::error::ApiResult;
use crate::store::Precondition;

/// Recompute the derived status fields of `prefix` (phase is kept: transitions set it).
pub fn refresh_prefix_status(prefix: &mut IPPrefix, state: &State) -> ApiResult<()> {
    let name = prefix.metadata.name.clone().unwrap_or_default();
    match state.pool(&name) {
        Some(entry) => fill_prefix_status(prefix, &entry.pool),
        None => fill_prefix_status(prefix, &new_pool(prefix)?),
    }
    Ok(())
}

/// Set `prefix`'s derived status from `pool`, its allocator.
pub fn fill_prefix_status(prefix: &mut IPPrefix, pool: &Pool) {
    let cap = pool.capacity();
    let status = prefix.status.get_or_insert_with(IPPrefixStatus::default);
    status.ip_family = Some(IpFamily::of(&pool.prefix()).as_str().to_string());
    status.capacity = Some(PrefixCapacity {
        total: cap.total.to_string(),
        allocated: cap.allocated.to_string(),
        excluded: cap.excluded.to_string(),
        available: cap.available.to_string(),
    });
    status.utilization = Some(cap.utilization());
    status.largest_free_prefix_length = pool.largest_free_prefix_len().map(i32::from);
    status.children = Some(i64::try_from(pool.allocated_count()).unwrap_or(i64::MAX));
    if status.phase.is_none() {
        status.phase = Some(crate::api::prefix_phase::AVAILABLE.to_string());
    }
}

/// Write `parent` back with its status recomputed (its children changed in this transaction).
pub fn write_parent_status(tx: &mut Txn<'_>, parent: Stored<IPPrefix>) -> ApiResult<()> {
    let Stored {
        obj: mut parent,
        revision,
    } = parent;
    refresh_prefix_status(&mut parent, tx.state)?;
    parent.metadata.resource_version = None;
    tx.put(&parent, Precondition::Revision(revision))
}
