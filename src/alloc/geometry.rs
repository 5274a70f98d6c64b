//! Address arithmetic shared by both families.
//!
//! Every address is a `u128` (IPv4 in the low 32 bits); `max_len` (32 or 128) says
//! which family it belongs to. Ranges are inclusive so that the last address of
//! `::/0` (`u128::MAX`) needs no special case.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// An aligned block: `start` has no bits set below its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Block {
    pub start: u128,
    pub len: u8,
}

/// An inclusive address range `first ..= last` (`first <= last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Span {
    pub first: u128,
    pub last: u128,
}

impl Span {
    pub fn overlaps(self, other: Span) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Number of addresses in a block with `host_bits` host bits, minus one.
pub(crate) const fn size_minus_one(host_bits: u8) -> u128 {
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// The address family of a pool and the geometry that depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Family {
    /// 32 for IPv4, 128 for IPv6.
    pub max_len: u8,
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family { max_len: 32 },
            IpNet::V6(_) => Family { max_len: 128 },
        }
    }

    pub fn name(self) -> &'static str {
        if self.max_len == 32 {
            "IPv4"
        } else {
            "IPv6"
        }
    }

    /// The address bits of `net` (host bits included, as given).
    pub fn address(net: &IpNet) -> u128 {
        match net {
            IpNet::V4(v4) => u128::from(u32::from(v4.addr())),
            IpNet::V6(v6) => u128::from(v6.addr()),
        }
    }

    pub fn block_of(net: &IpNet) -> Block {
        Block {
            start: Family::address(net),
            len: net.prefix_len(),
        }
    }

    /// Last address of the aligned block `block`.
    pub fn last(self, block: Block) -> u128 {
        block.start + size_minus_one(self.max_len - block.len)
    }

    pub fn span(self, block: Block) -> Span {
        Span {
            first: block.start,
            last: self.last(block),
        }
    }

    /// The bit that distinguishes a block of length `len` from its buddy (`len >= 1`).
    pub fn buddy_bit(self, len: u8) -> u128 {
        1u128 << (self.max_len - len)
    }

    /// `address` with the host bits of a `/len` cleared.
    pub fn align_down(self, address: u128, len: u8) -> u128 {
        address & !size_minus_one(self.max_len - len)
    }

    /// Builds the `IpNet` for an aligned block of this family.
    ///
    /// Invariant: `block.len <= self.max_len` and, for IPv4, `start < 2^32`; every
    /// block the allocator creates lies inside its pool, so this cannot fail.
    pub fn net(self, block: Block) -> IpNet {
        if self.max_len == 32 {
            let address = Ipv4Addr::from(block.start as u32);
            IpNet::V4(Ipv4Net::new_assert(address, block.len))
        } else {
            IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from(block.start), block.len))
        }
    }

    /// The address `value` of this family, for messages.
    pub fn address_string(self, value: u128) -> String {
        if self.max_len == 32 {
            Ipv4Addr::from(value as u32).to_string()
        } else {
            Ipv6Addr::from(value).to_string()
        }
    }

    /// Splits `span` into the fewest aligned blocks, in address order, none shorter
    /// than `/min_len` (callers pass spans inside a `/min_len` pool).
    pub fn decompose(self, span: Span, min_len: u8, mut emit: impl FnMut(Block)) {
        let max_host_bits = self.max_len - min_len;
        let mut first = span.first;
        loop {
            let remaining_minus_one = span.last - first;
            let fits = if remaining_minus_one == u128::MAX {
                128
            } else {
                (remaining_minus_one + 1).ilog2() as u8
            };
            let aligned = first.trailing_zeros().min(128) as u8;
            let host_bits = fits.min(aligned).min(max_host_bits);
            let block = Block {
                start: first,
                len: self.max_len - host_bits,
            };
            emit(block);
            let last = self.last(block);
            if last >= span.last {
                return;
            }
            first = last + 1;
        }
    }
}

/// Sorts and merges overlapping or adjacent spans into disjoint ones.
pub(crate) fn merge_spans(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(previous) if previous.last == u128::MAX || span.first <= previous.last + 1 => {
                previous.last = previous.last.max(span.last);
            }
            _ => merged.push(span),
        }
    }
    merged
}

/// The parts of `from` not covered by `remove`; both sorted, disjoint (from `merge_spans`).
pub(crate) fn subtract_spans(from: &[Span], remove: &[Span]) -> Vec<Span> {
    let mut result = Vec::new();
    let mut removals = remove.iter().peekable();
    for &span in from {
        let mut first = span.first;
        let mut exhausted = false;
        // Skip removals that end before this span.
        while removals.next_if(|r| r.last < first).is_some() {}
        let mut upcoming = removals.clone();
        while let Some(r) = upcoming.next_if(|r| r.first <= span.last) {
            if r.first > first {
                result.push(Span {
                    first,
                    last: r.first - 1,
                });
            }
            if r.last >= span.last {
                exhausted = true;
                break;
            }
            first = first.max(r.last + 1);
        }
        if !exhausted {
            result.push(Span {
                first,
                last: span.last,
            });
        }
    }
    result
}
