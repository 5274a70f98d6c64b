//! The audit.k8s.io/v1 `Event`, one per audited request, as kube-apiserver writes it; and the
//! annotations that say which block a write of an IPPrefixClaim or IPPrefix concerned.
use crate::api::{IPPrefix, IPPrefixClaim};
use crate::auth::UserInfo;
use kube::Resource;
use serde::Serialize;
use serde_json::Value;
use std::any::Any;
use std::collections::BTreeMap;

/// The allocated (or freed) block, e.g. `fd20::5/128`.
pub const PREFIX_ANNOTATION: &str = "ipam.miloapis.com/prefix";
/// The IPPrefix the block was carved from.
pub const PARENT_ANNOTATION: &str = "ipam.miloapis.com/parent";
/// The IPPrefix that is the block.
pub const IPPREFIX_ANNOTATION: &str = "ipam.miloapis.com/ipprefix";
/// On IPPrefix writes: the claim (`namespace/name`) the block is or was bound to.
pub const CLAIM_ANNOTATION: &str = "ipam.miloapis.com/claim";

/// How much of a request is recorded, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

/// The stage at which an event is written. Only the two stages a response reaches are written
/// here; `RequestReceived` is never (the completed event holds everything it would).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

/// One audit.k8s.io/v1 Event. Field names and order are kube-apiserver's.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub level: Level,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: Stage,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub verb: String,
    pub user: User,
    #[serde(rename = "sourceIPs")]
    pub source_ips: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_object: Option<Value>,
    pub request_received_timestamp: MicroTime,
    pub stage_timestamp: MicroTime,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Event {
    pub const KIND: &'static str = "Event";
    pub const API_VERSION: &'static str = "audit.k8s.io/v1";
}

/// `authentication.k8s.io/v1 UserInfo`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct User {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl From<&UserInfo> for User {
    fn from(u: &UserInfo) -> User {
        User {
            username: u.username.clone(),
            groups: u.groups.clone(),
            extra: u.extra.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// The `metav1.Status` of the response: the code, and for a failure its reason and message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResponseStatus {
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub code: u16,
}

impl ResponseStatus {
    /// From the status code and, for an error, the `Status` body the server sent.
    pub fn new(code: u16, body: Option<&Value>) -> ResponseStatus {
        let field = |name: &str| {
            body.and_then(|b| b.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        ResponseStatus {
            metadata: BTreeMap::new(),
            status: field("status"),
            message: field("message"),
            reason: field("reason"),
            code,
        }
    }
}

/// A timestamp written as Kubernetes' `MicroTime`: RFC 3339, UTC, six fractional digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MicroTime(pub jiff::Timestamp);

impl MicroTime {
    pub fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }
}

impl Serialize for MicroTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // jiff's RFC 3339 printer with a fixed precision (`strftime` parses its format on
        // every call).
        s.collect_str(&format_args!("{:.6}", self.0))
    }
}

/// What a write handler hands the audit log: the object(s) it wrote, type-erased, so the log
/// can name the block without every handler knowing about auditing. Carried as a response
/// extension and read only when the request is audited.
#[derive(Clone)]
pub struct Written(pub(crate) std::sync::Arc<dyn Any + Send + Sync>);

/// Set the written object(s) (an object, or the `Vec` a deletecollection removed) on `resp`.
pub fn written<T: Any + Send + Sync>(
    mut resp: axum::response::Response,
    objects: T,
) -> axum::response::Response {
    resp.extensions_mut()
        .insert(Written(std::sync::Arc::new(objects)));
    resp
}

/// What the audit log takes from written objects.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Described {
    /// Identity of the one object written (empty for a collection).
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    pub annotations: BTreeMap<String, String>,
}

/// The identity and block annotations of what a handler wrote. A deletecollection's blocks are
/// listed comma-separated, in the order of the removed items, so a search for an address still
/// finds the line.
pub fn describe(written: &Written) -> Described {
    let any = written.0.as_ref();
    if let Some(claim) = any.downcast_ref::<IPPrefixClaim>() {
        return one(claim, claim_annotations(claim));
    }
    if let Some(prefix) = any.downcast_ref::<IPPrefix>() {
        return one(prefix, prefix_annotations(prefix));
    }
    if let Some(claims) = any.downcast_ref::<Vec<IPPrefixClaim>>() {
        return many(claims.iter().map(claim_annotations));
    }
    if let Some(prefixes) = any.downcast_ref::<Vec<IPPrefix>>() {
        return many(prefixes.iter().map(prefix_annotations));
    }
    Described::default()
}

type Annotations = Vec<(&'static str, String)>;

fn one<K: Resource>(obj: &K, annotations: Annotations) -> Described {
    let meta = obj.meta();
    Described {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        annotations: annotations
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

fn many(items: impl Iterator<Item = Annotations>) -> Described {
    let mut joined: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for annotations in items {
        for (k, v) in annotations {
            if !v.is_empty() {
                joined.entry(k.to_string()).or_default().push(v);
            }
        }
    }
    Described {
        annotations: joined.into_iter().map(|(k, v)| (k, v.join(","))).collect(),
        ..Described::default()
    }
}

fn claim_annotations(claim: &IPPrefixClaim) -> Annotations {
    let status = claim.status.as_ref();
    vec![
        (
            PREFIX_ANNOTATION,
            status.and_then(|s| s.prefix.clone()).unwrap_or_default(),
        ),
        (
            PARENT_ANNOTATION,
            status
                .and_then(|s| s.parent_ref.as_ref())
                .map(|p| p.name.clone())
                .unwrap_or_default(),
        ),
        (
            IPPREFIX_ANNOTATION,
            status
                .and_then(|s| s.prefix_ref.as_ref())
                .map(|p| p.name.clone())
                .unwrap_or_default(),
        ),
    ]
}

fn prefix_annotations(prefix: &IPPrefix) -> Annotations {
    vec![
        (PREFIX_ANNOTATION, prefix.spec.prefix.clone()),
        (
            PARENT_ANNOTATION,
            prefix
                .spec
                .parent_ref
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
        ),
        (
            IPPREFIX_ANNOTATION,
            prefix.metadata.name.clone().unwrap_or_default(),
        ),
        (
            CLAIM_ANNOTATION,
            prefix
                .spec
                .claim_ref
                .as_ref()
                .map(|c| format!("{}/{}", c.namespace, c.name))
                .unwrap_or_default(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IPPrefixClaimSpec, IPPrefixClaimStatus, IPPrefixSpec, PrefixReference};

    fn claim(name: &str, prefix: &str) -> IPPrefixClaim {
        let mut c = IPPrefixClaim::new(name, IPPrefixClaimSpec::default());
        c.metadata.namespace = Some("p".into());
        c.metadata.uid = Some(format!("uid-{name}"));
        c.status = Some(IPPrefixClaimStatus {
            prefix: Some(prefix.into()),
            parent_ref: Some(PrefixReference {
                name: "subnet".into(),
            }),
            prefix_ref: Some(PrefixReference {
                name: format!("p.{name}"),
            }),
            ..Default::default()
        });
        c
    }

    #[test]
    fn a_claim_is_described_by_its_block_parent_and_ipprefix() {
        let d = describe(&Written(std::sync::Arc::new(claim("web", "fd20::5/128"))));
        assert_eq!(d.name, "web");
        assert_eq!(d.namespace, "p");
        assert_eq!(d.uid, "uid-web");
        let want: BTreeMap<String, String> = [
            (PREFIX_ANNOTATION, "fd20::5/128"),
            (PARENT_ANNOTATION, "subnet"),
            (IPPREFIX_ANNOTATION, "p.web"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(d.annotations, want);
    }

    #[test]
    fn a_collection_lists_every_block_in_item_order() {
        let d = describe(&Written(std::sync::Arc::new(vec![
            claim("b", "fd20::2/128"),
            claim("a", "fd20::1/128"),
        ])));
        assert_eq!(d.name, "");
        assert_eq!(d.annotations[PREFIX_ANNOTATION], "fd20::2/128,fd20::1/128");
        assert_eq!(d.annotations[IPPREFIX_ANNOTATION], "p.b,p.a");
    }

    #[test]
    fn a_root_prefix_has_no_parent_or_claim_annotation() {
        let root = IPPrefix::new(
            "root",
            IPPrefixSpec {
                prefix: "fd20::/20".into(),
                ..Default::default()
            },
        );
        let d = describe(&Written(std::sync::Arc::new(root)));
        assert_eq!(d.annotations.len(), 2, "{:?}", d.annotations);
        assert_eq!(d.annotations[PREFIX_ANNOTATION], "fd20::/20");
        assert_eq!(d.annotations[IPPREFIX_ANNOTATION], "root");
    }

    #[test]
    fn timestamps_have_six_fractional_digits() {
        let t: jiff::Timestamp = "2026-12-05T07:04:13.1Z".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&MicroTime(t)).unwrap(),
            "\"2026-12-05T07:04:13.100000Z\""
        );
    }
}
