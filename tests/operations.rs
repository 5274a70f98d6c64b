//! Operating the address plan: the `spec.prefix.contains` reverse lookup (HTTP and kubectl),
//! and every `kubectl ipam` command against the real binary, with exact output.
mod common;

use common::TestServer;
use serde_json::Value;

const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

/// A site root with its first /24 excluded, a location /24 carved by a claim, a subnet /28 in it
/// that keeps its first address, a host in the subnet and a host retained after its claim went:
///
/// ```text
/// site      10.0.0.0/16   exclude 10.0.0.0/24
///   net.dfw 10.0.1.0/24   (claim net/dfw)
///     net.web   10.0.1.0/28 reserve leading 1 (claim net/web)
///       net.web-0 10.0.1.1/32 (claim net/web-0)
///       net.old   10.0.1.2/32 Released (claim net/old, Retain, deleted)
/// ```
const PLAN: &str = "apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefix
metadata: {name: site, labels: {tier: site}}
spec: {prefix: 10.0.0.0/16, exclude: [10.0.0.0/24]}
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: dfw, namespace: net}
spec: {prefixLength: 24, parentRef: {name: site}}
";

const SUBNET: &str = "apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: web, namespace: net}
spec:
  prefixLength: 28
  parentRef: {name: net.dfw}
  childPrefixTemplate: {spec: {reserve: {leading: 1}}}
";

const HOSTS: &str = "apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: web-0, namespace: net}
spec: {prefixLength: 32, parentRef: {name: net.web}}
---
apiVersion: ipam.miloapis.com/v1alpha1
kind: IPPrefixClaim
metadata: {name: old, namespace: net}
spec: {prefixLength: 32, parentRef: {name: net.web}, reclaimPolicy: Retain}
";

fn apply(server: &TestServer, manifest: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    std::fs::write(&path, manifest).unwrap();
    server.kubectl_ok(&["apply", "-f", path.to_str().unwrap()]);
}

fn with_plan() -> TestServer {
    let server = TestServer::start();
    apply(&server, PLAN);
    apply(&server, SUBNET);
    apply(&server, HOSTS);
    server.kubectl_ok(&["delete", "ippc", "old", "-n", "net"]);
    server
}

fn plugin(server: &TestServer, args: &[&str]) -> std::process::Output {
    common::kubectl_ipam(&server.kubeconfig, args)
}

fn plugin_ok(server: &TestServer, args: &[&str]) -> String {
    common::kubectl_ipam_ok(&server.kubeconfig, args)
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect()
}

async fn get_json(server: &TestServer, path: &str) -> (u16, Value) {
    let (status, _, body) = server.raw("GET", path, None, Vec::new()).await;
    (status.as_u16(), serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn prefix_contains_selector_returns_the_chain_root_first() {
    let server = with_plan();
    let list = |q: &str| format!("{GV}/ipprefixes?fieldSelector={q}");
    let (code, chain) = get_json(&server, &list("spec.prefix.contains=10.0.1.1")).await;
    assert_eq!(code, 200, "{chain}");
    assert_eq!(names(&chain), ["site", "net.dfw", "net.web", "net.web-0"]);
    // A CIDR: the blocks that contain all of it.
    let (_, chain) = get_json(&server, &list("spec.prefix.contains=10.0.1.0/26")).await;
    assert_eq!(names(&chain), ["site", "net.dfw"]);
    // An excluded address is still inside its root.
    let (_, chain) = get_json(&server, &list("spec.prefix.contains=10.0.0.7")).await;
    assert_eq!(names(&chain), ["site"]);
    let (code, chain) = get_json(&server, &list("spec.prefix.contains=192.168.0.1")).await;
    assert_eq!((code, names(&chain)), (200, vec![]));

    // With other selectors, and in pages that follow the chain.
    let (_, chain) = get_json(
        &server,
        &list("spec.prefix.contains=10.0.1.1,status.phase=Bound"),
    )
    .await;
    assert_eq!(names(&chain), ["net.dfw", "net.web", "net.web-0"]);
    let (_, chain) = get_json(
        &server,
        &format!(
            "{}&labelSelector=tier%3Dsite",
            list("spec.prefix.contains=10.0.1.1")
        ),
    )
    .await;
    assert_eq!(names(&chain), ["site"]);
    let (_, first) = get_json(
        &server,
        &format!("{}&limit=3", list("spec.prefix.contains=10.0.1.1")),
    )
    .await;
    assert_eq!(names(&first), ["site", "net.dfw", "net.web"]);
    let token = first["metadata"]["continue"].as_str().unwrap();
    let (_, rest) = get_json(
        &server,
        &format!(
            "{}&limit=3&continue={token}",
            list("spec.prefix.contains=10.0.1.1")
        ),
    )
    .await;
    assert_eq!(names(&rest), ["net.web-0"]);
    assert_eq!(rest["metadata"]["continue"], Value::Null);
    // The token continues that list only.
    let (code, _) = get_json(
        &server,
        &format!(
            "{}&limit=3&continue={token}",
            list("spec.prefix.contains=10.0.1.2")
        ),
    )
    .await;
    assert_eq!(code, 400);

    // Unparsable: 400 with a Status.
    let (code, status) = get_json(&server, &list("spec.prefix.contains=10.0.1.x")).await;
    assert_eq!(code, 400);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "BadRequest");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("\"10.0.1.x\" is not an IP address or CIDR"),
        "{status}"
    );

    // kubectl passes the selector through.
    let out = server.kubectl_ok(&[
        "get",
        "ipp",
        "--field-selector",
        "spec.prefix.contains=10.0.1.2",
        "-o",
        "name",
    ]);
    assert_eq!(
        out,
        "ipprefix.ipam.miloapis.com/site\nipprefix.ipam.miloapis.com/net.dfw\nipprefix.ipam.miloapis.com/net.web\nipprefix.ipam.miloapis.com/net.old\n"
    );
}

#[test]
fn plugin_tree_prints_the_hierarchy_with_usage() {
    let server = with_plan();
    assert_eq!(
        plugin_ok(&server, &["tree"]),
        "\
PREFIX              NAME        PHASE       CLAIM       UTILIZATION   LARGEST-FREE
10.0.0.0/16         site        Available   -           0.78%         /17
  10.0.1.0/24       net.dfw     Bound       net/dfw     6.25%         /25
    10.0.1.0/28     net.web     Bound       net/web     18.75%        /29
      10.0.1.1/32   net.web-0   Bound       net/web-0   0.00%         -
      10.0.1.2/32   net.old     Released    net/old     0.00%         -
"
    );
    assert_eq!(
        plugin_ok(&server, &["tree", "net.dfw", "--depth", "1"]),
        "\
PREFIX          NAME      PHASE   CLAIM     UTILIZATION   LARGEST-FREE
10.0.1.0/24     net.dfw   Bound   net/dfw   6.25%         /25
  10.0.1.0/28   net.web   Bound   net/web   18.75%        /29
"
    );
    let json: Value = serde_json::from_str(&plugin_ok(&server, &["tree", "-o", "json"])).unwrap();
    let web = &json[0]["children"][0]["children"][0];
    assert_eq!(web["name"], "net.web");
    assert_eq!(web["utilization"], "18.75%");
    assert_eq!(web["largestFreePrefixLength"], 29);
    assert_eq!(web["children"].as_array().unwrap().len(), 2);
}

#[test]
fn plugin_lookup_prints_the_chain_and_exits_1_when_nothing_contains_it() {
    let server = with_plan();
    assert_eq!(
        plugin_ok(&server, &["lookup", "10.0.1.1"]),
        "\
PREFIX              NAME        PHASE       CLAIM
10.0.0.0/16         site        Available   -
  10.0.1.0/24       net.dfw     Bound       net/dfw
    10.0.1.0/28     net.web     Bound       net/web
      10.0.1.1/32   net.web-0   Bound       net/web-0
"
    );
    let json: Value =
        serde_json::from_str(&plugin_ok(&server, &["lookup", "10.0.1.2", "-o", "json"])).unwrap();
    assert_eq!(json["claim"], "net/old");
    assert_eq!(json["chain"][3]["phase"], "Released");

    let out = plugin(&server, &["lookup", "192.168.1.1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout, b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "no ipprefix contains 192.168.1.1\n"
    );
    let out = plugin(&server, &["lookup", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plugin_free_lists_blocks_around_children_exclude_and_reserve() {
    let server = with_plan();
    assert_eq!(
        plugin_ok(&server, &["free", "net.web"]),
        "\
FREE          ADDRESSES
10.0.1.3/32   1
10.0.1.4/30   4
10.0.1.8/29   8
"
    );
    assert_eq!(
        plugin_ok(&server, &["free", "site", "--length", "24"]),
        "\
FREE            ADDRESSES
10.0.2.0/23     512
10.0.4.0/22     1024
10.0.8.0/21     2048
10.0.16.0/20    4096
10.0.32.0/19    8192
10.0.64.0/18    16384
10.0.128.0/17   32768
254 free /24 blocks fit in site (10.0.0.0/16)
"
    );
    let json: Value = serde_json::from_str(&plugin_ok(
        &server,
        &["free", "net.web", "--length", "30", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(json["fits"], "3");
    assert_eq!(json["free"][0]["prefix"], "10.0.1.3/32");
    let out = plugin(&server, &["free", "net.web", "--length", "28"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plugin_released_lists_retained_blocks_with_their_claim() {
    let server = with_plan();
    let out = plugin_ok(&server, &["released"]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["NAME", "PREFIX", "CLAIM", "AGE", "EXPIRES"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["net.old", "10.0.1.2/32", "net/old"]);
    assert_eq!(lines.next(), None);
    // Released seconds ago: not older than an hour.
    assert_eq!(
        plugin_ok(&server, &["released", "--older-than", "1h"]),
        "NAME   PREFIX   CLAIM   AGE   EXPIRES\n"
    );
    let json: Value =
        serde_json::from_str(&plugin_ok(&server, &["released", "-o", "json"])).unwrap();
    assert_eq!(json[0]["name"], "net.old");
    assert_eq!(json[0]["claim"], "net/old");
    let out = plugin(&server, &["released", "--older-than", "5x"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plugin_top_orders_pools_by_utilization() {
    let server = with_plan();
    assert_eq!(
        plugin_ok(&server, &["top"]),
        "\
NAME      PREFIX        UTILIZATION   CHILDREN   LARGEST-FREE
net.web   10.0.1.0/28   18.75%        2          /29
net.dfw   10.0.1.0/24   6.25%         1          /25
site      10.0.0.0/16   0.78%         1          /17
"
    );
    assert_eq!(
        plugin_ok(&server, &["top", "--limit", "1"]),
        "\
NAME      PREFIX        UTILIZATION   CHILDREN   LARGEST-FREE
net.web   10.0.1.0/28   18.75%        2          /29
"
    );
    let json: Value = serde_json::from_str(&plugin_ok(&server, &["top", "-o", "json"])).unwrap();
    assert_eq!(json[2]["name"], "site");
    assert_eq!(json[2]["childCount"], 1);
}

#[tokio::test]
async fn metrics_report_utilization_and_largest_free_block_per_pool() {
    let server = with_plan();
    let (status, _, body) = server.raw("GET", "/metrics", None, Vec::new()).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let series = |name: &str| -> Vec<&str> {
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect();
        lines.sort_unstable();
        lines
    };
    assert_eq!(
        series("ipam_prefix_utilization_ratio"),
        [
            r#"ipam_prefix_utilization_ratio{name="net.dfw",prefix="10.0.1.0/24"} 0.0625"#,
            r#"ipam_prefix_utilization_ratio{name="net.web",prefix="10.0.1.0/28"} 0.1875"#,
            r#"ipam_prefix_utilization_ratio{name="site",prefix="10.0.0.0/16"} 0.0078125"#,
        ]
    );
    assert_eq!(
        series("ipam_prefix_largest_free_prefix_length"),
        [
            r#"ipam_prefix_largest_free_prefix_length{name="net.dfw",prefix="10.0.1.0/24"} 25"#,
            r#"ipam_prefix_largest_free_prefix_length{name="net.web",prefix="10.0.1.0/28"} 29"#,
            r#"ipam_prefix_largest_free_prefix_length{name="site",prefix="10.0.0.0/16"} 17"#,
        ]
    );
    assert!(text.contains("\nipam_prefix_series_omitted 0\n"), "{text}");
}

/// Every `expr` anywhere in a JSON or YAML document.
fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_metrics_the_server_exports() {
    let server = TestServer::start();
    let (_, _, body) = server.raw("GET", "/metrics", None, Vec::new()).await;
    let scrape = String::from_utf8(body).unwrap();
    // Series names as Prometheus stores them from the OpenMetrics text.
    let mut exported = std::collections::BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                exported.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                exported.insert(name.to_string());
            }
        }
    }

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/dashboard.json")).unwrap())
            .expect("the dashboard is valid JSON");
    let rule: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{dir}/prometheusrule.yaml")).unwrap(),
    )
    .expect("the PrometheusRule is valid YAML");
    assert_eq!(rule["kind"], "PrometheusRule");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let panels = all.len();
    exprs(&rule["spec"], &mut all);
    assert!(panels >= 12 && all.len() > panels, "{all:?}");
    for expr in &all {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("ipam_"))
            .collect();
        assert!(!names.is_empty(), "{expr} names no server metric");
        for name in names {
            assert!(
                exported.contains(name),
                "{name} (in {expr}) is not exported; /metrics has {exported:?}"
            );
        }
    }
}
