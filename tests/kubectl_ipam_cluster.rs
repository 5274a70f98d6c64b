//! `kubectl ipam` and the `spec.prefix.contains` selector through kube-apiserver (the
//! aggregation layer), against a real control plane (envtest). Without `KUBEBUILDER_ASSETS`
//! the test prints why it was skipped and returns.
mod common;
#[path = "common/envtest.rs"]
mod envtest;

use envtest::Envtest;

const PLAN: &str = "apiVersion: v1
kind: Namespace
metadata: {name: ops}
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefix
metadata: {name: ops-root}
spec: {prefix: 10.20.0.0/16}
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: pool, namespace: ops}
spec: {prefixLength: 24, parentRef: {name: ops-root}}
";

const HOST: &str = "apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: host, namespace: ops}
spec: {prefixLength: 32, parentRef: {name: ops.pool}}
";

fn plugin(env: &Envtest, args: &[&str]) -> std::process::Output {
    common::kubectl_ipam(&env.kubeconfig, args)
}

fn plugin_ok(env: &Envtest, args: &[&str]) -> String {
    common::kubectl_ipam_ok(&env.kubeconfig, args)
}

#[test]
fn kubectl_ipam_works_through_kube_apiserver() {
    let Some(env) = Envtest::start("kubectl_ipam_cluster") else {
        return;
    };
    env.apply(PLAN);
    env.apply(HOST);

    let out = env.kubectl_ok(&[
        "get",
        "ipp",
        "--field-selector",
        "spec.prefix.contains=10.20.0.0",
        "-o",
        "name",
    ]);
    assert_eq!(
        out,
        "ipprefix.ipam.miloapis.com/ops-root\nipprefix.ipam.miloapis.com/ops.pool\nipprefix.ipam.miloapis.com/ops.host\n"
    );
    let bad = env.kubectl(&["get", "ipp", "--field-selector", "spec.prefix.contains=x"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("\"x\" is not an IP address or CIDR"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    assert_eq!(
        plugin_ok(&env, &["lookup", "10.20.0.0"]),
        "\
PREFIX             NAME       PHASE       CLAIM
10.20.0.0/16       ops-root   Available   -
  10.20.0.0/24     ops.pool   Bound       ops/pool
    10.20.0.0/32   ops.host   Bound       ops/host
"
    );
    assert_eq!(
        plugin(&env, &["lookup", "10.21.0.0"]).status.code(),
        Some(1)
    );
    assert_eq!(
        plugin_ok(&env, &["tree", "ops-root"]),
        "\
PREFIX             NAME       PHASE       CLAIM      UTILIZATION   LARGEST-FREE
10.20.0.0/16       ops-root   Available   -          0.39%         /17
  10.20.0.0/24     ops.pool   Bound       ops/pool   0.39%         /25
    10.20.0.0/32   ops.host   Bound       ops/host   0.00%         -
"
    );
    assert_eq!(
        plugin_ok(&env, &["free", "ops.pool", "--length", "26"]),
        "\
FREE             ADDRESSES
10.20.0.1/32     1
10.20.0.2/31     2
10.20.0.4/30     4
10.20.0.8/29     8
10.20.0.16/28    16
10.20.0.32/27    32
10.20.0.64/26    64
10.20.0.128/25   128
3 free /26 blocks fit in ops.pool (10.20.0.0/24)
"
    );
    assert_eq!(
        plugin_ok(&env, &["released"]),
        "NAME   PREFIX   CLAIM   AGE   EXPIRES\n"
    );
}
