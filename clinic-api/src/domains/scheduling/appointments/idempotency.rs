//! `Idempotency-Key` on the routes that create an appointment: the appointment the first request
//! made is stored under the caller's key, with a hash of the request; the same key and request
//! answer with that appointment again, the same key with another request is refused. A record
//! keeps ids and a hash only, never the answer itself (which names the patient), and lasts a day
//! ([`TTL_MS`]): long enough for any client's retries, then swept.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sqlx::AnyConnection;

use super::super::time::Ms;
use super::row::{fetch, may_see_names, out};
use crate::platform::authz::Caller;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::keys::sha256_hex;
use crate::platform::state::AppState;

/// How long a key's record lasts (as Stripe keeps its keys): retries come within minutes.
pub(super) const TTL_MS: i64 = 24 * 3600 * 1000;

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

/// The answer for the key, if this user used it in the last day: the appointment it made, as
/// this caller sees it now. The same key with another request is refused.
pub(super) async fn replay(
    conn: &mut AnyConnection,
    state: &AppState,
    caller: &Caller,
    idem: Option<&Idempotency>,
) -> ApiResult<Option<Response>> {
    let Some(idem) = idem else {
        return Ok(None);
    };
    let now = state.clock.now_ms();
    let row: Option<(String, i64, String, i64)> = sqlx::query_as(
        "SELECT request_hash, status, response, created_at FROM idempotency_keys WHERE clinic_id = $1 AND user_id = $2 AND idem_key = $3",
    )
    .bind(caller.clinic_id.as_str())
    .bind(caller.user_id.as_str())
    .bind(&idem.key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((hash, status, appointment_id, created_at)) = row else {
        return Ok(None);
    };
    let made = if created_at > now - TTL_MS {
        fetch(&mut *conn, &caller.clinic_id, &appointment_id).await?
    } else {
        None
    };
    let Some(made) = made else {
        // Expired (or from before records held ids): forgotten, the key is free again.
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE clinic_id = $1 AND user_id = $2 AND idem_key = $3",
        )
        .bind(caller.clinic_id.as_str())
        .bind(caller.user_id.as_str())
        .bind(&idem.key)
        .execute(&mut *conn)
        .await?;
        return Ok(None);
    };
    if hash != idem.hash {
        return Err(ApiError::unprocessable(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request",
        ));
    }
    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    let mut resp = (status, Json(out(state, made, may_see_names(caller)))).into_response();
    resp.headers_mut().insert(
        "idempotent-replay",
        axum::http::HeaderValue::from_static("true"),
    );
    Ok(Some(resp))
}

/// Stores the key's record (in the transaction that made the appointment): the request's hash,
/// the answer's status and the appointment's id. Sweeps the tenant's expired records on the way.
pub(super) async fn remember(
    conn: &mut AnyConnection,
    caller: &Caller,
    idem: Option<&Idempotency>,
    status: StatusCode,
    appointment_id: &str,
    now: Ms,
) -> sqlx::Result<()> {
    let Some(idem) = idem else {
        return Ok(());
    };
    sqlx::query("DELETE FROM idempotency_keys WHERE clinic_id = $1 AND created_at <= $2")
        .bind(caller.clinic_id.as_str())
        .bind(now - TTL_MS)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO idempotency_keys (clinic_id, user_id, idem_key, request_hash, status, response, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(caller.clinic_id.as_str())
    .bind(caller.user_id.as_str())
    .bind(&idem.key)
    .bind(&idem.hash)
    .bind(status.as_u16() as i64)
    .bind(appointment_id)
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
    let found = replay(&mut tx, state, caller, idem).await;
    tx.commit().await?;
    found
}
