//! A real control plane for cluster-mode tests, after controller-runtime's envtest: etcd,
//! kube-apiserver (aggregation layer configured) and kube-controller-manager (garbage collector,
//! namespace controller) from `KUBEBUILDER_ASSETS`, and `ipam-apiserver` in cluster mode beside
//! them, registered with an APIService routed to this machine through an `ExternalName`
//! Service to `localhost` (see shared/envtest/README.md).
//!
//! Everything runs on free loopback ports in a temporary directory and is killed on drop.
//! Certificates are made here with rcgen: a cluster CA (kube-apiserver serving, admin and test
//! user client certificates), a front-proxy CA, and a serving CA for our server.
//!
//! Without `KUBEBUILDER_ASSETS`, [`Envtest::start`] says so on stderr and returns `None`; the
//! caller returns early (the test is reported as passed, but the reason is in the output).
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const SVC: &str = "ipam-apiserver";
pub const NS: &str = "ipam-system";
pub const APISERVICE: &str = "v1alpha1.ipam.miloapis.com";
/// Test users with client certificates from the cluster CA (no groups beyond
/// `system:authenticated`); RBAC is the test's to grant.
pub const USERS: [&str; 4] = ["alice", "bob", "nobody", "mallory"];

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A certificate authority kept in memory to sign leaves.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = p.self_signed(&key).expect("CA cert");
        Ca { cert, key }
    }

    /// A leaf: `sans` empty → client certificate, else serving (and client) certificate.
    fn leaf(&self, cn: &str, orgs: &[&str], sans: &[&str]) -> (String, String) {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if !sans.is_empty() {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            p.subject_alt_names = sans
                .iter()
                .map(|s| match s.parse() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*s).try_into().expect("DNS name")),
                })
                .collect();
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// A loopback port that is free now, from below the kernel's ephemeral range.
///
/// Ports are chosen before the processes that listen on them start, so one could be taken in
/// between: from the ephemeral range one was, once, most likely as the local end of an
/// outgoing connection. Below that range only another listener can take one, and the starting
/// point is random so two test processes do not walk the same ports.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    const LOW: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&p| p > LOW + 1_000)
        .unwrap_or(32_768);
    let span = u64::from(ephemeral_start - LOW);
    let start = RandomState::new().hash_one(std::process::id()) % span;
    (0..span)
        .map(|i| LOW + ((start + i) % span) as u16)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free loopback port below the ephemeral range")
}

/// Where ipam-apiserver keeps its data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// sled in its data directory (the embedded default).
    Sled,
    /// The etcd kube-apiserver uses (`--etcd-servers`), as an HA deployment may: two
    /// replicas, the APIService reaching the one that does not lead, so every create through
    /// kube-apiserver is handed to the other.
    SharedEtcd,
}

pub struct Envtest {
    pub dir: TempDir,
    /// The etcd of kube-apiserver (and of ipam-apiserver with [`Storage::SharedEtcd`]).
    pub etcd_url: String,
    pub pki: PathBuf,
    /// `system:masters` kubeconfig for kube-apiserver.
    pub kubeconfig: PathBuf,
    pub apiserver: String,
    /// Where ipam-apiserver listens.
    pub ipam_addr: SocketAddr,
    /// In a `RefCell` so a wait can notice a process that died (`try_wait` needs `&mut`).
    procs: std::cell::RefCell<Vec<(&'static str, Child)>>,
}

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Envtest {
    /// Start the control plane and our server, register the APIService and wait until it is
    /// Available. `None` (with the reason on stderr) without `KUBEBUILDER_ASSETS`.
    pub fn start(test: &str) -> Option<Envtest> {
        Self::start_with(test, Storage::Sled)
    }

    /// [`Self::start`] with our server's data in `storage`.
    pub fn start_with(test: &str, storage: Storage) -> Option<Envtest> {
        let assets = match std::env::var("KUBEBUILDER_ASSETS") {
            Ok(a) if !a.is_empty() => PathBuf::from(a),
            _ => {
                // Straight to the process's stderr: libtest captures `eprintln!` of passing
                // tests, and a skip must be visible.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: KUBEBUILDER_ASSETS is not set, so there is no etcd / kube-apiserver / kube-controller-manager to test against. Run with KUBEBUILDER_ASSETS=$(../shared/envtest/assets.sh) (as .ci/run does)."
                );
                return None;
            }
        };
        for bin in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            assert!(
                assets.join(bin).is_file(),
                "KUBEBUILDER_ASSETS={} has no {bin}",
                assets.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("ipam-envtest-")
            .tempdir()
            .expect("temp dir");
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).expect("pki dir");
        std::fs::create_dir_all(dir.path().join("logs")).expect("logs dir");

        let cluster_ca = Ca::new("kube-ca");
        let proxy_ca = Ca::new("front-proxy-ca");
        let ext_ca = Ca::new("ipam-ext-ca");
        write(&pki.join("ca.crt"), &cluster_ca.cert.pem());
        write(&pki.join("front-proxy-ca.crt"), &proxy_ca.cert.pem());
        write(&pki.join("ext-ca.crt"), &ext_ca.cert.pem());
        let leaf = |name: &str, ca: &Ca, cn: &str, orgs: &[&str], sans: &[&str]| {
            let (crt, key) = ca.leaf(cn, orgs, sans);
            write(&pki.join(format!("{name}.crt")), &crt);
            write(&pki.join(format!("{name}.key")), &key);
        };
        leaf(
            "apiserver",
            &cluster_ca,
            "kube-apiserver",
            &[],
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default.svc",
                "127.0.0.1",
            ],
        );
        leaf("admin", &cluster_ca, "admin", &["system:masters"], &[]);
        for user in USERS {
            leaf(user, &cluster_ca, user, &[], &[]);
        }
        leaf(
            "front-proxy-client",
            &proxy_ca,
            "front-proxy-client",
            &[],
            &[],
        );
        let svc_dns = format!("{SVC}.{NS}.svc");
        leaf(
            "ext",
            &ext_ca,
            &svc_dns,
            &[],
            &[
                &svc_dns,
                &format!("{svc_dns}.cluster.local"),
                "localhost",
                "127.0.0.1",
            ],
        );
        let sa = KeyPair::generate().expect("service account key");
        write(&pki.join("sa.key"), &sa.serialize_pem());
        write(&pki.join("sa.pub"), &sa.public_key_pem());

        let (etcd_port, etcd_peer, api_port) = (free_port(), free_port(), free_port());
        let apiserver = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.path().join("kubeconfig");
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut env = Envtest {
            etcd_url: etcd_url.clone(),
            pki: pki.clone(),
            kubeconfig: kubeconfig.clone(),
            apiserver: apiserver.clone(),
            ipam_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            procs: Default::default(),
            dir,
        };
        env.write_kubeconfig(&kubeconfig, &apiserver, "ca.crt", "admin");
        for user in USERS {
            let path = env.user_kubeconfig(user);
            env.write_kubeconfig(&path, &apiserver, "ca.crt", user);
        }

        let p = |f: &str| pki.join(f).display().to_string();
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        env.spawn(
            "etcd",
            Command::new(assets.join("etcd")).args([
                "--data-dir",
                &env.dir.path().join("etcd").display().to_string(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("default={peer_url}"),
            ]),
        );
        env.spawn(
            "kube-apiserver",
            Command::new(assets.join("kube-apiserver")).args([
                "--etcd-servers",
                &etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                &api_port.to_string(),
                "--tls-cert-file",
                &p("apiserver.crt"),
                "--tls-private-key-file",
                &p("apiserver.key"),
                "--client-ca-file",
                &p("ca.crt"),
                "--authorization-mode",
                "RBAC",
                "--service-cluster-ip-range",
                "10.96.0.0/24",
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--service-account-key-file",
                &p("sa.pub"),
                "--service-account-signing-key-file",
                &p("sa.key"),
                "--requestheader-client-ca-file",
                &p("front-proxy-ca.crt"),
                "--requestheader-allowed-names",
                "front-proxy-client",
                "--requestheader-username-headers",
                "X-Remote-User",
                "--requestheader-group-headers",
                "X-Remote-Group",
                "--requestheader-extra-headers-prefix",
                "X-Remote-Extra-",
                "--proxy-client-cert-file",
                &p("front-proxy-client.crt"),
                "--proxy-client-key-file",
                &p("front-proxy-client.key"),
                "--endpoint-reconciler-type",
                "none",
            ]),
        );
        env.wait_for("kube-apiserver /readyz", || {
            let out = env.kubectl(&["get", "--raw", "/readyz"]);
            out.status.success()
        });
        let kc = kubeconfig.display().to_string();
        env.spawn(
            "kube-controller-manager",
            Command::new(assets.join("kube-controller-manager")).args([
                "--kubeconfig",
                &kc,
                "--authentication-kubeconfig",
                &kc,
                "--authorization-kubeconfig",
                &kc,
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                "0",
                "--port",
                "0",
                "--controllers",
                "garbagecollector,namespace",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
            ]),
        );
        env.start_ipam(storage);
        env.register_apiservice();
        Some(env)
    }

    /// ipam-apiserver's audit log (every write, at Metadata).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("logs/ipam-audit.log")
    }

    /// Start ipam-apiserver in cluster mode (two replicas on etcd, see [`Storage`]).
    fn start_ipam(&mut self, storage: Storage) {
        match storage {
            Storage::Sled => {
                self.ipam_addr = self.spawn_ipam("ipam-apiserver", "ipam-data", &[]);
            }
            Storage::SharedEtcd => {
                let etcd = ["--etcd-servers".to_string(), self.etcd_url.clone()];
                self.ipam_addr =
                    self.spawn_ipam("ipam-apiserver-leader", "ipam-data-leader", &etcd);
                let direct = self.direct_kubeconfig(Some("admin"));
                self.wait_for("the first replica to lead", || {
                    let out = self.kubectl_as(&direct, &["get", "--raw", "/metrics"]);
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .any(|l| l == "ipam_leader 1")
                });
                self.ipam_addr = self.spawn_ipam("ipam-apiserver", "ipam-data", &etcd);
            }
        }
    }

    /// Start one replica named `name` (its log: `logs/<name>.log`; its audit log
    /// `logs/ipam-audit.log` for the one the APIService reaches); learn its address from its
    /// log.
    fn spawn_ipam(&mut self, name: &'static str, data: &str, more: &[String]) -> SocketAddr {
        let p = |f: &str| self.pki.join(f).display().to_string();
        let log_path = self.dir.path().join(format!("logs/{name}.log"));
        let audit = match name {
            "ipam-apiserver" => self.audit_log(),
            _ => self.dir.path().join(format!("logs/{name}-audit.log")),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipam-apiserver"))
            .args([
                "serve",
                "--data-dir",
                &self.dir.path().join(data).display().to_string(),
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                "0",
                "--tls-cert-file",
                &p("ext.crt"),
                "--tls-private-key-file",
                &p("ext.key"),
                "--kubeconfig",
                &self.kubeconfig.display().to_string(),
                "--audit-log-path",
                &audit.display().to_string(),
            ])
            .args(more)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ipam-apiserver");
        let pipe = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(&log_path).ok();
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .split("Serving securely on ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                if let Some(f) = log.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        self.procs.get_mut().push((name, child));
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => panic!("{name} did not start serving:\n{}", self.log_tail(name, 40)),
        }
    }

    fn register_apiservice(&self) {
        use base64::Engine;
        let ca = std::fs::read(self.pki.join("ext-ca.crt")).expect("ext CA");
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca);
        let port = self.ipam_addr.port();
        let manifest = format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {SVC}, namespace: {NS}}}
spec:
  type: ExternalName
  externalName: localhost
  ports: [{{name: https, port: {port}, protocol: TCP}}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: {APISERVICE}}}
spec:
  group: ipam.miloapis.com
  version: v1alpha1
  groupPriorityMinimum: 1000
  versionPriority: 15
  caBundle: {ca_bundle}
  service: {{name: {SVC}, namespace: {NS}, port: {port}}}
"#
        );
        self.apply(&manifest);
        self.wait_for("APIService Available", || {
            let out = self.kubectl(&[
                "get",
                "apiservice",
                APISERVICE,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Available")].status}"#,
            ]);
            String::from_utf8_lossy(&out.stdout).trim() == "True"
        });
        // Available can come a moment before the proxy route is in kube-apiserver's mux.
        self.wait_for("discovery through the aggregator", || {
            self.kubectl(&["get", "--raw", "/apis/ipam.miloapis.com/v1alpha1"])
                .status
                .success()
        });
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = std::fs::File::create(self.dir.path().join(format!("logs/{name}.log")))
            .expect("log file");
        let child = cmd
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.procs.get_mut().push((name, child));
    }

    fn write_kubeconfig(&self, path: &Path, server: &str, ca: &str, user: &str) {
        let p = |f: &str| self.pki.join(f).display().to_string();
        write(
            path,
            &format!(
                r#"apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster: {{server: "{server}", certificate-authority: "{ca}"}}
users:
- name: {user}
  user: {{client-certificate: "{crt}", client-key: "{key}"}}
contexts:
- name: envtest
  context: {{cluster: envtest, user: {user}}}
current-context: envtest
"#,
                ca = p(ca),
                crt = p(&format!("{user}.crt")),
                key = p(&format!("{user}.key")),
            ),
        );
    }

    pub fn user_kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.path().join(format!("kubeconfig-{user}"))
    }

    /// A kubeconfig that talks to ipam-apiserver directly (not through kube-apiserver) with
    /// `user`'s certificate, or none when `user` is `None`.
    pub fn direct_kubeconfig(&self, user: Option<&str>) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-direct-{}", user.unwrap_or("anonymous")));
        let server = format!("https://{}", self.ipam_addr);
        match user {
            Some(u) => self.write_kubeconfig(&path, &server, "ext-ca.crt", u),
            None => write(
                &path,
                &format!(
                    r#"apiVersion: v1
kind: Config
clusters:
- name: direct
  cluster: {{server: "{server}", certificate-authority: "{ca}"}}
users:
- name: anonymous
  user: {{}}
contexts:
- name: direct
  context: {{cluster: direct, user: anonymous}}
current-context: direct
"#,
                    ca = self.pki.join("ext-ca.crt").display()
                ),
            ),
        }
        path
    }

    /// `kubectl` as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args)
    }

    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.kubectl_cmd(kubeconfig, args)
            .output()
            .expect("run kubectl (is it on PATH?)")
    }

    pub fn kubectl_cmd(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(args);
        cmd
    }

    /// `kubectl` as admin, asserting success; stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        self.assert_ok(args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn assert_ok(&self, args: &[&str], out: &Output) {
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\nstderr: {}\nstdout: {}\nipam-apiserver log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log_tail("ipam-apiserver", 30)
        );
    }

    /// `kubectl apply -f -` with `manifest`, as admin.
    pub fn apply(&self, manifest: &str) -> String {
        self.apply_as(&self.kubeconfig, manifest)
    }

    pub fn apply_as(&self, kubeconfig: &Path, manifest: &str) -> String {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd(kubeconfig, &["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.as_bytes())
            .expect("write manifest");
        let out = child.wait_with_output().expect("kubectl apply");
        self.assert_ok(&["apply", "-f", "-"], &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Poll `ready` every 250 ms until it holds; panic with the logs after [`READY_TIMEOUT`].
    pub fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) {
        self.wait_for_within(what, READY_TIMEOUT, &mut ready)
    }

    pub fn wait_for_within(&self, what: &str, timeout: Duration, ready: &mut dyn FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ready() {
            // A process that exited will not become ready: say so now, not after the timeout.
            let exited = self.exited_process();
            if exited.is_some() || Instant::now() > deadline {
                let why = match exited {
                    Some((name, status)) => format!("{name} exited ({status})"),
                    None => format!("timed out after {timeout:?}"),
                };
                panic!(
                    "{why} waiting for {what}\n--- kube-apiserver log:\n{}\n--- kube-controller-manager log:\n{}\n--- ipam-apiserver log:\n{}",
                    self.log_tail("kube-apiserver", 25),
                    self.log_tail("kube-controller-manager", 25),
                    self.log_tail("ipam-apiserver", 40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The first started process that has exited, with how it ended.
    fn exited_process(&self) -> Option<(&'static str, std::process::ExitStatus)> {
        self.procs
            .borrow_mut()
            .iter_mut()
            .find_map(|(name, child)| Some((*name, child.try_wait().ok()??)))
    }

    /// The last `n` lines a process logged.
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("logs/{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Envtest {
    fn drop(&mut self) {
        // Our server and the controller manager first, etcd last.
        for (_, child) in self.procs.get_mut().iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("IPAM_ENVTEST_KEEP").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("envtest directory kept: {}", kept.keep().display());
        }
    }
}
