//! The selective forwarding unit for consults, built on str0m in RTP mode.
//!
//! The forwarding decisions are sans-IO and tested with simulated time:
//! - [`codec`]: keyframe detection (VP8, H.264) and the VP8 descriptor fields a switch rewrites;
//! - [`layers`]: which simulcast layer a subscriber receives (estimate, preference, hysteresis,
//!   switch at keyframes);
//! - [`rewrite`]: one continuous outgoing stream across layer switches (sequence numbers,
//!   timestamps, VP8 PictureID and TL0PICIDX);
//! - [`keyframes`]: keyframe requests throttled per source layer;
//! - [`forward`]: per subscriber of a track, what a received packet becomes (the layer choice,
//!   the rewrite, the keyframe requests to send), built on `layers`, `rewrite` and `keyframes`;
//! - [`mlines`]: which m-lines a subscriber's session carries for the others' tracks (new ones,
//!   inactive ones, parked ones a returning participant takes back).
//!
//! [`worker`] is their driver: the sockets, the str0m sessions (each call into one guarded with
//! `catch_unwind`) and the clock, read once per loop pass and per datagram and passed down.
//!
//! The SFU never touches the database or sees PHI: it knows consults and participants only by
//! opaque ids.

pub mod codec;
pub mod forward;
pub mod keyframes;
pub mod layers;
pub mod mlines;
pub mod rewrite;
pub mod udp;
pub mod worker;

pub use layers::Preference;
pub use worker::{Notice, PeerStats, SfuError, SfuHandle};
