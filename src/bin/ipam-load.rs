#![forbid(unsafe_code)]
//! `ipam-load`: drive running `ipam-apiserver`s (standalone credentials) over HTTPS and report
//! throughput, latency percentiles, the servers' peak RSS and their CPU time per operation.
//!
//! ```text
//! ipam-load --data-dir DIR --mode create --clients 64 --count 100000
//! ipam-load --data-dir DIR --mode mixed  --clients 16 --duration 20
//! ipam-load --data-dir DIR --mode list   --clients 8  --duration 10
//! ipam-load --data-dir DIR --mode get    --clients 64 --duration 10
//! ipam-load --data-dir DIR --mode watch  --watchers 100 --clients 16 --count 10000
//! ipam-load --data-dir DIR --server https://127.0.0.1:8443,https://127.0.0.1:8444 --parents 64
//! ```
//!
//! Credentials come from the standalone data directory: `DIR/pki/{ca.crt,admin.crt,admin.key}`,
//! and the address from `DIR/kubeconfig` unless `--server` is given. Several servers (replicas
//! on one etcd sharing DIR) take the clients and watchers in turn. Each client is one
//! keep-alive HTTP/1.1 connection with a tiny hand-rolled client, so the load generator spends
//! as little of the (shared) CPU as possible.
use clap::{Parser, ValueEnum};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

type Error = Box<dyn std::error::Error + Send + Sync>;
const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Claim creates of /128 into the parent.
    Create,
    /// Each client alternates creating a claim and deleting its oldest one.
    Mixed,
    /// Paged lists of claims in the namespace.
    List,
    /// GETs of the parent IPPrefix: the cost of a request without a write (HTTPS, auth,
    /// routing, encoding), the floor under every create.
    Get,
    /// `--watchers` watches on all claims while `--clients` create; checks every watcher saw
    /// every ADDED event in resourceVersion order.
    Watch,
    /// ConfigMap creates through kube-apiserver (`--server` its URL, `--data-dir` a folder
    /// whose `pki/` holds its CA and an admin client certificate, as envtest's
    /// `start-cluster.sh` makes; `--namespace` must exist): the yardstick for claim creates on
    /// the same etcd.
    Configmap,
}

#[derive(Parser, Debug)]
#[command(about = "Load generator for ipam-apiserver (standalone mode)")]
struct Args {
    /// The server's standalone data directory (pki/ and kubeconfig).
    #[arg(long)]
    data_dir: PathBuf,
    /// `https://host:port`, repeatable or comma-separated: clients and watchers are spread over
    /// the servers in turn, all with DIR's credentials; default: the server in DIR/kubeconfig.
    #[arg(long = "server", alias = "servers", value_delimiter = ',')]
    servers: Vec<String>,
    #[arg(long, value_enum, default_value = "create")]
    mode: Mode,
    /// Concurrent keep-alive clients issuing requests.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Stop after this many operations in total.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds (default 10 when --count is not given).
    #[arg(long)]
    duration: Option<f64>,
    /// Parent IPPrefix; created as a root if missing (on every server: with separate stores
    /// each needs its own).
    #[arg(long, default_value = "load-root")]
    parent: String,
    /// CIDR of the parent when it has to be created.
    #[arg(long, default_value = "fd00:10ad::/64")]
    parent_prefix: String,
    /// Spread creates over this many parents in turn: PARENT-0.. on the blocks of
    /// --parent-prefix's size that follow it (1: PARENT itself).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    parents: u32,
    #[arg(long, default_value = "load")]
    namespace: String,
    /// Claim length.
    #[arg(long, default_value_t = 128)]
    prefix_length: u8,
    /// Watchers (watch mode).
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Page size (list mode).
    #[arg(long, default_value_t = 100)]
    page: usize,
    /// Print a progress line every this many seconds (0: never).
    #[arg(long, default_value_t = 5.0)]
    progress: f64,
    /// Server pid for RSS and CPU, repeatable; default: every server found in /proc by its
    /// --data-dir.
    #[arg(long)]
    server_pid: Vec<u32>,
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<(), Error> {
    let targets = Target::load_all(&args)?;
    let parents = if args.mode == Mode::Configmap {
        vec![("-".to_string(), String::new())]
    } else {
        parent_blocks(&args)?
    };
    for target in targets.iter().filter(|_| args.mode != Mode::Configmap) {
        let mut conn = target.connect().await?;
        for (name, cidr) in &parents {
            ensure_parent(&mut conn, name, cidr).await?;
        }
    }
    let parents: Arc<Vec<String>> = Arc::new(parents.into_iter().map(|(n, _)| n).collect());
    let mut setup = targets[0].connect().await?;
    if args.mode == Mode::List {
        // Pages of an empty namespace measure little more than the request floor.
        let (_, _, body) = setup
            .request(
                "GET",
                &format!(
                    "{GV}/namespaces/{}/ipprefixclaims?limit={}",
                    args.namespace, args.page
                ),
                None,
            )
            .await?;
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        let items = page["items"].as_array().map_or(0, Vec::len);
        println!(
            "list: a page holds {items} claims (--page {}){}",
            args.page,
            if items < args.page {
                "; for full pages, create claims in the namespace first (--mode create --count N)"
            } else {
                ""
            }
        );
    }

    let stats = Arc::new(Stats::new(targets.len()));
    let done = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
            % 0xffff_ffff
    );

    let mut watch_tasks = Vec::new();
    if args.mode == Mode::Watch {
        let (_, _, body) = setup
            .request(
                "GET",
                &format!("{GV}/namespaces/{}/ipprefixclaims?limit=1", args.namespace),
                None,
            )
            .await?;
        let list: serde_json::Value = serde_json::from_slice(&body)?;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string();
        for w in 0..args.watchers {
            let conn = targets[w % targets.len()].connect().await?;
            let path = format!(
                "{GV}/namespaces/{}/ipprefixclaims?watch=true&resourceVersion={rv}",
                args.namespace
            );
            let expected = args.count.unwrap_or(10_000);
            watch_tasks.push(tokio::spawn(watcher(conn, path, expected)));
        }
        // Let every watch register before the first event.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let limit = args.count.unwrap_or(u64::MAX);
    let duration = args
        .duration
        .or(if args.count.is_none() {
            Some(10.0)
        } else {
            None
        })
        .map(Duration::from_secs_f64);
    let pids = if args.server_pid.is_empty() {
        find_server_pids(&args.data_dir)
    } else {
        args.server_pid.clone()
    };
    let cpu_before = cpu_seconds_of(&pids);
    let own_cpu_before = read_cpu_seconds(std::process::id());
    let stages_before = write_stages(&targets).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let target = c % targets.len();
        let conn = targets[target].connect().await?;
        let ctx = ClientCtx {
            id: c,
            target,
            mode: args.mode,
            ns: args.namespace.clone(),
            parents: parents.clone(),
            len: args.prefix_length,
            page: args.page,
            run_id: run_id.clone(),
            limit,
            issued: issued.clone(),
            done: done.clone(),
            stats: stats.clone(),
        };
        tasks.push(tokio::spawn(client(conn, ctx)));
    }
    let progress = (args.progress > 0.0).then(|| {
        let stats = stats.clone();
        let every = Duration::from_secs_f64(args.progress);
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(every).await;
                let (count, mut window) = stats.take_window();
                let now = Instant::now();
                let rate = (count - last.1) as f64 / (now - last.0).as_secs_f64();
                window.sort_unstable();
                eprintln!(
                    "  t={:>6.1}s ok={count:>9} rate={rate:>8.0}/s p50={} p99={}",
                    (now - start).as_secs_f64(),
                    fmt_us(pct(&window, 0.50)),
                    fmt_us(pct(&window, 0.99)),
                );
                last = (now, count);
            }
        })
    });
    if let Some(d) = duration {
        let done = done.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            done.store(true, Ordering::Relaxed);
        });
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
    }

    let mut lat = std::mem::take(&mut *stats.all.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    let ok = lat.len() as u64;
    let failures = stats.failures.load(Ordering::Relaxed);
    let cpu = cpu_before.zip(cpu_seconds_of(&pids));
    let own_cpu = own_cpu_before.zip(read_cpu_seconds(std::process::id()));
    let stages_after = write_stages(&targets).await;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "mode={:?} clients={} servers={} parents={} ok={ok} failed={failures} elapsed={:.2}s",
        args.mode,
        args.clients,
        targets.len(),
        parents.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "throughput={:.0}/s p50={} p99={} max={}",
        ok as f64 / elapsed.as_secs_f64(),
        fmt_us(pct(&lat, 0.50)),
        fmt_us(pct(&lat, 0.99)),
        fmt_us(lat.last().copied().unwrap_or(0)),
    );
    for (target, n) in targets.iter().zip(&stats.per_target) {
        println!(
            "via https://{} ok={}",
            target.addr,
            n.load(Ordering::Relaxed)
        );
    }
    let mut rss_known = false;
    for &pid in &pids {
        if let Some((hwm, now)) = read_rss(pid) {
            rss_known = true;
            println!(
                "server pid={pid} VmHWM={:.1}MiB VmRSS={:.1}MiB",
                hwm as f64 / 1024.0,
                now as f64 / 1024.0
            );
        }
    }
    if !rss_known {
        println!("server RSS: unknown (pass --server-pid)");
    }
    // The servers' CPU per operation shows how fast the host ran: on a shared VM the same
    // binary's figure moves by half from one run to the next, and latency with it. This tool
    // runs on the same cores, so its own share belongs beside it.
    for (who, cpu) in [("server", cpu), ("load tool", own_cpu)] {
        if let Some((before, after)) = cpu.filter(|_| ok > 0) {
            println!(
                "{who} cpu={:.2}s per-op={:.0}us",
                after - before,
                (after - before) * 1e6 / ok as f64
            );
        }
    }
    // Where a write's latency goes inside the server: the two queues every write passes.
    if let (Some(before), Some(after)) = (stages_before, stages_after) {
        let mean = |i: usize| {
            let (sum, count) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
            if count > 0.0 {
                fmt_us((sum / count * 1e6) as u32)
            } else {
                "-".into()
            }
        };
        println!(
            "server writes={}: writer-lock wait mean={} durable wait mean={}",
            after[1].1 - before[1].1,
            mean(0),
            mean(1)
        );
    }
    println!(
        "loadavg={}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for e in stats
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .take(5)
    {
        println!("error sample: {e}");
    }

    if !watch_tasks.is_empty() {
        let wait_start = Instant::now();
        let mut complete = 0;
        let mut min_seen = u64::MAX;
        for t in watch_tasks {
            let r = tokio::time::timeout(Duration::from_secs(60), t).await;
            match r {
                Ok(Ok(Ok(seen))) => {
                    min_seen = min_seen.min(seen);
                    complete += 1;
                }
                Ok(Ok(Err(e))) => println!("watcher failed: {e}"),
                _ => println!("watcher did not finish"),
            }
        }
        println!(
            "watchers complete={complete}/{} min_events={min_seen} drain_after_creates={:.2}s",
            args.watchers,
            wait_start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

struct ClientCtx {
    id: usize,
    /// Index of this client's server, for the per-server counts.
    target: usize,
    mode: Mode,
    ns: String,
    /// Creates (and gets) take these in turn, by the run-wide operation number.
    parents: Arc<Vec<String>>,
    len: u8,
    page: usize,
    run_id: String,
    limit: u64,
    issued: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    stats: Arc<Stats>,
}

async fn client(mut conn: Conn, ctx: ClientCtx) -> Result<(), Error> {
    let base = format!("{GV}/namespaces/{}/ipprefixclaims", ctx.ns);
    let mut live: VecDeque<String> = VecDeque::new();
    let mut seq = 0u64;
    loop {
        let ticket = ctx.issued.fetch_add(1, Ordering::Relaxed);
        if ctx.done.load(Ordering::Relaxed) || ticket >= ctx.limit {
            return Ok(());
        }
        let parent = &ctx.parents[(ticket % ctx.parents.len() as u64) as usize];
        seq += 1;
        let delete = ctx.mode == Mode::Mixed && seq % 2 == 0 && !live.is_empty();
        let t0 = Instant::now();
        let (result, expect) = if ctx.mode == Mode::Get {
            let r = conn
                .request("GET", &format!("{GV}/ipprefixes/{parent}"), None)
                .await;
            (r, 200)
        } else if ctx.mode == Mode::List {
            let r = conn
                .request("GET", &format!("{base}?limit={}", ctx.page), None)
                .await;
            (r, 200)
        } else if ctx.mode == Mode::Configmap {
            let name = format!("l{}-{}-{seq}", ctx.run_id, ctx.id);
            let body = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"prefix":"{parent}"}}}}"#
            );
            let path = format!("/api/v1/namespaces/{}/configmaps", ctx.ns);
            (
                conn.request("POST", &path, Some(body.as_bytes())).await,
                201,
            )
        } else if delete {
            let name = live.pop_front().unwrap_or_default();
            (
                conn.request("DELETE", &format!("{base}/{name}"), None)
                    .await,
                200,
            )
        } else {
            let name = format!("l{}-{}-{seq}", ctx.run_id, ctx.id);
            let body = format!(
                r#"{{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefixClaim","metadata":{{"name":"{name}"}},"spec":{{"prefixLength":{},"parentRef":{{"name":"{}"}}}}}}"#,
                ctx.len, parent
            );
            if ctx.mode == Mode::Mixed {
                live.push_back(name);
            }
            (
                conn.request("POST", &base, Some(body.as_bytes())).await,
                201,
            )
        };
        let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        match result {
            Ok((status, _, _)) if status == expect => ctx.stats.record(ctx.target, us),
            Ok((status, _, body)) => ctx.stats.fail(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )),
            Err(e) => {
                ctx.stats.fail(format!("transport: {e}"));
                return Err(e);
            }
        }
    }
}

/// Follow one watch to its end (or `expected` ADDED events), checking resourceVersions only
/// ever increase. Returns the number of ADDED events seen.
async fn watcher(mut conn: Conn, path: String, expected: u64) -> Result<u64, Error> {
    conn.send("GET", &path, None).await?;
    let (status, chunked, _) = conn.read_head().await?;
    if status != 200 || !chunked {
        return Err(format!("watch answered {status} (chunked: {chunked})").into());
    }
    let mut line = Vec::new();
    let (mut added, mut last_rv) = (0u64, 0u64);
    while added < expected {
        let Some(chunk) = conn.read_chunk().await? else {
            break;
        };
        line.extend_from_slice(&chunk);
        while let Some(nl) = line.iter().position(|b| *b == b'\n') {
            let event: serde_json::Value = serde_json::from_slice(&line[..nl])?;
            line.drain(..=nl);
            let rv: u64 = event["object"]["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if event["type"] == "ADDED" {
                if rv <= last_rv {
                    return Err(format!("out of order: {rv} after {last_rv}").into());
                }
                last_rv = rv;
                added += 1;
            }
        }
    }
    Ok(added)
}

/// The parents' names and CIDRs: PARENT on --parent-prefix, or with `--parents N`, PARENT-i on
/// the i-th block of that size from it (not overlapping: roots may not).
fn parent_blocks(args: &Args) -> Result<Vec<(String, String)>, Error> {
    if args.parents == 1 {
        return Ok(vec![(args.parent.clone(), args.parent_prefix.clone())]);
    }
    let first = args
        .parent_prefix
        .parse::<IpNet>()
        .map_err(|e| format!("--parent-prefix {}: {e}", args.parent_prefix))?
        .trunc();
    (0..args.parents)
        .map(|i| {
            let block = nth_block(first, i).ok_or_else(|| {
                format!(
                    "--parents {}: block {i} from {first} is past the address space",
                    args.parents
                )
            })?;
            Ok((format!("{}-{i}", args.parent), block.to_string()))
        })
        .collect()
}

/// The block of `first`'s length `i` blocks after it.
fn nth_block(first: IpNet, i: u32) -> Option<IpNet> {
    match first {
        IpNet::V4(n) => {
            let step = 1u64 << (32 - n.prefix_len());
            let addr = u64::from(u32::from(n.network())).checked_add(step * u64::from(i))?;
            Ipv4Net::new(u32::try_from(addr).ok()?.into(), n.prefix_len())
                .ok()
                .map(IpNet::V4)
        }
        IpNet::V6(n) => {
            let step = 1u128.checked_shl(128 - u32::from(n.prefix_len()))?;
            let addr = u128::from(n.network()).checked_add(step.checked_mul(u128::from(i))?)?;
            Ipv6Net::new(addr.into(), n.prefix_len())
                .ok()
                .map(IpNet::V6)
        }
    }
}

async fn ensure_parent(conn: &mut Conn, name: &str, cidr: &str) -> Result<(), Error> {
    let body = format!(
        r#"{{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefix","metadata":{{"name":"{name}"}},"spec":{{"prefix":"{cidr}"}}}}"#
    );
    let (status, _, resp) = conn
        .request("POST", &format!("{GV}/ipprefixes"), Some(body.as_bytes()))
        .await?;
    match status {
        201 | 409 => Ok(()),
        _ => Err(format!(
            "creating parent {name}: HTTP {status}: {}",
            String::from_utf8_lossy(&resp)
        )
        .into()),
    }
}

struct Stats {
    all: Mutex<Vec<u32>>,
    window: Mutex<Vec<u32>>,
    ok: AtomicU64,
    /// Successful operations by server.
    per_target: Vec<AtomicU64>,
    failures: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Stats {
    fn new(targets: usize) -> Stats {
        Stats {
            all: Mutex::default(),
            window: Mutex::default(),
            ok: AtomicU64::new(0),
            per_target: (0..targets).map(|_| AtomicU64::new(0)).collect(),
            failures: AtomicU64::new(0),
            errors: Mutex::default(),
        }
    }

    fn record(&self, target: usize, us: u32) {
        self.per_target[target].fetch_add(1, Ordering::Relaxed);
        self.all.lock().unwrap_or_else(|p| p.into_inner()).push(us);
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(us);
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, e: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 20 {
            errors.push(e);
        }
    }

    fn take_window(&self) -> (u64, Vec<u32>) {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        (self.ok.load(Ordering::Relaxed), w)
    }
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn fmt_us(us: u32) -> String {
    if us >= 1000 {
        format!("{:.2}ms", f64::from(us) / 1000.0)
    } else {
        format!("{us}µs")
    }
}

/// Where and how to connect.
struct Target {
    addr: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl Target {
    /// Every server to drive (at least one), with DIR's credentials.
    fn load_all(args: &Args) -> Result<Vec<Target>, Error> {
        let servers = if args.servers.is_empty() {
            vec![server_from_kubeconfig(&args.data_dir.join("kubeconfig"))?]
        } else {
            args.servers.clone()
        };
        let tls = Self::tls(&args.data_dir.join("pki"))?;
        servers
            .iter()
            .map(|server| {
                let addr = server
                    .strip_prefix("https://")
                    .ok_or_else(|| format!("{server}: not an https:// URL"))?
                    .trim_end_matches('/')
                    .to_string();
                let host = match addr.rsplit_once(':') {
                    Some((h, _)) => h.trim_matches(['[', ']']).to_string(),
                    None => addr.clone(),
                };
                Ok(Target {
                    addr,
                    server_name: ServerName::try_from(host)?,
                    tls: tls.clone(),
                })
            })
            .collect()
    }

    fn tls(pki: &Path) -> Result<TlsConnector, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&pki.join("ca.crt"))? {
            roots.add(cert)?;
        }
        let key_pem = std::fs::read(pki.join("admin.key"))?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())?
            .ok_or("admin.key holds no private key")?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(read_certs(&pki.join("admin.crt"))?, key)?;
        Ok(TlsConnector::from(Arc::new(config)))
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let stream = self.tls.connect(self.server_name.clone(), tcp).await?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            host: self.addr.clone(),
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>()?)
}

fn server_from_kubeconfig(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let kc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    kc["clusters"][0]["cluster"]["server"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no clusters[0].cluster.server", path.display()).into())
}

/// One keep-alive HTTP/1.1 connection over TLS: just enough HTTP for this API.
struct Conn {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
    host: String,
}

impl Conn {
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, bool, Vec<u8>), Error> {
        self.send(method, path, body).await?;
        let (status, chunked, len) = self.read_head().await?;
        let mut out = Vec::new();
        if chunked {
            while let Some(c) = self.read_chunk().await? {
                out.extend_from_slice(&c);
            }
        } else {
            self.fill_to(len).await?;
            out.extend(self.buf.drain(..len));
        }
        Ok((status, chunked, out))
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<(), Error> {
        let body = body.unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n",
            self.host
        )
        .into_bytes();
        if !body.is_empty() {
            req.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Status, whether the body is chunked, and its length otherwise.
    async fn read_head(&mut self) -> Result<(u16, bool, usize), Error> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let (mut chunked, mut len) = (false, 0);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                len = value.parse()?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
                chunked = true;
            }
        }
        Ok((status, chunked, len))
    }

    /// The next chunk of a chunked body; `None` after the last.
    async fn read_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let eol = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let size_text = String::from_utf8_lossy(&self.buf[..eol]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        self.buf.drain(..eol + 2);
        self.fill_to(size + 2).await?;
        let chunk: Vec<u8> = self.buf.drain(..size).collect();
        self.buf.drain(..2);
        Ok((size > 0).then_some(chunk))
    }

    async fn fill_to(&mut self, n: usize) -> Result<(), Error> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(())
    }

    async fn fill(&mut self) -> Result<(), Error> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.stream.read(&mut tmp).await?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `ipam-apiserver serve` processes whose `--data-dir` is `dir` (replicas on etcd may
/// share one).
fn find_server_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let (Ok(want), Ok(procs)) = (std::fs::canonicalize(dir), std::fs::read_dir("/proc")) else {
        return pids;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !argv.first().is_some_and(|a| a.ends_with("ipam-apiserver")) {
            continue;
        }
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        let dir_arg = argv
            .iter()
            .position(|a| a == "--data-dir")
            .and_then(|i| argv.get(i + 1))
            .map(|d| cwd.join(d));
        if dir_arg.and_then(|d| std::fs::canonicalize(d).ok()) == Some(want.clone()) {
            pids.push(pid);
        }
    }
    pids
}

/// The CPU seconds of all of `pids` together; `None` if there are none or one is gone.
fn cpu_seconds_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| read_cpu_seconds(p)).sum()
}

/// (sum, count) of the servers' writer-lock wait and durable wait histograms, added up over
/// every server.
async fn write_stages(targets: &[Target]) -> Option<[(f64, f64); 2]> {
    let mut out = [(0.0, 0.0); 2];
    for target in targets {
        for (sum, one) in out.iter_mut().zip(write_stages_of(target).await?) {
            *sum = (sum.0 + one.0, sum.1 + one.1);
        }
    }
    Some(out)
}

/// [`write_stages`] of one server, from its `/metrics` (on a connection of its own: the run's
/// are busy).
async fn write_stages_of(target: &Target) -> Option<[(f64, f64); 2]> {
    const STAGES: [&str; 2] = [
        "ipam_registry_writer_lock_wait_seconds",
        "ipam_store_durable_wait_seconds",
    ];
    let mut conn = target.connect().await.ok()?;
    let (status, _, body) = conn.request("GET", "/metrics", None).await.ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let sample = |name: String| {
        text.lines().find_map(|l| {
            l.strip_prefix(name.as_str())?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
    };
    let mut out = [(0.0, 0.0); 2];
    for (slot, stage) in out.iter_mut().zip(STAGES) {
        *slot = (
            sample(format!("{stage}_sum"))?,
            sample(format!("{stage}_count"))?,
        );
    }
    Some(out)
}

/// User + system CPU time of a process (`/proc/PID/stat`, fields 14 and 15, in clock ticks).
fn read_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// (VmHWM, VmRSS) in KiB.
fn read_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}
