//! Schema definitions for the OpenAPI documents, derived from the Rust types with schemars.
//!
//! schemars writes JSON Schema (draft-07 here); Swagger 2.0 and OpenAPI 3.0 accept a subset of it.
//! [`definitions`] produces the Swagger 2.0 form, which is also the common ground: no `null`
//! types, no `anyOf` with null, `$ref` into `#/definitions/`, integer formats `int32`/`int64`.
//! [`to_v3`] then moves the `$ref`s to `#/components/schemas/` and wraps a `$ref` that has
//! siblings (a description) in `allOf`, as Kubernetes' own OpenAPI v3 does.
//!
//! Our own types are named `com.miloapis.ipam.v1alpha1.<Type>`; the Kubernetes types keep the
//! names k8s-openapi gives them (`io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta`, ...), which are
//! the names every Kubernetes document uses.
use crate::api::{
    claim_phase, prefix_phase, IPPrefixClaimSpec, IPPrefixClaimStatus, IPPrefixSpec,
    IPPrefixStatus, IpFamily, ReclaimPolicy, GROUP, VERSION,
};
use crate::http::discovery::{served_kinds, ServedKind};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIResourceList, DeleteOptions, ListMeta, ObjectMeta, Patch, Status, WatchEvent,
};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// The name prefix of our definitions (Kubernetes' reversed-domain convention).
pub const PREFIX: &str = "com.miloapis.ipam.v1alpha1.";
/// The name prefix of the apimachinery meta types.
pub const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

const V2_REF: &str = "#/definitions/";
const V3_REF: &str = "#/components/schemas/";

const API_VERSION_DESCRIPTION: &str = "APIVersion defines the versioned schema of this \
    representation of an object. Servers should convert recognized schemas to the latest internal \
    value, and may reject unrecognized values. More info: \
    https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESCRIPTION: &str = "Kind is a string value representing the REST resource this \
    object represents. Servers may infer this from the endpoint the client submits requests to. \
    Cannot be updated. In CamelCase. More info: \
    https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// The fully qualified definition name of `kind` (`com.miloapis.ipam.v1alpha1.IPPrefix`).
pub fn qualified(kind: &str) -> String {
    format!("{PREFIX}{kind}")
}

/// A Swagger 2.0 reference to the definition `name`.
pub fn v2_ref(name: &str) -> Value {
    json!({ "$ref": format!("{V2_REF}{name}") })
}

/// What a kind's top-level fields say, beyond the types of spec and status.
struct KindText {
    kind: &'static str,
    spec_type: &'static str,
    status_type: &'static str,
    spec: &'static str,
    status: &'static str,
}

const KIND_TEXT: [KindText; 2] = [
    KindText {
        kind: "IPPrefix",
        spec_type: "IPPrefixSpec",
        status_type: "IPPrefixStatus",
        spec: "The block, what it was carved from, what inside it is never handed out, and the claim it is bound to.",
        status: "What the server computed for the block: phase, family, capacity and utilization. Read-only; the counts follow the children shortly after they change (at most every 100 ms per prefix during a burst of claims).",
    },
    KindText {
        kind: "IPPrefixClaim",
        spec_type: "IPPrefixClaimSpec",
        status_type: "IPPrefixClaimStatus",
        spec: "The block requested: a length (or an exact block) and the parent, or parents, to take it from.",
        status: "The block allocated on create and where it came from. Read-only.",
    },
];

/// Every definition both documents need, in Swagger 2.0 form.
pub fn definitions() -> Map<String, Value> {
    let mut generator = SchemaSettings::draft07()
        .with(|s| {
            s.meta_schema = None;
            s.definitions_path = "/definitions".into();
        })
        .into_generator();
    generator.subschema_for::<IPPrefixSpec>();
    generator.subschema_for::<IPPrefixStatus>();
    generator.subschema_for::<IPPrefixClaimSpec>();
    generator.subschema_for::<IPPrefixClaimStatus>();
    generator.subschema_for::<ObjectMeta>();
    generator.subschema_for::<ListMeta>();
    generator.subschema_for::<Status>();
    generator.subschema_for::<DeleteOptions>();
    generator.subschema_for::<Patch>();
    generator.subschema_for::<WatchEvent<()>>();
    generator.subschema_for::<APIResourceList>();

    let mut defs: Map<String, Value> = generator
        .take_definitions(true)
        .into_iter()
        .map(|(name, schema)| (qualify(&name), schema))
        .collect();
    for (name, schema) in defs.iter_mut() {
        walk(schema, &mut to_swagger2);
        if name.starts_with(PREFIX) {
            walk(schema, &mut unwrap_doc_lines);
        }
    }
    for kind in served_kinds() {
        let Some(text) = KIND_TEXT.iter().find(|t| t.kind == kind.kind) else {
            continue;
        };
        let description = defs
            .get(&qualified(text.spec_type))
            .and_then(|s| s.get("description"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        defs.insert(qualified(&kind.kind), kind_schema(kind, text, &description));
        defs.insert(qualified(&kind.list_kind), list_schema(kind));
    }
    add_enums(&mut defs);
    drop_repeated_descriptions(&mut defs);
    defs
}

/// `kubectl explain` prints a field's description followed by its type's: where every field of
/// a type says what it holds, the type's own description would repeat it in other words, so
/// it is dropped.
fn drop_repeated_descriptions(defs: &mut Map<String, Value>) {
    let mut described = std::collections::HashMap::<String, bool>::new();
    for schema in defs.values_mut() {
        walk(schema, &mut |obj| {
            if let Some(Value::String(r)) = obj.get("$ref") {
                let name = r.trim_start_matches(V2_REF).to_string();
                let has = obj.contains_key("description");
                *described.entry(name).or_insert(true) &= has;
            }
        });
    }
    // Kubernetes' own types keep theirs, as in Kubernetes' documents.
    for (name, always) in described.into_iter().filter(|(n, _)| n.starts_with(PREFIX)) {
        if let (true, Some(Value::Object(def))) = (always, defs.get_mut(&name)) {
            def.remove("description");
        }
    }
}

/// Names without a dot are ours; qualified names (k8s-openapi's) are kept.
fn qualify(name: &str) -> String {
    if name.contains('.') {
        name.to_string()
    } else {
        qualified(name)
    }
}

fn gvk(kind: &str) -> Value {
    json!([{ "group": GROUP, "kind": kind, "version": VERSION }])
}

fn with_description(mut reference: Value, description: &str) -> Value {
    if let Some(obj) = reference.as_object_mut() {
        obj.insert("description".into(), description.into());
    }
    reference
}

fn kind_schema(kind: &ServedKind, text: &KindText, description: &str) -> Value {
    json!({
        "description": description,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": { "description": API_VERSION_DESCRIPTION, "type": "string" },
            "kind": { "description": KIND_DESCRIPTION, "type": "string" },
            "metadata": with_description(
                v2_ref(&format!("{META}ObjectMeta")),
                "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
            ),
            "spec": with_description(v2_ref(&qualified(text.spec_type)), text.spec),
            "status": with_description(v2_ref(&qualified(text.status_type)), text.status),
        },
        "x-kubernetes-group-version-kind": gvk(&kind.kind),
    })
}

fn list_schema(kind: &ServedKind) -> Value {
    json!({
        "description": format!("{} is a list of {}.", kind.list_kind, kind.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": { "description": API_VERSION_DESCRIPTION, "type": "string" },
            "items": {
                "description": format!("The {} objects.", kind.kind),
                "type": "array",
                "items": v2_ref(&qualified(&kind.kind)),
            },
            "kind": { "description": KIND_DESCRIPTION, "type": "string" },
            "metadata": with_description(
                v2_ref(&format!("{META}ListMeta")),
                "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
            ),
        },
        "x-kubernetes-group-version-kind": gvk(&kind.list_kind),
    })
}

/// The values the server accepts (or sets) for the string fields that are enums on the wire.
fn add_enums(defs: &mut Map<String, Value>) {
    let reclaim: &[&str] = &ReclaimPolicy::ALL;
    let family: &[&str] = &IpFamily::ALL;
    let prefix_phases: &[&str] = &[
        prefix_phase::AVAILABLE,
        prefix_phase::BOUND,
        prefix_phase::RELEASED,
    ];
    let claim_phases: &[&str] = &[claim_phase::BOUND];
    let fields: [(&str, &str, &[&str]); 7] = [
        ("IPPrefixSpec", "reclaimPolicy", reclaim),
        ("IPPrefixStatus", "ipFamily", family),
        ("IPPrefixStatus", "phase", prefix_phases),
        ("IPPrefixClaimSpec", "reclaimPolicy", reclaim),
        ("IPPrefixClaimSpec", "ipFamily", family),
        ("IPPrefixClaimStatus", "ipFamily", family),
        ("IPPrefixClaimStatus", "phase", claim_phases),
    ];
    for (def, field, values) in fields {
        let property = defs
            .get_mut(&qualified(def))
            .and_then(|d| d.pointer_mut(&format!("/properties/{field}")))
            .and_then(Value::as_object_mut);
        if let Some(property) = property {
            property.insert("enum".into(), json!(values));
        }
    }
}

/// Applies `f` to every schema object inside `schema`, parents before children, so `f` may
/// restructure a schema and have the result visited.
fn walk(schema: &mut Value, f: &mut impl FnMut(&mut Map<String, Value>)) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    f(obj);
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = obj.get_mut(key) {
            walk(child, f);
        }
    }
    for key in ["properties", "patternProperties", "definitions"] {
        if let Some(Value::Object(children)) = obj.get_mut(key) {
            for child in children.values_mut() {
                walk(child, f);
            }
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(children)) = obj.get_mut(key) {
            for child in children {
                walk(child, f);
            }
        }
    }
}

fn is_null_schema(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null")
}

/// One schema object from JSON Schema draft-07 to Swagger 2.0.
fn to_swagger2(obj: &mut Map<String, Value>) {
    obj.remove("$schema");
    // A multi-paragraph doc comment becomes title + description; Kubernetes has only description.
    if let Some(Value::String(title)) = obj.remove("title") {
        let description = match obj.get("description").and_then(Value::as_str) {
            Some(rest) => format!("{title}\n\n{rest}"),
            None => title,
        };
        obj.insert("description".into(), description.into());
    }
    // `type: ["string", "null"]` (an Option) → `type: "string"`.
    if let Some(Value::Array(types)) = obj.get("type") {
        let mut types: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        let single = (types.len() == 1).then(|| types.remove(0));
        match single {
            Some(t) => obj.insert("type".into(), t),
            None => obj.insert("type".into(), Value::Array(types)),
        };
    }
    // `anyOf: [X, {type: null}]` (an optional struct) → X, keeping this object's description.
    for key in ["anyOf", "oneOf"] {
        let Some(Value::Array(variants)) = obj.get(key) else {
            continue;
        };
        let rest: Vec<Value> = variants
            .iter()
            .filter(|v| !is_null_schema(v))
            .cloned()
            .collect();
        if rest.len() == variants.len() {
            continue;
        }
        obj.remove(key);
        match <[Value; 1]>::try_from(rest) {
            Ok([Value::Object(only)]) => {
                for (k, v) in only {
                    obj.entry(k).or_insert(v);
                }
            }
            Ok([other]) => {
                obj.insert(key.into(), Value::Array(vec![other]));
            }
            Err(rest) => {
                obj.insert(key.into(), Value::Array(rest));
            }
        }
    }
    // `allOf: [{$ref}]` (schemars' way of giving a $ref a description) → `$ref` with siblings,
    // which is how Kubernetes writes it in Swagger 2.0.
    if let Some(Value::Array(all)) = obj.get("allOf") {
        if let [Value::Object(only)] = all.as_slice() {
            if only.len() == 1 && only.contains_key("$ref") && !obj.contains_key("$ref") {
                let reference = only["$ref"].clone();
                obj.remove("allOf");
                obj.insert("$ref".into(), reference);
            }
        }
    }
    if obj.get("default") == Some(&Value::Null) {
        obj.remove("default");
    }
    if let Some(value) = obj.remove("const") {
        obj.insert("enum".into(), Value::Array(vec![value]));
    }
    obj.remove("examples");
    if let Some(Value::String(format)) = obj.get("format") {
        let replacement = match format.as_str() {
            "uint8" | "uint16" | "int8" | "int16" | "uint32" => Some("int32"),
            "uint" | "uint64" | "int" => Some("int64"),
            _ => None,
        };
        if let Some(r) = replacement {
            obj.insert("format".into(), r.into());
        }
    }
    if let Some(Value::String(reference)) = obj.get("$ref") {
        if let Some(name) = reference.strip_prefix(V2_REF) {
            let name = qualify(name);
            obj.insert("$ref".into(), format!("{V2_REF}{name}").into());
        }
    }
}

/// Doc comments wrap lines; Kubernetes descriptions break only between paragraphs, and
/// `kubectl explain` re-wraps text itself.
fn unwrap_doc_lines(obj: &mut Map<String, Value>) {
    if let Some(Value::String(description)) = obj.get_mut("description") {
        *description = description
            .split("\n\n")
            .map(|paragraph| {
                paragraph
                    .split('\n')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n\n");
    }
}

/// A Swagger 2.0 schema (or any fragment of a document holding schemas) in OpenAPI 3.0 form.
pub fn to_v3(schema: &mut Value) {
    walk(schema, &mut |obj| {
        let Some(Value::String(reference)) = obj.get("$ref") else {
            return;
        };
        let Some(name) = reference.strip_prefix(V2_REF) else {
            return;
        };
        let reference = json!({ "$ref": format!("{V3_REF}{name}") });
        obj.remove("$ref");
        if obj.is_empty() {
            obj.insert("$ref".into(), reference["$ref"].clone());
        } else {
            obj.insert("allOf".into(), json!([reference]));
        }
    });
}
