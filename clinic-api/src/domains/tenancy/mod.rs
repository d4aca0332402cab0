//! Tenancy: practices (tenants) and their locations.

pub mod clinics;
pub mod locations;
