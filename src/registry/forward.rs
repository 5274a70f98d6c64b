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
use super::generic::Registry;
use super::kind::Kind;
use super::managed_fields::FieldManager;
use crate::api::{IPPrefix, IPPrefixClaim};
use crate::error::{ApiError, ApiResult};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// A create as the replica it arrived at hands it on: the request's object, after the HTTP
/// layer authenticated, authorized and admitted it. Sent as JSON, the kind named beside it;
/// answered with a JSON `Result<K, ApiError>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardedCreate<K> {
    pub namespace: String,
    pub object: K,
    /// The IPPrefixes the caller may `use` (cluster mode); `None`: no restriction.
    pub allowed_parents: Option<HashSet<String>>,
    pub manager: Option<FieldManager>,
}

/// What became of a forwarded create.
pub enum Forwarded {
    /// The replica it went to answered (a JSON `Result<K, ApiError>`), or it was sent and no
    /// answer came (`Err`: it may or may not have been created).
    Answered(Result<Bytes, ApiError>),
    /// It certainly did not reach a replica that could act on it (none to send to, no
    /// connection, refused): decide it here.
    NotSent,
}

/// Carries creates to the leader (over HTTPS: `crate::peer`); the registry encodes them.
#[async_trait::async_trait]
pub trait ForwardCreates: Send + Sync {
    /// Send `body`, a JSON [`ForwardedCreate`] of `resource`, to the replica published as
    /// `leader`.
    async fn create(&self, leader: &str, resource: &'static str, body: Vec<u8>) -> Forwarded;
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
        let body = serde_json::to_vec(&ForwardedCreate {
            namespace: namespace.to_string(),
            object: obj,
            allowed_parents: allowed_parents.clone(),
            manager: manager.cloned(),
        })
        .ok()?;
        let metrics = crate::metrics::global();
        match forward.create(&leader, K::RESOURCE, body).await {
            Forwarded::Answered(answer) => {
                metrics.forwarded_creates.inc();
                Some(answer.and_then(|bytes| {
                    serde_json::from_slice::<Result<K, ApiError>>(&bytes).unwrap_or_else(|e| {
                        Err(ApiError::ServiceUnavailable(format!(
                            "the leader's answer to this create does not parse ({e}); it may or may not have been created"
                        )))
                    })
                }))
            }
            Forwarded::NotSent => {
                metrics.forwards_not_sent.inc();
                None
            }
        }
    }

    /// Decide and commit here a create another replica forwarded (`body`: a JSON
    /// [`ForwardedCreate`] of `resource`); the answer, a JSON `Result<K, ApiError>`.
    pub async fn create_forwarded(&self, resource: &str, body: &[u8]) -> Vec<u8> {
        match resource {
            IPPrefixClaim::RESOURCE => self.create_forwarded_kind::<IPPrefixClaim>(body).await,
            IPPrefix::RESOURCE => self.create_forwarded_kind::<IPPrefix>(body).await,
            other => answer::<IPPrefix>(Err(ApiError::BadRequest(format!(
                "a forwarded create of an unknown resource {other:?}"
            )))),
        }
    }

    async fn create_forwarded_kind<K: Kind>(&self, body: &[u8]) -> Vec<u8> {
        let created = match serde_json::from_slice::<ForwardedCreate<K>>(body) {
            Ok(c) => {
                self.create_here(
                    &c.namespace,
                    c.object,
                    false,
                    c.allowed_parents,
                    c.manager.as_ref(),
                )
                .await
            }
            Err(e) => Err(ApiError::BadRequest(format!(
                "a forwarded {} create: {e}",
                K::RESOURCE
            ))),
        };
        answer(created)
    }
}

fn answer<K: Kind>(result: ApiResult<K>) -> Vec<u8> {
    serde_json::to_vec(&result).unwrap_or_else(|e| {
        let failed: ApiResult<K> = Err(ApiError::Internal(format!("encode an answer: {e}")));
        serde_json::to_vec(&failed).unwrap_or_default()
    })
}
