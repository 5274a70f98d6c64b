//! Creates and deletes on a shared store go to the leader when it can be reached, to be
//! decided and committed there.
//!
//! Replicas that allocate from the same parents at once pick the same lowest free blocks, so
//! all but one of them fail their guards and decide again; on etcd a transaction that fails
//! costs about what one that commits does. One replica deciding every allocation and release
//! makes the guards fail only for the writes that do not go through it (updates, a write
//! while the leader is out of reach), and its group commits fill up.
//!
//! This is only about cost: a write committed by any replica carries its guards, so one
//! decided where it arrived (no leader known, or the leader unreachable) is as safe, and the
//! leader itself needs no lease to decide (see `guards.rs`).
use super::generic::{DeleteOptions, Registry};
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

/// A delete as the replica it arrived at hands it on; answered with a JSON
/// `Result<(K, bool), ApiError>` (the object, and whether it is gone).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardedDelete {
    pub namespace: String,
    pub name: String,
    pub options: DeleteOptions,
}

/// Which write is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Create,
    Delete,
}

impl Write {
    /// Its segment in the leader's internal route.
    pub fn as_str(self) -> &'static str {
        match self {
            Write::Create => "creates",
            Write::Delete => "deletes",
        }
    }
}

/// What became of a forwarded write.
pub enum Forwarded {
    /// The replica it went to answered (a JSON `Result<K, ApiError>`), or it was sent and no
    /// answer came (`Err`: it may or may not have happened).
    Answered(Result<Bytes, ApiError>),
    /// It certainly did not reach a replica that could act on it (none to send to, no
    /// connection, refused): decide it here.
    NotSent,
}

/// Carries writes to the leader (over HTTPS: `crate::peer`); the registry encodes them.
#[async_trait::async_trait]
pub trait ForwardWrites: Send + Sync {
    /// Send `body`, a JSON [`ForwardedCreate`] or [`ForwardedDelete`] of `resource`, to the
    /// replica published as `leader`.
    async fn send(
        &self,
        leader: &str,
        write: Write,
        resource: &'static str,
        body: Vec<u8>,
    ) -> Forwarded;
}

impl Registry {
    /// Send creates and deletes to the leader through `forward` from now on (shared stores
    /// only). Set once, before serving; a second call is ignored.
    pub fn forward_writes(&self, forward: std::sync::Arc<dyn ForwardWrites>) {
        let _ = self.inner.forward.set(forward);
    }

    /// `body` sent to the leader, when it goes there: `None` to decide it here (a dry run,
    /// this replica leads, no leader known or reachable); else the leader's answer, decoded.
    async fn at_leader<T: serde::de::DeserializeOwned>(
        &self,
        write: Write,
        resource: &'static str,
        dry_run: bool,
        body: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<ApiResult<T>> {
        let forward = self.inner.forward.get()?;
        if dry_run || !self.inner.store.shared() {
            return None;
        }
        let leader = self.inner.store.leader_contact()?;
        let metrics = crate::metrics::global();
        match forward.send(&leader, write, resource, body()?).await {
            Forwarded::Answered(answer) => {
                metrics.forwarded_writes.inc();
                Some(answer.and_then(|bytes| {
                    serde_json::from_slice::<Result<T, ApiError>>(&bytes).unwrap_or_else(|e| {
                        Err(ApiError::ServiceUnavailable(format!(
                            "the leader's answer does not parse ({e}); the write may or may not have happened"
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

    /// The create committed by the leader, when it goes there (see [`Registry::at_leader`]).
    pub(super) async fn create_at_leader<K: Kind>(
        &self,
        namespace: &str,
        obj: &K,
        dry_run: bool,
        allowed_parents: &Option<HashSet<String>>,
        manager: Option<&FieldManager>,
    ) -> Option<ApiResult<K>> {
        let body = || {
            serde_json::to_vec(&ForwardedCreate {
                namespace: namespace.to_string(),
                object: obj,
                allowed_parents: allowed_parents.clone(),
                manager: manager.cloned(),
            })
            .ok()
        };
        self.at_leader(Write::Create, K::RESOURCE, dry_run, body)
            .await
    }

    /// The delete committed by the leader, when it goes there (see [`Registry::at_leader`]).
    pub(super) async fn delete_at_leader<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Option<ApiResult<(K, bool)>> {
        let body = || {
            serde_json::to_vec(&ForwardedDelete {
                namespace: namespace.to_string(),
                name: name.to_string(),
                options: opts.clone(),
            })
            .ok()
        };
        self.at_leader(Write::Delete, K::RESOURCE, opts.dry_run, body)
            .await
    }

    /// Decide and commit here a write another replica forwarded (`body`: a JSON
    /// [`ForwardedCreate`] or [`ForwardedDelete`] of `resource`); the answer, JSON.
    pub async fn write_forwarded(&self, write: Write, resource: &str, body: &[u8]) -> Vec<u8> {
        match (write, resource) {
            (Write::Create, IPPrefixClaim::RESOURCE) => {
                self.create_forwarded_kind::<IPPrefixClaim>(body).await
            }
            (Write::Create, IPPrefix::RESOURCE) => {
                self.create_forwarded_kind::<IPPrefix>(body).await
            }
            (Write::Delete, IPPrefixClaim::RESOURCE) => {
                self.delete_forwarded_kind::<IPPrefixClaim>(body).await
            }
            (Write::Delete, IPPrefix::RESOURCE) => {
                self.delete_forwarded_kind::<IPPrefix>(body).await
            }
            (_, other) => answer::<()>(Err(ApiError::BadRequest(format!(
                "a forwarded write of an unknown resource {other:?}"
            )))),
        }
    }

    async fn delete_forwarded_kind<K: Kind>(&self, body: &[u8]) -> Vec<u8> {
        let deleted = match serde_json::from_slice::<ForwardedDelete>(body) {
            Ok(d) => {
                self.delete_here::<K>(&d.namespace, &d.name, &d.options)
                    .await
            }
            Err(e) => Err(ApiError::BadRequest(format!(
                "a forwarded {} delete: {e}",
                K::RESOURCE
            ))),
        };
        answer(deleted)
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

fn answer<T: Serialize>(result: ApiResult<T>) -> Vec<u8> {
    serde_json::to_vec(&result).unwrap_or_else(|e| {
        let failed: ApiResult<()> = Err(ApiError::Internal(format!("encode an answer: {e}")));
        serde_json::to_vec(&failed).unwrap_or_default()
    })
}
