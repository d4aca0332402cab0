//! Health, readiness and Prometheus metrics.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::platform::authz::{Policy, Routes};
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::keys::{ct_eq, sha256_hex};
use crate::platform::openapi::Content;
use crate::platform::state::AppState;

pub fn routes() -> Routes {
    Routes::new("ops")
        .add(
            Method::GET,
            "/healthz",
            Policy::PUBLIC,
            "Liveness: the process answers",
            healthz,
        )
        .add(
            Method::GET,
            "/readyz",
            Policy::PUBLIC,
            "Readiness: the database answers",
            readyz,
        )
        .responds(StatusCode::OK, Content::Media("text/plain; charset=utf-8"))
        .responds(
            StatusCode::SERVICE_UNAVAILABLE,
            Content::Media("text/plain; charset=utf-8"),
        )
        .add(
            Method::GET,
            "/metrics",
            Policy::PUBLIC,
            "Prometheus metrics (no PHI: route templates and counts); a scraper sends the configured bearer token (`metrics.token`), without one configured the route answers 404",
            metrics_text,
        )
        .responds(StatusCode::OK, Content::Media("text/plain; version=0.0.4"))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.db.ping().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
    }
}

async fn metrics_text(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let Some(token) = &state.config.metrics.token else {
        return Err(ApiError::not_found("route"));
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Hash both sides first: equal lengths, so the comparison time says nothing about the token.
    if !ct_eq(
        sha256_hex(sent.as_bytes()).as_bytes(),
        sha256_hex(token.as_bytes()).as_bytes(),
    ) {
        return Err(ApiError::unauthorized(
            ErrorCode::Unauthenticated,
            "metrics need the scraper's bearer token",
        ));
    }
    crate::platform::heap::export();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response())
}

/// The method label: the standard methods by name, anything else as `other`, so a client
/// inventing methods cannot add series (each is kept for the process's life).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts requests and their latency per route template (never the raw path, which holds ids).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}
