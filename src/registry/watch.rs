//! Watch: the store's durable event stream, narrowed to one kind, namespace and selectors.
use super::codec;
use super::generic::{matches_list, ListOptions, Registry};
use super::kind::Kind;
use super::list::ListChunks;
use super::txn::store_error;
use crate::error::{ApiError, ApiResult};
use crate::store::{EventStream, EventType, KeyRange, Revision, SharedEncoding};
use futures::StreamExt;
use std::collections::VecDeque;

#[derive(Debug, Default, Clone)]
pub struct WatchOptions {
    /// Start after this resourceVersion; unset or "0" starts with the current objects as ADDED.
    pub resource_version: Option<String>,
    pub list: ListOptions,
    pub allow_bookmarks: bool,
    /// Send the current objects first, then a bookmark marking the end of them.
    pub send_initial_events: bool,
}

#[derive(Debug)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    /// A resourceVersion the client may resume from; `initial_events_end` marks the end of the
    /// initial events (`k8s.io/initial-events-end`).
    Bookmark {
        resource_version: String,
        initial_events_end: bool,
    },
    /// The watch cannot go on (the client fell behind the retained history): 410 Expired.
    Error(ApiError),
    /// The object is [`Watch::shared_encoding`], already made by another watcher; only for
    /// watches that asked with [`Watch::share_encoded`].
    Encoded(EventType),
}

pub struct Watch<K> {
    /// The store event behind the object `next` returned last (`None` for the initial objects).
    current: Option<std::sync::Arc<crate::store::StoreEvent>>,
    /// The slot of [`StoreEvent::encoded`](crate::store::StoreEvent) this consumer sends: an
    /// event another watcher already encoded need not be decoded again (when no selector has
    /// to look at it).
    share_encoded: Option<usize>,
    /// Skip ADDED and MODIFIED store events without decoding them (see
    /// [`Watch::deletions_only`]).
    deletions_only: bool,
    /// The objects a watch from now starts with, read a chunk at a time as they are sent.
    initial: Option<ListChunks<K>>,
    initial_chunk: VecDeque<K>,
    initial_end_bookmark: Option<Revision>,
    rx: EventStream,
    /// The revision of the last store event received (or the start revision).
    last: Revision,
    range: KeyRange,
    list: ListOptions,
    done: bool,
    /// The revision asked for is no longer held: the watch's one event says so.
    expired: Option<ApiError>,
}

impl Registry {
    pub async fn watch<K: Kind>(
        &self,
        namespace: Option<&str>,
        opts: WatchOptions,
    ) -> ApiResult<Watch<K>> {
        self.ensure_available()?;
        let range = KeyRange {
            resource: K::RESOURCE,
            namespace: namespace.map(str::to_string),
        };
        let store = self.store();
        let mut expired = None;
        let from_now = matches!(
            opts.resource_version.as_deref(),
            None | Some("") | Some("0")
        );
        let (rx, initial, start) = if from_now || opts.send_initial_events {
            let start = match opts.resource_version.as_deref() {
                Some(rv) if !from_now => parse_rv(rv)?,
                _ => store.revision(),
            };
            // Subscribe before listing so no change falls between the two.
            let rx = store.watch(start).map_err(store_error)?;
            let mut list = opts.list.clone();
            list.limit = None;
            list.continue_token = None;
            (
                rx,
                Some(self.list_chunks::<K>(namespace, &list).await?),
                start,
            )
        } else {
            let rv = parse_rv(opts.resource_version.as_deref().unwrap_or_default())?;
            match store.watch(rv) {
                Ok(rx) => (rx, None, rv),
                // As kube-apiserver: the watch is accepted and its one event is the 410. Watchers
                // list again on that event; a 410 answer has kube-rs's retry the same revision.
                Err(crate::store::StoreError::Expired { requested, oldest }) => {
                    expired = Some(ApiError::Expired(format!(
                        "too old resource version: {requested} ({oldest})"
                    )));
                    (futures::stream::empty().boxed(), None, rv)
                }
                Err(other) => return Err(store_error(other)),
            }
        };
        let initial_end_bookmark =
            (opts.send_initial_events && opts.allow_bookmarks).then_some(start);
        Ok(Watch {
            current: None,
            share_encoded: None,
            deletions_only: false,
            initial,
            initial_chunk: VecDeque::new(),
            initial_end_bookmark,
            rx,
            last: start,
            range,
            list: opts.list,
            done: false,
            expired,
        })
    }
}

fn parse_rv(rv: &str) -> ApiResult<Revision> {
    rv.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "resourceVersion {rv:?} is not valid: expected a number"
        ))
    })
}

impl<K: Kind> Watch<K> {
    /// The next event for this watcher; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<WatchEvent<K>> {
        self.current = None;
        if self.done {
            return None;
        }
        if let Some(e) = self.expired.take() {
            self.done = true;
            return Some(WatchEvent::Error(e));
        }
        while let Some(list) = &mut self.initial {
            if let Some(obj) = self.initial_chunk.pop_front() {
                return Some(WatchEvent::Added(obj));
            }
            match list.next_chunk().await {
                Ok(Some(chunk)) => self.initial_chunk = chunk.into(),
                Ok(None) => self.initial = None,
                Err(e) => {
                    self.done = true;
                    return Some(WatchEvent::Error(e));
                }
            }
        }
        if let Some(rv) = self.initial_end_bookmark.take() {
            return Some(WatchEvent::Bookmark {
                resource_version: rv.to_string(),
                initial_events_end: true,
            });
        }
        loop {
            let ev = match self.rx.next().await {
                Some(Ok(ev)) => ev,
                None => return None,
                Some(Err(_)) => {
                    self.done = true;
                    return Some(WatchEvent::Error(ApiError::Expired(
                        "the watch fell too far behind the retained event history; list again and watch from its resourceVersion".into(),
                    )));
                }
            };
            self.last = ev.object.revision;
            if !self.range.contains(&ev.object.key) {
                continue;
            }
            // (A selector can turn a MODIFIED into a DELETED; such a watch decodes them all.)
            if self.deletions_only && ev.event_type != EventType::Deleted && !self.filtered() {
                continue;
            }
            let shared = self.share_encoded.and_then(|slot| ev.encoding(slot));
            if shared.is_some() && !self.filtered() {
                let event_type = ev.event_type;
                self.current = Some(ev);
                return Some(WatchEvent::Encoded(event_type));
            }
            let obj: K = match codec::decode_stored(&ev.object.value, ev.object.revision) {
                Ok(o) => o,
                Err(e) => {
                    self.done = true;
                    return Some(WatchEvent::Error(e));
                }
            };
            let now_matches = matches_list(&obj, &self.list);
            self.current = Some(ev.clone());
            // Only a filtered watch needs the previous state: an object that moved out of the
            // selection is DELETED for this watcher, one that moved in is ADDED.
            let was_matching = match (&ev.previous, self.filtered()) {
                (Some(prev), true) => codec::decode_stored::<K>(prev, ev.object.revision)
                    .map(|old| matches_list(&old, &self.list))
                    .unwrap_or(false),
                _ => now_matches,
            };
            return Some(match ev.event_type {
                EventType::Modified => match (was_matching, now_matches) {
                    (true, true) => WatchEvent::Modified(obj),
                    (false, true) => WatchEvent::Added(obj),
                    (true, false) => WatchEvent::Deleted(obj),
                    (false, false) => continue,
                },
                _ if !now_matches => continue,
                EventType::Added => WatchEvent::Added(obj),
                EventType::Deleted => WatchEvent::Deleted(obj),
            });
        }
    }

    /// The consumer sends what it finds in slot `slot` of
    /// [`StoreEvent::encoded`](crate::store::StoreEvent) when set: `next` may then answer
    /// [`WatchEvent::Encoded`] instead of decoding.
    pub fn share_encoded(&mut self, slot: usize) {
        self.share_encoded = Some(slot);
    }

    /// This watcher's shared encoding (see [`Watch::share_encoded`]) of the object `next`
    /// returned last, to fill or to send; `None` for the initial objects, non-object events and
    /// watchers that share none.
    pub fn shared_encoding(&self) -> Option<SharedEncoding<'_>> {
        self.current
            .as_deref()?
            .shared_encoding(self.share_encoded?)
    }

    /// Only DELETED events are wanted: the others are skipped before their object is decoded
    /// (a consumer that acts on deletions, like the Released-event writer, would otherwise
    /// decode every create).
    pub fn deletions_only(&mut self) {
        self.deletions_only = true;
    }

    fn filtered(&self) -> bool {
        self.list.label_selector.is_some() || !self.list.field_selector.is_empty()
    }

    /// The newest revision this watcher has seen all events up to: a safe bookmark.
    pub fn bookmark_revision(&self) -> Revision {
        self.last
    }
}
