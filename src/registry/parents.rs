//! Where a claim with a `parentSelector` would allocate, without allocating: the parents in the
//! order allocation tries them, split by whether they would take the claim. Authorization asks
//! about these in that order and stops at the first the caller may `use`, instead of asking
//! about every IPPrefix the selector matches.
use super::claim::{candidate_parents, fit, rebind_target, requested};
use super::generic::Registry;
use super::prefix::name_of;
use super::txn::Txn;
use crate::alloc::AllocError;
use crate::api::IPPrefixClaim;
use crate::error::ApiResult;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParentPlan {
    /// The parent of the Released IPPrefix the claim would be bound to again (tried first).
    pub rebind: Option<String>,
    /// Matching parents where allocation would stop, in order: they have room (or answer
    /// about the requested block).
    pub with_room: Vec<String>,
    /// Matching parents the claim cannot get a block from, in order: a caller who may use one
    /// of them is told there is no room (409), one who may use none is forbidden (403).
    pub without_room: Vec<String>,
}

impl Registry {
    /// The plan for creating `claim` in `namespace`, with at most `limit` parents in each list;
    /// `None` when the claim names its parent or is invalid (the create itself answers that).
    /// Read from the allocation indexes under the writer lock, so it is exact at that instant;
    /// a create that follows may find the room taken meanwhile.
    pub async fn claim_parents(
        &self,
        namespace: &str,
        claim: &IPPrefixClaim,
        limit: usize,
    ) -> ApiResult<Option<ParentPlan>> {
        if claim.spec.parent_ref.is_some() || claim.spec.parent_selector.is_none() {
            return Ok(None);
        }
        let Ok(request) = requested(claim) else {
            return Ok(None);
        };
        let mut claim = claim.clone();
        claim.metadata.namespace = Some(namespace.to_string());
        let name = claim.metadata.name.clone().unwrap_or_default();
        let mut state = self.lock().await;
        // Read-only: never committed, so dropping it writes nothing.
        let mut tx = Txn::new(&**self.store(), &mut state);
        let rebind = rebind_target(&claim, &tx, request)
            .await?
            .and_then(|released| released.obj.spec.parent_ref)
            .map(|r| r.name);
        let Ok(candidates) = candidate_parents(&claim, &mut tx, request.2, &name).await else {
            return Ok(None);
        };
        let mut plan = ParentPlan {
            rebind,
            ..Default::default()
        };
        for parent in candidates {
            if plan.with_room.len() >= limit {
                break;
            }
            let room = match fit(&mut tx, &parent, request, true, &name)? {
                None
                | Some(Err(
                    AllocError::Exhausted { .. }
                    | AllocError::OutsidePool { .. }
                    | AllocError::FamilyMismatch { .. },
                )) => false,
                Some(_) => true,
            };
            match room {
                true => plan.with_room.push(name_of(&parent.obj)),
                false if plan.without_room.len() < limit => {
                    plan.without_room.push(name_of(&parent.obj))
                }
                false => {}
            }
        }
        Ok(Some(plan))
    }
}

#[cfg(test)]
mod tests {
    use crate::api::{IPPrefix, IPPrefixClaim};
    use crate::registry::{DeleteOptions, ParentPlan, Registry};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    fn by_selector(name: &str) -> IPPrefixClaim {
        let mut c = IPPrefixClaim::new_with_length("ns", name, "", 32).retain();
        c.spec.parent_ref = None;
        c.spec.parent_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("pool".into(), "x".into())])),
            ..Default::default()
        });
        c
    }

    #[tokio::test]
    async fn plan_lists_parents_in_allocation_order_split_by_room() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(std::sync::Arc::new(
            crate::store::SledStore::open(dir.path(), 100).unwrap(),
        ))
        .await
        .unwrap();
        for (name, prefix, reserve) in [
            ("a-full", "10.0.0.0/31", 2),
            ("b-too-short", "10.1.0.0/32", 0),
            ("c-room", "10.2.0.0/24", 0),
            ("d-room", "10.3.0.0/24", 0),
        ] {
            let root = IPPrefix::root(name, prefix.parse().unwrap())
                .label("pool", "x")
                .reserve(reserve, 0);
            reg.create("", root, false).await.unwrap();
        }
        let plan = reg.claim_parents("ns", &by_selector("nic"), 8).await;
        assert_eq!(
            plan.unwrap(),
            Some(ParentPlan {
                rebind: None,
                with_room: vec!["c-room".into(), "d-room".into()],
                without_room: vec!["a-full".into(), "b-too-short".into()],
            })
        );
        // Bounded: listing stops once `limit` parents with room are found.
        let plan = reg.claim_parents("ns", &by_selector("nic"), 1).await;
        assert_eq!(plan.unwrap().unwrap().with_room, vec!["c-room".to_string()]);

        // A claim whose Released block waits for it is rebound there first.
        reg.create("ns", by_selector("nic"), false).await.unwrap();
        reg.delete::<IPPrefixClaim>("ns", "nic", &DeleteOptions::default())
            .await
            .unwrap();
        let plan = reg.claim_parents("ns", &by_selector("nic"), 8).await;
        assert_eq!(plan.unwrap().unwrap().rebind.as_deref(), Some("c-room"));

        // A claim that names its parent has nothing to plan.
        let named = IPPrefixClaim::new_with_length("ns", "n", "c-room", 32);
        assert_eq!(reg.claim_parents("ns", &named, 8).await.unwrap(), None);
    }

    #[test]
    fn a_chosen_child_name_is_the_namespaces_own_only_with_its_prefix() {
        let outside = |ns: &str, child: &str| {
            let c = IPPrefixClaim::new_with_length(ns, "c", "p", 32).prefix_name(child);
            crate::registry::child_name_outside_namespace(&c, ns).map(str::to_string)
        };
        assert_eq!(outside("evil", "evil.x"), None);
        assert_eq!(outside("evil", "prod.web-0").as_deref(), Some("prod.web-0"));
        assert_eq!(outside("evil", "evilx.web").as_deref(), Some("evilx.web"));
        assert_eq!(outside("evil", "evil").as_deref(), Some("evil"));
        let unnamed = IPPrefixClaim::new_with_length("evil", "c", "p", 32);
        assert_eq!(
            crate::registry::child_name_outside_namespace(&unnamed, "evil"),
            None
        );
    }
}
