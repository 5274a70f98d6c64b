//! Read-only figures from the allocation indexes, for `/metrics`.
use super::generic::Registry;
use super::state::new_pool;
use crate::api::IPPrefix;

/// How full one root IPPrefix is.
#[derive(Debug, Clone, PartialEq)]
pub struct RootUsage {
    pub name: String,
    pub prefix: String,
    /// (allocated + excluded) / total, 0.0 ..= 1.0.
    pub utilization: f64,
    pub children: usize,
}

impl Registry {
    /// Every root IPPrefix (no parent) with its utilization, from the in-memory indexes.
    pub async fn root_usage(&self) -> Vec<RootUsage> {
        // (name, prefix, (utilization, children) when it has a pool)
        type Row = (String, String, Option<(f64, usize)>);
        let roots: Vec<Row> = {
            let state = self.lock().await;
            state
                .roots
                .iter()
                .map(|(name, net)| {
                    let usage = state
                        .pool(name)
                        .map(|e| (ratio(&e.pool.capacity()), e.pool.allocated_count()));
                    (name.clone(), net.to_string(), usage)
                })
                .collect()
        };
        let mut usages = Vec::with_capacity(roots.len());
        for (name, prefix, usage) in roots {
            // A root without children has no pool yet: only its exclusions count.
            let (utilization, children) = match usage {
                Some(usage) => usage,
                None => {
                    let excluded = self
                        .get::<IPPrefix>("", &name)
                        .await
                        .ok()
                        .and_then(|p| new_pool(&p).ok())
                        .map_or(0.0, |pool| ratio(&pool.capacity()));
                    (excluded, 0)
                }
            };
            usages.push(RootUsage {
                name,
                prefix,
                utilization,
                children,
            });
        }
        usages
    }
}

fn ratio(c: &crate::alloc::Capacity) -> f64 {
    let f = |n: crate::alloc::AddressCount| n.to_u128().map_or(2f64.powi(128), |v| v as f64);
    let total = f(c.total);
    if total == 0.0 {
        return 0.0;
    }
    f(c.allocated.saturating_add(c.excluded)) / total
}
