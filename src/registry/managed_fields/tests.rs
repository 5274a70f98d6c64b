use super::*;
use serde_json::json;

const AV: &str = "ipam.miloapis.com/v1alpha1";

fn applier(name: &str, force: bool) -> FieldManager {
    FieldManager::apply(Some(name), force).unwrap()
}

fn updater(name: &str) -> FieldManager {
    FieldManager::update(Some(name), None).unwrap()
}

/// Server-side apply (not forced) of `config` to the main resource by `manager`.
fn apply_main(
    live: &Value,
    managed: Vec<ManagedFieldsEntry>,
    config: &Value,
    manager: &str,
) -> Result<Applied, Vec<Conflict>> {
    apply(
        live,
        managed,
        config,
        &applier(manager, false),
        Scope::Main,
        AV,
    )
}

/// [`apply_main`], expected to succeed.
fn applied(
    live: &Value,
    managed: Vec<ManagedFieldsEntry>,
    config: &Value,
    manager: &str,
) -> Applied {
    apply_main(live, managed, config, manager)
        .unwrap_or_else(|conflicts| panic!("apply by {manager} conflicted: {conflicts:?}"))
}

/// [`apply_main`], expected to conflict; the conflicts.
fn conflicts_of(
    live: &Value,
    managed: Vec<ManagedFieldsEntry>,
    config: &Value,
    manager: &str,
) -> Vec<Conflict> {
    apply_main(live, managed, config, manager)
        .err()
        .expect("apply should conflict")
}

/// An update of the main resource from `old` to `new` by `manager`: the managedFields after it.
fn updated(
    managed: Vec<ManagedFieldsEntry>,
    old: &Value,
    new: &Value,
    manager: &str,
) -> Vec<ManagedFieldsEntry> {
    record_update(managed, Some(old), new, &updater(manager), Scope::Main, AV)
}

fn claim(policy: &str) -> Value {
    json!({
        "apiVersion": AV, "kind": "IPPrefixClaim",
        "metadata": {"name": "web-0", "namespace": "p", "labels": {"app": "web"}},
        "spec": {"prefixLength": 128, "parentRef": {"name": "subnet"}, "reclaimPolicy": policy},
    })
}

#[test]
fn field_sets_use_fieldsv1_elements_and_skip_server_metadata() {
    let mut obj = claim("Delete");
    obj["metadata"]["uid"] = json!("u");
    obj["status"] = json!({"conditions": [{"type": "Bound", "status": "True"}]});
    let fields = to_fields_v1(&field_set(&obj, Scope::Main));
    assert_eq!(
        fields.0,
        json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:parentRef": {"f:name": {}}, "f:prefixLength": {}, "f:reclaimPolicy": {}},
        })
    );
    let status = to_fields_v1(&field_set(&obj, Scope::Status));
    assert_eq!(
        status.0,
        json!({"f:status": {"f:conditions": {"k:{\"type\":\"Bound\"}": {".": {}, "f:status": {}, "f:type": {}}}}})
    );
    assert_eq!(from_fields_v1(&fields), field_set(&obj, Scope::Main));
    let prefix = json!({"spec": {"exclude": ["fd20::/128"]}});
    assert_eq!(
        to_fields_v1(&field_set(&prefix, Scope::Main)).0,
        json!({"f:spec": {"f:exclude": {"v:\"fd20::/128\"": {}}}})
    );
}

#[test]
fn apply_conflicts_with_another_manager_on_a_different_value_unless_forced() {
    let a = applied(&json!({}), vec![], &claim("Delete"), "a");
    let live = a.object.clone();
    // The same value is shared ownership, not a conflict.
    let shared = applied(&live, a.managed_fields.clone(), &claim("Delete"), "b");
    assert_eq!(shared.managed_fields.len(), 2);
    let conflicts = conflicts_of(&live, a.managed_fields.clone(), &claim("Retain"), "b");
    assert_eq!(
        conflicts,
        vec![Conflict {
            manager: "a".into(),
            field: ".spec.reclaimPolicy".into()
        }]
    );
    let Ok(forced) = apply(
        &live,
        a.managed_fields,
        &claim("Retain"),
        &applier("b", true),
        Scope::Main,
        AV,
    ) else {
        panic!("a forced apply takes the field over");
    };
    assert_eq!(forced.object["spec"]["reclaimPolicy"], "Retain");
    let a_set = entry_set(&forced.managed_fields[0]);
    assert!(!a_set.contains(&vec!["f:spec".to_string(), "f:reclaimPolicy".to_string()]));
}

#[test]
fn a_field_dropped_from_the_config_is_removed_only_when_nobody_else_owns_it() {
    let first = applied(&json!({}), vec![], &claim("Delete"), "a");
    let mut smaller = claim("Delete");
    smaller["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    smaller["spec"]
        .as_object_mut()
        .unwrap()
        .remove("reclaimPolicy");
    // Another manager updated the policy to the same value: it co-owns nothing (no change), so
    // the policy goes with a's config; an updater that changed labels keeps them.
    let mut live = first.object.clone();
    live["metadata"]["labels"]["team"] = json!("x");
    let managed = updated(first.managed_fields.clone(), &first.object, &live, "u");
    let out = applied(&live, managed, &smaller, "a");
    assert!(out.object["spec"].get("reclaimPolicy").is_none());
    assert_eq!(out.object["metadata"]["labels"], json!({"team": "x"}));
}

#[test]
fn updates_take_changed_fields_from_their_previous_owner() {
    let a = applied(&json!({}), vec![], &claim("Delete"), "a");
    let mut new = a.object.clone();
    new["spec"]["reclaimPolicy"] = json!("Retain");
    let managed = updated(a.managed_fields, &a.object, &new, "kubectl-edit");
    assert_eq!(managed.len(), 2);
    assert_eq!(managed[1].manager.as_deref(), Some("kubectl-edit"));
    assert_eq!(managed[1].operation.as_deref(), Some("Update"));
    assert_eq!(
        managed[1].fields_v1.as_ref().unwrap().0,
        json!({"f:spec": {"f:reclaimPolicy": {}}})
    );
    // The next apply of the old value by a conflicts with kubectl-edit.
    let conflicts = conflicts_of(&new, managed, &claim("Delete"), "a");
    assert_eq!(conflicts[0].manager, "kubectl-edit");
}

#[test]
fn an_unchanged_update_or_apply_keeps_the_entry_and_its_time() {
    let a = applied(&json!({}), vec![], &claim("Delete"), "a");
    let again = applied(&a.object, a.managed_fields.clone(), &claim("Delete"), "a");
    assert_eq!(again.managed_fields, a.managed_fields);
    assert_eq!(again.object, a.object);
    let same = updated(a.managed_fields.clone(), &a.object, &a.object, "u");
    assert_eq!(same, a.managed_fields);
}

#[test]
fn user_agent_gives_the_update_manager() {
    let m =
        FieldManager::update(None, Some("kubectl/v1.32.4 (linux/amd64) kubernetes/abc")).unwrap();
    assert_eq!(m.manager, "kubectl");
    assert!(FieldManager::apply(None, false).is_err());
}

#[test]
fn a_create_records_one_update_entry_owning_every_field_it_set() {
    let new = claim("Delete");
    let without_time = |mut entries: Vec<ManagedFieldsEntry>| {
        entries.iter_mut().for_each(|e| e.time = None);
        entries
    };
    let created = record_update(vec![], None, &new, &updater("kubectl"), Scope::Main, AV);
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0].manager.as_deref(), Some("kubectl"));
    assert_eq!(created[0].operation.as_deref(), Some("Update"));
    assert!(created[0].time.is_some());
    assert_eq!(entry_set(&created[0]), field_set(&new, Scope::Main));
    // The same as an update from an empty object, which takes the general path.
    let from_empty = updated(vec![], &json!({}), &new, "kubectl");
    assert_eq!(without_time(created), without_time(from_empty));
    // Nothing set, nothing owned.
    let bare = json!({"metadata": {"name": "x", "namespace": "p"}});
    assert!(record_update(vec![], None, &bare, &updater("k"), Scope::Main, AV).is_empty());
}
