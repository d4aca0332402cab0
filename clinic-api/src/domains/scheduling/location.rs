//! A location as scheduling sees it: its time zone (and the instant a wall time there names), its
//! weekly opening hours (which bound in-person availability), its rooms and chairs (an in-person
//! type that needs one books a free one), and the providers who work there.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use super::time::{self, Ms};
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission, Role};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode, OnConstraint};
use crate::platform::http::{ApiJson, ApiPath, ApiQuery};
use crate::platform::ids::{ClinicId, LocationId};
use crate::platform::state::AppState;
use crate::platform::tx::{Reached, Target};

pub(super) async fn location_tz(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    location: &LocationId,
) -> ApiResult<Tz> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT time_zone FROM locations WHERE id = $1 AND clinic_id = $2")
            .bind(location.as_str())
            .bind(clinic.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    let (tz,) = row.ok_or_else(|| {
        ApiError::unprocessable(ErrorCode::UnknownLocation, "that location does not exist")
    })?;
    tz.parse().map_err(|_| ApiError::internal())
}

/// Opens the caller's transaction and proves their reach, with `perm`, to `kind` at a location
/// (a refusal is audited and committed by the reach).
pub(super) async fn reach_at(
    state: &AppState,
    caller: &Caller,
    perm: Permission,
    kind: &'static str,
    location: &LocationId,
) -> ApiResult<(TenantTx, Reached)> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = tx.reach(caller, perm, Target::at(kind, location)).await?;
    Ok((tx, reached))
}

/// The provider's display name, if they are an active provider assigned to `location`.
pub(super) async fn provider_at(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    provider: &str,
    location: &LocationId,
) -> ApiResult<String> {
    let row: Option<(String, String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT u.display_name, u.role, u.disabled_at, \
                (SELECT count(*) FROM user_locations ul WHERE ul.user_id = u.id AND ul.location_id = $3) AS assigned \
         FROM users u WHERE u.id = $1 AND u.clinic_id = $2",
    )
    .bind(provider)
    .bind(clinic.as_str())
    .bind(location.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some((name, role, None, assigned)) if role == Role::Provider.as_str() => {
            if assigned > 0 {
                Ok(name)
            } else {
                Err(ApiError::unprocessable(
                    ErrorCode::ProviderNotAtLocation,
                    "that provider does not work at this location",
                ))
            }
        }
        _ => Err(ApiError::unprocessable(
            ErrorCode::UnknownProvider,
            "that provider does not exist",
        )),
    }
}

/// Checks that `provider` is an active provider of the practice, at whatever location (an
/// exception that applies to all of a provider's locations).
pub(super) async fn provider_known(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    provider: &str,
) -> ApiResult<()> {
    let row: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT role, disabled_at FROM users WHERE id = $1 AND clinic_id = $2")
            .bind(provider)
            .bind(clinic.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    match row {
        Some((role, None)) if role == Role::Provider.as_str() => Ok(()),
        _ => Err(ApiError::unprocessable(
            ErrorCode::UnknownProvider,
            "that provider does not exist",
        )),
    }
}

/// Active providers assigned to a location.
pub(super) async fn providers_at(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    location: &LocationId,
) -> ApiResult<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT u.id, u.display_name FROM users u JOIN user_locations ul ON ul.user_id = u.id \
         WHERE u.clinic_id = $1 AND ul.location_id = $2 AND u.role = 'provider' AND u.disabled_at IS NULL \
         ORDER BY u.display_name, u.id",
    )
    .bind(clinic.as_str())
    .bind(location.as_str())
    .fetch_all(&mut **tx)
    .await?)
}

/// An instant from RFC 3339 (with offset), or from a local wall time in `tz`.
pub(super) fn parse_instant(s: &str, tz: Option<Tz>) -> ApiResult<Ms> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let local = time::parse_local(s).ok_or_else(|| {
        ApiError::unprocessable(
            ErrorCode::InvalidTime,
            "times are local YYYY-MM-DDTHH:MM, or RFC 3339 with an offset",
        )
    })?;
    let tz = tz.ok_or_else(|| {
        ApiError::unprocessable(
            ErrorCode::InvalidTime,
            "without a location, give RFC 3339 times with an offset",
        )
    })?;
    time::local_instant(tz, local).map_err(|e| match e {
        time::LocalTimeError::Nonexistent => ApiError::unprocessable(
            ErrorCode::NonexistentLocalTime,
            format!(
                "{s} does not exist in {tz}: the clocks skip that hour (daylight-saving change)"
            ),
        ),
        time::LocalTimeError::Ambiguous { earlier, later } => ApiError::unprocessable(
            ErrorCode::AmbiguousLocalTime,
            format!(
                "{s} happens twice in {tz} (daylight-saving change); send the time with its offset"
            ),
        )
        .with_extra(serde_json::json!({
            "candidates": [time::local_rfc3339(tz, earlier), time::local_rfc3339(tz, later)]
        })),
    })
}

pub(super) async fn load_hours(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    location: &LocationId,
) -> ApiResult<Vec<(i64, i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT weekday, opens_min, closes_min FROM location_hours WHERE clinic_id = $1 AND location_id = $2 \
         ORDER BY weekday, opens_min",
    )
    .bind(clinic.as_str())
    .bind(location.as_str())
    .fetch_all(&mut **tx)
    .await?)
}

#[derive(Deserialize)]
pub(super) struct IdPath {
    id: LocationId,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct HoursEntry {
    /// ISO weekday: 1 = Monday … 7 = Sunday.
    pub weekday: i64,
    /// Local `HH:MM`.
    pub opens: String,
    /// Local `HH:MM` (`24:00` for midnight).
    pub closes: String,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HoursBody {
    pub hours: Vec<HoursEntry>,
}

/// Weekday hours as `(weekday, opens_min, closes_min)`, checked.
fn parse_hours(hours: &[HoursEntry]) -> ApiResult<Vec<(i64, i64, i64)>> {
    if hours.len() > 50 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidHours,
            "at most 50 entries",
        ));
    }
    hours
        .iter()
        .map(|h| {
            let (o, c) = (time::parse_hhmm(&h.opens), time::parse_hhmm(&h.closes));
            match (h.weekday, o, c) {
                (1..=7, Some(o), Some(c)) if o < c => Ok((h.weekday, o, c)),
                _ => Err(ApiError::unprocessable(
                    ErrorCode::InvalidHours,
                    "each entry needs weekday 1-7 and opens < closes as HH:MM",
                )),
            }
        })
        .collect()
}

/// Monday to Friday, 08:00-17:00: what a new location starts with.
const DEFAULT_HOURS: [(i64, i64, i64); 5] = [
    (1, 480, 1020),
    (2, 480, 1020),
    (3, 480, 1020),
    (4, 480, 1020),
    (5, 480, 1020),
];

/// Gives a new location the default opening hours (tenancy calls this as it creates one).
pub(crate) async fn open_default_hours(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    location: &LocationId,
) -> sqlx::Result<()> {
    set_hours(tx, clinic, location, &DEFAULT_HOURS).await
}

async fn set_hours(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    location: &LocationId,
    hours: &[(i64, i64, i64)],
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM location_hours WHERE clinic_id = $1 AND location_id = $2")
        .bind(clinic.as_str())
        .bind(location.as_str())
        .execute(&mut **tx)
        .await?;
    for (weekday, opens, closes) in hours {
        sqlx::query(
            "INSERT INTO location_hours (id, clinic_id, location_id, weekday, opens_min, closes_min) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(clinic.as_str())
        .bind(location.as_str())
        .bind(weekday)
        .bind(opens)
        .bind(closes)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn hours_out(rows: Vec<(i64, i64, i64)>) -> HoursBody {
    HoursBody {
        hours: rows
            .into_iter()
            .map(|(weekday, o, c)| HoursEntry {
                weekday,
                opens: time::fmt_hhmm(o),
                closes: time::fmt_hhmm(c),
            })
            .collect(),
    }
}

pub(super) async fn get_hours(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<HoursBody>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    location_tz(&mut tx, &caller.clinic_id, &p.id)
        .await
        .map_err(|_| ApiError::not_found("location"))?;
    let rows = load_hours(&mut tx, &caller.clinic_id, &p.id).await?;
    tx.commit().await?;
    Ok(Json(hours_out(rows)))
}

pub(super) async fn put_hours(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
    ApiJson(body): ApiJson<HoursBody>,
) -> ApiResult<Json<HoursBody>> {
    let hours = parse_hours(&body.hours)?;
    let mut tx = state.tx(&caller.clinic_id).await?;
    location_tz(&mut tx, &caller.clinic_id, &p.id)
        .await
        .map_err(|_| ApiError::not_found("location"))?;
    set_hours(&mut tx, &caller.clinic_id, &p.id, &hours).await?;
    tx.audit(
        caller
            .event(Action::Modify, "location_hours")
            .resource(&p.id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(hours_out(hours)))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationQuery {
    pub location_id: LocationId,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    pub location_id: LocationId,
    /// For example "Room 2" or "Chair A".
    pub name: String,
}

#[derive(Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct RoomOut {
    pub id: String,
    pub location_id: String,
    pub name: String,
}

/// The ids of a location's rooms in use, in the order a free one is picked.
pub(super) async fn active_rooms(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    location: &LocationId,
) -> sqlx::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM rooms WHERE clinic_id = $1 AND location_id = $2 AND disabled_at IS NULL ORDER BY name, id",
    )
    .bind(clinic.as_str())
    .bind(location.as_str())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

pub(super) async fn list_rooms(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<LocationQuery>,
) -> ApiResult<Json<Vec<RoomOut>>> {
    let (mut tx, _) = reach_at(
        &state,
        &caller,
        Permission::ScheduleRead,
        "room",
        &q.location_id,
    )
    .await?;
    let rows: Vec<RoomOut> = sqlx::query_as(
        "SELECT id, location_id, name FROM rooms WHERE clinic_id = $1 AND location_id = $2 AND disabled_at IS NULL ORDER BY name",
    )
    .bind(caller.clinic_id.as_str())
    .bind(q.location_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(rows))
}

pub(super) async fn create_room(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRoom>,
) -> ApiResult<(StatusCode, Json<RoomOut>)> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "name must be 1 to 100 characters",
        ));
    }
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    location_tz(&mut tx, &caller.clinic_id, &body.location_id).await?;
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO rooms (id, clinic_id, location_id, name, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(caller.clinic_id.as_str())
        .bind(body.location_id.as_str())
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .on_unique(|| ApiError::conflict(ErrorCode::RoomExists, "that location has a room with this name"))?;
    tx.audit(caller.event(Action::Create, "room").resource(&id))
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(RoomOut {
            id,
            location_id: body.location_id.to_string(),
            name: name.to_string(),
        }),
    ))
}
