//! Server-side sessions. The cookie carries `<clinic id>.<32 random bytes>`; the database keeps
//! only the SHA-256 of the random part. The clinic id in the cookie selects the tenant (so the
//! lookup runs under row-level security) and is not a secret. Idle timeout and absolute lifetime
//! are enforced here, on every request; revocation is a row update that takes effect at once.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::platform::authz::{Caller, Role};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ErrorCode};
use crate::platform::http::ClientInfo;
use crate::platform::ids::{ClinicId, LocationId, PatientId, SessionId, UserId};
use crate::platform::keys::sha256_hex;
use crate::platform::state::AppState;

/// The session cookie's name. `__Host-` (RFC 6265bis §4.1.3.2): browsers accept it only with
/// `Secure`, `Path=/` and no `Domain`, so neither a sibling subdomain nor a plain-HTTP page can
/// set or overwrite it (no session fixation through a cookie planted from elsewhere).
pub const COOKIE: &str = "__Host-clinic_session";

/// How far a session has come through login.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Stage {
    /// Password accepted; the MFA code is still owed.
    MfaPending,
    /// Password accepted for an account that must enroll MFA first: enrollment only.
    EnrollOnly,
    /// Fully signed in.
    Full,
}

impl Stage {
    /// The stored name (snake_case, as serde writes it).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    fn parse(s: &str) -> Option<Stage> {
        s.parse().ok()
    }
}

/// A new session's token, to be set as the cookie.
pub struct NewSession {
    pub id: SessionId,
    pub cookie_value: String,
}

/// Creates a session row and returns its token. Runs in the caller's tenant transaction.
pub async fn create(
    tx: &mut TenantTx,
    state: &AppState,
    clinic: &ClinicId,
    user: &UserId,
    stage: Stage,
    client: &ClientInfo,
) -> sqlx::Result<NewSession> {
    let now = state.clock.now_ms();
    let token = new_token(state);
    let id = SessionId::new();
    // A session born full (a patient without MFA) has had no MFA check: step-up stays owed.
    let mfa_at: Option<i64> = None;
    sqlx::query(
        "INSERT INTO sessions (id, clinic_id, user_id, token_hash, stage, created_at, last_seen_at, expires_at, mfa_at, ip, user_agent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(id.as_str())
    .bind(clinic.as_str())
    .bind(user.as_str())
    .bind(sha256_hex(token.as_bytes()))
    .bind(stage.as_str())
    .bind(now)
    .bind(now)
    .bind(now + state.config.sessions.absolute_lifetime_secs * 1000)
    .bind(mfa_at)
    .bind(&client.ip)
    .bind(&client.user_agent)
    .execute(&mut **tx)
    .await?;
    Ok(NewSession {
        id,
        cookie_value: format!("{clinic}.{token}"),
    })
}

/// A session token: 32 random bytes, base64url.
fn new_token(state: &AppState) -> String {
    let mut raw = [0u8; 32];
    state.keys.random(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The `Set-Cookie` value for a session token (empty token and max-age 0 clear it). Always
/// `Secure`, as the `__Host-` name requires (see `sessions.secure_cookie` in the config).
pub fn set_cookie(value: &str, max_age_secs: i64) -> String {
    format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}")
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: String,
    user_id: String,
    stage: String,
    last_seen_at: i64,
    expires_at: i64,
    mfa_at: Option<i64>,
    revoked_at: Option<i64>,
    role: String,
    disabled_at: Option<i64>,
    must_change_password: i64,
}

/// The request header a page sets on its own timed refreshes (any value): such a request is
/// served but does not count as activity for the idle timeout.
pub const BACKGROUND_HEADER: &str = "x-clinic-background";

/// How far the idle clock (`last_seen_at`) must lag before a request moves it: a minute, or a
/// tenth of the idle timeout when that is shorter (so a short timeout still counts activity).
pub const LAST_SEEN_STEP_MS: i64 = 60_000;

/// The idle clock's step for an idle timeout of `idle_timeout_secs` (see [`LAST_SEEN_STEP_MS`]);
/// pages sign out this much before the idle timeout they count, since the server's clock may
/// lag theirs by up to it.
pub fn last_seen_step_ms(idle_timeout_secs: i64) -> i64 {
    LAST_SEEN_STEP_MS.min(idle_timeout_secs * 100).max(1)
}

fn expired() -> ApiError {
    ApiError::unauthorized(
        ErrorCode::SessionExpired,
        "your session has ended; sign in again",
    )
}

/// Resolves the request's session into a [`Caller`], enforcing revocation, the idle timeout and
/// the absolute lifetime, and refreshing the idle clock.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    client: ClientInfo,
) -> Result<Caller, ApiError> {
    let unauthenticated = || ApiError::unauthorized(ErrorCode::Unauthenticated, "sign in first");
    let value = cookie_value(headers).ok_or_else(unauthenticated)?;
    let (clinic, token) = value.split_once('.').ok_or_else(unauthenticated)?;
    let clinic = ClinicId::parse(clinic).ok_or_else(unauthenticated)?;
    let now = state.clock.now_ms();
    let mut tx = state.tx(&clinic).await?;
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT s.id, s.user_id, s.stage, s.last_seen_at, s.expires_at, s.mfa_at, s.revoked_at, u.role, u.disabled_at, u.must_change_password \
         FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.token_hash = $1 AND s.clinic_id = $2",
    )
    .bind(sha256_hex(token.as_bytes()))
    .bind(clinic.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(unauthenticated());
    };
    if row.revoked_at.is_some() {
        return Err(expired());
    }
    let idle = now - row.last_seen_at > state.config.sessions.idle_timeout_secs * 1000;
    if idle || now >= row.expires_at || row.disabled_at.is_some() {
        sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
        return tx.fail(expired()).await;
    }
    // The idle clock moves at most once a minute per session: a write on every request would
    // queue every request behind SQLite's one writer (and a PostgreSQL row lock). A person's last
    // minute may so go uncounted, which shortens the idle timeout by under a minute, never
    // lengthens it. A page's background refresh (BACKGROUND_HEADER) never moves it: only what a
    // person does keeps a session alive.
    let background = headers.contains_key(BACKGROUND_HEADER);
    let step = last_seen_step_ms(state.config.sessions.idle_timeout_secs);
    if !background && now - row.last_seen_at >= step {
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1")
            .bind(now)
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
    }
    let locations: Vec<(String,)> = sqlx::query_as(
        "SELECT location_id FROM user_locations WHERE user_id = $1 ORDER BY location_id",
    )
    .bind(&row.user_id)
    .fetch_all(&mut *tx)
    .await?;
    let role = Role::parse(&row.role).ok_or_else(ApiError::internal)?;
    let patient = if role == Role::Patient {
        let own: Option<(String,)> =
            sqlx::query_as("SELECT id FROM patients WHERE user_id = $1 AND clinic_id = $2")
                .bind(&row.user_id)
                .bind(clinic.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        own.map(|(id,)| PatientId::from_trusted(id))
    } else {
        None
    };
    tx.commit().await?;
    let stage = Stage::parse(&row.stage).ok_or_else(ApiError::internal)?;
    Ok(Caller {
        user_id: UserId::from_trusted(row.user_id),
        clinic_id: clinic,
        role,
        session_id: SessionId::from_trusted(row.id),
        stage,
        mfa_at: row.mfa_at,
        must_change_password: row.must_change_password != 0,
        patient,
        locations: locations
            .into_iter()
            .map(|(l,)| LocationId::from_trusted(l))
            .collect(),
        client,
    })
}

/// Marks a session fully signed in after its sign-in MFA check (enrollment or verification),
/// under a new token, and returns the new cookie value. The token it had before the check
/// stops working at once: whoever saw or planted it (session fixation) does not get the
/// signed-in session. The session row stays (its id, absolute lifetime and audit trail are the
/// sign-in's); only the secret that names it changes.
pub async fn complete_mfa(
    tx: &mut TenantTx,
    state: &AppState,
    caller: &Caller,
    now: i64,
) -> sqlx::Result<String> {
    let token = new_token(state);
    sqlx::query("UPDATE sessions SET stage = 'full', mfa_at = $1, token_hash = $2 WHERE id = $3")
        .bind(now)
        .bind(sha256_hex(token.as_bytes()))
        .bind(caller.session_id.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(format!("{}.{token}", caller.clinic_id))
}

/// Refreshes the step-up clock of a signed-in session after an MFA check.
pub async fn mark_mfa(tx: &mut TenantTx, session: &SessionId, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE sessions SET stage = 'full', mfa_at = $1 WHERE id = $2")
        .bind(now)
        .bind(session.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Revokes one session.
pub async fn revoke(tx: &mut TenantTx, session: &SessionId, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(session.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Revokes every live session of a user (disable, MFA reset, password change).
pub async fn revoke_user(tx: &mut TenantTx, user: &UserId, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(user.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}
