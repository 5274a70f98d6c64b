//! Reverse lookup (`fieldSelector=spec.prefix.contains=...`) against the plain list that a
//! scan would cost, at a given number of stored IPPrefixes: one root fd20::/20, pools of /48 in
//! it and /128 hosts in each pool (1,000 per pool), written straight into a sled store and then
//! loaded by the registry as at a restart. No HTTP: the registry's own list calls.
//!
//! ```text
//! cargo bench --bench lookup                          # 10^4 and 10^6 prefixes
//! LOOKUP_BENCH_PREFIXES=100000 cargo bench --bench lookup
//! ```
use bytes::Bytes;
use ipam_apiserver::api::IPPrefix;
use ipam_apiserver::registry::selector::parse_field_selector;
use ipam_apiserver::registry::{Kind, ListOptions, Registry};
use ipam_apiserver::store::{ObjectKey, Op, Precondition, SledStore, Store};
use std::sync::Arc;
use std::time::Instant;

const HOSTS_PER_POOL: usize = 1000;

fn main() {
    let sizes: Vec<usize> = match std::env::var("LOOKUP_BENCH_PREFIXES") {
        Ok(v) => vec![v.parse().expect("LOOKUP_BENCH_PREFIXES is a number")],
        Err(_) => vec![10_000, 1_000_000],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{:>10} {:>14} {:>16} {:>14}",
        "prefixes", "lookup µs", "plain list ms", "load s"
    );
    for n in sizes {
        runtime.block_on(run(n));
    }
}

fn object(p: &IPPrefix) -> Op {
    Op::Put {
        key: ObjectKey::new(
            "ipprefixes",
            "",
            p.metadata.name.clone().unwrap_or_default(),
        ),
        value: Bytes::from(serde_json::to_vec(p).expect("encode")),
        precondition: Precondition::Absent,
    }
}

async fn run(prefixes: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path(), 1000).expect("open store"));
    let pools = prefixes
        .saturating_sub(1)
        .div_ceil(HOSTS_PER_POOL + 1)
        .max(1);
    // The last host written: the deepest chain, among the last keys of a scan.
    let mut target = String::new();
    let mut ops = vec![object(&IPPrefix::root(
        "root",
        "fd20::/20".parse().expect("cidr"),
    ))];
    let mut written = 1;
    for pool in 0..pools {
        let pool_net = format!("fd20:{pool:x}::/48");
        let pool_name = format!("p{pool:05}");
        ops.push(object(&IPPrefix::carve(
            &pool_name,
            "root",
            pool_net.parse().expect("cidr"),
        )));
        written += 1;
        for host in 0..HOSTS_PER_POOL.min(prefixes.saturating_sub(written)) {
            ops.push(object(&IPPrefix::carve(
                &format!("{pool_name}-h{host:04}"),
                &pool_name,
                format!("fd20:{pool:x}::{host:x}/128")
                    .parse()
                    .expect("cidr"),
            )));
            written += 1;
            target = format!("fd20:{pool:x}::{host:x}");
            if ops.len() >= 10_000 {
                let batch = std::mem::take(&mut ops);
                store
                    .commit(batch)
                    .await
                    .expect("commit")
                    .durable
                    .await
                    .expect("durable");
            }
        }
    }
    store
        .commit(ops)
        .await
        .expect("commit")
        .durable
        .await
        .expect("durable");

    let loaded = Instant::now();
    let registry = Registry::new(store).await.expect("load");
    let load = loaded.elapsed().as_secs_f64();

    let selector = format!("spec.prefix.contains={target}");
    let opts = ListOptions {
        field_selector: parse_field_selector(&selector, &IPPrefix::selectable_fields())
            .expect("selector"),
        ..Default::default()
    };
    let lookups = 1000;
    let t = Instant::now();
    for _ in 0..lookups {
        let chain = registry
            .list_indexed::<IPPrefix>(None, &opts)
            .await
            .expect("lookup");
        assert_eq!(chain.items.len(), 3);
    }
    let lookup = t.elapsed().as_secs_f64() / f64::from(lookups) * 1e6;
    let scans = 3;
    let t = Instant::now();
    for _ in 0..scans {
        let listed = registry.list::<IPPrefix>(None, &opts).await.expect("list");
        assert_eq!(listed.items.len(), 3);
    }
    let scan = t.elapsed().as_secs_f64() / f64::from(scans) * 1e3;
    println!("{written:>10} {lookup:>14.1} {scan:>16.1} {load:>14.2}");
}
