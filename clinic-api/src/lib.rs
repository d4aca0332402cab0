//! The clinic API: tenants and locations, identity, MFA, sessions, RBAC, audit, scheduling and
//! its patient-message outbox (intake and eRx come later); it wraps the signaling, SFU and imaging
//! crates and builds the one `clinic` binary. See `docs/ARCHITECTURE.md`.
//!
//! Layers, bottom to top: [`platform`] (state, database and tenant transactions, authorization,
//! sessions, audit, keys, configuration, errors, the HTTP edge), which names no domain;
//! [`domains`] (identity, tenancy, patients, scheduling, consults, images, outbox, reports), each
//! built on the platform's mechanisms; and [`app`], which assembles the domains' routes and
//! services and serves them (with [`cli`], [`demo`] and, for tests, `testkit`).

pub mod app;
pub mod cli;
pub mod demo;
pub mod domains;
pub mod platform;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use app::run;
pub use platform::config::Config;
pub use platform::state::AppState;
