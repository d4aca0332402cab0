//! `Idempotency-Key` on the routes that create an appointment: the first answer is stored under
//! the caller's key, with a hash of the request; the same key and request replay it, the same
//! key with another request is refused.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sqlx::AnyConnection;

use super::super::time::Ms;
use crate::platform::authz::Caller;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::keys::sha256_hex;
use crate::platform::state::AppState;

/// A request's key and the hash of what it asked for.
pub(super) struct Idempotency {
    key: String,
    hash: String,
}

impl Idempotency {
    /// The request's key, if it sent one, with the hash of `path` and `body`.
    pub(super) fn of(
        headers: &HeaderMap,
        path: &str,
        body: &impl Serialize,
    ) -> ApiResult<Option<Self>> {
        let Some(v) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let k = v.to_str().unwrap_or_default().trim();
        if k.is_empty() || k.len() > 200 || !k.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidIdempotencyKey,
                "Idempotency-Key must be 1 to 200 visible ASCII characters",
            ));
        }
        Ok(Some(Self {
            key: k.to_string(),
            hash: request_hash(path, body),
        }))
    }
}

fn request_hash(path: &str, body: &impl Serialize) -> String {
    sha256_hex(
        format!(
            "{path}\n{}",
            serde_json::to_string(body).unwrap_or_default()
        )
        .as_bytes(),
    )
}

/// The stored answer for the key, if this user used it before. The same key with another request
/// is refused.
pub(super) async fn replay(
    conn: &mut AnyConnection,
    caller: &Caller,
    idem: Option<&Idempotency>,
) -> ApiResult<Option<Response>> {
    let Some(idem) = idem else {
        return Ok(None);
    };
    let row: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT request_hash, status, response FROM idempotency_keys WHERE clinic_id = $1 AND user_id = $2 AND idem_key = $3",
    )
    .bind(caller.clinic_id.as_str())
    .bind(caller.user_id.as_str())
    .bind(&idem.key)
    .fetch_optional(conn)
    .await?;
    match row {
        None => Ok(None),
        Some((h, _, _)) if h != idem.hash => Err(ApiError::unprocessable(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request",
        )),
        Some((_, status, body)) => {
            let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let mut resp = (status, Json(value)).into_response();
            resp.headers_mut().insert(
                "idempotent-replay",
                axum::http::HeaderValue::from_static("true"),
            );
            Ok(Some(resp))
        }
    }
}

/// Stores the answer under the key (in the transaction that made it).
pub(super) async fn remember(
    conn: &mut AnyConnection,
    caller: &Caller,
    idem: Option<&Idempotency>,
    status: StatusCode,
    body: &serde_json::Value,
    now: Ms,
) -> sqlx::Result<()> {
    let Some(idem) = idem else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO idempotency_keys (clinic_id, user_id, idem_key, request_hash, status, response, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(caller.clinic_id.as_str())
    .bind(caller.user_id.as_str())
    .bind(&idem.key)
    .bind(&idem.hash)
    .bind(status.as_u16() as i64)
    .bind(body.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// After a failed booking: the answer of a concurrent request with the same key that committed
/// first, if there is one (looked up in a new transaction).
pub(super) async fn replay_after_race(
    state: &AppState,
    caller: &Caller,
    idem: Option<&Idempotency>,
) -> ApiResult<Option<Response>> {
    if idem.is_none() {
        return Ok(None);
    }
    let mut tx = state.tx(&caller.clinic_id).await?;
    let found = replay(&mut tx, caller, idem).await;
    tx.commit().await?;
    found
}
