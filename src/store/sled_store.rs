//! The embedded store: sled in the data directory, group commit, retained event history.
//!
//! Layout, all in sled's default tree:
//! - `o/<resource>/<namespace>/<name>` → 8-byte big-endian revision ++ JSON
//! - `m/commit` → the newest group of commits written into sled together: their last revision
//!   and every key they wrote, in order (a roll-forward record)
//! - `m/format` → marks the directory as ours, so a foreign one is refused at start
//!
//! Atomicity without sled batches: sled recovers a prefix of its log after a crash (its segment
//! recovery discards anything written after a torn segment), and one thread writes at a time.
//! The store thread writes the commits it takes from its queue in groups (of at most
//! [`GROUP_MAX_COMMITS`]): first `m/commit`, then their keys one by one; so after a crash every
//! key of the groups before the last one is present, and the last one is finished at open by
//! applying its record again (commits of that group that were never acknowledged are then kept
//! whole, as a crash after their fsync would have). A `sled::Batch` per commit gives the same
//! guarantee at about three times the CPU (it reserves and seals a manifest in the log and
//! switches every sled read in the process to a shared lock), and the store's CPU is most of a
//! create's.
//!
//! Write-behind: a commit is checked, given its revisions and made visible to reads in memory
//! (`unapplied`, consulted before sled), then handed to the store thread, which puts it into
//! sled and fsyncs it with the commits around it (group commit); it is acknowledged (`durable`)
//! after that fsync (sled's flush, then [`SledFiles::sync`]: sled's flush alone is not
//! durable). The caller (the registry, under its writer lock) thus pays for the checks only,
//! not for sled's inserts, and sled has one writer thread, which the prefix argument above
//! needs anyway. One thread both writes and flushes: commits that arrive during an fsync wait
//! in the queue and are written right after it, inside the next group's window, so under load
//! a commit wakes nobody and no commit waits for a hand-over between threads.
use super::events::{History, HistoryLimits};
use super::*;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

const FORMAT: &[u8] = b"ipam-apiserver/2";
/// The first format: the same objects, with the revision in `m/revision` and each commit one
/// sled batch. Upgraded in place at open.
const FORMAT_1: &[u8] = b"ipam-apiserver/1";
pub(super) const KEY_FORMAT: &[u8] = b"m/format";
pub(super) const KEY_COMMIT: &[u8] = b"m/commit";
const KEY_REVISION_1: &[u8] = b"m/revision";
const OBJECT_PREFIX: &[u8] = b"o/";
/// sled's page cache. Its default (1 GiB) alone would break the memory budget with 10^6 claims
/// resident; the hot pages (parents, recent writes) fit easily in this.
const CACHE_CAPACITY: u64 = 256 * 1024 * 1024;
/// How often sled's own background thread runs (default 500 ms). Besides a flush, each run
/// spends up to half the interval moving live data out of mostly-dead log segments so they can
/// be reused; at the default it fell behind the create rate: 8.1 GB of log for 1.2 M claims and
/// 15 s for the first open after the load. At 20 ms, 10^6 claims left 5.5 GB and opened in
/// 4.8 s, at the same create rate.
const SLED_BACKGROUND_EVERY_MS: u64 = 20;
/// Group commit. Each sled flush has a fixed cost (sealing and writing a log buffer on sled's
/// threads, which wakes all seven of its I/O threads), so flushing every commit under load
/// spends the CPU the commits need. When the previous flush began less than
/// `GROUP_COMMIT_MAX_DELAY` ago and writers are on their way ([`Store::intend_commit`]: queued
/// for the registry's writer lock or holding it), the store thread holds the fsync for them,
/// writing what arrives into sled every `GROUP_COMMIT_STEP`, and flushes when the last of them
/// is done or the delay is up. With nobody on the way it flushes at once, so one client never
/// waits for a group that is not coming.
pub(super) const GROUP_COMMIT_MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(2);
pub(super) const GROUP_COMMIT_STEP: std::time::Duration = std::time::Duration::from_micros(500);
/// At most this many commits share a roll-forward record (~40 KB for claim creates): sled gives
/// a value over a quarter of a segment (128 KiB) a file of its own.
pub(super) const GROUP_MAX_COMMITS: usize = 32;

/// What the store thread does once what was handed over is in sled (see [`next_step`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Commits arrived meanwhile: write them in first.
    Write,
    /// Writers are on their way: wait for them, at most this long, then look again.
    Wait(std::time::Duration),
    /// Fsync what is in sled.
    Flush,
}

/// The group-commit policy, given whether commits are waiting to be written, how many writers
/// are on their way, and how long ago the previous fsync began.
pub(super) fn next_step(
    arrived: bool,
    writers: usize,
    since_flush: std::time::Duration,
    shutdown: bool,
) -> Next {
    if shutdown || since_flush >= GROUP_COMMIT_MAX_DELAY {
        Next::Flush
    } else if arrived {
        Next::Write
    } else if writers == 0 {
        Next::Flush
    } else {
        Next::Wait(GROUP_COMMIT_STEP.min(GROUP_COMMIT_MAX_DELAY - since_flush))
    }
}

/// A cheap-to-clone handle; all state lives behind one `Arc`. When the last handle is dropped
/// the store thread makes a final flush and exits, releasing the data directory's lock.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
    _close_on_drop: Arc<CloseOnDrop>,
    /// What a [`CommitIntent`] runs when it ends (made once, cloned per intent).
    intent_ended: Arc<dyn Fn() + Send + Sync>,
}

/// Shared by the handles only (not the store thread, which holds `Inner`).
struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct Inner {
    db: sled::Db,
    /// What a flush syncs after sled's own ([`flush_durably`]).
    files: SledFiles,
    /// Serializes commits: precondition checks and revision assignment must be one step. Held
    /// for microseconds (in-memory checks); never across a sled write or an fsync.
    commit: Mutex<CommitState>,
    /// Values of commits not yet written into sled, by sled key: reads look here first. An
    /// entry goes once the store thread has put its commit into sled (unless a later commit
    /// replaced it).
    unapplied: Mutex<HashMap<Vec<u8>, Unapplied>>,
    /// Hands commits to the store thread.
    queue: Mutex<Queue>,
    queued: Condvar,
    /// Writers on their way to a commit ([`Store::intend_commit`]).
    intents: AtomicUsize,
    /// Signalled (on `durable`) each time the durable revision advances, for `Store::flush`.
    durable_advanced: Condvar,
    durable: Mutex<Durable>,
    history: History,
}

struct CommitState {
    revision: Revision,
}

struct Unapplied {
    /// The last revision of the commit that wrote this value.
    commit: Revision,
    /// The value as sled stores it (`None`: removed).
    value: Option<Bytes>,
}

/// A commit on its way into sled.
struct Pending {
    revision: Revision,
    writes: Vec<Write>,
    events: Vec<StoreEvent>,
}

struct Queue {
    /// Commits not yet taken by the store thread, oldest first.
    pending: Vec<Pending>,
    shutdown: bool,
    /// The store thread sleeps on `queued` with nothing to do: only then does a commit wake it
    /// (a notify is a syscall even with nobody waiting). Under load it is writing, fsyncing or
    /// in a group-commit step, and picks commits up by itself.
    idle: bool,
    /// The store thread holds an fsync for writers on their way; the last of them to finish
    /// wakes it.
    gathering: bool,
}

/// What became of a [`Inner::flush_batch`].
enum Flushed {
    Durable,
    /// Failed for a reason that says nothing about the disk (see [`FlushError`]): retried.
    Deferred,
    /// Failed: the store is fenced.
    Failed,
}

/// How soon a deferred fsync is tried again.
const FLUSH_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// What the store thread has put into sled since its last fsync.
#[derive(Default)]
struct Batch {
    revision: Revision,
    commits: u64,
    events: Vec<StoreEvent>,
}

struct Durable {
    revision: Revision,
    /// Set once an fsync failed: every later commit is refused, since sled's state is unknown.
    failed: Option<String>,
    /// The callers waiting for their commit's fsync, by revision (registered in commit order,
    /// under the commit lock). Each fsync wakes only the callers it made durable; a watch
    /// channel woke every waiter on every fsync, most of them only to sleep again.
    waiters: VecDeque<(Revision, oneshot::Sender<Result<(), StoreError>>)>,
}

impl SledStore {
    /// Open (or create) the store in `dir`. Refuses a directory locked by another process, one
    /// that is not ours, and a damaged one, each with a message saying which.
    pub fn open(dir: &Path, history: impl Into<HistoryLimits>) -> Result<SledStore, StoreError> {
        let path = dir.join("db");
        preflight(&path)?;
        let db = open_sled(&path)?;
        let revision = match db.get(KEY_FORMAT).map_err(io)? {
            Some(f) if f.as_ref() == FORMAT => finish_last_commit(&db, &path)?,
            Some(f) if f.as_ref() == FORMAT_1 => upgrade_from_format_1(&db, &path)?,
            Some(f) => {
                return Err(StoreError::Corrupt(format!(
                    "{} holds data of format {:?}, not {:?}; refusing to use it",
                    path.display(),
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(FORMAT)
                )))
            }
            None if db.first().map_err(io)?.is_some() => {
                return Err(StoreError::Corrupt(format!(
                "{} is not an ipam-apiserver data directory (no format marker); refusing to use it",
                path.display()
            )))
            }
            None => {
                db.insert(KEY_FORMAT, FORMAT).map_err(io)?;
                0
            }
        };
        // Whatever opening wrote (a finished commit, an upgrade, a new marker) is durable
        // before the first request.
        let files = SledFiles::open(&path)?;
        flush_durably(&db, &files).map_err(StoreError::from)?;
        let durable = Mutex::new(Durable {
            revision,
            failed: None,
            waiters: VecDeque::new(),
        });
        let inner = Arc::new(Inner {
            db,
            files,
            commit: Mutex::new(CommitState { revision }),
            unapplied: Mutex::new(HashMap::new()),
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                shutdown: false,
                idle: false,
                gathering: false,
            }),
            queued: Condvar::new(),
            intents: AtomicUsize::new(0),
            durable_advanced: Condvar::new(),
            durable,
            history: History::new(history.into(), revision),
        });
        let thread = inner.clone();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || thread.run())
            .map_err(|e| StoreError::Unavailable(format!("cannot start store thread: {e}")))?;
        let ended = inner.clone();
        Ok(SledStore {
            _close_on_drop: Arc::new(CloseOnDrop(inner.clone())),
            inner,
            intent_ended: Arc::new(move || ended.intent_ended()),
        })
    }

    /// Checkpoint a closed store: open sled once more and close it. sled writes its snapshot
    /// (where every page lives) only at open, after replaying the log written since the
    /// previous one, so without this the next start replays everything this run wrote (after
    /// 10^6 creates: 8 s) before serving. Like a database's shutdown checkpoint; after a
    /// crash the next start does the replay instead. Retries while the directory is still
    /// held by this process's closing store, for at most `wait`.
    pub fn checkpoint(dir: &Path, wait: std::time::Duration) -> Result<(), StoreError> {
        let path = dir.join("db");
        let deadline = std::time::Instant::now() + wait;
        loop {
            match open_sled(&path) {
                Ok(db) => {
                    let files = SledFiles::open(&path)?;
                    return flush_durably(&db, &files).map_err(StoreError::from);
                }
                Err(StoreError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stop the store thread once everything handed over is written and fsynced. Later commits
    /// are refused.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Inner {
    fn close(&self) {
        lock(&self.queue).shutdown = true;
        self.queued.notify_all();
    }

    /// The store thread: put handed-over commits into sled, in order, and fsync them in groups.
    /// Events are published only after their fsync, so a watcher never sees a change a crash
    /// could undo.
    fn run(&self) {
        let mut batch = Batch::default();
        let mut last_flush = std::time::Instant::now();
        // Deferred fsyncs in a row (logged when the first fails and when they end).
        let mut deferred = 0u64;
        loop {
            let commits = {
                let mut q = lock(&self.queue);
                while q.pending.is_empty() && batch.commits == 0 && !q.shutdown {
                    q.idle = true;
                    q = self.queued.wait(q).unwrap_or_else(|p| p.into_inner());
                    q.idle = false;
                }
                std::mem::take(&mut q.pending)
            };
            if !self.write_into_sled(commits, &mut batch) {
                return;
            }
            if batch.commits == 0 {
                return; // shut down, and everything handed over is durable
            }
            if self.gather(last_flush.elapsed()) {
                continue;
            }
            last_flush = std::time::Instant::now();
            match self.flush_batch(&mut batch, deferred == 0) {
                Flushed::Durable if deferred > 0 => {
                    tracing::info!(failed = deferred, "fsync succeeds again");
                    deferred = 0;
                }
                Flushed::Durable => {}
                Flushed::Deferred => {
                    deferred += 1;
                    std::thread::sleep(FLUSH_RETRY_AFTER);
                }
                Flushed::Failed => return,
            }
        }
    }

    /// Before an fsync, `since` the previous one began: true to go round again (commits
    /// arrived, or writers on their way were waited for), false to fsync now.
    fn gather(&self, since: std::time::Duration) -> bool {
        let mut q = lock(&self.queue);
        let writers = self.intents.load(Ordering::Acquire);
        match next_step(!q.pending.is_empty(), writers, since, q.shutdown) {
            Next::Flush => false,
            Next::Write => true,
            Next::Wait(wait) => {
                // The count was read under the queue's lock, which `intent_ended` takes before
                // it wakes us: the last writer cannot finish unseen between count and wait.
                q.gathering = true;
                let (mut q, _) = self
                    .queued
                    .wait_timeout(q, wait)
                    .unwrap_or_else(|p| p.into_inner());
                q.gathering = false;
                true
            }
        }
    }

    /// A [`CommitIntent`] ended. The last one wakes a store thread holding an fsync for it.
    fn intent_ended(&self) {
        if self.intents.fetch_sub(1, Ordering::AcqRel) == 1 {
            let gathering = lock(&self.queue).gathering;
            if gathering {
                self.queued.notify_one();
            }
        }
    }

    /// Write commits into sled, oldest first; drop their entries from `unapplied` and add them
    /// to the batch the next fsync covers. False (and the store failed) if sled refused a write.
    fn write_into_sled(&self, commits: Vec<Pending>, batch: &mut Batch) -> bool {
        // One roll-forward record per group (module doc): at 64 clients a group is ~8 commits,
        // so this saves seven record inserts of eight.
        for group in commits.chunks(GROUP_MAX_COMMITS) {
            let revision = group[group.len() - 1].revision; // chunks are never empty
            let writes = group.iter().flat_map(|c| &c.writes);
            if let Err(e) = apply_group(&self.db, revision, writes.clone()) {
                // Part of the group may be in sled's memory; only a restart (which finishes it
                // from `m/commit`) brings the store back to a known state.
                tracing::error!(error = %e, "store write failed; refusing further writes");
                self.fail(format!("store write failed: {e}"));
                return false;
            }
            // sled splits (or merges) a node that an insert (or removal) left too large (or
            // small) on the next traversal that meets it, and that was a request's read under
            // the registry's writer lock (the next claim's name lands in the same leaf): 7 % of
            // the server's CPU. Meet them here, on this thread.
            for (key, _) in writes {
                let _ = self.db.get(key);
            }
        }
        let mut unapplied = lock(&self.unapplied);
        for commit in commits {
            for (key, _) in &commit.writes {
                if unapplied
                    .get(key)
                    .is_some_and(|u| u.commit == commit.revision)
                {
                    unapplied.remove(key);
                }
            }
            batch.revision = commit.revision;
            batch.commits += 1;
            batch.events.extend(commit.events);
        }
        true
    }

    /// One fsync for every commit in `batch` (taking it), then its events and its waiters.
    /// `log_deferral`: say so if it is deferred.
    fn flush_batch(&self, batch: &mut Batch, log_deferral: bool) -> Flushed {
        let metrics = crate::metrics::global();
        let started = std::time::Instant::now();
        let flushed = flush_durably(&self.db, &self.files);
        metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        match flushed {
            Ok(_) => {
                let batch = std::mem::take(batch);
                metrics.commit_batch.observe(batch.commits as f64);
                self.history.publish(batch.events);
                self.advance(|d| d.revision = batch.revision);
                Flushed::Durable
            }
            Err(e) if e.transient && !lock(&self.queue).shutdown => {
                // Nothing is known to be wrong on disk: the batch stays for the next fsync,
                // and only the writers waiting for this one are told.
                metrics.fsync_failures.inc();
                if log_deferral {
                    tracing::warn!(error = %e.message, "fsync failed; its writes are answered 503 and it is retried every {FLUSH_RETRY_AFTER:?}");
                }
                self.give_up_until(
                    batch.revision,
                    format!(
                        "fsync failed ({}); the change was kept in memory and is made durable by a later fsync",
                        e.message
                    ),
                );
                Flushed::Deferred
            }
            Err(e) => {
                metrics.fsync_failures.inc();
                tracing::error!(error = %e.message, "fsync failed; refusing further writes");
                self.fail(format!("fsync failed: {}", e.message));
                Flushed::Failed
            }
        }
    }

    /// Tell the writers waiting for revisions up to `revision` that their commit failed,
    /// without failing the store.
    fn give_up_until(&self, revision: Revision, message: String) {
        let mut durable = lock(&self.durable);
        while durable.waiters.front().is_some_and(|(r, _)| *r <= revision) {
            if let Some((_, waiter)) = durable.waiters.pop_front() {
                let _ = waiter.send(Err(StoreError::Unavailable(message.clone())));
            }
        }
    }

    /// From now on every commit is refused and every waiter told why.
    fn fail(&self, message: String) {
        self.advance(|d| d.failed = Some(message));
    }

    /// Change the durable state and wake its waiters: async ones (`wait_durable`) and
    /// `Store::flush`.
    fn advance(&self, change: impl FnOnce(&mut Durable)) {
        let mut durable = lock(&self.durable);
        change(&mut durable);
        while let Some((revision, _)) = durable.waiters.front() {
            let outcome = if *revision <= durable.revision {
                Ok(())
            } else if let Some(failed) = &durable.failed {
                Err(StoreError::Unavailable(failed.clone()))
            } else {
                break;
            };
            if let Some((_, waiter)) = durable.waiters.pop_front() {
                // The caller may have gone (its request was cancelled): nothing to tell.
                let _ = waiter.send(outcome);
            }
        }
        drop(durable);
        self.durable_advanced.notify_all();
    }

    /// Resolves once `revision` is durable, or the store has failed. Called in commit order
    /// (under the commit lock), so the queue stays sorted.
    fn wait_durable(&self, revision: Revision) -> BoxFuture<'static, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let mut durable = lock(&self.durable);
        if durable.revision >= revision {
            let _ = tx.send(Ok(()));
        } else if let Some(failed) = &durable.failed {
            let _ = tx.send(Err(StoreError::Unavailable(failed.clone())));
        } else {
            durable.waiters.push_back((revision, tx));
        }
        drop(durable);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("store closed".into())))
        })
    }
}

/// The store's work is synchronous (sled in memory; the fsync is the store thread's), so
/// [`Store`] answers at once from these.
impl SledStore {
    pub(super) fn get_now(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError> {
        let sled_key = object_key(key);
        // Before sled: a value the store thread has not put into sled yet is newer than sled's.
        // (Entries leave only after sled has the value, so a miss here and a read of sled cannot
        // skip it.)
        if let Some(u) = lock(&self.inner.unapplied).get(&sled_key) {
            return u
                .value
                .clone()
                .map(|v| decode_value(key.clone(), v))
                .transpose();
        }
        let raw = self.inner.db.get(&sled_key).map_err(io)?;
        raw.map(|v| decode_value(key.clone(), Bytes::copy_from_slice(&v)))
            .transpose()
    }

    fn list_now(
        &self,
        range: &KeyRange,
        start_after: Option<&ObjectKey>,
        limit: Option<usize>,
        filter: &mut ListFilter<'_>,
    ) -> Result<ListPage, StoreError> {
        let revision = self.revision();
        let mut prefix = OBJECT_PREFIX.to_vec();
        prefix.extend(range.prefix());
        let start = match start_after {
            Some(k) => {
                let mut s = object_key(k);
                s.push(0); // the smallest key after `k`
                s.max(prefix.clone())
            }
            None => prefix.clone(),
        };
        let mut items = Vec::new();
        let mut more = false;
        for entry in self.inner.range(start, prefix) {
            let (k, v) = entry?;
            let Some(key) = ObjectKey::decode(range.resource, &k[OBJECT_PREFIX.len()..]) else {
                continue;
            };
            if !range.contains(&key) {
                continue;
            }
            let item = decode_value(key, v)?;
            if !filter(&item) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                break;
            }
            items.push(item);
        }
        Ok(ListPage {
            items,
            revision,
            more,
            remaining: None,
        })
    }

    pub(super) fn commit_now(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        if let Some(err) = lock(&self.inner.durable).failed.clone() {
            return Err(StoreError::Unavailable(err));
        }
        let mut state = lock(&self.inner.commit);
        let mut writes: Vec<Write> = Vec::with_capacity(ops.len());
        let mut events = Vec::with_capacity(ops.len());
        let mut revisions = Vec::with_capacity(ops.len());
        let mut revision = state.revision;
        // Ops in one commit may touch the same key (rare); track what this commit already wrote.
        let mut written: std::collections::HashMap<ObjectKey, Option<Versioned>> =
            Default::default();
        for op in ops {
            if let Op::Guard { .. } = op {
                // One writer: its indexes are always current, so a guard always holds.
                revisions.push(revision);
                continue;
            }
            let key = op.key().clone();
            let current = match written.get(&key) {
                Some(v) => v.clone(),
                None => self.get_now(&key)?,
            };
            let precondition = match &op {
                Op::Put { precondition, .. } | Op::Delete { precondition, .. } => *precondition,
                Op::Guard { .. } => Precondition::None,
            };
            check(&key, precondition, current.as_ref())?;
            revision += 1;
            revisions.push(revision);
            match op {
                Op::Put { value, .. } => {
                    let event_type = if current.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    writes.push((
                        object_key(&key),
                        Some(encode_value(revision, &value).into()),
                    ));
                    let object = Versioned {
                        key: key.clone(),
                        revision,
                        value,
                    };
                    written.insert(key, Some(object.clone()));
                    let previous = current.map(|c| c.value);
                    events.push(StoreEvent::new(event_type, object, previous));
                }
                Op::Guard { .. } => {}
                Op::Delete { .. } => {
                    let Some(prev) = current else {
                        return Err(StoreError::PreconditionFailed {
                            key,
                            expected: Precondition::None,
                            actual: None,
                        });
                    };
                    writes.push((object_key(&key), None));
                    written.insert(key.clone(), None);
                    events.push(StoreEvent::new(
                        EventType::Deleted,
                        Versioned {
                            key,
                            revision,
                            value: prev.value,
                        },
                        None,
                    ));
                }
            }
        }
        let wake = {
            let mut q = lock(&self.inner.queue);
            if q.shutdown {
                return Err(StoreError::Unavailable("store is shutting down".into()));
            }
            let mut unapplied = lock(&self.inner.unapplied);
            for (key, value) in &writes {
                let entry = Unapplied {
                    commit: revision,
                    value: value.clone(),
                };
                unapplied.insert(key.clone(), entry);
            }
            drop(unapplied);
            q.pending.push(Pending {
                revision,
                writes,
                events,
            });
            q.idle
        };
        state.revision = revision;
        let durable = self.inner.wait_durable(revision);
        drop(state);
        if wake {
            self.inner.queued.notify_one();
        }
        Ok(Committed { revisions, durable })
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn get(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError> {
        self.get_now(key)
    }

    async fn list(
        &self,
        range: &KeyRange,
        start_after: Option<&ObjectKey>,
        // Only the latest state is kept: every read sees it.
        _at: ReadAt,
        limit: Option<usize>,
        filter: &mut ListFilter<'_>,
    ) -> Result<ListPage, StoreError> {
        self.list_now(range, start_after, limit, filter)
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        self.commit_now(ops)
    }

    fn revision(&self) -> Revision {
        lock(&self.inner.commit).revision
    }

    fn intend_commit(&self) -> CommitIntent {
        self.inner.intents.fetch_add(1, Ordering::AcqRel);
        CommitIntent::new(self.intent_ended.clone())
    }

    fn oldest_watchable(&self) -> Revision {
        self.inner.history.oldest()
    }

    fn watch(&self, after: Revision) -> Result<EventStream, StoreError> {
        Ok(self.inner.history.subscribe(after)?.into_stream())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Wait until the store thread has made every commit so far durable.
        let target = self.revision();
        let mut durable = lock(&self.inner.durable);
        loop {
            if let Some(failed) = &durable.failed {
                return Err(StoreError::Unavailable(failed.clone()));
            }
            if durable.revision >= target {
                break;
            }
            durable = self
                .inner
                .durable_advanced
                .wait(durable)
                .unwrap_or_else(|p| p.into_inner());
        }
        drop(durable);
        flush_durably(&self.inner.db, &self.inner.files).map_err(StoreError::from)
    }

    fn failure(&self) -> Option<String> {
        lock(&self.inner.durable).failed.clone()
    }
}

/// One key of a commit as sled stores it, and its new value (`None`: removed).
pub(super) type Write = (Vec<u8>, Option<Bytes>);

impl Inner {
    /// sled's keys from `start` on that begin with `prefix`, with `unapplied` laid over them.
    fn range(&self, start: Vec<u8>, prefix: Vec<u8>) -> Overlaid {
        let unapplied = lock(&self.unapplied);
        let over = unapplied.iter().map(|(k, u)| (k, &u.value));
        Overlaid::new(&self.db, over, start, prefix)
    }
}

/// A merge of a sled range with the not-yet-written values over it, in key order.
pub(super) struct Overlaid {
    base: sled::Iter,
    base_head: Option<(sled::IVec, sled::IVec)>,
    base_done: bool,
    over: std::iter::Peekable<std::vec::IntoIter<(Vec<u8>, Option<Bytes>)>>,
    prefix: Vec<u8>,
}

impl Overlaid {
    pub(super) fn new<'a>(
        db: &sled::Db,
        over: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Bytes>)>,
        start: Vec<u8>,
        prefix: Vec<u8>,
    ) -> Overlaid {
        let mut over: Vec<(Vec<u8>, Option<Bytes>)> = over
            .filter(|(k, _)| k.starts_with(&prefix) && **k >= start)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        over.sort_by(|a, b| a.0.cmp(&b.0));
        Overlaid {
            base: db.range(start..),
            base_head: None,
            base_done: false,
            over: over.into_iter().peekable(),
            prefix,
        }
    }
}

impl Iterator for Overlaid {
    type Item = Result<(Vec<u8>, Bytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.base_head.is_none() && !self.base_done {
                match self.base.next() {
                    Some(Ok((k, v))) if k.starts_with(&self.prefix) => {
                        self.base_head = Some((k, v))
                    }
                    Some(Err(e)) => {
                        self.base_done = true;
                        return Some(Err(io(e)));
                    }
                    _ => self.base_done = true,
                }
            }
            let over_first = match (&self.base_head, self.over.peek()) {
                (None, None) => return None,
                (Some((base, _)), Some((over, _))) => over.as_slice() <= base.as_ref(),
                (base, _) => base.is_none(),
            };
            if over_first {
                let (key, value) = self.over.next()?;
                // The newer value replaces sled's for the same key.
                if self
                    .base_head
                    .as_ref()
                    .is_some_and(|(base, _)| base.as_ref() == key.as_slice())
                {
                    self.base_head = None;
                }
                match value {
                    Some(v) => return Some(Ok((key, v))),
                    None => continue, // removed
                }
            }
            let (key, value) = self.base_head.take()?;
            return Some(Ok((key.to_vec(), Bytes::copy_from_slice(&value))));
        }
    }
}

/// Write a group of commits ending at `revision`: their roll-forward record first, then each
/// key, in order (see the module doc).
fn apply_group<'a>(
    db: &sled::Db,
    revision: Revision,
    writes: impl Iterator<Item = &'a Write> + Clone,
) -> sled::Result<()> {
    db.insert(KEY_COMMIT, encode_commit(revision, writes.clone()))?;
    for (key, value) in writes {
        match value {
            Some(v) => db.insert(key.as_slice(), v.as_ref())?,
            None => db.remove(key.as_slice())?,
        };
    }
    Ok(())
}

/// `m/commit`: revision (u64), then per key: key length (u32), key, and the value's length + 1
/// (u32; 0 for a removal) and value. Big-endian.
pub(super) fn encode_commit<'a>(
    revision: Revision,
    writes: impl Iterator<Item = &'a Write> + Clone,
) -> Vec<u8> {
    let size: usize = writes
        .clone()
        .map(|(k, v)| 8 + k.len() + v.as_ref().map_or(0, Bytes::len))
        .sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(&revision.to_be_bytes());
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as u32 + 1).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&0u32.to_be_bytes()),
        }
    }
    out
}

pub(super) fn decode_commit(mut raw: &[u8]) -> Option<(Revision, Vec<Write>)> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (raw.get(..n)?, raw.get(n..)?);
        *raw = rest;
        Some(head)
    }
    fn take_u32(raw: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(raw, 4)?.try_into().ok()?) as usize)
    }
    let revision = decode_u64(take(&mut raw, 8)?)?;
    let mut writes = Vec::new();
    while !raw.is_empty() {
        let key_len = take_u32(&mut raw)?;
        let key = take(&mut raw, key_len)?.to_vec();
        let value = match take_u32(&mut raw)? {
            0 => None,
            n => Some(Bytes::copy_from_slice(take(&mut raw, n - 1)?)),
        };
        writes.push((key, value));
    }
    Some((revision, writes))
}

/// At open: apply the newest commit's record again, in case a crash cut it short, and return
/// the store's revision.
fn finish_last_commit(db: &sled::Db, path: &Path) -> Result<Revision, StoreError> {
    let Some(raw) = db.get(KEY_COMMIT).map_err(io)? else {
        return Ok(0);
    };
    let (revision, writes) = decode_commit(&raw)
        .ok_or_else(|| StoreError::Corrupt(format!("{}: damaged commit record", path.display())))?;
    apply_group(db, revision, writes.iter()).map_err(io)?;
    Ok(revision)
}

/// A format-1 directory is consistent as it is (each commit was one batch); it needs only its
/// revision moved into a commit record and the new marker.
fn upgrade_from_format_1(db: &sled::Db, path: &Path) -> Result<Revision, StoreError> {
    let revision = match db.get(KEY_REVISION_1).map_err(io)? {
        Some(v) => decode_u64(&v).ok_or_else(|| {
            StoreError::Corrupt(format!("{}: damaged revision counter", path.display()))
        })?,
        None => 0,
    };
    apply_group(db, revision, [].iter()).map_err(io)?;
    db.remove(KEY_REVISION_1).map_err(io)?;
    db.insert(KEY_FORMAT, FORMAT).map_err(io)?;
    Ok(revision)
}

fn check(
    key: &ObjectKey,
    precondition: Precondition,
    current: Option<&Versioned>,
) -> Result<(), StoreError> {
    let actual = current.map(|c| c.revision);
    let ok = match precondition {
        Precondition::None => true,
        Precondition::Absent => actual.is_none(),
        Precondition::Revision(r) => actual == Some(r),
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::PreconditionFailed {
            key: key.clone(),
            expected: precondition,
            actual,
        })
    }
}

pub(super) fn object_key(key: &ObjectKey) -> Vec<u8> {
    let mut k = OBJECT_PREFIX.to_vec();
    k.extend(key.encode());
    k
}

pub(super) fn encode_value(revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&revision.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn decode_value(key: ObjectKey, raw: Bytes) -> Result<Versioned, StoreError> {
    let revision = decode_u64(raw.get(..8).unwrap_or_default())
        .ok_or_else(|| StoreError::Corrupt(format!("damaged value for {key:?}")))?;
    Ok(Versioned {
        key,
        revision,
        value: raw.slice(8..),
    })
}

fn decode_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The files of sled's directory that its flush leaves short of durable. It ends each log
/// write with `sync_file_range`, which leaves the data in the disk's volatile write cache and
/// does not persist a grown file's size; and it writes a value over a quarter of a segment
/// to a file of its own (a blob) without any sync. After a power cut an acknowledged commit
/// could then be gone, and its address handed out again.
pub(super) struct SledFiles {
    log: std::fs::File,
    blobs: std::path::PathBuf,
    /// The newest blob already synced. Blobs are named by their log sequence number, so the
    /// ones a flush must sync are those above it.
    blobs_synced: Mutex<u64>,
}

impl SledFiles {
    /// The files of the sled directory `path`.
    pub(super) fn open(path: &Path) -> Result<SledFiles, StoreError> {
        let log = path.join("db");
        Ok(SledFiles {
            log: std::fs::File::open(&log).map_err(|e| {
                StoreError::Unavailable(format!("cannot open {}: {e}", log.display()))
            })?,
            blobs: path.join("blobs"),
            blobs_synced: Mutex::new(0),
        })
    }

    /// `fdatasync` the blobs written since the last call, their directory, then the log (as
    /// etcd syncs its log). Returns how many blobs it synced.
    pub(super) fn sync(&self) -> std::io::Result<usize> {
        let mut synced = lock(&self.blobs_synced);
        let mut newest = *synced;
        let mut count = 0;
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => Some(entries),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry?;
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if lsn > *synced {
                match std::fs::File::open(entry.path()) {
                    Ok(blob) => blob.sync_data()?,
                    // Removed by sled since the listing: nothing left to make durable.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                newest = newest.max(lsn);
                count += 1;
            }
        }
        if count > 0 {
            std::fs::File::open(&self.blobs)?.sync_all()?;
            *synced = newest;
        }
        self.log.sync_data()?;
        Ok(count)
    }
}

/// Make everything written into sled so far durable: sled's flush, then [`SledFiles::sync`].
fn flush_durably(db: &sled::Db, files: &SledFiles) -> Result<(), FlushError> {
    db.flush().map_err(|e| FlushError {
        transient: matches!(&e, sled::Error::Io(io) if says_nothing_about_disk(io)),
        message: e.to_string(),
    })?;
    files.sync().map(|_| ()).map_err(|e| FlushError {
        transient: says_nothing_about_disk(&e),
        message: format!("fdatasync: {e}"),
    })
}

/// A failed [`flush_durably`].
struct FlushError {
    /// Which step failed, and how.
    message: String,
    /// The failure says nothing about the data on disk (see [`says_nothing_about_disk`]): the
    /// store may go on, and the next fsync covers what this one did not. Otherwise (EIO,
    /// ENOSPC, ...) the kernel may have dropped the pages it could not write: the store fences
    /// itself.
    transient: bool,
}

impl From<FlushError> for StoreError {
    fn from(e: FlushError) -> StoreError {
        StoreError::Unavailable(e.message)
    }
}

/// The process ran short of file descriptors (opening a blob or the blob directory to sync
/// it: a connection flood) or of memory, or a signal interrupted the call: nothing was written,
/// nothing was lost, and the same call may succeed later.
fn says_nothing_about_disk(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOMEM | Errno::INTR)
    )
}

/// Refuse, before sled touches it, a database directory sled would not recognise: given a
/// database file without a readable `conf`, sled silently starts an empty database over it.
fn preflight(path: &Path) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    if !path.is_dir() {
        return Err(StoreError::Corrupt(format!(
            "{} is not a directory; this is not an ipam-apiserver data directory, refusing to use it",
            path.display()
        )));
    }
    let data = path.join("db");
    let has_data = std::fs::metadata(&data).is_ok_and(|m| m.len() > 0);
    if !has_data {
        return Ok(());
    }
    // sled's conf is text followed by a binary checksum.
    let conf = std::fs::read(path.join("conf")).unwrap_or_default();
    let conf = String::from_utf8_lossy(&conf);
    if !(conf.contains("segment_size:") && conf.contains("version:")) {
        return Err(StoreError::Corrupt(format!(
            "{} holds a database file but its conf is missing or damaged: not an ipam-apiserver data directory, or a damaged one; refusing to use it",
            path.display()
        )));
    }
    Ok(())
}

/// Open sled, turning a panic during its recovery (it panics on some damaged logs) into an error.
fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
        .flush_every_ms(Some(SLED_BACKGROUND_EVERY_MS));
    // Silence the default panic report for the duration: the error below says it better.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
    std::panic::set_hook(hook);
    match opened {
        Ok(result) => result.map_err(|e| open_error(path, e)),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(StoreError::Corrupt(format!(
                "{} is damaged and cannot be opened (recovery failed: {why}); refusing to use it",
                path.display()
            )))
        }
    }
}

fn open_error(path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            StoreError::Unavailable(format!(
                "data directory {} is in use by another ipam-apiserver process ({io})",
                path.display()
            ))
        }
        sled::Error::Corruption { .. } => StoreError::Corrupt(format!(
            "{} is damaged and cannot be opened: {e}",
            path.display()
        )),
        other => StoreError::Unavailable(format!("cannot open {}: {other}", path.display())),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent across a panic (plain counters and queues).
    m.lock().unwrap_or_else(|p| p.into_inner())
}
