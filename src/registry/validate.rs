//! Field rules shared by both kinds.
use crate::api::{IpFamily, ReclaimPolicy, ReserveSpec};
use crate::error::FieldError;
use ipnet::IpNet;

/// A canonical CIDR (host bits zero); reports and returns `None` otherwise.
pub fn validate_cidr(path: &str, value: &str, errs: &mut Vec<FieldError>) -> Option<IpNet> {
    if value.is_empty() {
        errs.push(FieldError::required(
            path,
            "a CIDR such as fd20::/20 or 10.0.0.0/8",
        ));
        return None;
    }
    let Ok(net) = value.parse::<IpNet>() else {
        errs.push(FieldError::invalid(
            path,
            format!("\"{value}\""),
            "must be a CIDR such as fd20::/20 or 10.0.0.0/8",
        ));
        return None;
    };
    if net.trunc() != net {
        errs.push(FieldError::invalid(
            path,
            format!("\"{value}\""),
            format!(
                "must be a canonical CIDR with the host bits zero: {}",
                net.trunc()
            ),
        ));
        return None;
    }
    // Keep the text canonical too ("FD20::/20" or "fd20:0::/20" would not compare equal).
    if net.to_string() != value {
        errs.push(FieldError::invalid(
            path,
            format!("\"{value}\""),
            format!("must be written canonically: {net}"),
        ));
        return None;
    }
    if let Some(v4) = ipv4_mapped(&net) {
        errs.push(FieldError::invalid(
            path,
            format!("\"{value}\""),
            format!("must not be an IPv4-mapped IPv6 prefix (inside ::ffff:0:0/96), which would give out the same addresses as the IPv4 prefix {v4}: use {v4}"),
        ));
        return None;
    }
    Some(net)
}

/// The IPv4 prefix an IPv4-mapped IPv6 prefix (`::ffff:10.0.0.0/104`) stands for. The
/// allocator keeps the families apart, so such a prefix next to the IPv4 one it maps would let
/// one host be handed out twice; they are refused instead.
fn ipv4_mapped(net: &IpNet) -> Option<ipnet::Ipv4Net> {
    let IpNet::V6(v6) = net else { return None };
    let len = v6.prefix_len().checked_sub(96)?;
    let v4 = v6.network().to_ipv4_mapped()?;
    ipnet::Ipv4Net::new(v4, len).ok()
}

pub fn validate_reserve(path: &str, reserve: Option<&ReserveSpec>, errs: &mut Vec<FieldError>) {
    let Some(r) = reserve else { return };
    for (field, v) in [("leading", r.leading), ("trailing", r.trailing)] {
        if let Some(v) = v.filter(|v| *v < 0) {
            errs.push(FieldError::invalid(
                format!("{path}.{field}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// `reserve` may not hold more addresses than the block it applies to: a block of
/// `max_len - len` host bits (`block` names it in the message).
pub fn validate_reserve_fits(
    path: &str,
    reserve: Option<&ReserveSpec>,
    len: u8,
    max_len: u8,
    block: &str,
    errs: &mut Vec<FieldError>,
) {
    let Some(r) = reserve else { return };
    let n = |v: Option<i64>| u128::try_from(v.unwrap_or(0)).unwrap_or(0);
    let wanted = n(r.leading) + n(r.trailing);
    let Some(total) = 1u128.checked_shl(u32::from(max_len.saturating_sub(len))) else {
        return; // 2^128 addresses: more than any reserve can name
    };
    if wanted > total {
        errs.push(FieldError::invalid(
            path,
            format!("{{leading: {}, trailing: {}}}", n(r.leading), n(r.trailing)),
            format!("reserves {wanted} addresses, more than the {total} of {block}"),
        ));
    }
}

pub fn validate_reclaim_policy(path: &str, policy: Option<&str>, errs: &mut Vec<FieldError>) {
    if let Some(p) = policy {
        if ReclaimPolicy::parse(p).is_none() {
            errs.push(FieldError::not_supported(path, p, &ReclaimPolicy::ALL));
        }
    }
}

pub fn validate_ip_family(
    path: &str,
    family: Option<&str>,
    errs: &mut Vec<FieldError>,
) -> Option<IpFamily> {
    let f = family?;
    let parsed = IpFamily::parse(f);
    if parsed.is_none() {
        errs.push(FieldError::not_supported(path, f, &IpFamily::ALL));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_prefixes_are_refused_naming_the_ipv4_prefix() {
        let mut errs = Vec::new();
        assert_eq!(
            validate_cidr("spec.prefix", "::ffff:10.0.0.0/104", &mut errs),
            None
        );
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].to_string().contains("use 10.0.0.0/8"),
            "{}",
            errs[0]
        );
        assert_eq!(
            validate_cidr("spec.prefix", "::ffff:0.0.0.0/96", &mut errs),
            None
        );
        // Around the mapped range, or containing all of it, is ordinary IPv6.
        for ok in [
            "::fffe:0:0/96",
            "::/64",
            "fd00::ffff:a00:0/104",
            "::fffe:0:0/95",
        ] {
            let mut errs = Vec::new();
            assert!(
                validate_cidr("spec.prefix", ok, &mut errs).is_some(),
                "{ok}: {errs:?}"
            );
        }
    }
}
