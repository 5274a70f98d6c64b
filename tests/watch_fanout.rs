//! Watch fan-out, in-process through `http::router`: 100 watchers on the claims of a namespace
//! each see every one of 10,000 creates as ADDED, exactly once, in resourceVersion order, the
//! same sequence the creates' responses describe.
//!
//! `WATCH_FANOUT_EVENTS` / `WATCH_FANOUT_WATCHERS` change the size (defaults 10,000 / 100).
use axum::body::Body;
use futures::StreamExt;
use http::{Request, StatusCode};
use ipam_apiserver::registry::Registry;
use ipam_apiserver::store::SledStore;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";
const CREATORS: usize = 16;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn post(app: &axum::Router, path: &str, body: Value) -> Value {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// (resourceVersion, name) of every ADDED event until `expected` of them arrived.
async fn watch(app: axum::Router, path: String, expected: usize) -> Vec<(u64, String)> {
    let resp = app
        .oneshot(Request::get(&path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.into_body().into_data_stream();
    let mut seen = Vec::with_capacity(expected);
    let mut buf = Vec::new();
    while seen.len() < expected {
        let Some(chunk) = stream.next().await else {
            panic!("watch ended after {} events", seen.len());
        };
        buf.extend_from_slice(&chunk.expect("watch body"));
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let ev: Value = serde_json::from_slice(&line).expect("one JSON event per line");
            assert_eq!(ev["type"], "ADDED", "unexpected event {ev}");
            let meta = &ev["object"]["metadata"];
            let rv: u64 = meta["resourceVersion"].as_str().unwrap().parse().unwrap();
            seen.push((rv, meta["name"].as_str().unwrap().to_string()));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watcher_sees_every_create_once_in_order() {
    let events = env_or("WATCH_FANOUT_EVENTS", 10_000);
    let watchers = env_or("WATCH_FANOUT_WATCHERS", 100);
    let dir = tempfile::tempdir().unwrap();
    // History and live buffer far larger than the run: a watcher never has to catch up by 410.
    let store = SledStore::open(dir.path(), 200_000).unwrap();
    let registry = Registry::new(std::sync::Arc::new(store)).await.unwrap();
    let store = registry.store().clone();
    let app = ipam_apiserver::http::router(registry);
    post(
        &app,
        &format!("{GV}/ipprefixes"),
        json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
               "metadata": {"name": "fanout-root"}, "spec": {"prefix": "fd00:fa::/64"}}),
    )
    .await;

    let start_rv = store.revision();
    let path = format!("{GV}/namespaces/w/ipprefixclaims?watch=true&resourceVersion={start_rv}");
    let watches: Vec<_> = (0..watchers)
        .map(|_| tokio::spawn(watch(app.clone(), path.clone(), events)))
        .collect();

    let started = Instant::now();
    let creators: Vec<_> = (0..CREATORS)
        .map(|c| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut made = Vec::new();
                for i in (c..events).step_by(CREATORS) {
                    let name = format!("c{i}");
                    let v = post(
                        &app,
                        &format!("{GV}/namespaces/w/ipprefixclaims"),
                        json!({"apiVersion": "ipam.miloapis.com/v1alpha1",
                               "kind": "IPPrefixClaim", "metadata": {"name": name},
                               "spec": {"prefixLength": 128,
                                        "parentRef": {"name": "fanout-root"}}}),
                    )
                    .await;
                    let rv: u64 = v["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    made.push((rv, name));
                }
                made
            })
        })
        .collect();
    let mut created = Vec::with_capacity(events);
    for c in creators {
        created.extend(c.await.unwrap());
    }
    created.sort();
    let create_time = started.elapsed();

    for (i, w) in watches.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(300), w)
            .await
            .unwrap_or_else(|_| panic!("watcher {i} did not see all {events} events"))
            .unwrap();
        assert_eq!(seen.len(), created.len(), "watcher {i}");
        if seen != created {
            let at = seen.iter().zip(&created).position(|(a, b)| a != b);
            panic!("watcher {i} diverges from the commit order at event {at:?}");
        }
    }
    eprintln!(
        "{watchers} watchers × {events} creates: creates took {create_time:?}, all delivered after {:?}",
        started.elapsed()
    );
}
