//! IPPrefixClaim policy: create *is* the allocation, delete *is* the release.
//!
//! A create picks the parent (by reference, or by selector in name order), takes the first free
//! block (or exactly `spec.prefix`), and writes the claim, its bound child IPPrefix and the
//! parent's status in one transaction. Nothing is written when there is no room.
use super::kind::{Kind, Removal};
use super::meta;
use super::policy;
use super::prefix::{block_error, name_of, take_block};
use super::release;
use super::state::{parse_stored, reserve_of};
use super::status::fill_prefix_status;
use super::txn::{Stored, Txn};
use super::validate::{
    validate_cidr, validate_ip_family, validate_reclaim_policy, validate_reserve,
    validate_reserve_fits,
};
use crate::alloc::{AllocError, Pool};
use crate::api::*;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::store::Precondition;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Selector;
use sha2::Digest;

const BOUND_CONDITION: &str = "Bound";

impl Kind for IPPrefixClaim {
    const RESOURCE: &'static str = "ipprefixclaims";
    const KIND: &'static str = "IPPrefixClaim";
    const NAMESPACED: bool = true;
    const FIELD_SELECTORS: &'static [&'static str] =
        &["spec.parentRef.name", "spec.prefixLength", "status.phase"];

    fn field_value(&self, field: &str) -> String {
        match field {
            "spec.parentRef.name" => self
                .spec
                .parent_ref
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            "spec.prefixLength" => self
                .spec
                .prefix_length
                .map(|l| l.to_string())
                .unwrap_or_default(),
            "status.phase" => self
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    fn same_spec(&self, other: &Self) -> bool {
        self.spec == other.spec
    }

    fn keep_status_of(&mut self, old: &Self) {
        self.status = old.status.clone();
    }

    fn keep_spec_of(&mut self, old: &Self) {
        self.spec = old.spec.clone();
        // The allocation record is the server's: a status write may add or change conditions
        // of its own types, never the Bound condition or the allocated block.
        let mut status = old.status.clone().unwrap_or_default();
        let written = self.status.take().map(|s| s.conditions).unwrap_or_default();
        status.conditions.retain(|c| c.type_ == BOUND_CONDITION);
        status
            .conditions
            .extend(written.into_iter().filter(|c| c.type_ != BOUND_CONDITION));
        self.status = Some(status);
    }

    fn default_spec(&mut self) {
        self.spec
            .reclaim_policy
            .get_or_insert_with(|| ReclaimPolicy::Delete.as_str().to_string());
    }

    fn default_on_create(&mut self) {
        self.status = None;
    }

    fn validate(&self) -> Vec<FieldError> {
        validate_claim_spec(&self.spec)
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let (new, old) = (&self.spec, &old.spec);
        let mut errs = Vec::new();
        let mut immutable = |field: &str, changed: bool| {
            if changed {
                errs.push(FieldError::forbidden(
                    field,
                    "field is immutable after creation; only spec.reclaimPolicy and spec.retentionSeconds may change",
                ));
            }
        };
        immutable("spec.prefixLength", new.prefix_length != old.prefix_length);
        immutable("spec.ipFamily", new.ip_family != old.ip_family);
        immutable("spec.parentRef", new.parent_ref != old.parent_ref);
        immutable(
            "spec.parentSelector",
            new.parent_selector != old.parent_selector,
        );
        immutable("spec.prefix", new.prefix != old.prefix);
        immutable(
            "spec.childPrefixTemplate",
            new.child_prefix_template != old.child_prefix_template,
        );
        errs
    }

    async fn on_create(&mut self, tx: &mut Txn<'_>) -> ApiResult<()> {
        allocate(self, tx).await
    }

    async fn on_update(&mut self, old: &Self, tx: &mut Txn<'_>) -> ApiResult<()> {
        // The binding still holds for the new spec: say so for this generation, or clients
        // waiting for the condition (`kubectl wait`) take it as stale.
        let generation = self.metadata.generation;
        for c in self.status.iter_mut().flat_map(|s| s.conditions.iter_mut()) {
            if c.type_ == BOUND_CONDITION && c.status == "True" {
                c.observed_generation = generation;
            }
        }
        // The bound IPPrefix follows the claim's reclaimPolicy (the only mutable spec field).
        if self.spec.reclaim_policy != old.spec.reclaim_policy {
            if let Some(mut child) = bound_prefix(self, tx).await? {
                child.obj.spec.reclaim_policy = self.spec.reclaim_policy.clone();
                child.obj.metadata.resource_version = None;
                tx.put(&child.obj, Precondition::Revision(child.revision))?;
            }
        }
        Ok(())
    }

    async fn on_remove(&mut self, tx: &mut Txn<'_>) -> ApiResult<Removal> {
        let Some(child) = bound_prefix(self, tx).await? else {
            return Ok(Removal::Remove);
        };
        // Only Bound descendants hold it; the rest go with its block.
        let child_name = name_of(&child.obj);
        let bound = release::holders_of(tx, &child_name);
        if !bound.is_empty() {
            let waiting = release::waiting_condition(&child_name, &bound, self.metadata.generation);
            release::set_condition(self, waiting);
            return Ok(Removal::KeepInUse);
        }
        release::release_claimed_prefix(tx, child, self.spec.retention_seconds).await?;
        Ok(Removal::Remove)
    }
}

fn validate_claim_spec(spec: &IPPrefixClaimSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let family = validate_ip_family("spec.ipFamily", spec.ip_family.as_deref(), &mut errs);
    let prefix = spec
        .prefix
        .as_deref()
        .and_then(|p| validate_cidr("spec.prefix", p, &mut errs));
    // Neither prefixLength nor prefix: the parent's defaultPrefixLength, checked on allocation.
    match (spec.prefix_length, &spec.prefix) {
        (None, _) => {}
        (Some(len), _) => {
            let max = family.map_or(128, |f| i32::from(f.max_prefix_len()));
            if !(1..=max).contains(&len) {
                errs.push(FieldError::invalid(
                    "spec.prefixLength",
                    len,
                    format!("must be between 1 and {max}"),
                ));
            } else if let Some(p) = prefix {
                if i32::from(p.prefix_len()) != len {
                    errs.push(FieldError::invalid(
                        "spec.prefixLength",
                        len,
                        format!("must equal the length of spec.prefix ({p})"),
                    ));
                }
            }
        }
    }
    if let (Some(f), Some(p)) = (family, prefix) {
        if IpFamily::of(&p) != f {
            errs.push(FieldError::invalid(
                "spec.ipFamily",
                f.as_str(),
                format!("does not match spec.prefix {p}"),
            ));
        }
    }
    match (&spec.parent_ref, &spec.parent_selector) {
        (Some(_), Some(_)) => errs.push(FieldError::forbidden(
            "spec.parentSelector",
            "may not be set together with spec.parentRef: set exactly one",
        )),
        (None, None) => errs.push(FieldError::required(
            "spec.parentRef",
            "exactly one of spec.parentRef or spec.parentSelector is required",
        )),
        (Some(r), None) => {
            if let Err(e) = meta::validate_dns_subdomain(&r.name) {
                errs.push(FieldError::invalid(
                    "spec.parentRef.name",
                    format!("\"{}\"", r.name),
                    e,
                ));
            }
        }
        (None, Some(sel)) => {
            let before = errs.len();
            validate_match_expressions(sel, &mut errs);
            if errs.len() == before {
                if let Err(e) = Selector::try_from(sel.clone()) {
                    errs.push(FieldError::invalid(
                        "spec.parentSelector",
                        "",
                        e.to_string(),
                    ));
                }
            }
            for (k, v) in sel.match_labels.iter().flatten() {
                if meta::validate_label_key(k).is_err() || meta::validate_label_value(v).is_err() {
                    errs.push(FieldError::invalid(
                        "spec.parentSelector.matchLabels",
                        format!("{k}={v}"),
                        "not a valid label",
                    ));
                }
            }
        }
    }
    validate_reclaim_policy(
        "spec.reclaimPolicy",
        spec.reclaim_policy.as_deref(),
        &mut errs,
    );
    if let Some(r) = spec.retention_seconds {
        let retain = spec
            .reclaim_policy
            .as_deref()
            .and_then(ReclaimPolicy::parse)
            == Some(ReclaimPolicy::Retain);
        if r < 0 {
            errs.push(FieldError::invalid(
                "spec.retentionSeconds",
                r,
                "must be greater than or equal to 0",
            ));
        } else if !retain {
            errs.push(FieldError::forbidden(
                "spec.retentionSeconds",
                "may be set only with spec.reclaimPolicy: Retain",
            ));
        }
    }
    if let Some(t) = &spec.child_prefix_template {
        if let Some(m) = &t.metadata {
            if let Some(n) = &m.name {
                if let Err(e) = meta::validate_dns_subdomain(n) {
                    errs.push(FieldError::invalid(
                        "spec.childPrefixTemplate.metadata.name",
                        format!("\"{n}\""),
                        e,
                    ));
                }
            }
            meta::validate_labels_annotations(
                "spec.childPrefixTemplate.metadata",
                Some(&m.labels),
                Some(&m.annotations),
                &mut errs,
            );
        }
        if let Some(s) = &t.spec {
            validate_reserve(
                "spec.childPrefixTemplate.spec.reserve",
                s.reserve.as_ref(),
                &mut errs,
            );
            // The block's size is known when its length and family are; otherwise the
            // allocated block is checked when it is bound.
            let len = prefix
                .map(|p| p.prefix_len())
                .or(spec.prefix_length.and_then(|l| u8::try_from(l).ok()));
            if let (Some(len), Some(f)) = (len, family.or(prefix.map(|p| IpFamily::of(&p)))) {
                if len <= f.max_prefix_len() {
                    validate_reserve_fits(
                        "spec.childPrefixTemplate.spec.reserve",
                        s.reserve.as_ref(),
                        len,
                        f.max_prefix_len(),
                        &format!("the /{len} block this claim gets"),
                        &mut errs,
                    );
                }
            }
            for (i, ex) in s.exclude.iter().enumerate() {
                validate_cidr(
                    &format!("spec.childPrefixTemplate.spec.exclude[{i}]"),
                    ex,
                    &mut errs,
                );
            }
        }
    }
    errs
}

/// The name a claim chooses for its IPPrefix when it lies outside its namespace's own names
/// (`<namespace>.`). IPPrefix names are cluster-wide, so in a cluster such a name needs the
/// right to create ipprefixes of that name: a tenant may not take another tenant's names.
pub fn child_name_outside_namespace<'a>(
    claim: &'a IPPrefixClaim,
    namespace: &str,
) -> Option<&'a str> {
    let name = claim
        .spec
        .child_prefix_template
        .as_ref()?
        .metadata
        .as_ref()?
        .name
        .as_deref()?;
    let own = name
        .strip_prefix(namespace)
        .is_some_and(|rest| rest.starts_with('.'));
    (!own).then_some(name)
}

/// Kubernetes' rules for a LabelSelector's expressions: `In`/`NotIn` need values,
/// `Exists`/`DoesNotExist` take none.
fn validate_match_expressions(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    errs: &mut Vec<FieldError>,
) {
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let path = format!("spec.parentSelector.matchExpressions[{i}]");
        if let Err(why) = meta::validate_label_key(&e.key) {
            errs.push(FieldError::invalid(
                format!("{path}.key"),
                format!("\"{}\"", e.key),
                why,
            ));
        }
        let values = e.values.as_ref().map_or(0, Vec::len);
        match e.operator.as_str() {
            "In" | "NotIn" if values == 0 => errs.push(FieldError::required(
                format!("{path}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if values > 0 => errs.push(FieldError::forbidden(
                format!("{path}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::not_supported(
                format!("{path}.operator"),
                other,
                &["In", "NotIn", "Exists", "DoesNotExist"],
            )),
        }
    }
}

/// The IPPrefix bound to this claim, if it still is.
async fn bound_prefix(claim: &IPPrefixClaim, tx: &Txn<'_>) -> ApiResult<Option<Stored<IPPrefix>>> {
    let Some(name) = claim
        .status
        .as_ref()
        .and_then(|s| s.prefix_ref.as_ref())
        .map(|r| r.name.clone())
    else {
        return Ok(None);
    };
    let Some(child) = tx.get::<IPPrefix>("", &name).await? else {
        return Ok(None);
    };
    let bound = child.obj.spec.claim_ref.as_ref().is_some_and(|c| {
        Some(&c.namespace) == claim.metadata.namespace.as_ref()
            && Some(&c.name) == claim.metadata.name.as_ref()
            && c.uid == claim.metadata.uid
    });
    Ok(bound.then_some(child))
}

/// What a claim asks for: the length (`None`: the parent's default), the exact block if any,
/// and the family.
pub(super) type Request = (Option<u8>, Option<IpNet>, Option<IpFamily>);

pub(super) fn requested(claim: &IPPrefixClaim) -> ApiResult<Request> {
    let exact: Option<IpNet> = claim.spec.prefix.as_deref().and_then(|p| p.parse().ok());
    let len = match (exact, claim.spec.prefix_length) {
        (Some(p), _) => Some(p.prefix_len()),
        (None, l) => l.map(|l| u8::try_from(l).unwrap_or(u8::MAX)),
    };
    let family = claim
        .spec
        .ip_family
        .as_deref()
        .and_then(IpFamily::parse)
        .or(exact.map(|p| IpFamily::of(&p)));
    Ok((len, exact, family))
}

/// The Released IPPrefix this claim would get back (an interface that comes back under the
/// same name gets its old block).
pub(super) async fn rebind_target(
    claim: &IPPrefixClaim,
    tx: &Txn<'_>,
    (len, exact, _): Request,
) -> ApiResult<Option<Stored<IPPrefix>>> {
    let key = (
        claim.metadata.namespace.clone().unwrap_or_default(),
        claim.metadata.name.clone().unwrap_or_default(),
    );
    let Some(released_name) = tx.state.released.get(&key) else {
        return Ok(None);
    };
    let Some(released) = tx.get::<IPPrefix>("", released_name).await? else {
        return Ok(None);
    };
    Ok(rebind_compatible(claim, &released.obj, len, exact, tx)
        .await?
        .then_some(released))
}

async fn allocate(claim: &mut IPPrefixClaim, tx: &mut Txn<'_>) -> ApiResult<()> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let request @ (len, exact, family) = requested(claim)?;
    if let Some(released) = rebind_target(claim, tx, request).await? {
        return rebind(claim, tx, released);
    }

    let by_selector = claim.spec.parent_ref.is_none();
    let candidates = candidate_parents(claim, tx, family, &name).await?;
    let mut tried = Vec::new();
    for parent in candidates {
        let pnet = parse_stored(&parent.obj)?;
        let Some(found) = fit(tx, &parent, request, by_selector, &name)? else {
            continue;
        };
        match found {
            Ok(block) => return bind(claim, tx, parent, block),
            Err(AllocError::Exhausted {
                largest_free,
                requested_len,
            }) => tried.push((name_of(&parent.obj), pnet, requested_len, largest_free)),
            Err(AllocError::OutsidePool { .. } | AllocError::FamilyMismatch { .. })
                if by_selector => {}
            Err(e) => {
                let field = if exact.is_some() {
                    "spec.prefix"
                } else {
                    "spec.prefixLength"
                };
                return Err(block_error(
                    IPPrefixClaim::RESOURCE,
                    &name,
                    field,
                    &parent.obj,
                    tx,
                    e,
                ));
            }
        }
    }
    Err(exhausted(&name, len, exact, by_selector, &tried))
}

/// The block `parent` would give the claim, or why not; `None` when a selector skips it (no
/// length, a length it cannot hold or does not allow, it is being deleted). Takes nothing.
pub(super) fn fit(
    tx: &mut Txn<'_>,
    parent: &Stored<IPPrefix>,
    (len, exact, _): Request,
    by_selector: bool,
    claim: &str,
) -> ApiResult<Option<Result<IpNet, AllocError>>> {
    let pnet = parse_stored(&parent.obj)?;
    let parent_name = name_of(&parent.obj);
    let Some(len) = len.or_else(|| policy::default_length(&parent.obj)) else {
        if by_selector {
            return Ok(None);
        }
        return Err(ApiError::invalid(
            IPPrefixClaim::KIND,
            claim,
            vec![FieldError::required(
                "spec.prefixLength",
                format!("required unless spec.prefix is set or the parent ipprefix \"{parent_name}\" has spec.defaultPrefixLength"),
            )],
        ));
    };
    let inside = exact
        .is_none_or(|p| IpFamily::of(&p) == IpFamily::of(&pnet) && pnet.contains(&p) && p != pnet);
    if inside {
        let checked = match exact {
            Some(p) => {
                policy::check_allowed(&parent.obj, pnet, len, "spec.prefix", format!("\"{p}\""))
            }
            None => policy::check_allowed(&parent.obj, pnet, len, "spec.prefixLength", len),
        };
        if let Err(cause) = checked {
            if by_selector {
                return Ok(None);
            }
            return Err(ApiError::invalid(IPPrefixClaim::KIND, claim, vec![cause]));
        }
    }
    if by_selector && (len <= pnet.prefix_len() || len > pnet.max_prefix_len()) {
        return Ok(None);
    }
    if parent.obj.metadata.deletion_timestamp.is_some() {
        if by_selector {
            return Ok(None);
        }
        return Err(ApiError::conflict(
            IPPrefixClaim::RESOURCE,
            claim,
            format!(
                "parent ipprefix \"{}\" is being deleted",
                name_of(&parent.obj)
            ),
        ));
    }
    let entry = tx.state.pool_mut(&parent.obj)?;
    Ok(Some(match exact {
        Some(p) => entry.pool.check_exact(p).map(|_| p),
        None => entry.pool.find_first_fit(len),
    }))
}

pub(super) async fn candidate_parents(
    claim: &IPPrefixClaim,
    tx: &mut Txn<'_>,
    family: Option<IpFamily>,
    name: &str,
) -> ApiResult<Vec<Stored<IPPrefix>>> {
    if let Some(r) = &claim.spec.parent_ref {
        let Some(parent) = tx.get_parent(&r.name).await? else {
            return Err(ApiError::invalid(
                IPPrefixClaim::KIND,
                name,
                vec![FieldError::not_found(
                    "spec.parentRef.name",
                    format!("\"{}\"", r.name),
                    "no such ipprefix",
                )],
            ));
        };
        if !tx.may_use(&r.name) {
            return Err(forbidden_parent(name, &r.name));
        }
        let pnet = parse_stored(&parent.obj)?;
        if let Some(f) = family.filter(|f| *f != IpFamily::of(&pnet)) {
            return Err(ApiError::invalid(
                IPPrefixClaim::KIND,
                name,
                vec![FieldError::invalid(
                    "spec.ipFamily",
                    f.as_str(),
                    format!("does not match the parent ipprefix \"{}\" ({pnet})", r.name),
                )],
            ));
        }
        return Ok(vec![parent]);
    }
    let selector: Selector = claim
        .spec
        .parent_selector
        .clone()
        .unwrap_or_default()
        .try_into()
        .map_err(|e: kube::core::ParseExpressionError| ApiError::BadRequest(e.to_string()))?;
    // Listed in key order, which is name order: the documented tie-break.
    let matching: Vec<_> = tx
        .list_all::<IPPrefix>()
        .await?
        .into_iter()
        .filter(|p| super::selector::matches(&selector, p.obj.metadata.labels.as_ref()))
        .filter(|p| family.is_none_or(|f| p.obj.prefix().is_some_and(|n| IpFamily::of(&n) == f)))
        .collect();
    let any_matched = !matching.is_empty();
    let usable: Vec<_> = matching
        .into_iter()
        .filter(|p| tx.may_use(&name_of(&p.obj)))
        .collect();
    if any_matched && usable.is_empty() {
        // Parents match but the caller may use none of them: forbidden, not exhausted.
        return Err(ApiError::Forbidden(format!(
            "ipprefixclaims.ipam.miloapis.com \"{name}\" is forbidden: not allowed to use any ipprefix matching spec.parentSelector (verb \"use\" on ipprefixes)"
        )));
    }
    Ok(usable)
}

fn forbidden_parent(claim: &str, parent: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "ipprefixclaims.ipam.miloapis.com \"{claim}\" is forbidden: not allowed to use ipprefix \"{parent}\" as a parent (verb \"use\" on ipprefixes/{parent})"
    ))
}

/// A parent tried: name, block, the length asked of it, its largest free length.
type Tried = (String, IpNet, u8, Option<u8>);

fn exhausted(
    name: &str,
    len: Option<u8>,
    exact: Option<IpNet>,
    by_selector: bool,
    tried: &[Tried],
) -> ApiError {
    // Without a length of its own the claim asks each parent for that parent's default.
    let len = len.or(tried.first().map(|t| t.2));
    let what = match (exact, len) {
        (Some(p), _) => format!("{p} is not free"),
        (None, Some(len)) => format!("no free /{len}"),
        (None, None) => "no free block".to_string(),
    };
    let room = match len {
        Some(len) => format!("room for a /{len}"),
        None => "room for the claim (or a spec.defaultPrefixLength)".to_string(),
    };
    let describe = |(n, net, _, largest): &Tried| match largest {
        Some(l) => format!("ipprefix \"{n}\" ({net}; largest free block /{l})"),
        None => format!("ipprefix \"{n}\" ({net}; full)"),
    };
    let message = match (by_selector, tried) {
        (_, []) => {
            format!("{what}: no ipprefix with {room} matches spec.parentSelector")
        }
        (false, [one]) => format!("{what} in {}", describe(one)),
        (_, many) => format!(
            "{what} in any ipprefix matching spec.parentSelector: {}",
            many.iter().map(describe).collect::<Vec<_>>().join(", ")
        ),
    };
    crate::metrics::global().exhaustions.inc();
    ApiError::Exhausted {
        subject: crate::error::Subject::new(IPPrefixClaim::RESOURCE, name),
        message,
    }
}

/// Bind `claim` to a new child IPPrefix holding `block` of `parent`.
fn bind(
    claim: &mut IPPrefixClaim,
    tx: &mut Txn<'_>,
    parent: Stored<IPPrefix>,
    block: IpNet,
) -> ApiResult<()> {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let template = claim.spec.child_prefix_template.clone().unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let tspec = template.spec.unwrap_or_default();
    let child_name = tmeta
        .name
        .clone()
        .unwrap_or_else(|| default_child_name(&ns, &name));
    let mut errs = Vec::new();
    validate_reserve_fits(
        "spec.childPrefixTemplate.spec.reserve",
        tspec.reserve.as_ref(),
        block.prefix_len(),
        block.max_prefix_len(),
        &format!("the allocated block {block}"),
        &mut errs,
    );
    if !errs.is_empty() {
        return Err(ApiError::invalid(IPPrefixClaim::KIND, &name, errs));
    }
    // The template's exclusions must fit the block actually allocated.
    let exclusions: Vec<IpNet> = tspec
        .exclude
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect();
    let child_pool = match Pool::new(block, &exclusions, reserve_of(tspec.reserve.as_ref())) {
        Ok(pool) => pool,
        Err(e) => {
            return Err(ApiError::invalid(
                IPPrefixClaim::KIND,
                &name,
                vec![FieldError::invalid(
                    "spec.childPrefixTemplate.spec.exclude",
                    "",
                    format!("does not fit the allocated block {block}: {e}"),
                )],
            ))
        }
    };
    let child_spec = IPPrefixSpec {
        prefix: block.to_string(),
        parent_ref: Some(PrefixReference::new(name_of(&parent.obj))),
        exclude: tspec.exclude,
        reserve: tspec.reserve,
        claim_ref: Some(ClaimReference {
            namespace: ns,
            name: name.clone(),
            uid: claim.metadata.uid.clone(),
        }),
        reclaim_policy: claim.spec.reclaim_policy.clone(),
        address_space: parent.obj.spec.address_space.clone(),
        allowed_prefix_lengths: tspec.allowed_prefix_lengths,
        default_prefix_length: tspec.default_prefix_length,
        max_retention_seconds: tspec.max_retention_seconds,
    };
    // The template's lengths are judged against the block actually allocated.
    let mut errs = Vec::new();
    policy::validate_policy(&child_spec, Some(block), &mut errs);
    if !errs.is_empty() {
        for e in &mut errs {
            e.field = e
                .field
                .replacen("spec.", "spec.childPrefixTemplate.spec.", 1);
        }
        return Err(ApiError::invalid(IPPrefixClaim::KIND, &name, errs));
    }
    if let Err(e) = take_block(tx, &parent.obj, block, &child_name)? {
        return Err(block_error(
            IPPrefixClaim::RESOURCE,
            &name,
            "spec.prefix",
            &parent.obj,
            tx,
            e,
        ));
    }
    let parent_name = name_of(&parent.obj);
    let mut child = IPPrefix::new(&child_name, child_spec);
    child.metadata.labels = Some(tmeta.labels).filter(|l| !l.is_empty());
    child.metadata.annotations = Some(tmeta.annotations).filter(|a| !a.is_empty());
    meta::prepare_for_create(&mut child.metadata);
    child.status = Some(IPPrefixStatus {
        phase: Some(prefix_phase::BOUND.into()),
        ..Default::default()
    });
    // The new prefix has no children yet: its status is its own pool's, built just above.
    fill_prefix_status(&mut child, &child_pool);
    let (claim_name, taken_name) = (name.clone(), child_name.clone());
    tx.put_new(&child, move || {
        ApiError::conflict(
            IPPrefixClaim::RESOURCE,
            &claim_name,
            format!("ipprefix \"{taken_name}\" already exists; choose another name with spec.childPrefixTemplate.metadata.name"),
        )
    })?;
    tx.state.mark_status_stale(&parent_name);
    claim.status = Some(bound_status(
        block,
        &child_name,
        &parent_name,
        bound_reason::ALLOCATED,
        format!("allocated {block} from ipprefix \"{parent_name}\""),
        claim.metadata.generation,
    ));
    Ok(())
}

async fn rebind_compatible(
    claim: &IPPrefixClaim,
    released: &IPPrefix,
    len: Option<u8>,
    exact: Option<IpNet>,
    tx: &Txn<'_>,
) -> ApiResult<bool> {
    let Some(net) = released.prefix() else {
        return Ok(false);
    };
    if released.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    if len.is_some_and(|l| l != net.prefix_len()) || exact.is_some_and(|e| e != net) {
        return Ok(false);
    }
    if let Some(f) = claim.spec.ip_family.as_deref().and_then(IpFamily::parse) {
        if f != IpFamily::of(&net) {
            return Ok(false);
        }
    }
    let parent_name = released
        .spec
        .parent_ref
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    // Getting the block back is allocating from its parent: it needs `use` there as well.
    if !tx.may_use(&parent_name) {
        return Ok(false);
    }
    let Some(parent) = tx.get::<IPPrefix>("", &parent_name).await? else {
        return Ok(false);
    };
    // A claim without a length gets its block back if that is the parent's default length.
    if len.is_none() && policy::default_length(&parent.obj) != Some(net.prefix_len()) {
        return Ok(false);
    }
    if let Some(r) = &claim.spec.parent_ref {
        return Ok(r.name == parent_name);
    }
    let selector: Selector = match claim
        .spec
        .parent_selector
        .clone()
        .unwrap_or_default()
        .try_into()
    {
        Ok(s) => s,
        Err(_) => return Ok(false),
    };
    Ok(super::selector::matches(
        &selector,
        parent.obj.metadata.labels.as_ref(),
    ))
}

/// Bind `claim` to the Released IPPrefix that waited for its name.
fn rebind(
    claim: &mut IPPrefixClaim,
    tx: &mut Txn<'_>,
    released: Stored<IPPrefix>,
) -> ApiResult<()> {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let Stored {
        obj: mut child,
        revision,
    } = released;
    let child_name = name_of(&child);
    let block = parse_stored(&child)?;
    child.spec.claim_ref = Some(ClaimReference {
        namespace: ns.clone(),
        name: name.clone(),
        uid: claim.metadata.uid.clone(),
    });
    child.spec.reclaim_policy = claim.spec.reclaim_policy.clone();
    let status = child.status.get_or_insert_with(Default::default);
    status.phase = Some(prefix_phase::BOUND.into());
    // Bound again: its retention no longer runs.
    status.released_at = None;
    status.retained_until = None;
    child.metadata.resource_version = None;
    tx.put(&child, Precondition::Revision(revision))?;
    release::set_bound(tx, &child_name, true);
    if let Some(at) = tx.state.expiries.remove(&child_name) {
        let n = child_name.clone();
        tx.on_undo(move |s| {
            s.expiries.insert(&n, at);
        });
    }
    if tx.state.expiries.waiting.remove(&child_name) {
        let n = child_name.clone();
        tx.on_undo(move |s| {
            s.expiries.waiting.insert(n);
        });
    }
    let key = (ns, name);
    tx.state.released.remove(&key);
    let undo_name = child_name.clone();
    tx.on_undo(move |s| {
        s.released.insert(key, undo_name);
    });
    let parent_name = child
        .spec
        .parent_ref
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    claim.status = Some(bound_status(
        block,
        &child_name,
        &parent_name,
        bound_reason::REBOUND,
        format!("rebound to {block} (ipprefix \"{child_name}\"), retained from an earlier claim of this name"),
        claim.metadata.generation,
    ));
    Ok(())
}

fn bound_status(
    block: IpNet,
    child: &str,
    parent: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> IPPrefixClaimStatus {
    IPPrefixClaimStatus {
        phase: Some(claim_phase::BOUND.into()),
        prefix: Some(block.to_string()),
        address: Some(block.network().to_string()),
        ip_family: Some(IpFamily::of(&block).as_str().into()),
        prefix_ref: Some(PrefixReference::new(child)),
        parent_ref: Some(PrefixReference::new(parent)),
        conditions: vec![Condition {
            type_: BOUND_CONDITION.into(),
            status: "True".into(),
            reason: reason.into(),
            message,
            last_transition_time: meta::now(),
            observed_generation: generation,
        }],
    }
}

/// `<namespace>.<claim>`, or, when that is longer than a name may be, a truncation plus a hash
/// of the whole (so two long names never collide).
pub fn default_child_name(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    if full.len() <= 253 {
        return full;
    }
    let digest = sha2::Sha256::digest(full.as_bytes());
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let head = full[..253 - 11].trim_end_matches(['.', '-']);
    format!("{head}-{hash}")
}
