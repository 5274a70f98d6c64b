//! The audit.k8s.io/v1 `Event`, one per audited request, as kube-apiserver writes it; and the
//! annotations that say which block a write of an IPPrefixClaim or IPPrefix concerned.
use crate::api::{IPPrefix, IPPrefixClaim};
use crate::auth::UserInfo;
use kube::Resource;
use serde::Serialize;
use serde_json::Value;
use std::any::Any;
use std::borrow::Cow;
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

impl Level {
    /// The name the event writes (as serde writes the variant).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

impl Stage {
    /// The name the event writes (as serde writes the variant).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
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
    if let Some(block) = Block::of(written) {
        return Described {
            name: block.name.to_string(),
            namespace: block.namespace.to_string(),
            uid: block.uid.to_string(),
            resource_version: block.resource_version.to_string(),
            annotations: block
                .annotations()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
    }
    let any = written.0.as_ref();
    if let Some(claims) = any.downcast_ref::<Vec<IPPrefixClaim>>() {
        return many(claims.iter().map(claim_block));
    }
    if let Some(prefixes) = any.downcast_ref::<Vec<IPPrefix>>() {
        return many(prefixes.iter().map(prefix_block));
    }
    Described::default()
}

/// One written claim or IPPrefix, borrowed: what its event names, without a `String` made.
pub struct Block<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub resource_version: &'a str,
    /// In key order, as the event's map writes them; an empty value is no annotation.
    annotations: [(&'static str, Cow<'a, str>); 4],
}

impl<'a> Block<'a> {
    /// The one object `written` holds; `None` for a collection or anything else.
    pub fn of(written: &'a Written) -> Option<Block<'a>> {
        let any = written.0.as_ref();
        if let Some(claim) = any.downcast_ref::<IPPrefixClaim>() {
            return Some(claim_block(claim));
        }
        any.downcast_ref::<IPPrefix>().map(prefix_block)
    }

    /// The annotations with a value, in key order.
    pub fn annotations(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.annotations
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, v.as_ref()))
    }
}

fn identity<'a, K: Resource>(
    obj: &'a K,
    annotations: [(&'static str, Cow<'a, str>); 4],
) -> Block<'a> {
    let meta = obj.meta();
    let text = |v: &'a Option<String>| -> &'a str { v.as_deref().unwrap_or_default() };
    Block {
        name: text(&meta.name),
        namespace: text(&meta.namespace),
        uid: text(&meta.uid),
        resource_version: text(&meta.resource_version),
        annotations,
    }
}

fn many<'a>(items: impl Iterator<Item = Block<'a>>) -> Described {
    let mut joined: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let blocks: Vec<Block<'a>> = items.collect();
    for block in &blocks {
        for (k, v) in block.annotations() {
            joined.entry(k.to_string()).or_default().push(v);
        }
    }
    Described {
        annotations: joined.into_iter().map(|(k, v)| (k, v.join(","))).collect(),
        ..Described::default()
    }
}

fn claim_block(claim: &IPPrefixClaim) -> Block<'_> {
    let status = claim.status.as_ref();
    identity(
        claim,
        [
            (CLAIM_ANNOTATION, Cow::Borrowed("")),
            (
                IPPREFIX_ANNOTATION,
                Cow::Borrowed(ref_name(status.and_then(|s| s.prefix_ref.as_ref()))),
            ),
            (
                PARENT_ANNOTATION,
                Cow::Borrowed(ref_name(status.and_then(|s| s.parent_ref.as_ref()))),
            ),
            (
                PREFIX_ANNOTATION,
                Cow::Borrowed(status.and_then(|s| s.prefix.as_deref()).unwrap_or_default()),
            ),
        ],
    )
}

fn ref_name(r: Option<&crate::api::PrefixReference>) -> &str {
    r.map(|p| p.name.as_str()).unwrap_or_default()
}

fn prefix_block(prefix: &IPPrefix) -> Block<'_> {
    let claim = prefix
        .spec
        .claim_ref
        .as_ref()
        .map(|c| Cow::Owned(format!("{}/{}", c.namespace, c.name)))
        .unwrap_or_default();
    identity(
        prefix,
        [
            (CLAIM_ANNOTATION, claim),
            (
                IPPREFIX_ANNOTATION,
                Cow::Borrowed(prefix.metadata.name.as_deref().unwrap_or_default()),
            ),
            (
                PARENT_ANNOTATION,
                Cow::Borrowed(
                    prefix
                        .spec
                        .parent_ref
                        .as_ref()
                        .map(|p| p.name.as_str())
                        .unwrap_or_default(),
                ),
            ),
            (
                PREFIX_ANNOTATION,
                Cow::Borrowed(prefix.spec.prefix.as_str()),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IPPrefixSpec;
    use crate::audit::fixtures::claim;

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
