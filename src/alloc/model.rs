//! A deliberately naive reference allocator for the property tests: a plain list of
//! allocated blocks, and every question answered by scanning each address and each
//! candidate block in address order. Slow, obviously right, and independent of the
//! free-space index.

use super::{AddressCount, AllocError, Capacity, Holder, Reserve};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The naive reference: a list of allocated blocks and per-address scans.
#[derive(Debug, Clone)]
pub(super) struct Model {
    pub(super) prefix: IpNet,
    pub(super) base: u128,
    pub(super) pool_len: u8,
    pub(super) max_len: u8,
    pub(super) size: u128,
    pub(super) allocated: Vec<IpNet>,
    pub(super) exclusions: Vec<IpNet>,
    pub(super) reserve: Reserve,
}

/// Who holds one address in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Occupant {
    Free,
    Allocated,
    Blocked,
}

pub(super) fn start_of(net: &IpNet) -> u128 {
    match net.trunc() {
        IpNet::V4(v4) => u128::from(u32::from(v4.addr())),
        IpNet::V6(v6) => u128::from(v6.addr()),
    }
}

pub(super) fn last_of(net: &IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    start_of(net) + ((1u128 << host_bits) - 1)
}

pub(super) fn make_net(v4: bool, address: u128, len: u8) -> IpNet {
    if v4 {
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(address as u32), len))
    } else {
        IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from(address), len))
    }
}

impl Model {
    pub(super) fn new(prefix: IpNet) -> Model {
        let max_len = prefix.max_prefix_len();
        Model {
            prefix,
            base: start_of(&prefix),
            pool_len: prefix.prefix_len(),
            max_len,
            size: 1u128 << (max_len - prefix.prefix_len()),
            allocated: Vec::new(),
            exclusions: Vec::new(),
            reserve: Reserve::default(),
        }
    }

    pub(super) fn is_v4(&self) -> bool {
        self.max_len == 32
    }

    pub(super) fn reserved_spans(&self, reserve: Reserve) -> Vec<(u128, u128)> {
        let mut spans = Vec::new();
        if reserve.leading > 0 {
            spans.push((self.base, self.base + (reserve.leading.min(self.size) - 1)));
        }
        if reserve.trailing > 0 {
            spans.push((
                self.base + (self.size - reserve.trailing.min(self.size)),
                self.base + (self.size - 1),
            ));
        }
        spans
    }

    pub(super) fn occupant(&self, address: u128) -> Occupant {
        if self
            .allocated
            .iter()
            .any(|n| start_of(n) <= address && address <= last_of(n))
        {
            Occupant::Allocated
        } else if self
            .exclusions
            .iter()
            .any(|n| start_of(n) <= address && address <= last_of(n))
            || self
                .reserved_spans(self.reserve)
                .iter()
                .any(|&(f, l)| f <= address && address <= l)
        {
            Occupant::Blocked
        } else {
            Occupant::Free
        }
    }

    pub(super) fn occupancy(&self) -> Vec<Occupant> {
        (0..self.size)
            .map(|offset| self.occupant(self.base + offset))
            .collect()
    }

    pub(super) fn check_len(&self, len: u8) -> Result<(), AllocError> {
        if len <= self.pool_len || len > self.max_len {
            return Err(AllocError::LengthOutOfRange {
                requested: len,
                min: self.pool_len + 1,
                max: self.max_len,
            });
        }
        Ok(())
    }

    pub(super) fn first_fit_in(&self, occupancy: &[Occupant], len: u8) -> Option<IpNet> {
        let block_size = 1u128 << (self.max_len - len);
        (0..self.size / block_size.max(1))
            .map(|i| i * block_size)
            .find_map(|offset| {
                let wholly_free =
                    (offset..offset + block_size).all(|o| occupancy[o as usize] == Occupant::Free);
                wholly_free.then(|| make_net(self.is_v4(), self.base + offset, len))
            })
    }

    pub(super) fn largest_free(&self, occupancy: &[Occupant]) -> Option<u8> {
        (self.pool_len + 1..=self.max_len).find(|&len| self.first_fit_in(occupancy, len).is_some())
    }

    pub(super) fn first_fit(&mut self, len: u8) -> Result<IpNet, AllocError> {
        self.check_len(len)?;
        let occupancy = self.occupancy();
        match self.first_fit_in(&occupancy, len) {
            Some(net) => {
                self.allocated.push(net);
                Ok(net)
            }
            None => Err(AllocError::Exhausted {
                requested_len: len,
                largest_free: self.largest_free(&occupancy),
            }),
        }
    }

    pub(super) fn family_check(&self, net: &IpNet) -> Result<(), AllocError> {
        if net.max_prefix_len() != self.max_len {
            return Err(AllocError::FamilyMismatch {
                pool: self.prefix,
                requested: net.to_string(),
            });
        }
        Ok(())
    }

    pub(super) fn canonical_check(net: &IpNet) -> Result<(), AllocError> {
        if net.trunc() != *net {
            return Err(AllocError::NotCanonical {
                prefix: *net,
                canonical: net.trunc(),
            });
        }
        Ok(())
    }

    pub(super) fn inside_check(&self, net: &IpNet) -> Result<(), AllocError> {
        if start_of(net) < self.base || last_of(net) > self.base + (self.size - 1) {
            return Err(AllocError::OutsidePool {
                prefix: *net,
                pool: self.prefix,
            });
        }
        Ok(())
    }

    pub(super) fn exact(&mut self, net: IpNet) -> Result<(), AllocError> {
        self.family_check(&net)?;
        self.check_len(net.prefix_len())?;
        Self::canonical_check(&net)?;
        self.inside_check(&net)?;
        let (first, last) = (start_of(&net), last_of(&net));
        if (first..=last).all(|a| self.occupant(a) == Occupant::Free) {
            self.allocated.push(net);
            return Ok(());
        }
        let overlaps = |n: &IpNet| start_of(n) <= last && first <= last_of(n);
        let mut holders: Vec<((u128, u8, u8), Holder)> = Vec::new();
        for n in self.allocated.iter().filter(|n| overlaps(n)) {
            holders.push(((start_of(n), 0, n.prefix_len()), Holder::Allocated(*n)));
        }
        for n in self.exclusions.iter().filter(|n| overlaps(n)) {
            holders.push(((start_of(n), 1, n.prefix_len()), Holder::Excluded(*n)));
        }
        for (f, l) in self.reserved_spans(self.reserve) {
            if f <= last && first <= l {
                holders.push(((f, 2, 0), Holder::Reserved));
            }
        }
        holders.sort_by_key(|(key, _)| *key);
        Err(AllocError::Collision {
            prefix: net,
            holder: holders.remove(0).1,
        })
    }

    pub(super) fn release(&mut self, net: IpNet) -> Result<(), AllocError> {
        self.family_check(&net)?;
        Self::canonical_check(&net)?;
        let index = self.allocated.iter().position(|n| *n == net);
        let index = index.ok_or(AllocError::NotAllocated { prefix: net })?;
        self.allocated.remove(index);
        Ok(())
    }

    /// Lowest allocated block overlapped by the given blocked spans.
    pub(super) fn covered(&self, spans: &[(u128, u128)]) -> Result<(), AllocError> {
        let mut covered: Vec<IpNet> = self
            .allocated
            .iter()
            .filter(|n| {
                spans
                    .iter()
                    .any(|&(f, l)| start_of(n) <= l && f <= last_of(n))
            })
            .copied()
            .collect();
        covered.sort_by_key(start_of);
        match covered.first() {
            Some(&allocated) => Err(AllocError::CoversAllocated {
                block: String::new(),
                allocated,
            }),
            None => Ok(()),
        }
    }

    pub(super) fn set_exclusions(&mut self, exclusions: &[IpNet]) -> Result<(), AllocError> {
        for net in exclusions {
            self.family_check(net)?;
            Self::canonical_check(net)?;
            self.inside_check(net)?;
        }
        let spans: Vec<_> = exclusions
            .iter()
            .map(|n| (start_of(n), last_of(n)))
            .collect();
        self.covered(&spans)?;
        self.exclusions = exclusions.to_vec();
        Ok(())
    }

    pub(super) fn set_reserve(&mut self, reserve: Reserve) -> Result<(), AllocError> {
        self.covered(&self.reserved_spans(reserve))?;
        self.reserve = reserve;
        Ok(())
    }

    pub(super) fn capacity(&self, occupancy: &[Occupant]) -> Capacity {
        let count = |o: Occupant| occupancy.iter().filter(|&&x| x == o).count() as u128;
        Capacity {
            total: AddressCount::new(self.size),
            allocated: AddressCount::new(count(Occupant::Allocated)),
            excluded: AddressCount::new(count(Occupant::Blocked)),
            available: AddressCount::new(count(Occupant::Free)),
        }
    }
}
