//! The middleware that turns a request and its response into an [`Event`].
use super::event::{
    describe, Event, Level, MicroTime, ObjectRef, ResponseStatus, Stage, User, Written,
};
use super::policy::Decision;
use super::Auditor;
use crate::auth::authz::{request_attributes, Attributes};
use crate::auth::UserInfo;
use crate::http::negotiate::Body as RequestBody;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

/// Sent by kube-apiserver's aggregator with a proxied request, so both logs share the ID.
const AUDIT_ID_HEADER: &str = "audit-id";

pub async fn audit(State(auditor): State<Auditor>, req: Request, next: Next) -> Response {
    let received = MicroTime::now();
    let audit_id = req
        .headers()
        .get(AUDIT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let user = req.extensions().get::<UserInfo>();
    let attrs = request_attributes(
        req.method(),
        req.uri().path(),
        req.uri().query().unwrap_or_default(),
    );
    let decision = auditor.0.policy.evaluate(user, &attrs);
    if decision.level == Level::None {
        return with_audit_id(next.run(req).await, &audit_id);
    }
    let mut event = base_event(&req, &attrs, &decision, audit_id, received);

    // A create names its object only in the body: kept (not parsed) to name a refused one.
    let create = event.verb == "create";
    let (req, body) = if create || (decision.level >= Level::Request && has_body(&req)) {
        let (parts, body) = req.into_parts();
        // Read as the handlers read it: the same limit, and the same answer past it.
        let bytes = match RequestBody::from_request(Request::new(body), &()).await {
            Ok(RequestBody(bytes)) => bytes,
            Err(e) => return finish(&auditor, event, &decision, e.into_response()).await,
        };
        if decision.level >= Level::Request {
            event.request_object = parse_object(&bytes, decision.omit_managed_fields);
        }
        (
            Request::from_parts(parts, Body::from(bytes.clone())),
            Some(bytes),
        )
    } else {
        (req, None)
    };
    let resp = next.run(req).await;
    if resp.extensions().get::<Written>().is_none() {
        name_from_request(&mut event, body.as_ref());
    }
    finish(&auditor, event, &decision, resp).await
}

/// The name (and namespace) in the body of a create that wrote nothing: who asked for what.
fn name_from_request(event: &mut Event, body: Option<&Bytes>) {
    let Some(r) = event.object_ref.as_mut().filter(|r| r.name.is_empty()) else {
        return;
    };
    let from_body;
    let parsed = match &event.request_object {
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

/// Fill in what the response tells, and queue the event (a watch's when its stream ends).
async fn finish(
    auditor: &Auditor,
    mut event: Event,
    decision: &Decision,
    resp: Response,
) -> Response {
    let (mut parts, body) = resp.into_parts();
    if let Some(written) = parts.extensions.remove::<Written>() {
        annotate(&mut event, &written);
    }
    let code = parts.status.as_u16();
    // Whole bodies only (a watch streams): an error's Status, or the object at RequestResponse.
    let needs_body = !parts.status.is_success() || decision.level == Level::RequestResponse;
    let body = if needs_body && body.size_hint().exact().is_some() {
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => {
                let object = is_json(&parts.headers)
                    .then(|| parse_object(&bytes, decision.omit_managed_fields))
                    .flatten();
                if parts.status.is_success() {
                    event.response_object = object;
                    event.response_status = Some(ResponseStatus::new(code, None));
                } else {
                    event.response_status = Some(ResponseStatus::new(code, object.as_ref()));
                    if decision.level == Level::RequestResponse {
                        event.response_object = object;
                    }
                }
                Body::from(bytes)
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit: response body unreadable");
                Body::empty()
            }
        }
    } else {
        event.response_status = Some(ResponseStatus::new(code, None));
        body
    };
    let resp = Response::from_parts(parts, body);
    let resp = with_audit_id(resp, &event.audit_id);
    if event.verb == "watch" {
        return complete_when_streamed(auditor, event, decision, resp);
    }
    if decision.records(Stage::ResponseComplete) {
        event.stage_timestamp = MicroTime::now();
        auditor.0.sender.send(event);
    }
    resp
}

/// A watch: `ResponseStarted` now, `ResponseComplete` when its stream is dropped.
fn complete_when_streamed(
    auditor: &Auditor,
    mut event: Event,
    decision: &Decision,
    resp: Response,
) -> Response {
    if decision.records(Stage::ResponseStarted) {
        let mut started = event.clone();
        started.stage = Stage::ResponseStarted;
        started.stage_timestamp = MicroTime::now();
        auditor.0.sender.send(started);
    }
    if !decision.records(Stage::ResponseComplete) {
        return resp;
    }
    event.stage = Stage::ResponseComplete;
    let guard = CompleteOnDrop {
        auditor: auditor.clone(),
        event: Some(event),
    };
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _ = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

struct CompleteOnDrop {
    auditor: Auditor,
    event: Option<Event>,
}

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            event.stage_timestamp = MicroTime::now();
            self.auditor.0.sender.send(event);
        }
    }
}

fn base_event(
    req: &Request,
    attrs: &Attributes,
    decision: &Decision,
    audit_id: String,
    received: MicroTime,
) -> Event {
    let (verb, object_ref) = match attrs {
        Attributes::Resource {
            verb,
            group,
            version,
            resource,
            subresource,
            namespace,
            name,
        } => (
            verb.clone(),
            Some(ObjectRef {
                resource: resource.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                api_group: group.clone(),
                api_version: version.clone(),
                subresource: subresource.clone(),
                ..ObjectRef::default()
            }),
        ),
        Attributes::NonResource { verb, .. } => (verb.clone(), None),
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    Event {
        kind: Event::KIND,
        api_version: Event::API_VERSION,
        level: decision.level,
        audit_id,
        stage: Stage::ResponseComplete,
        request_uri: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
        verb,
        user: req
            .extensions()
            .get::<UserInfo>()
            .map(User::from)
            .unwrap_or_default(),
        source_ips: source_ips(req.headers(), peer),
        user_agent: req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        object_ref,
        response_status: None,
        request_object: None,
        response_object: None,
        request_received_timestamp: received,
        stage_timestamp: received,
        annotations: Default::default(),
    }
}

/// The object's identity where the URL lacks it (a create names it in the body), and the block.
fn annotate(event: &mut Event, written: &Written) {
    let d = describe(written);
    if let Some(r) = &mut event.object_ref {
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
    event.annotations.extend(d.annotations);
}

/// kube-apiserver's `SourceIPs`: X-Forwarded-For, then X-Real-Ip, then the peer (not repeated
/// when it is the last of the chain).
fn source_ips(headers: &HeaderMap, peer: Option<IpAddr>) -> Vec<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut ips: Vec<IpAddr> = header("x-forwarded-for")
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default();
    if let Some(ip) = header("x-real-ip").and_then(|v| v.trim().parse().ok()) {
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

fn with_audit_id(mut resp: Response, audit_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(audit_id) {
        resp.headers_mut().insert(AUDIT_ID_HEADER, v);
    }
    resp
}

fn has_body(req: &Request) -> bool {
    matches!(
        *req.method(),
        http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
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
        let mut h = HeaderMap::new();
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(source_ips(&h, Some(peer)), ["10.0.0.9"]);
        h.insert(
            "x-forwarded-for",
            "192.0.2.1, bogus, 10.0.0.9".parse().unwrap(),
        );
        h.insert("x-real-ip", "192.0.2.1".parse().unwrap());
        assert_eq!(source_ips(&h, Some(peer)), ["192.0.2.1", "10.0.0.9"]);
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
