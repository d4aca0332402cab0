//! The selective forwarding unit for consults, on str0m in RTP mode (ICE-lite): one UDP port per
//! media worker, consults sharded across workers, simulcast layer selection by bandwidth
//! estimate, ICE-TCP fallback.
//!
//! Empty until the video-consult issue builds it; nothing here is used yet. It must never touch
//! the database or see PHI: it knows consults only by opaque ids.
