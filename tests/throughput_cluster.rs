//! Issue 7, a benchmark (not a timed assertion): IPPrefixClaim creates per second through a real
//! kube-apiserver (the aggregation layer), next to ConfigMap creates on the same kube-apiserver in
//! the same run.
//!
//! Ignored by default, so `cargo test` never runs it. Run it in release mode:
//!
//! ```text
//! KUBEBUILDER_ASSETS=$(../shared/envtest/assets.sh) \
//!   cargo test --release --test throughput_cluster -- --ignored --nocapture
//! ```
//!
//! Knobs: `IPAM_BENCH_COUNT` (creates per kind, default 2000, split over the rounds),
//! `IPAM_BENCH_ROUNDS` (rounds per kind, default 2; more rounds spread a noisy host's slow
//! spells over both kinds),
//! `IPAM_BENCH_CONCURRENCY` (concurrent tasks, default 32), `IPAM_BENCH_DIRECT=0` to skip the
//! extra rounds that send claims straight to ipam-apiserver (bypassing the aggregator; they
//! show what the proxy hop costs).
//!
//! Rounds alternate (configmaps, claims, configmaps, claims) to spread warm-up effects, after a
//! small uncounted warm-up of each. `drain s` is how long, after a round's last create, the
//! Events ipam-apiserver writes in the background (one per claim, rate-limited like client-go's
//! recorder) kept arriving; the next round starts after them. The CPU table (per process, from
//! /proc) covers the round itself. The tables go to
//! stderr. Only correctness is asserted: every claim is Bound to a /128 inside the /64, no
//! prefix is handed out twice, and first fit leaves no holes.
mod common;
#[path = "common/envtest.rs"]
mod envtest;

use envtest::Envtest;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv6Addr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NS: &str = "bench";
const ROOT: &str = "bench-root";
const SUBNET: &str = "bench-subnet";
const ROOT_PREFIX: &str = "fd20::/48";
const SUBNET_PREFIX: &str = "fd20::/64";

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

fn claims_api(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("ipam.miloapis.com", "v1alpha1", "IPPrefixClaim");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "ipprefixclaims");
    Api::namespaced_with(client, NS, &ar)
}

/// What one round measured.
struct Round {
    what: String,
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU seconds each process used during the round (see [`cpu_seconds`]).
    cpu: BTreeMap<String, f64>,
    /// After the last create, until the background Events stopped arriving.
    drain: Duration,
}

impl Round {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }
}

/// Run `op(i)` for `i` in `start..start + count` on `concurrency` tasks; every op must succeed.
async fn run<F, Fut>(what: &str, start: usize, count: usize, concurrency: usize, op: F) -> Round
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= count {
                        break;
                    }
                    let t = Instant::now();
                    if let Err(e) = op(start + k).await {
                        panic!("create #{} failed: {e}", start + k);
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for t in tasks {
        latencies.extend(t.await.expect("bench task"));
    }
    Round {
        what: what.to_string(),
        ops: count,
        elapsed: t0.elapsed(),
        latencies,
        cpu: BTreeMap::new(),
        drain: Duration::ZERO,
    }
}

/// CPU seconds (user + system) used so far by this process ("bench client") and by each of its
/// children (etcd, kube-apiserver, kube-controller-manager, ipam-apiserver), from /proc: a cheap
/// profile of where a round's work went on this machine.
fn cpu_seconds() -> BTreeMap<String, f64> {
    let tick = 100.0; // USER_HZ, 100 on Linux
    let me = std::process::id().to_string();
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... utime(14) stime(15), counted from 1; comm may hold spaces.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (ppid, utime, stime) = (f[1], f[11], f[12]);
        let name = if pid == me {
            "bench client".to_string()
        } else if ppid == me && comm != "kubectl" {
            comm.to_string()
        } else {
            continue;
        };
        let secs =
            (utime.parse::<f64>().unwrap_or(0.0) + stime.parse::<f64>().unwrap_or(0.0)) / tick;
        *out.entry(name).or_default() += secs;
    }
    out
}

fn cpu_delta(before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    cpu_seconds()
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .collect()
}

/// Wait until the number of Events in the namespace stops changing (our server writes them in
/// the background, rate-limited). Cheap: a `limit=1` list and `remainingItemCount`.
async fn settle(events: &Api<Event>) {
    let count = || async {
        let l = events
            .list(&ListParams::default().limit(1))
            .await
            .expect("list events");
        l.items.len() as i64 + l.metadata.remaining_item_count.unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = count().await;
    let mut same = 0;
    while same < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = count().await;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
}

fn print_table(rounds: &[Round], totals: &[Round]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = String::new();
    out.push_str(&format!(
        "{:<38} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
        "round", "ops", "seconds", "ops/s", "p50 ms", "p99 ms", "drain s"
    ));
    for (i, r) in rounds.iter().chain(totals).enumerate() {
        if i == rounds.len() {
            out.push_str("totals (sum of rounds)\n");
        }
        out.push_str(&format!(
            "{:<38} {:>6} {:>8.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
            r.what,
            r.ops,
            r.elapsed.as_secs_f64(),
            r.rate(),
            ms(r.pct(0.50)),
            ms(r.pct(0.99)),
            r.drain.as_secs_f64(),
        ));
    }
    let names: Vec<&String> = totals
        .iter()
        .flat_map(|r| r.cpu.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    out.push_str(&format!(
        "\nCPU ms per create, by process (during the round, Events written meanwhile included; {} cores)\n{:<38}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        "totals"
    ));
    for n in &names {
        out.push_str(&format!(" {:>15}", n));
    }
    out.push_str(&format!(" {:>9}\n", "all"));
    for r in totals {
        out.push_str(&format!("{:<38}", r.what));
        for n in &names {
            let c = r.cpu.get(*n).copied().unwrap_or(0.0);
            out.push_str(&format!(" {:>15.2}", c * 1e3 / r.ops as f64));
        }
        let all: f64 = r.cpu.values().sum();
        out.push_str(&format!(" {:>9.2}\n", all * 1e3 / r.ops as f64));
    }
    // Straight to stderr, as one write, so it is not interleaved or captured.
    use std::io::Write;
    let _ = std::io::stderr().write_all(out.as_bytes());
}

/// Group commit over the whole run, from ipam-apiserver's own /metrics: how many commits each
/// fsync carried. Under a low request rate each fsync carries few, and its fixed cost is paid by
/// few claims.
fn commits_per_fsync(env: &Envtest) -> String {
    let direct = env.direct_kubeconfig(Some("admin"));
    let out = env.kubectl_as(&direct, &["get", "--raw", "/metrics"]);
    let metrics = String::from_utf8_lossy(&out.stdout);
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (commits, fsyncs) = (
        sample("ipam_store_commit_batch_size_sum"),
        sample("ipam_store_commit_batch_size_count"),
    );
    format!(
        "ipam-apiserver group commit over the run: {commits} commits in {fsyncs} fsyncs ({:.1} per fsync)",
        commits / fsyncs.max(1.0)
    )
}

/// How many creates kube-apiserver served, by resource, over the whole run (its
/// `apiserver_request_total`): shows what else each claim costs it (Events, reviews).
fn create_counts(env: &Envtest) -> String {
    let metrics = env.kubectl_ok(&["get", "--raw", "/metrics"]);
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    for line in metrics.lines() {
        let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        if !labels.contains("verb=\"POST\"") && !labels.contains("verb=\"CREATE\"") {
            continue;
        }
        let label = |k: &str| {
            labels
                .split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let key = format!("{} {}", label("resource"), label("code"));
        *by.entry(key).or_default() += value;
    }
    let mut out = String::from("kube-apiserver creates over the whole run (resource code: count):");
    for (k, v) in by {
        out.push_str(&format!("\n  {k}: {v}"));
    }
    out
}

fn total(what: &str, rounds: &[Round], prefix: &str) -> Round {
    let picked: Vec<&Round> = rounds
        .iter()
        .filter(|r| r.what.starts_with(prefix))
        .collect();
    Round {
        what: what.to_string(),
        ops: picked.iter().map(|r| r.ops).sum(),
        elapsed: picked.iter().map(|r| r.elapsed).sum(),
        latencies: picked.iter().flat_map(|r| r.latencies.clone()).collect(),
        cpu: picked.iter().fold(BTreeMap::new(), |mut acc, r| {
            for (k, v) in &r.cpu {
                *acc.entry(k.clone()).or_default() += v;
            }
            acc
        }),
        drain: picked.iter().map(|r| r.drain).sum(),
    }
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture and KUBEBUILDER_ASSETS"]
fn claim_creates_vs_configmap_creates_through_kube_apiserver() {
    let count = env_usize("IPAM_BENCH_COUNT", 2000).max(2);
    let concurrency = env_usize("IPAM_BENCH_CONCURRENCY", 32).max(1);
    let direct = std::env::var("IPAM_BENCH_DIRECT").map_or(true, |v| v != "0");
    let round_count = env_usize("IPAM_BENCH_ROUNDS", 2).clamp(1, count);
    let t0 = Instant::now();
    let Some(env) = Envtest::start("throughput_cluster") else {
        return;
    };
    eprintln!(
        "control plane and APIService Available in {:.1?}; {count} creates per kind, {concurrency} concurrent tasks, release={}",
        t0.elapsed(),
        !cfg!(debug_assertions)
    );
    env.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata: {{name: {ROOT}}}\nspec: {{prefix: \"{ROOT_PREFIX}\"}}\n---\napiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata: {{name: {SUBNET}}}\nspec: {{prefix: \"{SUBNET_PREFIX}\", parentRef: {{name: {ROOT}}}}}\n"
    ));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let prefixes: Arc<Mutex<Vec<String>>> = Arc::default();
    let rounds = rt.block_on(async {
        let through = client(&env.kubeconfig).await;
        let cms: Api<ConfigMap> = Api::namespaced(through.clone(), NS);
        let claims = claims_api(through);
        let direct_claims = claims_api(client(&env.direct_kubeconfig(Some("admin"))).await);

        let create_cm = {
            let cms = cms.clone();
            move |i: usize| {
                let cms = cms.clone();
                async move {
                    let cm: ConfigMap = serde_json::from_value(json!({
                        "metadata": {"name": format!("cm-{i}")},
                        "data": {"index": i.to_string()},
                    }))
                    .expect("configmap");
                    cms.create(&PostParams::default(), &cm)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            }
        };
        let create_claim = |api: Api<DynamicObject>, prefixes: Arc<Mutex<Vec<String>>>| {
            move |i: usize| {
                let (api, prefixes) = (api.clone(), prefixes.clone());
                async move {
                    let claim: DynamicObject = serde_json::from_value(json!({
                        "apiVersion": "ipam.miloapis.com/v1alpha1",
                        "kind": "IPPrefixClaim",
                        "metadata": {"name": format!("claim-{i}")},
                        "spec": {"prefixLength": 128, "parentRef": {"name": SUBNET}},
                    }))
                    .expect("claim");
                    let made = api
                        .create(&PostParams::default(), &claim)
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = &made.data["status"];
                    if status["phase"] != "Bound" {
                        return Err(format!("claim-{i} not Bound: {status}"));
                    }
                    let prefix = status["prefix"]
                        .as_str()
                        .ok_or_else(|| format!("claim-{i} has no status.prefix: {status}"))?;
                    prefixes.lock().unwrap().push(prefix.to_string());
                    Ok(())
                }
            }
        };

        // Uncounted warm-up: connections, TLS sessions, caches (SAR, namespace informer).
        let warm = concurrency.min(count);
        run("warm-up", 1_000_000, warm, concurrency, create_cm.clone()).await;
        run(
            "warm-up",
            1_000_000,
            warm,
            concurrency,
            create_claim(claims.clone(), prefixes.clone()),
        )
        .await;
        if direct {
            run(
                "warm-up",
                2_000_000,
                warm,
                concurrency,
                create_claim(direct_claims.clone(), prefixes.clone()),
            )
            .await;
        }

        // A round's CPU is what the processes used during the round, Events our server wrote
        // meanwhile included. The rest of its Events trickle out at the recorder's rate limit;
        // the next round waits for them, so no round pays for another's.
        let events: Api<Event> = Api::namespaced(client(&env.kubeconfig).await, NS);
        macro_rules! measured {
            ($round:expr) => {{
                let before = cpu_seconds();
                let mut round = $round.await;
                round.cpu = cpu_delta(&before);
                let t = Instant::now();
                settle(&events).await;
                // settle needs two unchanged polls 200 ms apart to be sure.
                round.drain = t.elapsed().saturating_sub(Duration::from_millis(400));
                round
            }};
        }
        settle(&events).await;
        let mut rounds = Vec::new();
        for r in 1..=round_count {
            let start = count * (r - 1) / round_count;
            let n = count * r / round_count - start;
            rounds.push(measured!(run(
                &format!("configmaps via kube-apiserver #{r}"),
                start,
                n,
                concurrency,
                create_cm.clone(),
            )));
            rounds.push(measured!(run(
                &format!("claims via aggregator #{r}"),
                start,
                n,
                concurrency,
                create_claim(claims.clone(), prefixes.clone()),
            )));
            if direct {
                rounds.push(measured!(run(
                    &format!("claims direct to ipam-apiserver #{r}"),
                    3_000_000 + start,
                    n,
                    concurrency,
                    create_claim(direct_claims.clone(), prefixes.clone()),
                )));
            }
        }

        // Correctness, through the aggregator: every claim is there and Bound.
        let listed = claims
            .list(&ListParams::default())
            .await
            .expect("list claims");
        let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
        let mut listed_prefixes = HashSet::new();
        for c in &listed.items {
            *by_phase
                .entry(c.data["status"]["phase"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
            let p = c.data["status"]["prefix"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert!(listed_prefixes.insert(p.clone()), "prefix {p} listed twice");
        }
        let written = events
            .list(&ListParams::default().limit(1))
            .await
            .expect("list events");
        let written =
            written.items.len() as i64 + written.metadata.remaining_item_count.unwrap_or(0);
        (
            rounds,
            listed.items.len(),
            by_phase,
            listed_prefixes,
            written,
        )
    });
    let (rounds, listed, by_phase, listed_prefixes, events_written) = rounds;

    let made = prefixes.lock().unwrap().clone();
    let unique: HashSet<&String> = made.iter().collect();
    assert_eq!(unique.len(), made.len(), "a prefix was handed out twice");
    let subnet: ipnet::Ipv6Net = SUBNET_PREFIX.parse().unwrap();
    for p in &made {
        let net: ipnet::Ipv6Net = p.parse().unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(net.prefix_len(), 128, "{p}");
        assert!(subnet.contains(&net.addr()), "{p} is outside {subnet}");
        assert!(listed_prefixes.contains(p), "{p} not in the list");
    }
    assert_eq!(listed, made.len(), "claims listed vs created");
    assert_eq!(by_phase.get("Bound"), Some(&made.len()), "{by_phase:?}");
    // First fit: the claims fill the lowest addresses with no gap.
    let highest = made
        .iter()
        .map(|p| u128::from(p.split('/').next().unwrap().parse::<Ipv6Addr>().unwrap()))
        .max()
        .unwrap_or_default();
    assert_eq!(
        highest - u128::from(subnet.network()),
        made.len() as u128 - 1,
        "first fit leaves no holes"
    );

    let mut totals = vec![
        total("configmaps via kube-apiserver", &rounds, "configmaps"),
        total("claims via aggregator", &rounds, "claims via"),
    ];
    if direct {
        totals.push(total(
            "claims direct to ipam-apiserver",
            &rounds,
            "claims direct",
        ));
    }
    print_table(&rounds, &totals);
    eprintln!("{}", create_counts(&env));
    eprintln!("{}", commits_per_fsync(&env));
    eprintln!(
        "Events in namespace {NS}: {events_written} for {} claims (ipam-apiserver drops Events when its queue of {} is full)",
        prefixes.lock().unwrap().len(),
        1024
    );
    eprintln!(
        "claims via aggregator / configmaps: {:.2}x; {} claims verified Bound with distinct /128s; benchmark in {:.1?}",
        totals[1].rate() / totals[0].rate(),
        made.len(),
        t0.elapsed()
    );
}
