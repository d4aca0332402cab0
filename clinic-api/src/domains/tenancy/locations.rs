//! The practice's locations, each with an IANA time zone (scheduling computes local times in it).

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use serde::{Deserialize, Serialize};

use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission, Policy, Routes};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode, OnConstraint};
use crate::platform::http::ApiJson;
use crate::platform::ids::{ClinicId, LocationId};
use crate::platform::state::AppState;

#[derive(Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct LocationOut {
    pub id: String,
    pub name: String,
    pub time_zone: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLocation {
    pub name: String,
    /// IANA zone, e.g. America/New_York.
    pub time_zone: String,
}

pub fn routes() -> Routes {
    Routes::new("locations")
        .add(
            Method::GET,
            "/api/v1/locations",
            Policy::perm(Permission::LocationsRead),
            "List the practice's locations",
            list,
        )
        .add(
            Method::POST,
            "/api/v1/locations",
            Policy::perm(Permission::LocationsManage),
            "Add a location",
            create_route,
        )
        .body::<CreateLocation>()
}

/// Inserts a location after checking its name and time zone.
pub async fn create(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    name: &str,
    time_zone: &str,
    now: i64,
) -> ApiResult<LocationId> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "name must be 1 to 200 characters",
        ));
    }
    if time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidTimeZone,
            "time_zone must be an IANA zone such as America/New_York",
        ));
    }
    let id = LocationId::new();
    sqlx::query("INSERT INTO locations (id, clinic_id, name, time_zone, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(id.as_str())
        .bind(clinic.as_str())
        .bind(name)
        .bind(time_zone)
        .bind(now)
        .execute(&mut **tx)
        .await
        .on_unique(|| ApiError::conflict(ErrorCode::LocationExists, "a location with that name exists"))?;
    crate::domains::scheduling::open_default_hours(tx, clinic, &id).await?;
    Ok(id)
}

async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<LocationOut>>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let rows: Vec<LocationOut> = sqlx::query_as(
        "SELECT id, name, time_zone FROM locations WHERE clinic_id = $1 ORDER BY name",
    )
    .bind(caller.clinic_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(rows))
}

async fn create_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateLocation>,
) -> ApiResult<Json<LocationOut>> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let id = create(&mut tx, &caller.clinic_id, &body.name, &body.time_zone, now).await?;
    tx.audit(caller.event(Action::Create, "location").resource(&id))
        .await?;
    tx.commit().await?;
    Ok(Json(LocationOut {
        id: id.to_string(),
        name: body.name.trim().to_string(),
        time_zone: body.time_zone,
    }))
}
