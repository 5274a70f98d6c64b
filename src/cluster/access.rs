//! What creating a claim needs beyond `create` on the claim, asked with SubjectAccessReviews
//! (cached by the authorizer):
//! - `use` on the parent it allocates from. For a `parentSelector`: one review without a name
//!   (RBAC may grant `use` on every IPPrefix), then the parents in the order allocation tries
//!   them, those that could take the claim first, stopping at the first allowed and after
//!   [`MAX_PARENT_REVIEWS`]: one create cannot turn into thousands of reviews.
//! - `create` on ipprefixes of the name it chooses for its IPPrefix, when that name does not
//!   start with `<namespace>.`: names are cluster-wide, and a tenant may not take another's.
use crate::api::IPPrefixClaim;
use crate::auth::authz::{Attributes, Authorizer, Decision};
use crate::auth::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::registry::{child_name_outside_namespace, Registry};
use std::collections::HashSet;

/// The most `use` reviews of named parents one create with a `parentSelector` may send (besides
/// the one without a name and the one for a block it would get back).
pub const MAX_PARENT_REVIEWS: usize = 64;

/// The parents a claim may allocate from.
#[derive(Debug, Default)]
pub struct ParentAccess {
    /// `None`: any.
    pub allowed: Option<HashSet<String>>,
    /// Narrowed to the first usable parent that had room when asked: if the create then finds
    /// no room, another create may have taken it meanwhile, and asking again may find the next.
    pub narrowed: bool,
}

impl ParentAccess {
    /// Only `names` (none: no parent at all, and the create answers 403 or 422).
    fn only(names: impl IntoIterator<Item = String>, narrowed: bool) -> Self {
        ParentAccess {
            allowed: Some(names.into_iter().collect()),
            narrowed,
        }
    }
}

/// The 403 for a claim that chose a child name outside its namespace without the right to
/// create ipprefixes of that name, in the contract's words.
fn squatting(claim: &str, child: &str, namespace: &str, user: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "ipprefixclaims.ipam.miloapis.com \"{claim}\" is forbidden: spec.childPrefixTemplate.metadata.name \"{child}\" must start with \"{namespace}.\" unless the caller may create ipprefixes (user \"{user}\" may not create ipprefixes \"{child}\")"
    ))
}

async fn allowed(authz: &Authorizer, user: &UserInfo, attrs: &Attributes) -> ApiResult<bool> {
    match authz.authorize(user, attrs).await {
        Ok(Decision::Allow) => Ok(true),
        Ok(Decision::Deny(_)) => Ok(false),
        Err(e) => Err(ApiError::Internal(e)),
    }
}

/// Admission of a claim create by `user` in `namespace`: 403 for a child name it may not take,
/// else the parents it may allocate from.
pub async fn admit_claim(
    authz: &Authorizer,
    registry: &Registry,
    user: &UserInfo,
    namespace: &str,
    claim: &IPPrefixClaim,
) -> ApiResult<ParentAccess> {
    let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
    if let Some(child) = child_name_outside_namespace(claim, namespace) {
        if !allowed(authz, user, &Attributes::ipprefix("create", child)).await? {
            return Err(squatting(claim_name, child, namespace, &user.username));
        }
    }
    if let Some(parent) = &claim.spec.parent_ref {
        // One parent, one review (a block it gets back must come from the same parent).
        let ok = allowed(authz, user, &Attributes::ipprefix("use", &parent.name)).await?;
        return Ok(ParentAccess::only(ok.then(|| parent.name.clone()), false));
    }
    if claim.spec.parent_selector.is_none() {
        // Invalid: the create answers 422.
        return Ok(ParentAccess::only(None, false));
    }
    // Asked before the plan, which reads every matching IPPrefix under the writer lock.
    if allowed(authz, user, &Attributes::ipprefix("use", "")).await? {
        return Ok(ParentAccess::default());
    }
    // One more than may be asked about, to know when the bound cut the list short.
    let Some(plan) = registry
        .claim_parents(namespace, claim, MAX_PARENT_REVIEWS + 1)
        .await?
    else {
        // Nothing to allocate from: the create answers (422 for an invalid claim).
        return Ok(ParentAccess::only(None, false));
    };
    // In allocation's order: the block it would get back, the parents with room, the others
    // (whose answer is 409 Exhausted for a caller who may use one of them).
    if let Some(parent) = plan.rebind {
        if allowed(authz, user, &Attributes::ipprefix("use", &parent)).await? {
            return Ok(ParentAccess::only(Some(parent), true));
        }
    }
    let with_room = plan.with_room.len();
    let ordered = plan.with_room.into_iter().chain(plan.without_room);
    for (reviews, parent) in ordered.enumerate() {
        if reviews == MAX_PARENT_REVIEWS {
            return Err(ApiError::Forbidden(format!(
                "ipprefixclaims.ipam.miloapis.com \"{claim_name}\" is forbidden: not allowed to use any of the first {MAX_PARENT_REVIEWS} ipprefixes matching spec.parentSelector (verb \"use\" on ipprefixes); narrow the selector to parents you may use"
            )));
        }
        if allowed(authz, user, &Attributes::ipprefix("use", &parent)).await? {
            return Ok(ParentAccess::only(Some(parent), reviews < with_room));
        }
    }
    // None usable: the create answers 403, naming the selector.
    Ok(ParentAccess::only(None, false))
}
