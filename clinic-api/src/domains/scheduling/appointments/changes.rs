//! Changes to an appointment after booking: the status moves (staff check a patient in, mark a
//! no-show, complete or cancel; each one move of the status table, [`Status::can_become`], with
//! what follows from it), and moving a booked appointment to a new start, provider or room.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::super::status::Status;
use super::super::types::load_type;
use super::booking::prepare;
use super::row::{AppointmentOut, ApptRow, IdPath, answer, may_see_names, reach};
use super::store::{BookError, claim, conflict_error, history};
use crate::domains::consults::{self, EndReason};
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiJson, ApiPath};
use crate::platform::ids::{RecordId, UserId};
use crate::platform::state::AppState;
use crate::platform::tx::Reached;

/// Moves an appointment to `to` if the status table allows it, with history and audit, and with
/// what follows: a cancelled or missed telemedicine appointment's consult ends, a cancelled one's
/// messages are withdrawn, a completed one's follow-ups are scheduled.
pub(super) async fn transition(
    state: &AppState,
    tx: &mut TenantTx,
    caller: &Caller,
    row: &ApptRow,
    reached: &Reached,
    to: Status,
) -> ApiResult<()> {
    if !row.status().can_become(to) {
        return Err(ApiError::conflict(
            ErrorCode::InvalidTransition,
            format!("an appointment that is {} cannot become {to}", row.status),
        ));
    }
    let now = state.clock.now_ms();
    let done = sqlx::query("UPDATE appointments SET status = $1, updated_at = $2, hold_expires_at = NULL WHERE id = $3 AND clinic_id = $4 AND status = $5")
        .bind(to.as_str())
        .bind(now)
        .bind(&row.id)
        .bind(caller.clinic_id.as_str())
        .bind(&row.status)
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() != 1 {
        return Err(ApiError::conflict(
            ErrorCode::ChangedConcurrently,
            "the appointment changed meanwhile; reload it",
        ));
    }
    history(
        tx,
        &caller.clinic_id,
        &row.id,
        caller.user_id.as_str(),
        Some(&row.status),
        to.as_str(),
        row.placement(),
        now,
    )
    .await?;
    if matches!(to, Status::Cancelled | Status::NoShow)
        && let Some(consult) = &row.consult_id
    {
        // Ended for everyone in it, too, once this commits.
        consults::end(state, tx, consult, EndReason::Cancelled).await?;
    }
    if to == Status::Cancelled {
        crate::domains::outbox::cancel_for(tx, &caller.clinic_id, &row.id).await?;
    }
    if to == Status::Completed {
        let ty = load_type(tx, &caller.clinic_id, &row.type_id).await?;
        crate::domains::outbox::schedule_followups(
            tx,
            &caller.clinic_id,
            &row.patient_id,
            &row.id,
            row.tz(),
            row.starts_at,
            &ty.followup_rules(),
            now,
        )
        .await?;
    }
    let event = reached
        .event(Action::Modify)
        .detail(format!("{} -> {to}", row.status));
    tx.audit(event).await?;
    Ok(())
}

pub(super) async fn change_status(
    state: AppState,
    caller: Caller,
    p: IdPath,
    to: Status,
) -> ApiResult<Json<AppointmentOut>> {
    let id = p.id.to_string();
    let (mut tx, row, reached) = reach(&state, &caller, &id, Permission::ScheduleWrite).await?;
    let now = state.clock.now_ms();
    if to == Status::NoShow && now < row.starts_at {
        return Err(ApiError::conflict(
            ErrorCode::NotStarted,
            "a no-show can be marked only after the start",
        ));
    }
    transition(&state, &mut tx, &caller, &row, &reached, to).await?;
    answer(&state, tx, &caller, &id, may_see_names(&caller)).await
}

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RescheduleBody {
    /// Local `YYYY-MM-DDTHH:MM` or RFC 3339 with an offset.
    pub start: String,
    /// Another provider at the same location.
    pub provider_id: Option<UserId>,
    pub room_id: Option<RecordId>,
    #[serde(default)]
    pub override_availability: bool,
}

pub(super) async fn reschedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
    ApiJson(body): ApiJson<RescheduleBody>,
) -> ApiResult<Json<AppointmentOut>> {
    let id = p.id.to_string();
    let now = state.clock.now_ms();
    let (mut tx, row, reached) = reach(&state, &caller, &id, Permission::ScheduleWrite).await?;
    if row.status() != Status::Booked {
        return Err(ApiError::conflict(
            ErrorCode::InvalidTransition,
            format!("an appointment that is {} cannot be moved", row.status),
        ));
    }
    let provider = body
        .provider_id
        .as_ref()
        .map_or(row.provider_id.clone(), |p| p.to_string());
    let (mut n, tz) = prepare(
        &mut tx,
        &caller,
        &row.type_id,
        &row.location(),
        &provider,
        &row.patient_id,
        body.room_id.map(|r| r.to_string()),
        &body.start,
        body.override_availability,
        now,
    )
    .await?;
    let result: Result<(), BookError> = async {
        n.room = claim(&mut tx, &caller.clinic_id, &id, &n, now).await?;
        let (start, end, busy) = (n.start, n.end(), n.busy_until());
        sqlx::query("UPDATE appointments SET starts_at = $1, ends_at = $2, busy_until = $3, provider_id = $4, room_id = $5, updated_at = $6 WHERE id = $7 AND clinic_id = $8")
            .bind(start)
            .bind(end)
            .bind(busy)
            .bind(&n.provider)
            .bind(n.room.as_deref())
            .bind(now)
            .bind(&id)
            .bind(caller.clinic_id.as_str())
            .execute(&mut *tx)
            .await?;
        history(&mut tx, &caller.clinic_id, &id, caller.user_id.as_str(), Some("booked"), "booked", (start, end, &n.provider, n.room.as_deref()), now).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {}
        Err(BookError::Api(e)) => return Err(e),
        Err(BookError::Conflict(c)) => {
            drop(tx);
            return Err(conflict_error(&state, &caller.clinic_id, c, &n, &id, tz).await);
        }
    }
    let event = reached.event(Action::Modify).detail("reschedule");
    tx.audit(event).await?;
    answer(&state, tx, &caller, &id, may_see_names(&caller)).await
}
