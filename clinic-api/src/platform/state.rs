//! The application state every handler receives: the platform's own parts (configuration,
//! database, key ring, clock, metrics) plus the domains' services, which the platform holds
//! without naming them.
//!
//! A domain's long-lived service (the consult hub, the imaging services) is put in once, when
//! `app` assembles the state ([`AppState::with`]), and read back by type ([`AppState::get`]);
//! each domain wraps that in its own accessor (`Hub::of(&state)`), so callers never see the map.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::platform::clock::Clock;
use crate::platform::config::Config;
use crate::platform::db::{Db, TenantTx};
use crate::platform::ids::ClinicId;
use crate::platform::keys::KeyRing;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub keys: Arc<KeyRing>,
    pub clock: Arc<dyn Clock>,
    pub metrics: PrometheusHandle,
    services: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl AppState {
    /// The platform's parts, with no domain service yet.
    pub fn new(
        config: Config,
        db: Db,
        keys: Arc<KeyRing>,
        clock: Arc<dyn Clock>,
        metrics: PrometheusHandle,
    ) -> Self {
        Self {
            config: Arc::new(config),
            db,
            keys,
            clock,
            metrics,
            services: Arc::new(HashMap::new()),
        }
    }

    /// A tenant transaction for `clinic` at the clock's now.
    pub async fn tx(&self, clinic: &ClinicId) -> sqlx::Result<TenantTx> {
        self.db.tenant_tx(clinic, self.clock.now_ms()).await
    }

    /// Adds a domain's service (at assembly, before the state is shared).
    ///
    /// # Panics
    /// If a service of the same type was added already: assembly is written once, in `app`.
    pub fn with<T: Send + Sync + 'static>(mut self, service: Arc<T>) -> Self {
        let services = Arc::make_mut(&mut self.services);
        let previous = services.insert(TypeId::of::<T>(), service);
        assert!(previous.is_none(), "{} added twice", type_name::<T>());
        self
    }

    /// A domain's service, by type.
    ///
    /// # Panics
    /// If `app` did not add it: a wiring error that every test of that domain would show.
    pub fn get<T: Send + Sync + 'static>(&self) -> &T {
        self.services
            .get(&TypeId::of::<T>())
            .and_then(|s| s.downcast_ref::<T>())
            .unwrap_or_else(|| panic!("{} was not added to the state", type_name::<T>()))
    }

    /// As [`AppState::get`], the shared handle.
    pub fn get_arc<T: Send + Sync + 'static>(&self) -> Arc<T> {
        let service = self
            .services
            .get(&TypeId::of::<T>())
            .unwrap_or_else(|| panic!("{} was not added to the state", type_name::<T>()))
            .clone();
        service
            .downcast::<T>()
            .unwrap_or_else(|_| panic!("{} stored under another type", type_name::<T>()))
    }
}
