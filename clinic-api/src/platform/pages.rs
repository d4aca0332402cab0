//! The browser pages in `web/`, embedded in the binary so `clinic serve` needs no files beside it.
//!
//! Each page is HTML only: its script is an ES module and its style the one stylesheet, both
//! served from here, so the CSP allows no inline script or style at all.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::platform::authz::{Policy, Routes};
use crate::platform::openapi::Content;

/// The pages' Content-Security-Policy: nothing but this origin's own files. No inline script or
/// style is allowed, so an injected `<script>`, `on…=` handler or `style=` does not run. The
/// pages fetch and open the signaling WebSocket only to this origin: CSP Level 3 matches `ws:` and
/// `wss:` of the same host with 'self'; a browser without that (Chrome before 70, Safari before
/// WebKit bug 235873 was fixed) refuses the socket rather than letting any host through. Images
/// are ours (thumbnails) or `data:` (the empty favicon). Camera and remote streams play through
/// `srcObject`, which loads no URL, so media needs no source. No framing, no `<base>`, and forms
/// post only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// What a file in `web/` is, which decides its Content-Type (and whether it gets the CSP).
#[derive(Clone, Copy)]
enum Kind {
    Page,
    Script,
    Style,
}

/// One embedded file and where it is served.
struct File {
    path: &'static str,
    kind: Kind,
    summary: &'static str,
    body: &'static str,
}

const FILES: &[File] = &[
    File {
        path: "/",
        kind: Kind::Page,
        summary: "The sign-in page",
        body: include_str!("../../../web/index.html"),
    },
    File {
        path: "/consult/join",
        kind: Kind::Page,
        summary: "The video consult page for patients, caregivers and interpreters (code in the fragment)",
        body: include_str!("../../../web/consult-join.html"),
    },
    File {
        path: "/consult/provider",
        kind: Kind::Page,
        summary: "The video consult page for providers (code in the fragment, or start one when signed in)",
        body: include_str!("../../../web/consult-provider.html"),
    },
    File {
        path: "/photos",
        kind: Kind::Page,
        summary: "The patient page for sending wound photos (signs in through `/`)",
        body: include_str!("../../../web/photos.html"),
    },
    File {
        path: "/schedule",
        kind: Kind::Page,
        summary: "The staff scheduling page: a location's day, booking, check-in, joining video visits (signs in through `/`)",
        body: include_str!("../../../web/schedule.html"),
    },
    File {
        path: "/appointments",
        kind: Kind::Page,
        summary: "The patient page for appointments: booking, joining video visits, messages (signs in through `/`)",
        body: include_str!("../../../web/appointments.html"),
    },
    File {
        path: "/clinic.css",
        kind: Kind::Style,
        summary: "The pages' stylesheet",
        body: include_str!("../../../web/clinic.css"),
    },
    File {
        path: "/api.js",
        kind: Kind::Script,
        summary: "The pages' JSON API client (problem+json errors, the server's clock)",
        body: include_str!("../../../web/api.js"),
    },
    File {
        path: "/page.js",
        kind: Kind::Script,
        summary: "The pages' document helpers (messages, busy buttons)",
        body: include_str!("../../../web/page.js"),
    },
    File {
        path: "/signin.js",
        kind: Kind::Script,
        summary: "The sign-in page's script",
        body: include_str!("../../../web/signin.js"),
    },
    File {
        path: "/photos/photos.js",
        kind: Kind::Script,
        summary: "The photo page's script",
        body: include_str!("../../../web/photos.js"),
    },
    File {
        path: "/consult/consult.js",
        kind: Kind::Script,
        summary: "The consult pages' entry script (join link, then the modules below)",
        body: include_str!("../../../web/consult.js"),
    },
    File {
        path: "/consult/state.js",
        kind: Kind::Script,
        summary: "The consult pages' shared state and page helpers",
        body: include_str!("../../../web/state.js"),
    },
    File {
        path: "/consult/media.js",
        kind: Kind::Script,
        summary: "The consult pages' camera and microphone check",
        body: include_str!("../../../web/media.js"),
    },
    File {
        path: "/consult/signaling.js",
        kind: Kind::Script,
        summary: "The consult pages' signaling (WebSocket, reconnect, resume)",
        body: include_str!("../../../web/signaling.js"),
    },
    File {
        path: "/consult/peer.js",
        kind: Kind::Script,
        summary: "The consult pages' WebRTC session with the SFU",
        body: include_str!("../../../web/peer.js"),
    },
    File {
        path: "/consult/tiles.js",
        kind: Kind::Script,
        summary: "The consult pages' participant tiles, roster and waiting room",
        body: include_str!("../../../web/tiles.js"),
    },
    File {
        path: "/consult/stats.js",
        kind: Kind::Script,
        summary: "The consult pages' connection stats",
        body: include_str!("../../../web/stats.js"),
    },
    File {
        path: "/consult/controls.js",
        kind: Kind::Script,
        summary: "The consult pages' call controls",
        body: include_str!("../../../web/controls.js"),
    },
    File {
        path: "/consult/provider.js",
        kind: Kind::Script,
        summary: "The consult provider page's setup and invite links",
        body: include_str!("../../../web/provider.js"),
    },
    File {
        path: "/schedule/scheduling.js",
        kind: Kind::Script,
        summary: "The scheduling pages' shared script (dates and wall times)",
        body: include_str!("../../../web/scheduling.js"),
    },
    File {
        path: "/schedule/schedule.js",
        kind: Kind::Script,
        summary: "The staff scheduling page's script",
        body: include_str!("../../../web/schedule.js"),
    },
    File {
        path: "/appointments/appointments.js",
        kind: Kind::Script,
        summary: "The patient appointments page's script",
        body: include_str!("../../../web/appointments.js"),
    },
];

pub fn routes() -> Routes {
    FILES.iter().fold(Routes::new("web"), |routes, file| {
        routes
            .add(
                Method::GET,
                file.path,
                Policy::PUBLIC,
                file.summary,
                move || async move { file.response() },
            )
            .responds(StatusCode::OK, Content::Media(file.content_type()))
    })
}

impl File {
    fn content_type(&self) -> &'static str {
        match self.kind {
            Kind::Page => "text/html; charset=utf-8",
            Kind::Script => "text/javascript; charset=utf-8",
            Kind::Style => "text/css; charset=utf-8",
        }
    }

    fn response(&self) -> Response {
        let content_type = self.content_type();
        let mut response = self.body.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Kind::Page = self.kind {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
        }
        response
    }
}
