//! Identity: sign-in, MFA, passwords, users and the access review.

pub mod access_review;
pub mod auth;
pub mod enrollment;
pub mod mfa;
pub mod passwords;
pub mod throttle;
pub mod users;
