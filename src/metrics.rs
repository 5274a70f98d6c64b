//! Process-wide Prometheus metrics: one registry, created on first use, that the HTTP layer,
//! the registry and the store record into; `/metrics` encodes it (`crate::http::metrics`).
//!
//! A global rather than a handle threaded through every layer: recording is a relaxed atomic
//! add, and the layers that record (the store thread, allocation code) have no other
//! reason to share state.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
    /// `ipprefixes`, `ipprefixclaims`, or a non-resource group (`discovery`, `openapi`, ...).
    pub resource: &'static str,
    /// `status` or empty.
    pub subresource: &'static str,
    pub code: u16,
}

/// Why the server closed a connection that had no request in flight.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    /// `idle_timeout`, or `evicted`: the oldest idle connection, closed to admit a new one at
    /// the connection limit.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RootLabels {
    pub name: String,
    pub prefix: String,
    /// Roots of different address spaces may hold the same prefix.
    pub address_space: String,
}

/// An IPPrefix with children: its name is unique whatever its address space.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrefixLabels {
    pub name: String,
    pub prefix: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Blocks handed out (claims bound, static carves), counted when their commit applies.
    pub allocations: Counter,
    /// Blocks returned to their parent.
    pub releases: Counter,
    /// Claims refused because no parent had room (409 Exhausted).
    pub exhaustions: Counter,
    /// Creates and deletes this replica sent to the leader, which answered them (etcd).
    pub forwarded_writes: Counter,
    /// Creates and deletes this replica decided itself because the leader could not be
    /// reached (etcd).
    pub forwards_not_sent: Counter,
    /// Commits made durable by one fsync (group commit).
    pub commit_batch: Histogram,
    /// Time one group-commit fsync takes.
    pub fsync_seconds: Histogram,
    pub fsync_failures: Counter,
    /// Time a write queued for the registry's writer lock, which allocation and commit hold
    /// one write at a time.
    pub writer_lock_wait: Histogram,
    /// Time a committed write then waited until the store made it durable: the group
    /// commit's window, the fsync, and the wake-up. With the lock wait, most of a create's
    /// latency under load.
    pub durable_wait: Histogram,
    /// Kubernetes Events not written because the recorder's queue was full (cluster mode).
    pub events_dropped: Counter,
    /// SubjectAccessReviews sent to the cluster (cluster mode; answers from the cache are not
    /// counted): the load authorization puts on kube-apiserver.
    pub access_reviews: Counter,
    /// Audit events written to the audit log.
    pub audit_events: Counter,
    /// Audit events dropped because the writer's queue was full.
    pub audit_events_dropped: Counter,
    /// Audit events (or buffered batches) a failing write lost, e.g. on a full disk.
    pub audit_write_failures: Counter,
    /// Per root IPPrefix: (allocated + excluded) / total, refreshed at every scrape.
    pub root_utilization: Family<RootLabels, Gauge<f64, AtomicU64>>,
    pub root_children: Family<RootLabels, Gauge>,
    /// TLS connections open (admitted, not yet closed).
    pub open_connections: Gauge,
    /// Connections closed at once on accept: at the limit with none idle to close instead.
    pub refused_connections: Counter,
    pub closed_connections: Family<ClosedLabels, Counter>,
    /// Per IPPrefix that has children, for the most utilized [`Metrics::prefix_series_limit`]
    /// of them, refreshed at every scrape: (allocated + excluded) / total.
    pub prefix_utilization: Family<PrefixLabels, Gauge<f64, AtomicU64>>,
    /// The shortest prefix length still allocatable (family length + 1 when nothing is).
    pub prefix_largest_free: Family<PrefixLabels, Gauge>,
    pub prefix_children: Family<PrefixLabels, Gauge>,
    /// `spec.defaultPrefixLength` of those IPPrefixes that set it.
    pub prefix_default_length: Family<PrefixLabels, Gauge>,
    /// IPPrefixes with children left out of the per-prefix series by the bound.
    pub prefix_series_omitted: Gauge,
    /// 1 while this replica does the work done once across replicas (always, on sled).
    pub leader: Gauge,
    prefix_series_limit: AtomicUsize,
}

/// The default bound on per-IPPrefix series (`--metrics-prefix-series`).
pub const DEFAULT_PREFIX_SERIES: usize = 1000;

fn latency_histogram() -> Histogram {
    // 100 µs … ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// For the stages inside a write: an uncontended lock takes well under 100 µs.
fn stage_histogram() -> Histogram {
    // 10 µs … ~2.6 s.
    Histogram::new(exponential_buckets(0.00001, 2.0, 19))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ipam");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration: Family<RequestLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let allocations = Counter::default();
        let releases = Counter::default();
        let exhaustions = Counter::default();
        let forwarded_writes = Counter::default();
        let forwards_not_sent = Counter::default();
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let fsync_seconds = latency_histogram();
        let fsync_failures = Counter::default();
        let writer_lock_wait = stage_histogram();
        let durable_wait = stage_histogram();
        let events_dropped = Counter::default();
        let leader = Gauge::default();
        let access_reviews = Counter::default();
        let audit_events = Counter::default();
        let audit_events_dropped = Counter::default();
        let audit_write_failures = Counter::default();
        let root_utilization = Family::<RootLabels, Gauge<f64, AtomicU64>>::default();
        let root_children = Family::<RootLabels, Gauge>::default();
        let open_connections = Gauge::default();
        let refused_connections = Counter::default();
        let closed_connections = Family::<ClosedLabels, Counter>::default();
        let prefix_utilization = Family::<PrefixLabels, Gauge<f64, AtomicU64>>::default();
        let prefix_largest_free = Family::<PrefixLabels, Gauge>::default();
        let prefix_children = Family::<PrefixLabels, Gauge>::default();
        let prefix_default_length = Family::<PrefixLabels, Gauge>::default();
        let prefix_series_omitted = Gauge::default();
        registry.register(
            "apiserver_requests",
            "HTTP requests by verb, resource, subresource and code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Request latency by verb, resource, subresource and code (watches excluded)",
            request_duration.clone(),
        );
        registry.register(
            "allocations",
            "Blocks handed out from a parent IPPrefix",
            allocations.clone(),
        );
        registry.register(
            "releases",
            "Blocks returned to their parent IPPrefix",
            releases.clone(),
        );
        registry.register(
            "exhaustions",
            "Claims refused because no parent had room",
            exhaustions.clone(),
        );
        registry.register(
            "forwarded_writes",
            "Creates and deletes this replica sent to the leader to be decided and committed there (etcd)",
            forwarded_writes.clone(),
        );
        registry.register(
            "forwards_not_sent",
            "Creates and deletes this replica decided itself because the leader could not be reached (etcd)",
            forwards_not_sent.clone(),
        );
        registry.register(
            "store_commit_batch_size",
            "Commits made durable together: by one fsync on sled, by one transaction on etcd",
            commit_batch.clone(),
        );
        registry.register(
            "store_fsync_duration_seconds",
            "Duration of one group-commit fsync",
            fsync_seconds.clone(),
        );
        registry.register(
            "store_fsync_failures",
            "Failed fsyncs (an I/O error fences the store; a lack of file descriptors or memory fails only the commits it covered)",
            fsync_failures.clone(),
        );
        registry.register(
            "registry_writer_lock_wait_seconds",
            "Time a write queued for the registry's writer lock",
            writer_lock_wait.clone(),
        );
        registry.register(
            "store_durable_wait_seconds",
            "Time from a write's commit until the store made it durable (group-commit window, fsync, wake-up)",
            durable_wait.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads: it refreshes parent status, frees expired retention, writes Released events and compacts etcd",
            leader.clone(),
        );
        registry.register(
            "events_dropped",
            "Kubernetes Events on claims dropped because the recorder's queue was full",
            events_dropped.clone(),
        );
        registry.register(
            "subject_access_reviews",
            "SubjectAccessReviews sent to the cluster (cached answers not counted)",
            access_reviews.clone(),
        );
        registry.register(
            "audit_events",
            "Audit events written to the audit log",
            audit_events.clone(),
        );
        registry.register(
            "audit_events_dropped",
            "Audit events dropped because the audit log's writer was behind",
            audit_events_dropped.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit log writes that failed (e.g. a full disk); their events are lost",
            audit_write_failures.clone(),
        );
        registry.register(
            "root_prefix_utilization_ratio",
            "(allocated + excluded) / total addresses of each root IPPrefix",
            root_utilization.clone(),
        );
        registry.register(
            "root_prefix_children",
            "Direct children of each root IPPrefix",
            root_children.clone(),
        );
        registry.register(
            "apiserver_open_connections",
            "TLS connections open",
            open_connections.clone(),
        );
        registry.register(
            "apiserver_refused_connections",
            "Connections closed on accept: at --max-connections with none idle to close instead",
            refused_connections.clone(),
        );
        registry.register(
            "apiserver_closed_idle_connections",
            "Connections without a request in flight closed by the server, by reason",
            closed_connections.clone(),
        );
        registry.register(
            "prefix_utilization_ratio",
            "(allocated + excluded) / total addresses of each IPPrefix that has children (the most utilized, up to --metrics-prefix-series)",
            prefix_utilization.clone(),
        );
        registry.register(
            "prefix_largest_free_prefix_length",
            "Shortest prefix length still allocatable in each IPPrefix that has children (33 / 129 when nothing is)",
            prefix_largest_free.clone(),
        );
        registry.register(
            "prefix_children",
            "Direct children of each IPPrefix that has children",
            prefix_children.clone(),
        );
        registry.register(
            "prefix_default_prefix_length",
            "spec.defaultPrefixLength of each IPPrefix with children that sets it (alerts compare the largest free block with it)",
            prefix_default_length.clone(),
        );
        registry.register(
            "prefix_series_omitted",
            "IPPrefixes with children left out of the per-prefix series by --metrics-prefix-series",
            prefix_series_omitted.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            allocations,
            releases,
            exhaustions,
            forwarded_writes,
            forwards_not_sent,
            commit_batch,
            fsync_seconds,
            fsync_failures,
            writer_lock_wait,
            durable_wait,
            events_dropped,
            access_reviews,
            audit_events,
            audit_events_dropped,
            audit_write_failures,
            root_utilization,
            root_children,
            open_connections,
            refused_connections,
            closed_connections,
            prefix_utilization,
            prefix_largest_free,
            prefix_children,
            prefix_default_length,
            prefix_series_omitted,
            leader,
            prefix_series_limit: AtomicUsize::new(DEFAULT_PREFIX_SERIES),
        }
    }

    /// How many IPPrefixes get per-prefix series (the most utilized first).
    pub fn prefix_series_limit(&self) -> usize {
        self.prefix_series_limit.load(Ordering::Relaxed)
    }

    pub fn set_prefix_series_limit(&self, limit: usize) {
        self.prefix_series_limit.store(limit, Ordering::Relaxed);
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
