//! The `ipam.miloapis.com/v1alpha1` types: what is on the wire, plus helpers for typed clients.
//!
//! Wire fields that Kubernetes would validate (CIDRs, enums) are strings, as in k8s-openapi, so a bad
//! value reaches validation and is reported as a 422 cause instead of failing to decode.

mod claim;
mod prefix;

pub use claim::*;
pub use prefix::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "ipam.miloapis.com";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "ipam.miloapis.com/v1alpha1";

/// The server-owned finalizer that holds a claim while its prefix still has children.
pub const PREFIX_IN_USE_FINALIZER: &str = "ipam.miloapis.com/prefix-in-use";

/// A reference to an IPPrefix by name (IPPrefixes are cluster-scoped).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefixReference {
    /// The name of the IPPrefix.
    pub name: String,
}

impl PrefixReference {
    pub fn new(name: impl Into<String>) -> Self {
        PrefixReference { name: name.into() }
    }
}

/// Addresses at the start and end of a prefix that are never handed out
/// (a gateway; for IPv4 the network and broadcast addresses).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReserveSpec {
    /// How many addresses at the start of the block are never handed out (e.g. 1 for a gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leading: Option<i64>,
    /// How many addresses at the end of the block are never handed out (e.g. 1 for IPv4 broadcast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailing: Option<i64>,
}

/// `spec.reclaimPolicy` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReclaimPolicy {
    Delete,
    Retain,
}

impl ReclaimPolicy {
    pub const ALL: [&'static str; 2] = ["Delete", "Retain"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Delete" => Some(ReclaimPolicy::Delete),
            "Retain" => Some(ReclaimPolicy::Retain),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReclaimPolicy::Delete => "Delete",
            ReclaimPolicy::Retain => "Retain",
        }
    }
}

/// `ipFamily` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

impl IpFamily {
    pub const ALL: [&'static str; 2] = ["IPv4", "IPv6"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(IpFamily::IPv4),
            "IPv6" => Some(IpFamily::IPv6),
            _ => None,
        }
    }

    pub fn of(net: &ipnet::IpNet) -> Self {
        match net {
            ipnet::IpNet::V4(_) => IpFamily::IPv4,
            ipnet::IpNet::V6(_) => IpFamily::IPv6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::IPv4 => "IPv4",
            IpFamily::IPv6 => "IPv6",
        }
    }

    /// The longest prefix length of the family: a single address.
    pub fn max_prefix_len(self) -> u8 {
        match self {
            IpFamily::IPv4 => 32,
            IpFamily::IPv6 => 128,
        }
    }
}

#[cfg(test)]
mod tests;
