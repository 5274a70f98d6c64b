//! One real etcd member (from `$KUBEBUILDER_ASSETS/etcd`) on free loopback ports, for tests of
//! the server on etcd; `None`, saying so, without the assets.
use super::common::TestServer;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Killed on drop.
pub struct Etcd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    l.local_addr().unwrap().port()
}

impl Etcd {
    /// Kill it (a lost quorum, for the server).
    #[allow(dead_code)] // not every test file stops it
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn start(test: &str) -> Option<Etcd> {
        let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|a| !a.is_empty()) else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: KUBEBUILDER_ASSETS is not set, so there is no etcd to test against. Run with KUBEBUILDER_ASSETS=$(../shared/envtest/assets.sh) (as .ci/run does)."
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(Path::new(&assets).join("etcd"))
            .args(["--data-dir", &dir.path().join("etcd").display().to_string()])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Until it answers: a server started before that fails at start, by design.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Etcd {
            child,
            url,
            _dir: dir,
        })
    }
}

/// `n` replicas on `etcd` with `args` besides `--etcd-servers`, each in its own data directory
/// holding a copy of the first one's PKI (so one admin certificate works on all; each writes
/// its own kubeconfig).
#[allow(dead_code)] // not every test file starts replicas
pub fn replicas(etcd: &Etcd, n: usize, scratch: &Path, args: &[&str]) -> Vec<TestServer> {
    let mut all = vec!["--etcd-servers", etcd.url.as_str()];
    all.extend_from_slice(args);
    let first = scratch.join("r0");
    let mut servers = vec![TestServer::start_in_with(&first, &all)];
    for i in 1..n {
        let dir = scratch.join(format!("r{i}"));
        std::fs::create_dir_all(dir.join("pki")).unwrap();
        for f in std::fs::read_dir(first.join("pki")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.join("pki").join(f.file_name())).unwrap();
        }
        servers.push(TestServer::start_in_with(&dir, &all));
    }
    servers
}
