//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for
//! (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), and the `PartialObjectMetadata[List]`
//! representations that metadata informers and the garbage collector ask for.
//!
//! Conventions, as Kubernetes' own printers: a value that is not there renders as `<none>`; AGE is
//! a human duration computed on the server (`duration.HumanDuration`), `<unknown>` without a
//! creation timestamp; columns with `priority: 1` appear only with `kubectl get -o wide`.
use crate::api::{IPPrefix, IPPrefixClaim, IpFamily};
use crate::error::ApiError;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Map, Value};

/// The cell of a value that is not set.
pub const NONE: &str = "<none>";

/// How a kind prints as table rows.
pub trait TableRow {
    /// `columnDefinitions`, in cell order: `name`, `type`, `format`, `description`, `priority`.
    fn column_definitions() -> Vec<Value>;
    /// One cell per column definition. `now` is the instant AGE is measured to.
    fn cells(&self, now: Timestamp) -> Vec<Value>;
}

/// The `includeObject` query parameter: what each row's `object` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No `object`.
    None,
    /// A `PartialObjectMetadata` (the default, as in Kubernetes).
    #[default]
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parses `includeObject`; absent means `Metadata`. Values are case-sensitive, as in Kubernetes.
    pub fn parse(s: Option<&str>) -> Result<IncludeObject, ApiError> {
        match s {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(other) => Err(ApiError::BadRequest(format!(
                "includeObject: Unsupported value: \"{other}\": supported values: \"None\", \"Metadata\", \"Object\""
            ))),
        }
    }
}

/// A `meta.k8s.io/v1` `Table` of `items`. `resource_version` and `continue_token` become the
/// table's list metadata. For a watch, call it with one item per event; column definitions are
/// always included (Kubernetes may omit them after the first event; clients accept both).
pub fn table<K>(
    items: &[K],
    resource_version: Option<&str>,
    continue_token: Option<&str>,
    include: IncludeObject,
    now: Timestamp,
) -> Value
where
    K: TableRow + kube::Resource + serde::Serialize,
{
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            serde_json::to_value(Row::new(item, include, now)).unwrap_or_else(|_| json!({}))
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta(resource_version, continue_token),
        "columnDefinitions": K::column_definitions(),
        "rows": rows,
    })
}

/// The head of a `Table`: everything but its rows.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableHead<M> {
    kind: &'static str,
    api_version: &'static str,
    metadata: M,
    column_definitions: Vec<Value>,
}

impl<M> TableHead<M> {
    pub fn new<K: TableRow>(metadata: M) -> Self {
        TableHead {
            kind: "Table",
            api_version: "meta.k8s.io/v1",
            metadata,
            column_definitions: K::column_definitions(),
        }
    }
}

/// One row of a `Table`: its cells and, as `includeObject` asks, the object.
#[derive(serde::Serialize)]
pub struct Row<'a, K> {
    cells: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<RowObject<'a, K>>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum RowObject<'a, K> {
    Metadata(PartialObjectMetadata<'a>),
    // The derived kinds always serialize `apiVersion` and `kind`.
    Object(&'a K),
}

impl<'a, K: TableRow + kube::Resource> Row<'a, K> {
    pub fn new(item: &'a K, include: IncludeObject, now: Timestamp) -> Self {
        let object = match include {
            IncludeObject::None => None,
            IncludeObject::Metadata => Some(RowObject::Metadata(PartialObjectMetadata::new(
                "meta.k8s.io/v1",
                item.meta(),
            ))),
            IncludeObject::Object => Some(RowObject::Object(item)),
        };
        Row {
            cells: item.cells(now),
            object,
        }
    }
}

/// `meta.k8s.io/v1` `PartialObjectMetadata` of one object.
pub fn partial_object_metadata(meta: &ObjectMeta) -> Value {
    partial_object_metadata_for("meta.k8s.io/v1", meta)
}

/// `PartialObjectMetadata`, borrowing the object's metadata: written straight to JSON (a watch
/// of metadata, as kube-controller-manager's garbage collector holds, encodes one per event).
#[derive(serde::Serialize)]
pub struct PartialObjectMetadata<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    metadata: &'a ObjectMeta,
}

impl<'a> PartialObjectMetadata<'a> {
    pub fn new(api_version: &'a str, metadata: &'a ObjectMeta) -> Self {
        PartialObjectMetadata {
            kind: "PartialObjectMetadata",
            api_version,
            metadata,
        }
    }
}

/// `PartialObjectMetadata` with the given `apiVersion` (`meta.k8s.io/v1` or `meta.k8s.io/v1beta1`).
pub fn partial_object_metadata_for(api_version: &str, meta: &ObjectMeta) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": api_version,
        "metadata": serde_json::to_value(meta).unwrap_or_else(|_| json!({})),
    })
}

/// `meta.k8s.io/v1` `PartialObjectMetadataList`; each item carries its own `kind`/`apiVersion`,
/// as Kubernetes serves them.
pub fn partial_object_metadata_list(
    metas: &[&ObjectMeta],
    resource_version: Option<&str>,
    continue_token: Option<&str>,
) -> Value {
    partial_object_metadata_list_for("meta.k8s.io/v1", metas, resource_version, continue_token)
}

/// `PartialObjectMetadataList` with the given `apiVersion`.
pub fn partial_object_metadata_list_for(
    api_version: &str,
    metas: &[&ObjectMeta],
    resource_version: Option<&str>,
    continue_token: Option<&str>,
) -> Value {
    let items: Vec<Value> = metas
        .iter()
        .map(|m| partial_object_metadata_for(api_version, m))
        .collect();
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": api_version,
        "metadata": list_meta(resource_version, continue_token),
        "items": items,
    })
}

fn list_meta(resource_version: Option<&str>, continue_token: Option<&str>) -> Value {
    let mut meta = Map::new();
    if let Some(rv) = resource_version.filter(|s| !s.is_empty()) {
        meta.insert("resourceVersion".into(), rv.into());
    }
    if let Some(c) = continue_token.filter(|s| !s.is_empty()) {
        meta.insert("continue".into(), c.into());
    }
    Value::Object(meta)
}

/// `duration.HumanDuration` from k8s.io/apimachinery: `59s`, `119s`, `2m`, `9m59s`, `65m`,
/// `3h5m`, `47h`, `3d4h`, `30d`, `2y`, `3y45d`, `9y`. Up to 1s in the future is `0s` (clock
/// skew); further is `<invalid>`.
pub fn human_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let dy = days % 365;
        return if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        };
    }
    format!("{years}y")
}

/// The AGE cell: time since `metadata.creationTimestamp`, or `<unknown>` without one.
pub fn age(meta: &ObjectMeta, now: Timestamp) -> String {
    match &meta.creation_timestamp {
        Some(t) => human_duration(now.duration_since(t.0)),
        None => "<unknown>".into(),
    }
}

fn column(name: &str, kind: &str, format: &str, description: &str, priority: i32) -> Value {
    json!({
        "name": name,
        "type": kind,
        "format": format,
        "description": description,
        "priority": priority,
    })
}

fn name_column(kind: &str) -> Value {
    column(
        "Name",
        "string",
        "name",
        &format!("Name of the {kind}, unique within its scope."),
        0,
    )
}

fn age_column() -> Value {
    column(
        "Age",
        "string",
        "",
        "Time since metadata.creationTimestamp, as a human duration.",
        0,
    )
}

/// A string cell, `<none>` when absent or empty.
fn text(v: Option<&str>) -> Value {
    Value::from(v.filter(|s| !s.is_empty()).unwrap_or(NONE))
}

/// An integer cell, `<none>` when absent.
fn integer(v: Option<i64>) -> Value {
    v.map_or_else(|| Value::from(NONE), Value::from)
}

fn family_of(prefix: &str) -> Option<&'static str> {
    prefix
        .parse::<ipnet::IpNet>()
        .ok()
        .map(|net| IpFamily::of(&net).as_str())
}

impl TableRow for IPPrefix {
    fn column_definitions() -> Vec<Value> {
        vec![
            name_column("IPPrefix"),
            column("Prefix", "string", "", "The block (spec.prefix).", 0),
            column(
                "Parent",
                "string",
                "",
                "The IPPrefix this block was carved from (spec.parentRef); none for a root.",
                0,
            ),
            column(
                "Phase",
                "string",
                "",
                "Available, Bound or Released (status.phase).",
                0,
            ),
            column(
                "Claim",
                "string",
                "",
                "The claim this block is bound to, namespace/name (spec.claimRef).",
                0,
            ),
            column(
                "Utilization",
                "string",
                "",
                "Share of the block allocated or excluded (status.utilization).",
                0,
            ),
            age_column(),
            column("Family", "string", "", "IPv4 or IPv6 (status.ipFamily).", 1),
            column(
                "Largest-Free",
                "string",
                "",
                "The largest block still allocatable, as /length (status.largestFreePrefixLength).",
                1,
            ),
            column(
                "Children",
                "integer",
                "",
                "Number of direct child prefixes (status.children).",
                1,
            ),
            column(
                "Reclaim",
                "string",
                "",
                "What happens to this block when its claim is deleted (spec.reclaimPolicy).",
                1,
            ),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = &self.spec;
        let status = self.status.as_ref();
        let claim = spec
            .claim_ref
            .as_ref()
            .map(|c| format!("{}/{}", c.namespace, c.name));
        let family = status
            .and_then(|s| s.ip_family.as_deref())
            .or_else(|| family_of(&spec.prefix));
        vec![
            text(self.metadata.name.as_deref()),
            text(Some(&spec.prefix)),
            text(spec.parent_ref.as_ref().map(|p| p.name.as_str())),
            text(status.and_then(|s| s.phase.as_deref())),
            text(claim.as_deref()),
            text(status.and_then(|s| s.utilization.as_deref())),
            age(&self.metadata, now).into(),
            text(family),
            text(
                status
                    .and_then(|s| s.largest_free_prefix_length)
                    .map(|l| format!("/{l}"))
                    .as_deref(),
            ),
            integer(status.and_then(|s| s.children)),
            text(spec.reclaim_policy.as_deref()),
        ]
    }
}

impl TableRow for IPPrefixClaim {
    fn column_definitions() -> Vec<Value> {
        vec![
            name_column("IPPrefixClaim"),
            column(
                "Prefix",
                "string",
                "",
                "The allocated block (status.prefix).",
                0,
            ),
            column(
                "Parent",
                "string",
                "",
                "The IPPrefix the block was taken from (status.parentRef, else spec.parentRef).",
                0,
            ),
            column("Phase", "string", "", "Bound once allocated (status.phase).", 0),
            age_column(),
            column(
                "Family",
                "string",
                "",
                "IPv4 or IPv6 (status.ipFamily, else spec.ipFamily).",
                1,
            ),
            column(
                "Length",
                "integer",
                "",
                "The requested prefix length (spec.prefixLength, else the length of spec.prefix).",
                1,
            ),
            column(
                "IPPrefix",
                "string",
                "",
                "The IPPrefix bound to this claim (status.prefixRef).",
                1,
            ),
            column(
                "Reclaim",
                "string",
                "",
                "Delete or Retain: what happens to the block when this claim is deleted (spec.reclaimPolicy).",
                1,
            ),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = &self.spec;
        let status = self.status.as_ref();
        let parent = status
            .and_then(|s| s.parent_ref.as_ref())
            .or(spec.parent_ref.as_ref())
            .map(|p| p.name.as_str());
        let requested: Option<ipnet::IpNet> = spec.prefix.as_deref().and_then(|p| p.parse().ok());
        let family = status
            .and_then(|s| s.ip_family.as_deref())
            .or(spec.ip_family.as_deref())
            .or_else(|| requested.map(|net| IpFamily::of(&net).as_str()));
        let length = spec
            .prefix_length
            .map(i64::from)
            .or_else(|| requested.map(|net| i64::from(net.prefix_len())));
        vec![
            text(self.metadata.name.as_deref()),
            text(status.and_then(|s| s.prefix.as_deref())),
            text(parent),
            text(status.and_then(|s| s.phase.as_deref())),
            age(&self.metadata, now).into(),
            text(family),
            integer(length),
            text(
                status
                    .and_then(|s| s.prefix_ref.as_ref())
                    .map(|p| p.name.as_str()),
            ),
            // Delete is the default (API.md), so an unset policy prints as what it means.
            text(Some(
                spec.reclaim_policy
                    .as_deref()
                    .unwrap_or(crate::api::ReclaimPolicy::Delete.as_str()),
            )),
        ]
    }
}

#[cfg(test)]
mod tests;
