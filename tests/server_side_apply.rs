//! Server-side apply of partial configurations, as controllers send them: a manager applies only
//! the fields it manages (a label, an annotation, a status condition) and the object keeps every
//! other manager's fields; what is required is judged on the merged object.
mod common;

use common::TestServer;
use ipam_apiserver::api::{IPPrefix, IPPrefixClaim};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

const API_VERSION: &str = "ipam.miloapis.com/v1alpha1";

/// (manager, operation, subresource) of every managedFields entry.
fn managers(meta: &kube::api::ObjectMeta) -> Vec<(String, String, Option<String>)> {
    meta.managed_fields
        .iter()
        .flatten()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
                e.subresource.clone(),
            )
        })
        .collect()
}

fn fields_of<'a>(meta: &'a kube::api::ObjectMeta, manager: &str) -> &'a Value {
    &meta
        .managed_fields
        .iter()
        .flatten()
        .find(|e| e.manager.as_deref() == Some(manager))
        .and_then(|e| e.fields_v1.as_ref())
        .unwrap_or_else(|| panic!("no managedFields entry for {manager}"))
        .0
}

fn api_status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(s) => *s,
        other => panic!("expected a Status, got {other:?}"),
    }
}

#[tokio::test]
async fn partial_apply_configurations_merge_with_other_managers_fields() {
    let server = TestServer::start();
    let client = server.client().await;
    let prefixes: Api<IPPrefix> = Api::all(client.clone());
    let claims: Api<IPPrefixClaim> = Api::namespaced(client.clone(), "p");
    let (a, b, c) = (
        PatchParams::apply("a"),
        PatchParams::apply("b"),
        PatchParams::apply("c"),
    );

    // Manager a creates the root with its spec and a label.
    let root = json!({
        "apiVersion": API_VERSION, "kind": "IPPrefix",
        "metadata": {"name": "platform", "labels": {"tier": "platform"}},
        "spec": {"prefix": "fd20::/20"},
    });
    prefixes
        .patch("platform", &a, &Patch::Apply(&root))
        .await
        .unwrap();

    // Manager b applies only a label: the spec and a's label stay, b owns its label.
    let labels_only = json!({
        "apiVersion": API_VERSION, "kind": "IPPrefix",
        "metadata": {"name": "platform", "labels": {"team": "net"}},
    });
    let merged = prefixes
        .patch("platform", &b, &Patch::Apply(&labels_only))
        .await
        .unwrap();
    assert_eq!(merged.spec.prefix, "fd20::/20");
    let labels = merged.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("tier").map(String::as_str), Some("platform"));
    assert_eq!(labels.get("team").map(String::as_str), Some("net"));
    let who = managers(&merged.metadata);
    assert!(who.contains(&("a".into(), "Apply".into(), None)), "{who:?}");
    assert!(who.contains(&("b".into(), "Apply".into(), None)), "{who:?}");
    assert_eq!(
        fields_of(&merged.metadata, "b"),
        &json!({"f:metadata": {"f:labels": {".": {}, "f:team": {}}}})
    );

    // A field a owns, applied by b with another value and without force: 409 as before.
    let clash = json!({
        "apiVersion": API_VERSION, "kind": "IPPrefix",
        "metadata": {"name": "platform", "labels": {"tier": "other"}},
    });
    let err = api_status(
        prefixes
            .patch("platform", &b, &Patch::Apply(&clash))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409, "{}", err.message);
    assert!(
        err.message.contains("conflict with \"a\"")
            && err.message.contains(".metadata.labels.tier"),
        "{}",
        err.message
    );

    // Manager a drops its label: only b's is left, and a's spec is untouched.
    let root_without_label = json!({
        "apiVersion": API_VERSION, "kind": "IPPrefix",
        "metadata": {"name": "platform"},
        "spec": {"prefix": "fd20::/20"},
    });
    let after = prefixes
        .patch("platform", &a, &Patch::Apply(&root_without_label))
        .await
        .unwrap();
    let labels = after.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("tier"), None);
    assert_eq!(labels.get("team").map(String::as_str), Some("net"));

    // A claim: manager a allocates, manager b adds only an annotation; the allocation stays.
    let claim = IPPrefixClaim::new_with_length("p", "pool", "platform", 48);
    let bound = claims
        .patch("pool", &a, &Patch::Apply(&claim))
        .await
        .unwrap();
    let annotation_only = json!({
        "apiVersion": API_VERSION, "kind": "IPPrefixClaim",
        "metadata": {"name": "pool", "annotations": {"example.com/owner": "net-team"}},
    });
    let annotated = claims
        .patch("pool", &b, &Patch::Apply(&annotation_only))
        .await
        .unwrap();
    assert_eq!(annotated.spec, bound.spec);
    assert_eq!(annotated.allocated_prefix(), bound.allocated_prefix());
    assert_eq!(
        annotated
            .metadata
            .annotations
            .unwrap_or_default()
            .get("example.com/owner")
            .map(String::as_str),
        Some("net-team")
    );

    // Manager c applies only a condition of its own to /status: the Bound condition stays.
    let status_only = json!({
        "apiVersion": API_VERSION, "kind": "IPPrefixClaim",
        "metadata": {"name": "pool"},
        "status": {"conditions": [{
            "type": "Configured", "status": "True", "reason": "Routed",
            "message": "announced", "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]},
    });
    let with_status = claims
        .patch_status("pool", &c, &Patch::Apply(&status_only))
        .await
        .unwrap();
    let types: Vec<String> = with_status
        .status
        .as_ref()
        .map(|s| s.conditions.iter().map(|c| c.type_.clone()).collect())
        .unwrap_or_default();
    assert!(
        types.contains(&"Bound".to_string()) && types.contains(&"Configured".to_string()),
        "{types:?}"
    );
    assert_eq!(with_status.allocated_prefix(), bound.allocated_prefix());
    let who = managers(&with_status.metadata);
    assert!(
        who.contains(&("c".into(), "Apply".into(), Some("status".into()))),
        "{who:?}"
    );

    // Apply as create still needs the required fields: the merged object has no spec.
    let err = api_status(
        prefixes
            .patch(
                "nothing-yet",
                &b,
                &Patch::Apply(&json!({
                    "apiVersion": API_VERSION, "kind": "IPPrefix",
                    "metadata": {"name": "nothing-yet", "labels": {"team": "net"}},
                })),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422, "{}", err.message);
    assert!(
        err.message.contains("spec: Required value"),
        "{}",
        err.message
    );
}

#[test]
fn kubectl_server_side_apply_of_only_labels_keeps_the_spec() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write manifest");
        path.to_string_lossy().into_owned()
    };
    let full = write(
        "a.yaml",
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata:\n  name: platform\n  labels: {tier: platform}\nspec:\n  prefix: fd20::/20\n",
    );
    let labels = write(
        "b.yaml",
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata:\n  name: platform\n  labels: {team: net}\n",
    );
    let clash = write(
        "b-clash.yaml",
        "apiVersion: ipam.miloapis.com/v1alpha1\nkind: IPPrefix\nmetadata:\n  name: platform\n  labels: {tier: other}\n",
    );
    let ssa = |manager: &str, file: &str| {
        server.kubectl(&[
            "apply",
            "--server-side",
            &format!("--field-manager={manager}"),
            "-f",
            file,
        ])
    };

    let out = ssa("a", &full);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ssa("b", &labels);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("serverside-applied"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let obj: Value = serde_json::from_str(&server.kubectl_ok(&[
        "get",
        "ipp",
        "platform",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    assert_eq!(obj["spec"]["prefix"], "fd20::/20");
    assert_eq!(
        obj["metadata"]["labels"],
        json!({"tier": "platform", "team": "net"})
    );
    let managers: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert!(
        managers.contains(&"a") && managers.contains(&"b"),
        "{managers:?}"
    );

    let out = ssa("b", &clash);
    assert!(!out.status.success(), "a conflicting apply succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict with \"a\"") && err.contains(".metadata.labels.tier"),
        "{err}"
    );
}
