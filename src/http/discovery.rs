//! Discovery documents: what `kubectl api-resources`, RESTMappers and the aggregator read to learn
//! which resources this server serves, with which verbs, names and scope.
//!
//! Everything here is derived from the `#[kube(...)]` attributes of the types (via
//! [`CustomResourceExt::crd`]), so a kind's names are written down exactly once.
use crate::api::{IPPrefix, IPPrefixClaim, GROUP, VERSION};
use base64::Engine as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The `Content-Type` of an aggregated discovery (v2) response, and the `Accept` that asks for one.
pub const AGGREGATED_DISCOVERY_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The verbs served on both kinds.
pub const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs served on the `status` subresource.
pub const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

/// The names of one served kind, as discovery, OpenAPI and tables spell them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedKind {
    /// `IPPrefix`
    pub kind: String,
    /// `IPPrefixList`
    pub list_kind: String,
    /// `ipprefixes`
    pub plural: String,
    /// `ipprefix`
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
}

impl ServedKind {
    fn from_crd(crd: CustomResourceDefinition) -> Self {
        let names = crd.spec.names;
        ServedKind {
            singular: names
                .singular
                .unwrap_or_else(|| names.kind.to_ascii_lowercase()),
            list_kind: names
                .list_kind
                .unwrap_or_else(|| format!("{}List", names.kind)),
            kind: names.kind,
            plural: names.plural,
            namespaced: crd.spec.scope == "Namespaced",
            short_names: names.short_names.unwrap_or_default(),
            categories: names.categories.unwrap_or_default(),
        }
    }

    /// `Namespaced` or `Cluster`, as aggregated discovery words the scope.
    pub fn scope(&self) -> &'static str {
        if self.namespaced {
            "Namespaced"
        } else {
            "Cluster"
        }
    }

    /// This kind's `storageVersionHash`.
    pub fn storage_version_hash(&self) -> String {
        storage_version_hash(GROUP, VERSION, &self.kind)
    }
}

/// `storageVersionHash` as k8s.io/apiserver computes it: the first 8 bytes of
/// sha256("group/version/kind"), base64. Clients only compare it for equality.
pub fn storage_version_hash(group: &str, version: &str, kind: &str) -> String {
    let digest = Sha256::digest(format!("{group}/{version}/{kind}"));
    base64::engine::general_purpose::STANDARD.encode(&digest[..8])
}

static SERVED: LazyLock<Vec<ServedKind>> = LazyLock::new(|| {
    let mut kinds = vec![
        ServedKind::from_crd(IPPrefix::crd()),
        ServedKind::from_crd(IPPrefixClaim::crd()),
    ];
    // Discovery lists resources by name, as Kubernetes does.
    kinds.sort_by(|a, b| a.plural.cmp(&b.plural));
    kinds
});

/// Every kind this server serves, sorted by plural.
pub fn served_kinds() -> &'static [ServedKind] {
    &SERVED
}

fn group_version() -> String {
    format!("{GROUP}/{VERSION}")
}

/// `GET /version`: a `version.Info`. `major`/`minor` describe this server, not a Kubernetes release,
/// so `kubectl version` warns about skew; nothing else reads them.
pub fn version() -> Value {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    json!({
        "major": "1",
        "minor": "0",
        "gitVersion": concat!("v", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{arch}", std::env::consts::OS),
    })
}

/// `GET /api`: the legacy (core) group has no versions here. client-go accepts an empty
/// `versions` list and then reads `/apis`. The server address is unknown to a pure function;
/// clients use the address they dialled when the list is empty.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": [],
        "serverAddressByClientCIDRs": [],
    })
}

fn group_version_for_discovery() -> Value {
    json!({ "groupVersion": group_version(), "version": VERSION })
}

fn group_entry() -> Value {
    json!({
        "name": GROUP,
        "versions": [group_version_for_discovery()],
        "preferredVersion": group_version_for_discovery(),
    })
}

/// `GET /apis`: an `APIGroupList` with our one group.
pub fn api_group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group_entry()],
    })
}

/// `GET /apis/ipam.miloapis.com`: our `APIGroup`.
pub fn api_group() -> Value {
    let mut group = group_entry();
    if let Some(obj) = group.as_object_mut() {
        obj.insert("kind".into(), "APIGroup".into());
        obj.insert("apiVersion".into(), "v1".into());
    }
    group
}

/// `GET /apis/ipam.miloapis.com/v1alpha1`: an `APIResourceList` with each kind and its
/// `status` subresource.
pub fn api_resource_list() -> Value {
    let mut resources = Vec::new();
    for k in served_kinds() {
        resources.push(json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": VERBS,
            "shortNames": k.short_names,
            "categories": k.categories,
            "storageVersionHash": k.storage_version_hash(),
        }));
        resources.push(json!({
            "name": format!("{}/status", k.plural),
            "singularName": "",
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": STATUS_VERBS,
        }));
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(),
        "resources": resources,
    })
}

/// The aggregated discovery document (`apidiscovery.k8s.io/v2`) for
/// `Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`.
pub fn aggregated_discovery() -> Value {
    aggregated_discovery_for("apidiscovery.k8s.io/v2")
}

/// The aggregated discovery document with the given `apiVersion` (`apidiscovery.k8s.io/v2` or
/// `apidiscovery.k8s.io/v2beta1`; the two have the same shape).
pub fn aggregated_discovery_for(api_version: &str) -> Value {
    let response_kind = |kind: &str| json!({ "group": GROUP, "version": VERSION, "kind": kind });
    let resources: Vec<Value> = served_kinds()
        .iter()
        .map(|k| {
            json!({
                "resource": k.plural,
                "responseKind": response_kind(&k.kind),
                "scope": k.scope(),
                "singularResource": k.singular,
                "verbs": VERBS,
                "shortNames": k.short_names,
                "categories": k.categories,
                "subresources": [{
                    "subresource": "status",
                    "responseKind": response_kind(&k.kind),
                    "verbs": STATUS_VERBS,
                }],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": [{
            "metadata": { "name": GROUP },
            "versions": [{
                "version": VERSION,
                "resources": resources,
                "freshness": "Current",
            }],
        }],
    })
}

#[cfg(test)]
mod tests;
