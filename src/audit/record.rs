//! What a request leaves for the audit log, and the line it becomes. What the request's head
//! tells (URI, verb, user, addresses, user agent) is written as JSON when the request arrives;
//! the rest when its response is known, borrowing from the response and the written object.
//! Nothing of the request is held past its response (header values and bodies share hyper's
//! read buffer, which a held slice keeps from being reused), no `String` is made per field, and
//! the line goes to the writer as bytes ([`super::sink`]).
use super::event::{describe, Block, Level, Stage, Written};
use super::json::{self, Object};
use crate::auth::authz::Attributes;
use crate::auth::UserInfo;
use axum::body::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde_json::Value;
use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;

// `HeaderName` constants: a name given as `&str` is parsed at every lookup.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// One audited request (or one stage of it), as captured.
#[derive(Clone)]
pub struct Record {
    pub level: Level,
    pub stage: Stage,
    /// Already a header value: the response carries it as `Audit-Id`.
    pub audit_id: HeaderValue,
    pub received: jiff::Timestamp,
    pub stage_at: jiff::Timestamp,
    /// The event's fields from `requestURI` to `userAgent`, as JSON (each preceded by a comma).
    head: Vec<u8>,
    pub attrs: Attributes,
    pub code: u16,
    /// The response's message where no `Status` body tells it (a failed authentication).
    pub message: Option<String>,
    pub written: Option<Written>,
    /// The request body as the handler read it: recorded at `Request` and above; for a create
    /// that wrote nothing, read for the name it asked for.
    pub request_body: Option<Bytes>,
    /// A whole JSON response body: an error's `Status`, or the object at `RequestResponse`.
    pub response_body: Option<Bytes>,
    pub omit_managed_fields: bool,
}

/// What of a request's head an event tells, borrowed from the request.
pub struct Head<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
    peer: Option<IpAddr>,
}

impl<'a> Head<'a> {
    pub fn of<B>(req: &'a http::Request<B>) -> Head<'a> {
        Head::new(req.uri(), req.headers(), req.extensions())
    }

    pub fn of_parts(req: &'a http::request::Parts) -> Head<'a> {
        Head::new(&req.uri, &req.headers, &req.extensions)
    }

    fn new(uri: &'a Uri, headers: &'a HeaderMap, extensions: &http::Extensions) -> Head<'a> {
        Head {
            uri,
            headers,
            peer: extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        }
    }

    /// `,"requestURI":…,"verb":…,"user":…,"sourceIPs":[…]` and `,"userAgent":…` if sent.
    fn to_json(&self, verb: &str, user: Option<&UserInfo>) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b",\"requestURI\":");
        match self.uri.path_and_query() {
            Some(p) => json::str(&mut out, p.as_str()),
            None => json::str(&mut out, self.uri.path()),
        }
        out.extend_from_slice(b",\"verb\":");
        json::str(&mut out, verb);
        out.extend_from_slice(b",\"user\":");
        write_user(&mut out, user);
        out.extend_from_slice(b",\"sourceIPs\":[");
        let ips = source_ips(
            self.headers.get(&X_FORWARDED_FOR),
            self.headers.get(&X_REAL_IP),
            self.peer,
        );
        for (i, ip) in ips.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::str(&mut out, ip);
        }
        out.push(b']');
        let agent = self.headers.get(http::header::USER_AGENT);
        if let Some(agent) = agent.and_then(|v| v.to_str().ok()) {
            out.extend_from_slice(b",\"userAgent\":");
            json::str(&mut out, agent);
        }
        out
    }
}

/// `authentication.k8s.io/v1 UserInfo`; `{}` for no user.
fn write_user(out: &mut Vec<u8>, user: Option<&UserInfo>) {
    let mut o = Object::start(out);
    if let Some(u) = user {
        o.non_empty("username", &u.username);
        if !u.groups.is_empty() {
            json::value(o.key("groups"), &u.groups);
        }
        if !u.extra.is_empty() {
            json::value(o.key("extra"), &u.extra);
        }
    }
    o.end();
}

/// The `objectRef` fields, borrowed where they can be.
#[derive(Default)]
struct ObjectRef<'a> {
    resource: &'a str,
    namespace: Cow<'a, str>,
    name: Cow<'a, str>,
    uid: &'a str,
    api_group: &'a str,
    api_version: &'a str,
    resource_version: &'a str,
    subresource: &'a str,
}

impl ObjectRef<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        let mut o = Object::start(out);
        o.non_empty("resource", self.resource);
        o.non_empty("namespace", &self.namespace);
        o.non_empty("name", &self.name);
        o.non_empty("uid", self.uid);
        o.non_empty("apiGroup", self.api_group);
        o.non_empty("apiVersion", self.api_version);
        o.non_empty("resourceVersion", self.resource_version);
        o.non_empty("subresource", self.subresource);
        o.end();
    }
}

impl Record {
    /// What the request tells before it is served. `user` is `None` when authentication failed
    /// (kube-apiserver writes `"user":{}`).
    pub fn capture(
        head: Head<'_>,
        user: Option<&UserInfo>,
        attrs: Attributes,
        level: Level,
        omit_managed_fields: bool,
        audit_id: HeaderValue,
        received: jiff::Timestamp,
    ) -> Record {
        let verb = match &attrs {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        };
        Record {
            level,
            stage: Stage::ResponseComplete,
            audit_id,
            received,
            stage_at: received,
            head: head.to_json(verb, user),
            attrs,
            code: 0,
            message: None,
            written: None,
            request_body: None,
            response_body: None,
            omit_managed_fields,
        }
    }

    /// The event as kube-apiserver writes it (an audit.k8s.io/v1 `Event`, the fields in its
    /// order), without the newline.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let success = (200..300).contains(&self.code);
        let response = self
            .response_body
            .as_ref()
            .and_then(|b| parse_object(b, self.omit_managed_fields));
        let keeps_request = self.level >= Level::Request;
        let request_object = self
            .request_body
            .as_ref()
            .filter(|_| keeps_request)
            .and_then(|b| parse_object(b, self.omit_managed_fields));
        let block = self.written.as_ref().and_then(Block::of);
        // A collection's blocks, joined (rare: a deletecollection).
        let collection = match (&self.written, &block) {
            (Some(written), None) => Some(describe(written)),
            _ => None,
        };

        out.extend_from_slice(
            b"{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"",
        );
        out.extend_from_slice(self.level.as_str().as_bytes());
        out.extend_from_slice(b"\",\"auditID\":");
        json::str(out, self.audit_id.to_str().unwrap_or_default());
        out.extend_from_slice(b",\"stage\":\"");
        out.extend_from_slice(self.stage.as_str().as_bytes());
        out.push(b'"');
        out.extend_from_slice(&self.head);

        if let Attributes::Resource {
            group,
            version,
            resource,
            subresource,
            namespace,
            name,
            ..
        } = &self.attrs
        {
            let mut r = ObjectRef {
                resource,
                namespace: Cow::Borrowed(namespace),
                name: Cow::Borrowed(name),
                api_group: group,
                api_version: version,
                subresource,
                ..ObjectRef::default()
            };
            if let Some(b) = &block {
                fill_from(&mut r, b.name, b.namespace, b.uid, b.resource_version);
            } else if let Some(d) = &collection {
                fill_from(&mut r, &d.name, &d.namespace, &d.uid, &d.resource_version);
            } else if r.name.is_empty() {
                let (name, namespace) =
                    requested_name(request_object.as_ref(), self.request_body.as_ref());
                if let Some(name) = name {
                    r.name = Cow::Owned(name);
                }
                if let Some(ns) = namespace.filter(|_| r.namespace.is_empty()) {
                    r.namespace = Cow::Owned(ns);
                }
            }
            out.extend_from_slice(b",\"objectRef\":");
            r.write(out);
        }

        out.extend_from_slice(b",\"responseStatus\":{\"metadata\":{}");
        let failure = response.as_ref().filter(|_| !success);
        let field = |name: &str| {
            failure
                .and_then(|b| b.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let message = self.message.as_deref().unwrap_or_else(|| field("message"));
        for (name, value) in [
            ("status", field("status")),
            ("message", message),
            ("reason", field("reason")),
        ] {
            if !value.is_empty() {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                json::str(out, value);
            }
        }
        out.extend_from_slice(b",\"code\":");
        let _ = write!(out, "{}", self.code);
        out.push(b'}');

        if let Some(v) = &request_object {
            out.extend_from_slice(b",\"requestObject\":");
            json::value(out, v);
        }
        if let Some(v) = response
            .as_ref()
            .filter(|_| success || self.level == Level::RequestResponse)
        {
            out.extend_from_slice(b",\"responseObject\":");
            json::value(out, v);
        }
        out.extend_from_slice(b",\"requestReceivedTimestamp\":");
        json::display(out, format_args!("{:.6}", self.received));
        out.extend_from_slice(b",\"stageTimestamp\":");
        json::display(out, format_args!("{:.6}", self.stage_at));

        match (&block, &collection) {
            (Some(b), _) => write_annotations(out, b.annotations()),
            (None, Some(d)) => write_annotations(out, d.annotations.iter()),
            (None, None) => {}
        }
        out.push(b'}');
    }
}

/// `,"annotations":{…}`, unless there are none.
fn write_annotations<K: AsRef<str>, V: AsRef<str>>(
    out: &mut Vec<u8>,
    annotations: impl Iterator<Item = (K, V)>,
) {
    let mut any = false;
    for (k, v) in annotations {
        let sep: &[u8] = if any { b"," } else { b",\"annotations\":{" };
        out.extend_from_slice(sep);
        any = true;
        json::str(out, k.as_ref());
        out.push(b':');
        json::str(out, v.as_ref());
    }
    if any {
        out.push(b'}');
    }
}

/// Fill what the path did not name from the written object.
fn fill_from<'a>(
    r: &mut ObjectRef<'a>,
    name: &'a str,
    namespace: &'a str,
    uid: &'a str,
    resource_version: &'a str,
) {
    if r.name.is_empty() {
        r.name = Cow::Borrowed(name);
    }
    if r.namespace.is_empty() {
        r.namespace = Cow::Borrowed(namespace);
    }
    if r.uid.is_empty() {
        r.uid = uid;
    }
    if r.resource_version.is_empty() {
        r.resource_version = resource_version;
    }
}

/// The name and namespace in the body of a create that wrote nothing: who asked for what.
fn requested_name(
    parsed: Option<&Value>,
    body: Option<&Bytes>,
) -> (Option<String>, Option<String>) {
    let from_body;
    let parsed = match parsed {
        Some(v) => Some(v),
        None => {
            from_body = body.and_then(|b| parse_object(b, true));
            from_body.as_ref()
        }
    };
    let meta = parsed.map(|v| &v["metadata"]);
    let text = |field: &str| meta.and_then(|m| m[field].as_str()).map(str::to_string);
    (text("name"), text("namespace"))
}

/// kube-apiserver's `SourceIPs`: X-Forwarded-For, then X-Real-Ip, then the peer (not repeated
/// when it is the last of the chain).
fn source_ips(
    forwarded_for: Option<&HeaderValue>,
    real_ip: Option<&HeaderValue>,
    peer: Option<IpAddr>,
) -> Vec<String> {
    fn text(v: Option<&HeaderValue>) -> Option<&str> {
        v.and_then(|v| v.to_str().ok())
    }
    let mut ips: Vec<IpAddr> = text(forwarded_for)
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default();
    if let Some(ip) = text(real_ip).and_then(|v| v.trim().parse().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if let Some(ip) = peer {
        if ips.last() != Some(&ip) {
            ips.push(ip);
        }
    }
    ips.iter().map(IpAddr::to_string).collect()
}

/// A JSON or YAML body (a patch too) as JSON; `None` when empty or neither.
fn parse_object(bytes: &Bytes, omit_managed_fields: bool) -> Option<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let mut value: Value = serde_json::from_slice(bytes)
        .ok()
        .or_else(|| serde_yaml::from_slice(bytes).ok())?;
    if omit_managed_fields {
        strip_managed_fields(&mut value);
    }
    Some(value)
}

/// Removes `metadata.managedFields` from an object, or from each item of a list.
fn strip_managed_fields(value: &mut Value) {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
        items.iter_mut().for_each(strip_managed_fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{self, Event, MicroTime, ResponseStatus, User};
    use crate::audit::fixtures::{claim, web_prefix};
    use crate::auth::authz::request_attributes;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const CLAIMS: &str = "/apis/ipam.miloapis.com/v1alpha1/namespaces/p/ipprefixclaims";

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn alice() -> UserInfo {
        UserInfo {
            username: "alice".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            extra: [("scopes".to_string(), vec!["a\"b".to_string()])].into(),
        }
    }

    /// A request as the server sees it: from 10.0.0.9, by kubectl (a quote in its agent).
    fn captured(method: &str, uri: &str, user: Option<&UserInfo>, level: Level) -> Record {
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("user-agent", "kubectl/v1.32 \"x\"")
            .header("x-forwarded-for", "192.0.2.1")
            .body(())
            .unwrap();
        let peer: std::net::SocketAddr = "10.0.0.9:5000".parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let attrs = request_attributes(
            req.method(),
            req.uri().path(),
            req.uri().query().unwrap_or_default(),
        );
        let mut r = Record::capture(
            Head::of(&req),
            user,
            attrs,
            level,
            true,
            HeaderValue::from_static("6f0c2a8e-1d3b-4f5e-9a7c-2b4d6e8f0a1c"),
            at("2026-12-05T07:41:40.919634Z"),
        );
        r.stage_at = at("2026-12-05T07:41:40.9799Z");
        r
    }

    /// The same event as the derived `Serialize` of [`Event`] writes it.
    fn expected(verb: &str, uri: &str, user: Option<&UserInfo>, level: Level) -> Event {
        Event {
            kind: Event::KIND,
            api_version: Event::API_VERSION,
            level,
            audit_id: "6f0c2a8e-1d3b-4f5e-9a7c-2b4d6e8f0a1c".into(),
            stage: Stage::ResponseComplete,
            request_uri: uri.into(),
            verb: verb.into(),
            user: user.map(User::from).unwrap_or_default(),
            source_ips: vec!["192.0.2.1".into(), "10.0.0.9".into()],
            user_agent: Some("kubectl/v1.32 \"x\"".into()),
            object_ref: Some(event::ObjectRef {
                resource: "ipprefixclaims".into(),
                namespace: "p".into(),
                api_group: "ipam.miloapis.com".into(),
                api_version: "v1alpha1".into(),
                ..Default::default()
            }),
            response_status: Some(ResponseStatus::new(201, None)),
            request_object: None,
            response_object: None,
            request_received_timestamp: MicroTime(at("2026-12-05T07:41:40.919634Z")),
            stage_timestamp: MicroTime(at("2026-12-05T07:41:40.9799Z")),
            annotations: BTreeMap::new(),
        }
    }

    fn assert_same(r: &Record, e: &Event) {
        let mut line = Vec::new();
        r.write_line(&mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            serde_json::to_string(e).unwrap()
        );
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_created_claim_is_written_as_the_derived_event_would_be() {
        let uri = format!("{CLAIMS}?fieldManager=kubectl-create");
        let mut r = captured("POST", &uri, Some(&alice()), Level::Metadata);
        r.code = 201;
        r.request_body = Some(Bytes::from(r#"{"metadata":{"name":"web"}}"#));
        r.written = Some(Written(Arc::new(claim("web", "fd20::5/128"))));
        let mut e = expected("create", &uri, Some(&alice()), Level::Metadata);
        let o = e.object_ref.as_mut().unwrap();
        o.name = "web".into();
        o.uid = "uid-web".into();
        o.resource_version = "7".into();
        e.annotations = annotations(&[
            (event::IPPREFIX_ANNOTATION, "p.web"),
            (event::PARENT_ANNOTATION, "subnet"),
            (event::PREFIX_ANNOTATION, "fd20::5/128"),
        ]);
        assert_same(&r, &e);
    }

    #[test]
    fn a_refused_create_names_what_it_asked_for_and_why() {
        let mut r = captured("POST", CLAIMS, Some(&alice()), Level::Metadata);
        r.code = 409;
        r.request_body = Some(Bytes::from("metadata:\n  name: web\n"));
        let status = r#"{"kind":"Status","status":"Failure","message":"no room\nin subnet","reason":"Exhausted","code":409}"#;
        r.response_body = Some(Bytes::from(status));
        let mut e = expected("create", CLAIMS, Some(&alice()), Level::Metadata);
        e.object_ref.as_mut().unwrap().name = "web".into();
        e.response_status = Some(ResponseStatus::new(
            409,
            Some(&serde_json::from_str(status).unwrap()),
        ));
        assert_same(&r, &e);
    }

    #[test]
    fn request_and_response_objects_are_kept_at_request_response() {
        let uri = format!("{CLAIMS}/web");
        let mut r = captured("PUT", &uri, None, Level::RequestResponse);
        r.code = 200;
        r.stage = Stage::ResponseStarted;
        let body = r#"{"metadata":{"name":"web","managedFields":[{}]},"spec":{"prefixLength":64}}"#;
        r.request_body = Some(Bytes::from(body));
        r.response_body = Some(Bytes::from(body));
        let mut e = expected("update", &uri, None, Level::RequestResponse);
        e.stage = Stage::ResponseStarted;
        e.object_ref.as_mut().unwrap().name = "web".into();
        e.response_status = Some(ResponseStatus::new(200, None));
        let object = parse_object(&Bytes::from(body), true);
        e.request_object = object.clone();
        e.response_object = object;
        assert_same(&r, &e);
    }

    #[test]
    fn a_rejected_request_has_its_message_and_no_object_ref() {
        let mut r = captured("GET", "/metrics", None, Level::Metadata);
        r.code = 401;
        r.message = Some("Authentication failed, attempted: x509".into());
        let mut e = expected("get", "/metrics", None, Level::Metadata);
        e.object_ref = None;
        e.response_status = Some(ResponseStatus {
            message: "Authentication failed, attempted: x509".into(),
            ..ResponseStatus::new(401, None)
        });
        assert_same(&r, &e);
    }

    #[test]
    fn a_collection_and_a_prefix_carry_their_blocks() {
        let mut r = captured("DELETE", CLAIMS, Some(&alice()), Level::Metadata);
        r.code = 200;
        r.written = Some(Written(Arc::new(vec![
            claim("b", "fd20::2/128"),
            claim("a", "fd20::1/128"),
        ])));
        let mut e = expected("deletecollection", CLAIMS, Some(&alice()), Level::Metadata);
        e.response_status = Some(ResponseStatus::new(200, None));
        e.annotations = annotations(&[
            (event::IPPREFIX_ANNOTATION, "p.b,p.a"),
            (event::PARENT_ANNOTATION, "subnet,subnet"),
            (event::PREFIX_ANNOTATION, "fd20::2/128,fd20::1/128"),
        ]);
        assert_same(&r, &e);

        let uri = "/apis/ipam.miloapis.com/v1alpha1/ipprefixes/p.web";
        let mut r = captured("DELETE", uri, Some(&alice()), Level::Metadata);
        r.code = 200;
        let mut prefix = web_prefix();
        prefix.metadata.uid = Some("u".into());
        r.written = Some(Written(Arc::new(prefix)));
        let mut e = expected("delete", uri, Some(&alice()), Level::Metadata);
        e.object_ref = Some(event::ObjectRef {
            resource: "ipprefixes".into(),
            name: "p.web".into(),
            uid: "u".into(),
            api_group: "ipam.miloapis.com".into(),
            api_version: "v1alpha1".into(),
            ..Default::default()
        });
        e.response_status = Some(ResponseStatus::new(200, None));
        e.annotations = annotations(&[
            (event::CLAIM_ANNOTATION, "p/web"),
            (event::IPPREFIX_ANNOTATION, "p.web"),
            (event::PARENT_ANNOTATION, "subnet"),
            (event::PREFIX_ANNOTATION, "fd20::5/128"),
        ]);
        assert_same(&r, &e);
    }

    #[test]
    fn source_ips_follow_the_forwarded_chain_then_the_peer() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(source_ips(None, None, Some(peer)), ["10.0.0.9"]);
        let forwarded = HeaderValue::from_static("192.0.2.1, bogus, 10.0.0.9");
        let real = HeaderValue::from_static("192.0.2.1");
        assert_eq!(
            source_ips(Some(&forwarded), Some(&real), Some(peer)),
            ["192.0.2.1", "10.0.0.9"]
        );
    }

    #[test]
    fn managed_fields_are_stripped_from_objects_and_list_items() {
        let body = Bytes::from(
            r#"{"metadata":{"name":"a","managedFields":[{}]},"items":[{"metadata":{"managedFields":[]}}]}"#,
        );
        let v = parse_object(&body, true).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"metadata":{"name":"a"},"items":[{"metadata":{}}]})
        );
        assert_eq!(parse_object(&Bytes::from(" \n"), true), None);
        assert_eq!(
            parse_object(&Bytes::from("kind: X\n"), false),
            Some(serde_json::json!({"kind": "X"}))
        );
    }
}
