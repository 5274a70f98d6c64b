//! Retention that ends: a Released IPPrefix is deleted at its `status.retainedUntil`, and its
//! block goes back to its parent. Driven by the index of deadlines (`State::expiries`), rebuilt
//! from the stored statuses at start, so a server that was down at a deadline frees the block
//! as soon as it is back.
use super::changes::{reason, ServerChange};
use super::generic::Registry;
use super::meta;
use super::prefix::release_prefix;
use super::release;
use super::txn::Txn;
use crate::api::{prefix_phase, IPPrefix};
use crate::error::{ApiError, ApiResult};
use crate::store::Precondition;

/// How many expiries one transaction frees: the writer lock is let go between batches, so a
/// mass expiry (10^4 blocks released in the same second) does not stall other writes.
const BATCH: usize = 500;

impl Registry {
    /// Free Released IPPrefixes at their deadlines for as long as the runtime runs, while this
    /// replica leads (one replica frees them; each delete is conditional on the IPPrefix's
    /// resourceVersion, so an ex-leader that has not noticed yet frees nothing twice). Spawn
    /// it once per process. (In a cluster the deletions become RetentionExpired events, from
    /// the store's event stream like every other release.)
    pub async fn run_retention(self) {
        let changed = self.lock().await.expiries.changed();
        let mut leadership = self.store().leadership();
        loop {
            leadership.acquired().await;
            let next = self.lock().await.expiries.next();
            let now = jiff::Timestamp::now();
            match next {
                None => {
                    tokio::select! {
                        _ = changed.notified() => {}
                        _ = leadership.lost() => {}
                    }
                    continue;
                }
                Some(at) if at > now.as_second() => {
                    let ms = at.saturating_mul(1000).saturating_sub(now.as_millisecond());
                    let wait = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = changed.notified() => {}
                        _ = leadership.lost() => {}
                    }
                    continue;
                }
                Some(_) if !leadership.is_leader() => continue,
                Some(_) => {}
            }
            match self.expire_due().await {
                Ok(_) => {}
                Err(e) => {
                    if !matches!(e, ApiError::ServiceUnavailable(_)) {
                        tracing::warn!(error = %e, "cannot free expired IPPrefixes");
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Free (up to a batch of) the Released IPPrefixes whose deadline has passed, in one
    /// transaction, and wait until it is durable. One that still has children waits for them.
    /// Returns how many were freed.
    pub async fn expire_due(&self) -> ApiResult<usize> {
        self.ensure_available()?;
        let now = jiff::Timestamp::now().as_second();
        let (expired, mut commit) = {
            let mut state = self.lock_to_commit().await;
            // An expiry deletes its IPPrefix and may settle the ones above it (a few keys
            // more): a quarter of the store's limit per expiry leaves room for that.
            let batch = BATCH.min(self.store().max_commit_ops() / 4);
            let due = state.expiries.due(now, batch);
            if due.is_empty() {
                return Ok(0);
            }
            let mut tx = Txn::new(&**self.store(), &mut state);
            let mut expired = 0;
            for (at, name) in due {
                tx.state.expiries.remove(&name);
                let n = name.clone();
                tx.on_undo(move |s| {
                    s.expiries.insert(&n, at);
                });
                let Some(prefix) = tx.get::<IPPrefix>("", &name).await? else {
                    continue;
                };
                // Only a block still Released past its deadline: a rebind cleared both.
                let deadline = prefix
                    .obj
                    .status
                    .as_ref()
                    .and_then(|s| s.retained_until.as_ref())
                    .map(|t| t.0.as_second());
                if prefix.obj.phase() != prefix_phase::RELEASED || deadline.is_none_or(|d| d > now)
                {
                    continue;
                }
                if tx.state.children(&name) > 0 {
                    tx.state.expiries.waiting.insert(name.clone());
                    tx.on_undo(move |s| {
                        s.expiries.waiting.remove(&name);
                    });
                    continue;
                }
                if prefix.obj.metadata.deletion_timestamp.is_some() {
                    // Already terminating: it goes when its finalizers do.
                    continue;
                }
                if prefix
                    .obj
                    .metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| !f.is_empty())
                {
                    // A user's finalizer keeps it, as it would keep it from a delete.
                    let mut obj = prefix.obj;
                    obj.metadata.deletion_timestamp = Some(meta::now());
                    obj.metadata.deletion_grace_period_seconds = Some(0);
                    obj.metadata.resource_version = None;
                    tx.put(&obj, Precondition::Revision(prefix.revision))?;
                    tx.server_changes
                        .push(ServerChange::delete_prefix(obj, reason::RETENTION_EXPIRED));
                    continue;
                }
                let parent = release_prefix(&mut tx, &prefix.obj).await?;
                tx.delete::<IPPrefix>("", &name, Precondition::Revision(prefix.revision));
                tx.server_changes.push(ServerChange::delete_prefix(
                    prefix.obj,
                    reason::RETENTION_EXPIRED,
                ));
                if let Some(parent) = parent {
                    release::settle(&mut tx, parent).await?;
                }
                expired += 1;
            }
            (expired, tx.commit(false).await?)
        };
        commit.wait_durable().await?;
        self.report(std::mem::take(&mut commit.server_changes));
        if expired > 0 {
            tracing::info!(freed = expired, "retention ended for Released IPPrefixes");
        }
        Ok(expired)
    }
}
