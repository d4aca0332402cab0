//! Recurring series from an RFC 5545 RRULE: every occurrence keeps the first one's wall time in
//! the location's zone, is stored as its own appointment, and is booked or reported (a conflict,
//! or outside availability) on its own.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::super::location::{location_tz, parse_instant, reach_at};
use super::super::slots::within_availability;
use super::super::status::Status;
use super::super::time::{self, Ms};
use super::booking::{prepare, reach_patient};
use super::store::{BookError, NewAppointment, insert, with_span};
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission};
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::ApiJson;
use crate::platform::ids::{LocationId, PatientId, RecordId, UserId};
use crate::platform::state::AppState;

/// Most occurrences one series may create (two years of weekly visits).
const MAX_OCCURRENCES: u16 = 104;

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

pub(super) async fn series(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SeriesBody>,
) -> ApiResult<(StatusCode, Json<SeriesOut>)> {
    let now = state.clock.now_ms();
    let (mut tx, reached) = reach_at(
        &state,
        &caller,
        Permission::ScheduleWrite,
        "appointment",
        &body.location_id,
    )
    .await?;
    let reached = reach_patient(&mut tx, &caller, &body.patient_id, reached).await?;
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
                let c = with_span(&mut tx, &caller.clinic_id, c, &n, "", now).await?;
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
