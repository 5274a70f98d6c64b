//! What a parent IPPrefix asks of the blocks carved from it: allowed and default lengths, how
//! long a Released child is kept, and the address space of its tree.
use super::meta;
use crate::api::{IPPrefix, IPPrefixSpec, IpFamily};
use crate::error::FieldError;
use ipnet::IpNet;

/// The lengths `parent` allows, as an inclusive range (its own length + 1 up to a single address
/// when it sets none).
pub fn allowed_lengths(parent: &IPPrefix, net: IpNet) -> (u8, u8) {
    let range = parent.spec.allowed_prefix_lengths.unwrap_or_default();
    let clamp = |v: i32| u8::try_from(v).unwrap_or(u8::MAX);
    (
        range.min.map_or(net.prefix_len() + 1, clamp),
        range.max.map_or(net.max_prefix_len(), clamp),
    )
}

/// A length outside `parent`'s `spec.allowedPrefixLengths`: the 422 cause on `field`.
pub fn check_allowed(
    parent: &IPPrefix,
    net: IpNet,
    len: u8,
    field: &str,
    value: impl std::fmt::Display,
) -> Result<(), FieldError> {
    if parent.spec.allowed_prefix_lengths.is_none() {
        return Ok(());
    }
    let (min, max) = allowed_lengths(parent, net);
    if (min..=max).contains(&len) {
        return Ok(());
    }
    Err(FieldError::invalid(
        field,
        value,
        format!(
            "must have a length between {min} and {max}: spec.allowedPrefixLengths of the parent ipprefix \"{}\" ({net})",
            parent.metadata.name.as_deref().unwrap_or_default()
        ),
    ))
}

/// The length a claim that gives neither `prefixLength` nor `prefix` gets from `parent`.
pub fn default_length(parent: &IPPrefix) -> Option<u8> {
    parent
        .spec
        .default_prefix_length
        .and_then(|l| u8::try_from(l).ok())
}

/// The policy fields of an IPPrefix spec: lengths within the family, longer than the prefix
/// itself, min ≤ default ≤ max; retention and address space well formed.
pub fn validate_policy(spec: &IPPrefixSpec, net: Option<IpNet>, errs: &mut Vec<FieldError>) {
    if let Some(space) = &spec.address_space {
        if let Err(e) = meta::validate_dns_label(space) {
            errs.push(FieldError::invalid(
                "spec.addressSpace",
                format!("\"{space}\""),
                e,
            ));
        }
    }
    if let Some(s) = spec.max_retention_seconds.filter(|s| *s < 0) {
        errs.push(FieldError::invalid(
            "spec.maxRetentionSeconds",
            s,
            "must be greater than or equal to 0",
        ));
    }
    let Some(net) = net else { return };
    let (own, top) = (i32::from(net.prefix_len()), i32::from(net.max_prefix_len()));
    let family = IpFamily::of(&net).as_str();
    let mut in_family = |field: &str, v: Option<i32>| {
        let v = v?;
        if v <= own || v > top {
            errs.push(FieldError::invalid(
                field,
                v,
                format!(
                    "must be between {} and {top}: longer than spec.prefix ({net}), at most a single {family} address",
                    own + 1
                ),
            ));
            return None;
        }
        Some(v)
    };
    let range = spec.allowed_prefix_lengths.unwrap_or_default();
    let min = in_family("spec.allowedPrefixLengths.min", range.min);
    let max = in_family("spec.allowedPrefixLengths.max", range.max);
    let default = in_family("spec.defaultPrefixLength", spec.default_prefix_length);
    if let (Some(min), Some(max)) = (min, max) {
        if min > max {
            errs.push(FieldError::invalid(
                "spec.allowedPrefixLengths.min",
                min,
                format!("must be less than or equal to spec.allowedPrefixLengths.max ({max})"),
            ));
        }
    }
    if let Some(d) = default {
        let (lo, hi) = (min.unwrap_or(own + 1), max.unwrap_or(top));
        if spec.allowed_prefix_lengths.is_some() && !(lo..=hi).contains(&d) {
            errs.push(FieldError::invalid(
                "spec.defaultPrefixLength",
                d,
                format!("must be within spec.allowedPrefixLengths ({lo} to {hi})"),
            ));
        }
    }
}

/// How long a Released child of `parent` is kept for a claim that asked for `requested`
/// seconds: the shorter of the two, whichever is set; `None` keeps it until an admin deletes it.
pub fn retention(parent: Option<&IPPrefix>, requested: Option<i64>) -> Option<i64> {
    let max = parent.and_then(|p| p.spec.max_retention_seconds);
    match (requested, max) {
        (Some(r), Some(m)) => Some(r.min(m)),
        (r, m) => r.or(m),
    }
}
