//! The top of the house: assembles every domain's routes and services onto the platform and
//! serves them. The only module (with `cli`, `demo` and `testkit`) that names every domain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::domains::consults::Hub;
use crate::domains::identity::throttle::SignInThrottle;
use crate::domains::images::Images;
use crate::domains::{consults, identity, images, outbox, patients, reports, scheduling, tenancy};
use crate::platform::authz::Routes;
use crate::platform::clock::{Clock, SystemClock};
use crate::platform::config::Config;
use crate::platform::db::Db;
use crate::platform::jobs::{self, First, Jobs};
use crate::platform::keys::KeyRing;
use crate::platform::metrics::metrics_handle;
use crate::platform::state::AppState;
use crate::platform::{audit, edge, openapi, ops, pages};

/// Every route of the API, each with its policy.
pub fn all_routes() -> Routes {
    ops::routes()
        .merge(pages::routes())
        .merge(openapi::routes())
        .merge(identity::auth::routes())
        .merge(identity::enrollment::routes())
        .merge(identity::users::routes())
        .merge(tenancy::locations::routes())
        .merge(patients::routes())
        .merge(reports::routes())
        .merge(audit::routes())
        .merge(consults::routes())
        .merge(images::routes())
        .merge(scheduling::routes())
        .merge(outbox::routes())
}

/// The state with every domain's service: the platform's parts as given, the consult hub (its
/// media workers start here), the imaging services and the OpenAPI document.
pub async fn assemble(
    config: Config,
    db: Db,
    keys: KeyRing,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<AppState> {
    let hub = Hub::start(&keys, &config.sfu)?;
    let images = Arc::new(Images::open(&config, &keys).await?);
    let doc = Arc::new(openapi::Document::new(&all_routes().specs()));
    let config_login = config.login.clone();
    Ok(
        AppState::new(config, db, Arc::new(keys), clock, metrics_handle())
            .with(hub)
            .with(images)
            .with(doc)
            .with(Arc::new(SignInThrottle::new(&config_login)))
            .with(Arc::new(jobs::Running::default())),
    )
}

/// Opens everything the server needs: migrates (with the admin connection), connects the
/// application pool, checks its role cannot bypass row-level security, loads the key file.
pub async fn open(config: Config) -> anyhow::Result<AppState> {
    Db::migrate(&config.admin_database_url()).await?;
    let db = Db::connect_with(
        &config.database_url(),
        config.database.max_connections,
        Some(&config.database.app_role),
        config.database.contention(),
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
    // A separate checkpoint key is created (or its mode checked) now, not at the first pass a
    // day later.
    KeyRing::open_or_create(&config.checkpoint_key_file())?;
    assemble(config, db, keys, Arc::new(SystemClock)).await
}

/// The HTTP application.
pub fn router(state: &AppState) -> Router {
    edge::router(all_routes(), state)
}

/// Serves `state`'s app on `listener` until `shutdown` resolves, with the server's background
/// jobs (audit checkpoints, image tiering, the outbox worker; each off when its interval is 0).
/// On shutdown: the listener closes, every live consult room tells its participants the server
/// is going away and closes their connections, the jobs stop between passes, and requests in
/// flight finish, up to `http.drain_timeout_secs`. Returns once all of that is done.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let jobs = start_jobs(&state);
    let hub = state.get_arc::<Hub>();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("draining");
        hub.going_away();
    };
    let served = edge::serve(listener, router(&state), &state.config.http, shutdown).await;
    jobs.stop(Duration::from_secs(state.config.http.drain_timeout_secs))
        .await;
    served
}

/// The server's background jobs, on their configured intervals.
fn start_jobs(state: &AppState) -> Jobs {
    let secs = Duration::from_secs;
    let mut jobs = Jobs::new(state.get_arc::<jobs::Running>());
    let s = state.clone();
    jobs.every(
        "audit_checkpoints",
        secs(state.config.audit.checkpoint_interval_secs),
        First::AfterInterval,
        move || checkpoint_pass(s.clone()),
    );
    let s = state.clone();
    jobs.every(
        "image_tiering",
        secs(state.config.imaging.tier_interval_secs),
        First::Now,
        move || tiering_pass(s.clone()),
    );
    let s = state.clone();
    jobs.every(
        "outbox",
        secs(state.config.scheduling.outbox_interval_secs),
        First::Now,
        move || {
            let s = s.clone();
            async move { outbox::worker_pass(&s, &outbox::PortalChannel).await }
        },
    );
    jobs
}

/// Writes signed audit checkpoints of every tenant's chain head.
async fn checkpoint_pass(state: AppState) {
    let path = state.config.checkpoint_file();
    let keys = match &state.config.audit.checkpoint_key_path {
        None => state.keys.clone(),
        Some(key_path) => match KeyRing::load(key_path) {
            Ok(ring) => Arc::new(ring),
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoint failed");
                return;
            }
        },
    };
    match audit::checkpoint(&state.db, &keys, state.clock.now_ms(), &path).await {
        Ok(written) => tracing::info!(count = written.len(), "audit checkpoints written"),
        Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
    }
}

/// Applies the image tier policy.
async fn tiering_pass(state: AppState) {
    match images::apply_tiers(&state.db, Images::of(&state), state.clock.now_ms()).await {
        Ok(r) => {
            let moved: u64 = r.moved.values().sum();
            if moved > 0 || r.failed > 0 {
                tracing::info!(
                    moved,
                    failed = r.failed,
                    examined = r.examined,
                    "image tiers applied"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "image tiering failed"),
    }
}
