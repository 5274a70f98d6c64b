//! IPPrefix: a cluster-scoped address block, like a PersistentVolume.
use super::{PrefixReference, ReserveSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An address block. A root has no `parentRef`; blocks made for claims and static carves name the
/// block they were carved from.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ipam.miloapis.com",
    version = "v1alpha1",
    kind = "IPPrefix",
    plural = "ipprefixes",
    shortname = "ipp",
    category = "ipam",
    status = "IPPrefixStatus",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct IPPrefixSpec {
    /// The block, as a canonical CIDR (host bits zero), e.g. `fd20::/20`. Immutable.
    pub prefix: String,
    /// The IPPrefix this block was carved from; omitted for a root. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<PrefixReference>,
    /// Blocks inside `prefix` that are never handed out. May not cover a child.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Addresses at the start / end that are never handed out. May not cover a child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<ReserveSpec>,
    /// The claim this block is bound to. Set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ref: Option<ClaimReference>,
    /// `Delete` or `Retain`: what happens to this block when its claim is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<String>,
    /// The address space of the tree under a root: roots overlap only when their spaces differ
    /// (absent = the one shared space). Given on roots; the server copies a parent's space into
    /// the blocks carved from it. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space: Option<String>,
    /// The lengths claims from this prefix (and static carves in it) may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_prefix_lengths: Option<PrefixLengthRange>,
    /// The length a claim from this prefix gets when it gives neither `prefixLength` nor `prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_prefix_length: Option<i32>,
    /// A Released child is freed at most this long after its claim went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retention_seconds: Option<i64>,
}

/// An inclusive range of prefix lengths; a bound left out does not restrict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefixLengthRange {
    /// The shortest length allowed (the largest block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i32>,
    /// The longest length allowed (the smallest block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i32>,
}

/// The claim an IPPrefix is bound to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimReference {
    /// The namespace of the IPPrefixClaim.
    pub namespace: String,
    /// The name of the IPPrefixClaim.
    pub name: String,
    /// The uid of the IPPrefixClaim the block was bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// What the server computed for an IPPrefix. Read-only. The counts follow the children shortly
/// after they change (written at most every 100 ms per prefix during a burst of claims).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPrefixStatus {
    /// `Available` (no claim), `Bound`, or `Released` (claim gone: kept by reclaimPolicy
    /// Retain, or, being deleted, by a finalizer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When Released: when the claim went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
    /// When Released with a retention limit: when the server frees the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_until: Option<Time>,
    /// `IPv4` or `IPv6`, derived from `spec.prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<String>,
    /// Address counts of the block: total, allocated, excluded, available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<PrefixCapacity>,
    /// (allocated + excluded) / total, for display, e.g. `12.50%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<String>,
    /// The shortest prefix length still allocatable here; absent when full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_free_prefix_length: Option<i32>,
    /// The number of direct child prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<i64>,
}

/// Address counts as base-10 strings: 2^128 does not fit in an int64.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefixCapacity {
    /// Every address in the block.
    pub total: String,
    /// Addresses covered by child prefixes.
    pub allocated: String,
    /// Addresses covered by `spec.exclude` and `spec.reserve`.
    pub excluded: String,
    /// total - allocated - excluded.
    pub available: String,
}

/// `status.phase` values of an IPPrefix.
pub mod prefix_phase {
    pub const AVAILABLE: &str = "Available";
    pub const BOUND: &str = "Bound";
    pub const RELEASED: &str = "Released";
}

impl IPPrefix {
    /// A root block (no parent), e.g. the platform's ULA range.
    ///
    /// ```
    /// use ipam_apiserver::api::IPPrefix;
    /// let root = IPPrefix::root("platform-ula", "fd20::/20".parse().unwrap())
    ///     .label("ipam.miloapis.com/tier", "platform");
    /// assert_eq!(root.spec.prefix, "fd20::/20");
    /// assert_eq!(root.prefix(), Some("fd20::/20".parse().unwrap()));
    /// ```
    pub fn root(name: &str, prefix: ipnet::IpNet) -> Self {
        IPPrefix::new(
            name,
            IPPrefixSpec {
                prefix: prefix.trunc().to_string(),
                ..Default::default()
            },
        )
    }

    /// A static carve: exactly `prefix` inside the IPPrefix `parent`.
    pub fn carve(name: &str, parent: &str, prefix: ipnet::IpNet) -> Self {
        let mut p = Self::root(name, prefix);
        p.spec.parent_ref = Some(PrefixReference::new(parent));
        p
    }

    /// Add a label (builder style).
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Never hand out these blocks inside `prefix`.
    pub fn exclude(mut self, blocks: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        self.spec
            .exclude
            .extend(blocks.into_iter().map(|b| b.trunc().to_string()));
        self
    }

    /// Never hand out `leading` / `trailing` addresses at the ends of the block.
    pub fn reserve(mut self, leading: i64, trailing: i64) -> Self {
        self.spec.reserve = Some(ReserveSpec {
            leading: Some(leading),
            trailing: Some(trailing),
        });
        self
    }

    /// The block as an `IpNet`, when `spec.prefix` parses.
    pub fn prefix(&self) -> Option<ipnet::IpNet> {
        self.spec.prefix.parse().ok()
    }

    /// The phase, or `""` before the server set one.
    pub fn phase(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("")
    }
}
