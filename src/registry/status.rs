//! Status the server derives: an IPPrefix's capacity from its pool, its phase from its claim.
use super::codec;
use super::generic::Registry;
use super::state::{new_pool, State};
use super::txn::{store_error, Stored, Txn};
use crate::alloc::Pool;
use crate::api::{IPPrefix, IPPrefixStatus, IpFamily, PrefixCapacity};
use crate::error::{ApiError, ApiResult};
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

impl Registry {
    /// Store the status of every IPPrefix whose children changed since the last call (see
    /// `State::mark_status_stale`), [`STATUS_WRITES_PER_COMMIT`] per commit, and wait until
    /// they are durable. Returns how many were written. Marks given up on by a failed commit
    /// stay marked.
    pub async fn write_stale_statuses(&self) -> ApiResult<usize> {
        let mut written = 0;
        loop {
            let (batch, more) = self.write_stale_batch().await?;
            written += batch;
            if !more {
                return Ok(written);
            }
        }
    }

    /// One commit of [`Registry::write_stale_statuses`]; also says whether more are marked.
    async fn write_stale_batch(&self) -> ApiResult<(usize, bool)> {
        self.ensure_available()?;
        let (names, more) = {
            let mut state = self.lock().await;
            let mut names = state.take_stale_statuses();
            let rest = match names.iter().nth(STATUS_WRITES_PER_COMMIT).cloned() {
                Some(first_of_rest) => names.split_off(&first_of_rest),
                None => Default::default(),
            };
            for name in &rest {
                state.mark_status_stale(name);
            }
            (names, !rest.is_empty())
        };
        if names.is_empty() {
            return Ok((0, false));
        }
        // Read outside the writer lock, the batch at once: a new leader checks every parent
        // marked while it followed (on etcd, a network read each), and writers should not wait
        // for that. Each write is conditional on the revision read: a parent changed since
        // fails the commit, and stays marked.
        let reads: Vec<_> = names.iter().map(|name| self.read_prefix(name)).collect();
        let read = futures::future::try_join_all(reads).await;
        let written = async {
            let (written, mut commit) = {
                let mut state = self.lock_to_commit().await;
                let mut tx = Txn::new(&**self.store(), &mut state);
                let mut written = 0;
                for prefix in read?.into_iter().flatten() {
                    written += usize::from(store_current_status(&mut tx, prefix)?);
                }
                (written, tx.commit(false).await?)
            };
            // A refresh may join the open group (see `group.rs`): its outcome comes with it.
            self.settle(&mut commit).await?;
            Ok::<_, ApiError>(written)
        }
        .await;
        match written {
            Ok(written) => Ok((written, more)),
            Err(e) => {
                let mut state = self.lock().await;
                for name in &names {
                    state.mark_status_stale(name);
                }
                Err(e)
            }
        }
    }

    async fn read_prefix(&self, name: &str) -> ApiResult<Option<Stored<IPPrefix>>> {
        let key = Txn::key::<IPPrefix>("", name);
        match self.store().get(&key).await.map_err(store_error)? {
            None => Ok(None),
            Some(v) => Ok(Some(Stored {
                obj: codec::decode_stored::<IPPrefix>(&v.value, v.revision)?,
                revision: v.revision,
            })),
        }
    }

    /// Keep IPPrefix status current for as long as the runtime runs, while this replica leads
    /// (one replica writes status; every replica marks the parents whose children changed, so
    /// a new leader writes what its predecessor may have left). Woken by the first change of a
    /// parent's children, it writes at once, then waits `batch_period` before it writes
    /// again, so a burst of claims costs their parent one write (and its watchers one event)
    /// per period instead of one per claim. Every write is conditional on the parent's
    /// resourceVersion, so an ex-leader that has not noticed yet cannot overwrite newer data.
    /// Spawn it once per process.
    pub async fn run_status_writer(self, batch_period: std::time::Duration) {
        let stale = self.lock().await.status_stale();
        let mut leadership = self.store().leadership();
        loop {
            leadership.acquired().await;
            // Leading from here: first what was marked while following.
            while leadership.is_leader() {
                match self.write_stale_statuses().await {
                    Ok(_) => {}
                    Err(ApiError::ServiceUnavailable(_)) => {} // the store's failure is logged once, there
                    // A parent changed since it was read (its compare-and-swap did its job):
                    // it stays marked, and is read again next time.
                    Err(e @ ApiError::Conflict { .. }) => {
                        tracing::debug!(error = %e, "IPPrefix status refresh retried")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot store IPPrefix status"),
                }
                tokio::time::sleep(batch_period).await;
                tokio::select! {
                    _ = stale.notified() => {}
                    _ = leadership.lost() => {}
                }
            }
        }
    }
}

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
    tx.put_status(&prefix, Precondition::Revision(revision))?;
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
