use super::*;
use kube::Resource;

#[test]
fn kinds_serialize_with_group_version_kind() {
    let claim = IPPrefixClaim::new_host("project-a", "web-0", "dfw-subnet", IpFamily::IPv6);
    let v = serde_json::to_value(&claim).unwrap();
    assert_eq!(v["apiVersion"], "ipam.miloapis.com/v1alpha1");
    assert_eq!(v["kind"], "IPPrefixClaim");
    assert_eq!(v["spec"]["prefixLength"], 128);
    assert_eq!(v["spec"]["parentRef"]["name"], "dfw-subnet");
    assert_eq!(IPPrefix::plural(&()), "ipprefixes");
    assert_eq!(IPPrefixClaim::plural(&()), "ipprefixclaims");
}

#[test]
fn allocated_prefix_parses_status() {
    let mut claim = IPPrefixClaim::new_host("p", "c", "parent", IpFamily::IPv6);
    assert_eq!(claim.allocated_prefix(), None);
    claim.status = Some(IPPrefixClaimStatus {
        prefix: Some("fd20::5/128".into()),
        ..Default::default()
    });
    assert_eq!(
        claim.allocated_prefix(),
        Some("fd20::5/128".parse().unwrap())
    );
    assert_eq!(claim.allocated_address(), Some("fd20::5".parse().unwrap()));
}
