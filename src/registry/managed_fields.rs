//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply.
//!
//! Every write records who set which fields, as Kubernetes' structured-merge-diff does:
//! - an Update (create, PUT, merge/JSON patch) gives its manager the fields it changed and takes
//!   them from everyone else;
//! - an Apply (`application/apply-patch+yaml`) makes its manager own exactly the fields in its
//!   configuration: a field another manager owns with a different value is a conflict (409)
//!   unless `force`, and a field the applier owned before but dropped from its configuration is
//!   removed from the object when nobody else owns it.
//!
//! The schema knowledge this needs is small for our two kinds: which maps are granular
//! (labels, annotations, `matchLabels`), which lists are sets (`exclude`, `finalizers`), which are
//! keyed (`conditions` by `type`, `ownerReferences` by `uid`); every other list is atomic.
use crate::error::ApiError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The longest `fieldManager` accepted, as Kubernetes.
pub const MAX_MANAGER_LEN: usize = 128;

/// A field path: FieldsV1 elements (`f:spec`, `k:{"type":"Bound"}`, `v:"fd20::/128"`).
pub type FieldPath = Vec<String>;
/// A set of owned fields. A path is a member on its own; its prefixes need not be.
pub type FieldSet = BTreeSet<FieldPath>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// Who writes, and how: recorded in `managedFields`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldManager {
    pub manager: String,
    pub operation: Operation,
    /// Apply only: take conflicting fields from their owners instead of failing.
    pub force: bool,
}

impl FieldManager {
    /// The manager of an Update: `fieldManager`, else the User-Agent up to its first `/`
    /// (`kubectl/v1.32 (linux/amd64)` → `kubectl`), as kube-apiserver derives it.
    pub fn update(field_manager: Option<&str>, user_agent: Option<&str>) -> Result<Self, ApiError> {
        let manager = match field_manager.filter(|m| !m.is_empty()) {
            Some(m) => m.to_string(),
            None => {
                let ua = user_agent.unwrap_or_default();
                let prefix = ua.split('/').next().unwrap_or_default();
                prefix.chars().take(MAX_MANAGER_LEN).collect()
            }
        };
        check_manager(&manager)?;
        Ok(FieldManager {
            manager,
            operation: Operation::Update,
            force: false,
        })
    }

    /// The manager of an Apply: `fieldManager` is required.
    pub fn apply(field_manager: Option<&str>, force: bool) -> Result<Self, ApiError> {
        let manager = field_manager.unwrap_or_default().to_string();
        if manager.is_empty() {
            return Err(ApiError::BadRequest(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
            ));
        }
        check_manager(&manager)?;
        Ok(FieldManager {
            manager,
            operation: Operation::Apply,
            force,
        })
    }
}

fn check_manager(m: &str) -> Result<(), ApiError> {
    if m.chars().count() > MAX_MANAGER_LEN {
        return Err(ApiError::BadRequest(format!(
            "fieldManager: Too long: may not be more than {MAX_MANAGER_LEN} characters"
        )));
    }
    Ok(())
}

/// Which part of the object a write may own: the main resource owns everything but `status`,
/// `/status` owns only `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main,
    Status,
}

impl Scope {
    fn subresource(self) -> Option<String> {
        match self {
            Scope::Main => None,
            Scope::Status => Some("status".into()),
        }
    }
}

/// One field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// The field as Kubernetes prints it: `.spec.reclaimPolicy`.
    pub field: String,
}

/// The fields a manager owns in an object value (or an apply configuration), without the
/// server-owned metadata and outside `scope`.
pub fn field_set(obj: &Value, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    let stripped = strip(obj, scope);
    let mut path = Vec::new();
    if let Value::Object(m) = &stripped {
        for (k, v) in m {
            path.push(format!("f:{k}"));
            collect(v, k, &mut path, &mut out);
            path.pop();
        }
    }
    out
}

/// The object without what nobody owns: identity, server timestamps, managedFields, and the
/// part outside `scope`.
fn strip(obj: &Value, scope: Scope) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        match scope {
            Scope::Main => {
                m.remove("status");
            }
            Scope::Status => m.retain(|k, _| k == "status"),
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "name",
                "namespace",
                "generateName",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                meta.remove(k);
            }
            if meta.is_empty() {
                m.remove("metadata");
            }
        }
    }
    v
}

enum ListKind {
    Set,
    Keyed(&'static [&'static str]),
    Atomic,
}

fn list_kind(field: &str) -> ListKind {
    match field {
        "exclude" | "finalizers" => ListKind::Set,
        "conditions" => ListKind::Keyed(&["type"]),
        "ownerReferences" => ListKind::Keyed(&["uid"]),
        _ => ListKind::Atomic,
    }
}

/// Maps whose entries are owned one by one, and whose presence is a field of its own.
fn granular_map(field: &str) -> bool {
    matches!(field, "labels" | "annotations" | "matchLabels")
}

fn collect(v: &Value, field: &str, path: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            if granular_map(field) {
                out.insert(path.clone());
            }
            for (k, child) in m {
                path.push(format!("f:{k}"));
                collect(child, k, path, out);
                path.pop();
            }
        }
        Value::Array(items) => match list_kind(field) {
            ListKind::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListKind::Keyed(keys) => {
                for item in items {
                    let Some(elem) = key_element(item, keys) else {
                        continue;
                    };
                    path.push(elem);
                    out.insert(path.clone());
                    if let Value::Object(m) = item {
                        for (k, child) in m {
                            path.push(format!("f:{k}"));
                            collect(child, k, path, out);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
            ListKind::Atomic => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// `k:{"type":"Bound"}` for a keyed list item.
fn key_element(item: &Value, keys: &[&str]) -> Option<String> {
    let mut key = Map::new();
    for k in keys {
        key.insert((*k).to_string(), item.get(*k)?.clone());
    }
    Some(format!("k:{}", Value::Object(key)))
}

/// The value at `path`, if present.
fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for elem in path {
        cur = step(cur, elem)?;
    }
    Some(cur)
}

fn step<'a>(v: &'a Value, elem: &str) -> Option<&'a Value> {
    match elem.strip_prefix("f:") {
        Some(name) => v.get(name),
        None => v
            .as_array()
            .and_then(|items| items.get(index_of(items, elem)?)),
    }
}

/// The index of the list item a `k:` or `v:` element names.
fn index_of(items: &[Value], elem: &str) -> Option<usize> {
    if let Some(key) = elem.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        items
            .iter()
            .position(|item| key.iter().all(|(k, kv)| item.get(k) == Some(kv)))
    } else if let Some(val) = elem.strip_prefix("v:") {
        let val: Value = serde_json::from_str(val).ok()?;
        items.iter().position(|item| *item == val)
    } else {
        None
    }
}

/// Remove the field at `path` from `v` (nothing when absent).
fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for elem in parents {
        let next = match elem.strip_prefix("f:") {
            Some(name) => cur.get_mut(name),
            None => match cur.as_array_mut() {
                Some(items) => index_of(items, elem).and_then(|i| items.get_mut(i)),
                None => None,
            },
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last.strip_prefix("f:") {
        Some(name) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(name);
            }
        }
        None => {
            if let Some(items) = cur.as_array_mut() {
                if let Some(i) = index_of(items, last) {
                    items.remove(i);
                }
            }
        }
    }
}

/// Whether the value at `path` is the same in both (for an object node: present in both).
fn same_at(a: &Value, b: &Value, path: &[String]) -> bool {
    match (value_at(a, path), value_at(b, path)) {
        (Some(Value::Object(x)), Some(Value::Object(y))) if !x.is_empty() && !y.is_empty() => true,
        (x, y) => x == y,
    }
}

/// `.spec.reclaimPolicy`, `.status.conditions[type="Bound"]`, `.spec.exclude[="fd20::/128"]`.
pub fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for elem in path {
        if let Some(name) = elem.strip_prefix("f:") {
            s.push('.');
            s.push_str(name);
        } else if let Some(key) = elem.strip_prefix("k:") {
            let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(key)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(val) = elem.strip_prefix("v:") {
            s.push_str(&format!("[={val}]"));
        }
    }
    s
}

/// FieldsV1 JSON for a set: `{"f:spec": {"f:prefixLength": {}}}`, `"."` marking a node that is
/// a member and has members below it.
pub fn to_fields_v1(set: &FieldSet) -> FieldsV1 {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: BTreeMap<String, Node>,
    }
    fn render(node: &Node) -> Value {
        let mut m = Map::new();
        if node.member && !node.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, child) in &node.children {
            m.insert(k.clone(), render(child));
        }
        Value::Object(m)
    }
    let mut root = Node::default();
    for path in set {
        let mut node = &mut root;
        for elem in path {
            node = node.children.entry(elem.clone()).or_default();
        }
        node.member = true;
    }
    FieldsV1(render(&root))
}

/// The set a FieldsV1 value describes.
pub fn from_fields_v1(fields: &FieldsV1) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in m {
            if k == "." {
                out.insert(path.clone());
            } else {
                path.push(k.clone());
                walk(child, path, out);
                path.pop();
            }
        }
    }
    let mut out = FieldSet::new();
    walk(&fields.0, &mut Vec::new(), &mut out);
    out
}

fn entry_set(e: &ManagedFieldsEntry) -> FieldSet {
    e.fields_v1.as_ref().map(from_fields_v1).unwrap_or_default()
}

fn entry_is(e: &ManagedFieldsEntry, manager: &str, op: Operation, scope: Scope) -> bool {
    e.manager.as_deref() == Some(manager)
        && e.operation.as_deref() == Some(op.as_str())
        && e.subresource == scope.subresource()
}

fn new_entry(
    fm: &FieldManager,
    scope: Scope,
    api_version: &str,
    set: &FieldSet,
) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        api_version: Some(api_version.to_string()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(to_fields_v1(set)),
        manager: Some(fm.manager.clone()),
        operation: Some(fm.operation.as_str().into()),
        subresource: scope.subresource(),
        time: Some(super::meta::now()),
    }
}

/// Set `fm`'s entry to `set`, keeping the old entry (and its time) when the set is unchanged;
/// entries whose sets became empty are dropped.
fn finish_entries(
    mut entries: Vec<ManagedFieldsEntry>,
    fm: &FieldManager,
    scope: Scope,
    api_version: &str,
    set: FieldSet,
) -> Vec<ManagedFieldsEntry> {
    match entries
        .iter()
        .position(|e| entry_is(e, &fm.manager, fm.operation, scope))
    {
        Some(i) if entry_set(&entries[i]) == set => {}
        Some(i) => entries[i] = new_entry(fm, scope, api_version, &set),
        None => entries.push(new_entry(fm, scope, api_version, &set)),
    }
    entries.retain(|e| !entry_set(e).is_empty());
    entries
}

/// The managedFields after an Update by `fm` from `old` (`None`: a create) to `new`.
/// `base` is the managedFields to start from (the stored ones, or what the client sent when it
/// changed them on purpose).
pub fn record_update(
    base: Vec<ManagedFieldsEntry>,
    old: Option<&Value>,
    new: &Value,
    fm: &FieldManager,
    scope: Scope,
    api_version: &str,
) -> Vec<ManagedFieldsEntry> {
    let new_set = field_set(new, scope);
    // A create (no old object, no entries to start from) owns every field it set: the general
    // path below would reach the same single entry after comparing against nothing and parsing
    // its own fieldsV1 back (4 % of a claim create's CPU).
    if old.is_none() && base.is_empty() {
        return if new_set.is_empty() {
            Vec::new()
        } else {
            vec![new_entry(fm, scope, api_version, &new_set)]
        };
    }
    let empty = Value::Object(Map::new());
    let old_v = old.unwrap_or(&empty);
    let old_set = old.map(|o| field_set(o, scope)).unwrap_or_default();
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| !old_set.contains(*p) || !same_at(old_v, new, p))
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    let mut entries: Vec<ManagedFieldsEntry> = base
        .into_iter()
        .filter(|e| e.manager.is_some())
        .map(|mut e| {
            if entry_is(&e, &fm.manager, fm.operation, scope) {
                return e;
            }
            let set = entry_set(&e);
            let kept: FieldSet = set
                .iter()
                .filter(|p| !changed.contains(*p) && !removed.contains(*p))
                .cloned()
                .collect();
            if kept != set {
                e.fields_v1 = Some(to_fields_v1(&kept));
            }
            e
        })
        .collect();
    let mine = entries
        .iter()
        .find(|e| entry_is(e, &fm.manager, fm.operation, scope))
        .map(entry_set)
        .unwrap_or_default();
    let mine: FieldSet = mine
        .union(&changed)
        .filter(|p| !removed.contains(*p))
        .cloned()
        .collect();
    if mine.is_empty() {
        entries.retain(|e| !entry_is(e, &fm.manager, fm.operation, scope));
        entries.retain(|e| !entry_set(e).is_empty());
        return entries;
    }
    entries = finish_entries(entries, fm, scope, api_version, mine);
    entries
}

/// The result of an apply: the object value to write (with its managedFields) or conflicts.
pub struct Applied {
    pub object: Value,
    pub managed_fields: Vec<ManagedFieldsEntry>,
}

/// Server-side apply of `config` by `fm` onto `live` (whose managedFields are `managed`).
pub fn apply(
    live: &Value,
    managed: Vec<ManagedFieldsEntry>,
    config: &Value,
    fm: &FieldManager,
    scope: Scope,
    api_version: &str,
) -> Result<Applied, Vec<Conflict>> {
    let applied = field_set(config, scope);
    let mut conflicts = Vec::new();
    let mut entries = Vec::new();
    let mut previous = FieldSet::new();
    for mut e in managed.into_iter().filter(|e| e.manager.is_some()) {
        let set = entry_set(&e);
        if entry_is(&e, &fm.manager, Operation::Apply, scope) {
            previous = set;
            entries.push(e);
            continue;
        }
        let clashing: FieldSet = set
            .intersection(&applied)
            .filter(|p| !same_at(live, config, p))
            .cloned()
            .collect();
        if !clashing.is_empty() {
            if fm.force {
                let kept: FieldSet = set.difference(&clashing).cloned().collect();
                e.fields_v1 = Some(to_fields_v1(&kept));
            } else {
                let manager = e.manager.clone().unwrap_or_default();
                conflicts.extend(clashing.iter().map(|p| Conflict {
                    manager: manager.clone(),
                    field: display_path(p),
                }));
            }
        }
        entries.push(e);
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let others: FieldSet = entries
        .iter()
        .filter(|e| !entry_is(e, &fm.manager, Operation::Apply, scope))
        .flat_map(entry_set)
        .collect();
    let mut object = live.clone();
    // Deepest first, so a list item goes before the list it may empty.
    let mut dropped: Vec<&FieldPath> = previous
        .difference(&applied)
        .filter(|p| !others.iter().any(|o| o.starts_with(p)))
        .collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        remove_at(&mut object, p);
    }
    merge(&mut object, config, "");
    let managed_fields = finish_entries(entries, fm, scope, api_version, applied);
    Ok(Applied {
        object,
        managed_fields,
    })
}

/// Merge an apply configuration into an object: maps merge, set lists union, keyed lists merge
/// item by item, other lists and scalars are replaced.
fn merge(target: &mut Value, config: &Value, field: &str) {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) => {
            for (k, cv) in c {
                match t.get_mut(k) {
                    Some(tv) => merge(tv, cv, k),
                    None => {
                        t.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(c)) => match list_kind(field) {
            ListKind::Set => {
                for item in c {
                    if !t.contains(item) {
                        t.push(item.clone());
                    }
                }
            }
            ListKind::Keyed(keys) => {
                for item in c {
                    let key = key_element(item, keys);
                    let existing = t
                        .iter_mut()
                        .find(|x| key.is_some() && key_element(x, keys) == key);
                    match existing {
                        Some(x) => merge(x, item, ""),
                        None => t.push(item.clone()),
                    }
                }
            }
            ListKind::Atomic => *t = c.clone(),
        },
        (t, c) => *t = c.clone(),
    }
}

/// The 409 for apply conflicts, worded as kube-apiserver words it.
pub fn conflict_error(
    resource: &str,
    name: &str,
    api_version: &str,
    conflicts: &[Conflict],
) -> ApiError {
    let n = conflicts.len();
    let plural = if n == 1 { "conflict" } else { "conflicts" };
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with \"{}\" using {api_version}: {}",
                c.manager, c.field
            )
        })
        .collect();
    let message = if n == 1 {
        format!("Apply failed with 1 conflict: {}", lines[0])
    } else {
        format!("Apply failed with {n} {plural}: {}", lines.join("\n"))
    };
    ApiError::ApplyConflict {
        subject: crate::error::Subject::new(resource, name),
        message,
        causes: conflicts
            .iter()
            .zip(lines)
            .map(|(c, line)| (c.field.clone(), line))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
