//! The browser pages in `web/`, embedded in the binary so `clinic serve` needs no files beside it.

use axum::http::{Method, header};
use axum::response::IntoResponse;

use crate::platform::authz::{Policy, Routes};

const INDEX: &str = include_str!("../../../web/index.html");
const CONSULT_JOIN: &str = include_str!("../../../web/consult-join.html");
const CONSULT_PROVIDER: &str = include_str!("../../../web/consult-provider.html");
const PHOTOS: &str = include_str!("../../../web/photos.html");
const SCHEDULE: &str = include_str!("../../../web/schedule.html");
const APPOINTMENTS: &str = include_str!("../../../web/appointments.html");
/// The consult pages' shared client (signaling, media, reconnect); plain ES2017, no build step.
const CONSULT_JS: &str = include_str!("../../../web/consult.js");
/// The scheduling pages' shared helpers (dates, wall times, the API client); plain ES2017.
const SCHEDULING_JS: &str = include_str!("../../../web/scheduling.js");

/// The pages' Content-Security-Policy: same-origin only, no framing. The pages are single files
/// with inline script and style (no build step), hence 'unsafe-inline' for those two. The consult
/// pages open the signaling WebSocket (`ws:`/`wss:`: older Safari does not match them with 'self')
/// and play camera and remote streams.
const CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self' ws: wss:; media-src 'self' blob:; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

pub fn routes() -> Routes {
    Routes::new("web")
        .add(Method::GET, "/", Policy::PUBLIC, "The sign-in page", index)
        .add(
            Method::GET,
            "/consult/join",
            Policy::PUBLIC,
            "The video consult page for patients, caregivers and interpreters (code in the fragment)",
            consult_join,
        )
        .add(
            Method::GET,
            "/consult/provider",
            Policy::PUBLIC,
            "The video consult page for providers (code in the fragment, or start one when signed in)",
            consult_provider,
        )
        .add(
            Method::GET,
            "/photos",
            Policy::PUBLIC,
            "The patient page for sending wound photos (signs in through `/`)",
            photos,
        )
        .add(
            Method::GET,
            "/schedule",
            Policy::PUBLIC,
            "The staff scheduling page: a location's day, booking, check-in, joining video visits (signs in through `/`)",
            schedule,
        )
        .add(
            Method::GET,
            "/appointments",
            Policy::PUBLIC,
            "The patient page for appointments: booking, joining video visits, messages (signs in through `/`)",
            appointments,
        )
        .add(
            Method::GET,
            "/consult/consult.js",
            Policy::PUBLIC,
            "The consult pages' script",
            consult_js,
        )
        .add(
            Method::GET,
            "/schedule/scheduling.js",
            Policy::PUBLIC,
            "The scheduling pages' shared script",
            scheduling_js,
        )
}

fn page(body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
}

async fn index() -> impl IntoResponse {
    page(INDEX)
}

async fn consult_join() -> impl IntoResponse {
    page(CONSULT_JOIN)
}

async fn consult_provider() -> impl IntoResponse {
    page(CONSULT_PROVIDER)
}

async fn photos() -> impl IntoResponse {
    page(PHOTOS)
}

async fn schedule() -> impl IntoResponse {
    page(SCHEDULE)
}

async fn appointments() -> impl IntoResponse {
    page(APPOINTMENTS)
}

async fn consult_js() -> impl IntoResponse {
    script(CONSULT_JS)
}

async fn scheduling_js() -> impl IntoResponse {
    script(SCHEDULING_JS)
}

fn script(body: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
}
