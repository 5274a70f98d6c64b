//! Property tests: random operation sequences on small pools (1 to 1024 addresses,
//! IPv4 and IPv6, including the top of the address space), checked step by step
//! against the naive model in `model.rs`.

use super::model::{make_net, start_of, Model, Occupant};
use super::{AddressCount, AllocError, Capacity, Pool, Reserve};
use ipnet::IpNet;
use proptest::prelude::*;

/// An operation in pool-relative terms, resolved against the pool when run.
#[derive(Debug, Clone)]
enum Op {
    FirstFit {
        len_pick: u8,
    },
    Exact {
        offset: u32,
        len_pick: u8,
        canonical: bool,
        wrong_family: bool,
    },
    ReleaseAllocated {
        pick: usize,
    },
    ReleaseRandom {
        offset: u32,
        len_pick: u8,
    },
    SetExclusions(Vec<(u32, u8, bool)>),
    SetReserve {
        leading: u128,
        trailing: u128,
    },
}

fn reserve_amount() -> impl Strategy<Value = u128> {
    prop_oneof![4 => 0u128..4, 2 => 0u128..1100, 1 => Just(u128::MAX)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<u8>().prop_map(|len_pick| Op::FirstFit { len_pick }),
        4 => (any::<u32>(), any::<u8>(), prop::bool::weighted(0.8), prop::bool::weighted(0.05))
            .prop_map(|(offset, len_pick, canonical, wrong_family)| Op::Exact { offset, len_pick, canonical, wrong_family }),
        4 => any::<usize>().prop_map(|pick| Op::ReleaseAllocated { pick }),
        1 => (any::<u32>(), any::<u8>()).prop_map(|(offset, len_pick)| Op::ReleaseRandom { offset, len_pick }),
        1 => prop::collection::vec((any::<u32>(), any::<u8>(), prop::bool::weighted(0.1)), 0..4).prop_map(Op::SetExclusions),
        1 => (reserve_amount(), reserve_amount()).prop_map(|(leading, trailing)| Op::SetReserve { leading, trailing }),
    ]
}

/// Pools of 1 to 1024 addresses, IPv4 or IPv6, anywhere including the top edge.
fn pool_prefix() -> impl Strategy<Value = IpNet> {
    let base = prop_oneof![Just(0u128), Just(u128::MAX), any::<u128>()];
    (any::<bool>(), base, 0u8..=10).prop_map(|(v4, base, host_bits)| {
        let (max, base) = if v4 {
            (32, base & u128::from(u32::MAX))
        } else {
            (128, base)
        };
        make_net(v4, base, max - host_bits).trunc()
    })
}

/// A prefix for a request: mostly inside the pool with an allocatable length; one
/// pick in eight lands anywhere from one pool-size below to one above the pool, with
/// a length from two shorter than the pool up to the maximum.
fn nearby(model: &Model, offset: u32, len_pick: u8, wrong_family: bool) -> IpNet {
    let wide = offset % 8 == 0;
    let lowest_len = if wide {
        model.pool_len.saturating_sub(2)
    } else {
        (model.pool_len + 1).min(model.max_len)
    };
    let len = lowest_len + len_pick % (model.max_len - lowest_len + 1);
    if wrong_family {
        return if model.is_v4() {
            make_net(false, u128::from(offset), len)
        } else {
            make_net(true, u128::from(offset), len.min(32))
        };
    }
    let address = if wide {
        let window = 3 * model.size;
        model
            .base
            .wrapping_add(u128::from(offset) % window)
            .wrapping_sub(model.size)
    } else {
        model.base + u128::from(offset) % model.size
    };
    let address = if model.is_v4() {
        address & u128::from(u32::MAX)
    } else {
        address
    };
    make_net(model.is_v4(), address, len)
}

/// Errors compared field by field, except the free-text constraint description.
fn normalized<T>(result: Result<T, AllocError>) -> Result<T, AllocError> {
    result.map_err(|e| match e {
        AllocError::CoversAllocated { allocated, .. } => AllocError::CoversAllocated {
            block: String::new(),
            allocated,
        },
        other => other,
    })
}

fn run_op(pool: &mut Pool, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::FirstFit { len_pick } => {
            let len = model.pool_len.saturating_sub(1)
                + len_pick % (model.max_len - model.pool_len.saturating_sub(1) + 2);
            prop_assert_eq!(pool.find_first_fit(len), model.clone().first_fit(len));
            prop_assert_eq!(pool.allocate_first_fit(len), model.first_fit(len));
        }
        Op::Exact {
            offset,
            len_pick,
            canonical,
            wrong_family,
        } => {
            let net = nearby(model, *offset, *len_pick, *wrong_family);
            let net = if *canonical { net.trunc() } else { net };
            prop_assert_eq!(pool.check_exact(net), model.clone().exact(net));
            prop_assert_eq!(pool.allocate_exact(net), model.exact(net));
        }
        Op::ReleaseAllocated { pick } => {
            if !model.allocated.is_empty() {
                let net = model.allocated[pick % model.allocated.len()];
                prop_assert_eq!(pool.release(net), model.release(net));
            }
        }
        Op::ReleaseRandom { offset, len_pick } => {
            let net = nearby(model, *offset, *len_pick, false).trunc();
            prop_assert_eq!(pool.release(net), model.release(net));
        }
        Op::SetExclusions(picks) => {
            let nets: Vec<IpNet> = picks
                .iter()
                .map(|&(offset, len_pick, raw)| {
                    let net = nearby(model, offset, len_pick, false);
                    let net = if raw { net } else { net.trunc() };
                    // Mostly keep exclusions inside the pool so they take effect.
                    if raw || model.inside_check(&net).is_ok() {
                        net
                    } else {
                        make_net(
                            model.is_v4(),
                            model.base + u128::from(offset) % model.size,
                            model.max_len,
                        )
                    }
                })
                .collect();
            prop_assert_eq!(
                normalized(pool.set_exclusions(&nets)),
                normalized(model.set_exclusions(&nets))
            );
        }
        Op::SetReserve { leading, trailing } => {
            let reserve = Reserve {
                leading: *leading,
                trailing: *trailing,
            };
            prop_assert_eq!(
                normalized(pool.set_reserve(reserve)),
                normalized(model.set_reserve(reserve))
            );
        }
    }
    Ok(())
}

/// Everything observable agrees with the model, and the index equals a from-scratch rebuild.
fn check_state(pool: &Pool, model: &Model) -> Result<(), TestCaseError> {
    let occupancy = model.occupancy();
    let mut expected = model.allocated.clone();
    expected.sort_by_key(start_of);
    prop_assert_eq!(pool.allocated().collect::<Vec<_>>(), expected);
    prop_assert_eq!(pool.allocated_count(), model.allocated.len());
    prop_assert_eq!(pool.capacity(), model.capacity(&occupancy));
    prop_assert_eq!(
        pool.largest_free_prefix_len(),
        model.largest_free(&occupancy)
    );
    for net in &model.allocated {
        prop_assert!(pool.is_allocated(*net));
    }
    // Free blocks are wholly free and maximal (their parent is not wholly free).
    for block in pool.free.blocks() {
        let offset = (block.start - model.base) as usize;
        let size = 1usize << (model.max_len - block.len);
        prop_assert!(occupancy[offset..offset + size]
            .iter()
            .all(|&o| o == Occupant::Free));
        if block.len > model.pool_len {
            let parent = offset & !(2 * size - 1);
            prop_assert!(occupancy[parent..parent + 2 * size]
                .iter()
                .any(|&o| o != Occupant::Free));
        }
    }
    let rebuilt = Pool::rebuild(
        pool.prefix(),
        pool.exclusions(),
        pool.reserve(),
        pool.allocated(),
    );
    prop_assert_eq!(rebuilt.as_ref(), Ok(pool));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_naive_model(prefix in pool_prefix(), ops in prop::collection::vec(op(), 1..60)) {
        let mut pool = Pool::new(prefix, &[], Reserve::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut model = Model::new(prefix);
        check_state(&pool, &model)?;
        for op in &ops {
            run_op(&mut pool, &mut model, op)?;
            check_state(&pool, &model)?;
        }
    }

    #[test]
    fn releasing_everything_restores_the_initial_pool(
        prefix in pool_prefix(),
        ops in prop::collection::vec(op(), 1..60),
        order in prop::collection::vec(any::<usize>(), 64),
    ) {
        let mut pool = Pool::new(prefix, &[], Reserve::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut model = Model::new(prefix);
        for op in &ops {
            run_op(&mut pool, &mut model, op)?;
        }
        let initial = Pool::new(prefix, pool.exclusions(), pool.reserve()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut remaining: Vec<IpNet> = pool.allocated().collect();
        for pick in order.iter().cycle().take(remaining.len()) {
            let net = remaining.swap_remove(pick % remaining.len());
            prop_assert_eq!(pool.release(net), Ok(()));
        }
        prop_assert_eq!(pool.allocated_count(), 0);
        prop_assert_eq!(&pool, &initial);
    }

    #[test]
    fn utilization_rounds_down_exactly(allocated in any::<u128>(), excluded in any::<u128>(), exponent in 0u32..=128) {
        let total = AddressCount::pow2(exponent).ok_or_else(|| TestCaseError::fail("exponent"))?;
        let total_f = 2f64.powi(exponent as i32);
        let (allocated, excluded) = if exponent == 128 { (allocated / 2, excluded / 2) } else {
            let size = 1u128 << exponent;
            (allocated % (size / 2 + 1), excluded % (size / 2 + 1))
        };
        let used = allocated + excluded;
        let capacity = Capacity { total, allocated: AddressCount::new(allocated), excluded: AddressCount::new(excluded), available: AddressCount::ZERO };
        let shown = capacity.utilization();
        let percent: f64 = shown.trim_end_matches('%').parse().map_err(|_| TestCaseError::fail("parse"))?;
        let exact = used as f64 / total_f * 100.0;
        prop_assert!(percent <= exact + 1e-9 && exact < percent + 0.01 + 1e-9, "{} for {}/{}", shown, used, total);
        prop_assert_eq!(shown == "100.00%", AddressCount::new(used) == total);
    }
}
