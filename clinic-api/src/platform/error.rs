//! The one place where errors become HTTP answers: RFC 9457 `application/problem+json` bodies
//! with a stable `code`. Handlers return `Result<_, ApiError>` and `?` does the rest.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answer: status, a stable machine-readable code, and a human-readable detail.
/// The detail must never contain PHI: it is shown to the caller and may be logged.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Extra members of the problem object (e.g. `retry_after`).
    pub extra: Option<Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extra: None,
            retry_after: None,
        }
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }
    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }
    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The RFC 9457 body.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let (Some(Value::Object(extra)), Value::Object(obj)) = (&self.extra, &mut body) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        // Database errors can carry row values in their detail text (PostgreSQL's "Key (...)=(...)"),
        // so only the kind and constraint name are logged, never the message.
        match &err {
            sqlx::Error::RowNotFound => ApiError::not_found("record"),
            sqlx::Error::Database(db) => {
                tracing::error!(kind = ?db.kind(), constraint = db.constraint(), code = ?db.code(), "database error");
                match db.kind() {
                    sqlx::error::ErrorKind::UniqueViolation => ApiError::conflict(
                        "conflict",
                        "a record with the same unique value already exists",
                    ),
                    sqlx::error::ErrorKind::ForeignKeyViolation => ApiError::unprocessable(
                        "invalid_reference",
                        "a referenced record does not exist",
                    ),
                    _ => ApiError::internal(),
                }
            }
            sqlx::Error::PoolTimedOut => {
                tracing::error!("database pool timed out");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is busy; retry shortly",
                )
                .with_retry_after(1)
            }
            other => {
                tracing::error!(error = %std::any::type_name_of_val(other), "database failure");
                ApiError::internal()
            }
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        tracing::error!(error = %err, "internal failure");
        ApiError::internal()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The fallback for unknown routes, as a problem body.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("route")
}

/// Every `code` the API can answer with, for the OpenAPI document's problem schema. Replaced by
/// `ErrorCode::ALL`: until then, collected from every `ApiError` constructor in `src` (the
/// literal code argument of `new`, `bad_request`, `unprocessable`, `unauthorized`,
/// `conflict`, and the fixed codes of `forbidden`, `not_found`, `internal` and the
/// database mapping), sorted.
pub fn all_codes() -> Vec<&'static str> {
    vec![
        "account_locked",
        "already_started",
        "ambiguous_local_time",
        "appointment_closed",
        "body_too_large",
        "cannot_disable_self",
        "changed_concurrently",
        "code_replayed",
        "conflict",
        "consult_ended",
        "consult_unavailable",
        "empty_upload",
        "enrollment_not_started",
        "forbidden",
        "heic_not_supported",
        "hold_expired",
        "idempotency_key_reused",
        "image_corrupt",
        "image_too_complex",
        "image_too_large",
        "internal",
        "invalid_body",
        "invalid_code",
        "invalid_credentials",
        "invalid_display_name",
        "invalid_hours",
        "invalid_idempotency_key",
        "invalid_link",
        "invalid_path",
        "invalid_query",
        "invalid_reference",
        "invalid_role",
        "invalid_rrule",
        "invalid_time",
        "invalid_time_zone",
        "invalid_transition",
        "invalid_username",
        "join_closed",
        "join_not_open",
        "legal_hold",
        "link_expired",
        "link_used",
        "location_exists",
        "location_not_assigned",
        "login_backoff",
        "malformed_json",
        "mfa_already_enrolled",
        "mfa_enrollment_required",
        "mfa_not_enrolled",
        "mfa_required",
        "no_open_slot",
        "nonexistent_local_time",
        "not_found",
        "not_started",
        "not_telemedicine",
        "outside_availability",
        "provider_not_at_location",
        "retention_period",
        "room_exists",
        "session_expired",
        "slot_unavailable",
        "start_in_past",
        "start_too_far",
        "step_up_required",
        "storage_unavailable",
        "type_exists",
        "type_not_bookable",
        "unauthenticated",
        "unavailable",
        "unknown_location",
        "unknown_patient",
        "unknown_provider",
        "unknown_room",
        "unknown_type",
        "unreadable_body",
        "unsupported_image_type",
        "unsupported_media_type",
        "upload_interrupted",
        "upload_stalled",
        "upload_too_large",
        "url_expired",
        "username_taken",
        "weak_password",
    ]
}
