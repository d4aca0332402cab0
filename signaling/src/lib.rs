//! WebSocket signaling for video consults: join tokens, waiting room, offer/answer, ICE,
//! reconnect. The `clinic` process will serve it.
//!
//! Empty until the video-consult issue builds it; nothing here is used yet, and nothing
//! pretends to be. Its design: a sans-IO room state machine (messages and `Instant`s in,
//! decisions out) driven by a thin tokio-tungstenite shell, with a versioned JSON protocol
//! documented in `docs/signaling.md`.
