//! The retained event history, which watchers read from directly.
//!
//! Memory is bounded by the history alone: a watcher holds a position in it (and the few events
//! it is sending), never a copy of its own, so a slow watcher costs no more than a fast one.
//! One that falls out of the history gets 410 Expired and lists again, as informers do.
//! Several events may share a revision (an etcd transaction has one): the history keeps or
//! drops a revision's events together, and a watcher takes them together.
use super::{EventStream, Revision, StoreError, Versioned};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio::sync::watch;

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

/// How much history is retained: the newest events within both bounds (at least the newest
/// one). A watch from before them gets 410 Expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub events: usize,
    /// Stored bytes of the retained events (value, previous value, key) and their shared
    /// encodings (see [`StoreEvent::shared_encoding`]).
    pub bytes: usize,
}

impl HistoryLimits {
    pub const DEFAULT_EVENTS: usize = 100_000;
    pub const DEFAULT_BYTES: usize = 256 << 20;
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            events: Self::DEFAULT_EVENTS,
            bytes: Self::DEFAULT_BYTES,
        }
    }
}

/// `events` events, within the default byte bound.
impl From<usize> for HistoryLimits {
    fn from(events: usize) -> Self {
        HistoryLimits {
            events,
            ..Default::default()
        }
    }
}

/// One change. For `Deleted`, `object.value` is the last stored state and `object.revision` the
/// revision of the delete, as Kubernetes reports it.
#[derive(Debug)]
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
    encoded: [OnceLock<Bytes>; SHARED_ENCODINGS],
    /// The bytes of `encoded` counted in the history's total; changed under its lock.
    counted: AtomicUsize,
    /// The history that retains this event, set when it is published.
    history: Weak<Shared>,
}

impl StoreEvent {
    pub fn new(event_type: EventType, object: Versioned, previous: Option<Bytes>) -> Self {
        StoreEvent {
            event_type,
            object,
            previous,
            encoded: Default::default(),
            counted: AtomicUsize::new(0),
            history: Weak::new(),
        }
    }

    /// Shared encoding `slot`, if it was made already.
    pub fn encoding(&self, slot: usize) -> Option<&Bytes> {
        self.encoded.get(slot)?.get()
    }

    /// What this event costs the history before any encoding: its values, its key and the
    /// event itself.
    fn base_bytes(&self) -> usize {
        std::mem::size_of::<StoreEvent>()
            + self.object.value.len()
            + self.previous.as_ref().map_or(0, Bytes::len)
            + self.object.key.namespace.len()
            + self.object.key.name.len()
    }

    fn bytes(&self) -> usize {
        self.base_bytes() + self.counted.load(Ordering::Relaxed)
    }

    /// Shared encoding `slot` of this event, to fill or to send.
    pub fn shared_encoding(&self, slot: usize) -> Option<SharedEncoding<'_>> {
        Some(SharedEncoding {
            event: self,
            cell: self.encoded.get(slot)?,
        })
    }
}

/// A shared encoding slot of one event (see [`StoreEvent`]); filling it counts its bytes in
/// the history that retains the event.
pub struct SharedEncoding<'a> {
    event: &'a StoreEvent,
    cell: &'a OnceLock<Bytes>,
}

impl<'a> SharedEncoding<'a> {
    pub fn get(&self) -> Option<&'a Bytes> {
        self.cell.get()
    }

    /// The encoding, made by `encode` if no watcher made it yet.
    pub fn get_or_init(&self, encode: impl FnOnce() -> Bytes) -> &'a Bytes {
        let mut made = false;
        let bytes = self.cell.get_or_init(|| {
            made = true;
            encode()
        });
        if made {
            if let Some(history) = self.event.history.upgrade() {
                history.count_encoding(self.event, bytes.len());
            }
        }
        bytes
    }
}

/// The last durable events within the limits. Publishing appends under the lock and then wakes
/// the watchers, who read what follows their position: each sees every event exactly once, in
/// revision order.
pub(super) struct History {
    shared: Arc<Shared>,
    /// The newest revision published; dropped with the store, which ends every watch.
    published: watch::Sender<Revision>,
}

struct Shared {
    inner: Mutex<HistoryInner>,
    limits: HistoryLimits,
}

struct HistoryInner {
    /// In revision order.
    events: VecDeque<Arc<StoreEvent>>,
    /// Watches may start after this revision; everything newer is retained.
    oldest: Revision,
    /// What `events` costs, by [`StoreEvent::bytes`].
    bytes: usize,
    /// Bumped by [`History::restart`]: a watcher subscribed before it missed events.
    generation: u64,
}

impl History {
    pub(super) fn new(limits: HistoryLimits, start: Revision) -> Self {
        let (published, _) = watch::channel(start);
        History {
            shared: Arc::new(Shared {
                inner: Mutex::new(HistoryInner {
                    events: VecDeque::new(),
                    oldest: start,
                    bytes: 0,
                    generation: 0,
                }),
                limits: HistoryLimits {
                    events: limits.events.max(1),
                    bytes: limits.bytes,
                },
            }),
            published,
        }
    }

    pub(super) fn publish(&self, events: Vec<StoreEvent>) {
        let Some(newest) = events.last().map(|e| e.object.revision) else {
            return;
        };
        {
            let mut inner = lock(&self.shared.inner);
            for mut ev in events {
                ev.history = Arc::downgrade(&self.shared);
                inner.bytes += ev.base_bytes();
                inner.events.push_back(Arc::new(ev));
            }
            inner.evict(&self.shared.limits);
        }
        self.published.send_replace(newest);
    }

    /// Events up to `oldest` are lost (etcd compacted them before they were seen): forget the
    /// history, and end every current watcher with `Expired`.
    pub(super) fn restart(&self, oldest: Revision) {
        {
            let mut inner = lock(&self.shared.inner);
            inner.events.clear();
            inner.bytes = 0;
            inner.oldest = inner.oldest.max(oldest);
            inner.generation += 1;
        }
        // Wakes the waiting watchers to find out.
        self.published.send_modify(|_| {});
    }

    pub(super) fn oldest(&self) -> Revision {
        lock(&self.shared.inner).oldest
    }

    pub(super) fn subscribe(&self, after: Revision) -> Result<WatchReceiver, StoreError> {
        let (oldest, generation) = {
            let inner = lock(&self.shared.inner);
            (inner.oldest, inner.generation)
        };
        if after < oldest {
            return Err(StoreError::Expired {
                requested: after,
                oldest,
            });
        }
        Ok(WatchReceiver {
            shared: self.shared.clone(),
            published: self.published.subscribe(),
            batch: VecDeque::new(),
            generation,
            last: after,
        })
    }
}

impl HistoryInner {
    /// Drop the oldest revisions until the rest fit the limits. A revision's events go
    /// together (a watch resumes between revisions), and the newest revision stays.
    fn evict(&mut self, limits: &HistoryLimits) {
        while self.events.len() > limits.events || self.bytes > limits.bytes {
            let (Some(front), Some(back)) = (self.events.front(), self.events.back()) else {
                break;
            };
            let revision = front.object.revision;
            if back.object.revision == revision {
                break;
            }
            while self
                .events
                .front()
                .is_some_and(|e| e.object.revision == revision)
            {
                if let Some(old) = self.events.pop_front() {
                    self.bytes -= old.bytes();
                }
            }
            self.oldest = revision;
        }
    }
}

impl Shared {
    fn count_encoding(&self, event: &StoreEvent, len: usize) {
        let mut inner = lock(&self.inner);
        // An event already dropped from the history is freed by its last watcher.
        if event.object.revision > inner.oldest {
            event.counted.fetch_add(len, Ordering::Relaxed);
            inner.bytes += len;
            inner.evict(&self.limits);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the deque half-updated in a way that matters.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// About this many events are taken from the history per lock (more only to end on a whole
/// revision): few enough that a watcher pins little that the history dropped.
const BATCH: usize = 32;

/// A watcher's stream of events in revision order.
pub(super) struct WatchReceiver {
    shared: Arc<Shared>,
    published: watch::Receiver<Revision>,
    /// Taken from the history, not yet handed out.
    batch: VecDeque<Arc<StoreEvent>>,
    /// The history's generation when this watcher subscribed.
    generation: u64,
    last: Revision,
}

impl WatchReceiver {
    /// The next event; `Err(Expired)` when the history dropped events this watcher had not
    /// received yet, `Ok(None)` when the store shut down.
    pub async fn recv(&mut self) -> Result<Option<Arc<StoreEvent>>, StoreError> {
        loop {
            if let Some(ev) = self.batch.pop_front() {
                self.last = ev.object.revision;
                return Ok(Some(ev));
            }
            // Marked seen before reading, so a publish after the read wakes `changed`.
            self.published.borrow_and_update();
            {
                let inner = lock(&self.shared.inner);
                if self.last < inner.oldest || inner.generation != self.generation {
                    return Err(StoreError::Expired {
                        requested: self.last,
                        oldest: inner.oldest,
                    });
                }
                let next = inner
                    .events
                    .partition_point(|e| e.object.revision <= self.last);
                // Whole revisions: the next read starts after the last one taken.
                for ev in inner.events.range(next..) {
                    if self.batch.len() >= BATCH
                        && self.batch.back().map(|b| b.object.revision) != Some(ev.object.revision)
                    {
                        break;
                    }
                    self.batch.push_back(ev.clone());
                }
            }
            if self.batch.is_empty() && self.published.changed().await.is_err() {
                return Ok(None);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectKey;

    fn event(revision: Revision, len: usize) -> StoreEvent {
        let object = Versioned {
            key: ObjectKey::new("ipprefixclaims", "ns", format!("c{revision}")),
            revision,
            value: Bytes::from(vec![b'x'; len]),
        };
        StoreEvent::new(EventType::Added, object, None)
    }

    fn history(events: usize, bytes: usize) -> History {
        History::new(HistoryLimits { events, bytes }, 0)
    }

    #[test]
    fn large_events_are_dropped_by_bytes_before_the_event_bound() {
        let h = history(1000, 100_000);
        h.publish((1..=10).map(|r| event(r, 30_000)).collect());
        // Three 30 kB events fit in 100 kB; the rest went, oldest first.
        assert_eq!(h.oldest(), 7);
        assert!(matches!(
            h.subscribe(6),
            Err(StoreError::Expired { oldest: 7, .. })
        ));
        assert!(h.subscribe(7).is_ok());
    }

    #[test]
    fn the_newest_event_is_kept_even_when_larger_than_the_bound() {
        let h = history(1000, 10);
        h.publish(vec![event(1, 100), event(2, 100)]);
        assert_eq!(h.oldest(), 1);
    }

    #[tokio::test]
    async fn shared_encodings_count_towards_the_bound() {
        let h = history(1000, 100_000);
        h.publish((1..=3).map(|r| event(r, 20_000)).collect());
        let mut rx = h.subscribe(0).unwrap();
        let first = rx.recv().await.unwrap().unwrap();
        let slot = first.shared_encoding(0).unwrap();
        slot.get_or_init(|| Bytes::from(vec![b'{'; 50_000]));
        // 3 × 20 kB + 50 kB no longer fit: the first event (and its encoding) went.
        assert_eq!(h.oldest(), 1);
        assert_eq!(
            first.shared_encoding(0).unwrap().get().unwrap().len(),
            50_000
        );
    }

    #[tokio::test]
    async fn a_watcher_the_history_left_behind_is_expired_and_holds_nothing() {
        let h = history(1000, 100_000);
        let mut slow = h.subscribe(0).unwrap();
        let mut fast = h.subscribe(0).unwrap();
        for r in 1..=10 {
            h.publish(vec![event(r, 30_000)]);
            assert_eq!(fast.recv().await.unwrap().unwrap().object.revision, r);
        }
        assert!(slow.batch.is_empty());
        assert!(matches!(
            slow.recv().await,
            Err(StoreError::Expired { requested: 0, .. })
        ));
    }

    fn event_at(revision: Revision, name: &str, len: usize) -> StoreEvent {
        let object = Versioned {
            key: ObjectKey::new("ipprefixclaims", "ns", name),
            revision,
            value: Bytes::from(vec![b'x'; len]),
        };
        StoreEvent::new(EventType::Added, object, None)
    }

    #[tokio::test]
    async fn events_of_one_revision_are_kept_dropped_and_read_together() {
        let h = history(1000, 100_000);
        // Revision 1 has BATCH + 3 events (one transaction), then revision 2 has one.
        let mut rx = h.subscribe(0).unwrap();
        h.publish(
            (0..BATCH + 3)
                .map(|i| event_at(1, &format!("a{i}"), 10))
                .chain([event_at(2, "b", 10)])
                .collect(),
        );
        let mut seen = Vec::new();
        for _ in 0..BATCH + 4 {
            seen.push(rx.recv().await.unwrap().unwrap().object.revision);
        }
        assert_eq!(seen.iter().filter(|r| **r == 1).count(), BATCH + 3);
        assert_eq!(seen.last(), Some(&2));
        // A large revision 3 pushes out revision 1 whole, not part of it.
        h.publish(vec![event_at(3, "c", 60_000), event_at(3, "d", 30_000)]);
        assert_eq!(h.oldest(), 1);
        assert_eq!(lock(&h.shared.inner).events.len(), 3);
        assert!(h.subscribe(0).is_err());
        let mut from_1 = h.subscribe(1).unwrap();
        for name in ["b", "c", "d"] {
            assert_eq!(from_1.recv().await.unwrap().unwrap().object.key.name, name);
        }
    }

    #[tokio::test]
    async fn a_restart_ends_every_current_watcher_with_expired() {
        let h = history(100, 1 << 20);
        h.publish(vec![event(1, 10)]);
        let mut waiting = h.subscribe(1).unwrap();
        let mut behind = h.subscribe(0).unwrap();
        let waiter = tokio::spawn(async move { waiting.recv().await });
        tokio::task::yield_now().await;
        h.restart(9);
        assert!(matches!(
            waiter.await.unwrap(),
            Err(StoreError::Expired { .. })
        ));
        assert!(matches!(
            behind.recv().await,
            Err(StoreError::Expired { .. })
        ));
        assert!(h.subscribe(8).is_err());
        let mut after = h.subscribe(9).unwrap();
        h.publish(vec![event(10, 10)]);
        assert_eq!(after.recv().await.unwrap().unwrap().object.revision, 10);
    }

    #[tokio::test]
    async fn watchers_wait_for_new_events_and_end_with_the_store() {
        let h = history(100, 1 << 20);
        let mut rx = h.subscribe(0).unwrap();
        let waiting = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(ev) = rx.recv().await.unwrap() {
                seen.push(ev.object.revision);
            }
            seen
        });
        for r in 1..=25 {
            h.publish(vec![event(r, 10)]);
            tokio::task::yield_now().await;
        }
        drop(h);
        let seen = waiting.await.unwrap();
        assert_eq!(seen.first(), Some(&1));
        assert_eq!(seen.last(), Some(&25));
        assert!(seen.windows(2).all(|w| w[0] + 1 == w[1]), "{seen:?}");
    }
}
