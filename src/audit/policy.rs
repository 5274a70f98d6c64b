//! The audit.k8s.io/v1 `Policy` (`--audit-policy-file`): which requests are recorded, at which
//! level. Rules are tried in order and the first that matches decides, with kube-apiserver's
//! matching (`k8s.io/apiserver/pkg/audit/policy/checker.go`); no match is level `None`.
use super::event::{Level, Stage};
use crate::auth::authz::Attributes;
use crate::auth::UserInfo;
use serde::Deserialize;
use std::path::Path;

/// A parsed policy, ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Option<serde_yaml::Value>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

impl Decision {
    pub fn records(&self, stage: Stage) -> bool {
        self.level > Level::None && !self.omit_stages.contains(&stage)
    }
}

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

impl Policy {
    /// The policy without `--audit-policy-file`: every write at `Metadata`, nothing else.
    pub fn default_writes() -> Policy {
        Policy {
            api_version: "audit.k8s.io/v1".into(),
            kind: "Policy".into(),
            metadata: None,
            rules: vec![Rule {
                level: Level::Metadata,
                verbs: WRITE_VERBS.iter().map(|v| v.to_string()).collect(),
                ..Rule::none()
            }],
            omit_stages: Vec::new(),
            omit_managed_fields: false,
        }
    }

    /// Read and check a policy file (YAML or JSON).
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--audit-policy-file {}: {e}", path.display()))?;
        Policy::parse(&text).map_err(|e| format!("--audit-policy-file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if policy.api_version != "audit.k8s.io/v1" || policy.kind != "Policy" {
            return Err(format!(
                "expected apiVersion audit.k8s.io/v1 and kind Policy, got {} {}",
                policy.api_version, policy.kind
            ));
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            let resource_rule = !rule.resources.is_empty() || !rule.namespaces.is_empty();
            if resource_rule && !rule.non_resource_urls.is_empty() {
                return Err(format!(
                    "rules[{i}]: rules cannot apply to both regular resources and non-resource URLs"
                ));
            }
        }
        Ok(policy)
    }

    /// The level and stages for a request by `user` with these attributes.
    pub fn evaluate(&self, user: Option<&UserInfo>, attrs: &Attributes) -> Decision {
        let matched = self.rules.iter().find(|r| r.matches(user, attrs));
        let mut omit_stages = self.omit_stages.clone();
        if let Some(rule) = matched {
            omit_stages.extend(rule.omit_stages.iter().copied());
        }
        Decision {
            level: matched.map_or(Level::None, |r| r.level),
            omit_stages,
            omit_managed_fields: matched
                .and_then(|r| r.omit_managed_fields)
                .unwrap_or(self.omit_managed_fields),
        }
    }
}

impl Rule {
    fn none() -> Rule {
        Rule {
            level: Level::None,
            users: Vec::new(),
            user_groups: Vec::new(),
            verbs: Vec::new(),
            resources: Vec::new(),
            namespaces: Vec::new(),
            non_resource_urls: Vec::new(),
            omit_stages: Vec::new(),
            omit_managed_fields: None,
        }
    }

    fn matches(&self, user: Option<&UserInfo>, attrs: &Attributes) -> bool {
        if !self.users.is_empty() && !user.is_some_and(|u| self.users.contains(&u.username)) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !user.is_some_and(|u| u.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        let verb = match attrs {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        };
        if !self.verbs.is_empty() && !self.verbs.contains(verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(attrs);
        }
        if !self.non_resource_urls.is_empty() {
            return match attrs {
                Attributes::NonResource { path, .. } => {
                    self.non_resource_urls.iter().any(|s| path_matches(path, s))
                }
                Attributes::Resource { .. } => false,
            };
        }
        true
    }

    fn matches_resource(&self, attrs: &Attributes) -> bool {
        let Attributes::Resource {
            group,
            resource,
            subresource,
            namespace,
            name,
            ..
        } = attrs
        else {
            return false;
        };
        if !self.namespaces.is_empty() && !self.namespaces.contains(namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if subresource.is_empty() {
            resource.clone()
        } else {
            format!("{resource}/{subresource}")
        };
        self.resources.iter().any(|gr| {
            if &gr.group != group {
                return false;
            }
            if gr.resources.is_empty() {
                return true;
            }
            if !gr.resource_names.is_empty() && !gr.resource_names.contains(name) {
                return false;
            }
            gr.resources.iter().any(|r| {
                r == &combined
                    || r == "*"
                    || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
                    || r.strip_suffix("/*") == Some(resource.as_str())
            })
        })
    }
}

fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::authz::request_attributes;
    use http::Method;

    const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn level(p: &Policy, u: &UserInfo, method: Method, path: &str) -> Level {
        p.evaluate(Some(u), &request_attributes(&method, path, ""))
            .level
    }

    #[test]
    fn without_a_policy_file_every_write_is_recorded_at_metadata() {
        let p = Policy::default_writes();
        let admin = user("admin", &["system:masters"]);
        let claims = format!("{GV}/namespaces/p/ipprefixclaims");
        assert_eq!(level(&p, &admin, Method::POST, &claims), Level::Metadata);
        assert_eq!(
            level(&p, &admin, Method::DELETE, &format!("{claims}/a")),
            Level::Metadata
        );
        assert_eq!(level(&p, &admin, Method::GET, &claims), Level::None);
        assert_eq!(level(&p, &admin, Method::GET, "/metrics"), Level::None);
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let p = Policy::parse(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: [system:kube-controller-manager]
- level: RequestResponse
  resources:
  - group: ipam.miloapis.com
    resources: [ipprefixclaims]
  namespaces: [prod]
- level: Request
  verbs: [create, delete]
  resources:
  - group: ipam.miloapis.com
    resources: ["*/status", "ipprefixes"]
- level: Metadata
  nonResourceURLs: ["/openapi*"]
- level: None
  userGroups: [readers]
- level: Metadata
  omitStages: [ResponseStarted]
"#,
        )
        .unwrap();
        let alice = user("alice", &["system:authenticated"]);
        let kcm = user("system:kube-controller-manager", &[]);
        let prod = format!("{GV}/namespaces/prod/ipprefixclaims");
        let dev = format!("{GV}/namespaces/dev/ipprefixclaims");
        assert_eq!(level(&p, &kcm, Method::POST, &prod), Level::None);
        assert_eq!(
            level(&p, &alice, Method::GET, &prod),
            Level::RequestResponse
        );
        assert_eq!(level(&p, &alice, Method::POST, &dev), Level::Metadata);
        assert_eq!(
            level(&p, &alice, Method::DELETE, &format!("{GV}/ipprefixes/r")),
            Level::Request
        );
        assert_eq!(
            level(
                &p,
                &alice,
                Method::PUT,
                &format!("{GV}/ipprefixes/r/status")
            ),
            Level::Metadata,
            "the verb is update, not create or delete"
        );
        assert_eq!(
            level(&p, &alice, Method::GET, "/openapi/v2"),
            Level::Metadata
        );
        let reader = user("bob", &["readers"]);
        assert_eq!(level(&p, &reader, Method::GET, &dev), Level::None);
        let d = p.evaluate(Some(&alice), &request_attributes(&Method::GET, &dev, ""));
        assert_eq!(
            d.omit_stages,
            vec![Stage::RequestReceived, Stage::ResponseStarted]
        );
        assert!(d.records(Stage::ResponseComplete));
        assert!(!d.records(Stage::ResponseStarted));
    }

    #[test]
    fn resource_names_and_subresource_wildcards_match_as_kubernetes_does() {
        let p = Policy::parse(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: RequestResponse
  resources:
  - group: ipam.miloapis.com
    resources: ["ipprefixes/*"]
    resourceNames: [root]
"#,
        )
        .unwrap();
        let u = user("u", &[]);
        let root = format!("{GV}/ipprefixes/root");
        assert_eq!(
            level(&p, &u, Method::PUT, &format!("{root}/status")),
            Level::RequestResponse
        );
        assert_eq!(level(&p, &u, Method::PUT, &root), Level::RequestResponse);
        assert_eq!(
            level(&p, &u, Method::PUT, &format!("{GV}/ipprefixes/other")),
            Level::None
        );
    }

    #[test]
    fn a_policy_of_another_kind_or_with_unknown_fields_is_refused() {
        let err = Policy::parse("apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(err.contains("audit.k8s.io/v1"), "{err}");
        let err = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Everything\n",
        )
        .unwrap_err();
        assert!(err.contains("Everything"), "{err}");
        let err =
            Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- levle: None\n")
                .unwrap_err();
        assert!(err.contains("levle"), "{err}");
    }
}
