//! One-time enrollment links: a new account's holder sets the first password (and then enrolls
//! MFA at first sign-in, as every staff account must). The account's creator gets the link to
//! deliver, never a password: whoever creates an account cannot sign in as it without spending
//! the link, which the real holder would then find used (and the audit log names where from).
//!
//! The token is `<clinic id>.<32 random bytes, base64url>`; only its SHA-256 is stored. It rides
//! in the page URL's fragment (`/enroll#…`), so it reaches neither server logs nor referrers.

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::domains::identity::passwords;
use crate::platform::audit::{Action, AuditEvent, Outcome};
use crate::platform::authz::{Policy, Routes};
use crate::platform::clock::rfc3339;
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiJson, ClientInfo};
use crate::platform::ids::{ClinicId, UserId};
use crate::platform::keys::{KeyRing, sha256_hex};
use crate::platform::sessions;
use crate::platform::state::AppState;

/// The page that takes an enrollment link (`web/enroll.html`).
pub const PAGE: &str = "/enroll";

pub fn routes() -> Routes {
    Routes::new("auth")
        .add(
            Method::POST,
            "/api/v1/auth/enroll",
            Policy::PUBLIC,
            "Set a new account's first password with its one-time enrollment link",
            enroll,
        )
        .body::<EnrollRequest>()
}

/// An issued link, to be delivered to the account's holder.
#[derive(Serialize, schemars::JsonSchema)]
pub struct EnrollmentLink {
    /// The page URL with the one-time token in its fragment; works once, until `expires_at`.
    pub url: String,
    pub expires_at: String,
}

/// Stores a new one-time link for `user` (valid for `login.enrollment_link_ttl_secs`) in the
/// caller's transaction. The caller records the audit event that says who issued it.
pub async fn issue(
    tx: &mut TenantTx,
    keys: &KeyRing,
    ttl_secs: i64,
    clinic: &ClinicId,
    user: &UserId,
    created_by: Option<&str>,
    now: i64,
) -> ApiResult<EnrollmentLink> {
    let mut raw = [0u8; 32];
    keys.random(&mut raw);
    let token = format!("{}.{}", clinic, URL_SAFE_NO_PAD.encode(raw));
    let expires = now + ttl_secs * 1000;
    sqlx::query(
        "INSERT INTO enrollment_links (id, clinic_id, user_id, token_hash, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(clinic.as_str())
    .bind(user.as_str())
    .bind(sha256_hex(token.as_bytes()))
    .bind(created_by)
    .bind(now)
    .bind(expires)
    .execute(&mut **tx)
    .await?;
    Ok(EnrollmentLink {
        url: format!("{PAGE}#{token}"),
        expires_at: rfc3339(expires),
    })
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The token from the link's fragment.
    pub token: String,
    pub password: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Enrolled {
    /// The practice's short name and the username to sign in with.
    pub clinic: String,
    pub username: String,
}

#[derive(sqlx::FromRow)]
struct LinkRow {
    id: String,
    user_id: String,
    expires_at: i64,
    used_at: Option<i64>,
    username: String,
    role: String,
    disabled_at: Option<i64>,
}

fn invalid() -> ApiError {
    ApiError::unauthorized(
        ErrorCode::InvalidLink,
        "this enrollment link is not valid; ask the practice for a new one",
    )
}

fn used() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        ErrorCode::LinkUsed,
        "this enrollment link was already used; each works once. Ask the practice for a new one",
    )
}

async fn enroll(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> ApiResult<Json<Enrolled>> {
    let clinic = body
        .token
        .split_once('.')
        .and_then(|(c, _)| ClinicId::parse(c))
        .ok_or_else(invalid)?;
    // Hashed before the transaction: no write lock or pool connection is held while argon2 runs.
    let hash = passwords::NewHash::of(&body.password, state.config.login.check_wait()).await?;
    let now = state.clock.now_ms();
    let mut tx = state.tx(&clinic).await?;
    let row: Option<LinkRow> = sqlx::query_as(
        "SELECT l.id, l.user_id, l.expires_at, l.used_at, u.username, u.role, u.disabled_at \
         FROM enrollment_links l JOIN users u ON u.id = l.user_id \
         WHERE l.token_hash = $1 AND l.clinic_id = $2",
    )
    .bind(sha256_hex(body.token.as_bytes()))
    .bind(clinic.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let mut event = AuditEvent::new(clinic.clone(), Action::EnrollmentComplete, "user");
    event.ip = client.ip.clone();
    event.user_agent = client.user_agent.clone();
    let Some(row) = row else {
        return tx.refuse(event.detail("unknown link"), invalid()).await;
    };
    event.actor_id = Some(row.user_id.clone());
    event.actor_role = Some(row.role.clone());
    event.resource_id = Some(row.user_id.clone());
    if row.disabled_at.is_some() {
        return tx.refuse(event.detail("account disabled"), invalid()).await;
    }
    if row.used_at.is_some() {
        return tx.refuse(event.detail("link used"), used()).await;
    }
    if now > row.expires_at {
        let expired = ApiError::new(
            StatusCode::GONE,
            ErrorCode::LinkExpired,
            "this enrollment link has expired; ask the practice for a new one",
        );
        return tx.refuse(event.detail("link expired"), expired).await;
    }
    // Spent by whoever's update takes it: a concurrent use read it unused too, but on PostgreSQL
    // its update waits for this one's commit and then matches no row (SQLite runs one writer).
    let spent = sqlx::query(
        "UPDATE enrollment_links SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND expires_at >= $1",
    )
    .bind(now)
    .bind(&row.id)
    .execute(&mut *tx)
    .await?;
    if spent.rows_affected() != 1 {
        return tx.refuse(event.detail("link used"), used()).await;
    }
    sqlx::query(
        "UPDATE users SET password_hash = $1, password_changed_at = $2, must_change_password = 0, \
         failed_logins = 0, locked_until = NULL WHERE id = $3",
    )
    .bind(hash.as_str())
    .bind(now)
    .bind(&row.user_id)
    .execute(&mut *tx)
    .await?;
    sessions::revoke_user(&mut tx, &UserId::from_trusted(row.user_id.clone()), now).await?;
    let slug: Option<(String,)> = sqlx::query_as("SELECT slug FROM clinics WHERE id = $1")
        .bind(clinic.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    tx.audit(event.outcome(Outcome::Success).detail("password set"))
        .await?;
    tx.commit().await?;
    Ok(Json(Enrolled {
        clinic: slug.map(|(s,)| s).unwrap_or_default(),
        username: row.username,
    }))
}
