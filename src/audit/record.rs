//! What a request leaves for the audit log: only what it must capture (cheap clones of header
//! values, the URI, the body's `Bytes`, the written objects' `Arc`), so the request pays for
//! no parsing, formatting or `String` building. The writer thread turns it into the [`Event`]
//! ([`Record::into_event`]).
use super::event::{
    describe, Event, Level, MicroTime, ObjectRef, ResponseStatus, Stage, User, Written,
};
use crate::auth::authz::Attributes;
use crate::auth::UserInfo;
use axum::body::Bytes;
use http::{HeaderValue, Uri};
use serde_json::Value;
use std::net::IpAddr;

/// One audited request (or one stage of it), as captured.
#[derive(Clone)]
pub struct Record {
    pub level: Level,
    pub stage: Stage,
    /// Already a header value: the response carries it as `Audit-Id`.
    pub audit_id: HeaderValue,
    pub received: jiff::Timestamp,
    pub stage_at: jiff::Timestamp,
    pub head: Head,
    pub attrs: Attributes,
    /// `None` when authentication failed (kube-apiserver writes `"user":{}`).
    pub user: Option<UserInfo>,
    pub code: u16,
    /// The response's message where no `Status` body tells it (a failed authentication).
    pub message: Option<String>,
    pub written: Option<Written>,
    /// The request body: recorded at `Request` and above; for a create that wrote nothing,
    /// read for the name it asked for.
    pub request_body: Option<Bytes>,
    /// A whole JSON response body: an error's `Status`, or the object at `RequestResponse`.
    pub response_body: Option<Bytes>,
    pub omit_managed_fields: bool,
}

/// What of a request's head an event tells: cheap clones.
#[derive(Clone)]
pub struct Head {
    pub uri: Uri,
    pub peer: Option<IpAddr>,
    pub forwarded_for: Option<HeaderValue>,
    pub real_ip: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

impl Head {
    pub fn of<B>(req: &http::Request<B>) -> Head {
        Head::new(req.uri(), req.headers(), req.extensions())
    }

    pub fn of_parts(req: &http::request::Parts) -> Head {
        Head::new(&req.uri, &req.headers, &req.extensions)
    }

    fn new(uri: &Uri, headers: &http::HeaderMap, extensions: &http::Extensions) -> Head {
        Head {
            uri: uri.clone(),
            peer: extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
            forwarded_for: headers.get("x-forwarded-for").cloned(),
            real_ip: headers.get("x-real-ip").cloned(),
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
        }
    }
}

impl Record {
    /// The event as kube-apiserver writes it. Runs on the writer thread.
    pub fn into_event(self) -> Event {
        let (verb, mut object_ref) = match self.attrs {
            Attributes::Resource {
                verb,
                group,
                version,
                resource,
                subresource,
                namespace,
                name,
            } => (
                verb,
                Some(ObjectRef {
                    resource,
                    namespace,
                    name,
                    api_group: group,
                    api_version: version,
                    subresource,
                    ..ObjectRef::default()
                }),
            ),
            Attributes::NonResource { verb, .. } => (verb, None),
        };
        let success = (200..300).contains(&self.code);
        let response = self
            .response_body
            .as_ref()
            .and_then(|b| parse_object(b, self.omit_managed_fields));
        let mut response_status = ResponseStatus::new(self.code, None);
        if !success {
            response_status = ResponseStatus::new(self.code, response.as_ref());
        }
        if let Some(message) = self.message {
            response_status.message = message;
        }
        let keeps_request = self.level >= Level::Request;
        let request_object = self
            .request_body
            .as_ref()
            .filter(|_| keeps_request)
            .and_then(|b| parse_object(b, self.omit_managed_fields));
        let mut annotations = Default::default();
        match &self.written {
            Some(written) => {
                let d = describe(written);
                if let Some(r) = &mut object_ref {
                    for (field, value) in [
                        (&mut r.name, d.name),
                        (&mut r.namespace, d.namespace),
                        (&mut r.uid, d.uid),
                        (&mut r.resource_version, d.resource_version),
                    ] {
                        if field.is_empty() {
                            *field = value;
                        }
                    }
                }
                annotations = d.annotations;
            }
            None => {
                if let Some(r) = &mut object_ref {
                    name_from_request(r, request_object.as_ref(), self.request_body.as_ref());
                }
            }
        }
        Event {
            kind: Event::KIND,
            api_version: Event::API_VERSION,
            level: self.level,
            audit_id: self.audit_id.to_str().unwrap_or_default().to_string(),
            stage: self.stage,
            request_uri: self
                .head
                .uri
                .path_and_query()
                .map_or_else(|| self.head.uri.path().to_string(), |p| p.to_string()),
            verb,
            user: self.user.as_ref().map(User::from).unwrap_or_default(),
            source_ips: source_ips(
                self.head.forwarded_for.as_ref(),
                self.head.real_ip.as_ref(),
                self.head.peer,
            ),
            user_agent: self
                .head
                .user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            object_ref,
            response_status: Some(response_status),
            request_object,
            response_object: response.filter(|_| success || self.level == Level::RequestResponse),
            request_received_timestamp: MicroTime(self.received),
            stage_timestamp: MicroTime(self.stage_at),
            annotations,
        }
    }
}

/// The name (and namespace) in the body of a create that wrote nothing: who asked for what.
fn name_from_request(r: &mut ObjectRef, parsed: Option<&Value>, body: Option<&Bytes>) {
    if !r.name.is_empty() {
        return;
    }
    let from_body;
    let parsed = match parsed {
        Some(v) => Some(v),
        None => {
            from_body = body.and_then(|b| parse_object(b, true));
            from_body.as_ref()
        }
    };
    let meta = parsed.map(|v| &v["metadata"]);
    if let Some(name) = meta.and_then(|m| m["name"].as_str()) {
        r.name = name.to_string();
    }
    if r.namespace.is_empty() {
        if let Some(ns) = meta.and_then(|m| m["namespace"].as_str()) {
            r.namespace = ns.to_string();
        }
    }
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
