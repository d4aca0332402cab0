//! The shared state and the one function that assembles every domain's routes into the app;
//! [`run`] serves a bound listener until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, header};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::authz::Routes;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::db::Db;
use crate::error::not_found_fallback;
use crate::keys::KeyRing;
use crate::{audit, auth, consults, locations, openapi, ops, patients, reports, users, web};

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub keys: Arc<KeyRing>,
    pub clock: Arc<dyn Clock>,
    pub metrics: PrometheusHandle,
    /// Live consults on this node.
    pub consults: Arc<crate::consults::Hub>,
    pub images: Arc<crate::images::Images>,
}

/// Every route of the API, each with its policy.
pub fn all_routes() -> Routes {
    ops::routes()
        .merge(web::routes())
        .merge(openapi::routes())
        .merge(auth::routes())
        .merge(users::routes())
        .merge(locations::routes())
        .merge(patients::routes())
        .merge(reports::routes())
        .merge(audit::routes())
        .merge(consults::routes())
        .merge(crate::images::routes())
        .merge(crate::scheduling::routes())
        .merge(crate::outbox::routes())
}

/// The process-wide Prometheus recorder (installed once; later calls share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Gauges of participants who left stop being exported (and are freed) 30 s after
            // their last update; they are updated about once a second while the participant is
            // there. Histograms are Prometheus histograms with fixed buckets, a few hundred
            // bytes per series for ever; the exporter's default, summaries, keeps a minute of
            // sketches per series, which grew the heap for the first minute of a load.
            let recorder = PrometheusBuilder::new()
                .idle_timeout(
                    metrics_util::MetricKindMask::GAUGE,
                    Some(std::time::Duration::from_secs(30)),
                )
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests): then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            // Upkeep whether or not anyone scrapes /metrics: histogram samples are kept raw
            // until drained, and idle gauges are only dropped when the metrics are rendered, so
            // without it every request and every participant who ever came would stay in
            // memory (found by the join/leave churn, docs/performance.md).
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    for round in 1u64.. {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                        if round % 2 == 0 {
                            drop(upkeep.render());
                        }
                    }
                });
            handle
        })
        .clone()
}

impl AppState {
    /// Opens everything the server needs: migrates (with the admin connection), connects the
    /// application pool, checks its role cannot bypass row-level security, loads the key file.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        Db::migrate(&config.admin_database_url()).await?;
        let db = Db::connect(
            &config.database_url(),
            config.database.max_connections,
            Some(&config.database.app_role),
        )
        .await?;
        if let Some(check) = db.role_check().await? {
            anyhow::ensure!(
                !check.can_bypass_rls(),
                "the database role {} can bypass row-level security (superuser, BYPASSRLS or table owner); \
                 connect as a role without those, or set database.app_role",
                check.role
            );
        }
        std::fs::create_dir_all(config.blob_dir())?;
        let keys = KeyRing::open_or_create(&config.key_file())?;
        let consults = consults::Hub::start(&keys, &config.sfu)?;
        let images = Arc::new(crate::images::Images::open(&config, &keys).await?);
        Ok(Self {
            config: Arc::new(config),
            db,
            consults,
            images,
            keys: Arc::new(keys),
            clock: Arc::new(SystemClock),
            metrics: metrics_handle(),
        })
    }

    /// The HTTP application.
    pub fn router(&self) -> Router {
        all_routes()
            .into_router(self.clone())
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
            .layer(DefaultBodyLimit::max(self.config.http.body_limit_bytes))
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
            .with_state(self.clone())
    }
}

/// Serves `state`'s app on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = state.router();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
