//! The layer that captures a request and its response as a [`Record`] for the writer. A tower
//! `Service` rather than `axum::middleware::from_fn`: it hands the request to the route at once
//! (no clone of the route and no boxed `Next` per request), and the body is recorded as the
//! handler reads it ([`Seen`]), not read ahead of it.
use super::event::{Level, Stage, Written};
use super::policy::Decision;
use super::record::{Head, Record};
use super::recorded_body::Seen;
use super::Auditor;
use crate::auth::authz::{request_attributes, Attributes};
use crate::auth::UserInfo;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::response::Response;
use futures::future::BoxFuture;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::convert::Infallible;
use std::task::{Context, Poll};

/// Sent by kube-apiserver's aggregator with a proxied request, so both logs share the ID. A
/// `HeaderName` constant: a name given as `&str` is parsed at every use.
pub(super) const AUDIT_ID_HEADER: HeaderName = HeaderName::from_static("audit-id");

/// Wraps each route in [`Audit`].
#[derive(Clone)]
pub struct AuditLayer(pub(super) Auditor);

impl<S> tower::Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            auditor: self.0.clone(),
            inner,
        }
    }
}

/// A route whose requests are audited.
#[derive(Clone)]
pub struct Audit<S> {
    auditor: Auditor,
    inner: S,
}

impl<S> tower::Service<Request> for Audit<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let received = jiff::Timestamp::now();
        let audit_id = audit_id(req.headers());
        let attrs = request_attributes(
            req.method(),
            req.uri().path(),
            req.uri().query().unwrap_or_default(),
        );
        let user = req.extensions().get::<UserInfo>();
        let decision = self.auditor.0.policy.evaluate(user, &attrs);
        if decision.level == Level::None {
            let served = self.inner.call(req);
            return Box::pin(async move { Ok(with_audit_id(served.await?, audit_id)) });
        }
        let record = capture(Head::of(&req), user, attrs, &decision, audit_id, received);

        // A create names its object only in the body: kept (not parsed) to name a refused one.
        let create = matches!(&record.attrs, Attributes::Resource { verb, .. } if verb == "create");
        let (req, seen) = if create || (decision.level >= Level::Request && has_body(&req)) {
            let seen = Seen::default();
            let (parts, body) = req.into_parts();
            (Request::from_parts(parts, seen.wrap(body)), Some(seen))
        } else {
            (req, None)
        };
        let served = self.inner.call(req);
        let auditor = self.auditor.clone();
        Box::pin(async move {
            let resp = served.await?;
            let mut record = record;
            record.request_body = seen.and_then(|s| s.take());
            Ok(finish(&auditor, record, &decision, resp).await)
        })
    }
}

/// The `Audit-ID` the request brings (from kube-apiserver's aggregator), or a new one.
fn audit_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&AUDIT_ID_HEADER).filter(|v| !v.is_empty()) {
        Some(id) => id.clone(),
        None => new_audit_id(),
    }
}

/// A new audit ID: a UUID, as kube-apiserver's.
pub(super) fn new_audit_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Fill in what the response tells, and queue the record (a watch's when its stream ends).
async fn finish(
    auditor: &Auditor,
    mut record: Record,
    decision: &Decision,
    resp: Response,
) -> Response {
    let (mut parts, body) = resp.into_parts();
    record.written = parts.extensions.remove::<Written>();
    record.code = parts.status.as_u16();
    // Whole bodies only (a watch streams): an error's Status, or the object at RequestResponse.
    let needs_body = !parts.status.is_success() || decision.level == Level::RequestResponse;
    let body = if needs_body && body.size_hint().exact().is_some() {
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => {
                if is_json(&parts.headers) {
                    record.response_body = Some(bytes.clone());
                }
                Body::from(bytes)
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit: response body unreadable");
                Body::empty()
            }
        }
    } else {
        body
    };
    let resp = Response::from_parts(parts, body);
    if matches!(&record.attrs, Attributes::Resource { verb, .. } if verb == "watch") {
        let id = record.audit_id.clone();
        return with_audit_id(complete_when_streamed(auditor, record, decision, resp), id);
    }
    if decision.records(Stage::ResponseComplete) {
        record.stage_at = jiff::Timestamp::now();
        auditor.0.sender.send(|out| record.write_line(out));
    }
    // Moved, not cloned: a clone of a header value made from a `&str` allocates.
    with_audit_id(resp, record.audit_id)
}

/// A watch: `ResponseStarted` now, `ResponseComplete` when its stream is dropped.
fn complete_when_streamed(
    auditor: &Auditor,
    mut record: Record,
    decision: &Decision,
    resp: Response,
) -> Response {
    if decision.records(Stage::ResponseStarted) {
        let mut started = record.clone();
        started.stage = Stage::ResponseStarted;
        started.stage_at = jiff::Timestamp::now();
        auditor.0.sender.send(|out| started.write_line(out));
    }
    if !decision.records(Stage::ResponseComplete) {
        return resp;
    }
    record.stage = Stage::ResponseComplete;
    let guard = CompleteOnDrop {
        auditor: auditor.clone(),
        record: Some(record),
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
    record: Option<Record>,
}

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.stage_at = jiff::Timestamp::now();
            self.auditor.0.sender.send(|out| record.write_line(out));
        }
    }
}

/// What the request itself tells, before it is served.
pub(super) fn capture(
    head: Head<'_>,
    user: Option<&UserInfo>,
    attrs: Attributes,
    decision: &Decision,
    audit_id: HeaderValue,
    received: jiff::Timestamp,
) -> Record {
    Record::capture(
        head,
        user,
        attrs,
        decision.level,
        decision.omit_managed_fields,
        audit_id,
        received,
    )
}

pub(super) fn with_audit_id(mut resp: Response, audit_id: HeaderValue) -> Response {
    resp.headers_mut().insert(AUDIT_ID_HEADER, audit_id);
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
