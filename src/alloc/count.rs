//! Exact address counts (0 ..= 2^128) and the utilization percentage.
//!
//! A `::/0` pool holds 2^128 addresses, one more than `u128::MAX`, so counts carry an
//! extra "full" flag instead of being rounded or saturated.

use std::fmt;

/// An exact count of addresses, 0 ..= 2^128.
///
/// Invariant: `full` is true only for exactly 2^128, and then `low` is 0, so the
/// derived ordering (`full` first, then `low`) is the numeric ordering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressCount {
    /// true only for 2^128 (the size of ::/0).
    full: bool,
    low: u128,
}

impl AddressCount {
    pub const ZERO: AddressCount = AddressCount {
        full: false,
        low: 0,
    };
    /// 2^128, the number of addresses in `::/0`.
    pub const TWO_POW_128: AddressCount = AddressCount { full: true, low: 0 };

    /// A count that fits in a `u128`.
    pub const fn new(count: u128) -> Self {
        AddressCount {
            full: false,
            low: count,
        }
    }

    /// 2^`exponent`; `None` when `exponent` > 128.
    pub const fn pow2(exponent: u32) -> Option<Self> {
        match exponent {
            0..=127 => Some(AddressCount::new(1 << exponent)),
            128 => Some(AddressCount::TWO_POW_128),
            _ => None,
        }
    }

    /// Number of addresses in the inclusive range `first ..= last` (`first <= last`).
    pub(crate) const fn inclusive_range(first: u128, last: u128) -> Self {
        let minus_one = last - first;
        if minus_one == u128::MAX {
            AddressCount::TWO_POW_128
        } else {
            AddressCount::new(minus_one + 1)
        }
    }

    /// The count as a `u128`, or `None` for 2^128.
    pub const fn to_u128(self) -> Option<u128> {
        if self.full {
            None
        } else {
            Some(self.low)
        }
    }

    pub const fn is_zero(self) -> bool {
        !self.full && self.low == 0
    }

    /// `self + other`, or `None` when the sum exceeds 2^128.
    pub const fn checked_add(self, other: Self) -> Option<Self> {
        if self.full || other.full {
            return if self.is_zero() || other.is_zero() {
                Some(AddressCount::TWO_POW_128)
            } else {
                None
            };
        }
        match self.low.checked_add(other.low) {
            Some(sum) => Some(AddressCount::new(sum)),
            // The true sum is 2^128 + wrapped; only wrapped == 0 is representable.
            None if self.low.wrapping_add(other.low) == 0 => Some(AddressCount::TWO_POW_128),
            None => None,
        }
    }

    /// `self - other`, or `None` when `other > self`.
    pub const fn checked_sub(self, other: Self) -> Option<Self> {
        match (self.full, other.full) {
            (true, true) => Some(AddressCount::ZERO),
            (false, true) => None,
            (true, false) if other.low == 0 => Some(AddressCount::TWO_POW_128),
            (true, false) => Some(AddressCount::new(0u128.wrapping_sub(other.low))),
            (false, false) => match self.low.checked_sub(other.low) {
                Some(diff) => Some(AddressCount::new(diff)),
                None => None,
            },
        }
    }

    /// `self + other`, clamped to 2^128.
    pub const fn saturating_add(self, other: Self) -> Self {
        match self.checked_add(other) {
            Some(sum) => sum,
            None => AddressCount::TWO_POW_128,
        }
    }

    /// `self - other`, clamped to 0.
    pub const fn saturating_sub(self, other: Self) -> Self {
        match self.checked_sub(other) {
            Some(diff) => diff,
            None => AddressCount::ZERO,
        }
    }

    /// `self * factor` as a 256-bit number `(high, low)`; never overflows.
    fn widening_mul(self, factor: u64) -> (u128, u128) {
        if self.full {
            return (u128::from(factor), 0);
        }
        let factor = u128::from(factor);
        let low_half = (self.low & u128::from(u64::MAX)) * factor;
        let high_half = (self.low >> 64) * factor;
        let (low, carry) = low_half.overflowing_add(high_half << 64);
        ((high_half >> 64) + u128::from(carry), low)
    }
}

impl From<u128> for AddressCount {
    fn from(count: u128) -> Self {
        AddressCount::new(count)
    }
}

impl fmt::Display for AddressCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.full {
            f.write_str("340282366920938463463374607431768211456")
        } else {
            write!(f, "{}", self.low)
        }
    }
}

/// `floor(used / total * 10_000)` clamped to 0 ..= 10_000, i.e. hundredths of a percent
/// rounded down, computed exactly even when the counts are near 2^128.
pub(crate) fn basis_points_floor(used: AddressCount, total: AddressCount) -> u64 {
    if total.is_zero() {
        return 0;
    }
    let scaled_used = used.widening_mul(10_000);
    // Largest q in 0..=10_000 with q * total <= used * 10_000 (monotone in q).
    let (mut low, mut high) = (0u64, 10_000u64);
    while low < high {
        let mid = (low + high).div_ceil(2);
        if total.widening_mul(mid) <= scaled_used {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

/// Formats hundredths of a percent as `"12.50%"`.
pub(crate) fn format_basis_points(basis_points: u64) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}
