//! `Pool`: one parent prefix, its allocated blocks and its free-space index.

use super::count::AddressCount;
use super::free_index::FreeIndex;
use super::geometry::{merge_spans, Block, Family, Span};
use super::{AllocError, Capacity, Holder, Reserve};
use ipnet::IpNet;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;

/// One parent prefix and everything carved out of it.
///
/// Invariants (checked by the property tests): allocated blocks are disjoint and
/// lie inside the pool outside `blocked`; `free` is exactly the maximal aligned
/// decomposition of the pool minus allocated blocks minus `blocked`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pool {
    pub(super) prefix: IpNet,
    pub(super) family: Family,
    pub(super) root: Block,
    /// Exclusions as given (canonical, inside the pool; may overlap each other).
    pub(super) exclusions: Vec<IpNet>,
    pub(super) reserve: Reserve,
    /// Union of exclusions and reserved addresses: sorted, disjoint, non-adjacent.
    pub(super) blocked: Vec<Span>,
    pub(super) excluded_count: AddressCount,
    /// Allocated blocks, start -> prefix length.
    pub(super) allocated: BTreeMap<u128, u8>,
    pub(super) allocated_addresses: AddressCount,
    pub(super) free: FreeIndex,
}

impl fmt::Debug for Pool {
    /// A summary: a pool may hold millions of blocks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("prefix", &self.prefix)
            .field("exclusions", &self.exclusions)
            .field("reserve", &self.reserve)
            .field("allocated_blocks", &self.allocated.len())
            .field("free_blocks", &self.free.block_count())
            .finish()
    }
}

impl Pool {
    /// An empty pool. `prefix` must be canonical; exclusions must be canonical,
    /// of the pool's family and inside it.
    pub fn new(prefix: IpNet, exclusions: &[IpNet], reserve: Reserve) -> Result<Self, AllocError> {
        Self::rebuild(prefix, exclusions, reserve, std::iter::empty())
    }

    /// Rebuilds a pool from the allocated blocks storage hands back on restart,
    /// checking rather than trusting them: each must be canonical, of the pool's
    /// family, inside the pool and longer than it (first offending block in
    /// iteration order is reported); then no two may overlap (`Overlap`) and none
    /// may touch an exclusion or reserved address (`CoversAllocated`), reported for
    /// the lowest-addressed offender. O(n log n).
    pub fn rebuild(
        prefix: IpNet,
        exclusions: &[IpNet],
        reserve: Reserve,
        allocated: impl IntoIterator<Item = IpNet>,
    ) -> Result<Self, AllocError> {
        if prefix.trunc() != prefix {
            return Err(AllocError::NotCanonical {
                prefix,
                canonical: prefix.trunc(),
            });
        }
        let family = Family::of(&prefix);
        let root = Family::block_of(&prefix);
        let mut pool = Pool {
            prefix,
            family,
            root,
            exclusions: Vec::new(),
            reserve: Reserve::default(),
            blocked: Vec::new(),
            excluded_count: AddressCount::ZERO,
            allocated: BTreeMap::new(),
            allocated_addresses: AddressCount::ZERO,
            free: FreeIndex::empty(family, root.len),
        };
        pool.validate_exclusions(exclusions)?;
        pool.exclusions = exclusions.to_vec();
        pool.reserve = reserve;
        pool.blocked = pool.blocked_spans(exclusions, reserve);
        pool.excluded_count = count_spans(&pool.blocked);

        let mut blocks = Vec::new();
        for net in allocated {
            blocks.push(pool.validate_request(&net)?);
        }
        blocks.sort_unstable();
        for pair in blocks.windows(2) {
            if pair[1].start <= family.last(pair[0]) {
                return Err(AllocError::Overlap {
                    a: family.net(pair[0]),
                    b: family.net(pair[1]),
                });
            }
        }
        pool.ensure_no_allocated_covered(exclusions, reserve, |span| {
            lowest_in_sorted(family, &blocks, span)
        })?;

        let free = pool.free_blocks_around(&blocks);
        pool.free = FreeIndex::from_sorted_maximal(family, root.len, free);
        pool.allocated_addresses = blocks.iter().fold(AddressCount::ZERO, |sum, &b| {
            sum.saturating_add(block_size(family, b))
        });
        pool.allocated = blocks.into_iter().map(|b| (b.start, b.len)).collect();
        Ok(pool)
    }

    pub fn prefix(&self) -> IpNet {
        self.prefix
    }

    pub fn exclusions(&self) -> &[IpNet] {
        &self.exclusions
    }

    pub fn reserve(&self) -> Reserve {
        self.reserve
    }

    /// The lowest-addressed free aligned `/prefix_len`, without taking it.
    pub fn find_first_fit(&self, prefix_len: u8) -> Result<IpNet, AllocError> {
        self.check_len(prefix_len)?;
        match self.free.first_fit(prefix_len) {
            Some(holder) => Ok(self.family.net(Block {
                start: holder.start,
                len: prefix_len,
            })),
            None => Err(self.exhausted(prefix_len)),
        }
    }

    /// Allocates the lowest-addressed free aligned `/prefix_len`.
    pub fn allocate_first_fit(&mut self, prefix_len: u8) -> Result<IpNet, AllocError> {
        self.check_len(prefix_len)?;
        let holder = self
            .free
            .first_fit(prefix_len)
            .ok_or_else(|| self.exhausted(prefix_len))?;
        let wanted = Block {
            start: holder.start,
            len: prefix_len,
        };
        self.mark_allocated(holder, wanted);
        Ok(self.family.net(wanted))
    }

    /// Whether `allocate_exact(prefix)` would succeed, without changing anything.
    pub fn check_exact(&self, prefix: IpNet) -> Result<(), AllocError> {
        self.locate_exact(&prefix).map(|_| ())
    }

    /// Allocates exactly `prefix` when it is wholly free.
    pub fn allocate_exact(&mut self, prefix: IpNet) -> Result<(), AllocError> {
        let (holder, wanted) = self.locate_exact(&prefix)?;
        self.mark_allocated(holder, wanted);
        Ok(())
    }

    /// Gives an allocated block back; it merges with free neighbours, so releasing
    /// everything restores the pool exactly.
    pub fn release(&mut self, prefix: IpNet) -> Result<(), AllocError> {
        self.check_family(&prefix)?;
        let block = self.check_canonical(&prefix)?;
        // One descent both tests and removes the entry.
        match self.allocated.entry(block.start) {
            Entry::Occupied(entry) if *entry.get() == block.len => {
                entry.remove();
            }
            _ => return Err(AllocError::NotAllocated { prefix }),
        }
        self.allocated_addresses = self
            .allocated_addresses
            .saturating_sub(block_size(self.family, block));
        self.free.give_back(block);
        Ok(())
    }

    /// Whether exactly `prefix` is an allocated block of this pool.
    pub fn is_allocated(&self, prefix: IpNet) -> bool {
        Family::of(&prefix) == self.family
            && prefix.trunc() == prefix
            && self.allocated.get(&Family::address(&prefix)) == Some(&prefix.prefix_len())
    }

    /// Allocated blocks in address order.
    pub fn allocated(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.allocated
            .iter()
            .map(|(&start, &len)| self.family.net(Block { start, len }))
    }

    /// The allocated block that contains `net` (or is `net`), if any, in O(log n): blocks are
    /// disjoint and aligned, so only the last one starting at or before `net` can.
    pub fn allocated_containing(&self, net: IpNet) -> Option<IpNet> {
        if Family::of(&net) != self.family {
            return None;
        }
        let first = Family::address(&net.trunc());
        let (&start, &len) = self.allocated.range(..=first).next_back()?;
        let block = Block { start, len };
        (len <= net.prefix_len() && self.family.last(block) >= first)
            .then(|| self.family.net(block))
    }

    /// The free space as maximal aligned blocks in address order: what is left after
    /// allocated blocks, exclusions and reserved addresses.
    pub fn free_blocks(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.free.blocks().map(|b| self.family.net(b))
    }

    /// How many `/len` blocks still fit in the free space (each free block of length
    /// `l <= len` holds 2^(len - l) of them); `None` when `len` is not allocatable here.
    pub fn fitting(&self, len: u8) -> Option<AddressCount> {
        if len <= self.root.len || len > self.family.max_len {
            return None;
        }
        Some(
            self.free
                .blocks()
                .filter(|b| b.len <= len)
                .filter_map(|b| AddressCount::pow2(u32::from(len - b.len)))
                .fold(AddressCount::ZERO, AddressCount::saturating_add),
        )
    }

    pub fn allocated_count(&self) -> usize {
        self.allocated.len()
    }

    pub fn capacity(&self) -> Capacity {
        let total = block_size(self.family, self.root);
        let used = self.allocated_addresses.saturating_add(self.excluded_count);
        Capacity {
            total,
            allocated: self.allocated_addresses,
            excluded: self.excluded_count,
            available: total.saturating_sub(used),
        }
    }

    /// The shortest prefix length still allocatable (`None` when nothing is): the
    /// largest free block, but never the pool's own length, which is not allocatable.
    pub fn largest_free_prefix_len(&self) -> Option<u8> {
        let shortest = self.free.shortest_len()?.max(self.root.len + 1);
        (shortest <= self.family.max_len).then_some(shortest)
    }

    fn exhausted(&self, requested_len: u8) -> AllocError {
        AllocError::Exhausted {
            requested_len,
            largest_free: self.largest_free_prefix_len(),
        }
    }

    fn mark_allocated(&mut self, holder: Block, wanted: Block) {
        self.free.take(holder, wanted);
        self.allocated.insert(wanted.start, wanted.len);
        self.allocated_addresses = self
            .allocated_addresses
            .saturating_add(block_size(self.family, wanted));
    }

    /// Validates `prefix` and finds the free block holding it, or names the
    /// lowest-addressed holder it collides with.
    fn locate_exact(&self, prefix: &IpNet) -> Result<(Block, Block), AllocError> {
        let wanted = self.validate_request(prefix)?;
        match self.free.containing(wanted.start) {
            Some(holder) if holder.len <= wanted.len => Ok((holder, wanted)),
            _ => Err(AllocError::Collision {
                prefix: *prefix,
                holder: self.first_holder(wanted),
            }),
        }
    }

    /// The lowest-addressed occupant of `wanted`, ordered by (start, allocated before
    /// excluded before reserved, shorter prefix first).
    fn first_holder(&self, wanted: Block) -> Holder {
        let span = self.family.span(wanted);
        let allocated = self
            .lowest_allocated_in(span)
            .map(|b| ((b.start, 0, b.len), Holder::Allocated(self.family.net(b))));
        let excluded = self
            .exclusions
            .iter()
            .map(|net| (Family::block_of(net), net))
            .filter(|(b, _)| self.family.span(*b).overlaps(span))
            .map(|(b, net)| ((b.start, 1, b.len), Holder::Excluded(*net)));
        let (leading, trailing) = self.reserve_spans(self.reserve);
        let reserved = [leading, trailing]
            .into_iter()
            .flatten()
            .filter(|r| r.overlaps(span))
            .map(|r| ((r.first, 2, 0), Holder::Reserved));
        allocated
            .into_iter()
            .chain(excluded)
            .chain(reserved)
            .min_by_key(|(key, _)| *key)
            .map(|(_, holder)| holder)
            // Invariant: a block not wholly free overlaps an allocated block, an
            // exclusion or a reserved range, so the search above finds one.
            .unwrap_or(Holder::Reserved)
    }

    /// The lowest-addressed allocated block overlapping `span`, in O(log n).
    pub(super) fn lowest_allocated_in(&self, span: Span) -> Option<Block> {
        let before = self.allocated.range(..=span.first).next_back();
        if let Some((&start, &len)) = before {
            let block = Block { start, len };
            if self.family.last(block) >= span.first {
                return Some(block);
            }
        }
        let (&start, &len) = self.allocated.range(span.first..=span.last).next()?;
        Some(Block { start, len })
    }

    /// Maximal free blocks of the pool minus `allocated` (sorted, disjoint) and
    /// minus `self.blocked`, in address order.
    fn free_blocks_around(&self, allocated: &[Block]) -> Vec<Block> {
        let used = merge_sorted(
            allocated.iter().map(|&b| self.family.span(b)),
            self.blocked.iter().copied(),
        );
        let root = self.family.span(self.root);
        let mut free = Vec::new();
        // First address not yet classified as used or free.
        let mut cursor = root.first;
        for span in used {
            if span.first > cursor {
                self.family.decompose(
                    Span {
                        first: cursor,
                        last: span.first - 1,
                    },
                    self.root.len,
                    |b| free.push(b),
                );
            }
            if span.last >= root.last {
                return free;
            }
            cursor = span.last + 1;
        }
        self.family.decompose(
            Span {
                first: cursor,
                last: root.last,
            },
            self.root.len,
            |b| free.push(b),
        );
        free
    }
}

/// The lowest block of `sorted` (sorted, disjoint) overlapping `span`.
fn lowest_in_sorted(family: Family, sorted: &[Block], span: Span) -> Option<Block> {
    let index = sorted.partition_point(|&b| family.last(b) < span.first);
    sorted.get(index).copied().filter(|b| b.start <= span.last)
}

/// Number of addresses in `block`.
pub(super) fn block_size(family: Family, block: Block) -> AddressCount {
    AddressCount::inclusive_range(block.start, family.last(block))
}

/// Total addresses in disjoint spans.
pub(super) fn count_spans(spans: &[Span]) -> AddressCount {
    spans.iter().fold(AddressCount::ZERO, |sum, s| {
        sum.saturating_add(AddressCount::inclusive_range(s.first, s.last))
    })
}

/// Merges two span sequences, each sorted by start, into sorted disjoint spans.
fn merge_sorted(a: impl Iterator<Item = Span>, b: impl Iterator<Item = Span>) -> Vec<Span> {
    let mut all: Vec<Span> = a.chain(b).collect();
    all.sort_unstable();
    merge_spans(all)
}
