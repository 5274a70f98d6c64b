//! Unit tests for exclusions, edge reservations, rebuild and capacity accounting.

use super::tests::{count, net, pool, pool_with};
use super::{AddressCount, AllocError, Capacity, Pool, Reserve};
use ipnet::IpNet;

#[test]
fn reserve_leading_two_trailing_one_on_slash28_leaves_13_hosts() {
    let mut p = pool_with("10.0.0.0/28", &[], 2, 1);
    let hosts: Vec<IpNet> = (0..13).map(|_| p.allocate_first_fit(32).unwrap()).collect();
    let expected: Vec<IpNet> = (2..15).map(|i| net(&format!("10.0.0.{i}/32"))).collect();
    assert_eq!(hosts, expected);
    assert_eq!(
        p.allocate_first_fit(32),
        Err(AllocError::Exhausted {
            requested_len: 32,
            largest_free: None
        })
    );
    assert_eq!(
        p.capacity(),
        Capacity {
            total: count(16),
            allocated: count(13),
            excluded: count(3),
            available: count(0)
        }
    );
}

#[test]
fn reserve_leading_one_on_slash64_hands_out_one_two_three() {
    let mut p = pool_with("fd00::/64", &[], 1, 0);
    for i in 1..=5 {
        assert_eq!(
            p.allocate_first_fit(128).unwrap(),
            net(&format!("fd00::{i}/128"))
        );
    }
}

#[test]
fn reserve_on_slash31_and_slash127_keeps_one_address() {
    let mut v4 = pool_with("10.0.0.0/31", &[], 1, 0);
    assert_eq!(v4.allocate_first_fit(32).unwrap(), net("10.0.0.1/32"));
    assert!(matches!(
        v4.allocate_first_fit(32),
        Err(AllocError::Exhausted { .. })
    ));
    let mut v6 = pool_with("fd00::/127", &[], 0, 1);
    assert_eq!(v6.allocate_first_fit(128).unwrap(), net("fd00::/128"));
    let both = pool_with("fd00::/127", &[], 1, 1);
    assert_eq!(both.largest_free_prefix_len(), None);
}

#[test]
fn reserve_larger_than_the_pool_reserves_everything() {
    let mut p = pool_with("10.0.0.0/29", &[], 9, 0);
    assert_eq!(p.capacity().excluded, count(8));
    assert_eq!(p.capacity().utilization(), "100.00%");
    assert_eq!(
        p.allocate_first_fit(32),
        Err(AllocError::Exhausted {
            requested_len: 32,
            largest_free: None
        })
    );
    p.set_reserve(Reserve {
        leading: u128::MAX,
        trailing: u128::MAX,
    })
    .unwrap();
    p.set_reserve(Reserve::default()).unwrap();
    assert_eq!(p, pool("10.0.0.0/29"));
}

#[test]
fn overlapping_exclusions_count_once_with_reserve() {
    let p = pool_with(
        "10.0.0.0/24",
        &["10.0.0.0/26", "10.0.0.0/28", "10.0.0.32/27"],
        70,
        0,
    );
    assert_eq!(p.capacity().excluded, count(70));
    assert_eq!(p.capacity().utilization(), "27.34%");
}

#[test]
fn exclusion_over_an_allocated_block_is_refused_and_pool_unchanged() {
    let mut p = pool("10.0.0.0/24");
    p.allocate_exact(net("10.0.0.16/28")).unwrap();
    let before = p.clone();
    let err = p
        .set_exclusions(&[net("10.0.0.128/25"), net("10.0.0.0/27")])
        .unwrap_err();
    assert_eq!(
        err,
        AllocError::CoversAllocated {
            block: "exclusion 10.0.0.0/27".into(),
            allocated: net("10.0.0.16/28")
        }
    );
    assert_eq!(
        err.to_string(),
        "exclusion 10.0.0.0/27 would cover allocated block 10.0.0.16/28"
    );
    let err = p
        .set_reserve(Reserve {
            leading: 17,
            trailing: 0,
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.reserve.leading=17 (10.0.0.0-10.0.0.16) would cover allocated block 10.0.0.16/28"
    );
    assert_eq!(p, before);
    assert_eq!(
        p.set_exclusions(&[net("10.1.0.0/27")]),
        Err(AllocError::OutsidePool {
            prefix: net("10.1.0.0/27"),
            pool: net("10.0.0.0/24")
        })
    );
    assert_eq!(p, before);
}

#[test]
fn changing_exclusions_frees_and_blocks_space() {
    let mut p = pool("10.0.0.0/24");
    p.set_exclusions(&[net("10.0.0.0/25")]).unwrap();
    assert_eq!(p.allocate_first_fit(26).unwrap(), net("10.0.0.128/26"));
    p.set_exclusions(&[net("10.0.0.64/26")]).unwrap();
    assert_eq!(p.exclusions(), &[net("10.0.0.64/26")]);
    assert_eq!(p.allocate_first_fit(26).unwrap(), net("10.0.0.0/26"));
    p.release(net("10.0.0.0/26")).unwrap();
    p.release(net("10.0.0.128/26")).unwrap();
    p.set_exclusions(&[]).unwrap();
    assert_eq!(p, pool("10.0.0.0/24"));
}

#[test]
fn rebuild_restores_the_same_pool() {
    let mut p = pool_with("fd20::/48", &["fd20:0:0:10::/60"], 1, 0);
    for len in [64, 56, 64, 62, 52] {
        p.allocate_first_fit(len).unwrap();
    }
    let rebuilt = Pool::rebuild(
        p.prefix(),
        p.exclusions(),
        p.reserve(),
        p.allocated().collect::<Vec<_>>().into_iter().rev(),
    )
    .unwrap();
    assert_eq!(rebuilt, p);
}

#[test]
fn rebuild_rejects_overlapping_blocks() {
    let blocks = [net("10.0.0.64/26"), net("10.0.0.0/25")];
    let err = Pool::rebuild(net("10.0.0.0/24"), &[], Reserve::default(), blocks).unwrap_err();
    assert_eq!(
        err,
        AllocError::Overlap {
            a: net("10.0.0.0/25"),
            b: net("10.0.0.64/26")
        }
    );
    let twice = [net("10.0.0.0/25"), net("10.0.0.0/25")];
    assert!(matches!(
        Pool::rebuild(net("10.0.0.0/24"), &[], Reserve::default(), twice),
        Err(AllocError::Overlap { .. })
    ));
}

#[test]
fn rebuild_rejects_blocks_under_exclusions_or_reserve() {
    let blocks = [net("10.0.0.0/30"), net("10.0.0.128/30")];
    let err = Pool::rebuild(
        net("10.0.0.0/24"),
        &[net("10.0.0.128/25")],
        Reserve::default(),
        blocks,
    )
    .unwrap_err();
    assert_eq!(
        err,
        AllocError::CoversAllocated {
            block: "exclusion 10.0.0.128/25".into(),
            allocated: net("10.0.0.128/30")
        }
    );
    let err = Pool::rebuild(
        net("10.0.0.0/24"),
        &[],
        Reserve {
            leading: 1,
            trailing: 0,
        },
        blocks,
    )
    .unwrap_err();
    assert!(
        matches!(err, AllocError::CoversAllocated { allocated, .. } if allocated == net("10.0.0.0/30"))
    );
}

#[test]
fn rebuild_rejects_malformed_blocks() {
    let p = net("10.0.0.0/24");
    let none = Reserve::default();
    assert!(matches!(
        Pool::rebuild(p, &[], none, [net("10.0.0.1/30")]),
        Err(AllocError::NotCanonical { .. })
    ));
    assert!(matches!(
        Pool::rebuild(p, &[], none, [net("10.0.1.0/30")]),
        Err(AllocError::OutsidePool { .. })
    ));
    assert!(matches!(
        Pool::rebuild(p, &[], none, [net("fd00::/126")]),
        Err(AllocError::FamilyMismatch { .. })
    ));
    assert!(matches!(
        Pool::rebuild(p, &[], none, [net("10.0.0.0/24")]),
        Err(AllocError::LengthOutOfRange { .. })
    ));
    assert!(matches!(
        Pool::new(net("10.0.0.1/24"), &[], none),
        Err(AllocError::NotCanonical { .. })
    ));
    assert!(matches!(
        Pool::new(p, &[net("10.0.0.0/16")], none),
        Err(AllocError::OutsidePool { .. })
    ));
}

#[test]
fn dry_runs_do_not_change_the_pool() {
    let p = pool("10.0.0.0/24");
    let before = p.clone();
    assert_eq!(p.find_first_fit(25).unwrap(), net("10.0.0.0/25"));
    p.check_exact(net("10.0.0.128/25")).unwrap();
    assert_eq!(p, before);
}

#[test]
fn utilization_is_rounded_down_to_two_decimals() {
    let capacity = |allocated: u128, excluded: u128, total: u128| Capacity {
        total: count(total),
        allocated: count(allocated),
        excluded: count(excluded),
        available: count(total - allocated - excluded),
    };
    assert_eq!(capacity(1, 0, 8).utilization(), "12.50%");
    assert_eq!(capacity(2, 0, 3).utilization(), "66.66%");
    assert_eq!(capacity(255, 0, 256).utilization(), "99.60%");
    assert_eq!(
        capacity(u128::MAX - 1, 0, u128::MAX).utilization(),
        "99.99%"
    );
    assert_eq!(capacity(1, 1, 2).utilization(), "100.00%");
}

#[test]
fn address_count_arithmetic_reaches_2_pow_128_exactly() {
    let half = AddressCount::new(1 << 127);
    assert_eq!(half.checked_add(half), Some(AddressCount::TWO_POW_128));
    assert_eq!(AddressCount::TWO_POW_128.checked_add(count(1)), None);
    assert_eq!(
        AddressCount::TWO_POW_128.checked_sub(count(1)),
        Some(count(u128::MAX))
    );
    assert_eq!(count(1).checked_sub(count(2)), None);
    assert!(AddressCount::TWO_POW_128 > count(u128::MAX));
    assert_eq!(AddressCount::pow2(128), Some(AddressCount::TWO_POW_128));
    assert_eq!(AddressCount::pow2(129), None);
}
