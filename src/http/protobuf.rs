//! `application/vnd.kubernetes.protobuf` for the one representation metadata clients ask it
//! for: `meta.k8s.io/v1` PartialObjectMetadata, single, listed and watched.
//!
//! Our kinds have no protobuf schema (no more than a CustomResourceDefinition's), but
//! kube-controller-manager's garbage collector, quota and namespace controllers watch every
//! resource as metadata and ask for protobuf first; decoding it costs them far less than JSON,
//! and every claim reaches them twice (the claim and the IPPrefix it binds).
//!
//! Wire format (k8s.io/apimachinery `runtime/serializer/protobuf`): an object is the magic
//! `k8s\0` followed by a `runtime.Unknown` holding its apiVersion, kind and own bytes. A watch
//! stream is a sequence of `meta.k8s.io/v1` WatchEvents, each preceded by its length as a 4-byte
//! big-endian integer, whose object is such an enveloped object. The messages below are those of
//! `k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto` and `pkg/runtime/generated.proto`,
//! with the same field numbers, for the fields this server sets.
use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use prost::Message;
use std::collections::BTreeMap;

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The Content-Type of a watch in protobuf, as kube-apiserver sends it.
pub const WATCH_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf;stream=watch";
const MAGIC: &[u8] = b"k8s\0";
const META_V1: &str = "meta.k8s.io/v1";

/// `runtime.Unknown`: an object's type and its encoded bytes.
#[derive(Clone, PartialEq, Message)]
pub struct Unknown {
    #[prost(message, optional, tag = "1")]
    pub type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    pub api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub kind: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PartialObjectMetadata {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ObjectMeta>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PartialObjectMetadataList {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ListMeta>,
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<PartialObjectMetadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListMeta {
    #[prost(string, optional, tag = "2")]
    pub resource_version: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub r#continue: Option<String>,
    #[prost(int64, optional, tag = "4")]
    pub remaining_item_count: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub namespace: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub resource_version: Option<String>,
    #[prost(int64, optional, tag = "7")]
    pub generation: Option<i64>,
    #[prost(message, optional, tag = "8")]
    pub creation_timestamp: Option<Time>,
    #[prost(message, optional, tag = "9")]
    pub deletion_timestamp: Option<Time>,
    #[prost(int64, optional, tag = "10")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[prost(btree_map = "string, string", tag = "11")]
    pub labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    pub annotations: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "13")]
    pub owner_references: Vec<OwnerReference>,
    #[prost(string, repeated, tag = "14")]
    pub finalizers: Vec<String>,
    #[prost(message, repeated, tag = "17")]
    pub managed_fields: Vec<ManagedFieldsEntry>,
}

/// `metav1.Time`, as Kubernetes encodes it: seconds and nanoseconds since the epoch.
#[derive(Clone, PartialEq, Message)]
pub struct Time {
    #[prost(int64, optional, tag = "1")]
    pub seconds: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    pub nanos: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OwnerReference {
    #[prost(string, optional, tag = "1")]
    pub kind: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub uid: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub api_version: Option<String>,
    #[prost(bool, optional, tag = "6")]
    pub controller: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub block_owner_deletion: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ManagedFieldsEntry {
    #[prost(string, optional, tag = "1")]
    pub manager: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub operation: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub api_version: Option<String>,
    #[prost(message, optional, tag = "4")]
    pub time: Option<Time>,
    #[prost(string, optional, tag = "6")]
    pub fields_type: Option<String>,
    #[prost(message, optional, tag = "7")]
    pub fields_v1: Option<FieldsV1>,
    #[prost(string, optional, tag = "8")]
    pub subresource: Option<String>,
}

/// The field set, as its JSON.
#[derive(Clone, PartialEq, Message)]
pub struct FieldsV1 {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct WatchEvent {
    #[prost(string, optional, tag = "1")]
    pub r#type: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub object: Option<RawExtension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RawExtension {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub raw: Option<Vec<u8>>,
}

/// `meta.k8s.io/v1` Status, for a watch's ERROR event.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ListMeta>,
    #[prost(string, optional, tag = "2")]
    pub status: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub message: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub reason: Option<String>,
    #[prost(int32, optional, tag = "6")]
    pub code: Option<i32>,
}

/// One object's `meta.k8s.io/v1` PartialObjectMetadata, enveloped.
pub fn partial_object_metadata(metadata: &meta::ObjectMeta) -> Vec<u8> {
    let message = PartialObjectMetadata {
        metadata: Some(object_meta(metadata)),
    };
    envelope(META_V1, "PartialObjectMetadata", &message)
}

/// A list's `meta.k8s.io/v1` PartialObjectMetadataList, enveloped.
pub fn partial_object_metadata_list(
    metas: &[&meta::ObjectMeta],
    resource_version: Option<&str>,
    continue_token: Option<&str>,
) -> Vec<u8> {
    let mut items = Vec::new();
    for m in metas {
        list_item(&mut items, m);
    }
    let [head, body] = list_envelope(items, resource_version, continue_token, None);
    [head, body].concat()
}

/// Append one item of a PartialObjectMetadataList (its field, as [`list_envelope`] takes them).
pub fn list_item(items: &mut Vec<u8>, m: &meta::ObjectMeta) {
    let item = PartialObjectMetadata {
        metadata: Some(object_meta(m)),
    };
    prost::encoding::message::encode(2, &item, items);
}

/// A PartialObjectMetadataList of `items` (from [`list_item`]), enveloped: the envelope's
/// head, then the list's bytes. The items are not copied: the list metadata goes after them
/// (protobuf fields may come in any order), and the head is all the envelope adds before.
pub fn list_envelope(
    mut items: Vec<u8>,
    resource_version: Option<&str>,
    continue_token: Option<&str>,
    remaining_item_count: Option<usize>,
) -> [Bytes; 2] {
    let mut meta = list_meta(resource_version, continue_token);
    meta.remaining_item_count = remaining_item_count.map(|n| n as i64);
    prost::encoding::message::encode(1, &meta, &mut items);
    let type_meta = TypeMeta {
        api_version: Some(META_V1.into()),
        kind: Some("PartialObjectMetadataList".into()),
    };
    let mut head = MAGIC.to_vec();
    prost::encoding::message::encode(1, &type_meta, &mut head);
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut head);
    prost::encoding::encode_varint(items.len() as u64, &mut head);
    [Bytes::from(head), Bytes::from(items)]
}

/// A watch bookmark: PartialObjectMetadata carrying only the resourceVersion (and the
/// `k8s.io/initial-events-end` annotation that ends a watch's initial events).
pub fn bookmark(resource_version: String, initial_events_end: bool) -> Vec<u8> {
    let mut annotations = BTreeMap::new();
    if initial_events_end {
        annotations.insert("k8s.io/initial-events-end".to_string(), "true".to_string());
    }
    let metadata = ObjectMeta {
        resource_version: Some(resource_version),
        annotations,
        ..Default::default()
    };
    let message = PartialObjectMetadata {
        metadata: Some(metadata),
    };
    envelope(META_V1, "PartialObjectMetadata", &message)
}

/// A Status (`v1`, as Kubernetes sends it), enveloped; the cause list is left out.
pub fn status(status: &meta::Status) -> Vec<u8> {
    let message = Status {
        metadata: Some(ListMeta::default()),
        status: status.status.clone(),
        message: status.message.clone(),
        reason: status.reason.clone(),
        code: status.code,
    };
    envelope("v1", "Status", &message)
}

/// One frame of a watch stream: the event's length, then the event.
pub fn watch_frame(event_type: &str, object: &[u8]) -> Bytes {
    let event = WatchEvent {
        r#type: Some(event_type.to_string()),
        object: Some(RawExtension {
            raw: Some(object.to_vec()),
        }),
    };
    // A frame is far below 4 GiB: one object's metadata.
    let len = event.encoded_len() as u32;
    Bytes::from(encode_after(&len.to_be_bytes(), &event))
}

/// The magic, then the `runtime.Unknown` carrying `message` and its type.
fn envelope(api_version: &str, kind: &str, message: &impl Message) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.to_string()),
        }),
        raw: Some(message.encode_to_vec()),
    };
    encode_after(MAGIC, &unknown)
}

/// `prefix`, then `message`, in one buffer sized for both (not encoded apart and copied).
fn encode_after(prefix: &[u8], message: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + message.encoded_len());
    out.extend_from_slice(prefix);
    // Encoding fails only for want of room, and a Vec grows.
    let _ = message.encode(&mut out);
    out
}

fn list_meta(resource_version: Option<&str>, continue_token: Option<&str>) -> ListMeta {
    ListMeta {
        resource_version: resource_version.filter(|s| !s.is_empty()).map(Into::into),
        r#continue: continue_token.filter(|s| !s.is_empty()).map(Into::into),
        remaining_item_count: None,
    }
}

/// Whole seconds, as the JSON form has them, so both encodings of an object agree.
fn time(t: &meta::Time) -> Time {
    Time {
        seconds: Some(t.0.as_second()),
        nanos: Some(0),
    }
}

fn object_meta(m: &meta::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        generate_name: m.generate_name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        generation: m.generation,
        creation_timestamp: m.creation_timestamp.as_ref().map(time),
        deletion_timestamp: m.deletion_timestamp.as_ref().map(time),
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
        owner_references: m
            .owner_references
            .iter()
            .flatten()
            .map(|o| OwnerReference {
                kind: Some(o.kind.clone()),
                name: Some(o.name.clone()),
                uid: Some(o.uid.clone()),
                api_version: Some(o.api_version.clone()),
                controller: o.controller,
                block_owner_deletion: o.block_owner_deletion,
            })
            .collect(),
        finalizers: m.finalizers.clone().unwrap_or_default(),
        managed_fields: m
            .managed_fields
            .iter()
            .flatten()
            .map(|e| ManagedFieldsEntry {
                manager: e.manager.clone(),
                operation: e.operation.clone(),
                api_version: e.api_version.clone(),
                time: e.time.as_ref().map(time),
                fields_type: e.fields_type.clone(),
                fields_v1: e.fields_v1.as_ref().map(|f| FieldsV1 {
                    raw: Some(serde_json::to_vec(&f.0).unwrap_or_default()),
                }),
                subresource: e.subresource.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open(bytes: &[u8]) -> (TypeMeta, Vec<u8>) {
        let unknown = Unknown::decode(bytes.strip_prefix(MAGIC).expect("magic")).unwrap();
        (unknown.type_meta.unwrap(), unknown.raw.unwrap())
    }

    fn full_metadata() -> meta::ObjectMeta {
        serde_json::from_value(json!({
            "name": "web-0", "namespace": "team-a", "uid": "3f1c", "resourceVersion": "42",
            "generation": 2, "creationTimestamp": "2026-11-22T10:00:01Z",
            "deletionTimestamp": "2026-11-22T11:00:00Z", "deletionGracePeriodSeconds": 0,
            "labels": {"app": "web", "tier": ""}, "annotations": {"note": "x"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": "9a", "controller": true, "blockOwnerDeletion": false}],
            "finalizers": ["ipam.miloapis.com/release"],
            "managedFields": [{"manager": "kubectl", "operation": "Update",
                "apiVersion": "ipam.miloapis.com/v1alpha1", "time": "2026-11-22T10:00:01Z",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:prefixLength": {}}}}],
        }))
        .unwrap()
    }

    #[test]
    fn every_metadata_field_set_survives_the_round_trip() {
        let m = full_metadata();
        let (type_meta, raw) = open(&partial_object_metadata(&m));
        assert_eq!(type_meta.api_version.as_deref(), Some("meta.k8s.io/v1"));
        assert_eq!(type_meta.kind.as_deref(), Some("PartialObjectMetadata"));
        let decoded = PartialObjectMetadata::decode(raw.as_slice())
            .unwrap()
            .metadata
            .unwrap();
        let created = Time {
            seconds: Some(m.creation_timestamp.as_ref().unwrap().0.as_second()),
            nanos: Some(0),
        };
        assert_eq!(
            decoded,
            ObjectMeta {
                name: Some("web-0".into()),
                generate_name: None,
                namespace: Some("team-a".into()),
                uid: Some("3f1c".into()),
                resource_version: Some("42".into()),
                generation: Some(2),
                creation_timestamp: Some(created.clone()),
                deletion_timestamp: Some(time(m.deletion_timestamp.as_ref().unwrap())),
                deletion_grace_period_seconds: Some(0),
                labels: [("app".into(), "web".into()), ("tier".into(), "".into())].into(),
                annotations: [("note".into(), "x".into())].into(),
                owner_references: vec![OwnerReference {
                    kind: Some("ConfigMap".into()),
                    name: Some("owner".into()),
                    uid: Some("9a".into()),
                    api_version: Some("v1".into()),
                    controller: Some(true),
                    block_owner_deletion: Some(false),
                }],
                finalizers: vec!["ipam.miloapis.com/release".into()],
                managed_fields: vec![ManagedFieldsEntry {
                    manager: Some("kubectl".into()),
                    operation: Some("Update".into()),
                    api_version: Some("ipam.miloapis.com/v1alpha1".into()),
                    time: Some(created),
                    fields_type: Some("FieldsV1".into()),
                    fields_v1: Some(FieldsV1 {
                        raw: Some(br#"{"f:spec":{"f:prefixLength":{}}}"#.to_vec()),
                    }),
                    subresource: None,
                }],
            }
        );
        // 2026-11-22T10:00:01Z
        assert_eq!(
            decoded.creation_timestamp.unwrap().seconds,
            Some(1795341601)
        );
    }

    #[test]
    fn a_list_carries_its_resource_version_continue_token_and_items_in_order() {
        let a = full_metadata();
        let b = meta::ObjectMeta {
            name: Some("web-1".into()),
            ..Default::default()
        };
        let (type_meta, raw) = open(&partial_object_metadata_list(
            &[&a, &b],
            Some("77"),
            Some("tok"),
        ));
        assert_eq!(type_meta.kind.as_deref(), Some("PartialObjectMetadataList"));
        let list = PartialObjectMetadataList::decode(raw.as_slice()).unwrap();
        let meta = list.metadata.unwrap();
        assert_eq!(meta.resource_version.as_deref(), Some("77"));
        assert_eq!(meta.r#continue.as_deref(), Some("tok"));
        let names: Vec<_> = list
            .items
            .iter()
            .map(|i| i.metadata.as_ref().unwrap().name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["web-0", "web-1"]);
        // No continue token: the field is absent, not empty.
        let (_, raw) = open(&partial_object_metadata_list(&[], Some("77"), None));
        let list = PartialObjectMetadataList::decode(raw.as_slice()).unwrap();
        assert_eq!(list.metadata.unwrap().r#continue, None);
    }

    #[test]
    fn watch_frames_are_length_prefixed_events_around_enveloped_objects() {
        let object = bookmark("9".into(), true);
        let mut stream = watch_frame("BOOKMARK", &object).to_vec();
        let status = status(&meta::Status {
            status: Some("Failure".into()),
            message: Some("too old resource version: 1 (5)".into()),
            reason: Some("Expired".into()),
            code: Some(410),
            ..Default::default()
        });
        stream.extend_from_slice(&watch_frame("ERROR", &status));

        let mut events = Vec::new();
        let mut rest = stream.as_slice();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            events.push(WatchEvent::decode(&rest[4..4 + len]).unwrap());
            rest = &rest[4 + len..];
        }
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].r#type.as_deref(), Some("BOOKMARK"));
        let (_, raw) = open(events[0].object.as_ref().unwrap().raw.as_ref().unwrap());
        let metadata = PartialObjectMetadata::decode(raw.as_slice())
            .unwrap()
            .metadata
            .unwrap();
        assert_eq!(metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(
            metadata
                .annotations
                .get("k8s.io/initial-events-end")
                .map(String::as_str),
            Some("true")
        );

        assert_eq!(events[1].r#type.as_deref(), Some("ERROR"));
        let (type_meta, raw) = open(events[1].object.as_ref().unwrap().raw.as_ref().unwrap());
        assert_eq!(
            (type_meta.api_version.as_deref(), type_meta.kind.as_deref()),
            (Some("v1"), Some("Status"))
        );
        let decoded = Status::decode(raw.as_slice()).unwrap();
        assert_eq!(decoded.code, Some(410));
        assert_eq!(decoded.reason.as_deref(), Some("Expired"));
    }
}
