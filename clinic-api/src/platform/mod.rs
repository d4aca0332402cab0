//! The platform: what every domain stands on, and nothing that is about one domain. No module
//! here names `crate::domains`, `crate::app` or `crate::cli` (a test in `app` reads the sources
//! and fails if one does); a domain plugs in through the mechanisms defined here (`Routes::add`
//! with a policy, services in [`state::AppState`], the audit call, `ApiError`).

pub mod audit;
pub mod authz;
pub mod clock;
pub mod config;
pub mod db;
pub mod edge;
pub mod error;
pub mod heap;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod pii;
pub mod sessions;
pub mod state;
pub mod tx;
