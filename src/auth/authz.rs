//! What the caller may do: every request becomes Kubernetes authorization attributes
//! ([`request_attributes`], after k8s.io/apiserver's `RequestInfoFactory`) and a
//! `SubjectAccessReview` to the cluster; decisions are cached briefly, as the webhook
//! authorizer does. `/healthz`, `/livez` and `/readyz` are always allowed.
use super::UserInfo;
use crate::api::GROUP;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an allow is remembered.
pub const ALLOWED_TTL: Duration = Duration::from_secs(10);
/// How long a deny is remembered.
pub const DENIED_TTL: Duration = Duration::from_secs(5);
const CACHE_PRUNE_AT: usize = 8192;

/// What a request asks to do, in authorization terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        version: String,
        resource: String,
        subresource: String,
        namespace: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Attributes {
    /// `verb` on one IPPrefix by name (e.g. `use` for claim parents).
    pub fn ipprefix(verb: &str, name: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: GROUP.into(),
            version: crate::api::VERSION.into(),
            resource: "ipprefixes".into(),
            subresource: String::new(),
            namespace: String::new(),
            name: name.into(),
        }
    }

    /// The message kube-apiserver gives for a denied request.
    pub fn forbidden_message(&self, user: &str, reason: &str) -> String {
        let mut msg = match self {
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
                ..
            } => {
                let full = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                let subject = if name.is_empty() {
                    full
                } else {
                    format!("{full} \"{name}\"")
                };
                let res = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                let scope = if namespace.is_empty() {
                    "at the cluster scope".to_string()
                } else {
                    format!("in the namespace \"{namespace}\"")
                };
                format!(
                    "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{res}\" in API group \"{group}\" {scope}"
                )
            }
            Attributes::NonResource { verb, path } => {
                format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"")
            }
        };
        if !reason.is_empty() {
            msg.push_str(": ");
            msg.push_str(reason);
        }
        msg
    }
}

/// The authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied (or no opinion), with the authorizer's reason (may be empty).
    Deny(String),
}

/// Asks the cluster with SubjectAccessReviews; cheap to share behind an `Arc`.
pub struct Authorizer {
    client: kube::Client,
    /// A std mutex: held only to look up or insert, never across the review's await.
    cache: Mutex<HashMap<(UserKey, Attributes), (Instant, Decision)>>,
}

type UserKey = (String, Vec<String>, Vec<(String, Vec<String>)>);

impl Authorizer {
    pub fn new(client: kube::Client) -> Self {
        Authorizer {
            client,
            cache: Mutex::default(),
        }
    }

    /// May `user` do `attrs`? `Err` when the cluster could not be asked.
    pub async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<Decision, String> {
        let key = (
            (
                user.username.clone(),
                user.groups.clone(),
                user.extra
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            attrs.clone(),
        );
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((expires, d)) = cache.get(&key) {
                if *expires > Instant::now() {
                    return Ok(d.clone());
                }
            }
        }
        let decision = self.review(user, attrs).await?;
        let ttl = match decision {
            Decision::Allow => ALLOWED_TTL,
            Decision::Deny(_) => DENIED_TTL,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_PRUNE_AT {
            let now = Instant::now();
            cache.retain(|_, (expires, _)| *expires > now);
        }
        cache.insert(key, (Instant::now() + ttl, decision.clone()));
        Ok(decision)
    }

    async fn review(&self, user: &UserInfo, attrs: &Attributes) -> Result<Decision, String> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let mut spec = SubjectAccessReviewSpec {
            user: Some(user.username.clone()),
            groups: Some(user.groups.clone()),
            extra: Some(user.extra.clone().into_iter().collect()),
            ..Default::default()
        };
        match attrs {
            Attributes::Resource {
                verb,
                group,
                version,
                resource,
                subresource,
                namespace,
                name,
            } => {
                spec.resource_attributes = Some(ResourceAttributes {
                    verb: opt(verb),
                    group: Some(group.clone()),
                    version: opt(version),
                    resource: opt(resource),
                    subresource: opt(subresource),
                    namespace: opt(namespace),
                    name: opt(name),
                    ..Default::default()
                })
            }
            Attributes::NonResource { verb, path } => {
                spec.non_resource_attributes = Some(NonResourceAttributes {
                    verb: Some(verb.clone()),
                    path: Some(path.clone()),
                })
            }
        }
        let sar = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        crate::metrics::global().access_reviews.inc();
        let reviewed = api
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|e| format!("SubjectAccessReview failed: {e}"))?;
        let status = reviewed.status.unwrap_or_default();
        Ok(if status.allowed && status.denied != Some(true) {
            Decision::Allow
        } else {
            Decision::Deny(status.reason.unwrap_or_default())
        })
    }

    /// `Ok(())` if allowed, else the 403 (or 500 when the cluster cannot be asked).
    pub async fn check(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), ApiError> {
        match self.authorize(user, attrs).await {
            Ok(Decision::Allow) => Ok(()),
            Ok(Decision::Deny(reason)) => Err(ApiError::Forbidden(
                attrs.forbidden_message(&user.username, &reason),
            )),
            Err(e) => Err(ApiError::Internal(e)),
        }
    }
}

/// Axum middleware, after [`super::authenticate`]: answer 403 unless the cluster allows the
/// request. Health endpoints pass.
pub async fn authorize(State(authz): State<Arc<Authorizer>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if super::is_always_allowed(path) {
        return next.run(req).await;
    }
    let Some(user) = req.extensions().get::<UserInfo>().cloned() else {
        return ApiError::Unauthorized("Unauthorized".into()).into_response();
    };
    let attrs = request_attributes(req.method(), path, req.uri().query().unwrap_or_default());
    match authz.check(&user, &attrs).await {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::debug!(user = %user.username, ?attrs, "denied: {e}");
            e.into_response()
        }
    }
}

/// The authorization attributes of a request, as k8s.io/apiserver's `RequestInfoFactory` makes
/// them: `/apis/<group>/<version>/[watch/][namespaces/<ns>/]<resource>[/<name>[/<subresource>]]`
/// is a resource request; anything shorter (discovery) or elsewhere is a non-resource request
/// with the lower-cased HTTP method as verb.
pub fn request_attributes(method: &http::Method, path: &str, query: &str) -> Attributes {
    let non_resource = || Attributes::NonResource {
        verb: method.as_str().to_lowercase(),
        path: path.to_string(),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 4 || parts[0] != "apis" {
        return non_resource();
    }
    let (group, version) = (parts[1], parts[2]);
    let mut rest = &parts[3..];
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest = &rest[1..];
    }
    let mut namespace = "";
    if rest.first() == Some(&"namespaces") && rest.len() >= 2 {
        namespace = rest[1];
        if rest.len() > 2 {
            rest = &rest[2..];
        } else {
            // `/namespaces/<ns>` itself: the namespace object.
            rest = &rest[..1];
            namespace = "";
        }
    }
    let resource = rest.first().copied().unwrap_or_default();
    let mut name = rest.get(1).copied().unwrap_or_default().to_string();
    let subresource = rest.get(2).copied().unwrap_or_default();
    let params: HashMap<String, String> = serde_urlencoded::from_str(query).unwrap_or_default();
    let watch_param = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match *method {
        http::Method::GET | http::Method::HEAD if watch_path || watch_param => "watch",
        http::Method::GET | http::Method::HEAD if name.is_empty() => "list",
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if name.is_empty() => "deletecollection",
        http::Method::DELETE => "delete",
        _ => return non_resource(),
    };
    // A list or watch of one object by field selector is authorized for that name, so RBAC
    // `resourceNames` rules work for informers.
    if name.is_empty() && (verb == "list" || verb == "watch") {
        if let Some(selector) = params.get("fieldSelector") {
            if let Some(n) = selector
                .split(',')
                .find_map(|r| r.strip_prefix("metadata.name="))
            {
                name = n.to_string();
            }
        }
    }
    Attributes::Resource {
        verb: verb.into(),
        group: group.into(),
        version: version.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        namespace: namespace.into(),
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn res(verb: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: GROUP.into(),
            version: "v1alpha1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    const GV: &str = "/apis/ipam.miloapis.com/v1alpha1";

    #[test]
    fn discovery_paths_are_non_resource_requests() {
        for p in [
            "/apis",
            "/apis/ipam.miloapis.com",
            GV,
            "/openapi/v2",
            "/version",
        ] {
            assert_eq!(
                request_attributes(&Method::GET, p, ""),
                Attributes::NonResource {
                    verb: "get".into(),
                    path: p.into()
                },
                "{p}"
            );
        }
    }

    #[test]
    fn verbs_follow_method_name_and_watch() {
        let claims = format!("{GV}/namespaces/p/ipprefixclaims");
        let cases = [
            (
                Method::GET,
                claims.clone(),
                "",
                res("list", "ipprefixclaims", "", "p", ""),
            ),
            (
                Method::GET,
                claims.clone(),
                "watch=true",
                res("watch", "ipprefixclaims", "", "p", ""),
            ),
            (
                Method::GET,
                format!("{GV}/watch/ipprefixes"),
                "",
                res("watch", "ipprefixes", "", "", ""),
            ),
            (
                Method::GET,
                format!("{claims}/a"),
                "",
                res("get", "ipprefixclaims", "", "p", "a"),
            ),
            (
                Method::POST,
                claims.clone(),
                "",
                res("create", "ipprefixclaims", "", "p", ""),
            ),
            (
                Method::PUT,
                format!("{claims}/a/status"),
                "",
                res("update", "ipprefixclaims", "status", "p", "a"),
            ),
            (
                Method::PATCH,
                format!("{GV}/ipprefixes/r"),
                "",
                res("patch", "ipprefixes", "", "", "r"),
            ),
            (
                Method::DELETE,
                format!("{GV}/ipprefixes/r"),
                "",
                res("delete", "ipprefixes", "", "", "r"),
            ),
            (
                Method::DELETE,
                claims.clone(),
                "",
                res("deletecollection", "ipprefixclaims", "", "p", ""),
            ),
            (
                Method::GET,
                format!("{GV}/ipprefixclaims"),
                "",
                res("list", "ipprefixclaims", "", "", ""),
            ),
            (
                Method::GET,
                format!("{GV}/ipprefixes"),
                "watch=1&fieldSelector=metadata.name%3Droot",
                res("watch", "ipprefixes", "", "", "root"),
            ),
        ];
        for (m, p, q, want) in cases {
            assert_eq!(request_attributes(&m, &p, q), want, "{m} {p}?{q}");
        }
    }

    #[test]
    fn forbidden_message_names_user_verb_and_scope() {
        let msg = res("list", "ipprefixclaims", "", "p", "").forbidden_message("bob", "");
        assert_eq!(
            msg,
            "ipprefixclaims.ipam.miloapis.com is forbidden: User \"bob\" cannot list resource \"ipprefixclaims\" in API group \"ipam.miloapis.com\" in the namespace \"p\""
        );
        let msg = Attributes::ipprefix("use", "root").forbidden_message("bob", "");
        assert!(
            msg.contains("ipprefixes.ipam.miloapis.com \"root\" is forbidden"),
            "{msg}"
        );
        assert!(msg.contains("cannot use resource \"ipprefixes\""), "{msg}");
    }
}
