//! In-memory indexes over the stored IPPrefixes, rebuilt from storage at start and changed only
//! inside write transactions (with undo), so they always match what is committed.
use super::txn::Stored;
use crate::alloc::{Pool, Reserve};
use crate::api::{IPPrefix, ReserveSpec};
use crate::error::{ApiError, ApiResult};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The allocator of one parent IPPrefix, and who holds each allocated block.
pub struct PoolEntry {
    pub pool: Pool,
    /// Allocated block → name of the child IPPrefix holding it (to name it in a 409).
    pub holders: HashMap<IpNet, String>,
}

#[derive(Default)]
pub struct State {
    /// Pools of IPPrefixes that have (or just had) children; others are built on demand.
    pools: HashMap<String, PoolEntry>,
    /// Roots (no parentRef): roots of one address space may not overlap.
    pub roots: Roots,
    /// Released IPPrefixes by the claim (namespace, name) they wait for, for rebinding.
    pub released: HashMap<(String, String), String>,
    /// IPPrefixes whose stored status no longer counts their children, and a wake-up for the
    /// task that writes them (see [`State::mark_status_stale`]). Not undone with a failed
    /// transaction: a needless refresh finds nothing changed and writes nothing.
    stale_status: BTreeSet<String>,
    status_stale: Arc<tokio::sync::Notify>,
    /// Parents as stored, decoded: every claim create reads its parent under the writer lock,
    /// and decoding it from JSON there cost more than the allocation. Filled by
    /// [`Txn::get_parent`](super::txn::Txn::get_parent); a transaction that writes an IPPrefix
    /// drops its entry first, so an entry's spec and metadata are never older than the stored
    /// ones. Its status and revision may be: the status writer keeps the entry
    /// ([`Txn::put_status`](super::txn::Txn::put_status)).
    pub(super) parents: HashMap<String, Stored<IPPrefix>>,
    /// Child IPPrefixes not in phase Bound (static carves, Released blocks), so that what holds
    /// a deleting claim (its Bound descendants) is known without reading them; few, unlike
    /// the Bound ones. See `release.rs`.
    unbound: std::collections::HashSet<String>,
    /// When Released IPPrefixes are due to be freed (`status.retainedUntil`).
    pub expiries: Expiries,
    /// How current these indexes are, for the guards of each commit on a shared store.
    pub guards: super::guards::Guards,
    /// Creates waiting to be committed together, on a shared store (see `group.rs`).
    pub group: super::group::Group,
}

/// A root IPPrefix: its block and its address space (`None` = the shared one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub net: IpNet,
    pub space: Option<String>,
}

/// The deadlines of Released IPPrefixes, earliest first, so the expiry task sleeps until the
/// next one instead of scanning every IPPrefix. Changed inside transactions, with undo.
#[derive(Default)]
pub struct Expiries {
    /// (deadline in Unix seconds, IPPrefix name).
    due: BTreeSet<(i64, String)>,
    by_name: HashMap<String, i64>,
    /// Past their deadline but still parents of children: freed when their last child goes.
    pub waiting: std::collections::HashSet<String>,
    /// Wakes the expiry task when an earlier deadline arrives.
    changed: Arc<tokio::sync::Notify>,
}

impl Expiries {
    /// Schedule `name` at `at` (replacing an earlier schedule). Returns the previous deadline.
    pub fn insert(&mut self, name: &str, at: i64) -> Option<i64> {
        let old = self.remove(name);
        self.due.insert((at, name.to_string()));
        self.by_name.insert(name.to_string(), at);
        self.changed.notify_one();
        old
    }

    /// Forget `name`'s deadline. Returns it.
    pub fn remove(&mut self, name: &str) -> Option<i64> {
        let at = self.by_name.remove(name)?;
        self.due.remove(&(at, name.to_string()));
        Some(at)
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<i64> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Up to `limit` names due at or before `now`, earliest first.
    pub fn due(&self, now: i64, limit: usize) -> Vec<(i64, String)> {
        self.due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }
}

pub fn reserve_of(spec: Option<&ReserveSpec>) -> Reserve {
    let n = |v: Option<i64>| u128::try_from(v.unwrap_or(0)).unwrap_or(0);
    spec.map(|r| Reserve {
        leading: n(r.leading),
        trailing: n(r.trailing),
    })
    .unwrap_or_default()
}

/// Parsed `spec.exclude`; stored objects were validated, so junk is skipped rather than fatal.
pub fn exclusions_of(prefix: &IPPrefix) -> Vec<IpNet> {
    prefix
        .spec
        .exclude
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect()
}

/// A fresh pool for an IPPrefix with no children.
pub fn new_pool(prefix: &IPPrefix) -> ApiResult<Pool> {
    let net = parse_stored(prefix)?;
    Pool::new(
        net,
        &exclusions_of(prefix),
        reserve_of(prefix.spec.reserve.as_ref()),
    )
    .map_err(|e| ApiError::Internal(format!("ipprefix {:?}: {e}", prefix.metadata.name)))
}

/// The pool of an IPPrefix with the given children, checked as at start: what a client that
/// listed the children (`kubectl ipam`) computes free blocks and utilization from, with the
/// server's own allocator.
pub fn pool_with_children(
    prefix: &IPPrefix,
    children: impl IntoIterator<Item = IpNet>,
) -> Result<Pool, String> {
    let name = prefix.metadata.name.as_deref().unwrap_or_default();
    let net = prefix
        .spec
        .prefix
        .parse()
        .map_err(|_| format!("ipprefix {name:?} has an invalid spec.prefix"))?;
    Pool::rebuild(
        net,
        &exclusions_of(prefix),
        reserve_of(prefix.spec.reserve.as_ref()),
        children,
    )
    .map_err(|e| format!("ipprefix {name:?}: {e}"))
}

pub fn parse_stored(prefix: &IPPrefix) -> ApiResult<IpNet> {
    prefix.spec.prefix.parse().map_err(|_| {
        ApiError::Internal(format!(
            "stored ipprefix {:?} has a damaged spec.prefix",
            prefix.metadata.name
        ))
    })
}

/// The root IPPrefixes, by name and by block.
#[derive(Default)]
pub struct Roots {
    by_name: BTreeMap<String, Root>,
    /// Block → names: finds the roots containing an address in at most 129 lookups
    /// whatever their number (several when address spaces overlap).
    by_net: HashMap<IpNet, BTreeSet<String>>,
}

impl Roots {
    pub fn insert(&mut self, name: String, root: Root) {
        let net = root.net;
        if let Some(old) = self.by_name.insert(name.clone(), root) {
            self.forget(&name, old.net);
        }
        self.by_net.entry(net).or_default().insert(name);
    }

    pub fn remove(&mut self, name: &str) -> Option<Root> {
        let root = self.by_name.remove(name)?;
        self.forget(name, root.net);
        Some(root)
    }

    fn forget(&mut self, name: &str, net: IpNet) {
        if let Some(names) = self.by_net.get_mut(&net) {
            names.remove(name);
            if names.is_empty() {
                self.by_net.remove(&net);
            }
        }
    }

    /// Every root, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Root)> {
        self.by_name.iter()
    }

    /// The roots whose block contains `net`, widest first.
    pub fn containing(&self, net: IpNet) -> impl Iterator<Item = &String> + '_ {
        (0..=net.prefix_len())
            .filter_map(move |len| IpNet::new(net.addr(), len).ok().map(|n| n.trunc()))
            .filter_map(|n| self.by_net.get(&n))
            .flatten()
    }
}

impl State {
    /// The names of the IPPrefixes whose block contains `net`, each root first and then down
    /// through the children (one chain per address space), in O(depth × log n).
    pub fn containing_chain(&self, net: IpNet) -> Vec<String> {
        let mut chain = Vec::new();
        for root in self.roots.containing(net) {
            let mut name = root;
            loop {
                chain.push(name.clone());
                let Some(entry) = self.pools.get(name) else {
                    break;
                };
                let Some(child) = entry
                    .pool
                    .allocated_containing(net)
                    .and_then(|block| entry.holders.get(&block))
                else {
                    break;
                };
                name = child;
            }
        }
        chain
    }

    pub fn pool(&self, name: &str) -> Option<&PoolEntry> {
        self.pools.get(name)
    }

    /// The pool of `parent`, created from its spec on first use.
    pub fn pool_mut(&mut self, parent: &IPPrefix) -> ApiResult<&mut PoolEntry> {
        let name = parent.metadata.name.clone().unwrap_or_default();
        if !self.pools.contains_key(&name) {
            let pool = new_pool(parent)?;
            self.pools.insert(
                name.clone(),
                PoolEntry {
                    pool,
                    holders: HashMap::new(),
                },
            );
        }
        Ok(self.pools.get_mut(&name).expect("inserted above"))
    }

    /// Every pool: the IPPrefixes that have (or just had) children, by name.
    pub fn pools(&self) -> impl Iterator<Item = (&String, &PoolEntry)> {
        self.pools.iter()
    }

    pub fn pool_entry_mut(&mut self, name: &str) -> Option<&mut PoolEntry> {
        self.pools.get_mut(name)
    }

    /// Number of direct children of the IPPrefix `name`.
    pub fn children(&self, name: &str) -> usize {
        self.pools.get(name).map_or(0, |p| p.pool.allocated_count())
    }

    /// `name`'s children changed: its stored status is out of date. The status writer
    /// ([`Registry::write_stale_statuses`](super::Registry)) stores it right after, batching a
    /// burst of changes into one write per prefix (`status::STATUS_BATCH_PERIOD`). Allocation
    /// never reads the stored status, only the pool, so nothing waits for it.
    pub fn mark_status_stale(&mut self, name: &str) {
        if !self.stale_status.contains(name) {
            self.stale_status.insert(name.to_string());
        }
        self.status_stale.notify_one();
    }

    /// The IPPrefixes marked stale since the last call.
    pub fn take_stale_statuses(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.stale_status)
    }

    /// Notified whenever a status becomes stale.
    pub fn status_stale(&self) -> Arc<tokio::sync::Notify> {
        self.status_stale.clone()
    }

    /// Whether the child IPPrefix `name` is in phase Bound.
    pub fn is_bound(&self, name: &str) -> bool {
        !self.unbound.contains(name)
    }

    /// Record whether the child `name` is Bound; returns whether that changed anything.
    pub fn set_bound(&mut self, name: &str, bound: bool) -> bool {
        if bound {
            self.unbound.remove(name)
        } else {
            self.unbound.insert(name.to_string())
        }
    }

    /// Forget a pool (its IPPrefix is gone).
    pub fn drop_pool(&mut self, name: &str) -> Option<PoolEntry> {
        self.pools.remove(name)
    }

    pub fn insert_pool(&mut self, name: String, entry: PoolEntry) {
        self.pools.insert(name, entry);
    }

    /// Take `fresh`'s indexes (rebuilt from a list at `revision`), keeping who waits on these:
    /// the status writer, the expiry task and the guards' followers.
    pub fn replace_indexes(&mut self, mut fresh: State, revision: crate::store::Revision) {
        fresh.status_stale = self.status_stale.clone();
        fresh.expiries.changed = self.expiries.changed.clone();
        fresh.guards = std::mem::take(&mut self.guards);
        fresh.guards.reset(revision);
        fresh.group = std::mem::take(&mut self.group);
        *self = fresh;
        self.status_stale.notify_one();
        self.expiries.changed.notify_one();
    }

    /// Rebuild every index from the stored IPPrefixes, checking that the children of each parent
    /// are consistent (inside, no overlaps, not excluded) instead of trusting storage.
    pub fn rebuild(entries: Vec<IndexEntry>) -> Result<State, String> {
        let mut state = State::default();
        // Only parents need their exclusions and reserve; there are few of them.
        let parent_names: std::collections::HashSet<&str> =
            entries.iter().filter_map(|e| e.parent.as_deref()).collect();
        let parents: HashMap<String, (IpNet, Vec<IpNet>, Reserve)> = entries
            .iter()
            .filter(|e| parent_names.contains(e.name.as_str()))
            .map(|e| (e.name.clone(), (e.net, e.exclude.clone(), e.reserve)))
            .collect();
        drop(parent_names);
        let mut children: HashMap<String, Vec<(IpNet, String)>> = HashMap::new();
        for e in entries {
            // Status is written shortly after the children change (`mark_status_stale`); a
            // stop in between leaves it behind. Parents are checked again at start.
            if e.stored_children != 0 {
                state.mark_status_stale(&e.name);
            }
            if let Some(claim) = e.released_for {
                state.released.insert(claim, e.name.clone());
            }
            if e.parent.is_some() && !e.bound {
                state.unbound.insert(e.name.clone());
            }
            if let Some(at) = e.retained_until {
                state.expiries.insert(&e.name, at);
            }
            match e.parent {
                Some(parent) => match children.get_mut(&parent) {
                    Some(kids) => kids.push((e.net, e.name)),
                    None => {
                        children.insert(parent, vec![(e.net, e.name)]);
                    }
                },
                None => {
                    state.roots.insert(
                        e.name,
                        Root {
                            net: e.net,
                            space: e.address_space,
                        },
                    );
                }
            }
        }
        for (parent_name, kids) in children {
            let (net, exclude, reserve) = parents.get(&parent_name).ok_or_else(|| {
                format!(
                    "ipprefixes {:?} name missing parent {parent_name:?}",
                    kids.iter().take(10).map(|k| &k.1).collect::<Vec<_>>()
                )
            })?;
            let pool =
                Pool::rebuild(*net, exclude, *reserve, kids.iter().map(|k| k.0)).map_err(|e| {
                    format!("children of ipprefix {parent_name:?} are inconsistent: {e}")
                })?;
            let holders = kids.into_iter().collect();
            state.mark_status_stale(&parent_name);
            state.pools.insert(parent_name, PoolEntry { pool, holders });
        }
        Ok(state)
    }
}

/// What the indexes need of one stored IPPrefix.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub name: String,
    pub net: IpNet,
    pub parent: Option<String>,
    pub exclude: Vec<IpNet>,
    pub reserve: Reserve,
    /// The claim (namespace, name) a `Released` prefix waits for.
    pub released_for: Option<(String, String)>,
    /// Whether it is in phase Bound.
    pub bound: bool,
    /// `status.children` as stored: a prefix that had children when the process stopped may
    /// have a status to bring up to date.
    pub stored_children: i64,
    /// `status.retainedUntil` of a Released prefix, in Unix seconds.
    pub retained_until: Option<i64>,
    pub address_space: Option<String>,
}

impl IndexEntry {
    pub fn of(p: &IPPrefix) -> Result<IndexEntry, String> {
        let name = p.metadata.name.clone().unwrap_or_default();
        let net = p
            .spec
            .prefix
            .parse()
            .map_err(|_| format!("ipprefix {name:?}: damaged spec.prefix"))?;
        // A Delete prefix is Released only while a finalizer keeps it: never rebound.
        let retained = p.spec.reclaim_policy.as_deref() != Some("Delete");
        let released_for = (p.phase() == crate::api::prefix_phase::RELEASED && retained)
            .then(|| {
                p.spec
                    .claim_ref
                    .as_ref()
                    .map(|c| (c.namespace.clone(), c.name.clone()))
            })
            .flatten();
        let retained_until = p
            .status
            .as_ref()
            .and_then(|s| s.retained_until.as_ref())
            .filter(|_| released_for.is_some())
            .map(|t| t.0.as_second());
        Ok(IndexEntry {
            net,
            retained_until,
            address_space: p.spec.address_space.clone(),
            parent: p.spec.parent_ref.as_ref().map(|r| r.name.clone()),
            exclude: exclusions_of(p),
            reserve: reserve_of(p.spec.reserve.as_ref()),
            released_for,
            bound: p.phase() == crate::api::prefix_phase::BOUND,
            stored_children: p.status.as_ref().and_then(|s| s.children).unwrap_or(0),
            name,
        })
    }
}

/// Only what [`State::rebuild`] reads from a stored IPPrefix. Decoding the whole object
/// (ObjectMeta with its timestamps, the status strings) for each of 10^6 prefixes was most of
/// the restart time; serde skips the rest of the document cheaply.
#[derive(serde::Deserialize)]
struct IndexView {
    metadata: NameView,
    spec: crate::api::IPPrefixSpec,
    #[serde(default)]
    status: Option<PhaseView>,
}

#[derive(serde::Deserialize)]
struct NameView {
    name: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhaseView {
    phase: Option<String>,
    children: Option<i64>,
    retained_until: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Decode a stored IPPrefix for the indexes: name, spec, phase and number of children only.
pub fn decode_for_index(bytes: &[u8]) -> Result<IndexEntry, String> {
    let view: IndexView =
        serde_json::from_slice(bytes).map_err(|e| format!("stored ipprefix is damaged: {e}"))?;
    let mut prefix = IPPrefix::new(&view.metadata.name.unwrap_or_default(), view.spec);
    prefix.status = view.status.map(|s| crate::api::IPPrefixStatus {
        phase: s.phase,
        children: s.children,
        retained_until: s.retained_until,
        ..Default::default()
    });
    IndexEntry::of(&prefix)
}
