//! The wound-imaging pipeline: upload → validate → orient → strip metadata → thumbnails →
//! envelope-encrypt → store → tier and retain.
//!
//! The decisions are sans-IO: [`sniff`] decides the type from the bytes, [`strip`] removes
//! metadata without re-encoding, [`pipeline::process`] decodes within [`Limits`] and makes the
//! derivatives, [`envelope`] seals and opens objects, [`tiering`] decides tiers and deletions.
//! The drivers are [`keys`] (the local key file or AWS KMS) and [`store`] (the local filesystem
//! or S3).
//!
//! Rules: plaintext image bytes never reach disk or network (objects are sealed before a store
//! sees them), and object keys are random, never carrying patient information.

pub mod aws;
pub mod bmff;
pub mod envelope;
pub mod error;
pub mod keys;
pub mod pipeline;
pub mod sniff;
pub mod store;
pub mod strip;
#[cfg(feature = "testimages")]
pub mod testimages;
pub mod tiering;

pub use error::ImagingError;
pub use pipeline::{Limits, Processed, process};
pub use sniff::{Format, sniff};
