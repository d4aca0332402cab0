//! The clinic API: tenants and locations, identity, MFA, sessions, RBAC, audit, scheduling and
//! its patient-message outbox (intake and eRx come later); it wraps the signaling, SFU and imaging crates and builds
//! the one `clinic` binary. See `docs/ARCHITECTURE.md`.

pub mod access_review;
pub mod app;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod cli;
pub mod clinics;
pub mod clock;
pub mod config;
pub mod consults;
pub mod db;
pub mod demo;
pub mod error;
pub mod heap;
pub mod http;
pub mod ids;
pub mod images;
pub mod keys;
pub mod locations;
pub mod mfa;
pub mod openapi;
pub mod ops;
pub mod outbox;
pub mod passwords;
pub mod patients;
pub mod pii;
pub mod reports;
pub mod scheduling;
pub mod sessions;
pub mod users;
pub mod web;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use app::{AppState, run};
pub use config::Config;
