//! What the server does by itself, without a request (a Released block freed when its retention
//! ends, Released children freed with their parent): recorded as kube-apiserver records its
//! own loopback writes, by the server's identity, so the log names every block that changed
//! hands. The registry reports such changes ([`crate::registry::ServerChange`]) to the
//! closure [`Auditor::server_changes`] gives `main`; it does not know about auditing.
use super::event::{describe, Event, MicroTime, ObjectRef, ResponseStatus, Stage, User, Written};
use super::policy::Policy;
use super::Auditor;
use crate::api::{GROUP, VERSION};
use crate::auth::authz::Attributes;
use crate::auth::UserInfo;
use crate::registry::{Changed, ReportChanges, ServerChange};
use std::sync::{Arc, Weak};

/// The identity internal actions are recorded under, as kube-apiserver's loopback client.
pub const INTERNAL_USER: &str = "system:apiserver";
/// Why the server acted, e.g. `RetentionExpired`.
pub const REASON_ANNOTATION: &str = "ipam.miloapis.com/reason";

impl Auditor {
    /// For [`crate::registry::Registry::report_server_changes`]: each change becomes an event
    /// by [`INTERNAL_USER`], if the policy records it. Never blocks. Holds the log weakly, so
    /// its writer still finishes once the server's own handles are gone.
    pub fn server_changes(&self) -> ReportChanges {
        let log = Arc::downgrade(&self.0);
        Arc::new(move |changes: Vec<ServerChange>| {
            let Some(log) = Weak::upgrade(&log) else {
                return;
            };
            for change in changes {
                if let Some(event) = internal_event(&log.policy, change) {
                    log.sender.send_event(&event);
                }
            }
        })
    }
}

/// The event for a change the server made, if the policy records it.
pub(super) fn internal_event(policy: &Policy, change: ServerChange) -> Option<Event> {
    let (resource, namespaced, written) = match change.object {
        Changed::Claim(c) => ("ipprefixclaims", true, Written(Arc::new(c))),
        Changed::Prefix(p) => ("ipprefixes", false, Written(Arc::new(p))),
    };
    let d = describe(&written);
    let user = UserInfo {
        username: INTERNAL_USER.into(),
        groups: vec!["system:masters".into()],
        ..UserInfo::default()
    };
    let attrs = Attributes::Resource {
        verb: change.verb.into(),
        group: GROUP.into(),
        version: VERSION.into(),
        resource: resource.to_string(),
        subresource: String::new(),
        namespace: d.namespace.clone(),
        name: d.name.clone(),
    };
    let decision = policy.evaluate(Some(&user), &attrs);
    if !decision.records(Stage::ResponseComplete) {
        return None;
    }
    let scope = if namespaced {
        format!("/namespaces/{}", d.namespace)
    } else {
        String::new()
    };
    let now = MicroTime::now();
    let mut annotations = d.annotations;
    annotations.insert(REASON_ANNOTATION.into(), change.reason.into());
    Some(Event {
        kind: Event::KIND,
        api_version: Event::API_VERSION,
        level: decision.level,
        audit_id: uuid::Uuid::new_v4().to_string(),
        stage: Stage::ResponseComplete,
        request_uri: format!("/apis/{GROUP}/{VERSION}{scope}/{resource}/{}", d.name),
        verb: change.verb.into(),
        user: User::from(&user),
        source_ips: Vec::new(),
        user_agent: None,
        object_ref: Some(ObjectRef {
            resource: resource.to_string(),
            namespace: d.namespace,
            name: d.name,
            uid: d.uid,
            api_group: GROUP.into(),
            api_version: VERSION.into(),
            resource_version: d.resource_version,
            subresource: String::new(),
        }),
        response_status: Some(ResponseStatus::new(200, None)),
        request_object: None,
        response_object: None,
        request_received_timestamp: now,
        stage_timestamp: now,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::fixtures::web_prefix;

    fn expired() -> ServerChange {
        ServerChange {
            verb: "delete",
            object: Changed::Prefix(web_prefix()),
            reason: crate::registry::changes::reason::RETENTION_EXPIRED,
        }
    }

    #[test]
    fn an_expiry_is_a_delete_by_the_server_naming_the_block_and_its_claim() {
        let e = internal_event(&Policy::default_writes(), expired())
            .expect("a delete is a write: recorded by default");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["verb"], "delete");
        assert_eq!(v["user"]["username"], INTERNAL_USER);
        assert_eq!(
            v["requestURI"],
            "/apis/ipam.miloapis.com/v1alpha1/ipprefixes/p.web"
        );
        assert_eq!(v["objectRef"]["resource"], "ipprefixes");
        assert_eq!(v["objectRef"]["name"], "p.web");
        assert_eq!(v["responseStatus"]["code"], 200);
        assert_eq!(
            v["annotations"],
            serde_json::json!({
                "ipam.miloapis.com/prefix": "fd20::5/128",
                "ipam.miloapis.com/parent": "subnet",
                "ipam.miloapis.com/ipprefix": "p.web",
                "ipam.miloapis.com/claim": "p/web",
                "ipam.miloapis.com/reason": "RetentionExpired",
            })
        );
        assert_eq!(v["sourceIPs"], serde_json::json!([]));
    }

    #[test]
    fn a_policy_can_leave_internal_actions_out() {
        let policy = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  users: [system:apiserver]\n- level: Metadata\n",
        )
        .unwrap();
        assert!(internal_event(&policy, expired()).is_none());
    }
}
