//! Appointments: book, hold, reschedule, check in, no-show, complete, cancel, follow-up, recurring
//! series, and joining a telemedicine appointment's consult.
//!
//! Double booking is impossible, not merely warned about: every write runs in one transaction
//! that first looks for an overlapping active appointment of the provider, the room and the
//! patient. On SQLite write transactions are serialized (`BEGIN IMMEDIATE`), so the look and
//! the write cannot interleave with another booking; on PostgreSQL three exclusion constraints
//! (btree_gist over time ranges) refuse an overlap that a concurrent transaction committed after
//! our look, and the 23P01 becomes the same 409 with the conflicting appointment's time.
//!
//! This module is the routes. `store` is the booking core, `row` an appointment as stored and as
//! shown (and the reads); the handlers: staff booking and follow-ups (`booking`), status changes
//! and rescheduling (`changes`), recurring series (`series`), joining a telemedicine appointment
//! (`join`) and the patient's own (`own`). Routes that create one replay their answer for the
//! same `Idempotency-Key` (`idempotency`).

mod booking;
mod changes;
mod idempotency;
mod join;
mod own;
mod row;
mod series;
mod store;

use axum::extract::State;
use axum::http::{Method, StatusCode};

use super::status::Status;
use crate::platform::authz::{Caller, Permission, Policy, Routes};
use crate::platform::http::ApiPath;
use crate::platform::openapi::Content;
use crate::platform::state::AppState;
use booking::{BookBody, FollowUpBody, book, follow_up};
use changes::{RescheduleBody, change_status, reschedule};
use join::join;
use own::{OwnBookBody, SlotChoice, book_own, cancel_own, hold, list_own};
use row::{AppointmentOut, IdPath, ListQuery, get, list};
use series::{SeriesBody, series};

/// The staff's status changes: a route each, one handler over the status it sets.
const STATUS_CHANGES: [(&str, Status, &str); 4] = [
    (
        "/api/v1/appointments/{id}/check-in",
        Status::CheckedIn,
        "Check a patient in",
    ),
    (
        "/api/v1/appointments/{id}/no-show",
        Status::NoShow,
        "Mark a no-show",
    ),
    (
        "/api/v1/appointments/{id}/complete",
        Status::Completed,
        "Complete an appointment (schedules its type's follow-up messages)",
    ),
    (
        "/api/v1/appointments/{id}/cancel",
        Status::Cancelled,
        "Cancel an appointment",
    ),
];

pub fn routes() -> Routes {
    let routes = Routes::new("appointments")
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
        .body::<RescheduleBody>();
    let routes = STATUS_CHANGES
        .into_iter()
        .fold(routes, |routes, (path, to, summary)| {
            routes.add(
                Method::POST,
                path,
                Policy::perm(Permission::ScheduleWrite),
                summary,
                move |State(state): State<AppState>,
                      caller: Caller,
                      ApiPath(p): ApiPath<IdPath>| {
                    change_status(state, caller, p, to)
                },
            )
        });
    routes
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
