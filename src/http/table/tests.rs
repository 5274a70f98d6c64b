use super::*;
use crate::api::{
    ClaimReference, IPPrefixClaimSpec, IPPrefixClaimStatus, IPPrefixSpec, IPPrefixStatus,
    PrefixReference,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const NOW: &str = "2025-06-01T12:00:00Z";

fn created(meta: &mut ObjectMeta, at: &str) {
    meta.creation_timestamp = Some(Time(ts(at)));
}

fn root_prefix() -> IPPrefix {
    let mut p = IPPrefix::new(
        "platform-ula",
        IPPrefixSpec {
            prefix: "fd20::/20".into(),
            ..Default::default()
        },
    );
    p.metadata.uid = Some("u-1".into());
    p.metadata.resource_version = Some("7".into());
    created(&mut p.metadata, "2025-06-01T11:57:00Z");
    p.status = Some(IPPrefixStatus {
        phase: Some("Available".into()),
        ip_family: Some("IPv6".into()),
        utilization: Some("12.50%".into()),
        largest_free_prefix_length: Some(21),
        children: Some(3),
        ..Default::default()
    });
    p
}

fn bound_claim() -> IPPrefixClaim {
    let mut c = IPPrefixClaim::new_with_length("project-a", "web-0", "dfw-subnet", 128);
    created(&mut c.metadata, "2025-05-29T08:00:00Z");
    c.status = Some(IPPrefixClaimStatus {
        phase: Some("Bound".into()),
        prefix: Some("fd20:0:0:1::/128".into()),
        address: Some("fd20:0:0:1::".into()),
        ip_family: Some("IPv6".into()),
        prefix_ref: Some(PrefixReference::new("project-a.web-0")),
        parent_ref: Some(PrefixReference::new("dfw-subnet")),
        conditions: vec![],
    });
    c
}

/// Cells by column name, as `kubectl get -o wide` would line them up.
fn by_name<K: TableRow>(item: &K) -> Vec<(String, Value)> {
    let defs = K::column_definitions();
    let cells = item.cells(ts(NOW));
    assert_eq!(defs.len(), cells.len(), "one cell per column");
    defs.iter()
        .map(|d| d["name"].as_str().unwrap().to_uppercase())
        .zip(cells)
        .collect()
}

fn cell<K: TableRow>(item: &K, column: &str) -> Value {
    by_name(item)
        .into_iter()
        .find(|(n, _)| n == column)
        .unwrap_or_else(|| panic!("no column {column}"))
        .1
}

fn headers<K: TableRow>(priority: i64) -> Vec<String> {
    K::column_definitions()
        .iter()
        .filter(|d| d["priority"] == priority)
        .map(|d| d["name"].as_str().unwrap().to_uppercase())
        .collect()
}

#[test]
fn prefix_columns_are_the_contract_with_wide_ones_at_priority_1() {
    assert_eq!(
        headers::<IPPrefix>(0),
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
    assert_eq!(
        headers::<IPPrefix>(1),
        ["FAMILY", "LARGEST-FREE", "CHILDREN", "RECLAIM"]
    );
}

#[test]
fn claim_columns_are_the_contract_with_wide_ones_at_priority_1() {
    assert_eq!(
        headers::<IPPrefixClaim>(0),
        ["NAME", "PREFIX", "PARENT", "PHASE", "AGE"]
    );
    assert_eq!(
        headers::<IPPrefixClaim>(1),
        ["FAMILY", "LENGTH", "IPPREFIX", "RECLAIM"]
    );
}

#[test]
fn column_definitions_have_every_field_and_name_is_formatted_as_name() {
    for defs in [
        IPPrefix::column_definitions(),
        IPPrefixClaim::column_definitions(),
    ] {
        for d in &defs {
            for key in ["name", "type", "format", "description", "priority"] {
                assert!(!d[key].is_null(), "{key} missing in {d}");
            }
            assert!(["string", "integer", "date"].contains(&d["type"].as_str().unwrap()));
            assert!(!d["description"].as_str().unwrap().is_empty());
        }
        assert_eq!(defs[0]["format"], "name");
    }
    let children = IPPrefix::column_definitions()
        .into_iter()
        .find(|d| d["name"] == "Children")
        .unwrap();
    assert_eq!(children["type"], "integer");
}

#[test]
fn root_prefix_row_shows_no_parent_no_claim_and_its_utilization() {
    let p = root_prefix();
    assert_eq!(
        by_name(&p),
        vec![
            ("NAME".into(), json!("platform-ula")),
            ("PREFIX".into(), json!("fd20::/20")),
            ("PARENT".into(), json!("<none>")),
            ("PHASE".into(), json!("Available")),
            ("CLAIM".into(), json!("<none>")),
            ("UTILIZATION".into(), json!("12.50%")),
            ("AGE".into(), json!("3m")),
            ("FAMILY".into(), json!("IPv6")),
            ("LARGEST-FREE".into(), json!("/21")),
            ("CHILDREN".into(), json!(3)),
            ("RECLAIM".into(), json!("<none>")),
        ]
    );
}

#[test]
fn bound_prefix_row_shows_parent_and_claim_as_namespace_slash_name() {
    let mut p = root_prefix();
    p.spec.prefix = "fd20:0:0:1::/64".into();
    p.spec.parent_ref = Some(PrefixReference::new("dfw"));
    p.spec.claim_ref = Some(ClaimReference {
        namespace: "project-a".into(),
        name: "subnet-1".into(),
        uid: None,
    });
    p.spec.reclaim_policy = Some("Retain".into());
    p.status.as_mut().unwrap().phase = Some("Bound".into());
    assert_eq!(cell(&p, "PARENT"), "dfw");
    assert_eq!(cell(&p, "CLAIM"), "project-a/subnet-1");
    assert_eq!(cell(&p, "PHASE"), "Bound");
    assert_eq!(cell(&p, "RECLAIM"), "Retain");
}

#[test]
fn full_prefix_has_no_largest_free_and_family_falls_back_to_the_prefix() {
    let mut p = root_prefix();
    p.spec.prefix = "10.0.0.0/8".into();
    p.status = Some(IPPrefixStatus {
        phase: Some("Available".into()),
        ..Default::default()
    });
    assert_eq!(cell(&p, "LARGEST-FREE"), "<none>");
    assert_eq!(cell(&p, "FAMILY"), "IPv4");
    assert_eq!(cell(&p, "UTILIZATION"), "<none>");
    assert_eq!(cell(&p, "CHILDREN"), "<none>");
}

#[test]
fn bound_claim_row_shows_prefix_parent_phase_and_age() {
    let c = bound_claim();
    assert_eq!(
        by_name(&c),
        vec![
            ("NAME".into(), json!("web-0")),
            ("PREFIX".into(), json!("fd20:0:0:1::/128")),
            ("PARENT".into(), json!("dfw-subnet")),
            ("PHASE".into(), json!("Bound")),
            ("AGE".into(), json!("3d4h")),
            ("FAMILY".into(), json!("IPv6")),
            ("LENGTH".into(), json!(128)),
            ("IPPREFIX".into(), json!("project-a.web-0")),
            ("RECLAIM".into(), json!("Delete")),
        ]
    );
}

#[test]
fn claim_by_selector_shows_the_parent_actually_used() {
    let mut c = bound_claim();
    c.spec.parent_ref = None;
    c.status.as_mut().unwrap().parent_ref = Some(PrefixReference::new("dfw-2"));
    assert_eq!(cell(&c, "PARENT"), "dfw-2");
}

#[test]
fn unbound_static_claim_takes_length_and_family_from_spec_prefix() {
    let mut c = IPPrefixClaim::new(
        "static",
        IPPrefixClaimSpec {
            prefix: Some("10.1.2.0/24".into()),
            parent_ref: Some(PrefixReference::new("site")),
            reclaim_policy: Some("Retain".into()),
            ..Default::default()
        },
    );
    c.metadata.namespace = Some("ns".into());
    assert_eq!(cell(&c, "PREFIX"), "<none>");
    assert_eq!(cell(&c, "PARENT"), "site");
    assert_eq!(cell(&c, "PHASE"), "<none>");
    assert_eq!(cell(&c, "AGE"), "<unknown>");
    assert_eq!(cell(&c, "LENGTH"), 24);
    assert_eq!(cell(&c, "FAMILY"), "IPv4");
    assert_eq!(cell(&c, "IPPREFIX"), "<none>");
    assert_eq!(cell(&c, "RECLAIM"), "Retain");
}

#[test]
fn human_duration_matches_kubernetes() {
    let cases = [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (5, "5s"),
        (59, "59s"),
        (119, "119s"),
        (120, "2m"),
        (150, "2m30s"),
        (599, "9m59s"),
        (600, "10m"),
        (65 * 60, "65m"),
        (179 * 60, "179m"),
        (3 * 3600 + 5 * 60, "3h5m"),
        (4 * 3600, "4h"),
        (8 * 3600, "8h"),
        (47 * 3600 + 59 * 60, "47h"),
        (48 * 3600, "2d"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (3 * 86400, "3d"),
        (8 * 86400, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (3 * 365 * 86400 + 45 * 86400, "3y45d"),
        (8 * 365 * 86400, "8y"),
        (20 * 365 * 86400 + 100 * 86400, "20y"),
    ];
    for (secs, want) in cases {
        assert_eq!(
            human_duration(SignedDuration::from_secs(secs)),
            want,
            "{secs}s"
        );
    }
    // Fractions truncate, as Go's int(d.Seconds()).
    assert_eq!(human_duration(SignedDuration::from_millis(59_999)), "59s");
    assert_eq!(human_duration(SignedDuration::from_millis(-1_500)), "0s");
}

#[test]
fn include_object_parses_the_three_values_and_defaults_to_metadata() {
    assert_eq!(IncludeObject::parse(None).unwrap(), IncludeObject::Metadata);
    assert_eq!(
        IncludeObject::parse(Some("")).unwrap(),
        IncludeObject::Metadata
    );
    assert_eq!(
        IncludeObject::parse(Some("Metadata")).unwrap(),
        IncludeObject::Metadata
    );
    assert_eq!(
        IncludeObject::parse(Some("None")).unwrap(),
        IncludeObject::None
    );
    assert_eq!(
        IncludeObject::parse(Some("Object")).unwrap(),
        IncludeObject::Object
    );
    for junk in ["object", "All", "true"] {
        let err = IncludeObject::parse(Some(junk)).unwrap_err();
        assert_eq!(err.code(), http::StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains(junk), "{err}");
    }
}

#[test]
fn table_has_kind_columns_rows_and_list_metadata() {
    let t = table(
        &[root_prefix()],
        Some("42"),
        Some("tok"),
        IncludeObject::Metadata,
        ts(NOW),
    );
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(
        t["metadata"],
        json!({"resourceVersion": "42", "continue": "tok"})
    );
    assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 11);
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["cells"][0], "platform-ula");
    assert_eq!(rows[0]["cells"][6], "3m");
}

#[test]
fn table_row_object_follows_include_object() {
    let items = [bound_claim()];
    let now = ts(NOW);

    let meta = table(&items, None, None, IncludeObject::Metadata, now);
    let object = &meta["rows"][0]["object"];
    assert_eq!(object["kind"], "PartialObjectMetadata");
    assert_eq!(object["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(object["metadata"]["name"], "web-0");
    assert_eq!(object["metadata"]["namespace"], "project-a");
    assert!(object.get("spec").is_none());
    assert_eq!(meta["metadata"], json!({}));

    let full = table(&items, None, None, IncludeObject::Object, now);
    let object = &full["rows"][0]["object"];
    assert_eq!(object["kind"], "IPPrefixClaim");
    assert_eq!(object["apiVersion"], "ipam.miloapis.com/v1alpha1");
    assert_eq!(object["spec"]["prefixLength"], 128);
    assert_eq!(object["status"]["prefix"], "fd20:0:0:1::/128");

    let none = table(&items, None, None, IncludeObject::None, now);
    assert!(none["rows"][0].get("object").is_none());
    assert_eq!(none["rows"][0]["cells"][0], "web-0");
}

#[test]
fn empty_table_still_has_columns() {
    let t = table::<IPPrefix>(&[], Some("9"), None, IncludeObject::Metadata, ts(NOW));
    assert_eq!(t["rows"], json!([]));
    assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 11);
    assert_eq!(t["metadata"], json!({"resourceVersion": "9"}));
}

#[test]
fn partial_object_metadata_list_wraps_each_item() {
    let p = root_prefix();
    let c = bound_claim();
    let list = partial_object_metadata_list(&[&p.metadata, &c.metadata], Some("12"), None);
    assert_eq!(list["kind"], "PartialObjectMetadataList");
    assert_eq!(list["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(list["metadata"], json!({"resourceVersion": "12"}));
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["kind"], "PartialObjectMetadata");
    assert_eq!(items[0]["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(items[0]["metadata"]["uid"], "u-1");
    assert_eq!(items[0]["metadata"]["resourceVersion"], "7");
    assert_eq!(items[1]["metadata"]["name"], "web-0");

    let beta = partial_object_metadata_for("meta.k8s.io/v1beta1", &p.metadata);
    assert_eq!(beta["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(beta["metadata"]["name"], "platform-ula");
    assert_eq!(
        partial_object_metadata(&p.metadata)["metadata"]["creationTimestamp"],
        "2025-06-01T11:57:00Z"
    );
}

#[test]
fn partial_object_metadata_written_from_the_object_equals_the_value_form() {
    let claim = bound_claim();
    for version in ["meta.k8s.io/v1", "meta.k8s.io/v1beta1"] {
        let direct: serde_json::Value = serde_json::from_slice(
            &serde_json::to_vec(&PartialObjectMetadata::new(version, &claim.metadata)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            direct,
            partial_object_metadata_for(version, &claim.metadata)
        );
        assert_eq!(direct["metadata"]["name"], "web-0");
        assert_eq!(direct["apiVersion"], version);
    }
}
