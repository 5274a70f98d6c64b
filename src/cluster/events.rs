//! Kubernetes Events on claims (Allocated, Rebound, Released, Exhausted), so
//! `kubectl describe ippc` shows a claim's history.
//!
//! Recording never slows a request: [`EventRecorder::record`] puts the event on a bounded
//! channel and returns; one background task writes them to kube-apiserver. When the channel is
//! full (the cluster is slow or down) the event is dropped and counted in the log.
use crate::api::{IPPrefixClaim, API_VERSION};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::Resource;
use tokio::sync::mpsc;

/// Events waiting to be written; more are dropped.
pub const QUEUE_LENGTH: usize = 1024;
/// The `source.component` / `reportingComponent` of our events.
pub const COMPONENT: &str = "ipam-apiserver";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// A handle to the background writer; cheap to clone.
#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<Event>,
}

impl EventRecorder {
    /// Start the writer task.
    pub fn start(client: kube::Client) -> Self {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE_LENGTH);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let ns = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!(namespace = %ns, reason = ?event.reason, "event not written: {e}");
                }
            }
        });
        EventRecorder { tx }
    }

    /// Queue an event about `claim`; never waits.
    pub fn record(&self, claim: &IPPrefixClaim, kind: EventType, reason: &str, message: String) {
        let meta = claim.meta();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(API_VERSION.into()),
                kind: Some("IPPrefixClaim".into()),
                namespace: Some(namespace),
                name: Some(name),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: None,
            }),
            // The legacy core/v1 shape (no eventTime), which every kubectl describes.
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        };
        if self.tx.try_send(event).is_err() {
            tracing::warn!(reason, "event queue full; event dropped");
        }
    }
}
