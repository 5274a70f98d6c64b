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

/// How long the status writer (`State::mark_status_stale`) waits after writing before it
/// writes again: under a burst of
/// claims a parent's status (and resourceVersion) changes ten times a second, not once per
/// claim. Writing it in every claim's transaction cost each create a second object to decode,
/// encode and store, and each watcher of IPPrefixes an event: 8-10 % of a create's CPU here,
/// more in a cluster, where kube-controller-manager decodes every event.
pub const STATUS_BATCH_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// IPPrefix statuses the status writer puts in one commit: within etcd's default limit of 128
/// operations per transaction.
pub const STATUS_WRITES_PER_COMMIT: usize = 100;

/// Put `prefix` back with its derived status recomputed, when that changed it. Returns whether
/// it wrote.
pub fn store_current_status(tx: &mut Txn<'_>, prefix: Stored<IPPrefix>) -> ApiResult<bool> {
    let Stored {
        obj: mut prefix,
        revision,
    } = prefix;
    let before = prefix.status.clone();
    refresh_prefix_status(&mut prefix, tx.state)?;
    if prefix.status == before {
        return Ok(false);
    }
    prefix.metadata.resource_version = None;
    tx.put(&prefix, Precondition::Revision(revision))?;
    Ok(true)
}

/// The status fields a `/status` write asked to change that the server owns and kept: every
/// such write succeeds with the server's values, and says which of its values it ignored (a
/// `Warning` each), whatever the verb (PUT, merge or JSON patch, server-side apply).
/// `written` is the object the client's write produced, `stored` what the server stored.
/// Conditions are compared by type (a client may write conditions of its own types).
pub fn ignored_status_writes(
    written: &serde_json::Value,
    stored: &serde_json::Value,
) -> Vec<String> {
    use serde_json::Value;
    let fields = |v: &Value| v.get("status").and_then(Value::as_object).cloned();
    let (Some(written), stored) = (fields(written), fields(stored).unwrap_or_default()) else {
        return Vec::new();
    };
    let mut ignored = Vec::new();
    for (key, value) in &written {
        if key == "conditions" {
            let by_type = |v: Option<&Value>| -> Vec<(String, Value)> {
                v.and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let t = c.get("type").and_then(Value::as_str).unwrap_or_default();
                        (t.to_string(), c.clone())
                    })
                    .collect()
            };
            let kept = by_type(stored.get("conditions"));
            for (t, c) in by_type(Some(value)) {
                if !kept.iter().any(|(kt, kc)| *kt == t && *kc == c) {
                    ignored.push(format!("status.conditions[type={t}]"));
                }
            }
        } else if stored.get(key) != Some(value) && (!value.is_null() || stored.contains_key(key)) {
            ignored.push(format!("status.{key}"));
        }
    }
    ignored
        .into_iter()
        .map(|f| format!("{f} is set by the server: the value written was ignored"))
        .collect()
}
