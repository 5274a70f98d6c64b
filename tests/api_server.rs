//! The generic API machinery against the real standalone binary: kubectl, kube-rs with the
//! crate's own types, bad input, restart.
mod common;

use common::TestServer;
use futures::{StreamExt, TryStreamExt};
use http::StatusCode;
use ipam_apiserver::api::IPPrefix;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::{json, Value};

const PREFIXES: &str = "/apis/ipam.miloapis.com/v1alpha1/ipprefixes";
/// What client-go's metadata client (kube-controller-manager's garbage collector, quota and
/// namespace controllers) sends.
const METADATA_PROTOBUF_FIRST: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

fn root(name: &str, prefix: &str) -> IPPrefix {
    IPPrefix::root(name, prefix.parse().expect("a CIDR"))
}

fn resource_version_of(obj: &IPPrefix) -> u64 {
    obj.metadata
        .resource_version
        .as_deref()
        .expect("resourceVersion")
        .parse()
        .expect("a number")
}

fn write_manifest(server: &TestServer, name: &str, text: &str) -> String {
    let path = server.data_dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn kubectl_lists_resources_explains_fields_and_prints_tables() {
    let server = TestServer::start();
    let resources = server.kubectl_ok(&["api-resources", "--api-group=ipam.miloapis.com"]);
    assert!(
        resources
            .lines()
            .any(|l| l.starts_with("ipprefixes") && l.contains("ipp ") && l.contains("false")),
        "{resources}"
    );
    assert!(
        resources
            .lines()
            .any(|l| l.starts_with("ipprefixclaims") && l.contains("ippc") && l.contains("true")),
        "{resources}"
    );
    let explain = server.kubectl_ok(&["explain", "ipprefixclaim.spec"]);
    assert!(
        explain.contains("prefixLength") && explain.contains("parentSelector"),
        "{explain}"
    );
    // A field's description, not followed by its type's in other words.
    let status = server.kubectl_ok(&["explain", "ipprefix.status"]);
    assert_eq!(
        status.matches("What the server computed").count(),
        1,
        "{status}"
    );

    let manifest = write_manifest(
        &server,
        "root.yaml",
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata:\n  name: platform-ula\n  labels: {ipam.miloapis.com/tier: platform}\nspec:\n  prefix: fd20::/20\n",
    );
    assert!(server
        .kubectl_ok(&["apply", "-f", &manifest])
        .contains("ipprefix.ipam.miloapis.com/platform-ula created"));
    let table = server.kubectl_ok(&["get", "ipp"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PREFIX",
            "PARENT",
            "PHASE",
            "CLAIM",
            "UTILIZATION",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        [
            "platform-ula",
            "fd20::/20",
            "<none>",
            "Available",
            "<none>",
            "0.00%"
        ]
    );
    let wide = server.kubectl_ok(&["get", "ipprefixes", "-o", "wide"]);
    assert!(
        wide.lines().next().unwrap().contains("LARGEST-FREE"),
        "{wide}"
    );
    assert!(wide.contains("/21"), "{wide}");
    let yaml = server.kubectl_ok(&["get", "ipp", "platform-ula", "-o", "yaml"]);
    assert!(
        yaml.contains("prefix: fd20::/20") && yaml.contains("ipFamily: IPv6"),
        "{yaml}"
    );
    // Category `ipam` covers both kinds.
    assert!(server.kubectl_ok(&["get", "ipam"]).contains("platform-ula"));
    assert!(server
        .kubectl_ok(&["delete", "ipp", "platform-ula"])
        .contains("deleted"));
    let after = server.kubectl(&["get", "ipp", "platform-ula"]);
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("not found"));
}

#[tokio::test]
async fn kube_rs_creates_gets_lists_and_a_stale_replace_conflicts() {
    let server = TestServer::start();
    let api: Api<IPPrefix> = Api::all(server.client().await);
    let created = api
        .create(&PostParams::default(), &root("a", "10.0.0.0/8"))
        .await
        .unwrap();
    let rv1 = resource_version_of(&created);
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.phase(), "Available");
    let got = api.get("a").await.unwrap();
    assert_eq!(got.spec.prefix, "10.0.0.0/8");
    api.create(&PostParams::default(), &root("b", "192.168.0.0/16"))
        .await
        .unwrap();
    let names: Vec<_> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["a", "b"]);

    let mut fresh = got.clone();
    fresh.spec.reclaim_policy = Some("Retain".into());
    let replaced = api
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    let rv2 = resource_version_of(&replaced);
    assert!(rv2 > rv1);
    assert_eq!(replaced.metadata.generation, Some(2));
    // `got` carries the old resourceVersion now.
    let err = api
        .replace("a", &PostParams::default(), &got)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains("the object has been modified"),
        "{}",
        status.message
    );
    let err = api
        .create(&PostParams::default(), &root("a", "10.0.0.0/8"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
}

#[tokio::test]
async fn kube_rs_watcher_receives_events() {
    let server = TestServer::start();
    let api: Api<IPPrefix> = Api::all(server.client().await);
    api.create(&PostParams::default(), &root("before", "10.0.0.0/16"))
        .await
        .unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let creator = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            api.create(&PostParams::default(), &root("after", "10.1.0.0/16"))
                .await
                .unwrap();
            api.delete("before", &Default::default()).await.unwrap();
        })
    };
    let mut seen_init = false;
    let (mut applied_after, mut deleted_before) = (false, false);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !(applied_after && deleted_before) {
        let ev = tokio::time::timeout_at(deadline, events.try_next())
            .await
            .expect("watch events in time")
            .unwrap()
            .unwrap();
        match ev {
            watcher::Event::InitApply(p) if p.metadata.name.as_deref() == Some("before") => {
                seen_init = true
            }
            watcher::Event::Apply(p) if p.metadata.name.as_deref() == Some("after") => {
                applied_after = true
            }
            watcher::Event::Delete(p) if p.metadata.name.as_deref() == Some("before") => {
                deleted_before = true
            }
            _ => {}
        }
    }
    creator.await.unwrap();
    assert!(
        seen_init,
        "the initial list must include the object made before the watch"
    );
}

/// Every event of a watch of IPPrefixes (`query` after `watch=true`) that ends by its
/// `timeoutSeconds`, as (type, object kind, object apiVersion, object name, spec.prefix); a
/// stream in protobuf (metadata only) is read with the crate's own message types.
async fn watch_events(
    server: &TestServer,
    query: &str,
    accept: &str,
) -> Vec<(String, String, String, String, Option<String>)> {
    let req = http::Request::builder()
        .uri(format!("{PREFIXES}?watch=true&{query}"))
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())
        .unwrap();
    let (code, headers, body) = server.send(req).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    if headers[http::header::CONTENT_TYPE] == "application/vnd.kubernetes.protobuf;stream=watch" {
        return common::protobuf::watch_events(&body)
            .into_iter()
            .map(|(event_type, object)| {
                let (api_version, kind, _) = common::protobuf::open_envelope(&object);
                let name = common::protobuf::partial_object_metadata(&object).name;
                (
                    event_type,
                    kind,
                    api_version,
                    name.unwrap_or_default(),
                    None,
                )
            })
            .collect();
    }
    assert_eq!(headers[http::header::CONTENT_TYPE], "application/json");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("one JSON event per line"))
        .map(|e| {
            let o = &e["object"];
            (
                text(&e["type"]),
                text(&o["kind"]),
                text(&o["apiVersion"]),
                text(&o["metadata"]["name"]),
                o["spec"]["prefix"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// A metadata informer (the garbage collector's, the quota controller's) watches with
/// `as=PartialObjectMetadata`, protobuf first: every event's object, bookmarks included, must be
/// one, or client-go cannot decode it, ends the watch and relists everything.
#[tokio::test]
async fn a_metadata_watch_gets_partial_object_metadata_in_every_event_including_bookmarks() {
    let server = TestServer::start();
    let api: Api<IPPrefix> = Api::all(server.client().await);
    api.create(&PostParams::default(), &root("watched", "10.0.0.0/16"))
        .await
        .unwrap();
    // (type, name) as a metadata watcher / a full-object watcher must see it.
    let event = |t: &str, kind: &str, api_version: &str, name: &str, prefix: Option<&str>| {
        let s = str::to_string;
        (s(t), s(kind), s(api_version), s(name), prefix.map(s))
    };
    let meta =
        |t: &str, name: &str| event(t, "PartialObjectMetadata", "meta.k8s.io/v1", name, None);
    let full = |t: &str, name: &str, prefix: Option<&str>| {
        event(t, "IPPrefix", "ipam.miloapis.com/v1alpha1", name, prefix)
    };
    let streaming =
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1";
    assert_eq!(
        watch_events(&server, streaming, METADATA_PROTOBUF_FIRST).await,
        vec![meta("ADDED", "watched"), meta("BOOKMARK", "")]
    );
    assert_eq!(
        watch_events(
            &server,
            streaming,
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
        )
        .await,
        vec![meta("ADDED", "watched"), meta("BOOKMARK", "")]
    );
    assert_eq!(
        watch_events(&server, streaming, "application/json").await,
        vec![
            full("ADDED", "watched", Some("10.0.0.0/16")),
            full("BOOKMARK", "", None)
        ]
    );

    // Live events are encoded once per representation and shared: watchers of each kind
    // running at once must each get their own representation of the same change.
    let metadata = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let live = "timeoutSeconds=2";
    let create = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        api.create(&PostParams::default(), &root("later", "10.1.0.0/16"))
            .await
            .unwrap();
    };
    let (m1, f1, m2, f2, p1, p2, ()) = tokio::join!(
        watch_events(&server, live, metadata),
        watch_events(&server, live, "application/json"),
        watch_events(&server, live, metadata),
        watch_events(&server, live, "application/json"),
        watch_events(&server, live, METADATA_PROTOBUF_FIRST),
        watch_events(&server, live, METADATA_PROTOBUF_FIRST),
        create
    );
    // Without a resourceVersion a watch starts with the existing objects, then the change.
    let meta_events = vec![meta("ADDED", "watched"), meta("ADDED", "later")];
    let full_events = vec![
        full("ADDED", "watched", Some("10.0.0.0/16")),
        full("ADDED", "later", Some("10.1.0.0/16")),
    ];
    assert_eq!((m1, m2), (meta_events.clone(), meta_events.clone()));
    assert_eq!((p1, p2), (meta_events.clone(), meta_events));
    assert_eq!((f1, f2), (full_events.clone(), full_events));
}

fn status_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not a Status: {}", String::from_utf8_lossy(body)))
}

async fn revision(server: &TestServer) -> String {
    let (code, _, body) = server.raw("GET", PREFIXES, None, Vec::new()).await;
    assert_eq!(code, StatusCode::OK);
    status_of(&body)["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn bad_input_gets_a_status_with_the_right_code_and_changes_nothing() {
    let server = TestServer::start();
    let (code, _, _) = server
        .raw(
            "POST",
            PREFIXES,
            Some("application/json"),
            serde_json::to_vec(&root("keep", "10.0.0.0/8")).unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let before = revision(&server).await;
    let valid = |extra: &str| {
        format!(
            r#"{{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefix","metadata":{{"name":"x"}},"spec":{{"prefix":"172.16.0.0/12"{extra}}}}}"#
        )
    };
    // (what, body, content type, code, reason, message excerpt)
    type Case<'a> = (&'a str, String, Option<&'a str>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            "{\"apiVersion\":".into(),
            Some("application/json"),
            400,
            "BadRequest",
            "not valid JSON",
        ),
        (
            "wrong apiVersion",
            valid("").replace("ipam.miloapis.com/v1alpha1", "v1"),
            Some("application/json"),
            400,
            "BadRequest",
            "does not match the expected API version",
        ),
        (
            "wrong kind",
            valid("").replace("\"IPPrefix\"", "\"ConfigMap\""),
            Some("application/json"),
            400,
            "BadRequest",
            "does not match the expected kind",
        ),
        (
            "unknown field, Strict",
            valid(",\"bogus\":1"),
            Some("application/json"),
            400,
            "BadRequest",
            "unknown field \"spec.bogus\"",
        ),
        (
            "bad name",
            valid("").replace("\"name\":\"x\"", "\"name\":\"Not_A_Name\""),
            Some("application/json"),
            422,
            "Invalid",
            "metadata.name",
        ),
        (
            "not canonical",
            valid("").replace("172.16.0.0/12", "172.16.0.1/12"),
            Some("application/json"),
            422,
            "Invalid",
            "172.16.0.0/12",
        ),
        (
            "required field left out",
            valid("").replace("\"prefix\":\"172.16.0.0/12\"", ""),
            Some("application/json"),
            422,
            "Invalid",
            "IPPrefix.ipam.miloapis.com \"x\" is invalid: spec.prefix: Required value",
        ),
        (
            "no spec",
            r#"{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefix","metadata":{"name":"x"}}"#.into(),
            Some("application/json"),
            422,
            "Invalid",
            "IPPrefix.ipam.miloapis.com \"x\" is invalid: spec: Required value",
        ),
        (
            "wrong type",
            valid("").replace("\"172.16.0.0/12\"", "42"),
            Some("application/json"),
            400,
            "BadRequest",
            "spec.prefix",
        ),
        (
            "unsupported media type",
            valid(""),
            Some("text/plain"),
            415,
            "UnsupportedMediaType",
            "unknown format",
        ),
        (
            "oversized body",
            format!("{{\"pad\":\"{}\"}}", "x".repeat(4 * 1024 * 1024)),
            Some("application/json"),
            413,
            "RequestEntityTooLarge",
            "larger than",
        ),
    ];
    for (what, body, ct, code, reason, needle) in cases {
        let path = if what.contains("Strict") {
            format!("{PREFIXES}?fieldValidation=Strict")
        } else {
            PREFIXES.to_string()
        };
        let (got, _, resp) = server.raw("POST", &path, ct, body.into_bytes()).await;
        let status = status_of(&resp);
        assert_eq!(got.as_u16(), code, "{what}: {status}");
        assert_eq!(status["kind"], "Status", "{what}");
        assert_eq!(status["reason"], reason, "{what}: {status}");
        assert!(
            status["message"].as_str().unwrap().contains(needle),
            "{what}: {status}"
        );
    }
    // Invalid input lists every bad field.
    let (got, _, resp) = server
        .raw(
            "POST",
            PREFIXES,
            Some("application/json"),
            valid(",\"exclude\":[\"nope\"],\"reserve\":{\"leading\":-1}")
                .replace("172.16.0.0/12", "bad")
                .into_bytes(),
        )
        .await;
    assert_eq!(got.as_u16(), 422);
    let fields: Vec<String> = status_of(&resp)["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        fields,
        ["spec.prefix", "spec.exclude[0]", "spec.reserve.leading"]
    );
    for (method, path, code) in [
        ("GET", "/apis/nope", 404),
        ("PUT", PREFIXES, 405),
        ("GET", &format!("{PREFIXES}/missing") as &str, 404),
    ] {
        let (got, _, resp) = server.raw(method, path, None, Vec::new()).await;
        assert_eq!(got.as_u16(), code, "{method} {path}");
        assert_eq!(status_of(&resp)["code"], code);
    }
    let req = http::Request::builder()
        .uri(PREFIXES)
        .header("Accept", "application/vnd.kubernetes.protobuf")
        .body(Vec::new())
        .unwrap();
    let (got, _, resp) = server.send(req).await;
    assert_eq!(got.as_u16(), 406);
    assert_eq!(status_of(&resp)["reason"], "NotAcceptable");
    // A patch that turns metadata (or the whole object) into something else is a 400, not a panic.
    for (ct, patch) in [
        ("application/merge-patch+json", r#"{"metadata":false}"#),
        (
            "application/json-patch+json",
            r#"[{"op":"replace","path":"","value":7}]"#,
        ),
    ] {
        let path = format!("{PREFIXES}/keep");
        let (got, _, resp) = server
            .raw("PATCH", &path, Some(ct), patch.as_bytes().to_vec())
            .await;
        assert_eq!(
            got.as_u16(),
            400,
            "{ct} {patch}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert_eq!(status_of(&resp)["kind"], "Status");
    }
    assert_eq!(
        revision(&server).await,
        before,
        "rejected requests must not write"
    );
}

#[tokio::test]
async fn lists_page_with_limit_and_continue_and_filter_by_selectors() {
    let server = TestServer::start();
    let api: Api<IPPrefix> = Api::all(server.client().await);
    for i in 0..5u8 {
        let mut p = root(&format!("p{i}"), &format!("10.{i}.0.0/16"));
        p.metadata.labels = Some(
            [(
                "parity".to_string(),
                if i % 2 == 0 { "even" } else { "odd" }.to_string(),
            )]
            .into(),
        );
        api.create(&PostParams::default(), &p).await.unwrap();
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = api.list(&params).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.into_iter().filter_map(|p| p.metadata.name));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    // The same first page as YAML, as `kubectl get --raw` with that Accept would show it.
    let req = http::Request::builder()
        .uri("/apis/ipam.miloapis.com/v1alpha1/ipprefixes?limit=2")
        .header(http::header::ACCEPT, "application/yaml")
        .body(Vec::new())
        .unwrap();
    let (code, headers, body) = server.send(req).await;
    assert_eq!(code, 200);
    assert_eq!(headers[http::header::CONTENT_TYPE], "application/yaml");
    let page: Value = serde_yaml::from_slice(&body).unwrap();
    assert_eq!(page["apiVersion"], "ipam.miloapis.com/v1alpha1");
    assert_eq!(page["kind"], "IPPrefixList");
    assert!(page["metadata"]["resourceVersion"].as_str().is_some());
    assert!(!page["metadata"]["continue"].as_str().unwrap().is_empty());
    let yaml_names: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (&p["metadata"]["name"], &p["spec"]["prefix"]))
        .collect();
    assert_eq!(
        yaml_names,
        [
            (&json!("p0"), &json!("10.0.0.0/16")),
            (&json!("p1"), &json!("10.1.0.0/16"))
        ]
    );
    let odd = api
        .list(&ListParams::default().labels("parity=odd"))
        .await
        .unwrap();
    assert_eq!(
        odd.items
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        ["p1", "p3"]
    );
    let one = api
        .list(&ListParams::default().fields("metadata.name=p2"))
        .await
        .unwrap();
    assert_eq!(
        one.items
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        ["p2"]
    );
    // Cluster-scoped objects have an empty namespace, as in Kubernetes.
    let all = api
        .list(&ListParams::default().fields("metadata.namespace="))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 5);
    let err = api
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!()
    };
    assert_eq!(status.code, 400);
    assert_eq!(
        status.message,
        "field label not supported: \"spec.bogus\"; supported fields: \"metadata.name\", \"metadata.namespace\", \"spec.parentRef.name\", \"spec.prefix\", \"spec.addressSpace\", \"status.phase\", \"spec.prefix.contains\""
    );
}

#[tokio::test]
async fn generate_name_makes_a_unique_name() {
    let server = TestServer::start();
    let api: Api<IPPrefix> = Api::all(server.client().await);
    let mut p = root("", "10.0.0.0/8");
    p.metadata.name = None;
    p.metadata.generate_name = Some("pool-".into());
    let made = api.create(&PostParams::default(), &p).await.unwrap();
    let name = made.metadata.name.unwrap();
    assert!(name.starts_with("pool-") && name.len() == 10, "{name}");
}

#[tokio::test]
async fn restart_keeps_every_object_and_resource_versions_keep_increasing() {
    let mut server = TestServer::start();
    let api: Api<IPPrefix> = Api::all(server.client().await);
    let a = api
        .create(&PostParams::default(), &root("a", "10.0.0.0/8"))
        .await
        .unwrap();
    let rv_a = resource_version_of(&a);
    server.restart();
    let api: Api<IPPrefix> = Api::all(server.client().await);
    let again = api.get("a").await.unwrap();
    assert_eq!(again.metadata.uid, a.metadata.uid);
    assert_eq!(again.metadata.resource_version, a.metadata.resource_version);
    let b = api
        .create(&PostParams::default(), &root("b", "11.0.0.0/8"))
        .await
        .unwrap();
    let rv_b = resource_version_of(&b);
    assert!(rv_b > rv_a, "{rv_b} after {rv_a}");
}
