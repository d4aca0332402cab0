//! Joining a telemedicine appointment: a one-time link to its consult for the appointment's own
//! patient or provider, only inside the join window.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use signaling::token::ConsultRole;

use super::super::status::Status;
use super::super::time;
use super::row::{IdPath, reach};
use crate::platform::audit::Action;
use crate::platform::authz::{Basis, Caller, Permission};
use crate::platform::clock::rfc3339;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::ApiPath;
use crate::platform::state::AppState;

pub(super) async fn join(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<crate::domains::consults::LinkOut>> {
    let id = p.id.to_string();
    let now = state.clock.now_ms();
    let (mut tx, row, reached) = reach(&state, &caller, &id, Permission::VisitsJoin).await?;
    // Only the appointment's own patient and provider join it: the patient on their own
    // record's grant, a provider only as this appointment's provider.
    let (role, display) = if reached.basis == Basis::Own {
        (
            ConsultRole::Patient,
            format!(
                "{} {}.",
                row.given_name,
                row.family_name.chars().next().unwrap_or(' ')
            ),
        )
    } else if row.provider_id == caller.user_id.as_str() {
        (ConsultRole::Provider, row.provider_name.clone())
    } else {
        let event = reached.event(Action::Access).detail("join");
        let refusal = ApiError::forbidden("only the appointment's provider and patient join it");
        return tx.refuse(event, refusal).await;
    };
    let Some(consult) = row
        .consult_id
        .clone()
        .filter(|_| row.modality == "telemedicine")
    else {
        return Err(ApiError::conflict(
            ErrorCode::NotTelemedicine,
            "this appointment is in person",
        ));
    };
    if !matches!(row.status(), Status::Booked | Status::CheckedIn) {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::AppointmentClosed,
            format!("this appointment is {}", row.status),
        ));
    }
    let cfg = &state.config.scheduling;
    let (opens, closes) = (
        row.starts_at - cfg.join_early_secs * 1000,
        row.ends_at + cfg.join_late_secs * 1000,
    );
    if now < opens {
        return Err(ApiError::conflict(
            ErrorCode::JoinNotOpen,
            format!(
                "you can join from {} ({} minutes before the start)",
                time::local_rfc3339(row.tz(), opens),
                cfg.join_early_secs / 60
            ),
        )
        .with_extra(serde_json::json!({ "opens_at": rfc3339(opens) })));
    }
    if now > closes {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::JoinClosed,
            "this appointment's join window has closed",
        ));
    }
    let link = crate::domains::consults::issue_link(
        &state,
        &mut tx,
        &caller.clinic_id,
        &consult,
        role,
        &display,
        caller.user_id.as_str(),
        Some(opens),
        closes,
    )
    .await?;
    let event = reached
        .event_for(Action::Share, "consult_link")
        .resource(&consult)
        .detail(format!(
            "appointment join role={}",
            if role == ConsultRole::Patient {
                "patient"
            } else {
                "provider"
            }
        ));
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(link))
}
