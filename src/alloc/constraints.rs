//! Request validation, exclusions and edge reservations of a [`Pool`].
//!
//! Exclusions and reserved addresses are held as one merged list of spans
//! (`Pool::blocked`). Changing them touches only the difference between the old and
//! new lists, so the cost depends on the exclusions, not on the allocated blocks.

use super::geometry::{merge_spans, subtract_spans, Block, Family, Span};
use super::pool::{count_spans, Pool};
use super::{AllocError, Reserve};
use ipnet::IpNet;

/// Something that blocks addresses: an exclusion or one edge of the reserve.
#[derive(Debug, Clone, Copy)]
enum Constraint {
    Exclusion(IpNet),
    ReserveLeading(u128),
    ReserveTrailing(u128),
}

impl Pool {
    /// Replaces the exclusions. Refused with `CoversAllocated`, leaving the pool
    /// unchanged, when a new exclusion overlaps an allocated block.
    pub fn set_exclusions(&mut self, exclusions: &[IpNet]) -> Result<(), AllocError> {
        self.validate_exclusions(exclusions)?;
        self.ensure_no_allocated_covered(exclusions, self.reserve, |span| {
            self.lowest_allocated_in(span)
        })?;
        self.apply_constraints(exclusions.to_vec(), self.reserve);
        Ok(())
    }

    /// Replaces the edge reservations. Refused with `CoversAllocated`, leaving the
    /// pool unchanged, when the new reserved range overlaps an allocated block.
    pub fn set_reserve(&mut self, reserve: Reserve) -> Result<(), AllocError> {
        self.ensure_no_allocated_covered(&[], reserve, |span| self.lowest_allocated_in(span))?;
        self.apply_constraints(self.exclusions.clone(), reserve);
        Ok(())
    }

    /// Updates the free index for the addresses whose blocked status changes; the
    /// caller has checked that no allocated block is newly blocked.
    fn apply_constraints(&mut self, exclusions: Vec<IpNet>, reserve: Reserve) {
        let blocked = self.blocked_spans(&exclusions, reserve);
        for span in subtract_spans(&blocked, &self.blocked) {
            self.free.carve(span);
        }
        for span in subtract_spans(&self.blocked, &blocked) {
            let free = &mut self.free;
            self.family
                .decompose(span, self.root.len, |block| free.give_back(block));
        }
        self.excluded_count = count_spans(&blocked);
        self.blocked = blocked;
        self.exclusions = exclusions;
        self.reserve = reserve;
    }

    /// Fails with `CoversAllocated` for the lowest-addressed allocated block that an
    /// exclusion or the reserve overlaps, naming the first such constraint (exclusions
    /// in the order given, then leading, then trailing reserve).
    pub(super) fn ensure_no_allocated_covered(
        &self,
        exclusions: &[IpNet],
        reserve: Reserve,
        lowest_allocated_in: impl Fn(Span) -> Option<Block>,
    ) -> Result<(), AllocError> {
        let (leading, trailing) = self.reserve_spans(reserve);
        let constraints = exclusions
            .iter()
            .map(|net| {
                (
                    Constraint::Exclusion(*net),
                    self.family.span(Family::block_of(net)),
                )
            })
            .chain(leading.map(|span| (Constraint::ReserveLeading(reserve.leading), span)))
            .chain(trailing.map(|span| (Constraint::ReserveTrailing(reserve.trailing), span)));
        let mut first: Option<(Block, Constraint, Span)> = None;
        for (constraint, span) in constraints {
            if let Some(block) = lowest_allocated_in(span) {
                if first.is_none_or(|(lowest, _, _)| block.start < lowest.start) {
                    first = Some((block, constraint, span));
                }
            }
        }
        match first {
            None => Ok(()),
            Some((block, constraint, span)) => Err(AllocError::CoversAllocated {
                block: self.describe(constraint, span),
                allocated: self.family.net(block),
            }),
        }
    }

    fn describe(&self, constraint: Constraint, span: Span) -> String {
        let range = format!(
            "{}-{}",
            self.family.address_string(span.first),
            self.family.address_string(span.last)
        );
        match constraint {
            Constraint::Exclusion(net) => format!("exclusion {net}"),
            Constraint::ReserveLeading(n) => format!("spec.reserve.leading={n} ({range})"),
            Constraint::ReserveTrailing(n) => format!("spec.reserve.trailing={n} ({range})"),
        }
    }

    /// Merged spans of everything `exclusions` and `reserve` block.
    pub(super) fn blocked_spans(&self, exclusions: &[IpNet], reserve: Reserve) -> Vec<Span> {
        let (leading, trailing) = self.reserve_spans(reserve);
        let spans = exclusions
            .iter()
            .map(|net| self.family.span(Family::block_of(net)))
            .chain(leading)
            .chain(trailing)
            .collect();
        merge_spans(spans)
    }

    /// The leading and trailing reserved spans, clamped to the pool.
    pub(super) fn reserve_spans(&self, reserve: Reserve) -> (Option<Span>, Option<Span>) {
        let root = self.family.span(self.root);
        let size_minus_one = root.last - root.first;
        let leading = reserve.leading.checked_sub(1).map(|extra| Span {
            first: root.first,
            last: root.first + extra.min(size_minus_one),
        });
        let trailing = reserve.trailing.checked_sub(1).map(|extra| Span {
            first: root.last - extra.min(size_minus_one),
            last: root.last,
        });
        (leading, trailing)
    }

    /// Each exclusion must be of the pool's family, canonical and inside the pool.
    pub(super) fn validate_exclusions(&self, exclusions: &[IpNet]) -> Result<(), AllocError> {
        for net in exclusions {
            self.check_family(net)?;
            self.check_canonical(net)?;
            if !self.prefix.contains(net) {
                return Err(AllocError::OutsidePool {
                    prefix: *net,
                    pool: self.prefix,
                });
            }
        }
        Ok(())
    }

    /// Checks a requested (or restored) block: family, length, canonical, inside.
    pub(super) fn validate_request(&self, net: &IpNet) -> Result<Block, AllocError> {
        self.check_family(net)?;
        self.check_len(net.prefix_len())?;
        let block = self.check_canonical(net)?;
        if !self.prefix.contains(net) {
            return Err(AllocError::OutsidePool {
                prefix: *net,
                pool: self.prefix,
            });
        }
        Ok(block)
    }

    pub(super) fn check_family(&self, net: &IpNet) -> Result<(), AllocError> {
        if Family::of(net) == self.family {
            Ok(())
        } else {
            Err(AllocError::FamilyMismatch {
                pool: self.prefix,
                requested: net.to_string(),
            })
        }
    }

    pub(super) fn check_canonical(&self, net: &IpNet) -> Result<Block, AllocError> {
        if net.trunc() == *net {
            Ok(Family::block_of(net))
        } else {
            Err(AllocError::NotCanonical {
                prefix: *net,
                canonical: net.trunc(),
            })
        }
    }

    /// Allocatable lengths are strictly longer than the pool, up to 32 or 128.
    pub(super) fn check_len(&self, len: u8) -> Result<(), AllocError> {
        let (min, max) = (self.root.len + 1, self.family.max_len);
        if (min..=max).contains(&len) {
            Ok(())
        } else {
            Err(AllocError::LengthOutOfRange {
                requested: len,
                min,
                max,
            })
        }
    }
}
