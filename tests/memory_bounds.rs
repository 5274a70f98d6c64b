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

    // A watch from before the retained history: its one event is 410 Expired (as
    // kube-apiserver's, so watchers list again), as before the byte bound.
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
    assert_eq!(status, StatusCode::OK, "{text}");
    let event: serde_json::Value = serde_json::from_str(text.trim()).expect("one event");
    assert_eq!(event["type"], "ERROR", "{text}");
    assert_eq!(event["object"]["code"], 410, "{text}");
    assert_eq!(event["object"]["reason"], "Expired", "{text}");

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

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";
const METADATA: &str = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io";
const METADATA_PROTOBUF: &str =
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io";

/// `count` Bound claims in `namespace`, made by the load tool over HTTPS.
fn create_claims(server: &TestServer, namespace: &str, count: usize) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-load"));
    cmd.arg("--data-dir")
        .arg(&server.data_dir)
        .args(["--mode", "create", "--clients", "16", "--progress", "0"])
        .args(["--count", &count.to_string(), "--namespace", namespace]);
    let out = common::run_command_to_exit(cmd, std::time::Duration::from_secs(600));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(" ok={count} failed=0 ")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn get(client: &kube::Client, path: &str, accept: &str) -> (StatusCode, Vec<u8>) {
    let mut req = request("GET", path, None, Vec::new());
    req.headers_mut()
        .insert(http::header::ACCEPT, accept.parse().unwrap());
    send(client, req).await
}

/// The names in a list (`items`) or Table (`rows`), in order.
fn names(list: &Value, field: &str) -> Vec<String> {
    list[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field}"))
        .iter()
        .map(|i| {
            let meta = match field {
                "rows" => &i["object"]["metadata"],
                _ => &i["metadata"],
            };
            meta["name"].as_str().expect("a name").to_string()
        })
        .collect()
}

/// Peak memory of the server while it answers an unpaged list of many claims, in full JSON and
/// as a Table (what `kubectl get` asks for), against the size of the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaged_list_is_written_without_holding_the_answer() {
    let claims: usize = std::env::var("MEMORY_BOUNDS_CLAIMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let server = TestServer::start();
    let pid = server.pid().expect("running");
    create_claims(&server, "many", claims);
    let client = server.client().await;
    let path = format!("{GV}/namespaces/many/ipprefixclaims");
    let clear_refs = format!("/proc/{pid}/clear_refs");
    for (accept, field) in [("application/json", "items"), (TABLE, "rows")] {
        // Resets VmHWM to the current RSS (Linux ≥ 4.0), so the peak is this list's.
        std::fs::write(&clear_refs, "5").expect("reset the server's peak RSS");
        let before = proc_status_bytes(pid, "VmHWM");
        let (status, body) = get(&client, &path, accept).await;
        let peak = proc_status_bytes(pid, "VmHWM");
        assert_eq!(status, StatusCode::OK);
        let growth = peak.saturating_sub(before);
        eprintln!(
            "{accept}: {claims} claims, {} MiB answer, server peak +{} MiB",
            body.len() as u64 / MIB,
            growth / MIB
        );
        let list: Value = serde_json::from_slice(&body).expect("the list parses");
        let names = names(&list, field);
        assert_eq!(names.len(), claims, "every claim, once");
        assert!(names.windows(2).all(|w| w[0] < w[1]), "in name order");
        assert!(
            list["metadata"]["resourceVersion"].is_string(),
            "{}",
            list["metadata"]
        );
        assert!(list["metadata"].get("continue").is_none());
        assert!(
            growth < body.len() as u64 / 4,
            "{accept}: the server's peak grew by {} MiB for a {} MiB answer",
            growth / MIB,
            body.len() as u64 / MIB
        );
    }
}

/// Every representation of a list longer than a chunk, whole and paged (a page longer than a
/// chunk learns its continue token at its end), holds the same claims as the JSON list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_longer_than_a_chunk_are_complete_in_every_representation() {
    const CLAIMS: usize = 1_234;
    let server = TestServer::start();
    create_claims(&server, "some", CLAIMS);
    let client = server.client().await;
    let path = format!("{GV}/namespaces/some/ipprefixclaims");

    let (status, body) = get(&client, &path, "application/json").await;
    assert_eq!(status, StatusCode::OK);
    let json: Value = serde_json::from_slice(&body).unwrap();
    let all = names(&json, "items");
    assert_eq!(all.len(), CLAIMS);

    let (_, body) = get(&client, &path, "application/yaml").await;
    let yaml: Value = serde_yaml::from_slice(&body).expect("the YAML list parses");
    assert_eq!(yaml["items"], json["items"], "YAML and JSON lists agree");
    assert_eq!(yaml["kind"], "IPPrefixClaimList");

    let (_, body) = get(&client, &path, TABLE).await;
    let table: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(names(&table, "rows"), all);
    assert_eq!(table["columnDefinitions"].as_array().unwrap().len(), 9);

    let (_, body) = get(&client, &path, METADATA).await;
    let metadata: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(metadata["kind"], "PartialObjectMetadataList");
    assert_eq!(names(&metadata, "items"), all);

    let (_, body) = get(&client, &path, METADATA_PROTOBUF).await;
    let (_, kind, raw) = common::protobuf::open_envelope(&body);
    assert_eq!(kind, "PartialObjectMetadataList");
    let list =
        <ipam_apiserver::http::protobuf::PartialObjectMetadataList as prost::Message>::decode(
            raw.as_slice(),
        )
        .unwrap();
    let proto_names: Vec<String> = list
        .items
        .iter()
        .map(|i| i.metadata.as_ref().unwrap().name.clone().unwrap())
        .collect();
    assert_eq!(proto_names, all);
    assert!(list.metadata.unwrap().resource_version.is_some());

    // Pages of 700: longer than a chunk, so each page's metadata follows its items.
    for accept in ["application/json", "application/yaml", TABLE] {
        let field = if accept == TABLE { "rows" } else { "items" };
        let mut paged = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page_path = match &token {
                Some(t) => format!("{path}?limit=700&continue={t}"),
                None => format!("{path}?limit=700"),
            };
            let (status, body) = get(&client, &page_path, accept).await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            let page: Value = match accept {
                "application/yaml" => serde_yaml::from_slice(&body).unwrap(),
                _ => serde_json::from_slice(&body).unwrap(),
            };
            assert!(page["metadata"]["resourceVersion"].is_string(), "{accept}");
            paged.extend(names(&page, field));
            match page["metadata"]["continue"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        assert_eq!(paged, all, "{accept}: pages hold every claim once");
    }
}
