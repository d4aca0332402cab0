//! Scheduling across locations: opening hours, rooms, appointment types, provider availability
//! (weekly templates with a modality preference per block, plus time off and extra hours), and
//! open slots computed from them in the location's local time. Booking lives in
//! [`appointments`]; the follow-up messages it schedules in [`crate::domains::outbox`].
//!
//! This module is the routes; each resource is a module of its own: `location` (a location's
//! zone, opening hours, rooms and providers), `types`, `availability` and `slots`. [`time`] and
//! [`status`] are pure.

pub mod appointments;
mod availability;
mod location;
mod slots;
pub mod status;
pub mod time;
mod types;

use axum::http::{Method, StatusCode};

use crate::platform::authz::{Permission, Policy, Routes};
use availability::{
    AvailabilityQuery, CreateException, create_block, create_exception, delete_block,
    get_availability,
};
use location::{
    CreateRoom, HoursBody, LocationQuery, create_room, get_hours, list_rooms, put_hours,
};
use slots::{SlotQuery, own_slots, staff_slots};
use types::{create_type, list_own_types, list_types};

pub use availability::{CreateBlock, insert_block};
pub(crate) use location::open_default_hours;
pub use types::{CreateType, FollowupRule, insert_type};

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
