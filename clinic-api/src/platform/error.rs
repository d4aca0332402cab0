//! The one place where errors become HTTP answers: RFC 9457 `application/problem+json` bodies
//! with a stable `code`. Handlers return `Result<_, ApiError>` and `?` does the rest.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Declares [`ErrorCode`]: each variant with the stable string it is answered as.
macro_rules! error_codes {
    ($($variant:ident = $s:literal,)*) => {
        /// Every code the API can answer with, in the problem body's `code` (and its `type`,
        /// `/problems/<code>`). Listed in the OpenAPI document; clients may match on them.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $s,)*
                }
            }
        }
    };
}

error_codes! {
    AccountLocked = "account_locked",
    AlreadyStarted = "already_started",
    AmbiguousLocalTime = "ambiguous_local_time",
    AppointmentClosed = "appointment_closed",
    BodyTimeout = "body_timeout",
    BodyTooLarge = "body_too_large",
    CannotDisableSelf = "cannot_disable_self",
    ChangedConcurrently = "changed_concurrently",
    CodeReplayed = "code_replayed",
    Conflict = "conflict",
    ConsultEnded = "consult_ended",
    ConsultUnavailable = "consult_unavailable",
    CrossOrigin = "cross_origin",
    EmptyUpload = "empty_upload",
    EnrollmentNotStarted = "enrollment_not_started",
    Forbidden = "forbidden",
    HeadersTooLarge = "headers_too_large",
    HeicNotSupported = "heic_not_supported",
    HoldExpired = "hold_expired",
    IdempotencyKeyReused = "idempotency_key_reused",
    ImageCorrupt = "image_corrupt",
    ImageTooComplex = "image_too_complex",
    ImageTooLarge = "image_too_large",
    Internal = "internal",
    InvalidBody = "invalid_body",
    InvalidCode = "invalid_code",
    InvalidCredentials = "invalid_credentials",
    InvalidDisplayName = "invalid_display_name",
    InvalidHours = "invalid_hours",
    InvalidIdempotencyKey = "invalid_idempotency_key",
    InvalidLink = "invalid_link",
    InvalidPath = "invalid_path",
    InvalidQuery = "invalid_query",
    InvalidReference = "invalid_reference",
    InvalidRole = "invalid_role",
    InvalidRrule = "invalid_rrule",
    InvalidTime = "invalid_time",
    InvalidTimeZone = "invalid_time_zone",
    InvalidTransition = "invalid_transition",
    InvalidUsername = "invalid_username",
    JoinClosed = "join_closed",
    JoinNotOpen = "join_not_open",
    LegalHold = "legal_hold",
    LinkExpired = "link_expired",
    LinkUsed = "link_used",
    LocationExists = "location_exists",
    LocationNotAssigned = "location_not_assigned",
    LoginBackoff = "login_backoff",
    MalformedJson = "malformed_json",
    MalformedRequest = "malformed_request",
    MethodNotAllowed = "method_not_allowed",
    MfaAlreadyEnrolled = "mfa_already_enrolled",
    MfaEnrollmentRequired = "mfa_enrollment_required",
    MfaNotEnrolled = "mfa_not_enrolled",
    MfaRequired = "mfa_required",
    NoOpenSlot = "no_open_slot",
    NonexistentLocalTime = "nonexistent_local_time",
    NotFound = "not_found",
    NotStarted = "not_started",
    NotTelemedicine = "not_telemedicine",
    OutsideAvailability = "outside_availability",
    PasswordChangeRequired = "password_change_required",
    ProviderNotAtLocation = "provider_not_at_location",
    RateLimited = "rate_limited",
    RetentionPeriod = "retention_period",
    RoleNotAssignable = "role_not_assignable",
    RoomExists = "room_exists",
    ServerGoingAway = "server_going_away",
    SessionExpired = "session_expired",
    SlotUnavailable = "slot_unavailable",
    StartInPast = "start_in_past",
    StartTooFar = "start_too_far",
    StepUpRequired = "step_up_required",
    StorageUnavailable = "storage_unavailable",
    Timeout = "timeout",
    TooManyUploads = "too_many_uploads",
    TypeExists = "type_exists",
    TypeNotBookable = "type_not_bookable",
    Unauthenticated = "unauthenticated",
    Unavailable = "unavailable",
    UnknownLocation = "unknown_location",
    UnknownPatient = "unknown_patient",
    UnknownProvider = "unknown_provider",
    UnknownRoom = "unknown_room",
    UnknownType = "unknown_type",
    UnreadableBody = "unreadable_body",
    UnsupportedImageType = "unsupported_image_type",
    UnsupportedMediaType = "unsupported_media_type",
    UpgradeRequired = "upgrade_required",
    UploadBusy = "upload_busy",
    UploadInterrupted = "upload_interrupted",
    UploadQuota = "upload_quota",
    UploadStalled = "upload_stalled",
    UploadTooLarge = "upload_too_large",
    UploadTooSlow = "upload_too_slow",
    UriTooLong = "uri_too_long",
    UrlExpired = "url_expired",
    UsernameTaken = "username_taken",
    WeakPassword = "weak_password",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An error answer: status, a stable machine-readable code, and a human-readable detail.
/// The detail must never contain PHI: it is shown to the caller and may be logged.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub detail: String,
    /// Extra members of the problem object (e.g. `retry_after`).
    pub extra: Option<Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extra: None,
            retry_after: None,
        }
    }
    pub fn bad_request(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn unprocessable(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }
    pub fn unauthorized(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, detail)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{what} not found"),
        )
    }
    pub fn conflict(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
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
                if crate::platform::db::is_contention(db.as_ref()) {
                    // Another writer held what this one needed (SQLite busy or locked,
                    // PostgreSQL serialization failure, deadlock or lock timeout): a retry
                    // succeeds, so it is an answer to retry, not a fault.
                    tracing::warn!(code = ?db.code(), "database contention");
                    return ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Unavailable,
                        "the service is busy; retry shortly",
                    )
                    .with_retry_after(1);
                }
                match db.kind() {
                    // The caller's input collided with a key: an answer, not a fault.
                    sqlx::error::ErrorKind::UniqueViolation
                    | sqlx::error::ErrorKind::ForeignKeyViolation => {
                        tracing::info!(kind = ?db.kind(), constraint = db.constraint(), "refused by a constraint")
                    }
                    _ => {
                        tracing::error!(kind = ?db.kind(), constraint = db.constraint(), code = ?db.code(), "database error")
                    }
                }
                match db.kind() {
                    sqlx::error::ErrorKind::UniqueViolation => ApiError::conflict(
                        ErrorCode::Conflict,
                        "a record with the same unique value already exists",
                    ),
                    sqlx::error::ErrorKind::ForeignKeyViolation => ApiError::unprocessable(
                        ErrorCode::InvalidReference,
                        "a referenced record does not exist",
                    ),
                    _ => ApiError::internal(),
                }
            }
            sqlx::Error::PoolTimedOut => {
                tracing::error!("database pool timed out");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
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

/// A database refusal by name, the same on both backends: the one place constraint violations
/// become answers. Expected conflicts are not logged as errors.
pub trait OnConstraint<T> {
    /// A unique-key violation by this statement becomes `answer` (SQLite does not name the
    /// constraint, so a statement that can collide on more than one key must not use this).
    fn on_unique(self, answer: impl FnOnce() -> ApiError) -> ApiResult<T>;
}

impl<T> OnConstraint<T> for Result<T, sqlx::Error> {
    fn on_unique(self, answer: impl FnOnce() -> ApiError) -> ApiResult<T> {
        self.map_err(|e| match &e {
            sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                answer()
            }
            _ => e.into(),
        })
    }
}

/// The name of the PostgreSQL exclusion constraint (SQLSTATE 23P01) `e` violated, if that is
/// what it is (SQLite has none: there the same overlap is found by a query under its write lock).
pub fn exclusion_violated(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23P01") => db.constraint(),
        _ => None,
    }
}

/// The fallback for unknown routes, as a problem body.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("route")
}

/// Every code the API can answer with, as strings (the OpenAPI document's `code` enum).
pub fn all_codes() -> Vec<&'static str> {
    ErrorCode::ALL.iter().map(|c| c.as_str()).collect()
}
