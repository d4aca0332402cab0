//! Operational reporting for owners and admins: counts only, never PHI.

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use serde::Serialize;

use crate::platform::authz::{Caller, Permission, Policy, Routes};
use crate::platform::error::ApiResult;
use crate::platform::state::AppState;

#[derive(Serialize, schemars::JsonSchema)]
pub struct OperationsReport {
    pub users_by_role: Vec<(String, i64)>,
    pub staff_without_mfa: i64,
    pub patients_by_location: Vec<(String, i64)>,
    pub active_sessions: i64,
}

pub fn routes() -> Routes {
    Routes::new("reports").add(
        Method::GET,
        "/api/v1/reports/operations",
        Policy::perm(Permission::ReportsRead),
        "Operational counts (no PHI)",
        operations,
    )
}

async fn operations(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<OperationsReport>> {
    let now = state.clock.now_ms();
    let idle = state.config.sessions.idle_timeout_secs * 1000;
    let clinic = caller.clinic_id.as_str();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let users_by_role = sqlx::query_as("SELECT role, COUNT(*) FROM users WHERE clinic_id = $1 AND disabled_at IS NULL GROUP BY role ORDER BY role")
        .bind(clinic)
        .fetch_all(&mut *tx)
        .await?;
    let (staff_without_mfa,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM users WHERE clinic_id = $1 AND disabled_at IS NULL AND mfa_enrolled_at IS NULL AND role NOT IN ('patient')",
    )
    .bind(clinic)
    .fetch_one(&mut *tx)
    .await?;
    let patients_by_location = sqlx::query_as(
        "SELECT l.name, COUNT(p.id) FROM locations l LEFT JOIN patients p ON p.location_id = l.id WHERE l.clinic_id = $1 GROUP BY l.name ORDER BY l.name",
    )
    .bind(clinic)
    .fetch_all(&mut *tx)
    .await?;
    let (active_sessions,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM sessions WHERE clinic_id = $1 AND revoked_at IS NULL AND expires_at > $2 AND last_seen_at > $3",
    )
    .bind(clinic)
    .bind(now)
    .bind(now - idle)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(OperationsReport {
        users_by_role,
        staff_without_mfa,
        patients_by_location,
        active_sessions,
    }))
}
