//! The HTTP edge: who is calling from where ([`ClientInfo`]), and extractors whose rejections are
//! RFC 9457 problems (`ApiJson` refuses unknown fields through the body types'
//! `deny_unknown_fields`; oversize bodies are 413; wrong content type 415; bad syntax 400).

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::platform::error::{ApiError, ErrorCode};

/// Header naming the purpose of use (HIPAA): `treatment` (default), `payment`, `operations`.
pub const PURPOSE_HEADER: &str = "clinic-purpose";
/// Header carrying a break-glass reason; with it, a role that may break glass reaches a record
/// outside its assigned locations, and the access is audited with purpose `break_glass`.
pub const BREAK_GLASS_HEADER: &str = "clinic-break-glass-reason";

const PURPOSES: [&str; 3] = ["treatment", "payment", "operations"];

/// Where a request comes from, as recorded in audit events.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub purpose: String,
    pub break_glass_reason: Option<String>,
}

impl ClientInfo {
    pub fn from_parts(headers: &HeaderMap, extensions: &Extensions) -> Self {
        let text = |name: &str, max: usize| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().chars().take(max).collect::<String>())
                .filter(|s| !s.is_empty())
        };
        let purpose = text(PURPOSE_HEADER, 32)
            .filter(|p| PURPOSES.contains(&p.as_str()))
            .unwrap_or_else(|| "treatment".to_string());
        Self {
            ip: extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            user_agent: text("user-agent", 512),
            purpose,
            break_glass_reason: text(BREAK_GLASS_HEADER, 500),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientInfo::from_parts(&parts.headers, &parts.extensions))
    }
}

/// JSON body extractor with problem-body rejections.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send the body as application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(ErrorCode::MalformedJson, e.body_text())
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::unprocessable(ErrorCode::InvalidBody, e.body_text())
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            "the request body is larger than allowed",
        ),
        other => ApiError::bad_request(ErrorCode::UnreadableBody, other.body_text()),
    }
}

/// Path extractor with problem-body rejections (a malformed id is 404: no such resource).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => {
                Err(ApiError::not_found("resource"))
            }
            Err(other) => Err(ApiError::bad_request(
                ErrorCode::InvalidPath,
                other.body_text(),
            )),
        }
    }
}

/// Query-string extractor with problem-body rejections.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::unprocessable(
                ErrorCode::InvalidQuery,
                e.body_text(),
            )),
            Err(other) => Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                other.body_text(),
            )),
        }
    }
}

/// WebSocket upgrade extractor with problem-body rejections: a WebSocket route called as plain
/// HTTP (no `Upgrade`, wrong method or version) answers a problem, not axum's text/plain.
pub struct ApiWebSocket(pub axum::extract::ws::WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for ApiWebSocket {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::ws::rejection::WebSocketUpgradeRejection as R;
        match axum::extract::ws::WebSocketUpgrade::from_request_parts(parts, state).await {
            Ok(upgrade) => Ok(ApiWebSocket(upgrade)),
            Err(R::MethodNotGet(_) | R::MethodNotConnect(_)) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "open this WebSocket with GET",
            )),
            Err(R::ConnectionNotUpgradable(_)) => Err(ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::UpgradeRequired,
                "this route is a WebSocket; the connection cannot be upgraded",
            )),
            Err(other) => Err(ApiError::new(
                other.status(),
                ErrorCode::UpgradeRequired,
                "this route is a WebSocket: send Connection: upgrade, Upgrade: websocket, \
                 Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key",
            )),
        }
    }
}
