//! API errors and their one translation into a Kubernetes `Status`.
//!
//! Storage has its own error words (`store::StoreError`); the registry turns them into `ApiError`
//! exactly once, and `IntoResponse` here is the only place an error becomes a response.
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

/// Which object an error is about: `details.{group,kind,name}` and the message prefix
/// (`ipprefixes.ipam.miloapis.com "x"`), as k8s.io/apiserver words it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subject {
    /// Resource plural (`ipprefixes`) or, for `Invalid`, the kind (`IPPrefix`), as Kubernetes does.
    pub kind: String,
    pub group: String,
    pub name: String,
}

impl Subject {
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Subject {
            kind: kind.into(),
            group: crate::api::GROUP.into(),
            name: name.into(),
        }
    }

    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// One invalid field: becomes one entry of `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// The field path, e.g. `spec.prefixLength` or `spec.exclude[2]`.
    pub field: String,
    pub kind: FieldErrorKind,
    /// What is wrong, e.g. `must be at most 128`.
    pub detail: String,
    /// The offending value rendered for the message, when there is one.
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FieldErrorKind {
    Required,
    Invalid,
    NotSupported,
    Forbidden,
    Duplicate,
    TooLong,
    NotFound,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(field, FieldErrorKind::Required, None, detail)
    }
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(
            field,
            FieldErrorKind::Invalid,
            Some(value.to_string()),
            detail,
        )
    }
    pub fn not_supported(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        supported: &[&str],
    ) -> Self {
        let list = supported
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Self::new(
            field,
            FieldErrorKind::NotSupported,
            Some(format!("\"{value}\"")),
            format!("supported values: {list}"),
        )
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(field, FieldErrorKind::Forbidden, None, detail)
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self::new(
            field,
            FieldErrorKind::TooLong,
            None,
            format!("must have at most {max} bytes"),
        )
    }
    pub fn not_found(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(
            field,
            FieldErrorKind::NotFound,
            Some(value.to_string()),
            detail,
        )
    }
    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Self::new(
            field,
            FieldErrorKind::Duplicate,
            Some(value.to_string()),
            "",
        )
    }

    fn new(
        field: impl Into<String>,
        kind: FieldErrorKind,
        value: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            kind,
            detail: detail.into(),
            value,
        }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::NotFound => "FieldValueNotFound",
        }
    }

    /// The cause message without the field, as k8s.io/apimachinery's `field.Error.ErrorBody`.
    fn body(&self) -> String {
        let head = match self.kind {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::Duplicate => "Duplicate value",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::NotFound => "Not found",
        };
        let mut s = head.to_string();
        if let Some(v) = &self.value {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Every way a request can fail, with the HTTP code and `Status.reason` it maps to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum ApiError {
    /// 404: the object does not exist.
    #[error("{} \"{}\" not found", .0.qualified(), .0.name)]
    NotFound(Subject),
    /// 404 for a path the server does not serve (no kind, no name), in kube-apiserver's words.
    #[error("the server could not find the requested resource")]
    UnknownPath,
    /// 409: create of a name that exists.
    #[error("{} \"{}\" already exists", .0.qualified(), .0.name)]
    AlreadyExists(Subject),
    /// 409: stale resourceVersion, a failed precondition, or a rule about other objects
    /// (overlap, in use); the message says which.
    #[error("{message}")]
    Conflict { subject: Subject, message: String },
    /// 409 `Conflict` from server-side apply: fields other managers own with other values;
    /// each `(field, message)` becomes a `FieldManagerConflict` cause.
    #[error("{message}")]
    ApplyConflict {
        subject: Subject,
        message: String,
        causes: Vec<(String, String)>,
    },
    /// 409 with reason `Exhausted`: no free block of the requested length.
    #[error("{message}")]
    Exhausted { subject: Subject, message: String },
    /// 422: field validation failed; every bad field is a cause.
    #[error("{} \"{}\" is invalid: {}", .subject.qualified(), .subject.name, render_causes(.causes))]
    Invalid {
        subject: Subject,
        causes: Vec<FieldError>,
    },
    /// 400: the request cannot be understood (malformed body, bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no acceptable credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 405: the verb is not served on this path.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 406: none of the accepted representations is served.
    #[error("{0}")]
    NotAcceptable(String),
    /// 410 with reason `Expired`: a resourceVersion or continue token older than the history kept.
    #[error("{0}")]
    Expired(String),
    /// 413: the body is larger than the server accepts.
    #[error("{0}")]
    RequestEntityTooLarge(String),
    /// 415: the body's content type is not served.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 504 with reason `Timeout`: e.g. a list asked for a resourceVersion the server has not
    /// reached.
    #[error("{0}")]
    Timeout(String),
    /// 503: storage cannot take writes (disk full, fsync failed); nothing was acknowledged.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// 500: a bug. Never for bad input.
    #[error("{0}")]
    Internal(String),
    /// Another replica changed an index this request decided from (a failed guard, see
    /// `registry/guards.rs`). The registry retries once its indexes caught up; a client sees
    /// it, as 409 Conflict, only when that kept failing.
    #[error("another replica kept changing {guard} (last at revision {revision}) while this request was decided; try again")]
    IndexBehind { guard: String, revision: u64 },
}

fn render_causes(causes: &[FieldError]) -> String {
    let parts: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    pub fn not_found(resource: &str, name: &str) -> Self {
        ApiError::NotFound(Subject::new(resource, name))
    }
    pub fn already_exists(resource: &str, name: &str) -> Self {
        ApiError::AlreadyExists(Subject::new(resource, name))
    }
    pub fn conflict(resource: &str, name: &str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            subject: Subject::new(resource, name),
            message: message.into(),
        }
    }
    pub fn invalid(kind: &str, name: &str, causes: Vec<FieldError>) -> Self {
        ApiError::Invalid {
            subject: Subject::new(kind, name),
            causes,
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) | ApiError::UnknownPath => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists(_)
            | ApiError::Conflict { .. }
            | ApiError::ApplyConflict { .. }
            | ApiError::Exhausted { .. }
            | ApiError::IndexBehind { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::RequestEntityTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// `Status.reason`, the machine-readable word clients switch on.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) | ApiError::UnknownPath => "NotFound",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict { .. }
            | ApiError::ApplyConflict { .. }
            | ApiError::IndexBehind { .. } => "Conflict",
            ApiError::Exhausted { .. } => "Exhausted",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::Expired(_) => "Expired",
            ApiError::RequestEntityTooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailable",
            ApiError::Timeout(_) => "Timeout",
            ApiError::Internal(_) => "InternalError",
        }
    }

    fn subject(&self) -> Option<&Subject> {
        match self {
            ApiError::NotFound(s) | ApiError::AlreadyExists(s) => Some(s),
            ApiError::Conflict { subject, .. }
            | ApiError::ApplyConflict { subject, .. }
            | ApiError::Exhausted { subject, .. }
            | ApiError::Invalid { subject, .. } => Some(subject),
            _ => None,
        }
    }

    /// The `Status` object clients receive.
    pub fn to_status(&self) -> Status {
        let causes = match self {
            ApiError::Invalid { causes, .. } => Some(
                causes
                    .iter()
                    .map(|c| StatusCause {
                        field: Some(c.field.clone()),
                        message: Some(c.body()),
                        reason: Some(c.reason().to_string()),
                    })
                    .collect(),
            ),
            ApiError::ApplyConflict { causes, .. } => Some(
                causes
                    .iter()
                    .map(|(field, message)| StatusCause {
                        field: Some(field.clone()),
                        message: Some(message.clone()),
                        reason: Some("FieldManagerConflict".into()),
                    })
                    .collect(),
            ),
            _ => None,
        };
        let details = match self {
            // kube-apiserver's `details: {}`: no kind for clients to print as `"" not found`.
            ApiError::UnknownPath => Some(StatusDetails::default()),
            _ => self.subject().map(|s| StatusDetails {
                name: Some(s.name.clone()).filter(|n| !n.is_empty()),
                group: Some(s.group.clone()).filter(|g| !g.is_empty()),
                kind: Some(s.kind.clone()),
                causes,
                ..Default::default()
            }),
        };
        Status {
            status: Some("Failure".into()),
            message: Some(self.to_string()),
            reason: Some(self.reason().into()),
            code: Some(i32::from(self.code().as_u16())),
            details,
            ..Default::default()
        }
    }
}

/// A `Status` serialized with `kind` and `apiVersion`, as every Kubernetes client expects.
pub fn status_json(status: &Status) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("kind".into(), "Status".into());
        obj.insert("apiVersion".into(), "v1".into());
        obj.entry("metadata")
            .or_insert_with(|| serde_json::json!({}));
    }
    v
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = status_json(&self.to_status()).to_string();
        let mut resp = (self.code(), body).into_response();
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_cause_with_field_and_reason() {
        let err = ApiError::invalid(
            "IPPrefixClaim",
            "web-0",
            vec![
                FieldError::invalid("spec.prefixLength", 200, "must be at most 128"),
                FieldError::required(
                    "spec.parentRef",
                    "exactly one of parentRef or parentSelector is required",
                ),
            ],
        );
        let status = err.to_status();
        assert_eq!(status.code, Some(422));
        assert_eq!(status.reason.as_deref(), Some("Invalid"));
        let causes = status.details.unwrap().causes.unwrap();
        assert_eq!(causes.len(), 2);
        assert_eq!(causes[0].field.as_deref(), Some("spec.prefixLength"));
        assert_eq!(causes[0].reason.as_deref(), Some("FieldValueInvalid"));
        assert_eq!(
            causes[0].message.as_deref(),
            Some("Invalid value: 200: must be at most 128")
        );
        assert_eq!(
            err.to_string(),
            "IPPrefixClaim.ipam.miloapis.com \"web-0\" is invalid: [spec.prefixLength: Invalid value: 200: must be at most 128, spec.parentRef: Required value: exactly one of parentRef or parentSelector is required]"
        );
    }

    #[test]
    fn not_found_names_the_resource_like_kubernetes() {
        let err = ApiError::not_found("ipprefixes", "dfw");
        assert_eq!(
            err.to_string(),
            "ipprefixes.ipam.miloapis.com \"dfw\" not found"
        );
        let v = status_json(&err.to_status());
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["code"], 404);
        assert_eq!(v["details"]["kind"], "ipprefixes");
        assert_eq!(v["details"]["group"], "ipam.miloapis.com");
    }

    #[test]
    fn unknown_paths_are_kube_apiservers_404_without_details() {
        let v = status_json(&ApiError::UnknownPath.to_status());
        assert_eq!(v["code"], 404);
        assert_eq!(v["reason"], "NotFound");
        assert_eq!(
            v["message"],
            "the server could not find the requested resource"
        );
        assert_eq!(v["details"], serde_json::json!({}));
    }
}
