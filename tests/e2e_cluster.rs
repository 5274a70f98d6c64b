//! End to end through a real kube-apiserver and kube-controller-manager (envtest): the
//! aggregation layer, delegated authentication and authorization, `use` on parents, the
//! front-proxy headers that only the front proxy may send, garbage collection and namespace
//! deletion.
//!
//! One control plane is shared by every case (starting one costs several seconds); the cases
//! run in order inside one `#[test]`, each on its own root prefix and namespace, and each named
//! for the behaviour it checks. Without `KUBEBUILDER_ASSETS` the test prints why it was skipped
//! and returns.
mod common;
#[path = "common/envtest.rs"]
mod envtest;

use envtest::{Envtest, Storage};
use http::StatusCode;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

type Case = (&'static str, fn(&Envtest));

#[test]
fn cluster_e2e() {
    let t0 = Instant::now();
    let Some(env) = Envtest::start("cluster_e2e") else {
        return;
    };
    eprintln!(
        "control plane and APIService Available in {:.1?}",
        t0.elapsed()
    );
    let cases: &[Case] = &[
        (
            "kubectl_works_through_the_aggregation_layer",
            kubectl_works_through_the_aggregation_layer,
        ),
        (
            "claim_needs_use_on_its_parent_and_users_without_rights_cannot_list",
            claim_needs_use_on_its_parent_and_users_without_rights_cannot_list,
        ),
        (
            "remote_user_headers_are_ignored_unless_sent_by_the_front_proxy",
            remote_user_headers_are_ignored_unless_sent_by_the_front_proxy,
        ),
        (
            "garbage_collector_deletes_a_claim_owned_by_a_configmap",
            garbage_collector_deletes_a_claim_owned_by_a_configmap,
        ),
        (
            "metadata_in_protobuf_reads_like_kubernetes_own",
            metadata_in_protobuf_reads_like_kubernetes_own,
        ),
        (
            "deleting_a_namespace_releases_nested_claims",
            deleting_a_namespace_releases_nested_claims,
        ),
        (
            "every_claim_that_goes_gets_a_released_event",
            every_claim_that_goes_gets_a_released_event,
        ),
        (
            "a_retention_that_ends_gets_a_retention_expired_event",
            a_retention_that_ends_gets_a_retention_expired_event,
        ),
        (
            "deploy_kustomization_is_accepted_by_kube_apiserver",
            deploy_kustomization_is_accepted_by_kube_apiserver,
        ),
        (
            "the_audit_log_names_the_end_user_and_every_block_a_namespace_deletion_freed",
            the_audit_log_names_the_end_user_and_every_block_a_namespace_deletion_freed,
        ),
    ];
    run(&env, cases);
    eprintln!("cluster_e2e: everything in {:.1?}", t0.elapsed());
}

/// The cases that most depend on the store, with our server's data in the etcd that
/// kube-apiserver itself uses (keys side by side under `/registry`, as an HA deployment may
/// run it), on two replicas, kube-apiserver reaching the one that does not lead: the
/// aggregation layer, garbage collection and namespace deletion, and creates handed to the
/// leader.
#[test]
fn cluster_e2e_on_etcd() {
    let t0 = Instant::now();
    let Some(env) = Envtest::start_with("cluster_e2e_on_etcd", Storage::SharedEtcd) else {
        return;
    };
    let cases: &[Case] = &[
        (
            "kubectl_works_through_the_aggregation_layer",
            kubectl_works_through_the_aggregation_layer,
        ),
        (
            "garbage_collector_deletes_a_claim_owned_by_a_configmap",
            garbage_collector_deletes_a_claim_owned_by_a_configmap,
        ),
        (
            "deleting_a_namespace_releases_nested_claims",
            deleting_a_namespace_releases_nested_claims,
        ),
        (
            "creates_through_a_follower_are_decided_by_the_leader_with_the_callers_rights",
            creates_through_a_follower_are_decided_by_the_leader_with_the_callers_rights,
        ),
    ];
    run(&env, cases);
    // The objects really are in that etcd, beside kube-apiserver's.
    let keys = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let etcd = etcd_client::Client::connect([env.etcd_url.as_str()], None)
            .await
            .expect("connect to etcd");
        let count = |prefix: &'static str| {
            let opts = etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only();
            let mut etcd = etcd.clone();
            async move { etcd.get(prefix, Some(opts)).await.unwrap().count() }
        };
        let ours = count("/registry/ipam.miloapis.com/ipprefixes/").await;
        let theirs = count("/registry/namespaces/").await;
        (ours, theirs)
    });
    assert!(
        keys.0 > 0 && keys.1 > 0,
        "IPPrefixes and namespaces in etcd: {keys:?}"
    );
    eprintln!("cluster_e2e_on_etcd: everything in {:.1?}", t0.elapsed());
}

fn run(env: &Envtest, cases: &[Case]) {
    for (name, case) in cases {
        let t = Instant::now();
        eprintln!("--- {name}");
        case(env);
        eprintln!("--- {name}: ok in {:.1?}", t.elapsed());
    }
}

fn root(name: &str, prefix: &str) -> String {
    format!(
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata: {{name: {name}}}\nspec: {{prefix: \"{prefix}\"}}\n"
    )
}

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

fn claim(ns: &str, name: &str, parent: &str, len: u8) -> String {
    format!(
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefixClaim\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{prefixLength: {len}, parentRef: {{name: {parent}}}}}\n"
    )
}

/// `claim` with `reclaimPolicy: Retain`.
fn retain(claim: String) -> String {
    claim.replace("spec: {", "spec: {reclaimPolicy: Retain, ")
}

fn json(env: &Envtest, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&env.kubectl_ok(&all)).expect("kubectl -o json")
}

/// Wait until `prefix`'s status counts `expected` addresses allocated (the server writes a
/// parent's status right after its children change).
fn wait_allocated(env: &Envtest, prefix: &str, expected: impl Fn(&str) -> bool) {
    env.wait_for(
        &format!("ipprefix {prefix}'s status.capacity.allocated"),
        || expected(&allocated(env, prefix)),
    );
}

fn allocated(env: &Envtest, prefix: &str) -> String {
    json(env, &["get", "ipprefix", prefix])["status"]["capacity"]["allocated"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn kubectl_works_through_the_aggregation_layer(env: &Envtest) {
    let out = env.kubectl_ok(&["api-resources", "--api-group", "ipam.miloapis.com"]);
    assert!(
        out.contains("ipprefixes") && out.contains("ipprefixclaims"),
        "{out}"
    );
    assert!(out.contains("ippc") && out.contains("ipp "), "{out}");

    // apply, twice (the second is a patch through the aggregator).
    let root_a = root("root-a", "fd10::/16");
    env.apply(&root_a);
    let again = env.apply(&root_a);
    assert!(
        again.contains("unchanged") || again.contains("configured"),
        "{again}"
    );
    env.apply(&namespace("team-a"));

    // kubectl create is the allocation.
    let path = env.dir.path().join("web-0.yaml");
    std::fs::write(&path, claim("team-a", "web-0", "root-a", 64)).expect("write claim");
    let created = env.kubectl_ok(&["create", "-f", &path.display().to_string()]);
    assert!(created.contains("created"), "{created}");
    let c = json(env, &["get", "ippc", "web-0", "-n", "team-a"]);
    assert_eq!(c["status"]["prefix"], "fd10::/64", "{c}");

    let table = env.kubectl_ok(&["get", "ippc", "-n", "team-a"]);
    assert!(
        table.contains("PREFIX") && table.contains("fd10::/64"),
        "{table}"
    );
    let wide = env.kubectl_ok(&["get", "ipprefixes", "-o", "wide"]);
    assert!(
        wide.contains("FAMILY") && wide.contains("LARGEST-FREE") && wide.contains("team-a.web-0"),
        "{wide}"
    );

    // Events are written in the background; describe shows them.
    env.wait_for("the Allocated event in kubectl describe", || {
        let d = env.kubectl_ok(&["describe", "ippc", "web-0", "-n", "team-a"]);
        d.contains("Allocated") && d.contains("fd10::/64")
    });

    // get -w sees a claim made after it started.
    let mut watch = env
        .kubectl_cmd(
            &env.kubeconfig,
            &["get", "ippc", "-n", "team-a", "-w", "--no-headers"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("initial list line");
    assert!(first.contains("web-0"), "{first}");
    env.apply(&claim("team-a", "web-1", "root-a", 64));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(line);
            if seen
                .iter()
                .any(|l| l.contains("web-1") && l.contains("fd10:0:0:1::/64"))
            {
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("web-1") && l.contains("fd10:0:0:1::/64")),
        "watch lines: {seen:?}"
    );

    // delete releases.
    env.kubectl_ok(&["delete", "ippc", "web-0", "web-1", "-n", "team-a"]);
    wait_allocated(env, "root-a", |a| a == "0");
}

fn claim_needs_use_on_its_parent_and_users_without_rights_cannot_list(env: &Envtest) {
    env.apply(&root("root-b", "fd20::/16"));
    env.apply(&namespace("team-b"));
    env.apply(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: claimer, namespace: team-b}
rules:
- apiGroups: [ipam.miloapis.com]
  resources: [ipprefixclaims]
  verbs: [create, get, list, watch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: claimers, namespace: team-b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: claimer}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: use-root-b}
rules:
- apiGroups: [ipam.miloapis.com]
  resources: [ipprefixes]
  resourceNames: [root-b]
  verbs: [use]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bob-uses-root-b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: use-root-b}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}
"#,
    );
    let alice = env.user_kubeconfig("alice");
    let bob = env.user_kubeconfig("bob");
    let nobody = env.user_kubeconfig("nobody");
    let path = env.dir.path().join("rbac-claim.yaml");

    // alice may create claims but not use root-b: 403 naming the parent.
    std::fs::write(&path, claim("team-b", "alices", "root-b", 64)).expect("write");
    let out = env.kubectl_as(&alice, &["create", "-f", &path.display().to_string()]);
    assert!(!out.status.success(), "alice's claim was created");
    let err = stderr_of(&out);
    assert!(err.contains("Forbidden") && err.contains("root-b"), "{err}");
    assert!(
        env.kubectl(&["get", "ippc", "alices", "-n", "team-b"])
            .status
            .code()
            != Some(0),
        "a forbidden claim must not exist"
    );

    // bob has `use` on root-b.
    std::fs::write(&path, claim("team-b", "bobs", "root-b", 64)).expect("write");
    let out = env.kubectl_as(&bob, &["create", "-f", &path.display().to_string()]);
    env.assert_ok(&["create (as bob)"], &out);
    let c = json(env, &["get", "ippc", "bobs", "-n", "team-b"]);
    assert_eq!(c["status"]["prefix"], "fd20::/64", "{c}");

    // nobody has no rights at all.
    let out = env.kubectl_as(&nobody, &["get", "ippc", "-n", "team-b"]);
    assert!(!out.status.success(), "nobody could list claims");
    let err = stderr_of(&out);
    assert!(
        err.contains("Forbidden") && err.contains("\"nobody\"") && err.contains("cannot list"),
        "{err}"
    );
}

fn remote_user_headers_are_ignored_unless_sent_by_the_front_proxy(env: &Envtest) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let spoof = |path: &str| {
            http::Request::builder()
                .method("GET")
                .uri(path)
                .header("X-Remote-User", "admin")
                .header("X-Remote-Group", "system:masters")
                .body(Vec::new())
                .expect("request")
        };
        let path = "/apis/ipam.miloapis.com/v1alpha1/ipprefixes";

        // A client certificate from the cluster CA straight to our port: its own CN, not admin.
        let mallory = common::kube_config_from(&env.direct_kubeconfig(Some("mallory"))).await;
        let (status, _, body) = common::send_with(mallory, spoof(path)).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("User \\\"mallory\\\""), "{body}");

        // No certificate at all: 401, header or not.
        let anonymous = common::kube_config_from(&env.direct_kubeconfig(None)).await;
        let (status, _, body) = common::send_with(anonymous.clone(), spoof(path)).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_slice(&body).expect("Status body");
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["reason"], "Unauthorized");

        // A bearer token is reviewed by the cluster (TokenReview): a service account token.
        env.apply(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: probe, namespace: team-b}\n",
        );
        let token = env.kubectl_ok(&["create", "token", "probe", "-n", "team-b"]);
        let mut bearer = common::kube_config_from(&env.direct_kubeconfig(None)).await;
        bearer.auth_info.token = Some(token.trim().to_string().into());
        let (status, _, body) = common::send_with(bearer, spoof(path)).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body.contains("system:serviceaccount:team-b:probe"),
            "{body}"
        );

        // Health needs nothing.
        let (status, _, _) = common::send_with(
            anonymous,
            common::request("GET", "/readyz", None, Vec::new()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    });
}

fn garbage_collector_deletes_a_claim_owned_by_a_configmap(env: &Envtest) {
    env.apply(&root("root-c", "fd30::/16"));
    env.apply(&namespace("team-c"));
    env.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owner, namespace: team-c}\n");
    let uid = json(env, &["get", "configmap", "owner", "-n", "team-c"])["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    env.apply(&format!(
        r#"apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata:
  name: owned
  namespace: team-c
  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: owner, uid: "{uid}"}}]
spec: {{prefixLength: 48, parentRef: {{name: root-c}}}}
"#
    ));
    wait_allocated(env, "root-c", |a| a != "0");

    env.kubectl_ok(&["delete", "configmap", "owner", "-n", "team-c"]);
    env.wait_for("the garbage collector to delete the owned claim", || {
        let out = env.kubectl(&["get", "ippc", "owned", "-n", "team-c"]);
        !out.status.success() && stderr_of(&out).contains("NotFound")
    });
    wait_allocated(env, "root-c", |a| a == "0");
    // The block is free again: the next claim gets the same one.
    env.apply(&claim("team-c", "again", "root-c", 48));
    let c = json(env, &["get", "ippc", "again", "-n", "team-c"]);
    assert_eq!(c["status"]["prefix"], "fd30::/48", "{c}");
}

/// kube-controller-manager's metadata informers ask for protobuf first. The garbage collector
/// case above shows it decodes ours; this one reads kube-apiserver's own encoding of a
/// ConfigMap and ours of a claim (through the aggregation layer) with the crate's message
/// types, and checks both against the same objects' JSON: same field numbers, same values.
fn metadata_in_protobuf_reads_like_kubernetes_own(env: &Envtest) {
    env.apply(&root("root-p", "fd35::/16"));
    env.apply(&namespace("team-p"));
    env.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: team-p, labels: {app: web}, annotations: {note: x}}\ndata: {k: v}\n");
    env.apply(
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefixClaim\nmetadata: {name: pb, namespace: team-p, labels: {app: web}, annotations: {note: x}}\nspec: {prefixLength: 48, parentRef: {name: root-p}}\n",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (path, kubectl) in [
        (
            "/api/v1/namespaces/team-p/configmaps/cm",
            ["configmap", "cm"],
        ),
        (
            "/apis/ipam.miloapis.com/v1alpha1/namespaces/team-p/ipprefixclaims/pb",
            ["ippc", "pb"],
        ),
    ] {
        let req = http::Request::builder()
            .uri(path)
            .header(
                http::header::ACCEPT,
                "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json",
            )
            .body(Vec::new())
            .expect("request");
        let (status, headers, body) = rt.block_on(async {
            common::send_with(common::kube_config_from(&env.kubeconfig).await, req).await
        });
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(
            headers[http::header::CONTENT_TYPE],
            "application/vnd.kubernetes.protobuf",
            "{path}"
        );
        let m = common::protobuf::partial_object_metadata(&body);
        let j = &json(
            env,
            &[
                "get",
                kubectl[0],
                kubectl[1],
                "-n",
                "team-p",
                "--show-managed-fields",
            ],
        )["metadata"];
        let text = |v: &Value| v.as_str().map(str::to_string);
        assert_eq!(m.name, text(&j["name"]), "{path}");
        assert_eq!(m.namespace, text(&j["namespace"]), "{path}");
        assert_eq!(m.uid, text(&j["uid"]), "{path}");
        assert_eq!(m.resource_version, text(&j["resourceVersion"]), "{path}");
        assert_eq!(m.labels["app"], "web", "{path}");
        assert_eq!(m.annotations["note"], "x", "{path}");
        let created: jiff::Timestamp = j["creationTimestamp"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            m.creation_timestamp.and_then(|t| t.seconds),
            Some(created.as_second()),
            "{path}"
        );
        let entry = &m.managed_fields[0];
        let json_entry = &j["managedFields"][0];
        assert_eq!(entry.manager, text(&json_entry["manager"]), "{path}");
        assert_eq!(entry.operation, text(&json_entry["operation"]), "{path}");
        let fields: Value = serde_json::from_slice(
            entry
                .fields_v1
                .as_ref()
                .and_then(|f| f.raw.as_deref())
                .unwrap(),
        )
        .expect("fieldsV1 is JSON");
        assert_eq!(fields, json_entry["fieldsV1"], "{path}");
    }
}

fn deleting_a_namespace_releases_nested_claims(env: &Envtest) {
    env.apply(&root("root-d", "fd40::/16"));
    env.apply(&namespace("team-d"));
    env.apply(&claim("team-d", "pool", "root-d", 48));
    for i in 0..3 {
        env.apply(&claim("team-d", &format!("subnet-{i}"), "team-d.pool", 64));
    }
    // A Retain host: once its claim goes, its Released block is freed with the subnet.
    env.apply(&retain(claim("team-d", "nic", "team-d.subnet-0", 128)));
    let subnets = json(env, &["get", "ippc", "-n", "team-d"]);
    assert_eq!(
        subnets["items"].as_array().map(Vec::len),
        Some(5),
        "{subnets}"
    );

    env.kubectl_ok(&["delete", "namespace", "team-d", "--wait=false"]);
    env.wait_for("namespace team-d to be gone", || {
        let out = env.kubectl(&["get", "namespace", "team-d"]);
        !out.status.success() && stderr_of(&out).contains("NotFound")
    });
    wait_allocated(env, "root-d", |a| a == "0");
    let left = env.kubectl_ok(&["get", "ipprefixes", "-o", "name"]);
    assert!(!left.contains("team-d."), "{left}");

    // Creating in a namespace that does not exist is refused as NamespaceLifecycle does.
    let path = env.dir.path().join("no-ns.yaml");
    std::fs::write(&path, claim("no-such-ns", "x", "root-d", 64)).expect("write");
    let out = env.kubectl(&["create", "-f", &path.display().to_string()]);
    assert!(
        !out.status.success(),
        "claim created in a missing namespace"
    );
    assert!(stderr_of(&out).contains("not found"), "{}", stderr_of(&out));
}

/// A claim can go by a DELETE, by the release of its last child (the `prefix-in-use`
/// finalizer) and by a deletecollection (what namespace deletion sends); each gets its Released
/// event with the prefix it held.
fn every_claim_that_goes_gets_a_released_event(env: &Envtest) {
    env.apply(&root("root-e", "fd50::/16"));
    env.apply(&namespace("team-e"));
    env.apply(&claim("team-e", "pool", "root-e", 48));
    env.apply(&claim("team-e", "subnet", "team-e.pool", 64));
    env.apply(&retain(claim("team-e", "nic", "team-e.subnet", 128)));
    env.apply(&claim("team-e", "solo", "root-e", 48));
    env.apply(&claim("team-e", "bulk", "root-e", 48));

    // The pool waits for its subnet, the subnet for its Bound host; once the host goes
    // (Retain: its block stays Released), the subnet, its Released host block and the pool
    // are released in one commit.
    env.kubectl_ok(&[
        "delete",
        "ippc",
        "pool",
        "subnet",
        "-n",
        "team-e",
        "--wait=false",
    ]);
    env.kubectl_ok(&["delete", "ippc", "nic", "-n", "team-e"]);
    env.kubectl_ok(&["delete", "ippc", "solo", "-n", "team-e"]);
    // DELETE on the collection: a deletecollection, as the namespace controller sends.
    env.kubectl_ok(&[
        "delete",
        "--raw",
        "/apis/ipam.miloapis.com/v1alpha1/namespaces/team-e/ipprefixclaims",
    ]);
    let left = env.kubectl_ok(&["get", "ippc", "-n", "team-e", "-o", "name"]);
    assert!(left.trim().is_empty(), "claims left: {left}");

    let expected = [
        ("pool", "fd50::/48"),
        ("subnet", "fd50::/64"),
        ("nic", "fd50::/128"),
        ("solo", "fd50:0:1::/48"),
        ("bulk", "fd50:0:2::/48"),
    ];
    let released = || -> Vec<(String, String)> {
        json(env, &["get", "events", "-n", "team-e"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == "Released")
            .map(|e| {
                (
                    e["involvedObject"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    env.wait_for("a Released event for each of the four claims", || {
        expected
            .iter()
            .all(|(name, _)| released().iter().any(|(n, _)| n == name))
    });
    for (name, prefix) in expected {
        let events = released();
        let (_, message) = events
            .iter()
            .find(|(n, _)| n == name)
            .expect("released event");
        assert!(
            message.contains(&format!("released {prefix}")),
            "{name}: {message}"
        );
    }
    env.wait_for("a RetainedPrefixFreed event for the host", || {
        json(env, &["get", "events", "-n", "team-e"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["reason"] == "RetainedPrefixFreed"
                    && e["involvedObject"]["name"] == "nic"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("ipprefix \"team-e.nic\" (fd50::/128)"))
            })
    });
    wait_allocated(env, "root-e", |a| a == "0");
}

/// A Retain claim with `retentionSeconds` goes; at the deadline the server frees its block and
/// the claim's namespace gets a RetentionExpired event.
fn a_retention_that_ends_gets_a_retention_expired_event(env: &Envtest) {
    env.apply(&root("root-f", "fd60::/16"));
    env.apply(&namespace("team-f"));
    env.apply(
        &retain(claim("team-f", "nic", "root-f", 128))
            .replace("spec: {", "spec: {retentionSeconds: 1, "),
    );
    env.kubectl_ok(&["delete", "ippc", "nic", "-n", "team-f"]);
    env.wait_for("the retained block to be freed", || {
        let out = env.kubectl(&["get", "ipp", "team-f.nic"]);
        !out.status.success() && stderr_of(&out).contains("NotFound")
    });
    env.wait_for("a RetentionExpired event for the claim", || {
        json(env, &["get", "events", "-n", "team-f"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["reason"] == "RetentionExpired"
                    && e["involvedObject"]["name"] == "nic"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("ipprefix \"team-f.nic\" (fd60::/128)"))
            })
    });
    wait_allocated(env, "root-f", |a| a == "0");
}

fn deploy_kustomization_is_accepted_by_kube_apiserver(env: &Envtest) {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let out = env.kubectl_ok(&["apply", "-k", deploy, "--dry-run=server"]);
    for object in [
        "deployment.apps/ipam-apiserver",
        "service/ipam-apiserver",
        "clusterrole.rbac.authorization.k8s.io/ipam-claimer",
        "rolebinding.rbac.authorization.k8s.io/ipam-apiserver:extension-apiserver-authentication-reader",
        "apiservice.apiregistration.k8s.io/v1alpha1.ipam.miloapis.com",
    ] {
        assert!(out.contains(object), "{object} missing from:\n{out}");
    }
}

/// Runs after the cases above and reads what they left in the audit log: the user is the one
/// kube-apiserver authenticated (sent by the front proxy), not the proxy; a refused claim is
/// there with its name; the namespace controller's deletion of team-d names every block.
fn the_audit_log_names_the_end_user_and_every_block_a_namespace_deletion_freed(env: &Envtest) {
    let events = || -> Vec<Value> {
        std::fs::read_to_string(env.audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let find = |all: &[Value], name: &str, ns: &str, user: &str| -> Option<Value> {
        all.iter()
            .find(|e| {
                e["verb"] == "create"
                    && e["objectRef"]["name"] == name
                    && e["objectRef"]["namespace"] == ns
                    && e["user"]["username"] == user
            })
            .cloned()
    };
    env.wait_for("bob's and alice's claims in the audit log", || {
        let all = events();
        find(&all, "bobs", "team-b", "bob").is_some()
            && find(&all, "alices", "team-b", "alice").is_some()
    });
    let all = events();
    let bobs = find(&all, "bobs", "team-b", "bob").unwrap();
    assert_eq!(bobs["responseStatus"]["code"], 201, "{bobs}");
    assert_eq!(
        bobs["annotations"]["ipam.miloapis.com/prefix"], "fd20::/64",
        "{bobs}"
    );
    assert_eq!(
        bobs["annotations"]["ipam.miloapis.com/parent"], "root-b",
        "{bobs}"
    );
    let alices = find(&all, "alices", "team-b", "alice").unwrap();
    assert_eq!(alices["responseStatus"]["code"], 403, "{alices}");
    assert_eq!(alices["responseStatus"]["reason"], "Forbidden", "{alices}");

    // Every block team-d held is named by a delete in team-d, whoever sent it.
    let freed: Vec<String> = all
        .iter()
        .filter(|e| {
            e["objectRef"]["namespace"] == "team-d"
                && (e["verb"] == "delete" || e["verb"] == "deletecollection")
        })
        .filter_map(|e| e["annotations"]["ipam.miloapis.com/prefix"].as_str())
        .flat_map(|p| p.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    for block in [
        "fd40::/48",
        "fd40::/64",
        "fd40:0:0:1::/64",
        "fd40:0:0:2::/64",
    ] {
        assert!(freed.iter().any(|f| f == block), "{block} not in {freed:?}");
    }
}

/// A counter on the replica the APIService reaches (the follower, on etcd), read directly.
fn follower_metric(env: &Envtest, name: &str) -> f64 {
    let direct = env.direct_kubeconfig(Some("admin"));
    let out = env.kubectl_as(&direct, &["get", "--raw", "/metrics"]);
    env.assert_ok(&["get --raw /metrics"], &out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
        .unwrap_or(0.0)
}

/// On etcd the replica kube-apiserver reaches does not lead: it authorizes each create itself
/// (`use` on the parents, through SubjectAccessReviews) and hands it to the leader, which
/// allocates only from the parents the caller may use.
fn creates_through_a_follower_are_decided_by_the_leader_with_the_callers_rights(env: &Envtest) {
    for (name, prefix) in [("fwd-a", "fd60:a::/64"), ("fwd-b", "fd60:b::/64")] {
        env.apply(&format!(
            "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata: {{name: {name}, labels: {{pool: fwd}}}}\nspec: {{prefix: \"{prefix}\"}}\n"
        ));
    }
    env.apply(&namespace("fwd"));
    env.apply(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: claimer, namespace: fwd}
rules:
- {apiGroups: [ipam.miloapis.com], resources: [ipprefixclaims], verbs: [create, get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: claimer, namespace: fwd}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: claimer}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: use-fwd-b}
rules:
- {apiGroups: [ipam.miloapis.com], resources: [ipprefixes], resourceNames: [fwd-b], verbs: [use]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: mallory-uses-fwd-b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: use-fwd-b}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}]
"#,
    );
    let path = env.dir.path().join("fwd-claim.yaml");
    // The follower learns where the leader is from etcd within a second or two of its start.
    let mut warm = 0;
    env.wait_for("the follower to hand a create to the leader", || {
        warm += 1;
        std::fs::write(&path, claim("fwd", &format!("warm-{warm}"), "fwd-a", 128)).expect("write");
        env.kubectl_ok(&["create", "-f", &path.display().to_string()]);
        follower_metric(env, "ipam_forwarded_writes_total") > 0.0
    });
    let allocated_here = follower_metric(env, "ipam_allocations_total");
    let forwarded = follower_metric(env, "ipam_forwarded_writes_total");

    // mallory may use fwd-b only: a selector matching both allocates from fwd-b, though fwd-a
    // comes first by name and has room.
    let mallory = env.user_kubeconfig("mallory");
    std::fs::write(
        &path,
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefixClaim\nmetadata: {name: by-selector, namespace: fwd}\nspec: {prefixLength: 128, parentSelector: {matchLabels: {pool: fwd}}}\n",
    )
    .expect("write");
    let out = env.kubectl_as(&mallory, &["create", "-f", &path.display().to_string()]);
    env.assert_ok(&["create (as mallory)"], &out);
    let c = json(env, &["get", "ippc", "by-selector", "-n", "fwd"]);
    assert_eq!(c["status"]["parentRef"]["name"], "fwd-b", "{c}");
    assert_eq!(c["status"]["prefix"], "fd60:b::/128", "{c}");
    // ... and naming fwd-a is refused.
    std::fs::write(&path, claim("fwd", "by-name", "fwd-a", 128)).expect("write");
    let out = env.kubectl_as(&mallory, &["create", "-f", &path.display().to_string()]);
    assert!(
        !out.status.success(),
        "mallory's claim on fwd-a was created"
    );
    let err = stderr_of(&out);
    assert!(err.contains("Forbidden") && err.contains("fwd-a"), "{err}");

    // The follower allocated none of it: the leader did.
    assert!(follower_metric(env, "ipam_forwarded_writes_total") > forwarded);
    assert_eq!(
        follower_metric(env, "ipam_allocations_total"),
        allocated_here
    );
}
