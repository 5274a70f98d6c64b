//! In-memory indexes over the stored IPPrefixes, rebuilt from storage at start and changed only
//! inside write transactions (with undo), so they always match what is committed.
use crate::alloc::{Pool, Reserve};
use crate::api::{IPPrefix, ReserveSpec};
use crate::error::{ApiError, ApiResult};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};

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
    /// Roots (no parentRef) by name: roots may not overlap.
    pub roots: BTreeMap<String, IpNet>,
    /// Released IPPrefixes by the claim (namespace, name) they wait for, for rebinding.
    pub released: HashMap<(String, String), String>,
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

pub fn parse_stored(prefix: &IPPrefix) -> ApiResult<IpNet> {
    prefix.spec.prefix.parse().map_err(|_| {
        ApiError::Internal(format!(
            "stored ipprefix {:?} has a damaged spec.prefix",
            prefix.metadata.name
        ))
    })
}

impl State {
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

    pub fn pool_entry_mut(&mut self, name: &str) -> Option<&mut PoolEntry> {
        self.pools.get_mut(name)
    }

    /// Number of direct children of the IPPrefix `name`.
    pub fn children(&self, name: &str) -> usize {
        self.pools.get(name).map_or(0, |p| p.pool.allocated_count())
    }

    /// Forget a pool (its IPPrefix is gone).
    pub fn drop_pool(&mut self, name: &str) -> Option<PoolEntry> {
        self.pools.remove(name)
    }

    pub fn insert_pool(&mut self, name: String, entry: PoolEntry) {
        self.pools.insert(name, entry);
    }

    /// Rebuild every index from the stored IPPrefixes, checking that the children of each parent
    /// are consistent (inside, no overlaps, not excluded) instead of trusting storage.
    pub fn rebuild(prefixes: &[IPPrefix]) -> Result<State, String> {
        let mut state = State::default();
        let by_name: HashMap<&str, &IPPrefix> = prefixes
            .iter()
            .filter_map(|p| Some((p.metadata.name.as_deref()?, p)))
            .collect();
        let mut children: HashMap<&str, Vec<(IpNet, String)>> = HashMap::new();
        for p in prefixes {
            let name = p.metadata.name.clone().unwrap_or_default();
            let net: IpNet = p
                .spec
                .prefix
                .parse()
                .map_err(|_| format!("ipprefix {name:?}: damaged spec.prefix"))?;
            match &p.spec.parent_ref {
                Some(parent) => children
                    .entry(parent.name.as_str())
                    .or_default()
                    .push((net, name.clone())),
                None => {
                    state.roots.insert(name.clone(), net);
                }
            }
            if p.phase() == crate::api::prefix_phase::RELEASED {
                if let Some(c) = &p.spec.claim_ref {
                    state
                        .released
                        .insert((c.namespace.clone(), c.name.clone()), name.clone());
                }
            }
        }
        for (parent_name, kids) in children {
            let parent = by_name.get(parent_name).ok_or_else(|| {
                format!(
                    "ipprefixes {:?} name missing parent {parent_name:?}",
                    kids.iter().map(|k| &k.1).collect::<Vec<_>>()
                )
            })?;
            let net: IpNet = parent
                .spec
                .prefix
                .parse()
                .map_err(|_| format!("ipprefix {parent_name:?}: damaged spec.prefix"))?;
            let pool = Pool::rebuild(
                net,
                &exclusions_of(parent),
                reserve_of(parent.spec.reserve.as_ref()),
                kids.iter().map(|k| k.0),
            )
            .map_err(|e| format!("children of ipprefix {parent_name:?} are inconsistent: {e}"))?;
            let holders = kids.into_iter().collect();
            state
                .pools
                .insert(parent_name.to_string(), PoolEntry { pool, holders });
        }
        Ok(state)
    }
}
