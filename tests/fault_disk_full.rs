//! A full disk: writes turn into 503s, the health probes fail, and nothing that was acknowledged
//! is lost.
//!
//! Needs to mount a small tmpfs (root with CAP_SYS_ADMIN, as on the project's machines); where
//! that is not allowed the test says it was skipped and why.
mod common;

use common::TestServer;
use ipam_apiserver::api::{IPPrefix, IPPrefixClaim, IpFamily};
use kube::api::{Api, ListParams, PostParams};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test, unmounted on drop (also when the test fails).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Result<SmallDisk, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(SmallDisk(dir.to_path_buf()))
    }

    fn grow(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount the tmpfs larger");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `GET /readyz?verbose`: its code and the checks it lists.
async fn readyz(server: &TestServer) -> (u16, String) {
    let (code, _, body) = server.raw("GET", "/readyz?verbose", None, Vec::new()).await;
    (code.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_503s_fails_the_probes_and_loses_no_acknowledged_claim() {
    let scratch = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(scratch.path(), "6m") {
        Ok(d) => d,
        Err(why) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED a_full_disk_gives_503s_fails_the_probes: cannot mount a tmpfs here ({why})"
            );
            return;
        }
    };
    let data = scratch.path().join("data");
    let mut server = TestServer::start_in(&data);
    // Without kube-rs' retries of 503s: the test wants the server's first answer.
    let mut config = server.kube_config().await;
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    let prefixes: Api<IPPrefix> = Api::all(client.clone());
    prefixes
        .create(
            &PostParams::default(),
            &IPPrefix::root("subnet", "fd20::/64".parse().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(readyz(&server).await.0, 200);
    let claims: Api<IPPrefixClaim> = Api::namespaced(client, "ns");
    let mut acknowledged = Vec::new();
    let mut unavailable = None;
    let mut refused_name = String::new();
    for i in 0..50_000 {
        let name = format!("c{i}");
        refused_name.clone_from(&name);
        match claims
            .create(
                &PostParams::default(),
                &IPPrefixClaim::new_host("ns", &name, "subnet", IpFamily::IPv6),
            )
            .await
        {
            Ok(c) => acknowledged.push((name, c.status.unwrap().prefix.unwrap())),
            Err(kube::Error::Api(s)) => {
                unavailable = Some(s);
                break;
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    let status = unavailable.expect("the disk never filled");
    assert_eq!(
        (status.code, status.reason.as_str()),
        (503, "ServiceUnavailable"),
        "{status:?}"
    );
    assert!(!acknowledged.is_empty());
    // Later writes are refused too, rather than acknowledged on a store in an unknown state.
    let again = claims
        .create(
            &PostParams::default(),
            &IPPrefixClaim::new_host("ns", "late", "subnet", IpFamily::IPv6),
        )
        .await;
    assert!(
        matches!(again, Err(kube::Error::Api(ref s)) if s.code == 503),
        "{again:?}"
    );
    assert!(
        server.stderr().contains("fsync failed") || server.stderr().contains("No space"),
        "a clear log line"
    );
    // Probes fail too, so kubelet restarts the pod and its Service stops sending it requests.
    assert_eq!(
        readyz(&server).await,
        (
            500,
            "[+]ping ok\n[-]store failed: reason withheld\nreadyz check failed\n".to_string()
        )
    );

    // Room again, restart: every acknowledged claim is there with the prefix it was given.
    server.kill9();
    disk.grow("64m");
    let server = TestServer::start_in(&data);
    let claims: Api<IPPrefixClaim> = Api::namespaced(server.client().await, "ns");
    let stored: std::collections::HashMap<String, String> = claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap(),
                c.status.unwrap().prefix.unwrap(),
            )
        })
        .collect();
    for (name, prefix) in &acknowledged {
        assert_eq!(
            stored.get(name),
            Some(prefix),
            "acknowledged claim {name} lost or changed"
        );
    }
    drop(server);
}
