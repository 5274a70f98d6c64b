//! The REST operations of each kind, described once and rendered as Swagger 2.0 or OpenAPI 3.0.
//!
//! Paths, operation ids, actions and parameters follow what kube-apiserver publishes for its own
//! resources, because clients read them: `kubectl apply --validate=strict` looks for a
//! `fieldValidation` query parameter on the PATCH operation carrying the kind's
//! `x-kubernetes-group-version-kind` to decide that the server validates fields itself.
use super::schemas::{qualified, META};
use crate::api::{GROUP, VERSION};
use crate::http::discovery::{served_kinds, ServedKind};
use serde_json::{json, Map, Value};

/// Which document an operation is rendered into.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Swagger2,
    OpenApi3,
}

/// A query parameter: name, type, description.
type QueryParam = (&'static str, &'static str, &'static str);

const ALLOW_WATCH_BOOKMARKS: QueryParam = (
    "allowWatchBookmarks",
    "boolean",
    "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers may ignore \
         it.",
);
const CONTINUE: QueryParam = (
    "continue",
    "string",
    "The continue token from a previous list call with `limit`, to fetch the next page. \
         An expired token is answered with 410 Gone.",
);
const DRY_RUN: QueryParam = (
    "dryRun",
    "string",
    "When present, modifications are not persisted. The only valid value is All.",
);
const FIELD_MANAGER: QueryParam = (
    "fieldManager",
    "string",
    "The name of the actor making these changes, recorded in managedFields. Required for \
         apply patches.",
);
const FIELD_SELECTOR: QueryParam = (
    "fieldSelector",
    "string",
    "A selector on fields: metadata.name, metadata.namespace, spec.parentRef.name, \
         status.phase; claims also spec.prefixLength; ipprefixes also spec.prefix, \
         spec.addressSpace and spec.prefix.contains=<address or CIDR>.",
);
const FIELD_VALIDATION: QueryParam = (
    "fieldValidation",
    "string",
    "How to treat unknown or duplicate fields in the body: Ignore (drop them), Warn (drop \
         them and return a warning; the default), or Strict (fail the request with 400 \
         BadRequest).",
);
const FORCE: QueryParam = (
    "force",
    "boolean",
    "Force an apply patch: take ownership of fields that conflict with other managers. \
         Only for apply patches.",
);
const GRACE_PERIOD_SECONDS: QueryParam = (
    "gracePeriodSeconds",
    "integer",
    "Accepted for compatibility; objects of this API are deleted at once.",
);
const LABEL_SELECTOR: QueryParam = (
    "labelSelector",
    "string",
    "A selector to restrict the returned objects by their labels.",
);
const LIMIT: QueryParam = (
    "limit",
    "integer",
    "The maximum number of objects to return; a `continue` token in the list metadata \
         fetches the rest, consistently with the first page.",
);
const ORPHAN_DEPENDENTS: QueryParam = (
    "orphanDependents",
    "boolean",
    "Deprecated: use propagationPolicy. If true, dependents are orphaned.",
);
const PRETTY: QueryParam = (
    "pretty",
    "string",
    "If 'true', the output is pretty printed.",
);
const PROPAGATION_POLICY: QueryParam = (
    "propagationPolicy",
    "string",
    "Whether and how dependents are garbage collected: Orphan, Background or Foreground.",
);
const RESOURCE_VERSION: QueryParam = (
    "resourceVersion",
    "string",
    "The resourceVersion a list or watch starts from; for a watch, events after it are \
         sent. Older than the retained history is answered with 410 Gone.",
);
const RESOURCE_VERSION_MATCH: QueryParam = (
    "resourceVersionMatch",
    "string",
    "How resourceVersion applies to a list: Exact or NotOlderThan.",
);
const SEND_INITIAL_EVENTS: QueryParam = (
    "sendInitialEvents",
    "boolean",
    "With watch=true, first send the current objects as ADDED events, then a bookmark \
         annotated k8s.io/initial-events-end.",
);
const TIMEOUT_SECONDS: QueryParam = (
    "timeoutSeconds",
    "integer",
    "Timeout for the list or watch call, in seconds.",
);
const WATCH: QueryParam = (
    "watch",
    "boolean",
    "Watch for changes to the described resources and return them as a stream of add, \
         update and remove notifications.",
);

const LIST_PARAMS: &[QueryParam] = &[
    ALLOW_WATCH_BOOKMARKS,
    CONTINUE,
    FIELD_SELECTOR,
    LABEL_SELECTOR,
    LIMIT,
    PRETTY,
    RESOURCE_VERSION,
    RESOURCE_VERSION_MATCH,
    SEND_INITIAL_EVENTS,
    TIMEOUT_SECONDS,
    WATCH,
];
const WRITE_PARAMS: &[QueryParam] = &[DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION, PRETTY];
const PATCH_PARAMS: &[QueryParam] = &[DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION, FORCE, PRETTY];
const READ_PARAMS: &[QueryParam] = &[PRETTY];
const DELETE_PARAMS: &[QueryParam] = &[
    DRY_RUN,
    GRACE_PERIOD_SECONDS,
    ORPHAN_DEPENDENTS,
    PRETTY,
    PROPAGATION_POLICY,
];
const DELETE_COLLECTION_PARAMS: &[QueryParam] = &[
    CONTINUE,
    DRY_RUN,
    FIELD_SELECTOR,
    GRACE_PERIOD_SECONDS,
    LABEL_SELECTOR,
    LIMIT,
    ORPHAN_DEPENDENTS,
    PRETTY,
    PROPAGATION_POLICY,
    RESOURCE_VERSION,
    RESOURCE_VERSION_MATCH,
    SEND_INITIAL_EVENTS,
    TIMEOUT_SECONDS,
];

const JSON: &[&str] = &["application/json"];
const JSON_AND_STREAM: &[&str] = &["application/json", "application/json;stream=watch"];
const ANY: &[&str] = &["*/*"];
const PATCH_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

/// One operation, independent of the document flavor.
struct Operation {
    method: &'static str,
    action: &'static str,
    id: String,
    description: String,
    params: &'static [QueryParam],
    /// Request body: definition name and accepted content types.
    body: Option<(String, &'static [&'static str])>,
    /// Status code, description, response definition.
    responses: Vec<(u16, &'static str, Option<String>)>,
    produces: &'static [&'static str],
    /// The kind in `x-kubernetes-group-version-kind`, when the operation is about one.
    kind: Option<String>,
}

/// One path with its path parameters (`namespace`, `name`) and operations.
struct PathItem {
    path: String,
    path_params: Vec<(&'static str, String)>,
    operations: Vec<Operation>,
}

/// `IpamMiloapisComV1alpha1`, the group-version part of Kubernetes operation ids.
fn id_infix() -> String {
    GROUP
        .split('.')
        .chain(std::iter::once(VERSION))
        .map(capitalize)
        .collect()
}

/// `ipamMiloapisCom_v1alpha1`, the tag Kubernetes gives a group-version's operations.
fn tag() -> String {
    let group: String = GROUP.split('.').map(capitalize).collect();
    let mut chars = group.chars();
    let group: String = chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default();
    format!("{group}_{VERSION}")
}

fn capitalize(part: &str) -> String {
    let mut chars = part.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

impl Operation {
    /// An operation about `kind` that answers 401 when unauthenticated and nothing else yet.
    fn new(
        kind: &str,
        (method, action): (&'static str, &'static str),
        id: String,
        description: String,
        params: &'static [QueryParam],
    ) -> Self {
        Operation {
            method,
            action,
            id,
            description,
            params,
            body: None,
            responses: vec![(401, "Unauthorized", None)],
            produces: JSON,
            kind: Some(kind.to_string()),
        }
    }

    fn body(mut self, definition: &str, content_types: &'static [&'static str]) -> Self {
        self.body = Some((definition.to_string(), content_types));
        self
    }

    /// Adds responses `codes` (200 OK, 201 Created, 202 Accepted) carrying `definition`.
    fn returns(mut self, codes: &[u16], definition: &str) -> Self {
        for &code in codes {
            let description = match code {
                201 => "Created",
                202 => "Accepted",
                _ => "OK",
            };
            self.responses
                .push((code, description, Some(definition.to_string())));
        }
        self.responses.sort_by_key(|r| r.0);
        self
    }

    /// Lists and watches also answer as a stream of watch events.
    fn streaming(mut self) -> Self {
        self.produces = JSON_AND_STREAM;
        self
    }
}

const LIST: (&str, &str) = ("get", "list");
const WATCH_LIST: (&str, &str) = ("get", "watchlist");
const WATCH_ONE: (&str, &str) = ("get", "watch");
const CREATE: (&str, &str) = ("post", "post");
const DELETE_COLLECTION: (&str, &str) = ("delete", "deletecollection");
const READ: (&str, &str) = ("get", "get");
const REPLACE: (&str, &str) = ("put", "put");
const PATCH: (&str, &str) = ("patch", "patch");
const DELETE: (&str, &str) = ("delete", "delete");

/// Every path of one kind, named as kube-apiserver names them.
fn paths_for(kind: &ServedKind) -> Vec<PathItem> {
    let base = format!("/apis/{GROUP}/{VERSION}");
    let k = kind.kind.as_str();
    let object = qualified(k);
    let list = qualified(&kind.list_kind);
    let status = format!("{META}Status");
    let watch_event = format!("{META}WatchEvent");
    let delete_options = format!("{META}DeleteOptions");
    let patch = format!("{META}Patch");
    // Operation ids: `<verb>IpamMiloapisComV1alpha1[Namespaced]<Kind>[Status]`.
    let id = |verb: &str, suffix: &str| {
        let scoped = if kind.namespaced { "Namespaced" } else { "" };
        format!("{verb}{}{scoped}{k}{suffix}", id_infix())
    };
    let op = |verb, id: String, description: String, params| {
        Operation::new(k, verb, id, description, params)
    };
    let list_op = |id: String| {
        op(
            LIST,
            id,
            format!("list or watch objects of kind {k}"),
            LIST_PARAMS,
        )
        .returns(&[200], &list)
        .streaming()
    };
    let watch_list_op = |id: String| {
        let description = format!(
            "watch individual changes to a list of {k}. deprecated: use the 'watch' parameter \
             with a list operation instead."
        );
        op(WATCH_LIST, id, description, LIST_PARAMS)
            .returns(&[200], &watch_event)
            .streaming()
    };

    let namespace = (
        "namespace",
        "object name and auth scope, such as for teams and projects".to_string(),
    );
    let name = ("name", format!("name of the {k}"));
    let (collection, watch, scope) = if kind.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", kind.plural),
            format!("{base}/watch/namespaces/{{namespace}}/{}", kind.plural),
            vec![namespace],
        )
    } else {
        (
            format!("{base}/{}", kind.plural),
            format!("{base}/watch/{}", kind.plural),
            vec![],
        )
    };
    let scope_and_name = [scope.clone(), vec![name]].concat();

    let mut items = vec![
        PathItem {
            path: collection.clone(),
            path_params: scope.clone(),
            operations: vec![
                list_op(id("list", "")),
                op(
                    CREATE,
                    id("create", ""),
                    format!("create an {k}"),
                    WRITE_PARAMS,
                )
                .body(&object, ANY)
                .returns(&[200, 201, 202], &object),
                op(
                    DELETE_COLLECTION,
                    id("deleteCollection", ""),
                    format!("delete collection of {k}"),
                    DELETE_COLLECTION_PARAMS,
                )
                .body(&delete_options, ANY)
                .returns(&[200], &status),
            ],
        },
        PathItem {
            path: format!("{collection}/{{name}}"),
            path_params: scope_and_name.clone(),
            operations: vec![
                op(
                    READ,
                    id("read", ""),
                    format!("read the specified {k}"),
                    READ_PARAMS,
                )
                .returns(&[200], &object),
                op(
                    REPLACE,
                    id("replace", ""),
                    format!("replace the specified {k}"),
                    WRITE_PARAMS,
                )
                .body(&object, ANY)
                .returns(&[200, 201], &object),
                op(
                    PATCH,
                    id("patch", ""),
                    format!("partially update the specified {k}"),
                    PATCH_PARAMS,
                )
                .body(&patch, PATCH_TYPES)
                .returns(&[200, 201], &object),
                op(
                    DELETE,
                    id("delete", ""),
                    format!("delete an {k}"),
                    DELETE_PARAMS,
                )
                .body(&delete_options, ANY)
                .returns(&[200, 202], &status),
            ],
        },
        PathItem {
            path: format!("{collection}/{{name}}/status"),
            path_params: scope_and_name.clone(),
            operations: vec![
                op(
                    READ,
                    id("read", "Status"),
                    format!("read status of the specified {k}"),
                    READ_PARAMS,
                )
                .returns(&[200], &object),
                op(
                    REPLACE,
                    id("replace", "Status"),
                    format!("replace status of the specified {k}"),
                    WRITE_PARAMS,
                )
                .body(&object, ANY)
                .returns(&[200, 201], &object),
                op(
                    PATCH,
                    id("patch", "Status"),
                    format!("partially update status of the specified {k}"),
                    PATCH_PARAMS,
                )
                .body(&patch, PATCH_TYPES)
                .returns(&[200, 201], &object),
            ],
        },
        PathItem {
            path: watch.clone(),
            path_params: scope,
            operations: vec![watch_list_op(id("watch", "List"))],
        },
        PathItem {
            path: format!("{watch}/{{name}}"),
            path_params: scope_and_name,
            operations: vec![op(
                WATCH_ONE,
                id("watch", ""),
                format!(
                    "watch changes to an object of kind {k}. deprecated: use the 'watch' \
                     parameter with a list operation instead, filtered to a single item with the \
                     'fieldSelector' parameter."
                ),
                LIST_PARAMS,
            )
            .returns(&[200], &watch_event)
            .streaming()],
        },
    ];
    if kind.namespaced {
        let g = id_infix();
        items.push(PathItem {
            path: format!("{base}/{}", kind.plural),
            path_params: vec![],
            operations: vec![list_op(format!("list{g}{k}ForAllNamespaces"))],
        });
        items.push(PathItem {
            path: format!("{base}/watch/{}", kind.plural),
            path_params: vec![],
            operations: vec![watch_list_op(format!("watch{g}{k}ListForAllNamespaces"))],
        });
    }
    items
}

/// `GET /apis/<group>/<version>/`: the resource list.
fn resources_path() -> PathItem {
    PathItem {
        path: format!("/apis/{GROUP}/{VERSION}/"),
        path_params: vec![],
        operations: vec![Operation {
            method: "get",
            action: "",
            id: format!("get{}APIResources", id_infix()),
            description: "get available resources".into(),
            params: &[],
            body: None,
            responses: vec![
                (200, "OK", Some(format!("{META}APIResourceList"))),
                (401, "Unauthorized", None),
            ],
            produces: JSON,
            kind: None,
        }],
    }
}

fn reference(flavor: Flavor, def: &str) -> Value {
    match flavor {
        Flavor::Swagger2 => json!({ "$ref": format!("#/definitions/{def}") }),
        Flavor::OpenApi3 => json!({ "$ref": format!("#/components/schemas/{def}") }),
    }
}

fn parameter(
    flavor: Flavor,
    name: &str,
    location: &str,
    ty: &str,
    description: &str,
    required: bool,
) -> Value {
    let mut p = Map::new();
    p.insert("name".into(), name.into());
    p.insert("in".into(), location.into());
    p.insert("description".into(), description.into());
    if required {
        p.insert("required".into(), true.into());
    }
    match flavor {
        Flavor::Swagger2 => {
            p.insert("type".into(), ty.into());
            p.insert("uniqueItems".into(), true.into());
        }
        Flavor::OpenApi3 => {
            p.insert("schema".into(), json!({ "type": ty, "uniqueItems": true }));
        }
    }
    Value::Object(p)
}

fn render_operation(flavor: Flavor, op: &Operation) -> Value {
    let mut out = Map::new();
    out.insert("description".into(), op.description.clone().into());
    out.insert("operationId".into(), op.id.clone().into());
    out.insert("tags".into(), json!([tag()]));

    let mut params: Vec<Value> = op
        .params
        .iter()
        .map(|(name, ty, description)| parameter(flavor, name, "query", ty, description, false))
        .collect();
    if let Some((def, content_types)) = &op.body {
        match flavor {
            Flavor::Swagger2 => {
                params.insert(
                    0,
                    json!({
                        "name": "body",
                        "in": "body",
                        "required": true,
                        "schema": reference(flavor, def),
                    }),
                );
                out.insert("consumes".into(), json!(content_types));
            }
            Flavor::OpenApi3 => {
                let content: Map<String, Value> = content_types
                    .iter()
                    .map(|t| (t.to_string(), json!({ "schema": reference(flavor, def) })))
                    .collect();
                out.insert(
                    "requestBody".into(),
                    json!({ "content": content, "required": true }),
                );
            }
        }
    } else if flavor == Flavor::Swagger2 {
        out.insert("consumes".into(), json!(ANY));
    }
    out.insert("parameters".into(), Value::Array(params));

    let mut responses = Map::new();
    for (code, description, def) in &op.responses {
        let mut r = Map::new();
        r.insert("description".into(), (*description).into());
        if let Some(def) = def {
            match flavor {
                Flavor::Swagger2 => {
                    r.insert("schema".into(), reference(flavor, def));
                }
                Flavor::OpenApi3 => {
                    let content: Map<String, Value> = op
                        .produces
                        .iter()
                        .map(|t| (t.to_string(), json!({ "schema": reference(flavor, def) })))
                        .collect();
                    r.insert("content".into(), Value::Object(content));
                }
            }
        }
        responses.insert(code.to_string(), Value::Object(r));
    }
    out.insert("responses".into(), Value::Object(responses));
    if flavor == Flavor::Swagger2 {
        out.insert("produces".into(), json!(op.produces));
        out.insert("schemes".into(), json!(["https"]));
    }
    if !op.action.is_empty() {
        out.insert("x-kubernetes-action".into(), op.action.into());
    }
    if let Some(kind) = &op.kind {
        out.insert(
            "x-kubernetes-group-version-kind".into(),
            json!({ "group": GROUP, "kind": kind, "version": VERSION }),
        );
    }
    Value::Object(out)
}

/// The `paths` object of a document.
pub fn paths(flavor: Flavor) -> Map<String, Value> {
    let mut items = vec![resources_path()];
    for kind in served_kinds() {
        items.extend(paths_for(kind));
    }
    let mut paths = Map::new();
    for item in items {
        let mut rendered = Map::new();
        for op in &item.operations {
            rendered.insert(op.method.into(), render_operation(flavor, op));
        }
        if !item.path_params.is_empty() {
            let params: Vec<Value> = item
                .path_params
                .iter()
                .map(|(name, description)| {
                    parameter(flavor, name, "path", "string", description, true)
                })
                .collect();
            rendered.insert("parameters".into(), Value::Array(params));
        }
        paths.insert(item.path, Value::Object(rendered));
    }
    paths
}
