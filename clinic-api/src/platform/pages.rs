//! The browser pages in `web/`, embedded in the binary so `clinic serve` needs no files beside it.
//!
//! Each page is HTML only: its script is an ES module and its style the one stylesheet, both
//! served from here, so the CSP allows no inline script or style at all. A page's file in `web/`
//! is its `<body>`; the head, the same on every page but for its title and script, is [`SHELL`]'s,
//! and the full document is put together once, when the routes are built.

use axum::body::Bytes;
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

/// Every page's head, with `{viewport}`, `{title}` and `{script}` filled in from its [`Head`].
/// `no-referrer` is deliberate: no page's address is sent to any other site.
const SHELL: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="{viewport}">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>Clinic – {title}</title>
<link rel="stylesheet" href="/clinic.css">
<script type="module" src="{script}"></script>
</head>
"#;

/// What a file in `web/` is, which decides its Content-Type (and whether it gets the CSP).
#[derive(Clone, Copy)]
enum Kind {
    /// A page's `<body>`, served inside [`SHELL`].
    Page(Head),
    Script,
    Style,
}

/// What a page's head says of it.
#[derive(Clone, Copy)]
struct Head {
    /// After "Clinic – ".
    title: &'static str,
    /// Its one module script.
    script: &'static str,
    /// Whether it draws under a phone's notch and home bar (`viewport-fit=cover`): the consult
    /// pages, whose video fills the screen.
    cover: bool,
}

impl Head {
    const fn new(title: &'static str, script: &'static str, cover: bool) -> Self {
        Self {
            title,
            script,
            cover,
        }
    }

    /// The full document: the shell's head, then `body` (from `<body>` to `</html>`).
    fn document(&self, body: &str) -> String {
        let viewport = if self.cover {
            "width=device-width, initial-scale=1, viewport-fit=cover"
        } else {
            "width=device-width, initial-scale=1"
        };
        let head = SHELL
            .replace("{viewport}", viewport)
            .replace("{title}", self.title)
            .replace("{script}", self.script);
        head + body
    }
}

/// One embedded file and where it is served.
struct File {
    path: &'static str,
    kind: Kind,
    summary: &'static str,
    body: &'static str,
}

const FILES: &[File] = &[
    File::page(
        "/",
        Head::new("Sign in", "/signin.js", false),
        "The sign-in page",
        include_str!("../../../web/index.html"),
    ),
    File::page(
        "/enroll",
        Head::new("Set your password", "/enroll.js", false),
        "The enrollment page: a new account sets its first password (one-time token in the fragment)",
        include_str!("../../../web/enroll.html"),
    ),
    File::page(
        "/consult/join",
        Head::new("Video visit", "/consult/consult.js", true),
        "The video consult page for patients, caregivers and interpreters (code in the fragment)",
        include_str!("../../../web/consult-join.html"),
    ),
    File::page(
        "/consult/provider",
        Head::new("Video visit", "/consult/consult.js", true),
        "The video consult page for providers (code in the fragment, or start one when signed in)",
        include_str!("../../../web/consult-provider.html"),
    ),
    File::page(
        "/photos",
        Head::new("Wound photos", "/photos/photos.js", false),
        "The patient page for sending wound photos (signs in through `/`)",
        include_str!("../../../web/photos.html"),
    ),
    File::page(
        "/schedule",
        Head::new("Schedule", "/schedule/schedule.js", false),
        "The staff scheduling page: a location's day, booking, check-in, joining video visits (signs in through `/`)",
        include_str!("../../../web/schedule.html"),
    ),
    File::page(
        "/appointments",
        Head::new("Your appointments", "/appointments/appointments.js", false),
        "The patient page for appointments: booking, joining video visits, messages (signs in through `/`)",
        include_str!("../../../web/appointments.html"),
    ),
    File::style(
        "/clinic.css",
        "The pages' stylesheet",
        include_str!("../../../web/clinic.css"),
    ),
    File::script(
        "/api.js",
        "The pages' JSON API client (problem+json errors, the server's clock)",
        include_str!("../../../web/api.js"),
    ),
    File::script(
        "/page.js",
        "The pages' document helpers (messages, busy buttons)",
        include_str!("../../../web/page.js"),
    ),
    File::script(
        "/signin.js",
        "The sign-in page's script",
        include_str!("../../../web/signin.js"),
    ),
    File::script(
        "/enroll.js",
        "The enrollment page's script",
        include_str!("../../../web/enroll.js"),
    ),
    File::script(
        "/photos/photos.js",
        "The photo page's script",
        include_str!("../../../web/photos.js"),
    ),
    File::script(
        "/consult/consult.js",
        "The consult pages' entry script (join link, then the modules below)",
        include_str!("../../../web/consult.js"),
    ),
    File::script(
        "/consult/state.js",
        "The consult pages' shared state and page helpers",
        include_str!("../../../web/state.js"),
    ),
    File::script(
        "/consult/media.js",
        "The consult pages' camera and microphone check",
        include_str!("../../../web/media.js"),
    ),
    File::script(
        "/consult/signaling.js",
        "The consult pages' signaling (WebSocket, reconnect, resume)",
        include_str!("../../../web/signaling.js"),
    ),
    File::script(
        "/consult/peer.js",
        "The consult pages' WebRTC session with the SFU",
        include_str!("../../../web/peer.js"),
    ),
    File::script(
        "/consult/tiles.js",
        "The consult pages' participant tiles, roster and waiting room",
        include_str!("../../../web/tiles.js"),
    ),
    File::script(
        "/consult/stats.js",
        "The consult pages' connection stats",
        include_str!("../../../web/stats.js"),
    ),
    File::script(
        "/consult/controls.js",
        "The consult pages' call controls",
        include_str!("../../../web/controls.js"),
    ),
    File::script(
        "/consult/provider.js",
        "The consult provider page's setup and invite links",
        include_str!("../../../web/provider.js"),
    ),
    File::script(
        "/schedule/scheduling.js",
        "The scheduling pages' shared script (dates and wall times)",
        include_str!("../../../web/scheduling.js"),
    ),
    File::script(
        "/schedule/schedule.js",
        "The staff scheduling page's script",
        include_str!("../../../web/schedule.js"),
    ),
    File::script(
        "/appointments/appointments.js",
        "The patient appointments page's script",
        include_str!("../../../web/appointments.js"),
    ),
];

pub fn routes() -> Routes {
    FILES.iter().fold(Routes::new("web"), |routes, file| {
        let body = file.served();
        routes
            .add(
                Method::GET,
                file.path,
                Policy::PUBLIC,
                file.summary,
                move || {
                    let body = body.clone();
                    async move { file.response(body) }
                },
            )
            .responds(StatusCode::OK, Content::Media(file.content_type()))
    })
}

impl File {
    const fn page(
        path: &'static str,
        head: Head,
        summary: &'static str,
        body: &'static str,
    ) -> Self {
        Self {
            path,
            kind: Kind::Page(head),
            summary,
            body,
        }
    }

    const fn script(path: &'static str, summary: &'static str, body: &'static str) -> Self {
        Self {
            path,
            kind: Kind::Script,
            summary,
            body,
        }
    }

    const fn style(path: &'static str, summary: &'static str, body: &'static str) -> Self {
        Self {
            path,
            kind: Kind::Style,
            summary,
            body,
        }
    }

    fn content_type(&self) -> &'static str {
        match self.kind {
            Kind::Page(_) => "text/html; charset=utf-8",
            Kind::Script => "text/javascript; charset=utf-8",
            Kind::Style => "text/css; charset=utf-8",
        }
    }

    /// What is served: a page's full document, any other file as it is.
    fn served(&self) -> Bytes {
        match self.kind {
            Kind::Page(head) => head.document(self.body).into(),
            Kind::Script | Kind::Style => Bytes::from_static(self.body.as_bytes()),
        }
    }

    fn response(&self, body: Bytes) -> Response {
        let content_type = self.content_type();
        let mut response = body.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Kind::Page(_) = self.kind {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
        }
        response
    }
}
