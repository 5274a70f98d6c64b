//! The allocator: pure, synchronous, no I/O.
//!
//! A [`Pool`] is one parent prefix and everything carved out of it: allocated blocks,
//! exclusions (`spec.exclusions`) and edge reservations (`spec.reserve`). Callers
//! serialize access (one writer per pool); nothing here blocks or allocates per call
//! beyond the index updates. See `free_index.rs` for why allocate, allocate-exact and
//! release cost O(log n) whatever the number n of blocks already allocated.

mod constraints;
mod count;
mod free_index;
mod geometry;
mod pool;

#[cfg(test)]
mod constraint_tests;
#[cfg(test)]
mod model;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use count::AddressCount;
pub use pool::Pool;

use ipnet::IpNet;
use std::fmt;

/// Addresses kept back at the edges of a pool (`spec.reserve`): the first `leading`
/// and the last `trailing` addresses. Either may exceed the pool size, which then
/// reserves the whole pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Reserve {
    pub leading: u128,
    pub trailing: u128,
}

/// Address accounting of a pool; `available = total - allocated - excluded`, where
/// `excluded` counts each excluded or reserved address once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub total: AddressCount,
    pub allocated: AddressCount,
    pub excluded: AddressCount,
    pub available: AddressCount,
}

impl Capacity {
    /// `(allocated + excluded) / total` as a percentage with two decimals, rounded
    /// down so that `"100.00%"` means exactly full, e.g. `"12.50%"`.
    pub fn utilization(&self) -> String {
        let used = self.allocated.saturating_add(self.excluded);
        count::format_basis_points(count::basis_points_floor(used, self.total))
    }

    /// `(allocated + excluded) / total` as a number in 0.0 ..= 1.0 (for metrics and sorting).
    pub fn ratio(&self) -> f64 {
        let f = |n: AddressCount| n.to_u128().map_or(2f64.powi(128), |v| v as f64);
        let total = f(self.total);
        if total == 0.0 {
            return 0.0;
        }
        f(self.allocated.saturating_add(self.excluded)) / total
    }
}

/// What occupies addresses a request wanted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// An allocated block.
    Allocated(IpNet),
    /// One of the pool's exclusions (as written in the spec).
    Excluded(IpNet),
    /// The pool's leading or trailing reserved addresses.
    Reserved,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Allocated(block) => write!(f, "allocated block {block}"),
            Holder::Excluded(block) => write!(f, "excluded block {block}"),
            Holder::Reserved => f.write_str("the pool's reserved addresses (spec.reserve)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("{requested} is not the same IP family as pool {pool} ({family})", family = family_name(pool))]
    FamilyMismatch { pool: IpNet, requested: String },
    #[error("{}", length_out_of_range_message(*requested, *min, *max))]
    LengthOutOfRange { requested: u8, min: u8, max: u8 },
    #[error("{prefix} is not a canonical prefix (host bits set); did you mean {canonical}?")]
    NotCanonical { prefix: IpNet, canonical: IpNet },
    #[error("{prefix} is not inside pool {pool}")]
    OutsidePool { prefix: IpNet, pool: IpNet },
    #[error("{prefix} collides with {holder}")]
    Collision { prefix: IpNet, holder: Holder },
    #[error("{prefix} is not allocated in this pool")]
    NotAllocated { prefix: IpNet },
    #[error("no free /{requested_len}")]
    Exhausted {
        requested_len: u8,
        largest_free: Option<u8>,
    },
    #[error("{block} would cover allocated block {allocated}")]
    CoversAllocated { block: String, allocated: IpNet },
    #[error("allocated blocks {a} and {b} overlap")]
    Overlap { a: IpNet, b: IpNet },
}

fn family_name(pool: &IpNet) -> &'static str {
    geometry::Family::of(pool).name()
}

fn length_out_of_range_message(requested: u8, min: u8, max: u8) -> String {
    if min > max {
        format!("prefix length /{requested} cannot be allocated: the pool is a single address")
    } else {
        format!("prefix length /{requested} is out of range: must be between /{min} and /{max}")
    }
}
