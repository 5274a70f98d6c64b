//! IPPrefixClaim: a namespaced request for a block, like a PersistentVolumeClaim.
use super::{PrefixReference, ReserveSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A request for one block of `/prefixLength` (or exactly `prefix`) from a parent IPPrefix.
/// The server allocates on create: the created object already carries `status.prefix`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ipam.miloapis.com",
    version = "v1alpha1",
    kind = "IPPrefixClaim",
    plural = "ipprefixclaims",
    shortname = "ippc",
    category = "ipam",
    namespaced,
    status = "IPPrefixClaimStatus",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct IPPrefixClaimSpec {
    /// The length of the block wanted: longer than the parent's, at most 32 (IPv4) / 128 (IPv6).
    /// Without it (and without `prefix`) the parent's `defaultPrefixLength`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<i32>,
    /// `IPv4` or `IPv6`: filters the parents chosen by `parentSelector`; must match `parentRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<String>,
    /// The parent to allocate from. Exactly one of `parentRef` / `parentSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<PrefixReference>,
    /// The parents to allocate from, tried in name order; the first with room wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_selector: Option<LabelSelector>,
    /// Exactly this block (a static request), as a canonical CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `Delete` (default) or `Retain`. Mutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<String>,
    /// Only with `Retain`: how long the block stays Released after the claim goes; absent → the
    /// parent's `maxRetentionSeconds`, else until an admin deletes it. Capped by the parent's
    /// `maxRetentionSeconds`. Mutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_seconds: Option<i64>,
    /// Applied to the IPPrefix made for this claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_prefix_template: Option<ChildPrefixTemplate>,
}

/// What the IPPrefix made for a claim is given: name, labels, annotations and spec fields.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChildPrefixTemplate {
    /// Name, labels and annotations of the IPPrefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Spec fields of the IPPrefix (`reserve`, `exclude`, the pool policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<TemplateSpec>,
}

/// Metadata of the IPPrefix made for a claim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// The IPPrefix name; default `<namespace>.<claim>` (hashed when too long). In a cluster a
    /// chosen name must start with `<namespace>.` unless the caller may create ipprefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels of the IPPrefix, e.g. for the `parentSelector` of further claims.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the IPPrefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Spec fields of the IPPrefix made for a claim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    /// Addresses at the start / end of the new block that are never handed out (e.g. a gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<ReserveSpec>,
    /// Blocks inside the new block that are never handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// The lengths claims from the new block may have (e.g. a network's /48 hands out /64s only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_prefix_lengths: Option<super::PrefixLengthRange>,
    /// The length a claim from the new block gets when it gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_prefix_length: Option<i32>,
    /// A Released child of the new block is freed at most this long after its claim went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retention_seconds: Option<i64>,
}

/// The block allocated for a claim on create. Read-only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPrefixClaimStatus {
    /// `Bound` once allocated (always, for a stored claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The allocated block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The first address of `prefix`, without the length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `IPv4` or `IPv6`, the family of `prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<String>,
    /// The IPPrefix bound to this claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_ref: Option<PrefixReference>,
    /// The parent actually used (resolved from a selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<PrefixReference>,
    /// `Bound` (status True) with reason `Allocated` or `Rebound`, at the generation it was
    /// last evaluated; once deleted, while Bound prefixes below its own hold it, `Released`
    /// (status False, reason `WaitingForChildren`) saying how many and naming a few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `status.phase` values of an IPPrefixClaim.
pub mod claim_phase {
    pub const BOUND: &str = "Bound";
}

/// The condition of a deleted claim that waits (`status: "False"`) for the Bound prefixes
/// below its IPPrefix.
pub const RELEASED_CONDITION: &str = "Released";

/// `reason` values of the `Released` condition.
pub mod released_reason {
    /// Bound IPPrefixes below the claim's own hold it; the message says how many and names a few.
    pub const WAITING_FOR_CHILDREN: &str = "WaitingForChildren";
}

/// `reason` values of the `Bound` condition.
pub mod bound_reason {
    pub const ALLOCATED: &str = "Allocated";
    pub const REBOUND: &str = "Rebound";
}

impl IPPrefixClaim {
    /// A claim for one host address (`/128` or `/32`, by `family`) from the IPPrefix `parent`.
    ///
    /// ```
    /// use ipam_apiserver::api::{IPPrefixClaim, IpFamily};
    /// let nic = IPPrefixClaim::new_host("project-a", "vm-1-eth0", "dfw-subnet", IpFamily::IPv6)
    ///     .retain();
    /// assert_eq!(nic.spec.prefix_length, Some(128));
    /// assert_eq!(nic.spec.reclaim_policy.as_deref(), Some("Retain"));
    /// ```
    pub fn new_host(namespace: &str, name: &str, parent: &str, family: super::IpFamily) -> Self {
        Self::new_with_length(namespace, name, parent, family.max_prefix_len())
    }

    /// A claim for a block of `/prefix_length` from the IPPrefix `parent`.
    ///
    /// ```
    /// use ipam_apiserver::api::IPPrefixClaim;
    /// // A subnet whose first address is the gateway's, with a chosen IPPrefix name.
    /// let subnet = IPPrefixClaim::new_with_length("project-a", "dfw", "project-a-pool", 64)
    ///     .reserve(1, 0)
    ///     .prefix_name("project-a-dfw")
    ///     .prefix_label("ipam.miloapis.com/location", "dfw");
    /// let template = subnet.spec.child_prefix_template.as_ref().unwrap();
    /// assert_eq!(template.spec.as_ref().unwrap().reserve.unwrap().leading, Some(1));
    /// assert_eq!(template.metadata.as_ref().unwrap().name.as_deref(), Some("project-a-dfw"));
    /// ```
    pub fn new_with_length(namespace: &str, name: &str, parent: &str, prefix_length: u8) -> Self {
        let mut claim = IPPrefixClaim::new(
            name,
            IPPrefixClaimSpec {
                prefix_length: Some(i32::from(prefix_length)),
                parent_ref: Some(PrefixReference::new(parent)),
                ..Default::default()
            },
        );
        claim.metadata.namespace = Some(namespace.to_string());
        claim
    }

    /// A claim for exactly `prefix` (a static request) inside `parent`.
    pub fn new_exact(namespace: &str, name: &str, parent: &str, prefix: ipnet::IpNet) -> Self {
        let mut claim = IPPrefixClaim::new(
            name,
            IPPrefixClaimSpec {
                prefix: Some(prefix.trunc().to_string()),
                parent_ref: Some(PrefixReference::new(parent)),
                ..Default::default()
            },
        );
        claim.metadata.namespace = Some(namespace.to_string());
        claim
    }

    /// Keep the allocated IPPrefix (`Released`) when the claim is deleted, so a claim of the same
    /// namespace/name gets the same block back (`reclaimPolicy: Retain`).
    pub fn retain(mut self) -> Self {
        self.spec.reclaim_policy = Some(super::ReclaimPolicy::Retain.as_str().into());
        self
    }

    /// Never hand out `leading` addresses at the start and `trailing` at the end of the block
    /// made for this claim (e.g. `reserve(1, 0)` keeps the gateway address).
    pub fn reserve(mut self, leading: i64, trailing: i64) -> Self {
        self.template()
            .spec
            .get_or_insert_with(Default::default)
            .reserve = Some(ReserveSpec {
            leading: Some(leading),
            trailing: Some(trailing),
        });
        self
    }

    /// Name the IPPrefix made for this claim (default `<namespace>.<claim>`).
    pub fn prefix_name(mut self, name: &str) -> Self {
        self.template_metadata().name = Some(name.to_string());
        self
    }

    /// Label the IPPrefix made for this claim (e.g. for other claims' `parentSelector`).
    pub fn prefix_label(mut self, key: &str, value: &str) -> Self {
        self.template_metadata()
            .labels
            .insert(key.to_string(), value.to_string());
        self
    }

    fn template(&mut self) -> &mut ChildPrefixTemplate {
        self.spec
            .child_prefix_template
            .get_or_insert_with(Default::default)
    }

    fn template_metadata(&mut self) -> &mut TemplateMetadata {
        self.template()
            .metadata
            .get_or_insert_with(Default::default)
    }

    /// The allocated block (`status.prefix`), once bound.
    ///
    /// ```
    /// use ipam_apiserver::api::{IPPrefixClaim, IPPrefixClaimStatus};
    /// let mut claim = IPPrefixClaim::new_with_length("p", "c", "root", 48);
    /// assert_eq!(claim.allocated_prefix(), None);
    /// claim.status = Some(IPPrefixClaimStatus {
    ///     prefix: Some("fd20::/48".into()),
    ///     ..Default::default()
    /// });
    /// let net: ipnet::IpNet = "fd20::/48".parse().unwrap();
    /// assert_eq!(claim.allocated_prefix(), Some(net));
    /// assert_eq!(claim.allocated_address(), Some("fd20::".parse().unwrap()));
    /// ```
    pub fn allocated_prefix(&self) -> Option<ipnet::IpNet> {
        self.status.as_ref()?.prefix.as_deref()?.parse().ok()
    }

    /// The first address of the allocated block, once bound.
    pub fn allocated_address(&self) -> Option<std::net::IpAddr> {
        self.allocated_prefix().map(|p| p.network())
    }

    /// Whether the server has bound this claim (`status.phase: Bound`).
    pub fn is_bound(&self) -> bool {
        self.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(claim_phase::BOUND)
    }
}
