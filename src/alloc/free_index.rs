//! The free-space index: free space kept as its unique decomposition into maximal
//! aligned blocks (a block is listed when it is wholly free and its parent is not).
//!
//! Two views of the same set are kept in step:
//! - `by_start` (start -> length) answers "which free block contains this address" in
//!   one ordered-map lookup (exact allocations, carving out exclusions);
//! - `by_len[len]` (ordered starts) answers first fit: every wholly free aligned `/len`
//!   lies inside exactly one maximal free block of length `<= len`, so the lowest one is
//!   the start of the lowest free block among lengths `pool_len ..= len`.
//!
//! Both per-length vectors hold only the pool's own lengths (`root_len ..= max_len`), so the
//! index of a new /128 child is two one-element vectors, not 2 x 129 slots.
//!
//! `lowest[len]` caches the first start of `by_len[len]` and `nonempty` is a bitmap of
//! lengths with at least one free block, so first fit reads at most 129 cached values
//! and never walks a tree; keeping the cache costs one extra descent when the lowest
//! block of a length is removed.
//!
//! Every operation touches at most ~2 x 129 blocks, independent of how many blocks
//! are allocated.

use super::geometry::{Block, Family, Span};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FreeIndex {
    family: Family,
    /// Length of the pool: the root of the buddy tree, never merged further.
    root_len: u8,
    by_start: BTreeMap<u128, u8>,
    /// Indexed by `len - root_len` (see [`FreeIndex::slot`]).
    by_len: Vec<BTreeSet<u128>>,
    /// `lowest[len] == by_len[len].first()`, indexed like `by_len`.
    lowest: Vec<Option<u128>>,
    /// Bit `len` set when `by_len[len]` is non-empty (lengths 0..=128 → 3 words).
    nonempty: [u64; 3],
}

impl FreeIndex {
    /// An index with no free space.
    pub fn empty(family: Family, root_len: u8) -> Self {
        let lengths = usize::from(family.max_len - root_len) + 1;
        FreeIndex {
            family,
            root_len,
            by_start: BTreeMap::new(),
            by_len: vec![BTreeSet::new(); lengths],
            lowest: vec![None; lengths],
            nonempty: [0; 3],
        }
    }

    /// Builds the index from maximal free blocks given in ascending address order (each
    /// within the pool: `len >= root_len`).
    pub fn from_sorted_maximal(family: Family, root_len: u8, blocks: Vec<Block>) -> Self {
        let mut index = Self::empty(family, root_len);
        let mut per_len: Vec<Vec<u128>> = vec![Vec::new(); index.by_len.len()];
        for block in &blocks {
            per_len[index.slot(block.len)].push(block.start);
        }
        index.by_start = blocks.into_iter().map(|b| (b.start, b.len)).collect();
        // Bulk-built sets: denser and faster than inserting one by one (10^6 blocks on restart).
        index.by_len = per_len.into_iter().map(BTreeSet::from_iter).collect();
        for len in root_len..=family.max_len {
            index.refresh_lowest(len);
        }
        index
    }

    /// Where blocks of length `len` sit in `by_len` and `lowest`.
    fn slot(&self, len: u8) -> usize {
        usize::from(len - self.root_len)
    }

    pub fn block_count(&self) -> usize {
        self.by_start.len()
    }

    /// Maximal free blocks in address order.
    pub fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        self.by_start
            .iter()
            .map(|(&start, &len)| Block { start, len })
    }

    /// The shortest length of any free block.
    pub fn shortest_len(&self) -> Option<u8> {
        self.next_nonempty_len(0)
    }

    /// The lowest-addressed free block that can hold a `/len` (its length `<= len`).
    pub fn first_fit(&self, len: u8) -> Option<Block> {
        let mut best: Option<Block> = None;
        let mut from = 0;
        while let Some(candidate_len) = self.next_nonempty_len(from).filter(|&l| l <= len) {
            if let Some(start) = self.lowest[self.slot(candidate_len)] {
                if best.is_none_or(|b| start < b.start) {
                    best = Some(Block {
                        start,
                        len: candidate_len,
                    });
                }
            }
            from = candidate_len + 1;
        }
        best
    }

    /// The free block containing `address`, if any.
    pub fn containing(&self, address: u128) -> Option<Block> {
        let (&start, &len) = self.by_start.range(..=address).next_back()?;
        let block = Block { start, len };
        (self.family.last(block) >= address).then_some(block)
    }

    /// Marks `wanted` as used. `holder` must be the free block containing it
    /// (`holder.len <= wanted.len`); the rest of `holder` stays free as the buddies
    /// along the path from `holder` down to `wanted`, which are maximal because
    /// their parents now contain `wanted`.
    pub fn take(&mut self, holder: Block, wanted: Block) {
        self.remove(holder);
        for len in holder.len + 1..=wanted.len {
            let on_path = self.family.align_down(wanted.start, len);
            self.insert(Block {
                start: on_path ^ self.family.buddy_bit(len),
                len,
            });
        }
    }

    /// Returns `block` (disjoint from all free space) to the index, merging it with
    /// its buddy while the buddy is wholly free, which keeps blocks maximal.
    pub fn give_back(&mut self, mut block: Block) {
        while block.len > self.root_len {
            let buddy_start = block.start ^ self.family.buddy_bit(block.len);
            // One descent both tests and removes the buddy.
            match self.by_start.entry(buddy_start) {
                Entry::Occupied(entry) if *entry.get() == block.len => {
                    entry.remove();
                }
                _ => break,
            }
            self.remove_from_len_index(Block {
                start: buddy_start,
                len: block.len,
            });
            block = Block {
                start: block.start.min(buddy_start),
                len: block.len - 1,
            };
        }
        self.insert(block);
    }

    /// Marks the wholly free `span` as used: every free block overlapping it is
    /// removed and its parts outside `span` re-added (they stay maximal because their
    /// parents overlap `span`). Only blocks overlapping `span` are touched.
    pub fn carve(&mut self, span: Span) {
        let containing_first = self.containing(span.first);
        let inside = self
            .by_start
            .range(span.first..=span.last)
            .map(|(&start, &len)| Block { start, len })
            .filter(|b| Some(*b) != containing_first);
        let overlapping: Vec<Block> = containing_first.into_iter().chain(inside).collect();
        for block in overlapping {
            self.remove(block);
            let whole = self.family.span(block);
            if whole.first < span.first {
                let before = Span {
                    first: whole.first,
                    last: span.first - 1,
                };
                self.family
                    .decompose(before, self.root_len, |b| self.insert(b));
            }
            if whole.last > span.last {
                let after = Span {
                    first: span.last + 1,
                    last: whole.last,
                };
                self.family
                    .decompose(after, self.root_len, |b| self.insert(b));
            }
        }
    }

    fn insert(&mut self, block: Block) {
        self.by_start.insert(block.start, block.len);
        let slot = self.slot(block.len);
        self.by_len[slot].insert(block.start);
        if self.lowest[slot].is_none_or(|lowest| block.start < lowest) {
            self.lowest[slot] = Some(block.start);
        }
        let len = usize::from(block.len);
        self.nonempty[len / 64] |= 1 << (len % 64);
    }

    fn remove(&mut self, block: Block) {
        self.by_start.remove(&block.start);
        self.remove_from_len_index(block);
    }

    fn remove_from_len_index(&mut self, block: Block) {
        let slot = self.slot(block.len);
        self.by_len[slot].remove(&block.start);
        if self.lowest[slot] == Some(block.start) {
            self.refresh_lowest(block.len);
        }
    }

    fn refresh_lowest(&mut self, len: u8) {
        let slot = self.slot(len);
        self.lowest[slot] = self.by_len[slot].first().copied();
        let len = usize::from(len);
        let bit = 1u64 << (len % 64);
        if self.lowest[slot].is_some() {
            self.nonempty[len / 64] |= bit;
        } else {
            self.nonempty[len / 64] &= !bit;
        }
    }

    /// The smallest length `>= from` that has a free block.
    fn next_nonempty_len(&self, from: u8) -> Option<u8> {
        let mut word_index = usize::from(from / 64);
        let mut word = self.nonempty.get(word_index)? & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                return u8::try_from(word_index * 64 + word.trailing_zeros() as usize).ok();
            }
            word_index += 1;
            word = *self.nonempty.get(word_index)?;
        }
    }
}
