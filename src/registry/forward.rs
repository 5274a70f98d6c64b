//! Creates on a shared store go to the leader when it can be reached, to be decided and
//! committed there.
//!
//! Replicas that allocate from the same parents at once pick the same lowest free blocks, so
//! all but one of them fail their guards and decide again; on etcd a transaction that fails
//! costs about what one that commits does. One replica deciding every allocation makes the
//! guards fail only for the writes that do not go through it (deletes, updates, a create while
//! the leader is out of reach), and its group commits fill up.
//!
//! This is only about cost: a create committed by any replica carries its guards, so a create
//! decided where it arrived (no leader known, or the leader unreachable) is as safe, and the
//! leader itself needs no lease to decide (see `guards.rs`).
use super::codec;
use super::generic::Registry;
use super::kind::Kind;
use super::managed_fields::FieldManager;
use crate::api::{IPPrefix, IPPrefixClaim};
use crate::error::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;

/// A create as the replica it arrived at hands it on: the request's object, after the HTTP
/// layer authenticated, authorized and admitted it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardedCreate {
    /// The kind's resource (`ipprefixclaims`, `ipprefixes`).
    pub resource: String,
    pub namespace: String,
    pub object: Value,
    /// The IPPrefixes the caller may `use` (cluster mode); `None`: no restriction.
    pub allowed_parents: Option<HashSet<String>>,
    pub manager: Option<FieldManager>,
}

/// What became of a forwarded create.
pub enum Forwarded {
    /// The replica it went to answered: the created object, or why not.
    Answered(ApiResult<Value>),
    /// It certainly did not reach a replica that could act on it (none to send to, no
    /// connection, refused): decide it here.
    NotSent,
}

/// Sends creates to the leader (implemented over HTTPS by `crate::peer`).
#[async_trait::async_trait]
pub trait ForwardCreates: Send + Sync {
    async fn create(&self, leader: &str, create: &ForwardedCreate) -> Forwarded;
}

impl Registry {
    /// Send creates to the leader through `forward` from now on (shared stores only). Set
    /// once, before serving; a second call is ignored.
    pub fn forward_creates(&self, forward: std::sync::Arc<dyn ForwardCreates>) {
        let _ = self.inner.forward.set(forward);
    }

    /// The create committed by the leader, when it goes there: `None` to decide it here (a
    /// dry run, this replica leads, no leader known or reachable).
    pub(super) async fn create_at_leader<K: Kind>(
        &self,
        namespace: &str,
        obj: &K,
        dry_run: bool,
        allowed_parents: &Option<HashSet<String>>,
        manager: Option<&FieldManager>,
    ) -> Option<ApiResult<K>> {
        let forward = self.inner.forward.get()?;
        if dry_run || !self.inner.store.shared() {
            return None;
        }
        let leader = self.inner.store.leader_contact()?;
        let create = ForwardedCreate {
            resource: K::RESOURCE.to_string(),
            namespace: namespace.to_string(),
            object: codec::to_value(obj).ok()?,
            allowed_parents: allowed_parents.clone(),
            manager: manager.cloned(),
        };
        let metrics = crate::metrics::global();
        match forward.create(&leader, &create).await {
            Forwarded::Answered(answer) => {
                metrics.forwarded_creates.inc();
                Some(answer.and_then(|v| {
                    serde_json::from_value(v).map_err(|e| {
                        ApiError::Internal(format!("the leader's answer to a create: {e}"))
                    })
                }))
            }
            Forwarded::NotSent => {
                metrics.forwards_not_sent.inc();
                None
            }
        }
    }

    /// Decide and commit a create another replica forwarded, here.
    pub async fn create_forwarded(&self, create: ForwardedCreate) -> ApiResult<Value> {
        match create.resource.as_str() {
            IPPrefixClaim::RESOURCE => self.create_forwarded_kind::<IPPrefixClaim>(create).await,
            IPPrefix::RESOURCE => self.create_forwarded_kind::<IPPrefix>(create).await,
            other => Err(ApiError::BadRequest(format!(
                "a forwarded create of an unknown resource {other:?}"
            ))),
        }
    }

    async fn create_forwarded_kind<K: Kind>(&self, create: ForwardedCreate) -> ApiResult<Value> {
        let obj: K = serde_json::from_value(create.object).map_err(|e| {
            ApiError::BadRequest(format!("a forwarded {} create: {e}", K::RESOURCE))
        })?;
        let created = self
            .create_here(
                &create.namespace,
                obj,
                false,
                create.allowed_parents,
                create.manager.as_ref(),
            )
            .await?;
        codec::to_value(&created)
    }
}
