//! What a client asks for does not grow the server's memory: the real binary, its memory read
//! from `/proc/<pid>/status`.
mod common;

use common::TestServer;
use http::StatusCode;
use serde_json::{json, Value};

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";
const MIB: u64 = 1 << 20;

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `VmHWM`), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kb * 1024
}

fn request(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> http::Request<Vec<u8>> {
    common::request(method, path, content_type, body)
}

/// One request on `client`; transport errors fail the test.
async fn send(client: &kube::Client, req: http::Request<Vec<u8>>) -> (StatusCode, Vec<u8>) {
    let uri = req.uri().clone();
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .unwrap_or_else(|e| panic!("{uri}: {e}"));
    let status = resp.status();
    let body = resp
        .into_body()
        .collect_bytes()
        .await
        .unwrap_or_else(|e| panic!("{uri}: reading body: {e}"));
    (status, body.to_vec())
}

fn rv_of(body: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(body).expect("JSON");
    v["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_history_is_bounded_by_bytes_and_older_watches_expire() {
    const BOUND: u64 = 8 * MIB;
    const PATCHES: usize = 600;
    const CLIENTS: usize = 8;
    let server = TestServer::start_with(&[], &["--watch-history-bytes", "8Mi"]);
    let pid = server.pid().expect("running");
    let client = server.client().await;
    let root = json!({
        "apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
        "metadata": {"name": "big"}, "spec": {"prefix": "10.0.0.0/8"},
    });
    let (status, body) = send(
        &client,
        request(
            "POST",
            &format!("{GV}/ipprefixes"),
            Some("application/json"),
            root.to_string().into(),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let first_rv = rv_of(&body);

    // A watcher that reads nothing: it must not keep the events it has not received alive.
    let stalled = client
        .send(
            request(
                "GET",
                &format!("{GV}/ipprefixes?watch=true&resourceVersion={first_rv}"),
                None,
                Vec::new(),
            )
            .map(kube::client::Body::from),
        )
        .await
        .expect("watch");
    assert_eq!(stalled.status(), StatusCode::OK);

    let before = proc_status_bytes(pid, "VmRSS");
    // Each patch stores the object twice over in its event (the value and the one before).
    let patchers = (0..CLIENTS).map(|c| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut last_rv = 0;
            for i in (c..PATCHES).step_by(CLIENTS) {
                let blob = format!("{i:06}").repeat(200 * 1024 / 6);
                let patch = json!({"metadata": {"annotations": {"blob": blob}}});
                let (status, body) = send(
                    &client,
                    request(
                        "PATCH",
                        &format!("{GV}/ipprefixes/big"),
                        Some("application/merge-patch+json"),
                        patch.to_string().into(),
                    ),
                )
                .await;
                assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
                last_rv = last_rv.max(rv_of(&body));
            }
            last_rv
        })
    });
    let mut last_rv = 0;
    for p in patchers {
        last_rv = last_rv.max(p.await.expect("patcher"));
    }
    let after = proc_status_bytes(pid, "VmRSS");
    let written = PATCHES as u64 * 2 * 200 * 1024;
    // The history's bound, and room for sled's cache, allocator arenas and TLS buffers: far
    // below the ~240 MiB the events themselves amount to.
    let allowed = BOUND + 64 * MIB;
    eprintln!(
        "RSS {} -> {} MiB over {PATCHES} patches ({} MiB of events)",
        before / MIB,
        after / MIB,
        written / MIB
    );
    assert!(
        after.saturating_sub(before) < allowed,
        "RSS grew by {} MiB (from {} to {} MiB) for {} MiB of events; allowed {} MiB",
        after.saturating_sub(before) / MIB,
        before / MIB,
        after / MIB,
        written / MIB,
        allowed / MIB,
    );
    drop(stalled);

    // A watch from before the retained history: 410 Expired, as before the byte bound.
    let (status, body) = send(
        &client,
        request(
            "GET",
            &format!("{GV}/ipprefixes?watch=true&resourceVersion={first_rv}&timeoutSeconds=1"),
            None,
            Vec::new(),
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::GONE, "{text}");
    assert!(text.contains("\"reason\":\"Expired\""), "{text}");

    // From a recent revision: the events after it.
    let (status, body) = send(
        &client,
        request(
            "GET",
            &format!(
                "{GV}/ipprefixes?watch=true&resourceVersion={}&timeoutSeconds=1",
                last_rv - 1
            ),
            None,
            Vec::new(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<Value> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "MODIFIED");
    assert_eq!(
        events[0]["object"]["metadata"]["resourceVersion"],
        last_rv.to_string()
    );
}
