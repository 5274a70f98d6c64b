//! Allocator benchmarks: per-operation cost with 10^3, 10^5 and 10^6 blocks already
//! allocated and fragmented free space, rebuild time, and index memory per block.
//!
//! Each pool is built once per size: 2n blocks allocated first-fit, then every
//! other one released, leaving n allocated blocks and n one-block holes. Every
//! measured operation is undone outside the timed region, so the state is steady.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ipam_apiserver::alloc::{Pool, Reserve};
use ipnet::IpNet;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts live heap bytes so the bench can report index memory per block.
struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged;
// the counter is only bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

/// A pool holding `n` blocks of `/len` with a one-block hole after each, plus the
/// allocated blocks and the holes.
fn fragmented_pool(prefix: &str, len: u8, n: usize) -> (Pool, Vec<IpNet>, Vec<IpNet>) {
    let prefix: IpNet = prefix.parse().expect("bench prefix parses");
    let mut pool = Pool::new(prefix, &[], Reserve::default()).expect("bench pool is valid");
    let blocks: Vec<IpNet> = (0..2 * n)
        .map(|_| pool.allocate_first_fit(len).expect("bench pool has room"))
        .collect();
    let (mut kept, mut holes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, block) in blocks.into_iter().enumerate() {
        if i % 2 == 1 {
            pool.release(block).expect("release of an allocated block");
            holes.push(block);
        } else {
            kept.push(block);
        }
    }
    (pool, kept, holes)
}

/// Live heap bytes of a pool built like `fragmented_pool`, per allocated block.
fn index_bytes_per_block(prefix: &str, len: u8, n: usize) -> (f64, f64) {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let (pool, kept, holes) = fragmented_pool(prefix, len, n);
    drop((kept, holes));
    let incremental = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / n as f64;
    let allocated: Vec<IpNet> = pool.allocated().collect();
    drop(pool);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let rebuilt = Pool::rebuild(
        prefix.parse().expect("parses"),
        &[],
        Reserve::default(),
        allocated,
    )
    .expect("rebuild of a consistent list");
    let after_rebuild = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / n as f64;
    drop(rebuilt);
    (incremental, after_rebuild)
}

/// Times `op` alone on `pool`: `setup` before and `undo` after each call run outside
/// the timed region, so every iteration starts from the same state.
fn time_each<S, T>(
    iters: u64,
    pool: &mut Pool,
    mut setup: impl FnMut(&mut Pool, u64) -> S,
    mut op: impl FnMut(&mut Pool, S) -> T,
    mut undo: impl FnMut(&mut Pool, T),
) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let input = setup(pool, i);
        let start = Instant::now();
        let out = black_box(op(pool, black_box(input)));
        total += start.elapsed();
        undo(pool, out);
    }
    total
}

fn scenario(c: &mut Criterion, group_name: &str, prefix: &str, len: u8) {
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in SIZES {
        let (mut pool, kept, holes) = fragmented_pool(prefix, len, n);
        // Spread exact requests over the whole pool (7919 is prime, so all are visited).
        let hole = |i: u64| holes[(i as usize).wrapping_mul(7919) % holes.len()];
        let kept_block = |i: u64| kept[(i as usize).wrapping_mul(7919) % kept.len()];
        let mut measure = |name: &str,
                           setup: &dyn Fn(&mut Pool, u64) -> IpNet,
                           op: &dyn Fn(&mut Pool, IpNet) -> IpNet,
                           undo: &dyn Fn(&mut Pool, IpNet)| {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| time_each(iters, &mut pool, setup, op, undo))
            });
        };
        // The pair the targets are stated for: first fit, then release of that block.
        measure(
            "allocate_first_fit",
            &|_, _| IpNet::default(),
            &|pool, _| pool.allocate_first_fit(len).expect("a hole is free"),
            &|pool, block| pool.release(block).expect("just allocated"),
        );
        measure(
            "release_after_first_fit",
            &|pool, _| pool.allocate_first_fit(len).expect("a hole is free"),
            &|pool, block| {
                pool.release(block).expect("just allocated");
                block
            },
            &|_, _| (),
        );
        // Random positions: every call misses the CPU caches at 10^6 blocks.
        measure(
            "allocate_exact_random_hole",
            &|_, i| hole(i),
            &|pool, block| {
                pool.allocate_exact(block).expect("holes are free");
                block
            },
            &|pool, block| pool.release(block).expect("just allocated"),
        );
        measure(
            "release_random_block",
            &|_, i| kept_block(i),
            &|pool, block| {
                pool.release(block).expect("kept blocks are allocated");
                block
            },
            &|pool, block| pool.allocate_exact(block).expect("just released"),
        );
    }
    group.finish();
}

fn small_blocks(c: &mut Criterion) {
    scenario(c, "slash128_in_fd00::/64", "fd00::/64", 128);
}

fn wide_blocks(c: &mut Criterion) {
    scenario(c, "slash48_in_fd20::/20", "fd20::/20", 48);
}

fn rebuild(c: &mut Criterion) {
    let n = 1_000_000;
    let (pool, _, _) = fragmented_pool("fd00::/64", 128, n);
    let allocated: Vec<IpNet> = pool.allocated().collect();
    drop(pool);
    let mut group = c.benchmark_group("rebuild");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(8));
    group.bench_function(BenchmarkId::new("slash128_in_fd00::/64", n), |b| {
        b.iter(|| {
            Pool::rebuild(
                "fd00::/64".parse().expect("parses"),
                &[],
                Reserve::default(),
                allocated.iter().copied(),
            )
            .expect("consistent list")
        })
    });
    group.finish();
}

/// Every claim create builds the pool of its new child prefix (for its status), under the
/// registry's writer lock: a /128 host and a /64 subnet.
fn new_child_pool(c: &mut Criterion) {
    let mut group = c.benchmark_group("new_pool");
    for (label, prefix) in [("slash128", "fd00::1/128"), ("slash64", "fd00:0:0:1::/64")] {
        let net: IpNet = prefix.parse().expect("parses");
        group.bench_function(label, |b| {
            b.iter(|| Pool::new(black_box(net), &[], Reserve::default()).expect("valid"))
        });
    }
    group.finish();
}

fn memory(_: &mut Criterion) {
    for (label, prefix, len) in [
        ("/128 in fd00::/64", "fd00::/64", 128u8),
        ("/48 in fd20::/20", "fd20::/20", 48u8),
    ] {
        for n in SIZES {
            let (incremental, rebuilt) = index_bytes_per_block(prefix, len, n);
            println!(
                "index memory, {label}, {n} blocks (+{n} holes): {incremental:.1} bytes/block built incrementally, {rebuilt:.1} bytes/block after rebuild"
            );
        }
    }
}

criterion_group!(
    benches,
    memory,
    small_blocks,
    wide_blocks,
    rebuild,
    new_child_pool
);
criterion_main!(benches);
