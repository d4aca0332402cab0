//! Signing in: password (argon2id) with backoff and lockout, then TOTP (or a recovery code), or
//! TOTP enrollment for accounts that must have MFA; step-up for sensitive routes; sign-out;
//! password change. Every failure that matters (bad password, lockout, bad code) is audited.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, NoContent};
use serde::{Deserialize, Serialize};

use crate::domains::identity::throttle::{self, Failures, SignInThrottle};
use crate::domains::identity::users::{self, UserRow};
use crate::platform::audit::{Action, AuditEvent, Outcome};
use crate::platform::authz::{Caller, Policy, Routes};
use crate::platform::clock::rfc3339;
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiJson, ClientInfo};
use crate::platform::ids::{ClinicId, UserId};
use crate::platform::keys::Purpose;
use crate::platform::sessions::{self, Stage};
use crate::platform::state::AppState;
use crate::{domains::identity::mfa, domains::identity::passwords};

pub fn routes() -> Routes {
    Routes::new("auth")
        .add(
            Method::POST,
            "/api/v1/auth/login",
            Policy::PUBLIC,
            "Sign in with clinic, username and password",
            login,
        )
        .body::<LoginRequest>()
        .add(
            Method::POST,
            "/api/v1/auth/mfa/verify",
            Policy::PENDING_MFA,
            "Complete sign-in with a TOTP or recovery code",
            verify_mfa,
        )
        .body::<MfaVerifyRequest>()
        .add(
            Method::POST,
            "/api/v1/auth/mfa/enroll",
            Policy::PENDING_MFA,
            "Start TOTP enrollment: returns the secret and otpauth URI",
            enroll_start,
        )
        .add(
            Method::POST,
            "/api/v1/auth/mfa/enroll/confirm",
            Policy::PENDING_MFA,
            "Confirm enrollment with a first code: returns recovery codes",
            enroll_confirm,
        )
        .body::<CodeRequest>()
        .add(
            Method::POST,
            "/api/v1/auth/step-up",
            Policy::AUTHENTICATED,
            "Re-check MFA for sensitive actions",
            step_up,
        )
        .body::<CodeRequest>()
        .add(
            Method::POST,
            "/api/v1/auth/logout",
            Policy::PENDING_MFA,
            "Sign out (revoke this session)",
            logout,
        )
        .add(
            Method::GET,
            "/api/v1/auth/session",
            Policy::PENDING_MFA,
            "The current session: user, role, stage, MFA state",
            session_info,
        )
        .add(
            Method::POST,
            "/api/v1/auth/password",
            Policy::PASSWORD_CHANGE,
            "Change password (revokes every session of the user; the one route open to a session that must change its password)",
            change_password,
        )
        .body::<PasswordChange>()
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The practice's short name (slug).
    pub clinic: String,
    pub username: String,
    pub password: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct LoginResponse {
    /// `mfa_pending`: send a code to /auth/mfa/verify; `enroll_only`: enroll first; `full`: done.
    pub stage: Stage,
    pub user_id: String,
    pub role: String,
    pub display_name: String,
    /// Someone else set the password: once signed in, change it before anything else.
    pub must_change_password: bool,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaVerifyRequest {
    pub code: Option<String>,
    pub recovery_code: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub code: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized(
        ErrorCode::InvalidCredentials,
        "the clinic, username or password is wrong",
    )
}

/// An answer that sets (or clears) the session cookie.
type WithCookie<R> = (AppendHeaders<Vec<(HeaderName, HeaderValue)>>, R);

fn with_cookie<R: IntoResponse>(body: R, cookie_value: &str, max_age: i64) -> WithCookie<R> {
    let cookie = HeaderValue::from_str(&sessions::set_cookie(cookie_value, max_age))
        .ok()
        .map(|v| (header::SET_COOKIE, v));
    (AppendHeaders(cookie.into_iter().collect()), body)
}

fn event_for(user: &UserRow, client: &ClientInfo, action: Action) -> AuditEvent {
    let mut e = AuditEvent::new(
        ClinicId::from_trusted(user.clinic_id.clone()),
        action,
        "user",
    );
    e.actor_id = Some(user.id.clone());
    e.actor_role = Some(user.role.clone());
    e.resource_id = Some(user.id.clone());
    e.ip = client.ip.clone();
    e.user_agent = client.user_agent.clone();
    e
}

/// The answer for a locked or backing-off account (or name with no account), without touching
/// the password.
fn locked_answer(state: &AppState, failures: Failures, now: i64) -> Option<ApiError> {
    let until = failures.locked_until.filter(|t| *t > now)?;
    let wait = ((until - now) / 1000).max(1) as u64;
    Some(if failures.count >= state.config.login.lock_after {
        ApiError::new(
            StatusCode::LOCKED,
            ErrorCode::AccountLocked,
            format!("the account is locked after repeated failed sign-ins until {}; an administrator can unlock it sooner", rfc3339(until)),
        )
        .with_retry_after(wait)
    } else {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LoginBackoff,
            format!("too many failed attempts; wait {wait} s before trying again"),
        )
        .with_retry_after(wait)
    })
}

fn failures_of(user: &UserRow) -> Failures {
    Failures {
        count: user.failed_logins,
        locked_until: user.locked_until,
    }
}

/// Counts a failed password or code: backoff after `backoff_after`, lock after `lock_after`.
/// Returns the error to answer with; the caller commits `tx`.
async fn count_failure(
    tx: &mut TenantTx,
    state: &AppState,
    user: &UserRow,
    client: &ClientInfo,
    action: Action,
) -> ApiResult<ApiError> {
    let now = state.clock.now_ms();
    let cfg = &state.config.login;
    // Counted in the row, not from what this request read: concurrent failures each count (on
    // PostgreSQL the update waits for the other's commit and adds to its count).
    let failures: i64 = sqlx::query_scalar(
        "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = $1 RETURNING failed_logins",
    )
    .bind(&user.id)
    .fetch_one(&mut **tx)
    .await?;
    let locked_until = throttle::lock_until(cfg, failures, now);
    sqlx::query("UPDATE users SET locked_until = $1 WHERE id = $2")
        .bind(locked_until)
        .bind(&user.id)
        .execute(&mut **tx)
        .await?;
    tx.audit(
        event_for(user, client, action)
            .outcome(Outcome::Failure)
            .detail(format!("failure {failures}")),
    )
    .await?;
    if failures == cfg.lock_after {
        tx.audit(event_for(user, client, Action::Lockout).outcome(Outcome::Denied))
            .await?;
    }
    let after = Failures {
        count: failures,
        locked_until,
    };
    Ok(match locked_answer(state, after, now) {
        Some(lock) if failures >= cfg.lock_after => lock,
        _ if action == Action::LoginFailed => invalid_credentials(),
        _ => ApiError::unauthorized(ErrorCode::InvalidCode, "that code is not valid"),
    })
}

/// A sign-in for a name that matches no account (or a clinic that does not exist): the same
/// answers on the same schedule as a real account's — invalid credentials, then backoff, then a
/// lock, with the password checked (against a dummy hash) exactly when a real one's would be.
/// Returns the error to answer with.
async fn unknown_name(
    state: &AppState,
    clinic: Option<&ClinicId>,
    client: &ClientInfo,
    account: &(String, String),
    password: String,
    now: i64,
) -> ApiResult<ApiError> {
    let throttle = state.get::<SignInThrottle>();
    let cfg = &state.config.login;
    let (answer, detail) = match locked_answer(state, throttle.unknown_failures(account), now) {
        Some(lock) => (lock, "unknown username; locked"),
        None => {
            passwords::check(None, password, state.config.login.check_wait()).await?;
            let after = throttle.unknown_failed(account, cfg, now);
            match locked_answer(state, after, now) {
                Some(lock) if after.count >= cfg.lock_after => (lock, "unknown username"),
                _ => (invalid_credentials(), "unknown username"),
            }
        }
    };
    if let Some(clinic) = clinic {
        let mut tx = state.tx(clinic).await?;
        let mut e = AuditEvent::new(clinic.clone(), Action::LoginFailed, "user")
            .outcome(Outcome::Failure)
            .detail(detail);
        e.ip = client.ip.clone();
        e.user_agent = client.user_agent.clone();
        tx.audit(e).await?;
        tx.commit().await?;
    }
    Ok(answer)
}

async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<WithCookie<Json<LoginResponse>>> {
    let now = state.clock.now_ms();
    // Throttled before any database or argon2 work, by address and by name, whether or not the
    // name is an account's.
    let account = throttle::account_key(&req.clinic, &req.username);
    state
        .get::<SignInThrottle>()
        .admit(client.ip.as_deref(), &account)?;
    let wait = state.config.login.check_wait();
    let Some(clinic) = state.db.clinic_id_by_slug(req.clinic.trim()).await? else {
        return Err(unknown_name(&state, None, &client, &account, req.password, now).await?);
    };
    // The user is read in a short transaction and the password checked after it ends: no write
    // lock (SQLite) or pool connection (PostgreSQL) is held while argon2 runs. Before, a flood of
    // bad sign-ins held SQLite's one writer for every check in turn, stalled every tenant's
    // requests for seconds and answered 500 when the busy timeout ran out.
    let mut tx = state.tx(&clinic).await?;
    let found = users::by_username(&mut tx, &clinic, req.username.trim()).await?;
    tx.commit().await?;
    let Some(user) = found else {
        return Err(
            unknown_name(&state, Some(&clinic), &client, &account, req.password, now).await?,
        );
    };
    if let Some(lock) = locked_answer(&state, failures_of(&user), now) {
        let mut tx = state.tx(&clinic).await?;
        tx.audit(
            event_for(&user, &client, Action::LoginFailed)
                .outcome(Outcome::Denied)
                .detail("locked"),
        )
        .await?;
        return tx.fail(lock).await;
    }
    let checked = user.password_hash.clone();
    let ok = passwords::check(Some(checked.clone()), req.password.clone(), wait).await?;
    let mut tx = state.tx(&clinic).await?;
    // Read again in the writing transaction: a concurrent failure may have locked the account,
    // or its password or state changed while the check ran.
    let Some(user) = users::by_id(&mut tx, &clinic, &user.user_id()).await? else {
        return tx.fail(invalid_credentials()).await;
    };
    if !ok || user.password_hash != checked {
        let err = count_failure(&mut tx, &state, &user, &client, Action::LoginFailed).await?;
        return tx.fail(err).await;
    }
    if let Some(lock) = locked_answer(&state, failures_of(&user), now) {
        tx.audit(
            event_for(&user, &client, Action::LoginFailed)
                .outcome(Outcome::Denied)
                .detail("locked"),
        )
        .await?;
        return tx.fail(lock).await;
    }
    if user.disabled_at.is_some() {
        // The same answer as a wrong password: a disabled account is not confirmed to whoever
        // holds its password.
        tx.audit(
            event_for(&user, &client, Action::LoginFailed)
                .outcome(Outcome::Denied)
                .detail("disabled"),
        )
        .await?;
        return tx.fail(invalid_credentials()).await;
    }
    let role = user.role();
    let stage = if user.mfa_enrolled_at.is_some() {
        Stage::MfaPending
    } else if role.requires_mfa() {
        Stage::EnrollOnly
    } else {
        Stage::Full
    };
    sqlx::query(
        "UPDATE users SET failed_logins = 0, locked_until = NULL, last_login_at = $1 WHERE id = $2",
    )
    .bind(now)
    .bind(&user.id)
    .execute(&mut *tx)
    .await?;
    let session =
        sessions::create(&mut tx, &state, &clinic, &user.user_id(), stage, &client).await?;
    let mut event = event_for(&user, &client, Action::Login).detail(stage.as_str());
    event.session_id = Some(session.id.to_string());
    tx.audit(event).await?;
    tx.commit().await?;
    let body = Json(LoginResponse {
        stage,
        user_id: user.id.clone(),
        role: user.role.clone(),
        display_name: user.display_name.clone(),
        must_change_password: user.must_change_password != 0,
    });
    Ok(with_cookie(
        body,
        &session.cookie_value,
        state.config.sessions.absolute_lifetime_secs,
    ))
}

fn mfa_secret(state: &AppState, user: &UserRow, sealed: &str) -> ApiResult<Vec<u8>> {
    state
        .keys
        .open(Purpose::MfaSecret, user.id.as_bytes(), sealed)
        .map_err(|_| {
            tracing::error!("stored mfa secret does not open with the key ring");
            ApiError::internal()
        })
}

async fn load_self(tx: &mut TenantTx, caller: &Caller) -> ApiResult<UserRow> {
    users::by_id(tx, &caller.clinic_id, &caller.user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized(ErrorCode::SessionExpired, "sign in again"))
}

/// Checks a TOTP code for `user`, recording the step (replay protection) or counting a failure.
async fn check_code(
    tx: &mut TenantTx,
    state: &AppState,
    user: &UserRow,
    caller: &Caller,
    code: &str,
) -> ApiResult<Result<(), ApiError>> {
    let now = state.clock.now_ms();
    let Some(sealed) = &user.mfa_secret else {
        return Ok(Err(ApiError::conflict(
            ErrorCode::MfaNotEnrolled,
            "enroll an authenticator app first",
        )));
    };
    let secret = mfa_secret(state, user, sealed)?;
    let checked = match mfa::check(&secret, code, now, user.totp_last_step) {
        // The step is taken only if no one took it (or a later one) since this request read the
        // row: the same code sent twice at once passes once.
        Ok(step) => {
            let taken = sqlx::query(
                "UPDATE users SET totp_last_step = $1, failed_logins = 0, locked_until = NULL \
                 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
            )
            .bind(step)
            .bind(&user.id)
            .execute(&mut **tx)
            .await?;
            if taken.rows_affected() == 1 {
                Ok(step)
            } else {
                Err(mfa::CodeError::Replayed)
            }
        }
        Err(kind) => Err(kind),
    };
    match checked {
        Ok(_) => Ok(Ok(())),
        Err(kind) => {
            let mut err = count_failure(tx, state, user, &caller.client, Action::MfaFailed).await?;
            if kind == mfa::CodeError::Replayed && err.code == ErrorCode::InvalidCode {
                err = ApiError::unauthorized(
                    ErrorCode::CodeReplayed,
                    "that code was already used; wait for the next one",
                );
            }
            Ok(Err(err))
        }
    }
}

async fn verify_mfa(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<MfaVerifyRequest>,
) -> ApiResult<WithCookie<Json<Verified>>> {
    let now = state.clock.now_ms();
    if caller.stage == Stage::EnrollOnly {
        return Err(ApiError::conflict(
            ErrorCode::MfaNotEnrolled,
            "enroll an authenticator app first",
        ));
    }
    // A recovery code is hashed (argon2, slow) before the transaction opens.
    let recovery = match &req.recovery_code {
        Some(rc) => {
            let (user_id, rc) = (caller.user_id.to_string(), rc.clone());
            Some(
                passwords::off_thread(state.config.login.check_wait(), move || {
                    mfa::recovery_hash(&user_id, &rc)
                })
                .await?,
            )
        }
        None => None,
    };
    let mut tx = state.tx(&caller.clinic_id).await?;
    let user = load_self(&mut tx, &caller).await?;
    if let Some(lock) = locked_answer(&state, failures_of(&user), now) {
        return Err(lock);
    }
    let outcome = match (&req.code, &recovery) {
        (Some(code), None) => check_code(&mut tx, &state, &user, &caller, code).await?,
        (None, Some(rc_hash)) => {
            let used = sqlx::query("UPDATE mfa_recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL")
                .bind(now)
                .bind(&user.id)
                .bind(rc_hash)
                .execute(&mut *tx)
                .await?;
            if used.rows_affected() == 1 {
                tx.audit(
                    caller
                        .event(Action::RecoveryCodeUsed, "user")
                        .resource(&user.id),
                )
                .await?;
                Ok(())
            } else {
                Err(
                    count_failure(&mut tx, &state, &user, &caller.client, Action::MfaFailed)
                        .await?,
                )
            }
        }
        _ => {
            return Err(ApiError::unprocessable(
                ErrorCode::InvalidBody,
                "send exactly one of code or recovery_code",
            ));
        }
    };
    if let Err(e) = outcome {
        return tx.fail(e).await;
    }
    let cookie = sessions::complete_mfa(&mut tx, &state, &caller, now).await?;
    tx.audit(caller.event(Action::MfaVerify, "user").resource(&user.id))
        .await?;
    tx.commit().await?;
    Ok(with_cookie(
        Json(Verified { stage: Stage::Full }),
        &cookie,
        state.config.sessions.absolute_lifetime_secs,
    ))
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Verified {
    /// Always `full`: the session may now do what its role allows.
    pub stage: Stage,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct SteppedUp {
    /// Until when sensitive actions are allowed without another check (RFC 3339).
    pub step_up_until: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct PasswordChanged {
    pub changed: bool,
    /// Every session of the user was revoked, this one included.
    pub signed_out: bool,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Enrollment {
    /// Base32 secret for manual entry.
    pub secret: String,
    pub otpauth_uri: String,
}

async fn enroll_start(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Enrollment>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let user = load_self(&mut tx, &caller).await?;
    if user.mfa_enrolled_at.is_some() {
        return Err(ApiError::conflict(
            ErrorCode::MfaAlreadyEnrolled,
            "MFA is already enrolled; an administrator can reset it",
        ));
    }
    let mut secret = [0u8; mfa::SECRET_BYTES];
    state.keys.random(&mut secret);
    let sealed = state
        .keys
        .seal(Purpose::MfaSecret, user.id.as_bytes(), &secret);
    sqlx::query("UPDATE users SET mfa_pending_secret = $1 WHERE id = $2")
        .bind(sealed)
        .bind(&user.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(Enrollment {
        secret: mfa::base32(&secret),
        otpauth_uri: mfa::otpauth_uri("Clinic", &user.username, &secret),
    }))
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct RecoveryCodes {
    /// Shown once; each works once in place of a code.
    pub recovery_codes: Vec<String>,
}

async fn enroll_confirm(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CodeRequest>,
) -> ApiResult<WithCookie<Json<RecoveryCodes>>> {
    let now = state.clock.now_ms();
    // The new recovery codes are hashed (argon2, slow) before the transaction opens.
    let codes = mfa::new_recovery_codes(|b| state.keys.random(b));
    let hashed = {
        let (user_id, codes) = (caller.user_id.to_string(), codes.clone());
        passwords::off_thread(state.config.login.check_wait(), move || {
            codes
                .iter()
                .map(|c| mfa::recovery_hash(&user_id, c))
                .collect::<Vec<_>>()
        })
        .await?
    };
    let mut tx = state.tx(&caller.clinic_id).await?;
    let user = load_self(&mut tx, &caller).await?;
    if user.mfa_enrolled_at.is_some() {
        return Err(ApiError::conflict(
            ErrorCode::MfaAlreadyEnrolled,
            "MFA is already enrolled",
        ));
    }
    let Some(pending) = &user.mfa_pending_secret else {
        return Err(ApiError::conflict(
            ErrorCode::EnrollmentNotStarted,
            "start enrollment first: POST /api/v1/auth/mfa/enroll",
        ));
    };
    let secret = mfa_secret(&state, &user, pending)?;
    let step = match mfa::check(&secret, &req.code, now, None) {
        Ok(step) => step,
        Err(_) => {
            let err =
                count_failure(&mut tx, &state, &user, &caller.client, Action::MfaFailed).await?;
            return tx.fail(err).await;
        }
    };
    sqlx::query(
        "UPDATE users SET mfa_secret = mfa_pending_secret, mfa_pending_secret = NULL, mfa_enrolled_at = $1, totp_last_step = $2 WHERE id = $3",
    )
    .bind(now)
    .bind(step)
    .bind(&user.id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(&user.id)
        .execute(&mut *tx)
        .await?;
    for hash in &hashed {
        sqlx::query("INSERT INTO mfa_recovery_codes (id, clinic_id, user_id, code_hash) VALUES ($1, $2, $3, $4)")
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(caller.clinic_id.as_str())
            .bind(&user.id)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
    }
    let cookie = sessions::complete_mfa(&mut tx, &state, &caller, now).await?;
    tx.audit(caller.event(Action::MfaEnroll, "user").resource(&user.id))
        .await?;
    tx.commit().await?;
    Ok(with_cookie(
        Json(RecoveryCodes {
            recovery_codes: codes,
        }),
        &cookie,
        state.config.sessions.absolute_lifetime_secs,
    ))
}

async fn step_up(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CodeRequest>,
) -> ApiResult<Json<SteppedUp>> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let user = load_self(&mut tx, &caller).await?;
    if let Some(lock) = locked_answer(&state, failures_of(&user), now) {
        return Err(lock);
    }
    if let Err(e) = check_code(&mut tx, &state, &user, &caller, &req.code).await? {
        return tx.fail(e).await;
    }
    sessions::mark_mfa(&mut tx, &caller.session_id, now).await?;
    tx.audit(caller.event(Action::StepUp, "user").resource(&user.id))
        .await?;
    tx.commit().await?;
    let until = now + state.config.sessions.step_up_window_secs * 1000;
    Ok(Json(SteppedUp {
        step_up_until: rfc3339(until),
    }))
}

async fn logout(State(state): State<AppState>, caller: Caller) -> ApiResult<WithCookie<NoContent>> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    sessions::revoke(&mut tx, &caller.session_id, now).await?;
    tx.audit(
        caller
            .event(Action::Logout, "user")
            .resource(&caller.user_id),
    )
    .await?;
    tx.commit().await?;
    Ok(with_cookie(NoContent, "", 0))
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct SessionInfo {
    pub user_id: String,
    pub clinic_id: String,
    pub username: String,
    pub display_name: String,
    pub role: String,
    pub stage: Stage,
    pub mfa_enrolled: bool,
    pub locations: Vec<String>,
    pub step_up_fresh: bool,
    /// The session ends after this long with no request counted as activity (a page's
    /// background refreshes are not); pages warn before it and sign out.
    pub idle_timeout_secs: i64,
    /// How much the server's idle clock may lag a page's: pages end their count this much early.
    pub idle_resolution_secs: i64,
    /// Only the password change is open to this session until the password is changed.
    pub must_change_password: bool,
}

async fn session_info(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SessionInfo>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let user = load_self(&mut tx, &caller).await?;
    tx.commit().await?;
    let now = state.clock.now_ms();
    Ok(Json(SessionInfo {
        user_id: user.id.clone(),
        clinic_id: caller.clinic_id.to_string(),
        username: user.username,
        display_name: user.display_name,
        role: user.role,
        stage: caller.stage,
        mfa_enrolled: user.mfa_enrolled_at.is_some(),
        locations: caller.locations.iter().map(|l| l.to_string()).collect(),
        must_change_password: caller.must_change_password,
        step_up_fresh: caller
            .mfa_at
            .is_some_and(|t| now - t <= state.config.sessions.step_up_window_secs * 1000),
        idle_timeout_secs: state.config.sessions.idle_timeout_secs,
        idle_resolution_secs: (sessions::last_seen_step_ms(
            state.config.sessions.idle_timeout_secs,
        ) + 999)
            / 1000,
    }))
}

async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    _headers: HeaderMap,
    ApiJson(req): ApiJson<PasswordChange>,
) -> ApiResult<WithCookie<Json<PasswordChanged>>> {
    let now = state.clock.now_ms();
    // As at sign-in: read, check the password with no transaction open, then write.
    let mut tx = state.tx(&caller.clinic_id).await?;
    let user = load_self(&mut tx, &caller).await?;
    tx.commit().await?;
    let checked = user.password_hash.clone();
    let wait = state.config.login.check_wait();
    let ok = passwords::check(Some(checked.clone()), req.current_password.clone(), wait).await?;
    // The new password is hashed before the writing transaction opens, like the check.
    let new_hash = if ok {
        Some(passwords::NewHash::of(&req.new_password, wait).await?)
    } else {
        None
    };
    let mut tx = state.tx(&caller.clinic_id).await?;
    let user = load_self(&mut tx, &caller).await?;
    let Some(new_hash) = new_hash.filter(|_| user.password_hash == checked) else {
        let err =
            count_failure(&mut tx, &state, &user, &caller.client, Action::LoginFailed).await?;
        return tx.fail(err).await;
    };
    users::set_password(
        &mut tx,
        &UserId::from_trusted(user.id.clone()),
        &new_hash,
        now,
    )
    .await?;
    tx.audit(
        caller
            .event(Action::PasswordChange, "user")
            .resource(&user.id),
    )
    .await?;
    tx.commit().await?;
    Ok(with_cookie(
        Json(PasswordChanged {
            changed: true,
            signed_out: true,
        }),
        "",
        0,
    ))
}
