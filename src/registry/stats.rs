//! Read-only figures from the allocation indexes, for `/metrics`.
use super::generic::Registry;
use super::state::new_pool;
use crate::api::IPPrefix;

/// How full one root IPPrefix is.
#[derive(Debug, Clone, PartialEq)]
pub struct RootUsage {
    pub name: String,
    pub prefix: String,
    /// The root's address space (`""` for the shared one): two roots may hold the same prefix.
    pub address_space: String,
    /// (allocated + excluded) / total, 0.0 ..= 1.0.
    pub utilization: f64,
    pub children: usize,
}

/// How full one IPPrefix with children is.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixUsage {
    pub name: String,
    pub prefix: String,
    /// (allocated + excluded) / total, 0.0 ..= 1.0.
    pub utilization: f64,
    /// The shortest length still allocatable; `None` when nothing is.
    pub largest_free: Option<u8>,
    /// The longest length of the prefix's family (32 or 128).
    pub max_len: u8,
    pub children: usize,
    /// `spec.defaultPrefixLength`, when the stored object sets it.
    pub default_length: Option<u8>,
}

impl Registry {
    /// The `limit` most utilized IPPrefixes that have children (ties by name), and how many
    /// others were left out. One pass over the pools under the lock, copying only those kept.
    pub async fn prefix_usage(&self, limit: usize) -> (Vec<PrefixUsage>, usize) {
        let state = self.lock().await;
        let mut all: Vec<(f64, &String, &super::state::PoolEntry)> = state
            .pools()
            .filter(|(_, e)| e.pool.allocated_count() > 0)
            .map(|(name, e)| (e.pool.capacity().ratio(), name, e))
            .collect();
        let most_first = |a: &(f64, &String, _), b: &(f64, &String, _)| {
            b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
        };
        let left_out = all.len().saturating_sub(limit);
        if left_out > 0 {
            all.select_nth_unstable_by(limit, most_first);
            all.truncate(limit);
        }
        all.sort_unstable_by(most_first);
        let kept: Vec<PrefixUsage> = all
            .into_iter()
            .map(|(utilization, name, e)| PrefixUsage {
                name: name.clone(),
                prefix: e.pool.prefix().to_string(),
                utilization,
                largest_free: e.pool.largest_free_prefix_len(),
                max_len: e.pool.prefix().max_prefix_len(),
                children: e.pool.allocated_count(),
                default_length: None,
            })
            .collect();
        drop(state);
        let mut kept = kept;
        for p in &mut kept {
            p.default_length = self.default_length(&p.name).await;
        }
        (kept, left_out)
    }

    /// `spec.defaultPrefixLength` as stored, read on its own (a scrape reads up to
    /// --metrics-prefix-series of them, so the rest of the object is not decoded).
    async fn default_length(&self, name: &str) -> Option<u8> {
        #[derive(serde::Deserialize)]
        struct View {
            spec: SpecView,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct SpecView {
            default_prefix_length: Option<u8>,
        }
        let stored = self
            .store()
            .get(&super::txn::Txn::key::<IPPrefix>("", name))
            .await
            .ok()??;
        serde_json::from_slice::<View>(&stored.value)
            .ok()?
            .spec
            .default_prefix_length
    }

    /// Every root IPPrefix (no parent) with its utilization, from the in-memory indexes.
    pub async fn root_usage(&self) -> Vec<RootUsage> {
        // (name, prefix, space, (utilization, children) when it has a pool)
        type Row = (String, String, String, Option<(f64, usize)>);
        let roots: Vec<Row> = {
            let state = self.lock().await;
            state
                .roots
                .iter()
                .map(|(name, root)| {
                    let usage = state
                        .pool(name)
                        .map(|e| (e.pool.capacity().ratio(), e.pool.allocated_count()));
                    let space = root.space.clone().unwrap_or_default();
                    (name.clone(), root.net.to_string(), space, usage)
                })
                .collect()
        };
        let mut usages = Vec::with_capacity(roots.len());
        for (name, prefix, address_space, usage) in roots {
            // A root without children has no pool yet: only its exclusions count.
            let (utilization, children) = match usage {
                Some(usage) => usage,
                None => {
                    let excluded = self
                        .get::<IPPrefix>("", &name)
                        .await
                        .ok()
                        .and_then(|p| new_pool(&p).ok())
                        .map_or(0.0, |pool| pool.capacity().ratio());
                    (excluded, 0)
                }
            };
            usages.push(RootUsage {
                name,
                prefix,
                address_space,
                utilization,
                children,
            });
        }
        usages
    }
}
