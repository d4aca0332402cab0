//! An appointment as stored (one query joins its location, provider, patient and type) and as the
//! API shows it; the reach that loads one for a caller; and reading them, a location's in a time
//! range or one with its status history (every appointment read is an audited view).

use axum::Json;
use axum::extract::State;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use super::super::location::{location_tz, parse_instant, reach_at};
use super::super::status::Status;
use super::super::time::{self, Ms};
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission};
use crate::platform::clock::rfc3339;
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiPath, ApiQuery};
use crate::platform::ids::{ClinicId, LocationId, PatientId, RecordId, UserId};
use crate::platform::pii::Pii;
use crate::platform::state::AppState;
use crate::platform::tx::{Reached, Target};

#[derive(sqlx::FromRow, Clone)]
pub(super) struct ApptRow {
    pub id: String,
    pub location_id: String,
    pub time_zone: String,
    pub provider_id: String,
    pub provider_name: String,
    pub patient_id: String,
    pub given_name: String,
    pub family_name: String,
    pub room_id: Option<String>,
    pub type_id: String,
    pub type_name: String,
    pub modality: String,
    pub starts_at: i64,
    pub ends_at: i64,
    pub status: String,
    pub hold_expires_at: Option<i64>,
    pub series_id: Option<String>,
    pub follow_up_of: Option<String>,
    pub consult_id: Option<String>,
}

pub(super) const SELECT: &str = "SELECT a.id, a.location_id, l.time_zone, a.provider_id, u.display_name AS provider_name, \
    a.patient_id, p.given_name, p.family_name, a.room_id, a.type_id, t.name AS type_name, \
    a.modality, a.starts_at, a.ends_at, a.status, a.hold_expires_at, a.series_id, a.follow_up_of, a.consult_id \
    FROM appointments a JOIN locations l ON l.id = a.location_id JOIN users u ON u.id = a.provider_id \
    JOIN patients p ON p.id = a.patient_id JOIN appointment_types t ON t.id = a.type_id";

impl ApptRow {
    pub(super) fn tz(&self) -> Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }
    pub(super) fn location(&self) -> LocationId {
        LocationId::from_trusted(self.location_id.clone())
    }
    /// The status (a value the schema does not know reads as expired: shown to nobody, and
    /// nothing follows it).
    pub(super) fn status(&self) -> Status {
        Status::parse(&self.status).unwrap_or(Status::Expired)
    }
    /// When and where it is (start, end, provider, room), as its status history records it.
    pub(super) fn placement(&self) -> (Ms, Ms, &str, Option<&str>) {
        (
            self.starts_at,
            self.ends_at,
            &self.provider_id,
            self.room_id.as_deref(),
        )
    }
}

pub(super) async fn fetch(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    id: &str,
) -> sqlx::Result<Option<ApptRow>> {
    sqlx::query_as(&format!("{SELECT} WHERE a.id = $1 AND a.clinic_id = $2"))
        .bind(id)
        .bind(clinic.as_str())
        .fetch_optional(conn)
        .await
}

/// An appointment the caller has just written (so it exists).
pub(super) async fn reload(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    id: &str,
) -> ApiResult<ApptRow> {
    fetch(conn, clinic, id)
        .await?
        .ok_or_else(ApiError::internal)
}

/// A change's answer: the appointment as changed, once the change is committed.
pub(super) async fn answer(
    state: &AppState,
    mut tx: TenantTx,
    caller: &Caller,
    id: &str,
    with_name: bool,
) -> ApiResult<Json<AppointmentOut>> {
    let row = reload(&mut tx, &caller.clinic_id, id).await?;
    tx.commit().await?;
    Ok(Json(out(state, row, with_name)))
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct AppointmentOut {
    pub id: String,
    pub status: String,
    pub type_id: String,
    pub type_name: String,
    /// `in_person` or `telemedicine`.
    pub modality: String,
    pub location_id: String,
    pub provider_id: String,
    pub provider_name: String,
    pub patient_id: String,
    /// Only for callers who may read patient demographics.
    pub patient_name: Option<Pii<String>>,
    pub room_id: Option<String>,
    /// Local time at the location, with its UTC offset.
    pub start: String,
    pub end: String,
    pub hold_expires_at: Option<String>,
    pub series_id: Option<String>,
    pub follow_up_of: Option<String>,
    pub consult_id: Option<String>,
    /// Telemedicine: when the join links start and stop working.
    pub join_opens_at: Option<String>,
    pub join_closes_at: Option<String>,
}

/// A row of an appointment's status history.
#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    pub(super) at: Ms,
    pub(super) actor_id: Option<String>,
    pub(super) from_status: Option<String>,
    pub(super) to_status: String,
    pub(super) starts_at: Ms,
    pub(super) ends_at: Ms,
    pub(super) provider_id: String,
    pub(super) room_id: Option<String>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct HistoryEntry {
    pub at: String,
    pub actor_id: Option<String>,
    pub from_status: Option<String>,
    pub to_status: String,
    pub start: String,
    pub end: String,
    pub provider_id: String,
    pub room_id: Option<String>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct AppointmentDetail {
    #[serde(flatten)]
    pub appointment: AppointmentOut,
    pub history: Vec<HistoryEntry>,
}

pub(super) fn out(state: &AppState, r: ApptRow, with_name: bool) -> AppointmentOut {
    let tz = r.tz();
    let cfg = &state.config.scheduling;
    let tele = r.modality == "telemedicine" && r.consult_id.is_some();
    AppointmentOut {
        patient_name: with_name.then(|| Pii(format!("{} {}", r.given_name, r.family_name))),
        start: time::local_rfc3339(tz, r.starts_at),
        end: time::local_rfc3339(tz, r.ends_at),
        hold_expires_at: r.hold_expires_at.map(rfc3339),
        join_opens_at: tele.then(|| rfc3339(r.starts_at - cfg.join_early_secs * 1000)),
        join_closes_at: tele.then(|| rfc3339(r.ends_at + cfg.join_late_secs * 1000)),
        id: r.id,
        status: r.status,
        type_id: r.type_id,
        type_name: r.type_name,
        modality: r.modality,
        location_id: r.location_id,
        provider_id: r.provider_id,
        provider_name: r.provider_name,
        patient_id: r.patient_id,
        room_id: r.room_id,
        series_id: r.series_id,
        follow_up_of: r.follow_up_of,
        consult_id: r.consult_id,
    }
}

pub(super) fn may_see_names(caller: &Caller) -> bool {
    caller.may(Permission::PatientsRead)
}

#[derive(Deserialize)]
pub(super) struct IdPath {
    pub(super) id: RecordId,
}

/// Opens the caller's transaction, loads an appointment and proves the caller's reach to it with
/// `perm` (refusals audited and committed by the reach; a patient's own grant reaches only their
/// own appointments).
pub(super) async fn reach(
    state: &AppState,
    caller: &Caller,
    id: &str,
    perm: Permission,
) -> ApiResult<(TenantTx, ApptRow, Reached)> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let row = fetch(&mut tx, &caller.clinic_id, id)
        .await?
        .filter(|r| r.status() != Status::Expired)
        .ok_or_else(|| ApiError::not_found("appointment"))?;
    let location = row.location();
    let target = Target::object("appointment", id)
        .located(&location)
        .of_patient(&row.patient_id);
    let reached = tx.reach(caller, perm, target).await?;
    Ok((tx, row, reached))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub location_id: LocationId,
    /// RFC 3339, or a local date `YYYY-MM-DD` (its midnight at the location).
    pub from: String,
    pub to: String,
    pub provider_id: Option<UserId>,
    pub patient_id: Option<PatientId>,
}

fn parse_bound(s: &str, tz: Tz) -> ApiResult<Ms> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(time::resolve(tz, d, 0, false));
    }
    parse_instant(s, Some(tz))
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<AppointmentOut>>> {
    let now = state.clock.now_ms();
    let (mut tx, reached) = reach_at(
        &state,
        &caller,
        Permission::ScheduleRead,
        "appointment",
        &q.location_id,
    )
    .await?;
    let tz = location_tz(&mut tx, &caller.clinic_id, &q.location_id).await?;
    let (from, to) = (parse_bound(&q.from, tz)?, parse_bound(&q.to, tz)?);
    if to <= from || to - from > 62 * 86_400_000 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidQuery,
            "to must be after from, within 62 days",
        ));
    }
    let rows: Vec<ApptRow> = sqlx::query_as(&format!(
        "{SELECT} WHERE a.clinic_id = $1 AND a.location_id = $2 AND a.starts_at < $4 AND a.ends_at > $3 \
         AND a.status <> 'expired' AND NOT (a.status = 'held' AND a.hold_expires_at <= $5) \
         AND ($6 = '' OR a.provider_id = $6) AND ($7 = '' OR a.patient_id = $7) ORDER BY a.starts_at, a.id LIMIT 1000"
    ))
    .bind(caller.clinic_id.as_str())
    .bind(q.location_id.as_str())
    .bind(from)
    .bind(to)
    .bind(now)
    .bind(q.provider_id.as_ref().map(|p| p.to_string()).unwrap_or_default())
    .bind(q.patient_id.as_ref().map(|p| p.to_string()).unwrap_or_default())
    .fetch_all(&mut *tx)
    .await?;
    for r in &rows {
        let event = reached
            .event_for(Action::View, "appointment")
            .resource(&r.id)
            .patient(&r.patient_id)
            .detail("list");
        tx.audit(event).await?;
    }
    tx.commit().await?;
    let names = may_see_names(&caller);
    Ok(Json(
        rows.into_iter().map(|r| out(&state, r, names)).collect(),
    ))
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<AppointmentDetail>> {
    let id = p.id.to_string();
    let (mut tx, row, reached) = reach(&state, &caller, &id, Permission::ScheduleRead).await?;
    let tz = row.tz();
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT at, actor_id, from_status, to_status, starts_at, ends_at, provider_id, room_id FROM appointment_events \
         WHERE clinic_id = $1 AND appointment_id = $2 ORDER BY seq",
    )
    .bind(caller.clinic_id.as_str())
    .bind(&id)
    .fetch_all(&mut *tx)
    .await?;
    let event = reached.event(Action::View);
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(AppointmentDetail {
        appointment: out(&state, row, may_see_names(&caller)),
        history: events
            .into_iter()
            .map(|e| HistoryEntry {
                at: rfc3339(e.at),
                actor_id: e.actor_id,
                from_status: e.from_status,
                to_status: e.to_status,
                start: time::local_rfc3339(tz, e.starts_at),
                end: time::local_rfc3339(tz, e.ends_at),
                provider_id: e.provider_id,
                room_id: e.room_id,
            })
            .collect(),
    }))
}
