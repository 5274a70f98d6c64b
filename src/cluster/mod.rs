//! What cluster mode adds to the request path, beyond authentication: the `use` check on claim
//! parents, NamespaceLifecycle, and Events on claims. The HTTP layer holds an
//! `Option<Arc<Cluster>>` (`None` in standalone mode) and calls the hooks here; `Released`
//! events come from a background task following the store's event stream instead.
pub mod access;
pub mod events;
pub mod namespaces;
pub mod tls;

use crate::api::{IPPrefix, IPPrefixClaim};
use crate::auth::authz::Authorizer;
use crate::auth::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::registry::{Registry, WatchEvent, WatchOptions};
use access::ParentAccess;
use events::{EventRecorder, EventType};
use namespaces::NamespaceLifecycle;
use std::any::Any;
use std::sync::Arc;

/// The cluster the server is aggregated into, as the request path needs it.
pub struct Cluster {
    pub authorizer: Arc<Authorizer>,
    pub namespaces: NamespaceLifecycle,
    pub events: EventRecorder,
}

impl Cluster {
    /// Admission for a create of `obj` in `namespace` (empty for cluster-scoped kinds).
    /// Namespaced kinds: the namespace must exist and not be terminating. Claims: a child name
    /// the caller may take, and the parents it may `use` (the registry allocates only from
    /// those, and names a forbidden `parentRef` in its 403); see [`access`].
    pub async fn admit_create<K: Any>(
        &self,
        registry: &Registry,
        user: Option<&UserInfo>,
        namespace: &str,
        obj: &K,
        namespaced: bool,
        resource: &str,
    ) -> ApiResult<ParentAccess> {
        let claim = (obj as &dyn Any).downcast_ref::<IPPrefixClaim>();
        if namespaced {
            let name = claim
                .and_then(|c| c.metadata.name.clone())
                .unwrap_or_default();
            self.namespaces
                .admit_create(resource, &name, namespace)
                .await?;
        }
        let Some(claim) = claim else {
            return Ok(ParentAccess::default());
        };
        let Some(user) = user else {
            return Err(ApiError::Unauthorized("Unauthorized".into()));
        };
        access::admit_claim(&self.authorizer, registry, user, namespace, claim).await
    }

    /// Events for the outcome of a claim create: Allocated or Rebound, or Exhausted.
    pub fn created<K: Any>(&self, namespace: &str, obj: &K, result: &ApiResult<K>, dry_run: bool) {
        if dry_run {
            return;
        }
        let Some(requested) = (obj as &dyn Any).downcast_ref::<IPPrefixClaim>() else {
            return;
        };
        match result {
            Ok(created) => {
                let Some(claim) = (created as &dyn Any).downcast_ref::<IPPrefixClaim>() else {
                    return;
                };
                let status = claim.status.clone().unwrap_or_default();
                let reason = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Bound")
                    .map(|c| c.reason.clone())
                    .unwrap_or_else(|| "Allocated".into());
                let prefix = status.prefix.unwrap_or_default();
                let parent = status.parent_ref.map(|p| p.name).unwrap_or_default();
                let ipprefix = status.prefix_ref.map(|p| p.name).unwrap_or_default();
                let verb = if reason == "Rebound" {
                    "rebound to"
                } else {
                    "allocated"
                };
                self.events.record(
                    claim,
                    EventType::Normal,
                    &reason,
                    format!("{verb} {prefix} from ipprefix {parent:?} (ipprefix {ipprefix:?})"),
                );
            }
            Err(e @ ApiError::Exhausted { .. }) => {
                let mut claim = requested.clone();
                claim.metadata.namespace = Some(namespace.to_string());
                self.events
                    .record(&claim, EventType::Warning, "Exhausted", e.to_string());
            }
            Err(_) => {}
        }
    }

    /// Start writing the Released event of every claim that leaves the store, however it
    /// left: a DELETE, a deletecollection (namespace deletion), the release of its last child
    /// (the `prefix-in-use` finalizer) or the removal of a user's finalizer; and the
    /// RetainedPrefixFreed event of every Released IPPrefix that goes (an admin's delete, or
    /// freed with the block of a claim above it). Driven by the store's durable event stream,
    /// like a controller, so no delete path can skip it. Only the leading replica writes them
    /// (every replica sees every deletion on etcd); those that happen while no replica leads
    /// (a leader died and its lease has not yet ended) get no event: Events are best-effort.
    pub fn spawn_release_events(&self, registry: Registry) {
        follow_deletions::<IPPrefixClaim>(registry.clone(), self.events.clone(), record_released);
        follow_deletions::<IPPrefix>(registry, self.events.clone(), record_retained_freed);
    }
}

/// Call `on_deleted` for every object of kind `K` deleted from now on while this replica
/// leads, for as long as the store runs.
fn follow_deletions<K: crate::registry::Kind>(
    registry: Registry,
    events: EventRecorder,
    on_deleted: fn(&EventRecorder, &K),
) {
    let leadership = registry.store().leadership();
    tokio::spawn(async move {
        loop {
            let opts = WatchOptions {
                resource_version: Some(registry.store().revision().to_string()),
                ..Default::default()
            };
            let mut watch = match registry.watch::<K>(None, opts).await {
                Ok(mut w) => {
                    w.deletions_only();
                    w
                }
                Err(e) => {
                    tracing::warn!("cannot watch {} for events: {e}", K::RESOURCE);
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    continue;
                }
            };
            loop {
                match watch.next().await {
                    // The store closed: the server is shutting down.
                    None => return,
                    Some(WatchEvent::Deleted(obj)) if leadership.is_leader() => {
                        on_deleted(&events, &obj)
                    }
                    Some(WatchEvent::Error(e)) => {
                        // Fell behind the retained history: some events are lost (Events
                        // are best-effort); carry on from now.
                        tracing::warn!("{} events skipped: {e}", K::RESOURCE);
                        break;
                    }
                    Some(_) => {}
                }
            }
        }
    });
}

/// A block kept for a claim that is gone was freed: tell the claim's namespace. The object
/// is as last stored: `Released`, or still `Bound` when a Retain claim and the block it left
/// went in one commit (its parent's claim waited only for it).
fn record_retained_freed(events: &EventRecorder, prefix: &IPPrefix) {
    let kept = prefix.phase() == crate::api::prefix_phase::RELEASED
        || prefix.spec.reclaim_policy.as_deref() == Some("Retain");
    let (Some(claim_ref), true) = (&prefix.spec.claim_ref, kept) else {
        return;
    };
    let mut claim = IPPrefixClaim::new(&claim_ref.name, Default::default());
    claim.metadata.namespace = Some(claim_ref.namespace.clone());
    claim.metadata.uid = claim_ref.uid.clone();
    let name = prefix.metadata.name.clone().unwrap_or_default();
    // Freed by the server at status.retainedUntil, or by a delete before then.
    let expired = prefix
        .status
        .as_ref()
        .and_then(|s| s.retained_until.as_ref())
        .is_some_and(|until| until.0 <= jiff::Timestamp::now());
    if expired {
        let message = format!(
            "the retention of ipprefix \"{name}\" ({}), released by this claim, ended; its block is free again",
            prefix.spec.prefix
        );
        events.record(&claim, EventType::Normal, "RetentionExpired", message);
        return;
    }
    let message = format!(
        "ipprefix \"{name}\" ({}), released by this claim, is deleted and its block is free again",
        prefix.spec.prefix
    );
    events.record(&claim, EventType::Normal, "RetainedPrefixFreed", message);
}

fn record_released(events: &EventRecorder, claim: &IPPrefixClaim) {
    let status = claim.status.clone().unwrap_or_default();
    let prefix = status.prefix.unwrap_or_default();
    let retained = claim.spec.reclaim_policy.as_deref() == Some("Retain");
    let message = if retained {
        format!("released {prefix}; its ipprefix is retained (reclaimPolicy Retain)")
    } else {
        format!("released {prefix}; the block is free again")
    };
    events.record(claim, EventType::Normal, "Released", message);
}
