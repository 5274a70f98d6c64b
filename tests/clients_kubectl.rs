//! kubectl against the real binary: every flow a person at a terminal uses behaves as it does
//! against a built-in resource.
mod common;

use common::TestServer;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.to_string_lossy().into_owned()
}

const ROOT: &str = "apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefix
metadata:
  name: platform
  labels: {tier: platform}
spec:
  prefix: fd20::/20
";

fn claim_yaml(name: &str, policy: &str) -> String {
    format!(
        "apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {{name: {name}, namespace: p}}
spec:
  prefixLength: 48
  parentRef: {{name: platform}}
  reclaimPolicy: {policy}
"
    )
}

fn get(server: &TestServer, args: &[&str]) -> Value {
    let mut all = vec!["get", "-o", "json", "--show-managed-fields"];
    all.extend_from_slice(args);
    json(&server.kubectl_ok(&all))
}

fn with_root(server: &TestServer, dir: &Path) {
    let root = write(dir, "root.yaml", ROOT);
    server.kubectl_ok(&["apply", "-f", &root]);
}

#[test]
fn kubectl_apply_twice_is_a_noop_keeping_the_resource_version() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let root = write(dir.path(), "root.yaml", ROOT);
    let claim = write(dir.path(), "claim.yaml", &claim_yaml("proj", "Delete"));
    let out = server.kubectl_ok(&["apply", "-f", &root, "-f", &claim]);
    assert!(out.contains("created"), "{out}");
    let first = get(&server, &["ippc", "proj", "-n", "p"]);
    assert_eq!(first["status"]["prefix"], "fd20::/48");

    let out = server.kubectl_ok(&["apply", "-f", &root, "-f", &claim]);
    assert!(
        out.lines().all(|l| l.ends_with("unchanged")),
        "second apply changed something: {out}"
    );
    let second = get(&server, &["ippc", "proj", "-n", "p"]);
    assert_eq!(
        first["metadata"]["resourceVersion"],
        second["metadata"]["resourceVersion"]
    );

    // A real change goes through and records kubectl's client-side-apply manager.
    let claim = write(dir.path(), "claim.yaml", &claim_yaml("proj", "Retain"));
    let out = server.kubectl_ok(&["apply", "-f", &claim]);
    assert!(out.contains("configured"), "{out}");
    let third = get(&server, &["ippc", "proj", "-n", "p"]);
    assert_eq!(third["spec"]["reclaimPolicy"], "Retain");
    let managers: Vec<&str> = third["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert!(
        managers.contains(&"kubectl-client-side-apply"),
        "{managers:?}"
    );
}

#[test]
fn server_side_apply_by_two_managers_conflicts_until_forced() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let alice = write(dir.path(), "alice.yaml", ROOT);
    let out = server.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=alice",
        "-f",
        &alice,
    ]);
    assert!(out.contains("serverside-applied"), "{out}");
    let obj = get(&server, &["ipp", "platform"]);
    let mf = &obj["metadata"]["managedFields"][0];
    assert_eq!(mf["manager"], "alice");
    assert_eq!(mf["operation"], "Apply");
    assert_eq!(mf["fieldsV1"]["f:spec"]["f:prefix"], serde_json::json!({}));

    let bob = write(
        dir.path(),
        "bob.yaml",
        &ROOT.replace("tier: platform", "tier: bob"),
    );
    let out = server.kubectl(&["apply", "--server-side", "--field-manager=bob", "-f", &bob]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict with \"alice\"") && err.contains(".metadata.labels.tier"),
        "{err}"
    );
    assert_eq!(
        get(&server, &["ipp", "platform"])["metadata"]["labels"]["tier"],
        "platform"
    );

    server.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=bob",
        "--force-conflicts",
        "-f",
        &bob,
    ]);
    let obj = get(&server, &["ipp", "platform"]);
    assert_eq!(obj["metadata"]["labels"]["tier"], "bob");
    let entries = obj["metadata"]["managedFields"].as_array().unwrap();
    let owner_of_tier: Vec<&str> = entries
        .iter()
        .filter(|e| !e["fieldsV1"]["f:metadata"]["f:labels"]["f:tier"].is_null())
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert_eq!(owner_of_tier, vec!["bob"]);

    // Alice drops the label from her config: bob owns it, so it stays.
    let alice2 = write(
        dir.path(),
        "alice2.yaml",
        &ROOT.replace("  labels: {tier: platform}\n", ""),
    );
    server.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=alice",
        "-f",
        &alice2,
    ]);
    assert_eq!(
        get(&server, &["ipp", "platform"])["metadata"]["labels"]["tier"],
        "bob"
    );
}

#[test]
fn kubectl_edit_changes_the_object_through_the_editor() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    with_root(&server, dir.path());
    let claim = write(dir.path(), "claim.yaml", &claim_yaml("proj", "Delete"));
    server.kubectl_ok(&["create", "-f", &claim]);
    let editor = write(
        dir.path(),
        "editor.sh",
        "#!/bin/sh\nsed -i 's/reclaimPolicy: Delete/reclaimPolicy: Retain/' \"$1\"\n",
    );
    Command::new("chmod")
        .args(["+x", &editor])
        .status()
        .unwrap();
    let out = Command::new("kubectl")
        .env("KUBE_EDITOR", &editor)
        .env("EDITOR", &editor)
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args(["edit", "ippc", "proj", "-n", "p"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let obj = get(&server, &["ippc", "proj", "-n", "p"]);
    assert_eq!(obj["spec"]["reclaimPolicy"], "Retain");
    assert_eq!(obj["status"]["prefix"], "fd20::/48");
    let managers: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert!(managers.contains(&"kubectl-edit"), "{managers:?}");
}

#[test]
fn kubectl_patch_json_merge_and_strategic() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    with_root(&server, dir.path());
    let base = ["patch", "ipp", "platform"];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        server.kubectl_ok(&args)
    };
    run(&[
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"reserve":{"leading":1}}}"#,
    ]);
    run(&[
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/spec/exclude","value":["fd20::/64"]}]"#,
    ]);
    run(&[
        "--type",
        "strategic",
        "-p",
        r#"{"metadata":{"labels":{"env":"prod"}}}"#,
    ]);
    let obj = get(&server, &["ipp", "platform"]);
    assert_eq!(obj["spec"]["reserve"]["leading"], 1);
    assert_eq!(obj["spec"]["exclude"], serde_json::json!(["fd20::/64"]));
    assert_eq!(obj["metadata"]["labels"]["env"], "prod");
    assert_eq!(obj["metadata"]["labels"]["tier"], "platform");
    // Status patches change status only; a spec field in them is ignored.
    let out = server.kubectl(&[
        "patch",
        "ipp",
        "platform",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"spec":{"reclaimPolicy":"Retain"}}"#,
    ]);
    assert!(out.status.success());
    assert!(get(&server, &["ipp", "platform"])["spec"]["reclaimPolicy"].is_null());
    // A patch that breaks validation is 422, and nothing changes.
    let out = server.kubectl(&[
        "patch",
        "ipp",
        "platform",
        "--type=merge",
        "-p",
        r#"{"spec":{"prefix":"fd30::/20"}}"#,
    ]);
    assert!(!out.status.success());
}

#[test]
fn kubectl_wait_for_jsonpath_sees_the_allocation() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    with_root(&server, dir.path());
    let claim = write(dir.path(), "claim.yaml", &claim_yaml("proj", "Delete"));
    server.kubectl_ok(&["apply", "-f", &claim]);
    let out = server.kubectl_ok(&[
        "wait",
        "ippc/proj",
        "-n",
        "p",
        "--for=jsonpath={.status.phase}=Bound",
        "--timeout=20s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    let out = server.kubectl_ok(&[
        "wait",
        "ippc/proj",
        "-n",
        "p",
        "--for=condition=Bound",
        "--timeout=20s",
    ]);
    assert!(out.contains("condition met"), "{out}");
}

#[test]
fn kubectl_get_watch_prints_watch_events() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    with_root(&server, dir.path());
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args(["get", "ippc", "-n", "p", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Let the watch start, then create and delete.
    std::thread::sleep(Duration::from_secs(2));
    let claim = write(dir.path(), "claim.yaml", &claim_yaml("proj", "Delete"));
    server.kubectl_ok(&["create", "-f", &claim]);
    server.kubectl_ok(&["delete", "-f", &claim]);
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !lines.iter().any(|l: &String| l.starts_with("DELETED")) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(
        text.contains("ADDED") && text.contains("proj") && text.contains("fd20::/48"),
        "{text}"
    );
    assert!(text.contains("DELETED"), "{text}");
}

#[test]
fn kubectl_get_chunk_size_pages_through_everything() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut docs = String::new();
    for i in 0..9 {
        docs.push_str(&format!(
            "---\napiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata: {{name: root-{i}}}\nspec: {{prefix: \"10.{i}.0.0/16\"}}\n"
        ));
    }
    let file = write(dir.path(), "roots.yaml", &docs);
    server.kubectl_ok(&["create", "-f", &file]);
    let out = server.kubectl(&["get", "ipp", "--chunk-size=2", "-o", "name", "-v=6"]);
    assert!(out.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = (0..9)
        .map(|i| format!("ipprefix.ipam.miloapis.com/root-{i}"))
        .collect();
    assert_eq!(names, expected);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.matches("continue=").count() >= 4,
        "kubectl did not page: {log}"
    );
    // Table output pages too (the default `kubectl get`).
    let out = server.kubectl_ok(&["get", "ipp", "--chunk-size=2"]);
    assert_eq!(out.lines().count(), 10, "{out}");
}

#[test]
fn kubectl_delete_dry_run_server_keeps_the_object() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    with_root(&server, dir.path());
    let claim = write(dir.path(), "claim.yaml", &claim_yaml("proj", "Delete"));
    server.kubectl_ok(&["create", "-f", &claim]);
    let before = get(&server, &["ippc", "proj", "-n", "p"]);
    let out = server.kubectl_ok(&["delete", "ippc", "proj", "-n", "p", "--dry-run=server"]);
    assert!(out.contains("deleted (server dry run)"), "{out}");
    let after = get(&server, &["ippc", "proj", "-n", "p"]);
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    // The prefix is still held.
    assert_eq!(get(&server, &["ipp", "p.proj"])["status"]["phase"], "Bound");
    // A create dry run allocates nothing either.
    let other = write(dir.path(), "other.yaml", &claim_yaml("other", "Delete"));
    let out = server.kubectl_ok(&["create", "-f", &other, "--dry-run=server", "-o", "json"]);
    assert_eq!(json(&out)["status"]["prefix"], "fd20:0:1::/48");
    assert!(!server
        .kubectl(&["get", "ippc", "other", "-n", "p"])
        .status
        .success());
}
