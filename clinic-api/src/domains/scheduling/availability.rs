//! Provider availability: weekly template blocks per location (each with the modality it takes),
//! and exceptions (time off anywhere, extra hours at a location).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::location::{location_tz, parse_instant, provider_at, provider_known, reach_at};
use super::time::{self, Block, Exception, Ms};
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiJson, ApiPath, ApiQuery};
use crate::platform::ids::{ClinicId, LocationId, RecordId, UserId};
use crate::platform::state::AppState;

pub(super) async fn load_templates(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    provider: &str,
    location: &LocationId,
) -> ApiResult<Vec<Block>> {
    let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "SELECT weekday, start_min, end_min, modality FROM availability \
         WHERE clinic_id = $1 AND provider_id = $2 AND location_id = $3",
    )
    .bind(clinic.as_str())
    .bind(provider)
    .bind(location.as_str())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(weekday, start_min, end_min, modality)| Block {
            weekday,
            start_min,
            end_min,
            modality,
        })
        .collect())
}

pub(super) async fn load_exceptions(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    provider: &str,
    location: &LocationId,
    from: Ms,
    to: Ms,
) -> ApiResult<Vec<Exception>> {
    // Time off anywhere applies everywhere; extra hours only at their location.
    let rows: Vec<(String, Option<String>, Ms, Ms, String)> = sqlx::query_as(
        "SELECT kind, location_id, starts_at, ends_at, modality FROM availability_exceptions \
         WHERE clinic_id = $1 AND provider_id = $2 AND starts_at < $4 AND ends_at > $3",
    )
    .bind(clinic.as_str())
    .bind(provider)
    .bind(from)
    .bind(to)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(kind, loc, ..)| kind == "off" || loc.as_deref() == Some(location.as_str()))
        .map(|(kind, _, starts_at, ends_at, modality)| Exception {
            off: kind == "off",
            starts_at,
            ends_at,
            modality,
        })
        .collect())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityQuery {
    pub provider_id: UserId,
    pub location_id: LocationId,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBlock {
    pub provider_id: UserId,
    pub location_id: LocationId,
    /// ISO weekday: 1 = Monday … 7 = Sunday.
    pub weekday: i64,
    /// Local `HH:MM`.
    pub start: String,
    /// Local `HH:MM`.
    pub end: String,
    /// `any`, `in_person` or `telemedicine` (e.g. telemedicine only in the afternoon).
    #[serde(default = "any")]
    pub modality: String,
}

fn any() -> String {
    "any".into()
}

#[derive(Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct BlockOut {
    pub id: String,
    pub weekday: i64,
    pub start: String,
    pub end: String,
    pub modality: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct ExceptionOut {
    pub id: String,
    pub kind: String,
    pub location_id: Option<String>,
    pub modality: String,
    pub start: String,
    pub end: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct AvailabilityOut {
    pub blocks: Vec<BlockOut>,
    pub exceptions: Vec<ExceptionOut>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateException {
    pub provider_id: UserId,
    /// Needed for extra hours; time off without a location applies everywhere.
    pub location_id: Option<LocationId>,
    /// `off` (time off) or `extra` (extra hours).
    pub kind: String,
    #[serde(default = "any")]
    pub modality: String,
    /// Local `YYYY-MM-DDTHH:MM` at the location (or RFC 3339 with an offset).
    pub start: String,
    pub end: String,
}

fn check_modality(m: &str) -> ApiResult<()> {
    if ["any", "in_person", "telemedicine"].contains(&m) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "modality must be any, in_person or telemedicine",
        ))
    }
}

pub(super) async fn get_availability(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AvailabilityQuery>,
) -> ApiResult<Json<AvailabilityOut>> {
    let (mut tx, _) = reach_at(
        &state,
        &caller,
        Permission::ScheduleRead,
        "availability",
        &q.location_id,
    )
    .await?;
    let tz = location_tz(&mut tx, &caller.clinic_id, &q.location_id).await?;
    let rows: Vec<(String, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT id, weekday, start_min, end_min, modality FROM availability \
         WHERE clinic_id = $1 AND provider_id = $2 AND location_id = $3 ORDER BY weekday, start_min",
    )
    .bind(caller.clinic_id.as_str())
    .bind(q.provider_id.as_str())
    .bind(q.location_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let ex: Vec<(String, String, Option<String>, String, Ms, Ms)> = sqlx::query_as(
        "SELECT id, kind, location_id, modality, starts_at, ends_at FROM availability_exceptions \
         WHERE clinic_id = $1 AND provider_id = $2 AND ends_at > $3 AND (location_id IS NULL OR location_id = $4) ORDER BY starts_at",
    )
    .bind(caller.clinic_id.as_str())
    .bind(q.provider_id.as_str())
    .bind(state.clock.now_ms())
    .bind(q.location_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(AvailabilityOut {
        blocks: rows
            .into_iter()
            .map(|(id, weekday, s, e, modality)| BlockOut {
                id,
                weekday,
                start: time::fmt_hhmm(s),
                end: time::fmt_hhmm(e),
                modality,
            })
            .collect(),
        exceptions: ex
            .into_iter()
            .map(|(id, kind, location_id, modality, s, e)| ExceptionOut {
                id,
                kind,
                location_id,
                modality,
                start: time::local_rfc3339(tz, s),
                end: time::local_rfc3339(tz, e),
            })
            .collect(),
    }))
}

/// Adds a template block (also used by the demo seed).
pub async fn insert_block(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    b: &CreateBlock,
    now: Ms,
) -> ApiResult<String> {
    check_modality(&b.modality)?;
    let (s, e) = (time::parse_hhmm(&b.start), time::parse_hhmm(&b.end));
    let (Some(s), Some(e), 1..=7) = (s, e, b.weekday) else {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "weekday must be 1-7 and start, end local HH:MM",
        ));
    };
    if s >= e {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "start must be before end",
        ));
    }
    provider_at(tx, clinic, b.provider_id.as_str(), &b.location_id).await?;
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO availability (id, clinic_id, provider_id, location_id, weekday, start_min, end_min, modality, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(clinic.as_str())
    .bind(b.provider_id.as_str())
    .bind(b.location_id.as_str())
    .bind(b.weekday)
    .bind(s)
    .bind(e)
    .bind(&b.modality)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

pub(super) async fn create_block(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBlock>,
) -> ApiResult<(StatusCode, Json<BlockOut>)> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let id = insert_block(&mut tx, &caller.clinic_id, &body, now).await?;
    tx.audit(caller.event(Action::Create, "availability").resource(&id))
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(BlockOut {
            id,
            weekday: body.weekday,
            start: body.start,
            end: body.end,
            modality: body.modality,
        }),
    ))
}

#[derive(Deserialize)]
pub(super) struct BlockPath {
    id: RecordId,
}

pub(super) async fn delete_block(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<BlockPath>,
) -> ApiResult<StatusCode> {
    let id = p.id.to_string();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let done = sqlx::query("DELETE FROM availability WHERE id = $1 AND clinic_id = $2")
        .bind(&id)
        .bind(caller.clinic_id.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("availability block"));
    }
    tx.audit(caller.event(Action::Delete, "availability").resource(&id))
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn create_exception(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateException>,
) -> ApiResult<(StatusCode, Json<ExceptionOut>)> {
    check_modality(&body.modality)?;
    if body.kind != "off" && body.kind != "extra" {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "kind must be off or extra",
        ));
    }
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let tz = match &body.location_id {
        Some(l) => {
            provider_at(&mut tx, &caller.clinic_id, body.provider_id.as_str(), l).await?;
            Some(location_tz(&mut tx, &caller.clinic_id, l).await?)
        }
        None if body.kind == "extra" => {
            return Err(ApiError::unprocessable(
                ErrorCode::InvalidBody,
                "extra hours need a location_id",
            ));
        }
        None => {
            provider_known(&mut tx, &caller.clinic_id, body.provider_id.as_str()).await?;
            None
        }
    };
    let (s, e) = (
        parse_instant(&body.start, tz)?,
        parse_instant(&body.end, tz)?,
    );
    if s >= e || e - s > 366 * 86_400_000 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "start must be before end, within a year",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO availability_exceptions (id, clinic_id, provider_id, location_id, kind, modality, starts_at, ends_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(caller.clinic_id.as_str())
    .bind(body.provider_id.as_str())
    .bind(body.location_id.as_ref().map(|l| l.to_string()))
    .bind(&body.kind)
    .bind(&body.modality)
    .bind(s)
    .bind(e)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.audit(
        caller
            .event(Action::Create, "availability_exception")
            .resource(&id),
    )
    .await?;
    tx.commit().await?;
    let tz = tz.unwrap_or(chrono_tz::UTC);
    Ok((
        StatusCode::CREATED,
        Json(ExceptionOut {
            id,
            kind: body.kind,
            location_id: body.location_id.map(|l| l.to_string()),
            modality: body.modality,
            start: time::local_rfc3339(tz, s),
            end: time::local_rfc3339(tz, e),
        }),
    ))
}
