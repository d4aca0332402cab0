//! Appointments: book, hold, reschedule, check in, no-show, complete, cancel, follow-up, recurring
//! series, and joining a telemedicine appointment's consult.
//!
//! Double booking is impossible, not merely warned about: every write runs in one transaction
//! that first looks for an overlapping active appointment of the provider, the room and the
//! patient. On SQLite write transactions are serialized (`BEGIN IMMEDIATE`), so the look and
//! the write cannot interleave with another booking; on PostgreSQL three exclusion constraints
//! (btree_gist over time ranges) refuse an overlap that a concurrent transaction committed after
//! our look, and the 23P01 becomes the same 409 with the conflicting appointment's time.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Duration;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use signaling::token::ConsultRole;
use sqlx::AnyConnection;

use super::status::Status;
use super::time::{self, Ms};
use super::{
    Search, TypeRow, find_slots, load_type, location_tz, parse_instant, provider_at,
    within_availability,
};
use crate::domains::consults::{self, EndReason};
use crate::platform::audit::Action;
use crate::platform::authz::{Basis, Caller, Permission, Policy, Routes};
use crate::platform::clock::rfc3339;
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode, exclusion_violated};
use crate::platform::http::{ApiJson, ApiPath, ApiQuery};
use crate::platform::ids::{ClinicId, LocationId, PatientId, RecordId, UserId};
use crate::platform::keys::sha256_hex;
use crate::platform::openapi::Content;
use crate::platform::pii::Pii;
use crate::platform::state::AppState;
use crate::platform::tx::{Reached, Target};

/// Most occurrences one series may create (two years of weekly visits).
const MAX_OCCURRENCES: u16 = 104;

pub fn routes() -> Routes {
    Routes::new("appointments")
        .add(
            Method::POST,
            "/api/v1/appointments",
            Policy::perm(Permission::ScheduleWrite),
            "Book an appointment (Idempotency-Key supported)",
            book,
        )
        .body::<BookBody>()
        .responds(StatusCode::CREATED, Content::json::<AppointmentOut>())
        .add(
            Method::GET,
            "/api/v1/appointments",
            Policy::perm(Permission::ScheduleRead),
            "A location's appointments in a time range",
            list,
        )
        .query::<ListQuery>()
        .add(
            Method::POST,
            "/api/v1/appointments/series",
            Policy::perm(Permission::ScheduleWrite),
            "Book a recurring series from an RFC 5545 RRULE; conflicts reported per occurrence",
            series,
        )
        .body::<SeriesBody>()
        .status(StatusCode::CREATED)
        .add(
            Method::GET,
            "/api/v1/appointments/{id}",
            Policy::perm(Permission::ScheduleRead),
            "An appointment and its status history",
            get,
        )
        .add(
            Method::POST,
            "/api/v1/appointments/{id}/reschedule",
            Policy::perm(Permission::ScheduleWrite),
            "Move an appointment",
            reschedule,
        )
        .body::<RescheduleBody>()
        .add(
            Method::POST,
            "/api/v1/appointments/{id}/check-in",
            Policy::perm(Permission::ScheduleWrite),
            "Check a patient in",
            check_in,
        )
        .add(
            Method::POST,
            "/api/v1/appointments/{id}/no-show",
            Policy::perm(Permission::ScheduleWrite),
            "Mark a no-show",
            no_show,
        )
        .add(
            Method::POST,
            "/api/v1/appointments/{id}/complete",
            Policy::perm(Permission::ScheduleWrite),
            "Complete an appointment (schedules its type's follow-up messages)",
            complete,
        )
        .add(
            Method::POST,
            "/api/v1/appointments/{id}/cancel",
            Policy::perm(Permission::ScheduleWrite),
            "Cancel an appointment",
            cancel,
        )
        .add(
            Method::POST,
            "/api/v1/appointments/{id}/follow-up",
            Policy::perm(Permission::ScheduleWrite),
            "Book a follow-up with the same provider, patient and location in one step",
            follow_up,
        )
        .body::<FollowUpBody>()
        .responds(StatusCode::CREATED, Content::json::<AppointmentOut>())
        .add(
            Method::POST,
            "/api/v1/appointments/{id}/join",
            Policy::perm(Permission::VisitsJoin),
            "A one-time join link for the appointment's patient or provider, inside the join window",
            join,
        )
        .add(
            Method::GET,
            "/api/v1/me/appointments",
            Policy::perm(Permission::OwnRecordsRead),
            "The patient's own appointments",
            list_own,
        )
        .add(
            Method::POST,
            "/api/v1/me/holds",
            Policy::perm(Permission::SelfSchedule),
            "Hold an open slot for a few minutes while the patient decides",
            hold,
        )
        .body::<SlotChoice>()
        .responds(StatusCode::CREATED, Content::json::<AppointmentOut>())
        .add(
            Method::POST,
            "/api/v1/me/appointments",
            Policy::perm(Permission::SelfSchedule),
            "Book an open slot (or confirm a hold) for oneself (Idempotency-Key supported)",
            book_own,
        )
        .body::<OwnBookBody>()
        .responds(StatusCode::CREATED, Content::json::<AppointmentOut>())
        .add(
            Method::POST,
            "/api/v1/me/appointments/{id}/cancel",
            Policy::perm(Permission::SelfSchedule),
            "Cancel one's own upcoming appointment",
            cancel_own,
        )
}

// ---------------------------------------------------------------------------------------------
// Rows and output

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct ApptRow {
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

const SELECT: &str = "SELECT a.id, a.location_id, l.time_zone, a.provider_id, u.display_name AS provider_name, \
    a.patient_id, p.given_name, p.family_name, a.room_id, a.type_id, t.name AS type_name, \
    a.modality, a.starts_at, a.ends_at, a.status, a.hold_expires_at, a.series_id, a.follow_up_of, a.consult_id \
    FROM appointments a JOIN locations l ON l.id = a.location_id JOIN users u ON u.id = a.provider_id \
    JOIN patients p ON p.id = a.patient_id JOIN appointment_types t ON t.id = a.type_id";

impl ApptRow {
    fn tz(&self) -> Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }
    fn location(&self) -> LocationId {
        LocationId::from_trusted(self.location_id.clone())
    }
    /// The status (a value the schema does not know reads as expired: shown to nobody, and
    /// nothing follows it).
    fn status(&self) -> Status {
        Status::parse(&self.status).unwrap_or(Status::Expired)
    }
}

async fn fetch(
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
struct EventRow {
    at: Ms,
    actor_id: Option<String>,
    from_status: Option<String>,
    to_status: String,
    starts_at: Ms,
    ends_at: Ms,
    provider_id: String,
    room_id: Option<String>,
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

fn out(state: &AppState, r: ApptRow, with_name: bool) -> AppointmentOut {
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

fn may_see_names(caller: &Caller) -> bool {
    caller.may(Permission::PatientsRead)
}

// ---------------------------------------------------------------------------------------------
// The booking core

/// What a new appointment needs once checked.
pub(crate) struct NewAppointment {
    pub location: LocationId,
    pub ty: TypeRow,
    pub provider: String,
    pub patient: String,
    pub room: Option<String>,
    pub start: Ms,
    pub status: &'static str,
    pub hold_expires_at: Option<Ms>,
    pub series: Option<String>,
    pub follow_up_of: Option<String>,
}

impl NewAppointment {
    fn end(&self) -> Ms {
        self.start + self.ty.duration()
    }
    fn busy_until(&self) -> Ms {
        self.end() + self.ty.buffer()
    }
}

/// Which resource is taken, and when (if known).
#[derive(Clone, Debug)]
pub(crate) struct Conflict {
    pub with: &'static str,
    pub span: Option<(Ms, Ms)>,
}

pub(crate) enum BookError {
    Conflict(Conflict),
    Api(ApiError),
}

impl From<sqlx::Error> for BookError {
    fn from(e: sqlx::Error) -> Self {
        // The three exclusion constraints of migrations/postgres/0004_scheduling.sql.
        let with = match exclusion_violated(&e) {
            Some("appointments_room_overlap") => "room",
            Some("appointments_patient_overlap") => "patient",
            Some(_) => "provider",
            None => return BookError::Api(e.into()),
        };
        BookError::Conflict(Conflict { with, span: None })
    }
}

impl From<ApiError> for BookError {
    fn from(e: ApiError) -> Self {
        BookError::Api(e)
    }
}

/// The first active appointment (other than `exclude`) that overlaps on provider, room or patient.
#[allow(clippy::too_many_arguments)]
async fn find_conflict(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    exclude: &str,
    provider: &str,
    room: Option<&str>,
    patient: &str,
    start: Ms,
    end: Ms,
    busy_until: Ms,
    now: Ms,
) -> sqlx::Result<Option<Conflict>> {
    let active = super::status::active_sql().replace("$NOW", "$6");
    let checks: [(&'static str, &str, Option<&str>, Ms); 3] = [
        (
            "provider",
            "provider_id = $2 AND starts_at < $4 AND busy_until > $3",
            Some(provider),
            busy_until,
        ),
        (
            "room",
            "room_id = $2 AND starts_at < $4 AND busy_until > $3",
            room,
            busy_until,
        ),
        (
            "patient",
            "patient_id = $2 AND starts_at < $4 AND ends_at > $3",
            Some(patient),
            end,
        ),
    ];
    for (with, cond, value, until) in checks {
        let Some(value) = value else { continue };
        let row: Option<(Ms, Ms)> = sqlx::query_as(&format!(
            "SELECT starts_at, ends_at FROM appointments WHERE clinic_id = $1 AND {cond} AND id <> $5 AND {active} \
             ORDER BY starts_at LIMIT 1"
        ))
        .bind(clinic.as_str())
        .bind(value)
        .bind(start)
        .bind(until)
        .bind(exclude)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(span) = row {
            return Ok(Some(Conflict {
                with,
                span: Some(span),
            }));
        }
    }
    Ok(None)
}

/// Expired holds in the way become `expired` (they stop blocking the constraint too).
async fn clear_expired_holds(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    start: Ms,
    busy_until: Ms,
    now: Ms,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE appointments SET status = 'expired', updated_at = $4 WHERE clinic_id = $1 AND status = 'held' \
         AND hold_expires_at <= $4 AND starts_at < $3 AND busy_until > $2",
    )
    .bind(clinic.as_str())
    .bind(start)
    .bind(busy_until)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A free room of the location for `[start, busy_until)`, or the conflict of the first room.
async fn pick_room(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    location: &LocationId,
    exclude: &str,
    start: Ms,
    busy_until: Ms,
    now: Ms,
) -> Result<String, BookError> {
    let rooms: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM rooms WHERE clinic_id = $1 AND location_id = $2 AND disabled_at IS NULL ORDER BY name, id",
    )
    .bind(clinic.as_str())
    .bind(location.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut first = None;
    let active = super::status::active_sql().replace("$NOW", "$6");
    for (room,) in rooms {
        let row: Option<(Ms, Ms)> = sqlx::query_as(&format!(
            "SELECT starts_at, ends_at FROM appointments WHERE clinic_id = $1 AND room_id = $2 AND starts_at < $4 \
             AND busy_until > $3 AND id <> $5 AND {active} ORDER BY starts_at LIMIT 1"
        ))
        .bind(clinic.as_str())
        .bind(&room)
        .bind(start)
        .bind(busy_until)
        .bind(exclude)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            None => return Ok(room),
            Some(span) => {
                first.get_or_insert(span);
            }
        }
    }
    Err(BookError::Conflict(Conflict {
        with: "room",
        span: first,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn history(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    id: &str,
    actor: &str,
    from: Option<&str>,
    to: &str,
    a: (Ms, Ms, &str, Option<&str>),
    now: Ms,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO appointment_events (id, clinic_id, appointment_id, seq, at, actor_id, from_status, to_status, starts_at, ends_at, provider_id, room_id) \
         VALUES ($1, $2, $3, (SELECT coalesce(max(seq), 0) + 1 FROM appointment_events WHERE appointment_id = $3), $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(clinic.as_str())
    .bind(id)
    .bind(now)
    .bind(actor)
    .bind(from)
    .bind(to)
    .bind(a.0)
    .bind(a.1)
    .bind(a.2)
    .bind(a.3)
    .execute(conn)
    .await?;
    Ok(())
}

/// Creates the consult of a telemedicine appointment.
async fn create_consult(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    appt: &str,
    n: &NewAppointment,
    actor: &str,
    now: Ms,
) -> sqlx::Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO consults (id, clinic_id, location_id, patient_id, created_by, status, created_at, appointment_id) \
         VALUES ($1, $2, $3, $4, $5, 'open', $6, $7)",
    )
    .bind(&id)
    .bind(clinic.as_str())
    .bind(n.location.as_str())
    .bind(&n.patient)
    .bind(actor)
    .bind(now)
    .bind(appt)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Inserts a checked appointment (and its consult, and its first history entry).
pub(crate) async fn insert(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    n: &NewAppointment,
    actor: &str,
    now: Ms,
) -> Result<String, BookError> {
    let id = uuid::Uuid::new_v4().to_string();
    let (start, end, busy) = (n.start, n.end(), n.busy_until());
    clear_expired_holds(conn, clinic, start, busy, now).await?;
    let room = match (&n.room, n.ty.needs_room == 1) {
        (Some(r), _) => Some(r.clone()),
        (None, true) => Some(pick_room(conn, clinic, &n.location, &id, start, busy, now).await?),
        (None, false) => None,
    };
    if let Some(c) = find_conflict(
        conn,
        clinic,
        &id,
        &n.provider,
        room.as_deref(),
        &n.patient,
        start,
        end,
        busy,
        now,
    )
    .await?
    {
        return Err(BookError::Conflict(c));
    }
    // The consult row first: the appointment references it.
    let consult = if n.ty.modality == "telemedicine" && n.status != "held" {
        Some(create_consult(conn, clinic, &id, n, actor, now).await?)
    } else {
        None
    };
    sqlx::query(
        "INSERT INTO appointments (id, clinic_id, location_id, provider_id, patient_id, room_id, type_id, modality, starts_at, ends_at, busy_until, \
         status, hold_expires_at, series_id, follow_up_of, consult_id, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18)",
    )
    .bind(&id)
    .bind(clinic.as_str())
    .bind(n.location.as_str())
    .bind(&n.provider)
    .bind(&n.patient)
    .bind(room.as_deref())
    .bind(&n.ty.id)
    .bind(&n.ty.modality)
    .bind(start)
    .bind(end)
    .bind(busy)
    .bind(n.status)
    .bind(n.hold_expires_at)
    .bind(n.series.as_deref())
    .bind(n.follow_up_of.as_deref())
    .bind(consult.as_deref())
    .bind(actor)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    history(
        conn,
        clinic,
        &id,
        actor,
        None,
        n.status,
        (start, end, &n.provider, room.as_deref()),
        now,
    )
    .await?;
    Ok(id)
}

/// The 409 for a conflict; without a known time (a PostgreSQL constraint caught it), looks the
/// conflicting appointment up in a new transaction.
async fn conflict_error(
    state: &AppState,
    clinic: &ClinicId,
    c: Conflict,
    n: Option<(&NewAppointment, &str)>,
    tz: Tz,
) -> ApiError {
    let mut c = c;
    if c.span.is_none()
        && let Some((n, exclude)) = n
        && let Ok(mut tx) = state.tx(clinic).await
    {
        let now = state.clock.now_ms();
        if let Ok(Some(found)) = find_conflict(
            &mut tx,
            clinic,
            exclude,
            &n.provider,
            n.room.as_deref(),
            &n.patient,
            n.start,
            n.end(),
            n.busy_until(),
            now,
        )
        .await
        {
            c = found;
        }
        let _ = tx.commit().await;
    }
    let who = match c.with {
        "provider" => "the provider already has an appointment",
        "room" => "no room is free",
        _ => "the patient already has an appointment",
    };
    let (detail, extra) = match c.span {
        Some((s, e)) => (
            format!(
                "{who} from {} to {}",
                time::local_rfc3339(tz, s),
                time::local_rfc3339(tz, e)
            ),
            serde_json::json!({ "conflict": { "with": c.with, "start": time::local_rfc3339(tz, s), "end": time::local_rfc3339(tz, e) } }),
        ),
        None => (
            format!("{who} at that time"),
            serde_json::json!({ "conflict": { "with": c.with } }),
        ),
    };
    ApiError::conflict(ErrorCode::SlotUnavailable, detail).with_extra(extra)
}

// ---------------------------------------------------------------------------------------------
// Idempotency

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let k = v.to_str().unwrap_or_default().trim();
            if k.is_empty() || k.len() > 200 || !k.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidIdempotencyKey,
                    "Idempotency-Key must be 1 to 200 visible ASCII characters",
                ));
            }
            Ok(Some(k.to_string()))
        }
    }
}

/// The stored answer for a key, if this user used it before. The same key with another request
/// is refused.
async fn replay(
    conn: &mut AnyConnection,
    caller: &Caller,
    key: &str,
    hash: &str,
) -> ApiResult<Option<Response>> {
    let row: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT request_hash, status, response FROM idempotency_keys WHERE clinic_id = $1 AND user_id = $2 AND idem_key = $3",
    )
    .bind(caller.clinic_id.as_str())
    .bind(caller.user_id.as_str())
    .bind(key)
    .fetch_optional(conn)
    .await?;
    match row {
        None => Ok(None),
        Some((h, _, _)) if h != hash => Err(ApiError::unprocessable(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request",
        )),
        Some((_, status, body)) => {
            let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let mut resp = (status, Json(value)).into_response();
            resp.headers_mut().insert(
                "idempotent-replay",
                axum::http::HeaderValue::from_static("true"),
            );
            Ok(Some(resp))
        }
    }
}

async fn remember(
    conn: &mut AnyConnection,
    caller: &Caller,
    key: &str,
    hash: &str,
    status: StatusCode,
    body: &serde_json::Value,
    now: Ms,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (clinic_id, user_id, idem_key, request_hash, status, response, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(caller.clinic_id.as_str())
    .bind(caller.user_id.as_str())
    .bind(key)
    .bind(hash)
    .bind(status.as_u16() as i64)
    .bind(body.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Booking by staff

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
async fn prepare(
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

/// Runs a prepared booking to its answer, with idempotency and the audit event.
async fn commit_booking(
    state: &AppState,
    caller: &Caller,
    reached: &Reached,
    mut tx: TenantTx,
    n: NewAppointment,
    tz: Tz,
    idem: Option<(String, String)>,
) -> ApiResult<Response> {
    let now = state.clock.now_ms();
    let actor = caller.user_id.to_string();
    match insert(&mut tx, &caller.clinic_id, &n, &actor, now).await {
        Ok(id) => {
            let row = fetch(&mut tx, &caller.clinic_id, &id)
                .await?
                .ok_or_else(ApiError::internal)?;
            let event = reached
                .event_for(Action::Create, "appointment")
                .resource(&id)
                .patient(&n.patient)
                .detail(format!("status={}", n.status));
            tx.audit(event).await?;
            let body = serde_json::to_value(out(state, row, may_see_names(caller)))
                .map_err(|_| ApiError::internal())?;
            if let Some((key, hash)) = &idem {
                remember(&mut tx, caller, key, hash, StatusCode::CREATED, &body, now).await?;
            }
            match tx.commit().await {
                Ok(()) => Ok((StatusCode::CREATED, Json(body)).into_response()),
                Err(e) => {
                    // A concurrent request with the same key committed first.
                    if let Some(resp) = replay_after_race(state, caller, &idem).await? {
                        return Ok(resp);
                    }
                    Err(e.into())
                }
            }
        }
        Err(BookError::Api(e)) => {
            drop(tx);
            if let Some(resp) = replay_after_race(state, caller, &idem).await? {
                return Ok(resp);
            }
            Err(e)
        }
        Err(BookError::Conflict(c)) => {
            drop(tx);
            if let Some(resp) = replay_after_race(state, caller, &idem).await? {
                return Ok(resp);
            }
            Err(conflict_error(state, &caller.clinic_id, c, Some((&n, "")), tz).await)
        }
    }
}

async fn replay_after_race(
    state: &AppState,
    caller: &Caller,
    idem: &Option<(String, String)>,
) -> ApiResult<Option<Response>> {
    let Some((key, hash)) = idem else {
        return Ok(None);
    };
    let mut tx = state.tx(&caller.clinic_id).await?;
    let found = replay(&mut tx, caller, key, hash).await;
    tx.commit().await?;
    found
}

fn request_hash(path: &str, body: &impl Serialize) -> String {
    sha256_hex(
        format!(
            "{path}\n{}",
            serde_json::to_string(body).unwrap_or_default()
        )
        .as_bytes(),
    )
}

async fn book(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<BookBody>,
) -> ApiResult<Response> {
    let idem = idempotency_key(&headers)?.map(|k| (k, request_hash("/api/v1/appointments", &body)));
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = tx
        .reach(
            &caller,
            Permission::ScheduleWrite,
            Target::at("appointment", &body.location_id),
        )
        .await?;
    if let Some((key, hash)) = &idem
        && let Some(resp) = replay(&mut tx, &caller, key, hash).await?
    {
        tx.commit().await?;
        return Ok(resp);
    }
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

// ---------------------------------------------------------------------------------------------
// Reading

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

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<AppointmentOut>>> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = tx
        .reach(
            &caller,
            Permission::ScheduleRead,
            Target::at("appointment", &q.location_id),
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

#[derive(Deserialize)]
struct IdPath {
    id: RecordId,
}

/// Loads an appointment and proves the caller's reach to it with `perm` (refusals audited and
/// committed by the reach; a patient's own grant reaches only their own appointments).
async fn reach(
    tx: &mut TenantTx,
    caller: &Caller,
    id: &str,
    perm: Permission,
) -> ApiResult<(ApptRow, Reached)> {
    let row = fetch(tx, &caller.clinic_id, id)
        .await?
        .filter(|r| r.status() != Status::Expired)
        .ok_or_else(|| ApiError::not_found("appointment"))?;
    let location = row.location();
    let target = Target::object("appointment", id)
        .located(&location)
        .of_patient(&row.patient_id);
    let reached = tx.reach(caller, perm, target).await?;
    Ok((row, reached))
}

async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<AppointmentDetail>> {
    let id = p.id.to_string();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach(&mut tx, &caller, &id, Permission::ScheduleRead).await?;
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

// ---------------------------------------------------------------------------------------------
// Status changes

/// Moves an appointment from one of `from` to `to`, with history and audit. Returns the row as
/// it was.
async fn transition(
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
        (
            row.starts_at,
            row.ends_at,
            &row.provider_id,
            row.room_id.as_deref(),
        ),
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

async fn change_status(
    state: AppState,
    caller: Caller,
    id: RecordId,
    to: Status,
) -> ApiResult<Json<AppointmentOut>> {
    let id = id.to_string();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach(&mut tx, &caller, &id, Permission::ScheduleWrite).await?;
    let now = state.clock.now_ms();
    if to == Status::NoShow && now < row.starts_at {
        return Err(ApiError::conflict(
            ErrorCode::NotStarted,
            "a no-show can be marked only after the start",
        ));
    }
    transition(&state, &mut tx, &caller, &row, &reached, to).await?;
    let row = fetch(&mut tx, &caller.clinic_id, &id)
        .await?
        .ok_or_else(ApiError::internal)?;
    tx.commit().await?;
    Ok(Json(out(&state, row, may_see_names(&caller))))
}

async fn check_in(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<AppointmentOut>> {
    change_status(state, caller, p.id, Status::CheckedIn).await
}

async fn no_show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<AppointmentOut>> {
    change_status(state, caller, p.id, Status::NoShow).await
}

async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<AppointmentOut>> {
    change_status(state, caller, p.id, Status::Completed).await
}

async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<AppointmentOut>> {
    change_status(state, caller, p.id, Status::Cancelled).await
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

async fn reschedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
    ApiJson(body): ApiJson<RescheduleBody>,
) -> ApiResult<Json<AppointmentOut>> {
    let id = p.id.to_string();
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach(&mut tx, &caller, &id, Permission::ScheduleWrite).await?;
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
        let (start, end, busy) = (n.start, n.end(), n.busy_until());
        clear_expired_holds(&mut tx, &caller.clinic_id, start, busy, now).await?;
        if n.room.is_none() && n.ty.needs_room == 1 {
            n.room = Some(pick_room(&mut tx, &caller.clinic_id, &n.location, &id, start, busy, now).await?);
        }
        if let Some(c) = find_conflict(&mut tx, &caller.clinic_id, &id, &n.provider, n.room.as_deref(), &n.patient, start, end, busy, now).await? {
            return Err(BookError::Conflict(c));
        }
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
            return Err(conflict_error(&state, &caller.clinic_id, c, Some((&n, &id)), tz).await);
        }
    }
    let event = reached.event(Action::Modify).detail("reschedule");
    tx.audit(event).await?;
    let row = fetch(&mut tx, &caller.clinic_id, &id)
        .await?
        .ok_or_else(ApiError::internal)?;
    tx.commit().await?;
    Ok(Json(out(&state, row, may_see_names(&caller))))
}

// ---------------------------------------------------------------------------------------------
// Follow-up

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

async fn follow_up(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(p): ApiPath<IdPath>,
    ApiJson(body): ApiJson<FollowUpBody>,
) -> ApiResult<Response> {
    let id = p.id.to_string();
    let idem = idempotency_key(&headers)?.map(|k| {
        (
            k,
            request_hash(&format!("/api/v1/appointments/{id}/follow-up"), &body),
        )
    });
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach(&mut tx, &caller, &id, Permission::ScheduleWrite).await?;
    if let Some((key, hash)) = &idem
        && let Some(resp) = replay(&mut tx, &caller, key, hash).await?
    {
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
                step: state.config.scheduling.slot_step_min.max(1) * 60_000,
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

// ---------------------------------------------------------------------------------------------
// Recurring series

#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesBody {
    pub type_id: RecordId,
    pub location_id: LocationId,
    pub provider_id: UserId,
    pub patient_id: PatientId,
    pub room_id: Option<RecordId>,
    /// The first occurrence, local `YYYY-MM-DDTHH:MM` at the location; later ones keep its wall time.
    pub start: String,
    /// RFC 5545 RRULE, e.g. `FREQ=WEEKLY;INTERVAL=8;COUNT=7` (a diabetic foot check every 8 weeks).
    pub rrule: String,
    #[serde(default)]
    pub override_availability: bool,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct OccurrenceOut {
    pub start: String,
    /// `booked`, `conflict` or `outside_availability`.
    pub outcome: String,
    pub appointment_id: Option<String>,
    /// For a conflict: what is taken and when.
    pub conflict: Option<serde_json::Value>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct SeriesOut {
    pub series_id: String,
    pub booked: usize,
    pub conflicts: usize,
    pub occurrences: Vec<OccurrenceOut>,
}

/// The series' occurrences as instants (wall time kept in the location's zone).
fn expand(rrule: &str, tz: Tz, start_local: &str) -> ApiResult<Vec<Ms>> {
    let bad = |d: String| ApiError::unprocessable(ErrorCode::InvalidRrule, d);
    let rule = rrule.trim().trim_start_matches("RRULE:");
    if rule.contains('\n') || rule.to_ascii_uppercase().contains("DTSTART") {
        return Err(bad(
            "give only the RRULE value; the start comes from `start`".into(),
        ));
    }
    let parsed: rrule::RRule<rrule::Unvalidated> = rule
        .parse()
        .map_err(|e: rrule::RRuleError| bad(e.to_string()))?;
    let start = parse_instant(start_local, Some(tz))?;
    let dt_start = chrono::TimeZone::timestamp_millis_opt(&rrule::Tz::from(tz), start)
        .single()
        .ok_or_else(|| bad("invalid start".into()))?;
    let set = parsed.build(dt_start).map_err(|e| bad(e.to_string()))?;
    let result = set.all(MAX_OCCURRENCES + 1);
    if result.dates.len() > MAX_OCCURRENCES as usize {
        return Err(bad(format!(
            "a series may have at most {MAX_OCCURRENCES} occurrences; add COUNT or UNTIL"
        )));
    }
    let out: Vec<Ms> = result.dates.iter().map(|d| d.timestamp_millis()).collect();
    if out
        .last()
        .is_some_and(|last| last - start > 2 * 366 * 86_400_000)
    {
        return Err(bad("a series may span at most two years".into()));
    }
    Ok(out)
}

async fn series(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SeriesBody>,
) -> ApiResult<(StatusCode, Json<SeriesOut>)> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = tx
        .reach(
            &caller,
            Permission::ScheduleWrite,
            Target::at("appointment", &body.location_id),
        )
        .await?;
    let tz = location_tz(&mut tx, &caller.clinic_id, &body.location_id).await?;
    let starts = expand(&body.rrule, tz, &body.start)?;
    // Checks the type, provider, patient and room once, with the first occurrence.
    let (template, _) = prepare(
        &mut tx,
        &caller,
        &body.type_id.to_string(),
        &body.location_id,
        body.provider_id.as_str(),
        body.patient_id.as_str(),
        body.room_id.map(|r| r.to_string()),
        &time::local_rfc3339(tz, starts[0]),
        true,
        now,
    )
    .await?;
    let series_id = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO appointment_series (id, clinic_id, rrule, created_by, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&series_id)
        .bind(caller.clinic_id.as_str())
        .bind(body.rrule.trim())
        .bind(caller.user_id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let actor = caller.user_id.to_string();
    let may_override = body.override_availability && caller.may(Permission::ScheduleOverride);
    let mut occurrences = Vec::with_capacity(starts.len());
    for start in starts {
        let n = NewAppointment {
            start,
            series: Some(series_id.clone()),
            ty: template.ty.clone(),
            room: template.room.clone(),
            location: template.location.clone(),
            provider: template.provider.clone(),
            patient: template.patient.clone(),
            status: Status::Booked.as_str(),
            hold_expires_at: None,
            follow_up_of: None,
        };
        let local = time::local_rfc3339(tz, start);
        if !may_override
            && !within_availability(
                &mut tx,
                &caller.clinic_id,
                &n.location,
                tz,
                &n.ty,
                &n.provider,
                n.start,
                n.end(),
            )
            .await?
        {
            occurrences.push(OccurrenceOut {
                start: local,
                outcome: "outside_availability".into(),
                appointment_id: None,
                conflict: None,
            });
            continue;
        }
        // Each occurrence in a savepoint: a constraint violation undoes only that occurrence.
        let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
        match insert(&mut sp, &caller.clinic_id, &n, &actor, now).await {
            Ok(id) => {
                sp.commit().await?;
                occurrences.push(OccurrenceOut {
                    start: local,
                    outcome: "booked".into(),
                    appointment_id: Some(id),
                    conflict: None,
                });
            }
            Err(BookError::Conflict(c)) => {
                sp.rollback().await?;
                let c = match c.span {
                    Some(_) => c,
                    None => find_conflict(
                        &mut tx,
                        &caller.clinic_id,
                        "",
                        &n.provider,
                        n.room.as_deref(),
                        &n.patient,
                        n.start,
                        n.end(),
                        n.busy_until(),
                        now,
                    )
                    .await?
                    .unwrap_or(c),
                };
                occurrences.push(OccurrenceOut {
                    start: local,
                    outcome: "conflict".into(),
                    appointment_id: None,
                    conflict: Some(serde_json::json!({
                        "with": c.with,
                        "start": c.span.map(|s| time::local_rfc3339(tz, s.0)),
                        "end": c.span.map(|s| time::local_rfc3339(tz, s.1)),
                    })),
                });
            }
            Err(BookError::Api(e)) => return Err(e),
        }
    }
    let booked = occurrences.iter().filter(|o| o.outcome == "booked").count();
    let conflicts = occurrences
        .iter()
        .filter(|o| o.outcome == "conflict")
        .count();
    for o in occurrences.iter().filter_map(|o| o.appointment_id.as_ref()) {
        let event = reached
            .event_for(Action::Create, "appointment")
            .resource(o)
            .patient(body.patient_id.as_str())
            .detail(format!("series={series_id}"));
        tx.audit(event).await?;
    }
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(SeriesOut {
            series_id,
            booked,
            conflicts,
            occurrences,
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Joining a telemedicine appointment

async fn join(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<crate::domains::consults::LinkOut>> {
    let id = p.id.to_string();
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach(&mut tx, &caller, &id, Permission::VisitsJoin).await?;
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

// ---------------------------------------------------------------------------------------------
// Patients: their own appointments, holds and bookings

async fn list_own(
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

async fn hold(
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

async fn book_own(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OwnBookBody>,
) -> ApiResult<Response> {
    let idem =
        idempotency_key(&headers)?.map(|k| (k, request_hash("/api/v1/me/appointments", &body)));
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    if let Some((key, hash)) = &idem
        && let Some(resp) = replay(&mut tx, &caller, key, hash).await?
    {
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
            let row = fetch(&mut tx, &caller.clinic_id, &hold)
                .await?
                .filter(|r| {
                    r.patient_id == patient && matches!(r.status.as_str(), "held" | "expired")
                })
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
                .bind(&hold)
                .execute(&mut *tx)
                .await?;
            if row.modality == "telemedicine" {
                let consult = uuid::Uuid::new_v4().to_string();
                sqlx::query(
                    "INSERT INTO consults (id, clinic_id, location_id, patient_id, created_by, status, created_at, appointment_id) VALUES ($1, $2, $3, $4, $5, 'open', $6, $7)",
                )
                .bind(&consult)
                .bind(caller.clinic_id.as_str())
                .bind(&row.location_id)
                .bind(&patient)
                .bind(caller.user_id.as_str())
                .bind(now)
                .bind(&hold)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE appointments SET consult_id = $1 WHERE id = $2")
                    .bind(&consult)
                    .bind(&hold)
                    .execute(&mut *tx)
                    .await?;
            }
            history(
                &mut tx,
                &caller.clinic_id,
                &hold,
                caller.user_id.as_str(),
                Some("held"),
                "booked",
                (
                    row.starts_at,
                    row.ends_at,
                    &row.provider_id,
                    row.room_id.as_deref(),
                ),
                now,
            )
            .await?;
            let event = caller
                .event(Action::Modify, "appointment")
                .resource(&hold)
                .patient(&patient)
                .detail("hold -> booked");
            tx.audit(event).await?;
            let row = fetch(&mut tx, &caller.clinic_id, &hold)
                .await?
                .ok_or_else(ApiError::internal)?;
            let body =
                serde_json::to_value(out(&state, row, false)).map_err(|_| ApiError::internal())?;
            if let Some((key, hash)) = &idem {
                remember(&mut tx, &caller, key, hash, StatusCode::CREATED, &body, now).await?;
            }
            tx.commit().await?;
            Ok((StatusCode::CREATED, Json(body)).into_response())
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

async fn cancel_own(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<Json<AppointmentOut>> {
    let id = p.id.to_string();
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach(&mut tx, &caller, &id, Permission::SelfSchedule).await?;
    if row.starts_at <= now {
        return Err(ApiError::conflict(
            ErrorCode::AlreadyStarted,
            "call the practice to change an appointment that has started",
        ));
    }
    transition(&state, &mut tx, &caller, &row, &reached, Status::Cancelled).await?;
    let row = fetch(&mut tx, &caller.clinic_id, &id)
        .await?
        .ok_or_else(ApiError::internal)?;
    tx.commit().await?;
    Ok(Json(out(&state, row, false)))
}
