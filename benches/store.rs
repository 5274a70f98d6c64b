//! Store benchmark: what one claim create costs the storage layer alone, with no HTTP, JSON or
//! allocation around it.
//!
//! Each commit has the shape of a claim create: the claim and its child IPPrefix put with an
//! `Absent` precondition, values of the sizes the server stores (~700 and ~600 bytes of JSON;
//! the parent's status is written in batches, not by each create). `C` tasks commit and wait
//! for durability (group commit), as `C` concurrent clients would. Reported per commit:
//! wall-clock rate, CPU of the whole process (sled's I/O threads and the store's own thread
//! included, from `/proc/self/stat`) and bytes the process wrote to disk (`/proc/self/io`).
//!
//! ```text
//! cargo bench --bench store                 # 20,000 commits per row
//! STORE_BENCH_COMMITS=100000 cargo bench --bench store
//! ```
use bytes::Bytes;
use ipam_apiserver::store::{ObjectKey, Op, Precondition, SledStore, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let commits: u64 = std::env::var("STORE_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!(
        "{:<34} {:>9} {:>12} {:>14} {:>16}",
        "committers (commits)", "commits/s", "CPU µs/commit", "bytes/commit", "fsyncs (batches)"
    );
    for committers in [1, 16, 64] {
        let n = if committers == 1 {
            commits / 10
        } else {
            commits
        };
        run(committers, n);
    }
}

fn run(committers: u64, commits: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path(), 1000).expect("open store"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let claim = Bytes::from(vec![b'c'; 700]);
    let child = Bytes::from(vec![b'p'; 600]);
    let next = Arc::new(AtomicU64::new(0));
    let batches_before = batches();

    let (cpu0, written0, t0) = (cpu_seconds(), bytes_written(), Instant::now());
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..committers {
            let (store, next) = (store.clone(), next.clone());
            let (claim, child) = (claim.clone(), child.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= commits {
                        return;
                    }
                    let name = format!("load-{i:08}");
                    let ops = vec![
                        Op::Put {
                            key: ObjectKey::new("ipprefixclaims", "load", name.as_str()),
                            value: claim.clone(),
                            precondition: Precondition::Absent,
                        },
                        Op::Put {
                            key: ObjectKey::new("ipprefixes", "", format!("load.{name}")),
                            value: child.clone(),
                            precondition: Precondition::Absent,
                        },
                    ];
                    let committed = store.commit(ops).await.expect("commit");
                    committed.durable.await.expect("durable");
                }
            }));
        }
        for t in tasks {
            t.await.expect("committer");
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu, written) = (cpu_seconds() - cpu0, bytes_written() - written0);
    let flushes = batches() - batches_before;
    println!(
        "{:<34} {:>9.0} {:>12.1} {:>14.0} {:>16}",
        format!("{committers} ({commits})"),
        commits as f64 / elapsed,
        cpu * 1e6 / commits as f64,
        written as f64 / commits as f64,
        flushes,
    );
    drop(store);
}

/// Group-commit flushes so far, from the server's own metrics.
fn batches() -> u64 {
    let text = ipam_apiserver::metrics::global().encode();
    text.lines()
        .find_map(|l| l.strip_prefix("ipam_store_commit_batch_size_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU of this process, all threads, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => 0.0,
    }
}

/// Bytes this process caused to be written to storage.
fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
