//! A patient's own appointments: listing them, holding an open slot while deciding, booking one
//! (or confirming the hold), and cancelling an upcoming one.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::super::status::Status;
use super::super::time::Ms;
use super::booking::{commit_booking, created_body, prepare};
use super::changes::transition;
use super::idempotency::{Idempotency, replay};
use super::row::{AppointmentOut, ApptRow, IdPath, SELECT, answer, fetch, out, reach};
use super::store::{create_consult, history};
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiJson, ApiPath};
use crate::platform::ids::{LocationId, RecordId, UserId};
use crate::platform::state::AppState;

pub(super) async fn list_own(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<AppointmentOut>>> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (patient, reached) = tx.reach_own(&caller, Permission::OwnRecordsRead).await?;
    let patient = patient.to_string();
    let rows: Vec<ApptRow> = sqlx::query_as(&format!(
        "{SELECT} WHERE a.clinic_id = $1 AND a.patient_id = $2 AND a.status <> 'expired' \
         AND NOT (a.status = 'held' AND a.hold_expires_at <= $3) ORDER BY a.starts_at DESC LIMIT 500"
    ))
    .bind(caller.clinic_id.as_str())
    .bind(&patient)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let event = reached
        .event_for(Action::View, "appointment")
        .detail(format!("own list n={}", rows.len()));
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(
        rows.into_iter().map(|r| out(&state, r, false)).collect(),
    ))
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotChoice {
    pub type_id: RecordId,
    pub location_id: LocationId,
    pub provider_id: UserId,
    /// The slot's `start` as listed (RFC 3339 with offset), or a local time.
    pub start: String,
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnBookBody {
    /// Confirm this hold…
    pub hold_id: Option<RecordId>,
    /// …or book this slot directly (type, location, provider and start, as listed).
    pub type_id: Option<RecordId>,
    pub location_id: Option<LocationId>,
    pub provider_id: Option<UserId>,
    pub start: Option<String>,
}

pub(super) async fn hold(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SlotChoice>,
) -> ApiResult<Response> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (patient, reached) = tx.reach_own(&caller, Permission::SelfSchedule).await?;
    let patient = patient.to_string();
    // One hold per patient: a new choice releases the previous one.
    sqlx::query("UPDATE appointments SET status = 'expired', updated_at = $3 WHERE clinic_id = $1 AND patient_id = $2 AND status = 'held'")
        .bind(caller.clinic_id.as_str())
        .bind(&patient)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let (mut n, tz) = prepare(
        &mut tx,
        &caller,
        &body.type_id.to_string(),
        &body.location_id,
        body.provider_id.as_str(),
        &patient,
        None,
        &body.start,
        false,
        now,
    )
    .await?;
    n.status = Status::Held.as_str();
    n.hold_expires_at = Some(now + state.config.scheduling.hold_secs * 1000);
    commit_booking(&state, &caller, &reached, tx, n, tz, None).await
}

pub(super) async fn book_own(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OwnBookBody>,
) -> ApiResult<Response> {
    let idem = Idempotency::of(&headers, "/api/v1/me/appointments", &body)?;
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    if let Some(resp) = replay(&mut tx, &state, &caller, idem.as_ref()).await? {
        tx.commit().await?;
        return Ok(resp);
    }
    let (patient, reached) = tx.reach_own(&caller, Permission::SelfSchedule).await?;
    let patient = patient.to_string();
    let slot = match (
        &body.type_id,
        &body.location_id,
        &body.provider_id,
        &body.start,
    ) {
        (Some(t), Some(l), Some(p), Some(s)) => Some((t, l, p, s)),
        (None, None, None, None) => None,
        _ => {
            return Err(ApiError::unprocessable(
                ErrorCode::InvalidBody,
                "a slot needs type_id, location_id, provider_id and start",
            ));
        }
    };
    match (&body.hold_id, slot) {
        (Some(hold), None) => {
            let hold = hold.to_string();
            confirm_hold(&state, tx, &caller, &hold, &patient, idem, now).await
        }
        (None, Some((type_id, location, provider, start))) => {
            let (n, tz) = prepare(
                &mut tx,
                &caller,
                &type_id.to_string(),
                location,
                provider.as_str(),
                &patient,
                None,
                start,
                false,
                now,
            )
            .await?;
            commit_booking(&state, &caller, &reached, tx, n, tz, idem).await
        }
        _ => Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "send either hold_id or a slot (type_id, location_id, provider_id, start)",
        )),
    }
}

pub(super) async fn cancel_own(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<AppointmentOut>> {
    let id = p.id.to_string();
    let now = state.clock.now_ms();
    let (mut tx, row, reached) = reach(&state, &caller, &id, Permission::SelfSchedule).await?;
    if row.starts_at <= now {
        return Err(ApiError::conflict(
            ErrorCode::AlreadyStarted,
            "call the practice to change an appointment that has started",
        ));
    }
    transition(&state, &mut tx, &caller, &row, &reached, Status::Cancelled).await?;
    answer(&state, tx, &caller, &id, false).await
}

/// Confirms the patient's hold: it becomes booked (a telemedicine one gets its consult now).
async fn confirm_hold(
    state: &AppState,
    mut tx: TenantTx,
    caller: &Caller,
    hold: &str,
    patient: &str,
    idem: Option<Idempotency>,
    now: Ms,
) -> ApiResult<Response> {
    let row = fetch(&mut tx, &caller.clinic_id, hold)
        .await?
        .filter(|r| r.patient_id == patient && matches!(r.status.as_str(), "held" | "expired"))
        .ok_or_else(|| ApiError::not_found("hold"))?;
    if row.status == "expired" || row.hold_expires_at.is_none_or(|t| t <= now) {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::HoldExpired,
            "the hold expired; choose the slot again",
        ));
    }
    sqlx::query("UPDATE appointments SET status = 'booked', hold_expires_at = NULL, updated_at = $1 WHERE id = $2 AND status = 'held'")
        .bind(now)
        .bind(hold)
        .execute(&mut *tx)
        .await?;
    if row.modality == "telemedicine" {
        let (clinic, actor) = (&caller.clinic_id, caller.user_id.as_str());
        let consult =
            create_consult(&mut tx, clinic, hold, &row.location_id, patient, actor, now).await?;
        sqlx::query("UPDATE appointments SET consult_id = $1 WHERE id = $2")
            .bind(&consult)
            .bind(hold)
            .execute(&mut *tx)
            .await?;
    }
    history(
        &mut tx,
        &caller.clinic_id,
        hold,
        caller.user_id.as_str(),
        Some("held"),
        "booked",
        row.placement(),
        now,
    )
    .await?;
    let event = caller
        .event(Action::Modify, "appointment")
        .resource(hold)
        .patient(patient)
        .detail("hold -> booked");
    tx.audit(event).await?;
    let body = created_body(state, &mut tx, caller, hold, false, idem.as_ref(), now).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
