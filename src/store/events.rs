//! The retained event history and the live fan-out to watchers.
use super::{EventStream, Revision, StoreError, Versioned};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// How many representations of an event's object can be shared between watchers.
pub const SHARED_ENCODINGS: usize = 3;

/// One change. For `Deleted`, `object.value` is the last stored state and `object.revision` the
/// revision of the delete, as Kubernetes reports it.
#[derive(Clone, Debug)]
pub struct StoreEvent {
    pub event_type: EventType,
    pub object: Versioned,
    /// For `Modified`: the value before, so a watch with a selector can tell an object that
    /// stopped (or started) matching, as Kubernetes reports with DELETED (ADDED).
    pub previous: Option<Bytes>,
    /// The object as the API serves it, one slot per representation (the full object in JSON,
    /// its PartialObjectMetadata, ...; the slots are the HTTP layer's to assign), encoded by
    /// the first watcher that sends it and shared by every other (kube-apiserver's watch cache
    /// keeps the same per-event serialization): with N watchers an event is encoded once, not N
    /// times. Opaque here.
    pub encoded: [std::sync::OnceLock<Bytes>; SHARED_ENCODINGS],
}

impl StoreEvent {
    pub fn new(event_type: EventType, object: Versioned, previous: Option<Bytes>) -> Self {
        StoreEvent {
            event_type,
            object,
            previous,
            encoded: Default::default(),
        }
    }
}

/// The last `capacity` durable events, and a broadcast of new ones. Publishing and subscribing
/// happen under one lock so a new watcher sees every event exactly once: the retained ones from
/// the snapshot, then the live ones.
pub(super) struct History {
    inner: Mutex<HistoryInner>,
    /// Bumped by [`History::restart`]: a watcher subscribed before it missed events.
    generation: Arc<std::sync::atomic::AtomicU64>,
    live: broadcast::Sender<Arc<StoreEvent>>,
    capacity: usize,
}

struct HistoryInner {
    events: VecDeque<Arc<StoreEvent>>,
    /// Watches may start after this revision; everything newer is retained.
    oldest: Revision,
}

impl History {
    pub(super) fn new(capacity: usize, start: Revision) -> Self {
        // A lagging watcher is closed with 410 Expired; the client relists, as informers do.
        let (live, _) = broadcast::channel(capacity.max(1024));
        History {
            inner: Mutex::new(HistoryInner {
                events: VecDeque::new(),
                oldest: start,
            }),
            live,
            generation: Default::default(),
            capacity: capacity.max(1),
        }
    }

    /// Events up to `oldest` are lost (etcd compacted them before they were seen): forget the
    /// history, and end every current watcher with `Expired` at its next event.
    pub(super) fn restart(&self, oldest: Revision) {
        let mut inner = lock(&self.inner);
        inner.events.clear();
        inner.oldest = inner.oldest.max(oldest);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub(super) fn publish(&self, events: Vec<StoreEvent>) {
        let mut inner = lock(&self.inner);
        for ev in events {
            let ev = Arc::new(ev);
            if inner.events.len() == self.capacity {
                if let Some(old) = inner.events.pop_front() {
                    inner.oldest = old.object.revision;
                }
            }
            inner.events.push_back(ev.clone());
            // No receivers is fine: nobody is watching.
            let _ = self.live.send(ev);
        }
    }

    pub(super) fn oldest(&self) -> Revision {
        lock(&self.inner).oldest
    }

    pub(super) fn subscribe(&self, after: Revision) -> Result<WatchReceiver, StoreError> {
        let inner = lock(&self.inner);
        if after < inner.oldest {
            return Err(StoreError::Expired {
                requested: after,
                oldest: inner.oldest,
            });
        }
        let backlog: VecDeque<Arc<StoreEvent>> = inner
            .events
            .iter()
            .filter(|e| e.object.revision > after)
            .cloned()
            .collect();
        let live = self.live.subscribe();
        let floor = backlog.back().map_or(after, |e| e.object.revision);
        let generation = self.generation.clone();
        let subscribed = generation.load(std::sync::atomic::Ordering::Acquire);
        Ok(WatchReceiver {
            backlog,
            live,
            generation,
            subscribed,
            floor,
            last: after,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the deque half-updated in a way that matters.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A watcher's stream of events in revision order.
pub(super) struct WatchReceiver {
    backlog: VecDeque<Arc<StoreEvent>>,
    live: broadcast::Receiver<Arc<StoreEvent>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// The history's generation when this watcher subscribed.
    subscribed: u64,
    /// Live events up to this revision were in the backlog, or before the start. (Not `last`:
    /// the events of one commit may share a revision.)
    floor: Revision,
    last: Revision,
}

impl WatchReceiver {
    /// The next event; `Err(Expired)` when this watcher fell too far behind, `Ok(None)` when the
    /// store shut down.
    pub async fn recv(&mut self) -> Result<Option<Arc<StoreEvent>>, StoreError> {
        if let Some(ev) = self.backlog.pop_front() {
            self.last = ev.object.revision;
            return Ok(Some(ev));
        }
        loop {
            match self.live.recv().await {
                Ok(ev) if ev.object.revision <= self.floor => continue,
                Ok(_)
                    if self.generation.load(std::sync::atomic::Ordering::Acquire)
                        != self.subscribed =>
                {
                    return Err(StoreError::Expired {
                        requested: self.last,
                        oldest: self.last + 1,
                    })
                }
                Ok(ev) => {
                    self.last = ev.object.revision;
                    return Ok(Some(ev));
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Err(StoreError::Expired {
                        requested: self.last,
                        oldest: self.last + 1,
                    })
                }
            }
        }
    }

    /// As a [`Stream`](futures::Stream): the events, then `Err(Expired)` once if it fell
    /// behind; it ends when the store shuts down.
    pub(super) fn into_stream(self) -> EventStream {
        Box::pin(futures::stream::unfold(Some(self), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(Some(ev)) => Some((Ok(ev), Some(rx))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }))
    }
}
