//! Tenants in a real cluster (envtest): what a claim's creator must be allowed beyond creating
//! the claim. IPPrefix names are cluster-wide, so a claim may name its IPPrefix outside
//! `<namespace>.` only when its creator may create ipprefixes of that name; and a
//! `parentSelector` asks kube-apiserver about the parents allocation would try, in that order,
//! stopping at the first the creator may `use`, never about every IPPrefix it matches.
//!
//! One control plane for both cases, run in order. Without `KUBEBUILDER_ASSETS` the test prints
//! why it was skipped and returns.
mod common;
#[path = "common/envtest.rs"]
mod envtest;

use envtest::Envtest;
use futures::StreamExt;
use ipam_apiserver::api::IPPrefix;
use kube::api::{Api, PostParams};
use serde_json::Value;
use std::time::Instant;

#[test]
fn cluster_tenants() {
    let t0 = Instant::now();
    let Some(env) = Envtest::start("cluster_tenants") else {
        return;
    };
    for (name, case) in [
        (
            "a_tenant_cannot_take_another_tenants_ipprefix_names",
            a_tenant_cannot_take_another_tenants_ipprefix_names as fn(&Envtest),
        ),
        (
            "parent_selector_reviews_only_parents_that_could_take_the_claim",
            parent_selector_reviews_only_parents_that_could_take_the_claim,
        ),
        (
            "concurrent_selector_claims_move_on_when_the_first_parent_fills",
            concurrent_selector_claims_move_on_when_the_first_parent_fills,
        ),
    ] {
        let t = Instant::now();
        eprintln!("--- {name}");
        case(&env);
        eprintln!("--- {name}: ok in {:.1?}", t.elapsed());
    }
    eprintln!("cluster_tenants: everything in {:.1?}", t0.elapsed());
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kubectl create -f` of `manifest` as the user of `kubeconfig`.
fn create_as(env: &Envtest, kubeconfig: &std::path::Path, manifest: &str) -> std::process::Output {
    let path = env.dir.path().join("create.yaml");
    std::fs::write(&path, manifest).expect("write manifest");
    env.kubectl_as(kubeconfig, &["create", "-f", &path.display().to_string()])
}

fn exists(env: &Envtest, args: &[&str]) -> bool {
    env.kubectl(args).status.success()
}

/// RBAC for `user`: claims in `namespace`, and `verb` on the ipprefixes named.
fn grant(env: &Envtest, user: &str, namespace: &str, verbs_on_prefixes: &[(&str, &[&str])]) {
    let mut rules = String::new();
    for (verb, names) in verbs_on_prefixes {
        rules.push_str(&format!(
            "- {{apiGroups: [ipam.miloapis.com], resources: [ipprefixes], verbs: [{verb}], resourceNames: [{}]}}\n",
            names.join(", ")
        ));
    }
    env.apply(&format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {user}-claims, namespace: {namespace}}}
rules:
- {{apiGroups: [ipam.miloapis.com], resources: [ipprefixclaims], verbs: [create, get, list, delete]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {user}-claims, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {user}-claims}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {user}-{namespace}-prefixes}}
rules:
{rules}---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {user}-{namespace}-prefixes}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {user}-{namespace}-prefixes}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]
"#
    ));
}

fn claim_naming_child(ns: &str, name: &str, parent: &str, child: &str) -> String {
    format!(
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefixClaim\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  prefixLength: 64\n  parentRef: {{name: {parent}}}\n  childPrefixTemplate: {{metadata: {{name: {child}}}}}\n"
    )
}

fn a_tenant_cannot_take_another_tenants_ipprefix_names(env: &Envtest) {
    env.apply(
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata: {name: tenants}\nspec: {prefix: \"fd30::/16\"}\n",
    );
    // mallory may create claims in `evil`, use the root, and create the one IPPrefix name
    // `shared-gw` herself; nothing else.
    grant(
        env,
        "mallory",
        "evil",
        &[("use", &["tenants"]), ("create", &["shared-gw"])],
    );
    let mallory = env.user_kubeconfig("mallory");

    // Another tenant's name: 403 in the contract's words, and nothing is created.
    let out = create_as(
        env,
        &mallory,
        &claim_naming_child("evil", "web-0", "tenants", "prod.web-0"),
    );
    assert!(!out.status.success(), "mallory took the name prod.web-0");
    let err = stderr_of(&out);
    assert!(
        err.contains("Forbidden")
            && err.contains(
                "\"prod.web-0\" must start with \"evil.\" unless the caller may create ipprefixes"
            ),
        "{err}"
    );
    assert!(!exists(env, &["get", "ippc", "web-0", "-n", "evil"]));
    assert!(!exists(env, &["get", "ipp", "prod.web-0"]));
    // A name that merely starts with the namespace's letters is not the namespace's.
    let out = create_as(
        env,
        &mallory,
        &claim_naming_child("evil", "web-1", "tenants", "evilcorp.web-1"),
    );
    assert!(
        stderr_of(&out).contains("must start with \"evil.\""),
        "{}",
        stderr_of(&out)
    );

    // Her namespace's own names are hers.
    let out = create_as(
        env,
        &mallory,
        &claim_naming_child("evil", "x", "tenants", "evil.x"),
    );
    env.assert_ok(&["create evil.x (as mallory)"], &out);
    assert!(exists(env, &["get", "ipp", "evil.x"]));
    // And so is a name she may create ipprefixes of.
    let out = create_as(
        env,
        &mallory,
        &claim_naming_child("evil", "gw", "tenants", "shared-gw"),
    );
    env.assert_ok(&["create shared-gw (as mallory)"], &out);

    // The admin may choose any name, in any namespace.
    let out = create_as(
        env,
        &env.kubeconfig,
        &claim_naming_child("evil", "web-0", "tenants", "prod.web-0"),
    );
    env.assert_ok(&["create prod.web-0 (as admin)"], &out);
    let c: Value = serde_json::from_str(
        &env.kubectl_ok(&["get", "ippc", "web-0", "-n", "evil", "-o", "json"]),
    )
    .expect("claim JSON");
    assert_eq!(c["status"]["prefixRef"]["name"], "prod.web-0", "{c}");
}

/// ipam-apiserver's count of SubjectAccessReviews sent (`/metrics`, read as the admin).
fn reviews_sent(env: &Envtest) -> f64 {
    let direct = env.direct_kubeconfig(Some("admin"));
    let out = env.kubectl_as(&direct, &["get", "--raw", "/metrics"]);
    env.assert_ok(&["get --raw /metrics"], &out);
    let metrics = String::from_utf8_lossy(&out.stdout);
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("ipam_subject_access_reviews_total ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no ipam_subject_access_reviews_total in /metrics:\n{metrics}"))
}

fn selector_claim(ns: &str, name: &str, len: u8, selector: &str) -> String {
    format!(
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefixClaim\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{prefixLength: {len}, parentSelector: {selector}}}\n"
    )
}

/// The reviews one create sent: the answer of `create` and the counter's difference.
fn reviews_for(
    env: &Envtest,
    kubeconfig: &std::path::Path,
    manifest: &str,
) -> (std::process::Output, f64) {
    let before = reviews_sent(env);
    let out = create_as(env, kubeconfig, manifest);
    // The metrics read itself is authorized once (then cached): at most one review more.
    let reviews = reviews_sent(env) - before;
    eprintln!(
        "{reviews} SubjectAccessReviews for {}",
        manifest.lines().nth(2).unwrap_or_default()
    );
    (out, reviews)
}

const PARENTS: usize = 3_000;

fn parent_selector_reviews_only_parents_that_could_take_the_claim(env: &Envtest) {
    // 3,000 labelled roots: the first five are single addresses (no room for a /128 claim),
    // the others /64s.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = kube::Client::try_from(common::kube_config_from(&env.kubeconfig).await)
            .expect("kube client");
        let api: Api<IPPrefix> = Api::all(client);
        let creates = (0..PARENTS).map(|i| {
            let api = api.clone();
            async move {
                let prefix = if i < 5 {
                    format!("fd40:ffff::{i:x}/128")
                } else {
                    format!("fd40:0:0:{i:x}::/64")
                };
                let root = IPPrefix::root(&format!("many-{i:04}"), prefix.parse().unwrap())
                    .label("sar", "many");
                api.create(&PostParams::default(), &root).await
            }
        });
        let mut results = futures::stream::iter(creates).buffer_unordered(16);
        while let Some(r) = results.next().await {
            r.expect("create a parent");
        }
    });
    // alice may use one single address and the 11th parent; bob may use none of them.
    grant(env, "alice", "sar", &[("use", &["many-0002", "many-0010"])]);
    grant(env, "bob", "sar", &[("use", &["elsewhere"])]);
    let (alice, bob) = (env.user_kubeconfig("alice"), env.user_kubeconfig("bob"));
    let many = "{matchLabels: {sar: many}}";

    // 201 from the first parent with room alice may use, after a handful of reviews (the one
    // without a name, the parents with room before it), not one per matching parent.
    let (out, reviews) = reviews_for(env, &alice, &selector_claim("sar", "a1", 128, many));
    env.assert_ok(&["create a1 (as alice)"], &out);
    let c: Value =
        serde_json::from_str(&env.kubectl_ok(&["get", "ippc", "a1", "-n", "sar", "-o", "json"]))
            .expect("claim JSON");
    assert_eq!(c["status"]["parentRef"]["name"], "many-0010", "{c}");
    assert_eq!(c["status"]["prefix"], "fd40:0:0:a::/128", "{c}");
    // Besides the parents: the request's own review, kubectl's discovery, the metrics read.
    assert!(
        reviews <= 12.0,
        "{reviews} SubjectAccessReviews for one create"
    );

    // The same for `parentSelector: {}`, which matches every IPPrefix there is.
    let (out, reviews) = reviews_for(env, &alice, &selector_claim("sar", "a2", 128, "{}"));
    env.assert_ok(&["create a2 (as alice)"], &out);
    assert!(
        reviews <= 12.0,
        "{reviews} SubjectAccessReviews for one create"
    );

    // No parent bob may use: 403, after a bounded number of reviews.
    let (out, reviews) = reviews_for(env, &bob, &selector_claim("sar", "b1", 128, "{}"));
    assert!(!out.status.success(), "bob's claim was created");
    let err = stderr_of(&out);
    assert!(
        err.contains("Forbidden") && err.contains("spec.parentSelector"),
        "{err}"
    );
    assert!(
        reviews <= 70.0,
        "{reviews} SubjectAccessReviews for one create"
    );
    assert!(!exists(env, &["get", "ippc", "b1", "-n", "sar"]));

    // No parent has room for a /64 (they are /64s and single addresses): 409 Exhausted for
    // alice, who may use one of them; 403 for bob, who may use none.
    let (out, reviews) = reviews_for(env, &alice, &selector_claim("sar", "a3", 64, many));
    let err = stderr_of(&out);
    assert!(
        err.contains("Exhausted") && err.contains("no ipprefix with room for a /64"),
        "{err}"
    );
    assert!(
        reviews <= 12.0,
        "{reviews} SubjectAccessReviews for one create"
    );
    let (out, reviews) = reviews_for(env, &bob, &selector_claim("sar", "b2", 64, many));
    assert!(stderr_of(&out).contains("Forbidden"), "{}", stderr_of(&out));
    assert!(
        reviews <= 70.0,
        "{reviews} SubjectAccessReviews for one create"
    );

    // The admin may use every IPPrefix: one review, without a name.
    let (out, reviews) = reviews_for(
        env,
        &env.kubeconfig,
        &selector_claim("sar", "admins", 128, many),
    );
    env.assert_ok(&["create admins (as admin)"], &out);
    let c: Value = serde_json::from_str(
        &env.kubectl_ok(&["get", "ippc", "admins", "-n", "sar", "-o", "json"]),
    )
    .expect("claim JSON");
    assert_eq!(c["status"]["parentRef"]["name"], "many-0005", "{c}");
    assert!(
        reviews <= 3.0,
        "{reviews} SubjectAccessReviews for one create"
    );
}

/// Reviews stop at the first usable parent with room; when concurrent creates fill it first,
/// each moves on to the next parent as allocation does, rather than answering 409 Exhausted.
fn concurrent_selector_claims_move_on_when_the_first_parent_fills(env: &Envtest) {
    env.apply(
        r#"apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefix
metadata: {name: race-a, labels: {sar: race}}
spec: {prefix: "fd50::/127"}
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefix
metadata: {name: race-b, labels: {sar: race}}
spec: {prefix: "fd50:1::/64"}
"#,
    );
    grant(env, "alice", "race", &[("use", &["race-a", "race-b"])]);
    let alice = env.user_kubeconfig("alice");
    // Eight kubectl processes at once.
    let children: Vec<_> = (0..8)
        .map(|i| {
            let path = env.dir.path().join(format!("race-{i}.yaml"));
            let manifest =
                selector_claim("race", &format!("c{i}"), 128, "{matchLabels: {sar: race}}");
            std::fs::write(&path, manifest).expect("write manifest");
            env.kubectl_cmd(&alice, &["create", "-f", &path.display().to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run kubectl")
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("kubectl create"))
        .collect();
    for out in &outs {
        env.assert_ok(&["create (as alice, concurrently)"], out);
    }
    let claims: Value =
        serde_json::from_str(&env.kubectl_ok(&["get", "ippc", "-n", "race", "-o", "json"]))
            .expect("claims JSON");
    let mut parents: Vec<String> = claims["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| {
            c["status"]["parentRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    parents.sort();
    let expected: Vec<String> = std::iter::repeat_n("race-a", 2)
        .chain(std::iter::repeat_n("race-b", 6))
        .map(String::from)
        .collect();
    assert_eq!(parents, expected);
}
