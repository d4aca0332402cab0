//! Booking by staff, and booking a follow-up of an appointment in one step: the checks a booking
//! request passes (shared by every route that books), and the commit that answers it.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Duration;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::super::location::{location_tz, parse_instant, provider_at, reach_at};
use super::super::slots::{Search, find_slots, slot_step, within_availability};
use super::super::status::Status;
use super::super::time::{self, Ms};
use super::super::types::load_type;
use super::idempotency::{Idempotency, remember, replay, replay_after_race};
use super::row::{IdPath, may_see_names, out, reach, reload};
use super::store::{BookError, NewAppointment, conflict_error, insert};
use crate::domains::patients;
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiJson, ApiPath};
use crate::platform::ids::{LocationId, PatientId, RecordId, UserId};
use crate::platform::state::AppState;
use crate::platform::tx::Reached;

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BookBody {
    pub type_id: RecordId,
    pub location_id: LocationId,
    pub provider_id: UserId,
    pub patient_id: PatientId,
    /// A specific room; by default a free room is picked when the type needs one.
    pub room_id: Option<RecordId>,
    /// Local `YYYY-MM-DDTHH:MM` at the location, or RFC 3339 with an offset. A local time
    /// skipped or repeated by a daylight-saving change is refused.
    pub start: String,
    /// Staff only: book outside the provider's availability (never over another appointment).
    #[serde(default)]
    pub override_availability: bool,
}

/// Checks a booking request against the type, location, provider, patient and availability.
#[allow(clippy::too_many_arguments)]
pub(super) async fn prepare(
    tx: &mut TenantTx,
    caller: &Caller,
    type_id: &str,
    location: &LocationId,
    provider: &str,
    patient: &str,
    room: Option<String>,
    start: &str,
    override_availability: bool,
    now: Ms,
) -> ApiResult<(NewAppointment, Tz)> {
    let clinic = &caller.clinic_id;
    let tz = location_tz(tx, clinic, location).await?;
    let ty = load_type(tx, clinic, type_id).await?;
    if !ty.bookable_by(caller.role) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::TypeNotBookable,
            format!("your role may not book {} appointments", ty.name),
        ));
    }
    provider_at(tx, clinic, provider, location).await?;
    let found: Option<(String,)> =
        sqlx::query_as("SELECT id FROM patients WHERE id = $1 AND clinic_id = $2")
            .bind(patient)
            .bind(clinic.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    if found.is_none() {
        return Err(ApiError::unprocessable(
            ErrorCode::UnknownPatient,
            "that patient does not exist",
        ));
    }
    if let Some(r) = &room {
        let ok: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM rooms WHERE id = $1 AND clinic_id = $2 AND location_id = $3 AND disabled_at IS NULL",
        )
        .bind(r)
        .bind(clinic.as_str())
        .bind(location.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        if ok.is_none() || ty.needs_room == 0 {
            return Err(ApiError::unprocessable(
                ErrorCode::UnknownRoom,
                "that room is not bookable at this location for this type",
            ));
        }
    }
    let start = parse_instant(start, Some(tz))?;
    if start < now {
        return Err(ApiError::unprocessable(
            ErrorCode::StartInPast,
            "the start is in the past",
        ));
    }
    if start > now + 3 * 366 * 86_400_000 {
        return Err(ApiError::unprocessable(
            ErrorCode::StartTooFar,
            "book at most three years ahead",
        ));
    }
    let n = NewAppointment {
        location: location.clone(),
        ty,
        provider: provider.to_string(),
        patient: patient.to_string(),
        room,
        start,
        status: Status::Booked.as_str(),
        hold_expires_at: None,
        series: None,
        follow_up_of: None,
    };
    let may_override = override_availability && caller.may(Permission::ScheduleOverride);
    if !may_override
        && !within_availability(tx, clinic, location, tz, &n.ty, provider, n.start, n.end()).await?
    {
        return Err(ApiError::unprocessable(
            ErrorCode::OutsideAvailability,
            "the provider does not see patients of this type at that time",
        ));
    }
    Ok((n, tz))
}

/// Staff book only a patient they reach at the patient's own location (assigned, a covering
/// grant, or break-glass with a reason; a refusal audited), wherever the appointment is: a
/// visit at another location does not open another location's patient to its staff. Returns
/// the basis the booking's audit event is built from: the patient's when it is break-glass.
pub(super) async fn reach_patient(
    tx: &mut TenantTx,
    caller: &Caller,
    patient: &PatientId,
    at_location: Reached,
) -> ApiResult<Reached> {
    match patients::reach(tx, caller, patient, Permission::ScheduleWrite).await {
        Ok((_, reached)) if reached.is_break_glass() => Ok(reached),
        Ok(_) => Ok(at_location),
        Err(e) if e.code == ErrorCode::NotFound => Err(ApiError::unprocessable(
            ErrorCode::UnknownPatient,
            "that patient does not exist",
        )),
        Err(e) => Err(e),
    }
}

/// Runs a prepared booking to its answer, with idempotency and the audit event.
pub(super) async fn commit_booking(
    state: &AppState,
    caller: &Caller,
    reached: &Reached,
    mut tx: TenantTx,
    n: NewAppointment,
    tz: Tz,
    idem: Option<Idempotency>,
) -> ApiResult<Response> {
    let now = state.clock.now_ms();
    let actor = caller.user_id.to_string();
    let failed = match insert(&mut tx, &caller.clinic_id, &n, &actor, now).await {
        Ok(id) => {
            let event = reached
                .event_for(Action::Create, "appointment")
                .resource(&id)
                .patient(&n.patient)
                .detail(format!("status={}", n.status));
            tx.audit(event).await?;
            let names = may_see_names(caller);
            let idem = idem.as_ref();
            let body = created_body(state, &mut tx, caller, &id, names, idem, now).await?;
            match tx.commit().await {
                Ok(()) => return Ok((StatusCode::CREATED, Json(body)).into_response()),
                Err(e) => BookError::Api(e.into()),
            }
        }
        Err(e) => {
            drop(tx);
            e
        }
    };
    // A concurrent request with the same key may have committed first.
    if let Some(resp) = replay_after_race(state, caller, idem.as_ref()).await? {
        return Ok(resp);
    }
    Err(match failed {
        BookError::Api(e) => e,
        BookError::Conflict(c) => conflict_error(state, &caller.clinic_id, c, &n, "", tz).await,
    })
}

/// The body of the 201 for the appointment `id` just created (or confirmed), stored under the
/// request's `Idempotency-Key` in the same transaction.
pub(super) async fn created_body(
    state: &AppState,
    tx: &mut TenantTx,
    caller: &Caller,
    id: &str,
    with_name: bool,
    idem: Option<&Idempotency>,
    now: Ms,
) -> ApiResult<serde_json::Value> {
    let row = reload(tx, &caller.clinic_id, id).await?;
    let body =
        serde_json::to_value(out(state, row, with_name)).map_err(|_| ApiError::internal())?;
    remember(tx, caller, idem, StatusCode::CREATED, id, now).await?;
    Ok(body)
}

pub(super) async fn book(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<BookBody>,
) -> ApiResult<Response> {
    let idem = Idempotency::of(&headers, "/api/v1/appointments", &body)?;
    let now = state.clock.now_ms();
    let (mut tx, reached) = reach_at(
        &state,
        &caller,
        Permission::ScheduleWrite,
        "appointment",
        &body.location_id,
    )
    .await?;
    if let Some(resp) = replay(&mut tx, &state, &caller, idem.as_ref()).await? {
        tx.commit().await?;
        return Ok(resp);
    }
    let reached = reach_patient(&mut tx, &caller, &body.patient_id, reached).await?;
    let (n, tz) = prepare(
        &mut tx,
        &caller,
        &body.type_id.to_string(),
        &body.location_id,
        body.provider_id.as_str(),
        body.patient_id.as_str(),
        body.room_id.map(|r| r.to_string()),
        &body.start,
        body.override_availability,
        now,
    )
    .await?;
    commit_booking(&state, &caller, &reached, tx, n, tz, idem).await
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowUpBody {
    /// Default: the same type.
    pub type_id: Option<RecordId>,
    /// An exact start (local or RFC 3339); without it, the first open slot from `after_days`.
    pub start: Option<String>,
    /// Days after this appointment to start looking (default 14).
    pub after_days: Option<i64>,
}

pub(super) async fn follow_up(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(p): ApiPath<IdPath>,
    ApiJson(body): ApiJson<FollowUpBody>,
) -> ApiResult<Response> {
    let id = p.id.to_string();
    let path = format!("/api/v1/appointments/{id}/follow-up");
    let idem = Idempotency::of(&headers, &path, &body)?;
    let now = state.clock.now_ms();
    let (mut tx, row, reached) = reach(&state, &caller, &id, Permission::ScheduleWrite).await?;
    if let Some(resp) = replay(&mut tx, &state, &caller, idem.as_ref()).await? {
        tx.commit().await?;
        return Ok(resp);
    }
    let type_id = body.type_id.map_or(row.type_id.clone(), |t| t.to_string());
    let tz = row.tz();
    let start = match &body.start {
        Some(s) => s.clone(),
        None => {
            let after = body.after_days.unwrap_or(14);
            if !(0..=730).contains(&after) {
                return Err(ApiError::unprocessable(
                    ErrorCode::InvalidBody,
                    "after_days must be 0 to 730",
                ));
            }
            let ty = load_type(&mut tx, &caller.clinic_id, &type_id).await?;
            let search = Search {
                clinic: &caller.clinic_id,
                location: &row.location(),
                tz,
                ty: &ty,
                providers: vec![(row.provider_id.clone(), row.provider_name.clone())],
                from: time::local_date(tz, row.starts_at) + Duration::days(after),
                days: 28,
                not_before: now,
                now,
                step: slot_step(&state),
            };
            let first = find_slots(&mut tx, &search)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ApiError::conflict(
                        ErrorCode::NoOpenSlot,
                        "the provider has no open slot in the four weeks from that day",
                    )
                })?;
            time::local_rfc3339(tz, first.start)
        }
    };
    let (mut n, tz) = prepare(
        &mut tx,
        &caller,
        &type_id,
        &row.location(),
        &row.provider_id,
        &row.patient_id,
        None,
        &start,
        false,
        now,
    )
    .await?;
    n.follow_up_of = Some(id.clone());
    commit_booking(&state, &caller, &reached, tx, n, tz, idem).await
}
