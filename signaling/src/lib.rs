//! Signaling for video consults, as a sans-IO core: nothing here touches a socket or a clock.
//!
//! - [`token`]: the consult join token: short-lived, HMAC-signed, bound to consult, participant
//!   and role, verifiable by any node that holds the key, without a database call.
//! - [`protocol`]: the versioned JSON messages (documented in `docs/signaling.md`), parsed with
//!   size limits; garbage becomes an error message, never a panic.
//! - [`room`]: one consult's state machine (waiting room, admit/remove, limits, reconnect grace,
//!   idle end), fed messages and `Instant`s, answering with messages to send and effects to
//!   carry out (audit events, media commands).
//!
//! The WebSocket shell that drives it lives in `clinic-api` (`consults` module).

pub mod protocol;
pub mod room;
pub mod token;
