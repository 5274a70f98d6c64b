//! Watch responses: a stream of `{"type": ..., "object": ...}` lines until the timeout, the
//! client going away, or server shutdown.
use super::handlers::watch_options;
use super::negotiate::{Params, Representation};
use super::protobuf;
use super::respond::{meta_api_version, object_bytes, Served};
use super::table::IncludeObject;
use super::AppState;
use crate::error::{status_json, ApiResult};
use crate::registry::{Watch, WatchEvent};
use crate::server::Shutdown;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::FutureExt;
use http::HeaderValue;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

/// How often an idle watch with `allowWatchBookmarks` gets a bookmark.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

struct WatchStream<K> {
    watch: Watch<K>,
    repr: Representation,
    include: IncludeObject,
    deadline: Instant,
    bookmarks: Option<tokio::time::Interval>,
    shutdown: Option<Shutdown>,
}

pub async fn watch_response<K: Served>(
    app: &AppState,
    namespace: Option<&str>,
    params: &Params,
    repr: Representation,
    shutdown: Option<Shutdown>,
) -> ApiResult<Response> {
    let opts = watch_options::<K>(params)?;
    let include = IncludeObject::parse(params.get("includeObject"))?;
    let timeout = watch_timeout(params.number("timeoutSeconds")?);
    let bookmarks = opts.allow_bookmarks.then(|| {
        let mut i = tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut watch = app.registry.watch::<K>(namespace, opts).await?;
    if let Some(slot) = shared_slot(repr) {
        watch.share_encoded(slot);
    }
    let state = WatchStream {
        watch,
        repr,
        include,
        deadline: Instant::now() + timeout,
        bookmarks,
        shutdown,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        let line = next_line(&mut s).await?;
        let chunk = with_ready_lines(line, &mut s);
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), s))
    });
    let content_type = match repr {
        Representation::PartialObjectMetadataProtobuf => protobuf::WATCH_MEDIA_TYPE,
        _ => "application/json",
    };
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    Ok(resp)
}

/// The longest a watch runs before the server ends it (the client then resumes from its last
/// resourceVersion): a longer `timeoutSeconds` is clamped to it, so any number is served.
pub const MAX_WATCH_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a watch runs. Without `timeoutSeconds` (or with 0, as Kubernetes reads it), a
/// random 30–60 minutes, so watchers do not reconnect in step; at most [`MAX_WATCH_TIMEOUT`].
fn watch_timeout(requested: Option<u64>) -> Duration {
    match requested.filter(|s| *s > 0) {
        Some(s) => Duration::from_secs(s).min(MAX_WATCH_TIMEOUT),
        None => Duration::from_secs(1800 + (uuid::Uuid::new_v4().as_u128() % 1800) as u64),
    }
}

/// The largest chunk [`with_ready_lines`] builds.
const MAX_CHUNK: usize = 64 * 1024;

/// `first` and every event already waiting after it, as one chunk: one HTTP/2 DATA frame and one
/// write instead of one each. Group commit publishes events in bursts, and through the
/// aggregation layer each chunk is also read, written and flushed once more by
/// kube-apiserver's proxy. Nothing waits: an event not yet there goes in a later chunk.
fn with_ready_lines<K: Served>(first: Bytes, s: &mut WatchStream<K>) -> Bytes {
    let mut chunk: Option<Vec<u8>> = None;
    while chunk.as_ref().map_or(first.len(), Vec::len) < MAX_CHUNK {
        // A stream that ended answers None again on the next poll, which ends the response.
        let Some(Some(line)) = next_line(s).now_or_never() else {
            break;
        };
        chunk
            .get_or_insert_with(|| first.to_vec())
            .extend_from_slice(&line);
    }
    chunk.map_or(first, Bytes::from)
}

async fn next_line<K: Served>(s: &mut WatchStream<K>) -> Option<Bytes> {
    let shutdown = s.shutdown.clone();
    let draining = async move {
        match shutdown {
            Some(sd) => sd.wait().await,
            None => std::future::pending().await,
        }
    };
    let tick = async {
        match s.bookmarks.as_mut() {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    };
    let event = tokio::select! {
        ev = s.watch.next() => ev?,
        _ = tokio::time::sleep_until(s.deadline) => return None,
        _ = draining => return None,
        _ = tick => WatchEvent::Bookmark { resource_version: s.watch.bookmark_revision().to_string(), initial_events_end: false },
    };
    let (kind, object) = match event {
        WatchEvent::Added(o) => ("ADDED", encode(&o, s)),
        WatchEvent::Modified(o) => ("MODIFIED", encode(&o, s)),
        WatchEvent::Deleted(o) => ("DELETED", encode(&o, s)),
        WatchEvent::Bookmark {
            resource_version,
            initial_events_end,
        } => (
            "BOOKMARK",
            bookmark::<K>(s.repr, resource_version, initial_events_end),
        ),
        WatchEvent::Error(e) => ("ERROR", status_bytes(s.repr, &e.to_status())),
        WatchEvent::Encoded(event_type) => (
            event_type.as_str(),
            s.watch
                .shared_encoding()
                .and_then(|e| e.get().cloned())
                .unwrap_or_default(),
        ),
    };
    if s.repr == Representation::PartialObjectMetadataProtobuf {
        return Some(protobuf::watch_frame(kind, &object));
    }
    // {"type":"ADDED","object":{...}}\n, assembled from the (possibly shared) object bytes.
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(&object);
    line.extend_from_slice(b"}\n");
    Some(Bytes::from(line))
}

/// A Status (an ERROR event's object) in the watcher's wire format.
fn status_bytes(repr: Representation, status: &Status) -> Bytes {
    match repr {
        Representation::PartialObjectMetadataProtobuf => Bytes::from(protobuf::status(status)),
        _ => to_bytes(&status_json(status)),
    }
}

/// The object in the watcher's representation. Representations every such watcher sends
/// alike are encoded once per event and shared through the store event.
fn encode<K: Served>(obj: &K, s: &WatchStream<K>) -> Bytes {
    let fresh = || match object_bytes(obj, s.repr, s.include) {
        Ok(encoded) => Bytes::from(encoded),
        Err(e) => status_bytes(s.repr, &e.to_status()),
    };
    match s.watch.shared_encoding() {
        Some(cell) => cell.get_or_init(fresh).clone(),
        None => fresh(),
    }
}

/// Which shared encoding of a store event a watcher in `repr` sends: the full object in JSON
/// (kubectl, informers) or its `meta.k8s.io/v1` PartialObjectMetadata in JSON or protobuf (the
/// garbage collector's and quota controller's metadata informers). Others are encoded per
/// watcher.
fn shared_slot(repr: Representation) -> Option<usize> {
    match repr {
        Representation::Object { yaml: false } => Some(0),
        Representation::PartialObjectMetadata { beta: false } => Some(1),
        Representation::PartialObjectMetadataProtobuf => Some(2),
        _ => None,
    }
}

/// A bookmark's object, in the watcher's representation like every other event's: a metadata
/// informer (the garbage collector's, the quota controller's) cannot decode an object of the
/// resource's own kind and would end its watch and relist at every bookmark.
fn bookmark<K: Served>(
    repr: Representation,
    resource_version: String,
    initial_events_end: bool,
) -> Bytes {
    if repr == Representation::PartialObjectMetadataProtobuf {
        return Bytes::from(protobuf::bookmark(resource_version, initial_events_end));
    }
    let mut metadata = json!({ "resourceVersion": resource_version });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let object = match repr {
        Representation::PartialObjectMetadata { beta } => json!({
            "apiVersion": meta_api_version(beta), "kind": "PartialObjectMetadata", "metadata": metadata,
        }),
        Representation::Table { beta } => json!({
            "apiVersion": meta_api_version(beta), "kind": "Table", "metadata": metadata,
            "columnDefinitions": [], "rows": [],
        }),
        Representation::Object { .. }
        | Representation::Discovery { .. }
        | Representation::PartialObjectMetadataProtobuf => json!({
            "apiVersion": K::api_version(&()), "kind": K::KIND, "metadata": metadata,
        }),
    };
    to_bytes(&object)
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_timeouts_are_clamped_and_zero_is_the_default() {
        assert_eq!(watch_timeout(Some(5)), Duration::from_secs(5));
        assert_eq!(watch_timeout(Some(i64::MAX as u64)), MAX_WATCH_TIMEOUT);
        assert_eq!(watch_timeout(Some(u64::MAX)), MAX_WATCH_TIMEOUT);
        for t in [watch_timeout(Some(0)), watch_timeout(None)] {
            assert!(
                (Duration::from_secs(1800)..MAX_WATCH_TIMEOUT).contains(&t),
                "{t:?}"
            );
        }
    }
}
