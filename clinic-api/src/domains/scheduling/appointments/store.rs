//! The booking core: what a new appointment needs, the look for an overlapping active appointment
//! of its provider, room and patient, and the writes (the appointment, its consult, its status
//! history). Every function runs on the caller's connection, inside its transaction (or a
//! savepoint of it), so the look and the write are one.

use chrono_tz::Tz;
use sqlx::AnyConnection;

use super::super::location::active_rooms;
use super::super::status;
use super::super::time::{self, Ms};
use super::super::types::TypeRow;
use crate::platform::error::{ApiError, ErrorCode, exclusion_violated};
use crate::platform::ids::{ClinicId, LocationId};
use crate::platform::state::AppState;

/// What a new appointment needs once checked.
pub(super) struct NewAppointment {
    pub(super) location: LocationId,
    pub(super) ty: TypeRow,
    pub(super) provider: String,
    pub(super) patient: String,
    pub(super) room: Option<String>,
    pub(super) start: Ms,
    pub(super) status: &'static str,
    pub(super) hold_expires_at: Option<Ms>,
    pub(super) series: Option<String>,
    pub(super) follow_up_of: Option<String>,
}

impl NewAppointment {
    pub(super) fn end(&self) -> Ms {
        self.start + self.ty.duration()
    }
    pub(super) fn busy_until(&self) -> Ms {
        self.end() + self.ty.buffer()
    }
}

/// Which resource is taken, and when (if known).
#[derive(Clone, Debug)]
pub(super) struct Conflict {
    pub(super) with: &'static str,
    pub(super) span: Option<(Ms, Ms)>,
}

pub(super) enum BookError {
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

/// The first active appointment (other than `exclude`) whose `column` is `value` and that holds
/// it somewhere in `[start, until)`.
#[allow(clippy::too_many_arguments)]
async fn first_overlap(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    exclude: &str,
    column: &str,
    value: &str,
    until_column: &str,
    start: Ms,
    until: Ms,
    now: Ms,
) -> sqlx::Result<Option<(Ms, Ms)>> {
    let active = status::active_sql().replace("$NOW", "$6");
    sqlx::query_as(&format!(
        "SELECT starts_at, ends_at FROM appointments WHERE clinic_id = $1 AND {column} = $2 \
         AND starts_at < $4 AND {until_column} > $3 AND id <> $5 AND {active} ORDER BY starts_at LIMIT 1"
    ))
    .bind(clinic.as_str())
    .bind(value)
    .bind(start)
    .bind(until)
    .bind(exclude)
    .bind(now)
    .fetch_optional(conn)
    .await
}

/// The first active appointment (other than `exclude`) that overlaps `n` on provider, `room` or
/// patient. The provider and room stay taken to the buffer's end, the patient to the end.
pub(super) async fn find_conflict(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    exclude: &str,
    n: &NewAppointment,
    room: Option<&str>,
    now: Ms,
) -> sqlx::Result<Option<Conflict>> {
    let checks = [
        (
            "provider",
            "provider_id",
            Some(n.provider.as_str()),
            "busy_until",
            n.busy_until(),
        ),
        ("room", "room_id", room, "busy_until", n.busy_until()),
        (
            "patient",
            "patient_id",
            Some(n.patient.as_str()),
            "ends_at",
            n.end(),
        ),
    ];
    for (with, column, value, until_column, until) in checks {
        let Some(value) = value else { continue };
        let found = first_overlap(
            conn,
            clinic,
            exclude,
            column,
            value,
            until_column,
            n.start,
            until,
            now,
        )
        .await?;
        if let Some(span) = found {
            return Ok(Some(Conflict {
                with,
                span: Some(span),
            }));
        }
    }
    Ok(None)
}

/// A conflict with its time: as found, or (a PostgreSQL constraint caught it, without one) looked
/// up again.
pub(super) async fn with_span(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    c: Conflict,
    n: &NewAppointment,
    exclude: &str,
    now: Ms,
) -> sqlx::Result<Conflict> {
    if c.span.is_some() {
        return Ok(c);
    }
    let found = find_conflict(conn, clinic, exclude, n, n.room.as_deref(), now).await?;
    Ok(found.unwrap_or(c))
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

/// A free room of the location for `n`, or the conflict of the first room.
async fn pick_room(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    n: &NewAppointment,
    exclude: &str,
    now: Ms,
) -> Result<String, BookError> {
    let mut first = None;
    for room in active_rooms(conn, clinic, &n.location).await? {
        let (start, until) = (n.start, n.busy_until());
        let found = first_overlap(
            conn,
            clinic,
            exclude,
            "room_id",
            &room,
            "busy_until",
            start,
            until,
            now,
        )
        .await?;
        match found {
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

/// Takes `n`'s time for the appointment `id` (new, or being moved): clears expired holds in the
/// way, picks a free room where the type needs one and none was chosen, and refuses any overlap.
/// Returns the room.
pub(super) async fn claim(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    id: &str,
    n: &NewAppointment,
    now: Ms,
) -> Result<Option<String>, BookError> {
    clear_expired_holds(conn, clinic, n.start, n.busy_until(), now).await?;
    let room = match (&n.room, n.ty.needs_room == 1) {
        (Some(r), _) => Some(r.clone()),
        (None, true) => Some(pick_room(conn, clinic, n, id, now).await?),
        (None, false) => None,
    };
    if let Some(c) = find_conflict(conn, clinic, id, n, room.as_deref(), now).await? {
        return Err(BookError::Conflict(c));
    }
    Ok(room)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn history(
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

/// Creates the consult of a telemedicine appointment (booked, or a hold being confirmed).
pub(super) async fn create_consult(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    appt: &str,
    location: &str,
    patient: &str,
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
    .bind(location)
    .bind(patient)
    .bind(actor)
    .bind(now)
    .bind(appt)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Inserts a checked appointment (and its consult, and its first history entry).
pub(super) async fn insert(
    conn: &mut AnyConnection,
    clinic: &ClinicId,
    n: &NewAppointment,
    actor: &str,
    now: Ms,
) -> Result<String, BookError> {
    let id = uuid::Uuid::new_v4().to_string();
    let room = claim(conn, clinic, &id, n, now).await?;
    // The consult row first: the appointment references it.
    let consult = if n.ty.modality == "telemedicine" && n.status != "held" {
        let (location, patient) = (n.location.as_str(), n.patient.as_str());
        Some(create_consult(conn, clinic, &id, location, patient, actor, now).await?)
    } else {
        None
    };
    let (start, end, busy) = (n.start, n.end(), n.busy_until());
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
pub(super) async fn conflict_error(
    state: &AppState,
    clinic: &ClinicId,
    mut c: Conflict,
    n: &NewAppointment,
    exclude: &str,
    tz: Tz,
) -> ApiError {
    if c.span.is_none()
        && let Ok(mut tx) = state.tx(clinic).await
    {
        let now = state.clock.now_ms();
        if let Ok(found) = with_span(&mut tx, clinic, c.clone(), n, exclude, now).await {
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
