//! `ipam-load` spreading its work: creates over several parents (`--parents N`), clients over
//! several servers (`--server A,B`), each checked against what the servers then hold.
mod common;

use common::{run_command_to_exit, TestServer};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn load(data_dir: &Path, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-load"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args([
            "--mode",
            "create",
            "--namespace",
            "loadtest",
            "--progress",
            "0",
        ])
        .args(args);
    let out = run_command_to_exit(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `kubectl get RESOURCE -o json` items.
fn items(server: &TestServer, args: &[&str]) -> Vec<serde_json::Value> {
    let out = server.kubectl_ok(&[&["get"], args, &["-o", "json"]].concat());
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON list");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Claims in the load's namespace by parent name.
fn claims_by_parent(server: &TestServer) -> BTreeMap<String, usize> {
    let mut by_parent = BTreeMap::new();
    for claim in items(server, &["ipprefixclaims", "-n", "loadtest"]) {
        let parent = claim["spec"]["parentRef"]["name"].as_str().unwrap_or("");
        *by_parent.entry(parent.to_string()).or_default() += 1;
    }
    by_parent
}

#[test]
fn parents_spreads_the_creates_evenly_over_that_many_roots() {
    let server = TestServer::start();
    let out = load(
        &server.data_dir,
        &["--clients", "4", "--count", "400", "--parents", "4"],
    );
    assert!(
        out.contains(" servers=1 parents=4 ok=400 failed=0 "),
        "{out}"
    );

    let want: BTreeMap<String, usize> = (0..4).map(|i| (format!("load-root-{i}"), 100)).collect();
    assert_eq!(claims_by_parent(&server), want);
    // The roots follow each other, one --parent-prefix-sized block apart.
    let roots: BTreeMap<String, String> = items(&server, &["ipprefixes"])
        .iter()
        .filter(|p| p["spec"]["parentRef"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["prefix"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = [
        "fd00:10ad::/64",
        "fd00:10ad:0:1::/64",
        "fd00:10ad:0:2::/64",
        "fd00:10ad:0:3::/64",
    ]
    .iter()
    .enumerate()
    .map(|(i, p)| (format!("load-root-{i}"), p.to_string()))
    .collect();
    assert_eq!(roots, want);
}

#[test]
fn several_servers_share_the_clients_and_each_is_reported() {
    // Two servers with the same credentials (as replicas on one etcd sharing a data directory);
    // here each keeps its own store, which is enough to see where the creates went.
    let a = TestServer::start();
    let b_dir = tempfile::tempdir().expect("temp dir");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(a.data_dir.join("pki"))
        .arg(b_dir.path().join("pki"))
        .status()
        .expect("cp");
    assert!(status.success());
    let b = TestServer::start_in(b_dir.path());
    let (pid_a, pid_b) = (
        a.pid().expect("pid").to_string(),
        b.pid().expect("pid").to_string(),
    );

    let servers = format!("https://{},https://{}", a.addr, b.addr);
    let out = load(
        &a.data_dir,
        &[
            "--server",
            &servers,
            "--clients",
            "4",
            "--count",
            "200",
            "--server-pid",
            &pid_a,
            "--server-pid",
            &pid_b,
        ],
    );
    assert!(
        out.contains(" servers=2 parents=1 ok=200 failed=0 "),
        "{out}"
    );
    let via = |server: &TestServer| -> usize {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("via https://{} ok=", server.addr)))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line for {}: {out}", server.addr))
    };
    let (on_a, on_b) = (via(&a), via(&b));
    assert!(on_a > 0 && on_b > 0, "{out}");
    assert_eq!(on_a + on_b, 200, "{out}");
    // What each server holds is what the tool says it sent there; each got the parent.
    for (server, n) in [(&a, on_a), (&b, on_b)] {
        let want: BTreeMap<String, usize> = [("load-root".to_string(), n)].into();
        assert_eq!(claims_by_parent(server), want);
    }
    for pid in [&pid_a, &pid_b] {
        assert!(out.contains(&format!("server pid={pid} ")), "{out}");
    }
    // Both servers' writes: the 200 creates (and any status writes of their parents).
    let writes: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("server writes="))
        .and_then(|l| l.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no write-stage line: {out}"));
    assert!((200.0..400.0).contains(&writes), "{out}");
}
