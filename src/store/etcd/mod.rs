//! The shared store: etcd (v3 API), so several replicas serve the same data.
//!
//! As k8s.io/apiserver's `storage/etcd3`: an object is one key,
//! `<prefix>/ipam.miloapis.com/<resource>/[<namespace>/]<name>`, holding the same JSON as sled;
//! `resourceVersion` is the key's `mod_revision`; a commit is one etcd transaction whose
//! compares are the ops' preconditions (`Absent`: `mod_revision == 0`; `Revision(r)`:
//! `mod_revision == r`; a delete needs the key to exist), so it applies whole or not at all.
//! A transaction gives every key it writes the same revision.
//!
//! Reads are consistent: a read on any replica sees every write acknowledged before it began.
//! They are answered from a cache of every key that the one etcd watch keeps current, once it
//! has caught up with etcd's revision at the read's start (`read.rs`, `cache.rs`); the later
//! pages of a list are read in etcd at its first page's revision. The same watch feeds the
//! retained history that watchers subscribe to (as kube-apiserver's watch cache), other
//! replicas' writes included.
//!
//! Every call is bounded by [`REQUEST_TIMEOUT`]: etcd without quorum answers
//! [`StoreError::Unavailable`] naming etcd, not a hang.
use super::events::History;
use super::*;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType as EtcdEventType,
    GetOptions, Identity, KeyValue, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

mod cache;
mod compactor;
mod election;
mod endpoints;
mod follow;
mod read;

use compactor::compact_every;
use follow::{follow, probe_every};

/// The longest any etcd call may take before the request answers 503. etcd's own election
/// timeout is 1 s by default, so a healthy cluster that just lost its leader answers well
/// within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often readiness asks etcd whether it answers, besides every request's outcome.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Keys per range request when a list reads many.
const LIST_BATCH: i64 = 1000;

/// How to reach etcd (the `--etcd-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    pub servers: Vec<String>,
    /// Without a trailing `/`, e.g. `/registry`.
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Zero: never compact (the operator does).
    pub compaction_interval: Duration,
    /// The history retained for watchers.
    pub watch_history: super::HistoryLimits,
    /// The time to live of the leader's lease: how long the other replicas wait for a leader
    /// that stopped renewing it (killed, paused, cut off from etcd).
    pub leader_lease: Duration,
}

/// A cheap-to-clone handle; the watch and the compactor run as tasks of their own.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `<prefix>/ipam.miloapis.com/`.
    root: Vec<u8>,
    history: History,
    /// Every key under the root as of the watch's revision: what reads are answered from.
    cache: cache::Cache,
    /// etcd's current revision, asked once for the readers waiting together.
    current: read::CurrentRevision,
    /// A reader waits for the cache: the watch asks etcd how far it is.
    /// Consistent reads that found the cache behind for too long and read etcd instead.
    fallbacks: AtomicU64,
    /// The newest revision known applied: every event up to it has reached `history`, or it
    /// is one of our own commits.
    revision: AtomicU64,
    /// Why etcd is not usable now (the last call or the watch failed), for `/readyz`.
    trouble: Mutex<Option<String>>,
    /// Whether this replica holds the leader key (see `election.rs`).
    leading: tokio::sync::watch::Receiver<bool>,
    /// Tells the election to give the key back and stop campaigning (shutdown).
    resign: Arc<tokio::sync::Notify>,
    /// This replica's contact ([`Store::advertise`]), published with the leader key while it
    /// leads.
    contact: tokio::sync::watch::Sender<String>,
    /// The leader's contact as the election last read it, when another replica leads.
    leader_contact: Mutex<Option<Arc<str>>>,
}

impl EtcdStore {
    /// Connect, check that etcd answers (a wrong CA, a missing client certificate or an
    /// unreachable endpoint fails here, naming the flag), and start following its changes.
    /// Needs a Tokio runtime.
    pub async fn connect(opts: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), REQUEST_TIMEOUT)
            // Without a leader a member answers at once instead of waiting for one.
            .with_require_leader(true);
        let tls = opts.ca_file.is_some()
            || opts.cert_file.is_some()
            || opts.servers.iter().any(|s| s.starts_with("https://"));
        if tls {
            connect = connect.with_tls(tls_options(opts)?);
        }
        let servers = opts.servers.join(",");
        // Members that are down get no calls (see endpoints.rs); none up: try them all, for
        // the error.
        let mut balanced = endpoints::reachable(&opts.servers).await;
        if balanced.is_empty() {
            balanced = opts.servers.clone();
        }
        let client = Client::connect(&balanced, Some(connect))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("--etcd-servers {servers}: cannot connect: {e}"))
            })?;
        let root = format!("{}/{}/", opts.prefix, crate::api::GROUP).into_bytes();
        let mut kv = client.kv_client();
        let probe = timeout(kv.get(root.clone(), Some(GetOptions::new().with_count_only())))
            .await
            .map_err(|e| {
                let hint = if tls {
                    " (check --etcd-cafile, --etcd-certfile and --etcd-keyfile)"
                } else {
                    ""
                };
                StoreError::Unavailable(format!(
                    "--etcd-servers {servers}: etcd does not answer{hint}: {e}"
                ))
            })?;
        let start = header_revision(probe.header());
        let (elected, leading) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            client,
            root,
            history: History::new(opts.watch_history, start),
            cache: cache::Cache::new(),
            current: Default::default(),
            fallbacks: AtomicU64::new(0),
            revision: AtomicU64::new(start),
            trouble: Mutex::new(None),
            leading,
            resign: Arc::default(),
            contact: tokio::sync::watch::Sender::new(String::new()),
            leader_contact: Mutex::new(None),
        });
        // The cache at the revision the watch follows from.
        inner.fill_cache(Some(start)).await.map_err(|e| {
            StoreError::Unavailable(format!("--etcd-servers {servers}: cannot read: {e}"))
        })?;
        tokio::spawn(follow(Arc::downgrade(&inner), start));
        tokio::spawn(endpoints::follow_members(
            Arc::downgrade(&inner),
            opts.servers.clone(),
            balanced,
        ));
        tokio::spawn(probe_every(Arc::downgrade(&inner), PROBE_EVERY));
        tokio::spawn(election::campaign(
            Arc::downgrade(&inner),
            inner.resign.clone(),
            elected,
            opts.leader_lease,
            election::identity(),
        ));
        if !opts.compaction_interval.is_zero() {
            tokio::spawn(compact_every(
                Arc::downgrade(&inner),
                opts.compaction_interval,
            ));
        }
        tracing::info!(servers, revision = start, "etcd connected");
        Ok(EtcdStore { inner })
    }

    /// Forget etcd's history up to `revision` (as the compactor does), for tests.
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut kv = self.inner.client.kv_client();
        timeout(kv.compact(revision as i64, None)).await?;
        Ok(())
    }
}

fn tls_options(opts: &EtcdOptions) -> Result<TlsOptions, StoreError> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path)
            .map_err(|e| StoreError::Unavailable(format!("{flag} {}: {e}", path.display())))
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &opts.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read("--etcd-cafile", ca)?));
    }
    if let (Some(cert), Some(key)) = (&opts.cert_file, &opts.key_file) {
        tls = tls.identity(Identity::from_pem(
            read("--etcd-certfile", cert)?,
            read("--etcd-keyfile", key)?,
        ));
    }
    Ok(tls)
}

/// An etcd call, bounded: past [`REQUEST_TIMEOUT`] it is etcd's unavailability, not a hang.
async fn timeout<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(etcd_error(e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd did not answer within {}s (does it have quorum?)",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

fn etcd_error(e: etcd_client::Error) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &e {
        if status
            .message()
            .contains("required revision has been compacted")
        {
            return StoreError::Expired {
                requested: 0,
                oldest: 0,
            };
        }
        return StoreError::Unavailable(format!("etcd: {}", status.message()));
    }
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision().max(0) as Revision)
}

impl Inner {
    fn etcd_key(&self, key: &ObjectKey) -> Vec<u8> {
        let mut k = self.root.clone();
        k.extend_from_slice(key.resource.as_bytes());
        k.push(b'/');
        if !key.namespace.is_empty() {
            k.extend_from_slice(key.namespace.as_bytes());
            k.push(b'/');
        }
        k.extend_from_slice(key.name.as_bytes());
        k
    }

    /// Bumped by every commit: its `mod_revision` is the revision of the last change to the
    /// API's keys, whichever replica made it (not an object key: the watch and lists skip it).
    fn last_write_key(&self) -> Vec<u8> {
        [self.root.as_slice(), b"last-write"].concat()
    }

    /// The keys the watch follows, `[start, end)`: every object's (the resources' keys are
    /// one range in key order), not the guards and the last-write key beside them. Those
    /// change only in a transaction that writes an object too, so the objects' events still
    /// carry every revision a read or a guard waits for, and etcd sends each replica half as
    /// many events per create.
    fn objects_range(&self) -> (Vec<u8>, Vec<u8>) {
        let first = [self.root.as_slice(), RESOURCES[0].as_bytes(), b"/"].concat();
        let last = [
            self.root.as_slice(),
            RESOURCES[RESOURCES.len() - 1].as_bytes(),
            b"/",
        ]
        .concat();
        (first, prefix_end(&last))
    }

    /// The object key of an etcd key under `root`, for one of `resources`.
    fn object_key(&self, raw: &[u8]) -> Option<ObjectKey> {
        let rest = std::str::from_utf8(raw.strip_prefix(self.root.as_slice())?).ok()?;
        let (resource, rest) = rest.split_once('/')?;
        let resource = resource_name(resource)?;
        Some(match rest.split_once('/') {
            Some((ns, name)) => ObjectKey::new(resource, ns, name),
            None => ObjectKey::new(resource, "", rest),
        })
    }

    /// The first etcd key of `range`.
    fn range_start(&self, range: &KeyRange) -> Vec<u8> {
        let mut k = self.root.clone();
        k.extend_from_slice(range.resource.as_bytes());
        k.push(b'/');
        if let Some(ns) = &range.namespace {
            k.extend_from_slice(ns.as_bytes());
            k.push(b'/');
        }
        k
    }

    fn versioned(&self, kv: &KeyValue) -> Option<Versioned> {
        Some(Versioned {
            key: self.object_key(kv.key())?,
            revision: kv.mod_revision().max(0) as Revision,
            value: Bytes::copy_from_slice(kv.value()),
        })
    }

    fn saw(&self, revision: Revision) {
        self.revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// Record how the last call went, for `/readyz`.
    fn outcome<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        let trouble = match &r {
            Err(StoreError::Unavailable(why)) => Some(why.clone()),
            _ => None,
        };
        *lock(&self.trouble) = trouble;
        r
    }
}

/// The resources this server stores, as `'static` names (keys outside them are not ours).
/// The resources stored, in key order.
const RESOURCES: [&str; 2] = ["ipprefixclaims", "ipprefixes"];

fn resource_name(s: &str) -> Option<&'static str> {
    RESOURCES.into_iter().find(|r| *r == s)
}

/// The smallest key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key, ReadAt::Latest).await
    }

    async fn get_at(&self, key: &ObjectKey, at: ReadAt) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key, at).await
    }

    async fn list(
        &self,
        range: &KeyRange,
        start_after: Option<&ObjectKey>,
        at: ReadAt,
        limit: Option<usize>,
        filter: &mut ListFilter<'_>,
    ) -> Result<ListPage, StoreError> {
        self.inner.list(range, start_after, at, limit, filter).await
    }

    fn keeps_versions(&self) -> bool {
        true
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        let inner = &self.inner;
        let mut compares = Vec::new();
        let mut writes = Vec::with_capacity(ops.len());
        let mut reads = Vec::with_capacity(ops.len());
        for op in &ops {
            let key = inner.etcd_key(op.key());
            match op {
                Op::Put { precondition, .. } | Op::Delete { precondition, .. } => {
                    match precondition {
                        Precondition::Absent => {
                            compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, 0))
                        }
                        Precondition::Revision(r) => compares.push(Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            *r as i64,
                        )),
                        Precondition::None => {}
                    }
                }
                // Not bumped since `at_most` (a key never written compares as revision 0).
                Op::Guard { at_most, .. } => compares.push(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Less,
                    *at_most as i64 + 1,
                )),
            }
            if let Op::Delete { .. } = op {
                // Deleting what is not there is a failed precondition, as on sled.
                compares.push(Compare::mod_revision(key.clone(), CompareOp::Greater, 0));
            }
            writes.push(match op {
                Op::Put { value, .. } => TxnOp::put(key.clone(), value.to_vec(), None),
                Op::Guard { .. } => TxnOp::put(key.clone(), Vec::new(), None),
                Op::Delete { .. } => TxnOp::delete(key.clone(), None),
            });
            reads.push(TxnOp::get(key, None));
        }
        // Every commit bumps one key, so the revision of the last change to our keys (a delete
        // included) is one quorum read away (`read.rs`).
        writes.push(TxnOp::put(inner.last_write_key(), Vec::new(), None));
        let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
        let mut kv = inner.client.kv_client();
        let done = inner.outcome(timeout(kv.txn(txn)).await)?;
        let revision = header_revision(done.header());
        if done.succeeded() {
            inner.saw(revision);
            return Ok(Committed {
                revisions: vec![revision; ops.len()],
                durable: Box::pin(std::future::ready(Ok(()))),
            });
        }
        // Which precondition failed, from the values read instead.
        for (op, response) in ops.iter().zip(done.op_responses()) {
            let TxnOpResponse::Get(got) = response else {
                continue;
            };
            let actual = got.kvs().first().map(|kv| kv.mod_revision() as Revision);
            let (holds, expected) = match op {
                Op::Put { precondition, .. } => (precondition.holds(actual), *precondition),
                Op::Delete { precondition, .. } => (
                    actual.is_some() && precondition.holds(actual),
                    *precondition,
                ),
                Op::Guard { at_most, .. } => (
                    actual.is_none_or(|a| a <= *at_most),
                    Precondition::Revision(*at_most),
                ),
            };
            if !holds {
                return Err(StoreError::PreconditionFailed {
                    key: op.key().clone(),
                    expected,
                    actual,
                });
            }
        }
        // The compared revisions changed between the transaction and our reads.
        Err(StoreError::PreconditionFailed {
            key: ops
                .first()
                .map(|o| o.key().clone())
                .unwrap_or_else(|| ObjectKey::new("", "", "")),
            expected: Precondition::None,
            actual: None,
        })
    }

    fn revision(&self) -> Revision {
        self.inner.revision.load(Ordering::Acquire)
    }

    async fn newest_in(&self, range: &KeyRange) -> Result<Revision, StoreError> {
        let inner = &self.inner;
        let start = inner.range_start(range);
        let newest = GetOptions::new()
            .with_range(prefix_end(&start))
            .with_sort(SortTarget::Mod, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let mut kv = inner.client.kv_client();
        let got = inner.outcome(timeout(kv.get(start, Some(newest))).await)?;
        Ok(got
            .kvs()
            .first()
            .map_or(0, |kv| kv.mod_revision().max(0) as Revision))
    }

    fn oldest_watchable(&self) -> Revision {
        self.inner.history.oldest()
    }

    fn watch(&self, after: Revision) -> Result<EventStream, StoreError> {
        Ok(self.inner.history.subscribe(after)?.into_stream())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every acknowledged commit is already on a quorum of etcd's disks.
        Ok(())
    }

    fn failure(&self) -> Option<String> {
        // An etcd outage passes; nothing in this process is to be distrusted for it.
        None
    }

    fn shared(&self) -> bool {
        true
    }

    fn ready(&self) -> Result<(), String> {
        match lock(&self.inner.trouble).as_ref() {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn max_commit_ops(&self) -> usize {
        // etcd's default `--max-txn-ops`; a larger transaction is refused whole.
        128
    }

    fn leadership(&self) -> Leadership {
        Leadership::new(self.inner.leading.clone())
    }

    fn advertise(&self, contact: String) {
        self.inner.contact.send_replace(contact);
    }

    fn leader_contact(&self) -> Option<Arc<str>> {
        lock(&self.inner.leader_contact).clone()
    }

    async fn resign(&self) {
        self.inner.resign.notify_one();
        // The election revokes the lease (bounded) and then says it no longer leads.
        let mut leading = self.inner.leading.clone();
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, leading.wait_for(|l| !*l)).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
pub(crate) mod tests;
