//! Scheduling across locations: opening hours, rooms, appointment types, provider availability
//! (weekly templates with a modality preference per block, plus time off and extra hours), and
//! open slots computed from them in the location's local time. Booking lives in
//! [`appointments`]; the follow-up messages it schedules in [`crate::domains::outbox`].

pub mod appointments;
pub mod status;
pub mod time;

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use chrono::{Duration, NaiveDate};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission, Policy, Role, Routes};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode, OnConstraint};
use crate::platform::http::{ApiJson, ApiPath, ApiQuery};
use crate::platform::ids::{ClinicId, LocationId, RecordId, UserId};
use crate::platform::state::AppState;
use crate::platform::tx::Target;
use time::{Block, Exception, Ms};

/// Longest range a slot search may cover.
const MAX_SEARCH_DAYS: i64 = 62;

pub fn routes() -> Routes {
    Routes::new("scheduling")
        .add(
            Method::GET,
            "/api/v1/locations/{id}/hours",
            Policy::perm(Permission::LocationsRead),
            "A location's weekly opening hours (local time)",
            get_hours,
        )
        .add(
            Method::PUT,
            "/api/v1/locations/{id}/hours",
            Policy::perm(Permission::ScheduleManage),
            "Replace a location's weekly opening hours",
            put_hours,
        )
        .body::<HoursBody>()
        .add(
            Method::GET,
            "/api/v1/rooms",
            Policy::perm(Permission::ScheduleRead),
            "Rooms and chairs of a location",
            list_rooms,
        )
        .query::<LocationQuery>()
        .add(
            Method::POST,
            "/api/v1/rooms",
            Policy::perm(Permission::ScheduleManage),
            "Add a room or chair to a location",
            create_room,
        )
        .body::<CreateRoom>()
        .status(StatusCode::CREATED)
        .add(
            Method::GET,
            "/api/v1/appointment-types",
            Policy::perm(Permission::ScheduleRead),
            "Appointment types",
            list_types,
        )
        .add(
            Method::POST,
            "/api/v1/appointment-types",
            Policy::perm(Permission::ScheduleManage),
            "Add an appointment type",
            create_type,
        )
        .body::<CreateType>()
        .status(StatusCode::CREATED)
        .add(
            Method::GET,
            "/api/v1/me/appointment-types",
            Policy::perm(Permission::SelfSchedule),
            "Appointment types a patient may book",
            list_own_types,
        )
        .add(
            Method::GET,
            "/api/v1/availability",
            Policy::perm(Permission::ScheduleRead),
            "A provider's weekly template and exceptions at a location",
            get_availability,
        )
        .query::<AvailabilityQuery>()
        .add(
            Method::POST,
            "/api/v1/availability",
            Policy::perm(Permission::ScheduleManage),
            "Add a weekly template block for a provider at a location",
            create_block,
        )
        .body::<CreateBlock>()
        .status(StatusCode::CREATED)
        .add(
            Method::DELETE,
            "/api/v1/availability/{id}",
            Policy::perm(Permission::ScheduleManage),
            "Remove a weekly template block",
            delete_block,
        )
        .status(StatusCode::NO_CONTENT)
        .add(
            Method::POST,
            "/api/v1/availability-exceptions",
            Policy::perm(Permission::ScheduleManage),
            "Add time off or extra hours for a provider",
            create_exception,
        )
        .body::<CreateException>()
        .status(StatusCode::CREATED)
        .add(
            Method::GET,
            "/api/v1/slots",
            Policy::perm(Permission::ScheduleRead),
            "Open slots for an appointment type at a location",
            staff_slots,
        )
        .query::<SlotQuery>()
        .add(
            Method::GET,
            "/api/v1/me/slots",
            Policy::perm(Permission::SelfSchedule),
            "Open slots a patient may book",
            own_slots,
        )
        .query::<SlotQuery>()
        .merge(appointments::routes())
}

// ---------------------------------------------------------------------------------------------
// Shared loaders

#[derive(sqlx::FromRow, Clone, Debug)]
pub(crate) struct TypeRow {
    pub id: String,
    pub name: String,
    pub duration_min: i64,
    pub buffer_min: i64,
    pub modality: String,
    pub needs_room: i64,
    pub bookable_by: String,
    pub followups: String,
}

impl TypeRow {
    pub fn bookable_by(&self, role: Role) -> bool {
        self.bookable_by.split(',').any(|r| r == role.as_str())
    }
    pub fn duration(&self) -> Ms {
        self.duration_min * 60_000
    }
    pub fn buffer(&self) -> Ms {
        self.buffer_min * 60_000
    }
    pub fn followup_rules(&self) -> Vec<FollowupRule> {
        serde_json::from_str(&self.followups).unwrap_or_default()
    }
}

const TYPE_COLUMNS: &str =
    "id, name, duration_min, buffer_min, modality, needs_room, bookable_by, followups";

/// A message the practice sends some days after an appointment of a type is completed.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowupRule {
    /// Days after the appointment (1 to 365).
    pub after_days: i64,
    /// `checkin` (how are you doing) or `photo_prompt` (please upload a wound photo).
    pub kind: String,
}

pub(crate) async fn load_type(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    id: &str,
) -> ApiResult<TypeRow> {
    let row: Option<TypeRow> = sqlx::query_as(&format!(
        "SELECT {TYPE_COLUMNS} FROM appointment_types WHERE id = $1 AND clinic_id = $2 AND disabled_at IS NULL"
    ))
    .bind(id)
    .bind(clinic.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    row.ok_or_else(|| {
        ApiError::unprocessable(
            ErrorCode::UnknownType,
            "that appointment type does not exist",
        )
    })
}

pub(crate) async fn location_tz(
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

/// The provider's display name, if they are an active provider assigned to `location`.
pub(crate) async fn provider_at(
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

/// Active providers assigned to a location.
async fn providers_at(
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

async fn load_templates(
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

async fn load_exceptions(
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

async fn load_hours(
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
    let rooms: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM rooms WHERE clinic_id = $1 AND location_id = $2 AND disabled_at IS NULL ORDER BY name, id",
    )
    .bind(clinic.as_str())
    .bind(location.as_str())
    .fetch_all(&mut **tx)
    .await?;
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
        .map(|(id,)| {
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
pub(crate) struct Slot {
    pub provider_id: String,
    pub provider_name: String,
    pub start: Ms,
    pub room_id: Option<String>,
}

/// Everything a slot search needs.
pub(crate) struct Search<'a> {
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

pub(crate) async fn find_slots(tx: &mut TenantTx, s: &Search<'_>) -> ApiResult<Vec<Slot>> {
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
pub(crate) async fn within_availability(
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

// ---------------------------------------------------------------------------------------------
// Opening hours

#[derive(Deserialize)]
struct IdPath {
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
pub(crate) const DEFAULT_HOURS: [(i64, i64, i64); 5] = [
    (1, 480, 1020),
    (2, 480, 1020),
    (3, 480, 1020),
    (4, 480, 1020),
    (5, 480, 1020),
];

pub(crate) async fn set_hours(
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

async fn get_hours(
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

async fn put_hours(
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

// ---------------------------------------------------------------------------------------------
// Rooms

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

async fn list_rooms(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<LocationQuery>,
) -> ApiResult<Json<Vec<RoomOut>>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    tx.reach(
        &caller,
        Permission::ScheduleRead,
        Target::at("room", &q.location_id),
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

async fn create_room(
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

// ---------------------------------------------------------------------------------------------
// Appointment types

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateType {
    pub name: String,
    pub duration_min: i64,
    #[serde(default)]
    pub buffer_min: i64,
    /// `in_person` or `telemedicine`.
    pub modality: String,
    /// Whether a room or chair must be free (in-person care).
    #[serde(default)]
    pub needs_room: bool,
    /// Roles that may book it, e.g. `["front_desk", "provider", "patient"]`.
    pub bookable_by: Vec<String>,
    /// Messages after completion, e.g. post-op check-ins at days 3, 7 and 14.
    #[serde(default)]
    pub followups: Vec<FollowupRule>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct TypeOut {
    pub id: String,
    pub name: String,
    pub duration_min: i64,
    pub buffer_min: i64,
    pub modality: String,
    pub needs_room: bool,
    pub bookable_by: Vec<String>,
    pub followups: Vec<FollowupRule>,
}

impl From<TypeRow> for TypeOut {
    fn from(r: TypeRow) -> Self {
        let followups = r.followup_rules();
        Self {
            bookable_by: r
                .bookable_by
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            followups,
            id: r.id,
            name: r.name,
            duration_min: r.duration_min,
            buffer_min: r.buffer_min,
            modality: r.modality,
            needs_room: r.needs_room == 1,
        }
    }
}

pub(crate) const FOLLOWUP_KINDS: [&str; 2] = ["checkin", "photo_prompt"];

/// Inserts an appointment type after checking it.
pub async fn insert_type(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    t: &CreateType,
    now: Ms,
) -> ApiResult<String> {
    let name = t.name.trim();
    let bad = |detail: &str| ApiError::unprocessable(ErrorCode::InvalidBody, detail.to_string());
    if name.is_empty() || name.chars().count() > 100 {
        return Err(bad("name must be 1 to 100 characters"));
    }
    if !(5..=480).contains(&t.duration_min) || !(0..=120).contains(&t.buffer_min) {
        return Err(bad("duration_min must be 5 to 480 and buffer_min 0 to 120"));
    }
    if t.modality != "in_person" && t.modality != "telemedicine" {
        return Err(bad("modality must be in_person or telemedicine"));
    }
    if t.needs_room && t.modality != "in_person" {
        return Err(bad("only in-person types need a room"));
    }
    if t.bookable_by.is_empty() || t.bookable_by.iter().any(|r| Role::parse(r).is_none()) {
        return Err(bad(
            "bookable_by must list roles such as front_desk, provider or patient",
        ));
    }
    if t.followups.len() > 20
        || t.followups.iter().any(|f| {
            !(1..=365).contains(&f.after_days) || !FOLLOWUP_KINDS.contains(&f.kind.as_str())
        })
    {
        return Err(bad(
            "followups need after_days 1 to 365 and kind checkin or photo_prompt",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO appointment_types (id, clinic_id, name, duration_min, buffer_min, modality, needs_room, bookable_by, followups, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(clinic.as_str())
    .bind(name)
    .bind(t.duration_min)
    .bind(t.buffer_min)
    .bind(&t.modality)
    .bind(i64::from(t.needs_room))
    .bind(t.bookable_by.join(","))
    .bind(serde_json::to_string(&t.followups).map_err(|_| ApiError::internal())?)
    .bind(now)
    .execute(&mut **tx)
    .await
    .on_unique(|| ApiError::conflict(ErrorCode::TypeExists, "an appointment type with that name exists"))?;
    Ok(id)
}

async fn all_types(state: &AppState, clinic: &ClinicId) -> ApiResult<Vec<TypeRow>> {
    let mut tx = state.tx(clinic).await?;
    let rows: Vec<TypeRow> = sqlx::query_as(&format!(
        "SELECT {TYPE_COLUMNS} FROM appointment_types WHERE clinic_id = $1 AND disabled_at IS NULL ORDER BY name"
    ))
    .bind(clinic.as_str())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

async fn list_types(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TypeOut>>> {
    let rows = all_types(&state, &caller.clinic_id).await?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

async fn list_own_types(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TypeOut>>> {
    let rows = all_types(&state, &caller.clinic_id).await?;
    Ok(Json(
        rows.into_iter()
            .filter(|t| t.bookable_by(caller.role))
            .map(Into::into)
            .collect(),
    ))
}

async fn create_type(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateType>,
) -> ApiResult<(StatusCode, Json<TypeOut>)> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let id = insert_type(&mut tx, &caller.clinic_id, &body, now).await?;
    tx.audit(
        caller
            .event(Action::Create, "appointment_type")
            .resource(&id),
    )
    .await?;
    let row = load_type(&mut tx, &caller.clinic_id, &id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

// ---------------------------------------------------------------------------------------------
// Availability

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

/// An instant from RFC 3339 (with offset), or from a local wall time in `tz`.
pub(crate) fn parse_instant(s: &str, tz: Option<Tz>) -> ApiResult<Ms> {
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

async fn get_availability(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AvailabilityQuery>,
) -> ApiResult<Json<AvailabilityOut>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    tx.reach(
        &caller,
        Permission::ScheduleRead,
        Target::at("availability", &q.location_id),
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

async fn create_block(
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
struct BlockPath {
    id: RecordId,
}

async fn delete_block(
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

async fn create_exception(
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
        None => None,
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

// ---------------------------------------------------------------------------------------------
// Slots

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
        step: state.config.scheduling.slot_step_min.max(1) * 60_000,
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

async fn staff_slots(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SlotQuery>,
) -> ApiResult<Json<Vec<SlotOut>>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    tx.reach(
        &caller,
        Permission::ScheduleRead,
        Target::at("slots", &q.location_id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(slots(&state, &caller, &q).await?))
}

async fn own_slots(
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
