use super::*;

const V2_PREFIX: &str = "#/definitions/";
const V3_PREFIX: &str = "#/components/schemas/";

fn name(kind: &str) -> String {
    format!("com.miloapis.ipam.v1alpha1.{kind}")
}

/// Every `$ref` in `doc`, with the JSON path where it appears.
fn refs(doc: &Value) -> Vec<(String, String)> {
    fn go(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if k == "$ref" {
                        out.push((
                            at.to_string(),
                            child.as_str().unwrap_or("<not a string>").to_string(),
                        ));
                    } else {
                        go(child, &format!("{at}/{k}"), out);
                    }
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    go(child, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    go(doc, "", &mut out);
    out
}

/// Asserts every `$ref` is local, points under `prefix`, and resolves in `doc`.
fn assert_refs_resolve(doc: &Value, prefix: &str) {
    let all = refs(doc);
    assert!(all.len() > 50, "expected many refs, found {}", all.len());
    for (at, reference) in all {
        assert!(
            reference.starts_with(prefix),
            "{at}: {reference} is not under {prefix}"
        );
        let pointer = &reference[1..];
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: {reference} does not resolve"
        );
    }
}

/// Every object in `doc` (schemas, operations, parameters).
fn objects(doc: &Value) -> Vec<&serde_json::Map<String, Value>> {
    fn go<'a>(v: &'a Value, out: &mut Vec<&'a serde_json::Map<String, Value>>) {
        match v {
            Value::Object(m) => {
                out.push(m);
                m.values().for_each(|c| go(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| go(c, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    go(doc, &mut out);
    out
}

fn assert_no_json_schema_only_constructs(schemas: &Value) {
    for obj in objects(schemas) {
        assert!(!obj.contains_key("nullable"), "nullable in {obj:?}");
        assert!(!obj.contains_key("$schema"));
        assert!(!obj.contains_key("const"));
        if let Some(t) = obj.get("type") {
            // A property *named* `type` holds a schema object; the keyword holds a string.
            assert!(t.is_string() || t.is_object(), "type {t} in {obj:?}");
            assert_ne!(t, "null");
        }
        for key in ["anyOf", "oneOf"] {
            assert!(!obj.contains_key(key), "{key} in {obj:?}");
        }
        if let Some(Value::String(format)) = obj.get("format") {
            assert!(
                [
                    "int32",
                    "int64",
                    "date-time",
                    "byte",
                    "double",
                    "float",
                    "int-or-string"
                ]
                .contains(&format.as_str()),
                "format {format}"
            );
        }
    }
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!([{"group": group, "kind": kind, "version": version}])
}

#[test]
fn v2_defines_kinds_and_lists_with_group_version_kind() {
    let doc = openapi_v2();
    assert_eq!(doc["swagger"], "2.0");
    let defs = &doc["definitions"];
    for kind in [
        "IPPrefix",
        "IPPrefixList",
        "IPPrefixClaim",
        "IPPrefixClaimList",
    ] {
        assert_eq!(
            defs[name(kind)]["x-kubernetes-group-version-kind"],
            gvk("ipam.miloapis.com", "v1alpha1", kind),
            "{kind}"
        );
        assert!(
            !defs[name(kind)]["description"].as_str().unwrap().is_empty(),
            "{kind}"
        );
    }
    let prefix = &defs[name("IPPrefix")]["properties"];
    assert_eq!(
        prefix["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert_eq!(
        prefix["spec"]["$ref"],
        format!("{V2_PREFIX}{}", name("IPPrefixSpec"))
    );
    assert_eq!(
        prefix["status"]["$ref"],
        format!("{V2_PREFIX}{}", name("IPPrefixStatus"))
    );
    assert_eq!(prefix["apiVersion"]["type"], "string");
    let list = &defs[name("IPPrefixClaimList")]["properties"];
    assert_eq!(
        list["items"]["items"]["$ref"],
        format!("{V2_PREFIX}{}", name("IPPrefixClaim"))
    );
    assert_eq!(
        list["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
    );
}

#[test]
fn v2_includes_the_meta_definitions_it_references() {
    let defs = &openapi_v2()["definitions"];
    for meta in [
        "ObjectMeta",
        "ListMeta",
        "LabelSelector",
        "LabelSelectorRequirement",
        "Condition",
        "Time",
        "ManagedFieldsEntry",
        "OwnerReference",
        "FieldsV1",
        "Status",
        "DeleteOptions",
        "WatchEvent",
        "Patch",
    ] {
        let def = &defs[format!("io.k8s.apimachinery.pkg.apis.meta.v1.{meta}")];
        assert!(def.is_object(), "{meta} missing");
        assert!(def["description"].is_string(), "{meta} has no description");
    }
    assert_eq!(
        defs["io.k8s.apimachinery.pkg.apis.meta.v1.Time"]["format"],
        "date-time"
    );
}

#[test]
fn v2_spec_fields_keep_their_types_and_descriptions() {
    let defs = &openapi_v2()["definitions"];
    let claim_spec = &defs[name("IPPrefixClaimSpec")]["properties"];
    assert_eq!(claim_spec["prefixLength"]["type"], "integer");
    assert_eq!(claim_spec["prefixLength"]["format"], "int32");
    assert!(claim_spec["prefixLength"]["description"]
        .as_str()
        .unwrap()
        .contains("length"));
    assert_eq!(
        claim_spec["parentSelector"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"
    );
    assert!(claim_spec["parentSelector"]["description"].is_string());
    assert_eq!(
        claim_spec["childPrefixTemplate"]["$ref"],
        format!("{V2_PREFIX}{}", name("ChildPrefixTemplate"))
    );
    assert_eq!(
        claim_spec["reclaimPolicy"]["enum"],
        json!(["Delete", "Retain"])
    );
    assert_eq!(claim_spec["ipFamily"]["enum"], json!(["IPv4", "IPv6"]));
    assert_eq!(claim_spec["prefix"]["type"], "string");

    let template = &defs[name("ChildPrefixTemplate")]["properties"];
    assert_eq!(
        template["spec"]["$ref"],
        format!("{V2_PREFIX}{}", name("TemplateSpec"))
    );
    assert_eq!(
        defs[name("TemplateMetadata")]["properties"]["labels"]["additionalProperties"]["type"],
        "string"
    );

    let prefix_spec = &defs[name("IPPrefixSpec")];
    assert_eq!(prefix_spec["required"], json!(["prefix"]));
    assert_eq!(
        prefix_spec["properties"]["exclude"]["items"]["type"],
        "string"
    );
    assert_eq!(
        defs[name("ReserveSpec")]["properties"]["leading"]["format"],
        "int64"
    );
    let prefix_status = &defs[name("IPPrefixStatus")]["properties"];
    assert_eq!(
        prefix_status["phase"]["enum"],
        json!(["Available", "Bound", "Released"])
    );
    assert_eq!(prefix_status["largestFreePrefixLength"]["format"], "int32");
    assert_eq!(
        defs[name("IPPrefixClaimStatus")]["properties"]["conditions"]["items"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Condition"
    );
}

#[test]
fn v2_schemas_use_only_swagger2_constructs() {
    assert_no_json_schema_only_constructs(&openapi_v2()["definitions"]);
}

#[test]
fn v2_every_ref_resolves() {
    assert_refs_resolve(&openapi_v2(), V2_PREFIX);
}

#[test]
fn v3_every_ref_resolves() {
    assert_refs_resolve(&openapi_v3_group_version(), V3_PREFIX);
}

#[test]
fn v3_schemas_use_only_openapi3_constructs() {
    let doc = openapi_v3_group_version();
    assert_no_json_schema_only_constructs(&doc["components"]["schemas"]);
    // OpenAPI 3.0 ignores siblings of $ref; a described reference is wrapped in allOf.
    for obj in objects(&doc["components"]["schemas"]) {
        if obj.contains_key("$ref") {
            assert_eq!(obj.len(), 1, "$ref with siblings: {obj:?}");
        }
    }
}

#[test]
fn v3_defines_kinds_with_group_version_kind_and_described_spec_fields() {
    let doc = openapi_v3_group_version();
    assert_eq!(doc["openapi"], "3.0.0");
    let schemas = &doc["components"]["schemas"];
    for kind in [
        "IPPrefix",
        "IPPrefixList",
        "IPPrefixClaim",
        "IPPrefixClaimList",
    ] {
        assert_eq!(
            schemas[name(kind)]["x-kubernetes-group-version-kind"],
            gvk("ipam.miloapis.com", "v1alpha1", kind)
        );
    }
    let spec = &schemas[name("IPPrefixClaim")]["properties"]["spec"];
    assert_eq!(
        spec["allOf"],
        json!([{"$ref": format!("{V3_PREFIX}{}", name("IPPrefixClaimSpec"))}])
    );
    assert!(spec["description"].is_string());
    let claim_spec = &schemas[name("IPPrefixClaimSpec")]["properties"];
    assert_eq!(claim_spec["prefixLength"]["type"], "integer");
    assert_eq!(
        claim_spec["parentSelector"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"
    );
    assert!(claim_spec["childPrefixTemplate"]["allOf"][0]["$ref"]
        .as_str()
        .unwrap()
        .ends_with("ChildPrefixTemplate"));
}

/// The operations of `doc` as (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method != "parameters" {
                out.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    out
}

fn query_params(op: &Value) -> Vec<String> {
    op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn v3_every_patch_of_each_kind_offers_field_validation() {
    // kubectl's QueryParamVerifierV3 takes the first PATCH operation whose
    // x-kubernetes-group-version-kind matches, so every one of them must carry the parameter.
    let doc = openapi_v3_group_version();
    for kind in ["IPPrefix", "IPPrefixClaim"] {
        let patches: Vec<_> = operations(&doc)
            .into_iter()
            .filter(|(_, m, op)| {
                m == "patch" && op["x-kubernetes-group-version-kind"]["kind"] == kind
            })
            .collect();
        assert_eq!(patches.len(), 2, "{kind}: main resource and status");
        for (path, _, op) in patches {
            assert_eq!(
                op["x-kubernetes-group-version-kind"],
                json!({"group": "ipam.miloapis.com", "kind": kind, "version": "v1alpha1"})
            );
            let params = query_params(&op);
            for p in ["fieldValidation", "fieldManager", "dryRun", "force"] {
                assert!(params.contains(&p.to_string()), "{path}: no {p}");
            }
            let content = op["requestBody"]["content"].as_object().unwrap();
            assert!(
                content.contains_key("application/apply-patch+yaml"),
                "{path}"
            );
            assert!(
                content.contains_key("application/merge-patch+json"),
                "{path}"
            );
        }
    }
}

#[test]
fn writes_offer_field_validation_dry_run_and_field_manager_in_both_documents() {
    for doc in [openapi_v2(), openapi_v3_group_version()] {
        for (path, method, op) in operations(&doc) {
            if ["post", "put", "patch"].contains(&method.as_str()) {
                let params = query_params(&op);
                for p in ["fieldValidation", "dryRun", "fieldManager"] {
                    assert!(params.contains(&p.to_string()), "{method} {path}: no {p}");
                }
            }
        }
    }
}

#[test]
fn paths_cover_every_verb_of_both_kinds() {
    let doc = openapi_v2();
    let base = "/apis/ipam.miloapis.com/v1alpha1";
    let actions: Vec<(String, String, String)> = operations(&doc)
        .into_iter()
        .map(|(path, method, op)| {
            (
                path,
                method,
                op["x-kubernetes-action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let has = |path: String, method: &str, action: &str| {
        assert!(
            actions.contains(&(path.clone(), method.to_string(), action.to_string())),
            "{method} {path} ({action}) missing"
        );
    };
    for (collection, watch) in [
        (
            format!("{base}/ipprefixes"),
            format!("{base}/watch/ipprefixes"),
        ),
        (
            format!("{base}/namespaces/{{namespace}}/ipprefixclaims"),
            format!("{base}/watch/namespaces/{{namespace}}/ipprefixclaims"),
        ),
    ] {
        has(collection.clone(), "get", "list");
        has(collection.clone(), "post", "post");
        has(collection.clone(), "delete", "deletecollection");
        let item = format!("{collection}/{{name}}");
        has(item.clone(), "get", "get");
        has(item.clone(), "put", "put");
        has(item.clone(), "patch", "patch");
        has(item.clone(), "delete", "delete");
        let status = format!("{item}/status");
        has(status.clone(), "get", "get");
        has(status.clone(), "put", "put");
        has(status, "patch", "patch");
        has(watch.clone(), "get", "watchlist");
        has(format!("{watch}/{{name}}"), "get", "watch");
    }
    has(format!("{base}/ipprefixclaims"), "get", "list");
    has(format!("{base}/watch/ipprefixclaims"), "get", "watchlist");

    let list = &doc["paths"][format!("{base}/ipprefixes")]["get"];
    assert_eq!(list["operationId"], "listIpamMiloapisComV1alpha1IPPrefix");
    assert_eq!(list["tags"], json!(["ipamMiloapisCom_v1alpha1"]));
    assert_eq!(
        list["responses"]["200"]["schema"]["$ref"],
        format!("{V2_PREFIX}{}", name("IPPrefixList"))
    );
    for p in [
        "labelSelector",
        "fieldSelector",
        "limit",
        "continue",
        "watch",
        "resourceVersion",
    ] {
        assert!(
            query_params(list).contains(&p.to_string()),
            "list has no {p}"
        );
    }
    let create = &doc["paths"][format!("{base}/namespaces/{{namespace}}/ipprefixclaims")]["post"];
    assert_eq!(
        create["operationId"],
        "createIpamMiloapisComV1alpha1NamespacedIPPrefixClaim"
    );
    assert_eq!(create["parameters"][0]["in"], "body");
    assert_eq!(
        doc["paths"][format!("{base}/namespaces/{{namespace}}/ipprefixclaims/{{name}}")]
            ["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["namespace", "name"]
    );
}

#[test]
fn v3_responses_and_bodies_carry_schemas_by_content_type() {
    let doc = openapi_v3_group_version();
    let get = &doc["paths"]["/apis/ipam.miloapis.com/v1alpha1/ipprefixes/{name}"]["get"];
    assert_eq!(
        get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        format!("{V3_PREFIX}{}", name("IPPrefix"))
    );
    let path_param =
        &doc["paths"]["/apis/ipam.miloapis.com/v1alpha1/ipprefixes/{name}"]["parameters"][0];
    assert_eq!(path_param["name"], "name");
    assert_eq!(path_param["required"], true);
    assert_eq!(path_param["schema"]["type"], "string");
    let put = &doc["paths"]["/apis/ipam.miloapis.com/v1alpha1/ipprefixes/{name}"]["put"];
    assert_eq!(
        put["requestBody"]["content"]["*/*"]["schema"]["$ref"],
        format!("{V3_PREFIX}{}", name("IPPrefix"))
    );
}

#[test]
fn v3_index_points_at_the_group_version_with_a_stable_content_hash() {
    let index = openapi_v3_index();
    let url = index["paths"]["apis/ipam.miloapis.com/v1alpha1"]["serverRelativeURL"]
        .as_str()
        .unwrap();
    let hash = openapi_v3_hash();
    assert_eq!(
        url,
        format!("/openapi/v3/apis/ipam.miloapis.com/v1alpha1?hash={hash}")
    );
    assert_eq!(hash.len(), 128);
    assert!(hash
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
    // Stable: recomputing from the document gives the same value.
    let bytes = serde_json::to_vec(&openapi_v3_group_version()).unwrap();
    let again: String = Sha512::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(hash, again);
}

#[test]
fn v3_group_version_path_names_our_group_version() {
    use crate::api::{GROUP, VERSION};
    assert_eq!(V3_GROUP_VERSION_PATH, format!("apis/{GROUP}/{VERSION}"));
}

#[test]
fn documents_are_cached_and_identical_across_calls() {
    assert_eq!(openapi_v2(), openapi_v2());
    assert_eq!(openapi_v3_group_version(), openapi_v3_group_version());
    assert_eq!(openapi_v3_index(), openapi_v3_index());
}

#[test]
fn every_field_of_our_types_is_described_for_kubectl_explain() {
    let doc = openapi_v2();
    for (def_name, def) in doc["definitions"].as_object().unwrap() {
        if !def_name.starts_with("com.miloapis.ipam.v1alpha1.") {
            continue;
        }
        // A type's own description is dropped where every field of that type has one
        // (`drop_repeated_descriptions`); the fields are what `kubectl explain` shows.
        let mut described = Vec::new();
        for (field, schema) in def["properties"].as_object().unwrap() {
            described.push((format!("{def_name}.{field}"), &schema["description"]));
        }
        for (what, description) in described {
            let text = description
                .as_str()
                .unwrap_or_else(|| panic!("{what} has no description"));
            assert!(!text.trim().is_empty(), "{what}");
            // Doc-comment line breaks are joined; only paragraph breaks remain.
            assert!(!text.replace("\n\n", "").contains('\n'), "{what}: {text:?}");
        }
    }
}

/// `kubectl explain <resource>` (OpenAPI v3): find the GVK on an operation of the resource's
/// path, then the schema whose `x-kubernetes-group-version-kind` contains exactly that GVK.
#[test]
fn kubectl_explain_finds_each_kind_from_its_resource_path() {
    let doc = openapi_v3_group_version();
    for (resource, kind) in [
        ("ipprefixes", "IPPrefix"),
        ("ipprefixclaims", "IPPrefixClaim"),
    ] {
        let prefix = "/apis/ipam.miloapis.com/v1alpha1";
        let search = [
            format!("{prefix}/{resource}"),
            format!("{prefix}/{resource}/{{name}}"),
            format!("{prefix}/namespaces/{{namespace}}/{resource}"),
            format!("{prefix}/namespaces/{{namespace}}/{resource}/{{name}}"),
        ];
        let found = search.iter().find_map(|path| {
            let item = doc["paths"].get(path)?;
            ["get", "post", "put", "patch", "delete"]
                .iter()
                .find_map(|m| {
                    item.get(*m)?
                        .get("x-kubernetes-group-version-kind")
                        .cloned()
                })
        });
        let op_gvk = found.unwrap_or_else(|| panic!("{resource}: no GVK on its paths"));
        assert_eq!(op_gvk["kind"], kind);
        let schema = doc["components"]["schemas"]
            .as_object()
            .unwrap()
            .values()
            .find(|s| {
                s["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|l| l.contains(&op_gvk))
            })
            .unwrap_or_else(|| panic!("{resource}: no schema for {op_gvk}"));
        for field in ["apiVersion", "kind", "metadata", "spec", "status"] {
            assert!(
                schema["properties"][field].is_object(),
                "{resource}.{field}"
            );
        }
    }
}

/// `kubectl explain ipprefix.status` prints the field's description and then its type's:
/// a type reached only through described fields has none, so the text appears once.
#[test]
fn a_described_fields_type_does_not_repeat_the_description() {
    let doc = openapi_v2();
    let defs = doc["definitions"].as_object().unwrap();
    let prefix = &defs["com.miloapis.ipam.v1alpha1.IPPrefix"];
    assert!(prefix["properties"]["status"]["description"].is_string());
    for ty in [
        "IPPrefixStatus",
        "IPPrefixSpec",
        "IPPrefixClaimStatus",
        "IPPrefixClaimSpec",
    ] {
        let def = &defs[&format!("com.miloapis.ipam.v1alpha1.{ty}")];
        assert!(def["description"].is_null(), "{ty}: {}", def["description"]);
    }
    // The kinds themselves keep theirs (`kubectl explain ipprefix`).
    assert!(prefix["description"].is_string());
}
