//! Property test of the HTTP layer, in-process (`http::router` + `oneshot`): arbitrary request
//! bodies, CIDR strings, label and field selectors, patch documents (among them copies and moves
//! of the object into itself), query parameters, percent-encoded bytes that are not UTF-8 in
//! names and parameters, and `Accept`/`Content-Type` headers never cause a panic or a 5xx (but the documented 504 for a
//! resourceVersion ahead of the store), and a rejected request (or a
//! dry run) leaves the store exactly as it was (same revision).
//!
//! `HTTP_FUZZ_CASES` sets the number of generated requests (default 1000, a few seconds).
use axum::body::Body;
use http::{Request, StatusCode};
use ipam_apiserver::registry::Registry;
use ipam_apiserver::store::SledStore;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    accept: Option<String>,
    body: Vec<u8>,
}

fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u128>(), 0u8..=130)
            .prop_map(|(a, l)| format!("{}/{l}", std::net::Ipv6Addr::from(a))),
        (any::<u32>(), 0u8..=34).prop_map(|(a, l)| format!("{}/{l}", std::net::Ipv4Addr::from(a))),
        "fd00:f::[0-9a-f:]{0,8}/[0-9]{0,3}",
        "[0-9a-f:.]{0,24}(/[0-9-]{0,4})?",
        ".{0,24}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "apiVersion",
            "kind",
            "metadata",
            "name",
            "namespace",
            "generateName",
            "labels",
            "annotations",
            "finalizers",
            "resourceVersion",
            "uid",
            "ownerReferences",
            "deletionTimestamp",
            "spec",
            "status",
            "prefix",
            "prefixLength",
            "ipFamily",
            "parentRef",
            "parentSelector",
            "matchLabels",
            "matchExpressions",
            "exclude",
            "reserve",
            "leading",
            "trailing",
            "reclaimPolicy",
            "claimRef",
            "childPrefixTemplate",
            "managedFields",
        ])
        .prop_map(str::to_string),
        ".{0,12}",
    ]
}

fn json_any() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-300i64..300).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
        cidr().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("seed".to_string()),
        "[a-z0-9][a-z0-9.-]{0,20}",
        ".{0,20}",
        "[a-z]{300}",
    ]
}

/// A claim that is valid in places and broken in others.
fn claim_body() -> impl Strategy<Value = Value> {
    (
        name(),
        prop_oneof![(-5i64..140).prop_map(Value::from), json_any()],
        prop_oneof![Just(json!({"name": "fuzz-root"})), json_any()],
        prop::option::of(cidr()),
        prop::option::of(json_any()),
        prop::option::of(json_any()),
    )
        .prop_map(|(name, len, parent, prefix, labels, extra)| {
            let mut spec = json!({"prefixLength": len, "parentRef": parent});
            if let Some(p) = prefix {
                spec["prefix"] = Value::from(p);
            }
            if let Some(e) = extra {
                spec["childPrefixTemplate"] = e;
            }
            let mut meta = json!({"name": name});
            if let Some(l) = labels {
                meta["labels"] = l;
            }
            json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
                   "metadata": meta, "spec": spec})
        })
}

fn prefix_body() -> impl Strategy<Value = Value> {
    (
        name(),
        cidr(),
        prop::collection::vec(cidr(), 0..3),
        prop::option::of(json_any()),
        prop::option::of(prop_oneof![Just(json!({"name": "fuzz-root"})), json_any()]),
    )
        .prop_map(|(name, prefix, exclude, reserve, parent)| {
            let mut spec = json!({"prefix": prefix, "exclude": exclude});
            if let Some(r) = reserve {
                spec["reserve"] = r;
            }
            if let Some(p) = parent {
                spec["parentRef"] = p;
            }
            json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
                   "metadata": {"name": name}, "spec": spec})
        })
}

fn selector() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9./_-]{0,10}( ?(=|==|!=| in | notin |,|!)[a-z0-9(),. ]{0,10}){0,3}",
        "(metadata\\.name|metadata\\.namespace|spec\\.parentRef\\.name|status\\.phase|spec\\.prefixLength|spec\\.prefix|x)(=|==|!=)[a-z0-9-]{0,8}",
        ".{0,24}",
    ]
}

fn query() -> impl Strategy<Value = Vec<(String, String)>> {
    let param = prop_oneof![
        selector().prop_map(|v| ("labelSelector".to_string(), v)),
        selector().prop_map(|v| ("fieldSelector".to_string(), v)),
        (
            prop::sample::select(vec![
                "limit",
                "continue",
                "resourceVersion",
                "resourceVersionMatch",
                "timeoutSeconds",
                "dryRun",
                "fieldManager",
                "fieldValidation",
                "force",
                "propagationPolicy",
                "gracePeriodSeconds",
                "orphanDependents",
                "includeObject",
                "pretty",
                "allowWatchBookmarks",
                "sendInitialEvents",
            ]),
            prop_oneof![
                Just("All".to_string()),
                Just("Strict".to_string()),
                Just("true".to_string()),
                "-?[0-9]{1,20}",
                ".{0,16}",
            ]
        )
            .prop_map(|(k, v)| (k.to_string(), v)),
        (".{0,8}", ".{0,8}"),
    ];
    prop::collection::vec(param, 0..4)
}

/// Bytes as `%XX` escapes: path segments and query values that need not be UTF-8 once decoded.
fn pct_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// JSON patches that copy and move parts of the object into themselves (nested,
/// self-referential paths): each such copy may double the object, the shape of a patch bomb.
fn self_referential_patch() -> impl Strategy<Value = (String, Vec<u8>)> {
    let from = prop::sample::select(vec![
        "",
        "/metadata",
        "/metadata/annotations",
        "/metadata/annotations/a",
        "/metadata/labels",
        "/spec",
        "/spec/parentRef",
        "/status",
    ]);
    let tail = prop::sample::select(vec!["", "/a", "/b", "/c/d", "/-", "/0"]);
    let op = (
        prop::sample::select(vec!["copy", "copy", "copy", "move"]),
        from,
        tail,
        prop::bool::ANY,
    )
        .prop_map(|(op, from, tail, nested)| {
            // Into the source itself (nested) or next to it, under the annotations.
            let path = if nested {
                format!("{from}{tail}")
            } else {
                format!("/metadata/annotations{tail}")
            };
            json!({"op": op, "from": from, "path": path})
        });
    prop::collection::vec(op, 1..40).prop_map(|ops| {
        let mut all = vec![json!({"op": "add", "path": "/metadata/annotations",
                                  "value": {"a": "x".repeat(32)}})];
        all.extend(ops);
        (
            "application/json-patch+json".to_string(),
            Value::Array(all).to_string().into_bytes(),
        )
    })
}

fn patch_body() -> impl Strategy<Value = (String, Vec<u8>)> {
    let op = (
        prop::sample::select(vec!["add", "remove", "replace", "move", "copy", "test", "x"]),
        prop_oneof![
            "(/(metadata|spec|status|labels|name|prefixLength|parentRef|finalizers|-|0|[a-z~01]{0,6})){0,4}",
            ".{0,12}"
        ],
        json_any(),
    )
        .prop_map(|(op, path, value)| json!({"op": op, "path": path, "from": path, "value": value}));
    prop_oneof![
        prop::collection::vec(op, 0..4).prop_map(|ops| (
            "application/json-patch+json".to_string(),
            Value::Array(ops).to_string().into_bytes()
        )),
        json_any().prop_map(|v| (
            "application/merge-patch+json".to_string(),
            v.to_string().into_bytes()
        )),
        json_any().prop_map(|v| (
            "application/strategic-merge-patch+json".to_string(),
            v.to_string().into_bytes()
        )),
        claim_body().prop_map(|v| (
            "application/apply-patch+yaml".to_string(),
            serde_yaml::to_string(&v).unwrap_or_default().into_bytes()
        )),
        (".{0,40}", ".{0,30}").prop_map(|(ct, b)| (ct, b.into_bytes())),
    ]
}

fn body_bytes(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => v.prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => ".{0,64}".prop_map(String::into_bytes),
    ]
}

fn accept() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("application/json".to_string()),
        Just("application/json;as=Table;g=meta.k8s.io;v=v1".to_string()),
        Just("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1".to_string()),
        Just("application/yaml".to_string()),
        Just("application/vnd.kubernetes.protobuf".to_string()),
        ".{0,30}",
    ])
}

fn request() -> impl Strategy<Value = Req> {
    let claims = format!("{GV}/namespaces/fz/ipprefixclaims");
    let prefixes = format!("{GV}/ipprefixes");
    let (c6, p5) = (format!("{claims}/seed"), format!("{prefixes}/fuzz-root"));
    let (c1, c2, c3, c4, c5) = (
        claims.clone(),
        claims.clone(),
        claims.clone(),
        claims.clone(),
        claims,
    );
    let (p1, p2, p3, p4) = (
        prefixes.clone(),
        prefixes.clone(),
        prefixes.clone(),
        prefixes,
    );
    prop_oneof![
        (body_bytes(claim_body()), query(), accept()).prop_map(move |(body, query, accept)| Req {
            method: "POST",
            path: c1.clone(),
            query,
            content_type: Some("application/json".into()),
            accept,
            body,
        }),
        (body_bytes(prefix_body()), query(), accept()).prop_map(move |(body, query, accept)| Req {
            method: "POST",
            path: p1.clone(),
            query,
            content_type: Some("application/json".into()),
            accept,
            body,
        }),
        (query(), accept(), prop::bool::ANY).prop_map(move |(query, accept, claims)| Req {
            method: "GET",
            path: if claims { c2.clone() } else { p2.clone() },
            query,
            content_type: None,
            accept,
            body: Vec::new(),
        }),
        (name(), patch_body(), query(), prop::bool::ANY).prop_map(
            move |(name, (ct, body), query, status)| Req {
                method: "PATCH",
                path: format!(
                    "{c3}/{}{}",
                    pct_encode(&name),
                    if status { "/status" } else { "" }
                ),
                query,
                content_type: Some(ct),
                accept: None,
                body,
            }
        ),
        (claim_body(), query(), prop::bool::ANY).prop_map(move |(body, query, status)| Req {
            method: "PUT",
            // The URL names the object the body names, so updates get past the name check.
            path: format!(
                "{c4}/{}{}",
                pct_encode(body["metadata"]["name"].as_str().unwrap_or("seed")),
                if status { "/status" } else { "" }
            ),
            query,
            content_type: Some("application/json".into()),
            accept: None,
            body: body.to_string().into_bytes(),
        }),
        (name(), body_bytes(json_any()), query(), prop::bool::ANY).prop_map(
            move |(name, body, query, claim)| Req {
                method: "DELETE",
                path: if claim {
                    format!("{c5}/{}", pct_encode(&name))
                } else {
                    format!("{p3}/{}", pct_encode(&name))
                },
                query,
                content_type: Some("application/json".into()),
                accept: None,
                body,
            }
        ),
        // Copies and moves of the seed claim or the root into themselves.
        (self_referential_patch(), prop::bool::ANY, prop::bool::ANY).prop_map(
            move |((ct, body), claim, status)| Req {
                method: "PATCH",
                path: format!(
                    "{}{}",
                    if claim { &c6 } else { &p5 },
                    if status { "/status" } else { "" }
                ),
                query: Vec::new(),
                content_type: Some(ct),
                accept: None,
                body,
            }
        ),
        // Names, namespaces and query values that are not UTF-8 once percent-decoded.
        (
            prop::collection::vec(any::<u8>(), 1..6),
            prop::sample::select(vec!["name", "namespace", "query"]),
            accept(),
        )
            .prop_map(move |(bytes, place, accept)| Req {
                method: "GET",
                path: match place {
                    "name" => format!("{p4}/{}", pct_bytes(&bytes)),
                    "namespace" =>
                        format!("{GV}/namespaces/{}/ipprefixclaims/seed", pct_bytes(&bytes)),
                    _ => format!("{p4}?labelSelector={}", pct_bytes(&bytes)),
                },
                query: Vec::new(),
                content_type: None,
                accept,
                body: Vec::new(),
            }),
    ]
}

async fn send(app: &axum::Router, r: &Req) -> (StatusCode, Vec<u8>) {
    let mut uri = r.path.clone();
    if !r.query.is_empty() {
        uri.push('?');
        let q: Vec<String> = r
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", pct_encode(k), pct_encode(v)))
            .collect();
        uri.push_str(&q.join("&"));
    }
    let mut b = Request::builder().method(r.method).uri(&uri);
    if let Some(ct) = &r.content_type {
        if let Ok(v) = http::HeaderValue::from_str(ct) {
            b = b.header(http::header::CONTENT_TYPE, v);
        }
    }
    if let Some(a) = &r.accept {
        if let Ok(v) = http::HeaderValue::from_str(a) {
            b = b.header(http::header::ACCEPT, v);
        }
    }
    let req = b.body(Body::from(r.body.clone())).expect("request builds");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap_or_default();
    (status, body.to_vec())
}

/// The root every claim allocates from, and the claim `seed` that PATCH/PUT/DELETE target.
fn setup_requests() -> Vec<Req> {
    let root = json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefix",
        "metadata": {"name": "fuzz-root", "labels": {"tier": "fuzz"}},
        "spec": {"prefix": "fd00:f::/64", "exclude": ["fd00:f::/126"]}});
    let seed = json!({"apiVersion": "ipam.miloapis.com/v1alpha1", "kind": "IPPrefixClaim",
        "metadata": {"name": "seed"},
        "spec": {"prefixLength": 120, "parentRef": {"name": "fuzz-root"}}});
    [
        (format!("{GV}/ipprefixes"), root),
        (format!("{GV}/namespaces/fz/ipprefixclaims"), seed),
    ]
    .into_iter()
    .map(|(path, body)| Req {
        method: "POST",
        path,
        query: Vec::new(),
        content_type: Some("application/json".into()),
        accept: None,
        body: body.to_string().into_bytes(),
    })
    .collect()
}

#[test]
fn arbitrary_requests_never_fail_the_server_nor_change_the_store_when_rejected() {
    let cases: u32 = std::env::var("HTTP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = SledStore::open(dir.path(), 100_000).unwrap();
    let registry = rt
        .block_on(Registry::new(std::sync::Arc::new(store)))
        .unwrap();
    let store = registry.store().clone();
    let app = ipam_apiserver::http::router(registry);
    rt.block_on(async {
        for req in setup_requests() {
            let (status, body) = send(&app, &req).await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    });

    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<(String, u16), u32>::new());
    let seed = setup_requests().pop().expect("seed request");
    let result = runner.run(&request(), |r| {
        // Keep an object for PATCH/PUT/DELETE to hit: a case may have deleted it.
        rt.block_on(async {
            let get = Req {
                method: "GET",
                path: format!("{GV}/namespaces/fz/ipprefixclaims/seed"),
                ..seed.clone()
            };
            if send(&app, &get).await.0 == StatusCode::NOT_FOUND {
                send(&app, &seed).await;
            }
        });
        let before = store.revision();
        let (status, body) = rt.block_on(send(&app, &r));
        *seen
            .lock()
            .unwrap()
            .entry((r.method.to_string(), status.as_u16()))
            .or_default() += 1;
        let text = String::from_utf8_lossy(&body);
        // The one 5xx a request may earn: a list at a resourceVersion the store has not reached
        // is answered 504 Timeout at once, as kube-apiserver answers "Too large resource version".
        let future_version = status == StatusCode::GATEWAY_TIMEOUT
            && r.query.iter().any(|(k, _)| k == "resourceVersion")
            && text.contains("Too large resource version");
        if status.is_server_error() && !future_version {
            return Err(TestCaseError::fail(format!("{status} for {r:?}: {text}")));
        }
        let dry_run = r.query.iter().any(|(k, v)| k == "dryRun" && v == "All");
        if (status.is_client_error() || (dry_run && status.is_success()))
            && store.revision() != before
        {
            return Err(TestCaseError::fail(format!(
                "{status} (dry run: {dry_run}) changed the store ({before} → {}) for {r:?}: {text}",
                store.revision()
            )));
        }
        // A response is never larger than the largest object, whatever the request made.
        if body.len() > 4 * 1024 * 1024 {
            return Err(TestCaseError::fail(format!(
                "{status} with a {} byte body for {r:?}",
                body.len()
            )));
        }
        if status.is_client_error() || future_version {
            let v: Value = serde_json::from_slice(&body).map_err(|e| {
                TestCaseError::fail(format!("{status} without a Status body ({e}): {text}"))
            })?;
            if v["kind"] != "Status" || v["code"] != status.as_u16() {
                return Err(TestCaseError::fail(format!("{status} with body {text}")));
            }
        }
        Ok(())
    });
    eprintln!("(method, status) → count: {:?}", seen.lock().unwrap());
    if let Err(e) = result {
        panic!("{e}");
    }
}
