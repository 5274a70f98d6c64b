//! IPPrefix policy: canonical CIDRs, roots that do not overlap, static carves inside a parent,
//! exclusions and reservations that never cover a child, and protected deletes.
use super::guards;
use super::kind::{Kind, Removal};
use super::policy;
use super::state::{exclusions_of, parse_stored, reserve_of, PoolEntry, Root};
use super::status::refresh_prefix_status;
use super::txn::{Stored, Txn};
use super::validate::{
    validate_cidr, validate_reclaim_policy, validate_reserve, validate_reserve_fits,
};
use crate::alloc::{AllocError, Holder};
use crate::api::{prefix_phase, IPPrefix, IPPrefixClaim, IpFamily};
use crate::error::{ApiError, ApiResult, FieldError};
use ipnet::IpNet;

impl Kind for IPPrefix {
    const RESOURCE: &'static str = "ipprefixes";
    const KIND: &'static str = "IPPrefix";
    const NAMESPACED: bool = false;
    const FIELD_SELECTORS: &'static [&'static str] = &[
        "spec.parentRef.name",
        "spec.prefix",
        "spec.addressSpace",
        "status.phase",
        super::selector::PREFIX_CONTAINS,
    ];

    fn field_value(&self, field: &str) -> String {
        match field {
            "spec.parentRef.name" => self
                .spec
                .parent_ref
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            "spec.prefix" => self.spec.prefix.clone(),
            "spec.addressSpace" => self.spec.address_space.clone().unwrap_or_default(),
            "status.phase" => self.phase().to_string(),
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
        // The whole status of an IPPrefix is derived by the server: a status write changes nothing.
        self.spec = old.spec.clone();
        self.status = old.status.clone();
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let net = validate_cidr("spec.prefix", &self.spec.prefix, &mut errs);
        if let Some(p) = &self.spec.parent_ref {
            if let Err(e) = super::meta::validate_dns_subdomain(&p.name) {
                errs.push(FieldError::invalid(
                    "spec.parentRef.name",
                    format!("\"{}\"", p.name),
                    e,
                ));
            }
        }
        for (i, ex) in self.spec.exclude.iter().enumerate() {
            let path = format!("spec.exclude[{i}]");
            if let (Some(ex), Some(net)) = (validate_cidr(&path, ex, &mut errs), net) {
                if IpFamily::of(&ex) != IpFamily::of(&net) || !net.contains(&ex) {
                    errs.push(FieldError::invalid(
                        path,
                        format!("\"{ex}\""),
                        format!("must be inside spec.prefix {net}"),
                    ));
                }
            }
        }
        validate_reserve("spec.reserve", self.spec.reserve.as_ref(), &mut errs);
        if let Some(net) = net {
            validate_reserve_fits(
                "spec.reserve",
                self.spec.reserve.as_ref(),
                net.prefix_len(),
                net.max_prefix_len(),
                &format!("spec.prefix {net}"),
                &mut errs,
            );
        }
        validate_reclaim_policy(
            "spec.reclaimPolicy",
            self.spec.reclaim_policy.as_deref(),
            &mut errs,
        );
        policy::validate_policy(&self.spec, net, &mut errs);
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.spec.prefix != old.spec.prefix {
            errs.push(FieldError::invalid(
                "spec.prefix",
                format!("\"{}\"", self.spec.prefix),
                "field is immutable",
            ));
        }
        if self.spec.parent_ref != old.spec.parent_ref {
            errs.push(FieldError::forbidden(
                "spec.parentRef",
                "field is immutable",
            ));
        }
        if self.spec.address_space != old.spec.address_space {
            errs.push(FieldError::invalid(
                "spec.addressSpace",
                format!(
                    "\"{}\"",
                    self.spec.address_space.as_deref().unwrap_or_default()
                ),
                "field is immutable",
            ));
        }
        if self.spec.claim_ref != old.spec.claim_ref {
            errs.push(FieldError::forbidden(
                "spec.claimRef",
                "field is immutable; it is set by the server when a claim binds",
            ));
        }
        errs
    }

    async fn on_create(&mut self, tx: &mut Txn<'_>) -> ApiResult<()> {
        if self.spec.claim_ref.is_some() {
            return Err(ApiError::invalid(
                Self::KIND,
                &name_of(self),
                vec![FieldError::forbidden(
                    "spec.claimRef",
                    "set by the server when a claim binds; create an IPPrefixClaim instead",
                )],
            ));
        }
        let net = parse_stored(self)?;
        let name = name_of(self);
        match self.spec.parent_ref.clone() {
            Some(parent_ref) => carve_static(tx, self, net, &parent_ref.name).await?,
            None => {
                let space = self.spec.address_space.clone();
                if let Some((other, other_root)) = tx
                    .state
                    .roots
                    .iter()
                    .find(|(_, r)| r.space == space && overlaps(&r.net, &net))
                {
                    let in_space = match &space {
                        Some(s) => format!(" in address space \"{s}\""),
                        None => String::new(),
                    };
                    return Err(ApiError::conflict(
                        Self::RESOURCE,
                        &name,
                        format!(
                            "root prefix {net} overlaps root ipprefix \"{other}\" ({}){in_space}",
                            other_root.net
                        ),
                    ));
                }
                tx.guard(guards::roots(space.as_deref()));
                tx.state.roots.insert(name.clone(), Root { net, space });
                tx.on_undo(move |s| {
                    s.roots.remove(&name);
                });
            }
        }
        self.status = None;
        refresh_prefix_status(self, tx.state)
    }

    async fn on_update(&mut self, old: &Self, tx: &mut Txn<'_>) -> ApiResult<()> {
        let name = name_of(self);
        if self.spec.exclude != old.spec.exclude || self.spec.reserve != old.spec.reserve {
            // Allocation reads them: a replica allocating from the old ones must fail.
            tx.guard(guards::pool(&name));
            if let Some(entry) = tx.state.pool_entry_mut(&name) {
                let (old_ex, old_res) = (entry.pool.exclusions().to_vec(), entry.pool.reserve());
                let result = entry
                    .pool
                    .set_exclusions(&exclusions_of(self))
                    .map_err(|e| ("spec.exclude", e))
                    .and_then(|_| {
                        entry
                            .pool
                            .set_reserve(reserve_of(self.spec.reserve.as_ref()))
                            .map_err(|e| ("spec.reserve", e))
                    });
                if let Err((field, e)) = result {
                    let _ = entry.pool.set_reserve(old_res);
                    let _ = entry.pool.set_exclusions(&old_ex);
                    let detail = match &e {
                        AllocError::CoversAllocated { allocated, .. } => {
                            let holder = entry.holders.get(allocated).cloned().unwrap_or_default();
                            format!("would cover child ipprefix \"{holder}\" ({allocated})")
                        }
                        other => other.to_string(),
                    };
                    return Err(ApiError::invalid(
                        Self::KIND,
                        &name,
                        vec![FieldError::invalid(field, "", detail)],
                    ));
                }
                let n = name.clone();
                tx.on_undo(move |s| {
                    if let Some(entry) = s.pool_entry_mut(&n) {
                        let _ = entry.pool.set_reserve(old_res);
                        let _ = entry.pool.set_exclusions(&old_ex);
                    }
                });
            }
        }
        refresh_prefix_status(self, tx.state)
    }

    /// Refused while bound to a live claim or while it has children, whatever its finalizers.
    async fn check_delete(&self, tx: &mut Txn<'_>) -> ApiResult<()> {
        let name = name_of(self);
        if let Some(claim_ref) = &self.spec.claim_ref {
            if self.phase() != prefix_phase::RELEASED {
                if let Some(claim) = tx
                    .get::<IPPrefixClaim>(&claim_ref.namespace, &claim_ref.name)
                    .await?
                {
                    if claim.obj.metadata.uid == claim_ref.uid || claim_ref.uid.is_none() {
                        return Err(ApiError::conflict(
                            Self::RESOURCE,
                            &name,
                            format!(
                                "ipprefix \"{name}\" is bound to claim {}/{}; delete claim {}/{} instead",
                                claim_ref.namespace, claim_ref.name, claim_ref.namespace, claim_ref.name
                            ),
                        ));
                    }
                }
            }
        }
        let children = tx.state.children(&name);
        if children > 0 {
            return Err(ApiError::conflict(
                Self::RESOURCE,
                &name,
                format!("ipprefix \"{name}\" has {children} child prefixes; delete them first"),
            ));
        }
        Ok(())
    }

    async fn on_remove(&mut self, tx: &mut Txn<'_>) -> ApiResult<Removal> {
        if self.metadata.deletion_timestamp.is_some() && tx.state.children(&name_of(self)) > 0 {
            // Freed with its claim's block, its last user finalizer gone: it still waits for
            // children kept by theirs.
            return Ok(Removal::KeepInUse);
        }
        self.check_delete(tx).await?;
        // Freeing a block may end the wait of a terminating claim above.
        if let Some(parent) = release_prefix(tx, self).await? {
            super::release::settle(tx, parent).await?;
        }
        Ok(Removal::Remove)
    }
}

/// Give `prefix`'s block back to its parent (or drop it from the roots) and forget its indexes,
/// marking the parent's status stale. The caller deletes the object. Returns the parent, when
/// it has one.
pub(super) async fn release_prefix(
    tx: &mut Txn<'_>,
    prefix: &IPPrefix,
) -> ApiResult<Option<Stored<IPPrefix>>> {
    let name = name_of(prefix);
    let net = parse_stored(prefix)?;
    // Another replica may be giving it its first child.
    tx.guard(guards::pool(&name));
    if let Some(entry) = tx.state.drop_pool(&name) {
        let n = name.clone();
        tx.on_undo(move |s| s.insert_pool(n, entry));
    }
    // Gone from the index: neither Bound nor unbound.
    super::release::set_bound(tx, &name, true);
    if let Some(c) = &prefix.spec.claim_ref {
        let key = (c.namespace.clone(), c.name.clone());
        if tx.state.released.get(&key) == Some(&name) {
            tx.state.released.remove(&key);
            let n = name.clone();
            tx.on_undo(move |s| {
                s.released.insert(key, n);
            });
        }
    }
    if let Some(at) = tx.state.expiries.remove(&name) {
        let n = name.clone();
        tx.on_undo(move |s| {
            s.expiries.insert(&n, at);
        });
    }
    let Some(parent_ref) = &prefix.spec.parent_ref else {
        tx.guard(guards::roots(prefix.spec.address_space.as_deref()));
        if let Some(root) = tx.state.roots.remove(&name) {
            tx.on_undo(move |s| {
                s.roots.insert(name, root);
            });
        }
        return Ok(None);
    };
    let Some(parent) = tx.get::<IPPrefix>("", &parent_ref.name).await? else {
        return Ok(None);
    };
    tx.guard(guards::pool(&parent_ref.name));
    let entry = tx.state.pool_mut(&parent.obj)?;
    if entry.pool.release(net).is_ok() {
        entry.holders.remove(&net);
        tx.releases += 1;
        let (p, n) = (parent_ref.name.clone(), name.clone());
        tx.on_undo(move |s| {
            if let Some(e) = s.pool_entry_mut(&p) {
                let _ = e.pool.allocate_exact(net);
                e.holders.insert(net, n);
            }
        });
    }
    tx.state.mark_status_stale(&parent_ref.name);
    // A parent past its retention that waited for its children goes when the last one does.
    if tx.state.children(&parent_ref.name) == 0
        && tx.state.expiries.waiting.remove(&parent_ref.name)
    {
        let p = parent_ref.name.clone();
        let previous = tx.state.expiries.insert(&p, 0);
        tx.on_undo(move |s| {
            s.expiries.remove(&p);
            if let Some(at) = previous {
                s.expiries.insert(&p, at);
            }
            s.expiries.waiting.insert(p);
        });
    }
    Ok(Some(parent))
}

/// A static carve: a user-made IPPrefix with `parentRef` takes exactly its block, of a length
/// the parent allows, in the parent's address space.
async fn carve_static(
    tx: &mut Txn<'_>,
    carve: &mut IPPrefix,
    net: IpNet,
    parent_name: &str,
) -> ApiResult<()> {
    let name = &name_of(carve);
    let Some(parent) = tx.get::<IPPrefix>("", parent_name).await? else {
        return Err(ApiError::invalid(
            IPPrefix::KIND,
            name,
            vec![FieldError::not_found(
                "spec.parentRef.name",
                format!("\"{parent_name}\""),
                "no such ipprefix",
            )],
        ));
    };
    let pnet = parse_stored(&parent.obj)?;
    let mut errs = Vec::new();
    if IpFamily::of(&pnet) == IpFamily::of(&net) && pnet.contains(&net) && pnet != net {
        if let Err(e) = policy::check_allowed(
            &parent.obj,
            pnet,
            net.prefix_len(),
            "spec.prefix",
            format!("\"{net}\""),
        ) {
            errs.push(e);
        }
    }
    let parent_space = parent.obj.spec.address_space.clone();
    match &carve.spec.address_space {
        Some(s) if Some(s) != parent_space.as_ref() => errs.push(FieldError::invalid(
            "spec.addressSpace",
            format!("\"{s}\""),
            format!(
                "must be the address space of the parent ipprefix \"{parent_name}\" ({})",
                parent_space
                    .as_deref()
                    .map_or("none".to_string(), |p| format!("\"{p}\""))
            ),
        )),
        _ => carve.spec.address_space = parent_space,
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(IPPrefix::KIND, name, errs));
    }
    if let Err(e) = take_block(tx, &parent.obj, net, name)? {
        return Err(block_error(
            IPPrefix::RESOURCE,
            name,
            "spec.prefix",
            &parent.obj,
            tx,
            e,
        ));
    }
    tx.state.mark_status_stale(parent_name);
    // A carve is Available: it holds no deleting claim above it.
    super::release::set_bound(tx, name, false);
    Ok(())
}

/// Mark `net` allocated in `parent`'s pool for the child `holder`, with undo. The outer error
/// is a server fault; the inner one is the allocator's refusal, for `block_error`.
pub(super) fn take_block(
    tx: &mut Txn<'_>,
    parent: &IPPrefix,
    net: IpNet,
    holder: &str,
) -> ApiResult<Result<(), AllocError>> {
    let parent_name = name_of(parent);
    tx.guard(guards::pool(&parent_name));
    let entry: &mut PoolEntry = tx.state.pool_mut(parent)?;
    if let Err(e) = entry.pool.allocate_exact(net) {
        return Ok(Err(e));
    }
    entry.holders.insert(net, holder.to_string());
    tx.allocations += 1;
    tx.on_undo(move |s| {
        if let Some(e) = s.pool_entry_mut(&parent_name) {
            let _ = e.pool.release(net);
            e.holders.remove(&net);
        }
    });
    Ok(Ok(()))
}

/// An allocator refusal → the API error a user sees, naming the holder of a collision.
pub(super) fn block_error(
    resource: &str,
    name: &str,
    field: &str,
    parent: &IPPrefix,
    tx: &Txn<'_>,
    e: AllocError,
) -> ApiError {
    let parent_name = name_of(parent);
    match e {
        AllocError::Collision { prefix, holder } => {
            let what = match holder {
                Holder::Allocated(b) => {
                    let h = tx
                        .state
                        .pool(&parent_name)
                        .and_then(|p| p.holders.get(&b).cloned())
                        .unwrap_or_default();
                    format!("ipprefix \"{h}\" ({b})")
                }
                Holder::Excluded(b) => format!("exclusion {b} of ipprefix \"{parent_name}\""),
                Holder::Reserved => format!("the reserved addresses of ipprefix \"{parent_name}\""),
            };
            ApiError::conflict(
                resource,
                name,
                format!(
                    "{prefix} is not free in ipprefix \"{parent_name}\" ({}): held by {what}",
                    parent.spec.prefix
                ),
            )
        }
        AllocError::OutsidePool { prefix, pool } => ApiError::invalid(
            kind_of(resource),
            name,
            vec![FieldError::invalid(
                field,
                format!("\"{prefix}\""),
                format!("must be inside the parent ipprefix \"{parent_name}\" ({pool})"),
            )],
        ),
        AllocError::FamilyMismatch { pool, requested } => ApiError::invalid(
            kind_of(resource),
            name,
            vec![FieldError::invalid(
                field,
                format!("\"{requested}\""),
                format!("is not the IP family of the parent ipprefix \"{parent_name}\" ({pool})"),
            )],
        ),
        AllocError::LengthOutOfRange {
            requested,
            min,
            max,
        } => {
            let parent = format!("ipprefix \"{parent_name}\" ({})", parent.spec.prefix);
            let message = if min > max {
                format!(
                    "the parent {parent} is a single address: it has no room for a /{requested}"
                )
            } else if min == max {
                format!("must be {max}: the only length longer than the parent {parent}")
            } else {
                format!("must be between {min} and {max}: longer than the parent {parent}")
            };
            ApiError::invalid(
                kind_of(resource),
                name,
                vec![FieldError::invalid(field, requested, message)],
            )
        }
        other => ApiError::invalid(
            kind_of(resource),
            name,
            vec![FieldError::invalid(field, "", other.to_string())],
        ),
    }
}

fn kind_of(resource: &str) -> &'static str {
    if resource == IPPrefix::RESOURCE {
        IPPrefix::KIND
    } else {
        IPPrefixClaim::KIND
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    IpFamily::of(a) == IpFamily::of(b) && (a.contains(b) || b.contains(a))
}

pub(super) fn name_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}
