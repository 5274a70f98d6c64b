//! `labelSelector` and `fieldSelector` query strings, parsed as Kubernetes parses them.
//! Matching reuses kube-core's `Selector`, the same type a `LabelSelector` converts into.
use crate::error::{ApiError, ApiResult};
use kube::core::{Expression, Selector, SelectorExt};
use std::collections::{BTreeMap, BTreeSet};

/// Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
pub fn parse_label_selector(s: &str) -> ApiResult<Selector> {
    let mut exprs = Vec::new();
    for req in split_requirements(s) {
        let req = req.trim();
        if req.is_empty() {
            continue;
        }
        exprs.push(parse_requirement(req).map_err(|e| {
            ApiError::BadRequest(format!(
                "unable to parse requirement {req:?} of labelSelector: {e}"
            ))
        })?);
    }
    Ok(Selector::from_iter(exprs))
}

/// Split on commas that are not inside `( … )`.
fn split_requirements(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_requirement(req: &str) -> Result<Expression, String> {
    if let Some(key) = req.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(label_key(key.trim())?));
    }
    if let Some((k, v)) = req.split_once("!=") {
        return Ok(Expression::NotEqual(
            label_key(k.trim())?,
            label_value(v.trim())?,
        ));
    }
    if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
        return Ok(Expression::Equal(
            label_key(k.trim())?,
            label_value(v.trim())?,
        ));
    }
    let mut words = req.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim();
    if rest.is_empty() {
        return Ok(Expression::Exists(label_key(key)?));
    }
    let open = rest
        .find('(')
        .ok_or("expected =, ==, !=, in (...) or notin (...)")?;
    let op = rest[..open].trim();
    let inner = rest[open..]
        .strip_prefix('(')
        .and_then(|s| s.trim_end().strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesized set of values after {op:?}"))?;
    let values: BTreeSet<String> = inner
        .split(',')
        .map(|v| label_value(v.trim()))
        .collect::<Result<_, _>>()?;
    match op {
        "in" => Ok(Expression::In(label_key(key)?, values)),
        "notin" => Ok(Expression::NotIn(label_key(key)?, values)),
        other => Err(format!(
            "unknown operator {other:?}; expected one of =, ==, !=, in, notin"
        )),
    }
}

fn label_key(k: &str) -> Result<String, String> {
    crate::registry::meta::validate_label_key(k)
        .map_err(|e| format!("invalid label key {k:?}: {e}"))?;
    Ok(k.to_string())
}

fn label_value(v: &str) -> Result<String, String> {
    crate::registry::meta::validate_label_value(v)
        .map_err(|e| format!("invalid label value {v:?}: {e}"))?;
    Ok(v.to_string())
}

/// Whether `labels` satisfy `selector`.
pub fn matches(selector: &Selector, labels: Option<&BTreeMap<String, String>>) -> bool {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    selector.matches(labels.unwrap_or(&EMPTY))
}

/// One `field=value` / `field!=value` term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

/// Parse a field selector, allowing only the fields in `supported`.
pub fn parse_field_selector(s: &str, supported: &[&str]) -> ApiResult<Vec<FieldRequirement>> {
    let mut out = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, true)
        } else {
            return Err(ApiError::BadRequest(format!(
                "invalid fieldSelector term {term:?}: expected field=value or field!=value"
            )));
        };
        let field = field.trim();
        if field == PREFIX_CONTAINS && supported.contains(&field) {
            check_contains_term(term, value.trim(), equal)?;
        }
        if !supported.contains(&field) {
            let list = supported
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ApiError::BadRequest(format!(
                "field label not supported: {field:?}; supported fields: {list}"
            )));
        }
        out.push(FieldRequirement {
            field: field.into(),
            value: value.trim().into(),
            equal,
        });
    }
    Ok(out)
}

/// Whether every requirement holds, given a way to read a field's value.
pub fn fields_match(reqs: &[FieldRequirement], value_of: impl Fn(&str) -> String) -> bool {
    reqs.iter().all(|r| {
        if r.field == PREFIX_CONTAINS {
            return prefix_contains(&value_of("spec.prefix"), &r.value);
        }
        (value_of(&r.field) == r.value) == r.equal
    })
}

/// `spec.prefix.contains=<address or CIDR>`: the IPPrefixes whose block contains it. Not an
/// equality, so the registry answers it from the allocation index
/// ([`contains_requirement`]) and [`fields_match`] tests it per object (watches).
pub const PREFIX_CONTAINS: &str = "spec.prefix.contains";

/// An address (`fd20::5`, as its /128 or /32) or a CIDR; host bits of a CIDR are dropped.
pub fn parse_address_or_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()
}

/// The block a `spec.prefix.contains` requirement asks about, if the selector has one.
pub fn contains_requirement(reqs: &[FieldRequirement]) -> Option<ipnet::IpNet> {
    reqs.iter()
        .find(|r| r.field == PREFIX_CONTAINS)
        .and_then(|r| parse_address_or_cidr(&r.value))
}

fn check_contains_term(term: &str, value: &str, equal: bool) -> ApiResult<()> {
    if !equal {
        return Err(ApiError::BadRequest(format!(
            "invalid fieldSelector term {term:?}: {PREFIX_CONTAINS} supports only ="
        )));
    }
    if parse_address_or_cidr(value).is_none() {
        return Err(ApiError::BadRequest(format!(
            "invalid fieldSelector term {term:?}: {value:?} is not an IP address or CIDR"
        )));
    }
    Ok(())
}

fn prefix_contains(prefix: &str, value: &str) -> bool {
    match (prefix.parse::<ipnet::IpNet>(), parse_address_or_cidr(value)) {
        (Ok(prefix), Some(wanted)) => prefix.contains(&wanted),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_supports_every_operator() {
        let sel =
            parse_label_selector("tier=platform, env!=dev,region in (dfw, iad),!legacy,owner")
                .unwrap();
        assert!(matches(
            &sel,
            Some(&labels(&[
                ("tier", "platform"),
                ("region", "dfw"),
                ("owner", "x")
            ]))
        ));
        assert!(!matches(
            &sel,
            Some(&labels(&[
                ("tier", "platform"),
                ("region", "ord"),
                ("owner", "x")
            ]))
        ));
        assert!(!matches(
            &sel,
            Some(&labels(&[
                ("tier", "platform"),
                ("region", "dfw"),
                ("owner", "x"),
                ("legacy", "")
            ]))
        ));
        let sel = parse_label_selector("ipam.miloapis.com/tier notin (a,b)").unwrap();
        assert!(matches(&sel, None));
        assert!(!matches(
            &sel,
            Some(&labels(&[("ipam.miloapis.com/tier", "a")]))
        ));
        assert!(matches(&parse_label_selector("").unwrap(), None));
    }

    #[test]
    fn malformed_label_selector_is_bad_request() {
        for bad in ["a in x", "a in (b", "-bad=1", "a=b c", "a foo (b)"] {
            let err = parse_label_selector(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} must fail"));
            assert_eq!(err.code(), 400, "{bad}");
        }
    }

    #[test]
    fn field_selector_allows_only_supported_fields() {
        let reqs = parse_field_selector(
            "metadata.name=a,status.phase!=Bound",
            &["metadata.name", "status.phase"],
        )
        .unwrap();
        assert!(fields_match(&reqs, |f| if f == "metadata.name" {
            "a".into()
        } else {
            "Released".into()
        }));
        assert!(!fields_match(&reqs, |f| if f == "metadata.name" {
            "a".into()
        } else {
            "Bound".into()
        }));
        let err = parse_field_selector("spec.foo=1", &["metadata.name"]).unwrap_err();
        assert!(err.to_string().contains("spec.foo"));
    }

    #[test]
    fn prefix_contains_matches_blocks_holding_the_address_or_cidr() {
        let fields = ["spec.prefix", PREFIX_CONTAINS];
        let reqs = parse_field_selector("spec.prefix.contains=fd20::5", &fields).unwrap();
        assert!(fields_match(&reqs, |_| "fd20::/64".into()));
        assert!(fields_match(&reqs, |_| "fd20::5/128".into()));
        assert!(!fields_match(&reqs, |_| "fd20:0:0:1::/64".into()));
        let reqs = parse_field_selector("spec.prefix.contains=10.1.2.0/24", &fields).unwrap();
        assert!(fields_match(&reqs, |_| "10.0.0.0/8".into()));
        assert!(!fields_match(&reqs, |_| "10.1.2.0/25".into()));
        assert_eq!(
            contains_requirement(&reqs),
            Some("10.1.2.0/24".parse().unwrap())
        );
        for bad in [
            "spec.prefix.contains=fd20::zz",
            "spec.prefix.contains!=fd20::5",
        ] {
            assert_eq!(parse_field_selector(bad, &fields).unwrap_err().code(), 400);
        }
    }
}
