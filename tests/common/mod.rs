//! Integration-test harness: the real `ipam-apiserver` binary, standalone, on an ephemeral port
//! with a temporary data directory; kubectl, kube-rs and raw-HTTP helpers against it.
//!
//! ```ignore
//! mod common;
//! let server = common::TestServer::start();
//! let out = server.kubectl_ok(&["get", "--raw", "/healthz"]);
//! let client = server.client().await;
//! let (status, headers, body) = server.raw("GET", "/apis", None, Vec::new()).await;
//! ```
//!
//! The server's stderr is collected ([`TestServer::stderr`]) and shown when startup fails.
//! `RUST_LOG` is passed through (default `info`; the harness needs the `Serving securely on`
//! line, logged at info).
#![allow(dead_code)] // each test crate uses a different subset

pub mod protobuf;

use http::{HeaderMap, StatusCode};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long the binary may take to print `Serving securely on` (a busy 2-core CI box).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`TestServer::stop`] waits for the process to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub const BIN: &str = env!("CARGO_BIN_EXE_ipam-apiserver");
/// The kubectl plugin built from this crate.
pub const KUBECTL_IPAM: &str = env!("CARGO_BIN_EXE_kubectl-ipam");

/// A running `ipam-apiserver serve --standalone`. Killed (SIGKILL) on drop.
pub struct TestServer {
    /// The address the server listens on (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    /// The data directory; lives as long as this value (unless given to [`Self::start_in`]).
    pub data_dir: PathBuf,
    /// `data_dir/kubeconfig`: the admin kubeconfig the server writes at startup.
    pub kubeconfig: PathBuf,
    /// Holds the temporary data directory and kubectl's cache directory.
    scratch: TempDir,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    /// A command the server runs under (e.g. `prlimit --nofile=256:256`); empty: none.
    wrapper: Vec<String>,
    /// Flags after the harness's own.
    args: Vec<String>,
}

impl TestServer {
    /// Start on a fresh temporary data directory.
    pub fn start() -> TestServer {
        let scratch = tempfile::tempdir().expect("create temp dir");
        let data_dir = scratch.path().join("data");
        Self::launch(scratch, data_dir)
    }

    /// Start on an existing data directory (owned by the caller), e.g. to check what survives a
    /// restart across two `TestServer`s.
    pub fn start_in(dir: impl AsRef<Path>) -> TestServer {
        let scratch = tempfile::tempdir().expect("create temp dir");
        Self::launch(scratch, dir.as_ref().to_path_buf())
    }

    /// Start on a fresh temporary data directory with more `serve` flags, under `wrapper`: a
    /// command that execs the rest of its arguments, so the pid stays the server's (e.g.
    /// `["prlimit", "--nofile=256:256"]`).
    pub fn start_with(wrapper: &[&str], args: &[&str]) -> TestServer {
        let scratch = tempfile::tempdir().expect("create temp dir");
        let data_dir = scratch.path().join("data");
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self::launch_with(scratch, data_dir, owned(wrapper), owned(args))
    }

    /// [`Self::start_in`] with more `serve` flags.
    pub fn start_in_with(dir: impl AsRef<Path>, args: &[&str]) -> TestServer {
        let scratch = tempfile::tempdir().expect("create temp dir");
        let args = args.iter().map(|a| a.to_string()).collect();
        Self::launch_with(scratch, dir.as_ref().to_path_buf(), Vec::new(), args)
    }

    fn launch(scratch: TempDir, data_dir: PathBuf) -> TestServer {
        Self::launch_with(scratch, data_dir, Vec::new(), Vec::new())
    }

    fn launch_with(
        scratch: TempDir,
        data_dir: PathBuf,
        wrapper: Vec<String>,
        args: Vec<String>,
    ) -> TestServer {
        let kubeconfig = data_dir.join("kubeconfig");
        let mut server = TestServer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            kubeconfig,
            scratch,
            child: None,
            stderr: Arc::default(),
            wrapper,
            args,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let stderr = Arc::new(Mutex::new(String::new()));
        let plain = server_command(&self.data_dir);
        let mut cmd = match self.wrapper.split_first() {
            None => plain,
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args)
                    .arg(plain.get_program())
                    .args(plain.get_args());
                for (key, value) in plain.get_envs() {
                    match value {
                        Some(value) => cmd.env(key, value),
                        None => cmd.env_remove(key),
                    };
                }
                cmd
            }
        };
        let mut child = cmd
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));

        // A thread collects stderr for the life of the process, reporting the address once.
        let (addr_tx, addr_rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = serving_address(&line) {
                    let _ = addr_tx.send(addr);
                }
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            match addr_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "ipam-apiserver exited ({status:?}) before serving; stderr:\n{}",
                        read(&stderr)
                    );
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Give the reader a moment to drain what the process wrote before exiting.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "ipam-apiserver exited ({status}) before serving; stderr:\n{}",
                    read(&stderr)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ipam-apiserver did not report `Serving securely on` within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    read(&stderr)
                );
            }
        };
        self.addr = addr;
        self.child = Some(child);
        self.stderr = stderr;
    }

    /// Everything the current process has written to stderr so far.
    pub fn stderr(&self) -> String {
        read(&self.stderr)
    }

    /// The server process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait for exit (at most [`STOP_TIMEOUT`], then SIGKILL and panic).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is not running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ipam-apiserver did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL and reap: a crash, for durability tests.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server is not running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// Stop (SIGTERM, if running) and start again on the same data directory. The port changes;
    /// `addr` and the kubeconfig are updated.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(status.success(), "exit status on SIGTERM: {status}");
        }
        self.spawn();
    }

    /// `kubectl --kubeconfig <kubeconfig> <args>` with a private discovery cache.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.kubeconfig, args)
    }

    /// `kubectl` with another kubeconfig (e.g. one saved before a restart).
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.scratch.path().join("kubectl-cache"))
            .args(args)
            .output()
            .expect("run kubectl (is it on PATH?)")
    }

    /// [`Self::kubectl`], asserting success; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\nstderr: {}\nstdout: {}\nserver stderr:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.stderr()
        );
        String::from_utf8(out.stdout).expect("kubectl stdout is UTF-8")
    }

    /// [`Self::kubectl_ok`] until its output is `expected` (a status the server writes right
    /// after the change that caused it); panics with the last output after 10 s.
    pub fn kubectl_until(&self, args: &[&str], expected: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = self.kubectl_ok(args);
            if out.trim() == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl {} still prints {out:?}, not {expected:?}",
                args.join(" ")
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// A kube-rs client for the admin user, from the kubeconfig.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config().await).expect("build kube client")
    }

    /// The kube-rs configuration from the kubeconfig, to adjust before building a client.
    pub async fn kube_config(&self) -> kube::Config {
        kube_config_from(&self.kubeconfig).await
    }

    /// One request as the admin user: `method` `path` (with query), optional `Content-Type`.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        self.send(request(method, path, content_type, body)).await
    }

    /// [`Self::raw`] with a JSON body (if any), the answer parsed (`Null` when it is not JSON).
    #[allow(dead_code)] // not every test file sends JSON this way
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let content_type = (!body.is_empty()).then_some("application/json");
        let (status, _, bytes) = self.raw(method, path, content_type, body).await;
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    /// [`Self::raw`] without a client certificate.
    pub async fn raw_unauthenticated(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut config = self.kube_config().await;
        config.auth_info = Default::default();
        send_with(config, request(method, path, content_type, body)).await
    }

    /// Any request (set `Accept` and friends yourself) as the admin user. The URI is the path
    /// and query only; the server address comes from the kubeconfig.
    pub async fn send(&self, req: http::Request<Vec<u8>>) -> (StatusCode, HeaderMap, Vec<u8>) {
        send_with(self.kube_config().await, req).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `ipam-apiserver serve --standalone --data-dir <dir> --secure-port 0`, not yet spawned.
pub fn server_command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--standalone")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--secure-port", "0"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env_remove("IPAM_DATA_DIR");
    cmd
}

/// Run the binary with `args` to completion (it must exit within `timeout`, or it is killed and
/// the test fails). For startup failures: bad flags, a locked data directory.
pub fn run_to_exit<I, S>(args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("IPAM_DATA_DIR");
    run_command_to_exit(cmd, timeout)
}

/// [`run_to_exit`] for a prepared command (e.g. [`server_command`]).
pub fn run_command_to_exit(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ipam-apiserver");
    if wait_timeout(&mut child, timeout).is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("collect output");
        panic!(
            "ipam-apiserver still running after {timeout:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().expect("collect output")
}

/// A kube-rs configuration from a kubeconfig file.
pub async fn kube_config_from(path: &Path) -> kube::Config {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config from kubeconfig")
}

/// Send one request with a client built from `config`; transport errors fail the test.
pub async fn send_with(
    config: kube::Config,
    req: http::Request<Vec<u8>>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let client = kube::Client::try_from(config).expect("build kube client");
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
    let (parts, body) = resp.into_parts();
    let body = body
        .collect_bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {uri}: reading body: {e}"));
    (parts.status, parts.headers, body.to_vec())
}

/// Build a request from parts (`path` includes any query string).
pub fn request(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Vec<u8>>,
) -> http::Request<Vec<u8>> {
    let mut builder = http::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        builder = builder.header(http::header::CONTENT_TYPE, ct);
    }
    builder.body(body.into()).expect("valid request")
}

/// Parse `... Serving securely on 127.0.0.1:PORT` from a log line.
fn serving_address(line: &str) -> Option<SocketAddr> {
    let rest = line.split("Serving securely on ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(buf: &Mutex<String>) -> String {
    buf.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `kubectl-ipam ARGS --kubeconfig KUBECONFIG`, ignoring any `$KUBECONFIG` of the caller.
pub fn kubectl_ipam(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(KUBECTL_IPAM)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl-ipam")
}

/// [`kubectl_ipam`] that must succeed; its standard output.
pub fn kubectl_ipam_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl_ipam(kubeconfig, args);
    assert!(
        out.status.success(),
        "kubectl-ipam {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
