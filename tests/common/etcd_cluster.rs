//! A real etcd cluster of several members (`../shared/envtest/start-etcd-cluster.sh`, from
//! `$KUBEBUILDER_ASSETS/etcd`) and replicas of the real binary on it, for the tests of
//! several replicas: members and replicas can be killed with SIGKILL and started again.
//!
//! Without `KUBEBUILDER_ASSETS`, [`EtcdCluster::start`] says so on stderr and returns `None`;
//! the caller returns early.
#![allow(dead_code)]

use crate::common::TestServer;
use http::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

/// The folder of the shared envtest scripts, beside this repository.
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/envtest")
}

/// `n` consecutive loopback ports that are free now, from below the kernel's ephemeral range
/// (see `envtest::free_port`), starting at a random point so parallel tests do not collide.
fn free_port_run(n: u16) -> u16 {
    use std::hash::{BuildHasher, RandomState};
    const LOW: u64 = 10_000;
    const HIGH: u64 = 32_000;
    let start = RandomState::new().hash_one(std::thread::current().id()) % (HIGH - LOW);
    (0..(HIGH - LOW) / 16)
        .map(|i| (LOW + (start + i * 16) % (HIGH - LOW)) as u16)
        .find(|&base| {
            (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        })
        .expect("a run of free loopback ports")
}

/// An etcd cluster on loopback; every member is stopped on drop.
pub struct EtcdCluster {
    dir: TempDir,
    /// Client URLs, comma-separated (`--etcd-servers`).
    pub servers: String,
    pub members: usize,
}

impl EtcdCluster {
    /// Start `members` members and wait until all are healthy.
    pub fn start(test: &str, members: usize) -> Option<EtcdCluster> {
        if std::env::var_os("KUBEBUILDER_ASSETS").is_none_or(|a| a.is_empty()) {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: KUBEBUILDER_ASSETS is not set, so there is no etcd to test against. Run with KUBEBUILDER_ASSETS=$(../shared/envtest/assets.sh) (as .ci/run does)."
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ipam-etcd-")
            .tempdir()
            .expect("temp dir");
        let base = free_port_run(2 * members as u16);
        let out = Command::new("bash")
            .arg(scripts().join("start-etcd-cluster.sh"))
            .arg(dir.path())
            .arg(members.to_string())
            .env("ETCD_BASE_PORT", base.to_string())
            .output()
            .expect("run start-etcd-cluster.sh");
        let cluster = EtcdCluster {
            servers: (0..members)
                .map(|i| format!("http://127.0.0.1:{}", base + 2 * i as u16))
                .collect::<Vec<_>>()
                .join(","),
            dir,
            members,
        };
        assert!(
            out.status.success(),
            "start-etcd-cluster.sh failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        Some(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers.split(',').map(str::to_string).collect()
    }

    fn pid(&self, i: usize) -> String {
        let file = self.dir.path().join(format!("member-{i}.pid"));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_string()
    }

    /// SIGKILL member `i` and wait until it is gone.
    pub fn kill_member(&self, i: usize) {
        let pid = self.pid(i);
        let _ = Command::new("kill").args(["-9", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Gone, or a zombie waiting for init to reap it: either way it serves nothing.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
        {
            assert!(
                Instant::now() < deadline,
                "etcd member {i} survived kill -9"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start member `i` again on its own data (it rejoins the cluster).
    pub fn restart_member(&self, i: usize) {
        let status = Command::new("bash")
            .arg(self.dir.path().join("restart-member.sh"))
            .arg(i.to_string())
            .status()
            .expect("run restart-member.sh");
        assert!(status.success(), "restart-member.sh {i} failed");
    }

    /// Wait until member `i` says it is healthy (it has rejoined and the cluster has a leader).
    pub fn wait_healthy(&self, i: usize) {
        let url = format!("{}/health", self.urls()[i]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("curl").args(["-s", "-m", "2", &url]).output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(r#""health":"true""#))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} not healthy{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every member's log, for a failure message.
    pub fn logs(&self) -> String {
        (0..self.members)
            .map(|i| {
                let log =
                    std::fs::read_to_string(self.dir.path().join(format!("logs/member-{i}.log")))
                        .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "\n--- etcd member {i} (last lines):\n{}",
                    lines[lines.len().saturating_sub(10)..].join("\n")
                )
            })
            .collect()
    }

    /// An etcd client of the test's own (to compact or read revisions directly).
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.urls(), None)
            .await
            .expect("connect to etcd")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(scripts().join("stop-etcd-cluster.sh"))
            .arg(self.dir.path())
            .status();
    }
}

/// Replicas of the real binary (`serve --standalone --etcd-servers ...`), each in a data
/// directory of its own holding a copy of the first one's PKI, so one admin certificate and
/// one serving certificate are good for all of them.
pub struct Replicas {
    pub servers: Vec<TestServer>,
    _scratch: TempDir,
}

impl Replicas {
    pub fn start(etcd: &EtcdCluster, n: usize, more: &[&str]) -> Replicas {
        let scratch = tempfile::tempdir().expect("temp dir");
        let mut args = vec!["--etcd-servers", etcd.servers.as_str()];
        args.extend_from_slice(more);
        let first = scratch.path().join("r0");
        let mut servers = vec![TestServer::start_in_with(&first, &args)];
        for i in 1..n {
            let dir = scratch.path().join(format!("r{i}"));
            std::fs::create_dir_all(dir.join("pki")).expect("pki dir");
            for f in std::fs::read_dir(first.join("pki")).expect("first PKI") {
                let f = f.expect("PKI entry");
                std::fs::copy(f.path(), dir.join("pki").join(f.file_name())).expect("copy PKI");
            }
            servers.push(TestServer::start_in_with(&dir, &args));
        }
        Replicas {
            servers,
            _scratch: scratch,
        }
    }

    /// Start one more replica on the same etcd with `args`, sharing the PKI.
    pub fn add(&mut self, args: &[&str]) -> usize {
        let i = self.servers.len();
        let dir = self._scratch.path().join(format!("r{i}"));
        let first = &self.servers[0].data_dir;
        std::fs::create_dir_all(dir.join("pki")).expect("pki dir");
        for f in std::fs::read_dir(first.join("pki")).expect("first PKI") {
            let f = f.expect("PKI entry");
            std::fs::copy(f.path(), dir.join("pki").join(f.file_name())).expect("copy PKI");
        }
        self.servers.push(TestServer::start_in_with(&dir, args));
        i
    }

    /// A client of replica `i` that does not retry (each outcome is the server's own).
    pub async fn client(&self, i: usize) -> kube::Client {
        client_of(&self.servers[i]).await
    }

    pub async fn clients(&self) -> Vec<kube::Client> {
        let mut clients = Vec::new();
        for s in &self.servers {
            clients.push(client_of(s).await);
        }
        clients
    }

    /// Every replica's stderr, for a failure message.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let log = s.stderr();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "\n--- replica {i} (last lines):\n{}",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                )
            })
            .collect()
    }
}

pub async fn client_of(server: &TestServer) -> kube::Client {
    let mut config = server.kube_config().await;
    config.default_retry = false;
    kube::Client::try_from(config).expect("kube client")
}

/// One request; `Err` when no answer came (refused, reset: a replica that is down).
pub async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(StatusCode, Value), kube::Error> {
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let ct = (!body.is_empty()).then_some("application/json");
    let req = crate::common::request(method, path, ct, body);
    let resp = client.send(req.map(kube::client::Body::from)).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect_bytes().await?;
    Ok((
        parts.status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// [`call`] that must be answered.
pub async fn must(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    call(client, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Create the root IPPrefix `name` on `prefix` through `client`; it must be created.
pub async fn create_root(client: &kube::Client, name: &str, prefix: &str) {
    let (status, body) = must(client, "POST", &prefixes_path(), Some(&root(name, prefix))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

pub fn root(name: &str, prefix: &str) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
           "metadata": {"name": name}, "spec": {"prefix": prefix}})
}

pub fn claim(name: &str, parent: &str, len: u8) -> Value {
    json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
           "metadata": {"name": name},
           "spec": {"parentRef": {"name": parent}, "prefixLength": len}})
}

pub fn claims_path(ns: &str) -> String {
    format!("{GV}/namespaces/{ns}/ipprefixclaims")
}

pub fn prefixes_path() -> String {
    format!("{GV}/ipprefixes")
}

/// The items of a list answered 200.
pub fn items(list: &Value) -> &Vec<Value> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
}

pub fn name_of(o: &Value) -> String {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Blocks that overlap among `prefixes` (CIDR strings), as pairs.
pub fn overlaps(prefixes: &[String]) -> Vec<(String, String)> {
    let mut nets: Vec<ipnet::IpNet> = prefixes
        .iter()
        .map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}")))
        .collect();
    nets.sort_by_key(|n| (n.network(), n.prefix_len()));
    nets.windows(2)
        .filter(|w| w[1].network() <= w[0].broadcast())
        .map(|w| (w[0].to_string(), w[1].to_string()))
        .collect()
}

/// Poll `ok` every 100 ms until it holds; panic with `what` and the last answer after
/// `within` (a bound on a wait, not a speed assertion).
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match ok().await {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: still not so after {within:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
