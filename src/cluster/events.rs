//! Kubernetes Events on claims (Allocated, Rebound, Released, Exhausted), so
//! `kubectl describe ippc` shows a claim's history.
//!
//! Recording never slows a request: [`EventRecorder::record`] puts the event on a bounded
//! channel and returns; one background task writes them to kube-apiserver. Like client-go's
//! event broadcaster, the writer is rate-limited ([`WRITES_PER_SECOND`], bursts of
//! [`WRITE_BURST`]) and drops events when the queue is full (the cluster is slow or down, or
//! claims arrive faster than events may be written), logging the drop: Events are best-effort
//! history, and one per claim written at the claim rate would cost kube-apiserver and etcd as
//! much as the claims themselves.
use crate::api::{IPPrefixClaim, API_VERSION};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::Resource;
use tokio::sync::mpsc;

/// Events waiting to be written; more are dropped.
pub const QUEUE_LENGTH: usize = 1024;
/// Sustained event writes per second (kube-controller-manager's default `--kube-api-qps` is 20).
pub const WRITES_PER_SECOND: f64 = 20.0;
/// Events written at once before the rate applies: a batch of claims created together all get
/// their `Allocated` event promptly.
pub const WRITE_BURST: f64 = 100.0;
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
    /// When a dropped event was last logged: under sustained load every claim would otherwise
    /// log a line, and the log would cost more than the events saved.
    last_drop_logged: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// At most one "events dropped" log line per this interval; `/metrics` counts every drop.
const DROP_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl EventRecorder {
    /// Start the writer task.
    pub fn start(client: kube::Client) -> Self {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE_LENGTH);
        tokio::spawn(async move {
            let mut bucket = TokenBucket::new(WRITES_PER_SECOND, WRITE_BURST);
            while let Some(event) = rx.recv().await {
                if let Some(wait) = bucket.take(std::time::Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                let ns = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!(namespace = %ns, reason = ?event.reason, "event not written: {e}");
                }
            }
        });
        EventRecorder {
            tx,
            last_drop_logged: Default::default(),
        }
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
            self.note_dropped();
        }
    }

    fn note_dropped(&self) {
        let dropped = &crate::metrics::global().events_dropped;
        let total = dropped.inc() + 1;
        let now = std::time::Instant::now();
        let mut last = self
            .last_drop_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= DROP_LOG_INTERVAL) {
            *last = Some(now);
            tracing::warn!(
                dropped_total = total,
                "event queue full ({QUEUE_LENGTH} waiting, written at {WRITES_PER_SECOND}/s); claim events dropped (ipam_events_dropped_total counts them)"
            );
        }
    }
}

/// A token bucket: `take` answers how long to wait before the next write may go.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl TokenBucket {
    fn new(per_second: f64, burst: f64) -> Self {
        TokenBucket {
            per_second,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Take one token at `now`; `Some(wait)` when the bucket is empty and the caller must wait
    /// that long (the token is already spoken for).
    fn take(&mut self, now: std::time::Instant) -> Option<std::time::Duration> {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        self.tokens -= 1.0;
        (self.tokens < 0.0)
            .then(|| std::time::Duration::from_secs_f64(-self.tokens / self.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;
    use std::time::{Duration, Instant};

    #[test]
    fn a_burst_goes_at_once_then_the_rate_applies() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(20.0, 100.0);
        for i in 0..100 {
            assert_eq!(bucket.take(t0), None, "write {i} of the burst waited");
        }
        // The 101st waits one token's time (50 ms), the 102nd two.
        assert_eq!(bucket.take(t0), Some(Duration::from_millis(50)));
        assert_eq!(bucket.take(t0), Some(Duration::from_millis(100)));
        // A quiet second refills 20 tokens; the debt of 2 is paid first.
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..18 {
            assert_eq!(bucket.take(t1), None, "write {i} after a second waited");
        }
        assert!(bucket.take(t1).is_some());
        // A long quiet spell refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..100 {
            assert_eq!(bucket.take(t2), None);
        }
        assert!(bucket.take(t2).is_some());
    }
}
