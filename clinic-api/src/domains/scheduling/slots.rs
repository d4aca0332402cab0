//! Open slots: a provider's windows (templates, exceptions and, in person, opening hours) minus
//! busy time, and a free room where the type needs one.

use axum::Json;
use axum::extract::State;
use chrono::{Duration, NaiveDate};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::availability::{load_exceptions, load_templates};
use super::location::{active_rooms, load_hours, location_tz, provider_at, providers_at, reach_at};
use super::status;
use super::time::{self, Ms};
use super::types::{TypeRow, load_type};
use crate::platform::authz::{Caller, Permission};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::ApiQuery;
use crate::platform::ids::{ClinicId, LocationId, RecordId, UserId};
use crate::platform::state::AppState;

/// Longest range a slot search may cover.
const MAX_SEARCH_DAYS: i64 = 62;

/// Busy intervals of one provider (to each appointment's buffer end), anywhere.
async fn provider_busy(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    provider: &str,
    from: Ms,
    to: Ms,
    now: Ms,
) -> ApiResult<Vec<(Ms, Ms)>> {
    let sql = format!(
        "SELECT starts_at, busy_until FROM appointments WHERE clinic_id = $1 AND provider_id = $2 \
         AND starts_at < $4 AND busy_until > $3 AND {}",
        status::active_sql().replace("$NOW", "$5")
    );
    Ok(sqlx::query_as(&sql)
        .bind(clinic.as_str())
        .bind(provider)
        .bind(from)
        .bind(to)
        .bind(now)
        .fetch_all(&mut **tx)
        .await?)
}

/// Each active room of a location with its busy intervals.
async fn rooms_busy(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    location: &LocationId,
    from: Ms,
    to: Ms,
    now: Ms,
) -> ApiResult<Vec<(String, Vec<(Ms, Ms)>)>> {
    let rooms = active_rooms(tx, clinic, location).await?;
    let sql = format!(
        "SELECT room_id, starts_at, busy_until FROM appointments WHERE clinic_id = $1 AND location_id = $2 \
         AND room_id IS NOT NULL AND starts_at < $4 AND busy_until > $3 AND {}",
        status::active_sql().replace("$NOW", "$5")
    );
    let busy: Vec<(String, Ms, Ms)> = sqlx::query_as(&sql)
        .bind(clinic.as_str())
        .bind(location.as_str())
        .bind(from)
        .bind(to)
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rooms
        .into_iter()
        .map(|id| {
            let b = busy
                .iter()
                .filter(|(r, ..)| *r == id)
                .map(|(_, s, e)| (*s, *e))
                .collect();
            (id, b)
        })
        .collect())
}

/// A computed open slot.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub provider_id: String,
    pub provider_name: String,
    pub start: Ms,
    pub room_id: Option<String>,
}

/// Everything a slot search needs.
pub(super) struct Search<'a> {
    pub clinic: &'a ClinicId,
    pub location: &'a LocationId,
    pub tz: Tz,
    pub ty: &'a TypeRow,
    pub providers: Vec<(String, String)>,
    pub from: NaiveDate,
    pub days: i64,
    pub not_before: Ms,
    pub now: Ms,
    pub step: Ms,
}

/// A provider's windows for `ty` at a location over the search's dates.
async fn windows(tx: &mut TenantTx, s: &Search<'_>, provider: &str) -> ApiResult<Vec<(Ms, Ms)>> {
    let range = (
        time::resolve(s.tz, s.from, 0, false),
        time::resolve(s.tz, s.from + Duration::days(s.days), 0, false),
    );
    let templates = load_templates(tx, s.clinic, provider, s.location).await?;
    let exceptions = load_exceptions(tx, s.clinic, provider, s.location, range.0, range.1).await?;
    let hours = if s.ty.modality == "in_person" {
        Some(load_hours(tx, s.clinic, s.location).await?)
    } else {
        None
    };
    Ok(time::availability(
        s.tz,
        s.from,
        s.days,
        &templates,
        &exceptions,
        hours.as_deref(),
        &s.ty.modality,
    ))
}

pub(super) async fn find_slots(tx: &mut TenantTx, s: &Search<'_>) -> ApiResult<Vec<Slot>> {
    let range = (
        time::resolve(s.tz, s.from, 0, false),
        time::resolve(s.tz, s.from + Duration::days(s.days + 1), 0, false),
    );
    let rooms = if s.ty.needs_room == 1 {
        Some(rooms_busy(tx, s.clinic, s.location, range.0, range.1, s.now).await?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (provider, name) in &s.providers {
        let w = windows(tx, s, provider).await?;
        let busy = provider_busy(tx, s.clinic, provider, range.0, range.1, s.now).await?;
        let slots = time::open_slots(
            &w,
            &time::SlotRules {
                duration: s.ty.duration(),
                buffer: s.ty.buffer(),
                step: s.step,
                not_before: s.not_before,
                busy: &busy,
                rooms: rooms.as_deref(),
            },
        );
        out.extend(slots.into_iter().map(|(start, room_id)| Slot {
            provider_id: provider.clone(),
            provider_name: name.clone(),
            start,
            room_id,
        }));
    }
    out.sort_by(|a, b| (a.start, &a.provider_name).cmp(&(b.start, &b.provider_name)));
    Ok(out)
}

/// Whether `[start, end)` lies inside the provider's availability for `ty` at the location.
#[allow(clippy::too_many_arguments)]
pub(super) async fn within_availability(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    location: &LocationId,
    tz: Tz,
    ty: &TypeRow,
    provider: &str,
    start: Ms,
    end: Ms,
) -> ApiResult<bool> {
    let s = Search {
        clinic,
        location,
        tz,
        ty,
        providers: vec![],
        from: time::local_date(tz, start) - Duration::days(1),
        days: 3,
        not_before: 0,
        now: 0,
        step: 60_000,
    };
    let w = windows(tx, &s, provider).await?;
    Ok(w.iter().any(|&(a, b)| a <= start && end <= b))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotQuery {
    pub location_id: LocationId,
    pub type_id: RecordId,
    /// Only this provider's slots.
    pub provider_id: Option<UserId>,
    /// First local date, `YYYY-MM-DD` (default: today at the location).
    pub from: Option<String>,
    /// Number of days (1 to 62, default 7).
    pub days: Option<i64>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct SlotOut {
    pub provider_id: String,
    pub provider_name: String,
    pub location_id: String,
    pub type_id: String,
    /// Start in the location's local time, with its UTC offset (an exact instant).
    pub start: String,
    pub end: String,
    pub room_id: Option<String>,
}

/// The spacing of the slots offered (`scheduling.slot_step_min`).
pub(super) fn slot_step(state: &AppState) -> Ms {
    state.config.scheduling.slot_step_min.max(1) * 60_000
}

async fn slots(state: &AppState, caller: &Caller, q: &SlotQuery) -> ApiResult<Vec<SlotOut>> {
    let days = q.days.unwrap_or(7);
    if !(1..=MAX_SEARCH_DAYS).contains(&days) {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidQuery,
            "days must be 1 to 62",
        ));
    }
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let tz = location_tz(&mut tx, &caller.clinic_id, &q.location_id).await?;
    let ty = load_type(&mut tx, &caller.clinic_id, &q.type_id.to_string()).await?;
    if !ty.bookable_by(caller.role) && caller.may(Permission::SelfSchedule) {
        return Err(ApiError::unprocessable(
            ErrorCode::UnknownType,
            "that appointment type does not exist",
        ));
    }
    let from = match &q.from {
        Some(d) => NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| {
            ApiError::unprocessable(ErrorCode::InvalidQuery, "from must be a date YYYY-MM-DD")
        })?,
        None => time::local_date(tz, now),
    };
    let providers = match &q.provider_id {
        Some(p) => {
            let name = provider_at(&mut tx, &caller.clinic_id, p.as_str(), &q.location_id).await?;
            vec![(p.to_string(), name)]
        }
        None => providers_at(&mut tx, &caller.clinic_id, &q.location_id).await?,
    };
    let search = Search {
        clinic: &caller.clinic_id,
        location: &q.location_id,
        tz,
        ty: &ty,
        providers,
        from,
        days,
        not_before: now,
        now,
        step: slot_step(state),
    };
    let found = find_slots(&mut tx, &search).await?;
    tx.commit().await?;
    Ok(found
        .into_iter()
        .map(|s| SlotOut {
            provider_id: s.provider_id,
            provider_name: s.provider_name,
            location_id: q.location_id.to_string(),
            type_id: ty.id.clone(),
            start: time::local_rfc3339(tz, s.start),
            end: time::local_rfc3339(tz, s.start + ty.duration()),
            room_id: s.room_id,
        })
        .collect())
}

pub(super) async fn staff_slots(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SlotQuery>,
) -> ApiResult<Json<Vec<SlotOut>>> {
    let (tx, _) = reach_at(
        &state,
        &caller,
        Permission::ScheduleRead,
        "slots",
        &q.location_id,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(slots(&state, &caller, &q).await?))
}

pub(super) async fn own_slots(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SlotQuery>,
) -> ApiResult<Json<Vec<SlotOut>>> {
    // Patients see open times only: no room ids.
    let mut out = slots(&state, &caller, &q).await?;
    for s in &mut out {
        s.room_id = None;
    }
    Ok(Json(out))
}
