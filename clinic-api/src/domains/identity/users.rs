//! User accounts of a tenant: the store (used by login, the CLI and the demo seed) and the admin
//! routes (list with MFA enrollment state, create, disable, unlock, reset MFA, assign locations).

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use serde::{Deserialize, Serialize};

use crate::domains::identity::enrollment::{self, EnrollmentLink};
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission, Policy, Role, Routes};
use crate::platform::clock::rfc3339;
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode, OnConstraint};
use crate::platform::http::{ApiJson, ApiPath};
use crate::platform::ids::{ClinicId, LocationId, UserId};
use crate::platform::state::AppState;
use crate::{domains::identity::passwords, platform::sessions};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub clinic_id: String,
    pub username: String,
    pub display_name: String,
    pub role: String,
    pub password_hash: String,
    pub disabled_at: Option<i64>,
    pub mfa_secret: Option<String>,
    pub mfa_pending_secret: Option<String>,
    pub mfa_enrolled_at: Option<i64>,
    pub totp_last_step: Option<i64>,
    pub failed_logins: i64,
    pub locked_until: Option<i64>,
    pub last_login_at: Option<i64>,
    pub password_changed_at: i64,
    pub created_at: i64,
    /// 1 when someone else set the password (see [`set_temporary_password`]).
    pub must_change_password: i64,
}

impl UserRow {
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Patient)
    }
    pub fn user_id(&self) -> UserId {
        UserId::from_trusted(self.id.clone())
    }
}

const USER_COLUMNS: &str = "id, clinic_id, username, display_name, role, password_hash, disabled_at, mfa_secret, \
     mfa_pending_secret, mfa_enrolled_at, totp_last_step, failed_logins, locked_until, last_login_at, \
     password_changed_at, created_at, must_change_password";

pub async fn by_username(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    username: &str,
) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE clinic_id = $1 AND username = $2"
    ))
    .bind(clinic.as_str())
    .bind(username)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn by_id(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    id: &UserId,
) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE clinic_id = $1 AND id = $2"
    ))
    .bind(clinic.as_str())
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await
}

/// A new account, its password already hashed (before the transaction opened).
pub struct NewUser<'a> {
    pub username: &'a str,
    pub display_name: &'a str,
    pub role: Role,
    pub password: &'a passwords::NewHash,
    pub locations: &'a [LocationId],
}

pub fn validate_username(username: &str) -> ApiResult<()> {
    let ok = (3..=64).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            ErrorCode::InvalidUsername,
            "usernames are 3 to 64 characters: letters, digits and . _ - @ +",
        ))
    }
}

pub async fn create(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    now: i64,
    new: &NewUser<'_>,
) -> ApiResult<UserId> {
    validate_username(new.username)?;
    let id = UserId::new();
    sqlx::query(
        "INSERT INTO users (id, clinic_id, username, display_name, role, password_hash, password_changed_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.as_str())
    .bind(clinic.as_str())
    .bind(new.username)
    .bind(new.display_name)
    .bind(new.role.as_str())
    .bind(new.password.as_str())
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await
    .on_unique(|| ApiError::conflict(ErrorCode::UsernameTaken, "that username is already in use"))?;
    set_locations(tx, clinic, &id, new.locations).await?;
    Ok(id)
}

/// Replaces a user's assigned locations (a covering provider gets a second one this way).
pub async fn set_locations(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    user: &UserId,
    locations: &[LocationId],
) -> ApiResult<()> {
    sqlx::query("DELETE FROM user_locations WHERE user_id = $1")
        .bind(user.as_str())
        .execute(&mut **tx)
        .await?;
    for loc in locations {
        let exists: Option<(String,)> =
            sqlx::query_as("SELECT id FROM locations WHERE id = $1 AND clinic_id = $2")
                .bind(loc.as_str())
                .bind(clinic.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        if exists.is_none() {
            return Err(ApiError::unprocessable(
                ErrorCode::UnknownLocation,
                "a location in the list does not exist",
            ));
        }
        sqlx::query(
            "INSERT INTO user_locations (clinic_id, user_id, location_id) VALUES ($1, $2, $3)",
        )
        .bind(clinic.as_str())
        .bind(user.as_str())
        .bind(loc.as_str())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Disables an account and revokes its sessions at once.
pub async fn disable(tx: &mut TenantTx, user: &UserId, now: i64) -> sqlx::Result<u64> {
    sqlx::query("UPDATE users SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL")
        .bind(now)
        .bind(user.as_str())
        .execute(&mut **tx)
        .await?;
    sessions::revoke_user(tx, user, now).await
}

/// Clears MFA enrollment and recovery codes and revokes the user's sessions: the next login
/// must enroll again.
pub async fn reset_mfa(tx: &mut TenantTx, user: &UserId, now: i64) -> sqlx::Result<u64> {
    sqlx::query(
        "UPDATE users SET mfa_secret = NULL, mfa_pending_secret = NULL, mfa_enrolled_at = NULL, totp_last_step = NULL WHERE id = $1",
    )
    .bind(user.as_str())
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(user.as_str())
        .execute(&mut **tx)
        .await?;
    sessions::revoke_user(tx, user, now).await
}

/// Sets a new password the user chose and revokes the user's sessions.
pub async fn set_password(
    tx: &mut TenantTx,
    user: &UserId,
    password: &passwords::NewHash,
    now: i64,
) -> ApiResult<()> {
    write_password(tx, user, password, false, now).await
}

/// Sets a password someone else chose (an operator's reset) and revokes the user's sessions:
/// the user's sessions then reach only the password change until they pick their own.
pub async fn set_temporary_password(
    tx: &mut TenantTx,
    user: &UserId,
    password: &passwords::NewHash,
    now: i64,
) -> ApiResult<()> {
    write_password(tx, user, password, true, now).await
}

async fn write_password(
    tx: &mut TenantTx,
    user: &UserId,
    password: &passwords::NewHash,
    temporary: bool,
    now: i64,
) -> ApiResult<()> {
    sqlx::query(
        "UPDATE users SET password_hash = $1, password_changed_at = $2, must_change_password = $3 WHERE id = $4",
    )
    .bind(password.as_str())
    .bind(now)
    .bind(i64::from(temporary))
    .bind(user.as_str())
    .execute(&mut **tx)
    .await?;
    sessions::revoke_user(tx, user, now).await?;
    Ok(())
}

pub async fn unlock(tx: &mut TenantTx, user: &UserId) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
        .bind(user.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Routes

#[derive(Serialize, schemars::JsonSchema)]
pub struct UserOut {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: String,
    pub disabled: bool,
    pub mfa_enrolled: bool,
    pub locked: bool,
    pub last_login_at: Option<String>,
    pub locations: Vec<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub display_name: String,
    pub role: Role,
    #[serde(default)]
    pub location_ids: Vec<LocationId>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct CreatedUser {
    pub id: String,
    /// The one-time link for the new user to set their password: deliver it to them. The
    /// account has no password anyone knows until the link is used.
    pub enrollment: EnrollmentLink,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLocations {
    pub location_ids: Vec<LocationId>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Disabled {
    pub disabled: bool,
    pub sessions_revoked: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Unlocked {
    pub unlocked: bool,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct MfaReset {
    pub mfa_reset: bool,
    pub sessions_revoked: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct AssignedLocations {
    /// The user's assigned locations, as set.
    pub locations: Vec<LocationId>,
}

#[derive(Deserialize)]
struct UserPath {
    id: UserId,
}

pub fn routes() -> Routes {
    Routes::new("users")
        .add(
            Method::GET,
            "/api/v1/users",
            Policy::perm(Permission::UsersRead),
            "List staff and partner accounts with role, locations and MFA enrollment state",
            list,
        )
        .add(
            Method::POST,
            "/api/v1/users",
            Policy::perm(Permission::UsersManage),
            "Create a user (returns a one-time enrollment link for them, never a password; the roles a role may give are in the matrix)",
            create_route,
        )
        .body::<CreateUser>()
        .add(
            Method::POST,
            "/api/v1/users/{id}/disable",
            Policy::perm(Permission::UsersManage),
            "Disable a user and revoke their sessions",
            disable_route,
        )
        .add(
            Method::POST,
            "/api/v1/users/{id}/unlock",
            Policy::perm(Permission::UsersManage),
            "Clear a login lockout",
            unlock_route,
        )
        .add(
            Method::POST,
            "/api/v1/users/{id}/reset-mfa",
            Policy::sensitive(Permission::UsersManage),
            "Reset MFA enrollment and revoke sessions (needs step-up)",
            reset_mfa_route,
        )
        .add(
            Method::PUT,
            "/api/v1/users/{id}/locations",
            Policy::perm(Permission::UsersManage),
            "Set a user's assigned locations",
            locations_route,
        )
        .body::<SetLocations>()
}

async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<UserOut>>> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    // Patient portal accounts are left out: their display names are PHI, and staff administration
    // does not need them (a patient's account is reached through the patient's record).
    let rows: Vec<UserRow> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE clinic_id = $1 AND role <> 'patient' ORDER BY username"
    ))
    .bind(caller.clinic_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let links: Vec<(String, String)> =
        sqlx::query_as("SELECT user_id, location_id FROM user_locations WHERE clinic_id = $1")
            .bind(caller.clinic_id.as_str())
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(Json(
        rows.into_iter()
            .map(|u| UserOut {
                locations: links
                    .iter()
                    .filter(|(uid, _)| *uid == u.id)
                    .map(|(_, l)| l.clone())
                    .collect(),
                id: u.id,
                username: u.username,
                display_name: u.display_name,
                role: u.role,
                disabled: u.disabled_at.is_some(),
                mfa_enrolled: u.mfa_enrolled_at.is_some(),
                locked: u.locked_until.is_some_and(|t| t > now),
                last_login_at: u.last_login_at.map(rfc3339),
            })
            .collect(),
    ))
}

async fn create_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> ApiResult<Json<CreatedUser>> {
    if body.display_name.trim().is_empty() || body.display_name.len() > 200 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidDisplayName,
            "display_name must be 1 to 200 characters",
        ));
    }
    let now = state.clock.now_ms();
    // A password no one is told: until the link is used the account cannot be signed in to (and
    // a sign-in attempt costs the same as for any account). Hashed before the transaction opens.
    let password = passwords::NewHash::of(
        &passwords::generate(|b| state.keys.random(b)),
        state.config.login.check_wait(),
    )
    .await?;
    let mut tx = state.tx(&caller.clinic_id).await?;
    if let Err(refused) = caller.may_assign(&state, body.role) {
        let event = caller
            .event(Action::UserCreate, "user")
            .detail(format!("{} refused", body.role.as_str()));
        return tx.refuse(event, refused).await;
    }
    let id = create(
        &mut tx,
        &caller.clinic_id,
        now,
        &NewUser {
            username: &body.username,
            display_name: &body.display_name,
            role: body.role,
            password: &password,
            locations: &body.location_ids,
        },
    )
    .await?;
    tx.audit(
        caller
            .event(Action::UserCreate, "user")
            .resource(&id)
            .detail(body.role.as_str()),
    )
    .await?;
    let link = enrollment::issue(
        &mut tx,
        &state.keys,
        state.config.login.enrollment_link_ttl_secs,
        &caller.clinic_id,
        &id,
        Some(caller.user_id.as_str()),
        now,
    )
    .await?;
    tx.audit(
        caller
            .event(Action::EnrollmentLinkIssue, "user")
            .resource(&id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(CreatedUser {
        id: id.to_string(),
        enrollment: link,
    }))
}

/// Loads the target user of an admin action, in the caller's tenant.
async fn target(tx: &mut TenantTx, caller: &Caller, id: &UserId) -> ApiResult<UserRow> {
    by_id(tx, &caller.clinic_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

async fn disable_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
) -> ApiResult<Json<Disabled>> {
    if p.id == caller.user_id {
        return Err(ApiError::conflict(
            ErrorCode::CannotDisableSelf,
            "you cannot disable your own account",
        ));
    }
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    target(&mut tx, &caller, &p.id).await?;
    let revoked = disable(&mut tx, &p.id, now).await?;
    tx.audit(caller.event(Action::UserDisable, "user").resource(&p.id))
        .await?;
    tx.commit().await?;
    Ok(Json(Disabled {
        disabled: true,
        sessions_revoked: revoked,
    }))
}

async fn unlock_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
) -> ApiResult<Json<Unlocked>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    target(&mut tx, &caller, &p.id).await?;
    unlock(&mut tx, &p.id).await?;
    tx.audit(caller.event(Action::UserUnlock, "user").resource(&p.id))
        .await?;
    tx.commit().await?;
    Ok(Json(Unlocked { unlocked: true }))
}

async fn reset_mfa_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
) -> ApiResult<Json<MfaReset>> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    target(&mut tx, &caller, &p.id).await?;
    let revoked = reset_mfa(&mut tx, &p.id, now).await?;
    tx.audit(caller.event(Action::MfaReset, "user").resource(&p.id))
        .await?;
    tx.commit().await?;
    Ok(Json(MfaReset {
        mfa_reset: true,
        sessions_revoked: revoked,
    }))
}

async fn locations_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
    ApiJson(body): ApiJson<SetLocations>,
) -> ApiResult<Json<AssignedLocations>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    target(&mut tx, &caller, &p.id).await?;
    set_locations(&mut tx, &caller.clinic_id, &p.id, &body.location_ids).await?;
    tx.audit(
        caller
            .event(Action::LocationAssign, "user")
            .resource(&p.id)
            .detail(format!("{} locations", body.location_ids.len())),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(AssignedLocations {
        locations: body.location_ids,
    }))
}
