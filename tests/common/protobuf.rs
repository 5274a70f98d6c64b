//! Reading Kubernetes' protobuf wire format with the crate's own message types: an enveloped
//! object (`k8s\0` + `runtime.Unknown`) and a watch stream of length-prefixed WatchEvents.
use ipam_apiserver::http::protobuf::{ObjectMeta, PartialObjectMetadata, Unknown, WatchEvent};
use prost::Message;

/// (apiVersion, kind, the object's own bytes) of an enveloped object.
pub fn open_envelope(bytes: &[u8]) -> (String, String, Vec<u8>) {
    let body = bytes
        .strip_prefix(b"k8s\0")
        .unwrap_or_else(|| panic!("no protobuf magic: {:?}", String::from_utf8_lossy(bytes)));
    let unknown = Unknown::decode(body).expect("a runtime.Unknown");
    let type_meta = unknown.type_meta.unwrap_or_default();
    (
        type_meta.api_version.unwrap_or_default(),
        type_meta.kind.unwrap_or_default(),
        unknown.raw.unwrap_or_default(),
    )
}

/// The metadata of an enveloped `meta.k8s.io/v1` PartialObjectMetadata.
pub fn partial_object_metadata(bytes: &[u8]) -> ObjectMeta {
    let (api_version, kind, raw) = open_envelope(bytes);
    assert_eq!(
        (api_version.as_str(), kind.as_str()),
        ("meta.k8s.io/v1", "PartialObjectMetadata")
    );
    PartialObjectMetadata::decode(raw.as_slice())
        .expect("a PartialObjectMetadata")
        .metadata
        .unwrap_or_default()
}

/// Every event of a watch stream, as (type, the enveloped object).
pub fn watch_events(mut body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut events = Vec::new();
    while !body.is_empty() {
        let (len, rest) = body.split_at(4);
        let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        let (frame, rest) = rest.split_at(len);
        let event = WatchEvent::decode(frame).expect("a WatchEvent");
        events.push((
            event.r#type.unwrap_or_default(),
            event.object.and_then(|o| o.raw).unwrap_or_default(),
        ));
        body = rest;
    }
    events
}
