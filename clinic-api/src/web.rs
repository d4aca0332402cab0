//! The browser pages in `web/`, embedded in the binary so `clinic serve` needs no files beside it.

use axum::http::{Method, header};
use axum::response::IntoResponse;

use crate::authz::{Policy, Routes};

const INDEX: &str = include_str!("../../web/index.html");

/// The pages' Content-Security-Policy: same-origin only, no framing. The pages are single files
/// with inline script and style (no build step), hence 'unsafe-inline' for those two.
const CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn routes() -> Routes {
    Routes::new("web").add(Method::GET, "/", Policy::PUBLIC, "The sign-in page", index)
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        INDEX,
    )
}
