//! Objects the audit tests describe: a bound claim, and the IPPrefix holding a claim's block.
use crate::api::{
    ClaimReference, IPPrefix, IPPrefixClaim, IPPrefixClaimSpec, IPPrefixClaimStatus, IPPrefixSpec,
    PrefixReference,
};

/// Claim `p/<name>` (uid `uid-<name>`, resourceVersion 7), bound to `prefix` from `subnet`
/// through IPPrefix `p.<name>`.
pub fn claim(name: &str, prefix: &str) -> IPPrefixClaim {
    let mut c = IPPrefixClaim::new(name, IPPrefixClaimSpec::default());
    c.metadata.namespace = Some("p".into());
    c.metadata.uid = Some(format!("uid-{name}"));
    c.metadata.resource_version = Some("7".into());
    c.status = Some(IPPrefixClaimStatus {
        prefix: Some(prefix.into()),
        parent_ref: Some(PrefixReference {
            name: "subnet".into(),
        }),
        prefix_ref: Some(PrefixReference {
            name: format!("p.{name}"),
        }),
        ..Default::default()
    });
    c
}

/// IPPrefix `p.web`: fd20::5/128 in `subnet`, for claim `p/web`.
pub fn web_prefix() -> IPPrefix {
    IPPrefix::new(
        "p.web",
        IPPrefixSpec {
            prefix: "fd20::5/128".into(),
            parent_ref: Some(PrefixReference {
                name: "subnet".into(),
            }),
            claim_ref: Some(ClaimReference {
                namespace: "p".into(),
                name: "web".into(),
                uid: None,
            }),
            ..Default::default()
        },
    )
}
