use super::*;

fn resource<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {list}"))
}

#[test]
fn resource_list_serves_both_kinds_with_short_names_categories_and_verbs() {
    let list = api_resource_list();
    assert_eq!(list["kind"], "APIResourceList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["groupVersion"], "ipam.miloapis.com/v1alpha1");

    let prefixes = resource(&list, "ipprefixes");
    assert_eq!(prefixes["kind"], "IPPrefix");
    assert_eq!(prefixes["singularName"], "ipprefix");
    assert_eq!(prefixes["namespaced"], false);
    assert_eq!(prefixes["shortNames"], json!(["ipp"]));
    assert_eq!(prefixes["categories"], json!(["ipam"]));
    assert_eq!(
        prefixes["verbs"],
        json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ])
    );
    assert!(prefixes["storageVersionHash"].as_str().unwrap().len() == 12);

    let claims = resource(&list, "ipprefixclaims");
    assert_eq!(claims["kind"], "IPPrefixClaim");
    assert_eq!(claims["singularName"], "ipprefixclaim");
    assert_eq!(claims["namespaced"], true);
    assert_eq!(claims["shortNames"], json!(["ippc"]));
    assert_eq!(claims["categories"], json!(["ipam"]));
    assert_eq!(claims["verbs"], prefixes["verbs"]);
    assert_ne!(claims["storageVersionHash"], prefixes["storageVersionHash"]);
}

#[test]
fn resource_list_has_status_subresources() {
    let list = api_resource_list();
    assert_eq!(list["resources"].as_array().unwrap().len(), 4);
    for (name, kind, namespaced) in [
        ("ipprefixes/status", "IPPrefix", false),
        ("ipprefixclaims/status", "IPPrefixClaim", true),
    ] {
        let status = resource(&list, name);
        assert_eq!(status["kind"], kind);
        assert_eq!(status["namespaced"], namespaced);
        assert_eq!(status["verbs"], json!(["get", "patch", "update"]));
    }
}

#[test]
fn storage_version_hash_matches_what_kubernetes_serves() {
    // The values a real kube-apiserver lists for pods and deployments.
    assert_eq!(storage_version_hash("", "v1", "Pod"), "xPOwRZ+Yhw8=");
    assert_eq!(
        storage_version_hash("apps", "v1", "Deployment"),
        "8aSe+NMegvE="
    );
}

#[test]
fn group_list_and_group_prefer_v1alpha1() {
    let list = api_group_list();
    assert_eq!(list["kind"], "APIGroupList");
    let groups = list["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "ipam.miloapis.com");
    assert_eq!(
        groups[0]["preferredVersion"],
        json!({"groupVersion": "ipam.miloapis.com/v1alpha1", "version": "v1alpha1"})
    );
    assert_eq!(groups[0]["versions"][0]["version"], "v1alpha1");

    let group = api_group();
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["apiVersion"], "v1");
    assert_eq!(group["name"], "ipam.miloapis.com");
    assert_eq!(group["preferredVersion"], groups[0]["preferredVersion"]);
}

#[test]
fn legacy_api_has_no_versions_so_clients_move_on_to_apis() {
    let v = api_versions();
    assert_eq!(v["kind"], "APIVersions");
    assert_eq!(v["versions"], json!([]));
    assert!(v["serverAddressByClientCIDRs"].is_array());
}

#[test]
fn version_reports_the_crate_version() {
    let v = version();
    assert_eq!(v["major"], "1");
    assert_eq!(v["minor"], "0");
    assert_eq!(v["gitVersion"], format!("v{}", env!("CARGO_PKG_VERSION")));
    let platform = v["platform"].as_str().unwrap();
    assert!(platform.contains('/'), "{platform}");
    for key in [
        "gitCommit",
        "gitTreeState",
        "buildDate",
        "goVersion",
        "compiler",
    ] {
        assert!(v[key].is_string(), "{key}");
    }
}

#[test]
fn aggregated_discovery_v2_describes_group_resources_and_status() {
    let doc = aggregated_discovery();
    assert_eq!(doc["kind"], "APIGroupDiscoveryList");
    assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");
    let items = doc["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "ipam.miloapis.com");
    let version = &items[0]["versions"][0];
    assert_eq!(version["version"], "v1alpha1");
    assert_eq!(version["freshness"], "Current");

    let resources = version["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 2);
    let find = |name: &str| resources.iter().find(|r| r["resource"] == name).unwrap();

    let prefixes = find("ipprefixes");
    assert_eq!(prefixes["scope"], "Cluster");
    assert_eq!(prefixes["singularResource"], "ipprefix");
    assert_eq!(
        prefixes["responseKind"],
        json!({"group": "ipam.miloapis.com", "version": "v1alpha1", "kind": "IPPrefix"})
    );
    assert_eq!(prefixes["shortNames"], json!(["ipp"]));
    assert_eq!(prefixes["categories"], json!(["ipam"]));
    assert_eq!(prefixes["verbs"].as_array().unwrap().len(), 8);

    let claims = find("ipprefixclaims");
    assert_eq!(claims["scope"], "Namespaced");
    assert_eq!(claims["singularResource"], "ipprefixclaim");
    assert_eq!(claims["shortNames"], json!(["ippc"]));
    let status = &claims["subresources"][0];
    assert_eq!(status["subresource"], "status");
    assert_eq!(status["responseKind"]["kind"], "IPPrefixClaim");
    assert_eq!(status["verbs"], json!(["get", "patch", "update"]));
}

#[test]
fn aggregated_discovery_v2beta1_differs_only_in_api_version() {
    let mut beta = aggregated_discovery_for("apidiscovery.k8s.io/v2beta1");
    assert_eq!(beta["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    beta["apiVersion"] = "apidiscovery.k8s.io/v2".into();
    assert_eq!(beta, aggregated_discovery());
}

#[test]
fn aggregated_content_type_names_v2_list() {
    assert_eq!(
        AGGREGATED_DISCOVERY_CONTENT_TYPE,
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
}
