//! Unit tests for the edges of allocation, release and request validation. Shared
//! helpers live here; exclusions, reserve, rebuild and capacity are in
//! `constraint_tests.rs`.

use super::{AddressCount, AllocError, Holder, Pool, Reserve};
use ipnet::IpNet;

pub(super) fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

pub(super) fn pool(prefix: &str) -> Pool {
    Pool::new(net(prefix), &[], Reserve::default()).unwrap()
}

pub(super) fn pool_with(prefix: &str, exclusions: &[&str], leading: u128, trailing: u128) -> Pool {
    let exclusions: Vec<IpNet> = exclusions.iter().map(|e| net(e)).collect();
    Pool::new(net(prefix), &exclusions, Reserve { leading, trailing }).unwrap()
}

pub(super) fn count(n: u128) -> AddressCount {
    AddressCount::new(n)
}

#[test]
fn first_fit_returns_lowest_aligned_blocks_in_order() {
    let mut p = pool("10.0.0.0/24");
    assert_eq!(p.allocate_first_fit(26).unwrap(), net("10.0.0.0/26"));
    assert_eq!(p.allocate_first_fit(28).unwrap(), net("10.0.0.64/28"));
    assert_eq!(p.allocate_first_fit(26).unwrap(), net("10.0.0.128/26"));
    assert_eq!(p.allocate_first_fit(27).unwrap(), net("10.0.0.96/27"));
    assert_eq!(p.find_first_fit(32).unwrap(), net("10.0.0.80/32"));
    assert_eq!(p.allocated_count(), 4);
}

#[test]
fn ipv4_slash0_pool_has_2_pow_32_addresses_and_allocates_halves() {
    let mut p = pool("0.0.0.0/0");
    assert_eq!(p.capacity().total, count(1 << 32));
    assert_eq!(p.largest_free_prefix_len(), Some(1));
    assert_eq!(p.allocate_first_fit(1).unwrap(), net("0.0.0.0/1"));
    assert_eq!(p.allocate_first_fit(1).unwrap(), net("128.0.0.0/1"));
    assert_eq!(p.capacity().allocated, count(1 << 32));
    assert_eq!(p.capacity().utilization(), "100.00%");
    assert_eq!(
        p.allocate_first_fit(32),
        Err(AllocError::Exhausted {
            requested_len: 32,
            largest_free: None
        })
    );
    p.release(net("128.0.0.0/1")).unwrap();
    assert_eq!(p.allocate_first_fit(32).unwrap(), net("128.0.0.0/32"));
}

#[test]
fn ipv6_slash0_pool_counts_exactly_2_pow_128_addresses() {
    let mut p = pool("::/0");
    let capacity = p.capacity();
    assert_eq!(capacity.total, AddressCount::TWO_POW_128);
    assert_eq!(
        capacity.total.to_string(),
        "340282366920938463463374607431768211456"
    );
    assert_eq!(capacity.available, AddressCount::TWO_POW_128);
    assert_eq!(capacity.utilization(), "0.00%");
    assert_eq!(p.allocate_first_fit(128).unwrap(), net("::/128"));
    assert_eq!(
        p.capacity().available.to_string(),
        "340282366920938463463374607431768211455"
    );
    assert_eq!(p.capacity().utilization(), "0.00%");
    p.allocate_exact(net("8000::/1")).unwrap();
    assert_eq!(p.capacity().utilization(), "50.00%");
    p.allocate_exact(net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"))
        .unwrap_err();
    assert_eq!(
        p.allocate_first_fit(1),
        Err(AllocError::Exhausted {
            requested_len: 1,
            largest_free: Some(2)
        })
    );
    p.release(net("::/128")).unwrap();
    p.release(net("8000::/1")).unwrap();
    assert_eq!(p, pool("::/0"));
}

#[test]
fn slash0_pool_fully_excluded_reports_2_pow_128_excluded() {
    let p = pool_with("::/0", &["::/0"], 0, 0);
    assert_eq!(p.capacity().excluded, AddressCount::TWO_POW_128);
    assert_eq!(p.capacity().available, AddressCount::ZERO);
    assert_eq!(p.capacity().utilization(), "100.00%");
    assert_eq!(p.largest_free_prefix_len(), None);
    let reserved = pool_with("::/0", &[], u128::MAX, u128::MAX);
    assert_eq!(reserved.capacity().excluded, AddressCount::TWO_POW_128);
}

#[test]
fn slash32_and_slash128_pools_refuse_every_length() {
    for (prefix, max) in [("10.0.0.7/32", 32u8), ("fd00::7/128", 128u8)] {
        let mut p = pool(prefix);
        let refused = AllocError::LengthOutOfRange {
            requested: max,
            min: max + 1,
            max,
        };
        assert_eq!(p.allocate_first_fit(max), Err(refused.clone()));
        assert_eq!(p.allocate_exact(net(prefix)), Err(refused));
        assert_eq!(p.largest_free_prefix_len(), None);
        assert_eq!(p.capacity().total, count(1));
        assert_eq!(p.capacity().available, count(1));
    }
}

#[test]
fn leaf_blocks_allocate_in_a_slash31_and_slash127() {
    let mut v4 = pool("10.0.0.0/31");
    assert_eq!(v4.allocate_first_fit(32).unwrap(), net("10.0.0.0/32"));
    assert_eq!(v4.allocate_first_fit(32).unwrap(), net("10.0.0.1/32"));
    let mut v6 = pool("fd00::/127");
    v6.allocate_exact(net("fd00::1/128")).unwrap();
    assert_eq!(v6.allocate_first_fit(128).unwrap(), net("fd00::/128"));
    assert!(v6.allocate_first_fit(128).is_err());
}

#[test]
fn requests_equal_to_or_shorter_than_the_pool_are_refused_not_panicking() {
    let mut p = pool("10.0.0.0/24");
    let refused = |requested| AllocError::LengthOutOfRange {
        requested,
        min: 25,
        max: 32,
    };
    assert_eq!(p.allocate_first_fit(24), Err(refused(24)));
    assert_eq!(p.allocate_first_fit(0), Err(refused(0)));
    assert_eq!(p.allocate_first_fit(33), Err(refused(33)));
    assert_eq!(p.allocate_first_fit(255), Err(refused(255)));
    assert_eq!(p.find_first_fit(16), Err(refused(16)));
    assert_eq!(p.allocate_exact(net("10.0.0.0/24")), Err(refused(24)));
    assert_eq!(p.allocate_exact(net("10.0.0.0/8")), Err(refused(8)));
    let mut v6 = pool("::/0");
    assert_eq!(
        v6.allocate_first_fit(129),
        Err(AllocError::LengthOutOfRange {
            requested: 129,
            min: 1,
            max: 128
        })
    );
    assert_eq!(
        v6.allocate_first_fit(0),
        Err(AllocError::LengthOutOfRange {
            requested: 0,
            min: 1,
            max: 128
        })
    );
}

#[test]
fn misaligned_exact_request_is_refused_with_the_canonical_form() {
    let mut p = pool("10.0.0.0/24");
    let err = p.allocate_exact(net("10.0.0.5/30")).unwrap_err();
    assert_eq!(
        err,
        AllocError::NotCanonical {
            prefix: net("10.0.0.5/30"),
            canonical: net("10.0.0.4/30")
        }
    );
    assert_eq!(
        err.to_string(),
        "10.0.0.5/30 is not a canonical prefix (host bits set); did you mean 10.0.0.4/30?"
    );
    assert_eq!(
        p.release(net("10.0.0.5/30")),
        Err(AllocError::NotCanonical {
            prefix: net("10.0.0.5/30"),
            canonical: net("10.0.0.4/30")
        })
    );
}

#[test]
fn exact_request_outside_the_pool_is_refused() {
    let mut p = pool("10.0.0.0/24");
    assert_eq!(
        p.allocate_exact(net("10.0.1.0/28")),
        Err(AllocError::OutsidePool {
            prefix: net("10.0.1.0/28"),
            pool: net("10.0.0.0/24")
        })
    );
}

#[test]
fn ipv4_and_ipv6_mismatches_are_refused_everywhere() {
    let mut p = pool("10.0.0.0/24");
    let mismatch = AllocError::FamilyMismatch {
        pool: net("10.0.0.0/24"),
        requested: "fd00::/120".into(),
    };
    assert_eq!(p.allocate_exact(net("fd00::/120")), Err(mismatch.clone()));
    assert_eq!(p.check_exact(net("fd00::/120")), Err(mismatch.clone()));
    assert_eq!(p.release(net("fd00::/120")), Err(mismatch.clone()));
    assert_eq!(
        p.set_exclusions(&[net("fd00::/120")]),
        Err(mismatch.clone())
    );
    assert!(!p.is_allocated(net("fd00::/120")));
    assert_eq!(
        mismatch.to_string(),
        "fd00::/120 is not the same IP family as pool 10.0.0.0/24 (IPv4)"
    );
    let mut v6 = pool("fd00::/64");
    assert!(matches!(
        v6.allocate_exact(net("10.0.0.0/32")),
        Err(AllocError::FamilyMismatch { .. })
    ));
}

#[test]
fn collision_names_the_allocated_block_it_hits() {
    let mut p = pool("fd20::/64");
    p.allocate_exact(net("fd20::4/126")).unwrap();
    let err = p.allocate_exact(net("fd20::5/128")).unwrap_err();
    assert_eq!(
        err,
        AllocError::Collision {
            prefix: net("fd20::5/128"),
            holder: Holder::Allocated(net("fd20::4/126"))
        }
    );
    assert_eq!(
        err.to_string(),
        "fd20::5/128 collides with allocated block fd20::4/126"
    );
}

#[test]
fn collision_with_several_holders_names_the_lowest_addressed_one() {
    let mut p = pool_with("10.0.0.0/24", &["10.0.0.64/28"], 0, 0);
    p.allocate_exact(net("10.0.0.96/30")).unwrap();
    p.allocate_exact(net("10.0.0.32/30")).unwrap();
    let err = p.check_exact(net("10.0.0.0/25")).unwrap_err();
    assert_eq!(
        err,
        AllocError::Collision {
            prefix: net("10.0.0.0/25"),
            holder: Holder::Allocated(net("10.0.0.32/30"))
        }
    );
    let err = p.check_exact(net("10.0.0.64/26")).unwrap_err();
    assert_eq!(
        err,
        AllocError::Collision {
            prefix: net("10.0.0.64/26"),
            holder: Holder::Excluded(net("10.0.0.64/28"))
        }
    );
}

#[test]
fn collision_with_reserved_edge_says_reserved() {
    let mut p = pool_with("10.0.0.0/24", &[], 1, 1);
    assert_eq!(
        p.allocate_exact(net("10.0.0.0/32")),
        Err(AllocError::Collision {
            prefix: net("10.0.0.0/32"),
            holder: Holder::Reserved
        })
    );
    assert_eq!(
        p.allocate_exact(net("10.0.0.255/32")),
        Err(AllocError::Collision {
            prefix: net("10.0.0.255/32"),
            holder: Holder::Reserved
        })
    );
    p.allocate_exact(net("10.0.0.1/32")).unwrap();
}

#[test]
fn releasing_something_not_allocated_is_refused() {
    let mut p = pool("10.0.0.0/24");
    p.allocate_exact(net("10.0.0.0/28")).unwrap();
    assert_eq!(
        p.release(net("10.0.0.0/29")),
        Err(AllocError::NotAllocated {
            prefix: net("10.0.0.0/29")
        })
    );
    assert_eq!(
        p.release(net("10.0.0.16/28")),
        Err(AllocError::NotAllocated {
            prefix: net("10.0.0.16/28")
        })
    );
    p.release(net("10.0.0.0/28")).unwrap();
    assert_eq!(
        p.release(net("10.0.0.0/28")),
        Err(AllocError::NotAllocated {
            prefix: net("10.0.0.0/28")
        })
    );
    assert_eq!(p, pool("10.0.0.0/24"));
}

#[test]
fn pools_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
    assert_send_sync::<AllocError>();
}

#[test]
fn allocated_containing_finds_the_block_holding_an_address_or_prefix() {
    let mut p = pool("fd20::/48");
    p.allocate_exact(net("fd20:0:0:1::/64")).unwrap();
    p.allocate_exact(net("fd20:0:0:4::/62")).unwrap();
    let inside = |s: &str| p.allocated_containing(net(s));
    assert_eq!(inside("fd20:0:0:1::5/128"), Some(net("fd20:0:0:1::/64")));
    assert_eq!(inside("fd20:0:0:1::/64"), Some(net("fd20:0:0:1::/64")));
    assert_eq!(inside("fd20:0:0:6::/64"), Some(net("fd20:0:0:4::/62")));
    assert_eq!(inside("fd20:0:0:2::1/128"), None);
    // Wider than the block: it does not contain it.
    assert_eq!(inside("fd20::/60"), None);
    assert_eq!(inside("10.0.0.1/32"), None);
}

#[test]
fn free_blocks_are_maximal_around_children_exclusions_and_reserve() {
    let mut p = pool_with("10.0.0.0/24", &["10.0.0.128/26"], 1, 1);
    p.allocate_exact(net("10.0.0.16/28")).unwrap();
    let free: Vec<String> = p.free_blocks().map(|b| b.to_string()).collect();
    assert_eq!(
        free,
        [
            "10.0.0.1/32",
            "10.0.0.2/31",
            "10.0.0.4/30",
            "10.0.0.8/29",
            "10.0.0.32/27",
            "10.0.0.64/26",
            "10.0.0.192/27",
            "10.0.0.224/28",
            "10.0.0.240/29",
            "10.0.0.248/30",
            "10.0.0.252/31",
            "10.0.0.254/32",
        ]
    );
    // /28s: the /27s hold two each, the /26 four, the /28 one.
    assert_eq!(p.fitting(28), Some(count(2 + 4 + 2 + 1)));
    assert_eq!(p.fitting(24), None);
    assert_eq!(p.fitting(33), None);
}
