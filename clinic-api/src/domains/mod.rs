//! The domains, each on the platform's mechanisms. A domain reaches another only through a
//! named function of that domain (for example `consults::open_for_appointment`), never into its
//! tables or private types.

pub mod consults;
pub mod identity;
pub mod images;
pub mod outbox;
pub mod patients;
pub mod reports;
pub mod scheduling;
pub mod tenancy;
