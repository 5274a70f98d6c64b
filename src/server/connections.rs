//! The open connections: how many there may be, which of them are idle, and when an idle one
//! is closed.
//!
//! A connection is *busy* from the moment a request's headers are read until its response body
//! is finished or dropped (a watch is busy for as long as it streams), and *idle* otherwise:
//! during the TLS handshake, before its first request, and between requests. An idle
//! connection is closed after the idle timeout, and, when a new connection arrives at the limit,
//! the connection idle the longest is closed to admit it. An idle connection costs its client
//! nothing to lose (nothing is in flight; clients reconnect), while refusing the newcomer would
//! lock legitimate clients out for as long as a flood of silent connections lasts. Only when
//! every connection is busy is the newcomer refused: accepted and closed at once, so its client
//! fails fast instead of waiting in the kernel's backlog.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Connections evicted but not yet closed (an HTTP/2 GOAWAY in flight) that may exceed the
/// limit; beyond them a newcomer is refused. Part of [`FD_HEADROOM`].
const CLOSING_MAX: usize = 64;
/// File descriptors kept out of the connection limit: stdio, the listener, the runtime's epoll
/// and wake-up fds, the store's files and its fsync, certificate reloads, outgoing connections
/// (kube-apiserver, etcd), and [`CLOSING_MAX`] connections closing.
pub const FD_HEADROOM: u64 = 256;
/// How often refusals are logged at most (each line says how many there were).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The bounds on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, beyond those closing (see the module doc).
    pub max_connections: usize,
    /// How long a connection may stay idle; `None`: forever.
    pub idle_timeout: Option<Duration>,
}

impl ConnectionLimits {
    /// kube-apiserver's idle timeout (Go's `http.Server.IdleTimeout`, which it sets to 90 s).
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

    /// The connection limit that keeps [`FD_HEADROOM`] of `fd_limit` file descriptors (and a
    /// quarter of the rest, for outgoing connections made on behalf of requests) for the rest of
    /// the process; at least 16.
    pub fn max_for_fd_limit(fd_limit: u64) -> usize {
        let usable = fd_limit.saturating_sub(FD_HEADROOM);
        let max = usable - usable / 4;
        usize::try_from(max).unwrap_or(usize::MAX).max(16)
    }
}

/// The default idle timeout and 1,000 connections (the binary derives its limit from the
/// open-file limit).
impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 1_000,
            idle_timeout: Some(Self::DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// Raise the soft limit on open files to the hard one, as Go's runtime does at start (so
/// kube-apiserver runs with the hard limit too), and return the limit now in force; `None`
/// when there is none.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// What the connection task is told about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activity {
    Busy,
    IdleSince(Instant),
    /// Closed to admit a newer connection at the limit.
    Evicted,
}

/// Why an idle connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    IdleTimeout,
    Evicted,
}

impl Close {
    fn reason(self) -> &'static str {
        match self {
            Close::IdleTimeout => "idle_timeout",
            Close::Evicted => "evicted",
        }
    }
}

/// Every open connection; shared by the accept loop and the connection tasks.
pub(super) struct Connections {
    max: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// Orders idle connections by when they became idle.
    next_seq: u64,
    open: HashMap<u64, Entry>,
    /// Idle connections, longest idle first: sequence → id.
    idle: BTreeMap<u64, u64>,
    /// Evicted connections still open.
    closing: usize,
    refused_unlogged: u64,
    refusal_logged: Option<Instant>,
}

struct Entry {
    in_flight: usize,
    /// The key in [`Table::idle`] while idle.
    idle_seq: Option<u64>,
    evicted: bool,
    activity: watch::Sender<Activity>,
}

impl Connections {
    pub(super) fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            table: Mutex::new(Table::default()),
        })
    }

    /// A slot for a newly accepted connection, evicting the longest idle one at the limit;
    /// `None`: refused (at the limit, and none idle).
    pub(super) fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut table = self.lock();
        if table.open.len() - table.closing >= self.max {
            let victim = if table.closing < CLOSING_MAX {
                table.idle.pop_first()
            } else {
                None
            };
            match victim.and_then(|(_, id)| table.open.get_mut(&id)) {
                Some(entry) => {
                    entry.idle_seq = None;
                    entry.evicted = true;
                    entry.activity.send_replace(Activity::Evicted);
                    table.closing += 1;
                }
                None => {
                    crate::metrics::global().refused_connections.inc();
                    table.refused(self.max);
                    return None;
                }
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let seq = table.next_seq;
        table.next_seq += 1;
        table.idle.insert(seq, id);
        let (activity, watcher) = watch::channel(Activity::IdleSince(Instant::now()));
        table.open.insert(
            id,
            Entry {
                in_flight: 0,
                idle_seq: Some(seq),
                evicted: false,
                activity,
            },
        );
        crate::metrics::global()
            .open_connections
            .set(table.open.len() as i64);
        Some(Slot {
            tracker: Tracker {
                id,
                connections: self.clone(),
            },
            activity: watcher,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Counters and maps changed in single statements: consistent across a panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Table {
    fn refused(&mut self, max: usize) {
        self.refused_unlogged += 1;
        let now = Instant::now();
        if self
            .refusal_logged
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            refused = self.refused_unlogged,
            open = self.open.len(),
            max_connections = max,
            "connection limit reached and every connection busy: refusing new connections"
        );
        self.refused_unlogged = 0;
        self.refusal_logged = Some(now);
    }

    fn set_idle(&mut self, id: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(entry) = self.open.get_mut(&id) {
            if entry.in_flight == 0 && !entry.evicted {
                entry.idle_seq = Some(seq);
                self.idle.insert(seq, id);
                entry
                    .activity
                    .send_replace(Activity::IdleSince(Instant::now()));
            }
        }
    }
}

/// A connection's place among the open ones; dropping it (when the connection task ends)
/// frees the place.
pub(super) struct Slot {
    tracker: Tracker,
    activity: watch::Receiver<Activity>,
}

impl Slot {
    /// Marks requests in flight on this connection.
    pub(super) fn tracker(&self) -> Tracker {
        self.tracker.clone()
    }

    /// Completes when the connection should be closed for having nothing in flight: idle for
    /// `idle_timeout`, or evicted. Never completes while a request is in flight.
    pub(super) async fn idle_close(&mut self, idle_timeout: Option<Duration>) -> Close {
        loop {
            let activity = *self.activity.borrow_and_update();
            let deadline = match (activity, idle_timeout) {
                (Activity::Evicted, _) => return Close::Evicted,
                (Activity::IdleSince(since), Some(timeout)) => Some(since + timeout),
                _ => None,
            };
            let changed = async {
                if self.activity.changed().await.is_err() {
                    // The sender lives in the table as long as this slot: not reached.
                    std::future::pending::<()>().await;
                }
            };
            match deadline {
                Some(deadline) => tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return Close::IdleTimeout,
                    () = changed => {}
                },
                None => changed.await,
            }
        }
    }

    /// Whether a request is in flight.
    pub(super) fn busy(&self) -> bool {
        let table = self.tracker.connections.lock();
        table
            .open
            .get(&self.tracker.id)
            .is_some_and(|entry| entry.in_flight > 0)
    }

    /// Count a close the server decided.
    pub(super) fn closing(&self, why: Close) {
        crate::metrics::global()
            .closed_connections
            .get_or_create(&crate::metrics::ClosedLabels {
                reason: why.reason(),
            })
            .inc();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let connections = &self.tracker.connections;
        let mut table = connections.lock();
        if let Some(entry) = table.open.remove(&self.tracker.id) {
            if let Some(seq) = entry.idle_seq {
                table.idle.remove(&seq);
            }
            if entry.evicted {
                table.closing -= 1;
            }
        }
        crate::metrics::global()
            .open_connections
            .set(table.open.len() as i64);
    }
}

/// Cheap handle to mark a request in flight on one connection.
#[derive(Clone)]
pub(super) struct Tracker {
    id: u64,
    connections: Arc<Connections>,
}

impl Tracker {
    /// The connection is busy until the returned guard is dropped (with the response body).
    pub(super) fn request_started(&self) -> InFlight {
        let mut table = self.connections.lock();
        let mut idle_seq = None;
        if let Some(entry) = table.open.get_mut(&self.id) {
            entry.in_flight += 1;
            idle_seq = entry.idle_seq.take();
            if idle_seq.is_some() {
                entry.activity.send_replace(Activity::Busy);
            }
        }
        if let Some(seq) = idle_seq {
            table.idle.remove(&seq);
        }
        InFlight(self.clone())
    }
}

/// One request in flight; see [`Tracker::request_started`].
pub(super) struct InFlight(Tracker);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut table = self.0.connections.lock();
        let id = self.0.id;
        let now_idle = table.open.get_mut(&id).is_some_and(|entry| {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.in_flight == 0
        });
        if now_idle {
            table.set_idle(id);
        }
    }
}
