//! The HTTP edge: the layers every answer passes through (tracing by route template, metrics,
//! body limit, security headers) around the routes `app` assembled, and the serving loop.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, header};
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::platform::authz::Routes;
use crate::platform::error::not_found_fallback;
use crate::platform::ops;
use crate::platform::state::AppState;

/// The HTTP application: `routes`, each behind its policy, inside the edge's layers.
pub fn router(routes: Routes, state: &AppState) -> Router {
    routes
        .into_router(state.clone())
        .fallback(not_found_fallback)
        .layer(axum::middleware::from_fn(ops::track))
        .layer(
            TraceLayer::new_for_http()
                // Method and route template only: the raw URI may carry ids and query values.
                .make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), route = %route)
                }),
        )
        .layer(DefaultBodyLimit::max(state.config.http.body_limit_bytes))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // Answers carry PHI: no shared or browser caching.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(state.clone())
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
