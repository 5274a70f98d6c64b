//! What a kind supplies to the generic pipeline: its names and its policy.
//!
//! The pipeline (create / update / delete in `generic.rs`) is written once; a kind only answers
//! questions (is this valid? what else changes when this is created?) as k8s.io/apiserver's
//! strategies do.
use super::txn::Txn;
use crate::error::{ApiResult, FieldError};
use kube::Resource;
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;

/// What the pipeline does with an object whose last finalizer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Remove it now (the hook has already released what it held, in the same transaction).
    Remove,
    /// Keep it, terminating, behind the server finalizer `ipam.miloapis.com/prefix-in-use`.
    KeepInUse,
}

/// Fields every kind can be selected by, as k8s.io/apiserver's generic registry adds them.
pub const METADATA_FIELD_SELECTORS: [&str; 2] = ["metadata.name", "metadata.namespace"];

pub trait Kind:
    Resource<DynamicType = ()>
    + Serialize
    + DeserializeOwned
    + Clone
    + PartialEq
    + Send
    + Sync
    + 'static
{
    /// The resource plural: URL segment and storage key.
    const RESOURCE: &'static str;
    const KIND: &'static str;
    const NAMESPACED: bool;
    /// Fields `fieldSelector` may name besides [`METADATA_FIELD_SELECTORS`].
    const FIELD_SELECTORS: &'static [&'static str];

    /// The value of a field named in `FIELD_SELECTORS`.
    fn field_value(&self, field: &str) -> String;

    /// Every field `fieldSelector` may name: the metadata ones, then the kind's own.
    fn selectable_fields() -> Vec<&'static str> {
        METADATA_FIELD_SELECTORS
            .iter()
            .chain(Self::FIELD_SELECTORS)
            .copied()
            .collect()
    }

    /// The value of any field in [`Kind::selectable_fields`].
    fn selectable_field(&self, field: &str) -> String {
        match field {
            "metadata.name" => self.meta().name.clone().unwrap_or_default(),
            "metadata.namespace" => self.meta().namespace.clone().unwrap_or_default(),
            other => self.field_value(other),
        }
    }

    fn same_spec(&self, other: &Self) -> bool;
    /// Updates of the main resource keep the stored status.
    fn keep_status_of(&mut self, old: &Self);
    /// Updates of `/status` keep the stored spec; the kind decides which status fields a client
    /// may write.
    fn keep_spec_of(&mut self, old: &Self);

    /// Defaults of fields a client may leave out, on every write of the main resource (create
    /// and update), before validation: Kubernetes defaults on decode, so a `replace` without
    /// the field gets the default rather than a 422.
    fn default_spec(&mut self) {}
    /// What a create clears that only the server writes (status), before validation.
    fn default_on_create(&mut self) {}
    /// Every problem with the object's own fields (metadata rules are checked by the pipeline).
    fn validate(&self) -> Vec<FieldError>;
    /// Every problem with a change: immutable fields.
    fn validate_update(&self, old: &Self) -> Vec<FieldError>;

    // The hooks read the store, so they are async; their futures are `Send` because requests
    // run on a multi-threaded runtime.

    /// Effects of a create inside its transaction: allocation, related objects, status.
    fn on_create(&mut self, tx: &mut Txn<'_>) -> impl Future<Output = ApiResult<()>> + Send;
    /// Effects of an update inside its transaction.
    fn on_update(
        &mut self,
        old: &Self,
        tx: &mut Txn<'_>,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Whether a DELETE may start at all (409 if not). Checked before finalizers or a
    /// propagation policy could merely mark the object terminating, and again in `on_remove`.
    fn check_delete(&self, _tx: &mut Txn<'_>) -> impl Future<Output = ApiResult<()>> + Send {
        std::future::ready(Ok(()))
    }
    /// The object is about to be removed for good: release, refuse (409), or keep it in use
    /// (the hook may say why in the object's status).
    fn on_remove(&mut self, tx: &mut Txn<'_>) -> impl Future<Output = ApiResult<Removal>> + Send;
}
