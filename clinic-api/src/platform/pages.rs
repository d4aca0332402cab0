//! The browser pages in `web/`, embedded in the binary so `clinic serve` needs no files beside it.

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::platform::authz::{Policy, Routes};
use crate::platform::openapi::Content;

const HTML: Content = Content::Media("text/html; charset=utf-8");
const SCRIPT: Content = Content::Media("text/javascript; charset=utf-8");

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
        .responds(StatusCode::OK, HTML)
        .add(
            Method::GET,
            "/consult/join",
            Policy::PUBLIC,
            "The video consult page for patients, caregivers and interpreters (code in the fragment)",
            consult_join,
        )
        .responds(StatusCode::OK, HTML)
        .add(
            Method::GET,
            "/consult/provider",
            Policy::PUBLIC,
            "The video consult page for providers (code in the fragment, or start one when signed in)",
            consult_provider,
        )
        .responds(StatusCode::OK, HTML)
        .add(
            Method::GET,
            "/photos",
            Policy::PUBLIC,
            "The patient page for sending wound photos (signs in through `/`)",
            photos,
        )
        .responds(StatusCode::OK, HTML)
        .add(
            Method::GET,
            "/schedule",
            Policy::PUBLIC,
            "The staff scheduling page: a location's day, booking, check-in, joining video visits (signs in through `/`)",
            schedule,
        )
        .responds(StatusCode::OK, HTML)
        .add(
            Method::GET,
            "/appointments",
            Policy::PUBLIC,
            "The patient page for appointments: booking, joining video visits, messages (signs in through `/`)",
            appointments,
        )
        .responds(StatusCode::OK, HTML)
        .add(
            Method::GET,
            "/consult/consult.js",
            Policy::PUBLIC,
            "The consult pages' script",
            consult_js,
        )
        .responds(StatusCode::OK, SCRIPT)
        .add(
            Method::GET,
            "/schedule/scheduling.js",
            Policy::PUBLIC,
            "The scheduling pages' shared script",
            scheduling_js,
        )
        .responds(StatusCode::OK, SCRIPT)
}

fn page(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    page(INDEX)
}

async fn consult_join() -> Response {
    page(CONSULT_JOIN)
}

async fn consult_provider() -> Response {
    page(CONSULT_PROVIDER)
}

async fn photos() -> Response {
    page(PHOTOS)
}

async fn schedule() -> Response {
    page(SCHEDULE)
}

async fn appointments() -> Response {
    page(APPOINTMENTS)
}

async fn consult_js() -> Response {
    script(CONSULT_JS)
}

async fn scheduling_js() -> Response {
    script(SCHEDULING_JS)
}

fn script(body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
        .into_response()
}
