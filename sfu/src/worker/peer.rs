//! A peer of the worker: one participant's str0m session and what the worker keeps beside it.

use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::time::Instant;

use str0m::Rtc;
use str0m::change::SdpPendingOffer;
use str0m::media::{MediaKind, Mid, Rid};

use super::PeerStats;
use crate::layers::Preference;
use crate::mlines::MLines;

/// A peer's str0m session, reachable only through [`GuardedRtc::call`]: every call into it is
/// isolated with `catch_unwind`, so a peer that trips a str0m bug (some contradictory offers
/// make str0m 0.25 panic, for one) is disconnected and the worker's other peers go on. After a
/// panic the session's state may be half-changed, so it is never called again: it counts as
/// closed and the worker reaps it at its next pass.
pub(super) struct GuardedRtc {
    rtc: Rtc,
    failed: bool,
}

impl GuardedRtc {
    pub(super) fn new(rtc: Rtc) -> Self {
        Self { rtc, failed: false }
    }

    /// Runs `f` on the session; `None` if it panicked (the peer is now failed) or had before.
    #[track_caller]
    pub(super) fn call<R>(&mut self, f: impl FnOnce(&mut Rtc) -> R) -> Option<R> {
        if self.failed {
            return None;
        }
        let rtc = &mut self.rtc;
        match catch_unwind(AssertUnwindSafe(move || f(rtc))) {
            Ok(r) => Some(r),
            Err(_) => {
                let at = Location::caller();
                tracing::error!(%at, "peer panicked in str0m; disconnecting it");
                self.failed = true;
                None
            }
        }
    }

    /// Whether the session is open: it has not failed, nor been closed by str0m or the worker.
    /// (This reads `Rtc::is_alive`, a comparison of one field, outside the guard: it is asked
    /// for every peer on every packet, and cannot panic.)
    pub(super) fn is_alive(&self) -> bool {
        !self.failed && self.rtc.is_alive()
    }

    /// Closes the session.
    pub(super) fn disconnect(&mut self) {
        self.call(|rtc| rtc.disconnect());
    }
}

/// A published track of a peer.
pub(super) struct TrackIn {
    pub(super) mid: Mid,
    pub(super) kind: MediaKind,
    /// Bytes seen per layer in the current window, and the last window's rates.
    pub(super) bytes: [u64; 3],
    pub(super) rates: [u64; 3],
}

pub(super) struct Peer {
    pub(super) participant: String,
    pub(super) consult: String,
    /// A hash of `consult`: forwarding compares it first, so finding a packet's subscribers
    /// costs an integer comparison per peer of the worker, not a string comparison.
    pub(super) consult_hash: u64,
    pub(super) rtc: GuardedRtc,
    /// Which browser session this is: the offer's `o=` session id and DTLS fingerprint. A new
    /// value (a reloaded page, a new RTCPeerConnection) replaces the session instead of
    /// renegotiating it.
    pub(super) origin: String,
    pub(super) pending: Option<SdpPendingOffer>,
    /// The other participants' tracks sent to this peer, and their m-lines.
    pub(super) mlines: MLines,
    pub(super) tracks_in: Vec<TrackIn>,
    pub(super) preference: Preference,
    pub(super) estimate_bps: u64,
    /// What the bandwidth estimator was last asked to probe for (see `Worker::stats`).
    pub(super) desired_bps: u64,
    pub(super) stats: PeerStats,
    /// NACKs per outgoing stream, as str0m counts them (cumulative per stream).
    pub(super) nacks: Vec<(Mid, Option<Rid>, u64)>,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    /// When str0m next wants a timeout input (its last `Output::Timeout`).
    pub(super) next_timeout: Instant,
    /// Something was written into this peer's `Rtc` (media, a keyframe request, an SDP change)
    /// since it was last drained: poll it even if its timeout is not due. Peers that are neither
    /// dirty nor due are skipped, so a datagram costs work for the peers it concerns only, not
    /// for every peer of the worker.
    pub(super) dirty: bool,
    /// Outgoing m-lines whose retransmission budget is set (see [`RTX_RATIO_CAP`]).
    pub(super) rtx_budgeted: Vec<Mid>,
}

/// How much of what an outgoing stream sends may be retransmissions before str0m stops
/// answering NACKs for a while. str0m's default, 15%, is spent at once on a poor mobile link: at
/// 5% loss with 80 ms ± 20 ms of jitter (reordering that draws early NACKs, and NACKs repeated
/// before the first repair can arrive), the cap dropped queued resends and one frame in five
/// stayed broken for over a second (`video_over_5_percent_loss_and_80_ms_jitter…` in
/// `clinic-api/tests/consult_media.rs`). Half still bounds what a receiver NACKing everything
/// can draw out of the SFU to twice the stream.
pub(super) const RTX_RATIO_CAP: f32 = 0.5;
/// The retransmission cache of an outgoing stream: str0m's default size and age.
pub(super) const RTX_CACHE_PACKETS: usize = 1024;
pub(super) const RTX_CACHE_AGE: std::time::Duration = std::time::Duration::from_secs(3);

impl Peer {
    pub(super) fn new(
        participant: String,
        consult: String,
        origin: String,
        rtc: Rtc,
        now: Instant,
    ) -> Self {
        Self {
            participant,
            consult_hash: hash_of(&consult),
            consult,
            rtc: GuardedRtc::new(rtc),
            origin,
            pending: None,
            mlines: MLines::default(),
            tracks_in: Vec::new(),
            preference: Preference::Normal,
            estimate_bps: 1_000_000,
            desired_bps: 0,
            stats: PeerStats::default(),
            nacks: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            next_timeout: now,
            dirty: true,
            rtx_budgeted: Vec::new(),
        }
    }
}

fn hash_of(s: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(s)
}

/// The identity of the browser session behind an offer: its `o=` session id and its DTLS
/// fingerprint. Renegotiations and ICE restarts keep both; a new RTCPeerConnection changes both.
pub(super) fn session_origin(sdp: &str) -> String {
    let session = sdp
        .lines()
        .find_map(|l| l.strip_prefix("o="))
        .and_then(|o| o.split_whitespace().nth(1))
        .unwrap_or("");
    let fingerprint = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=fingerprint:"))
        .unwrap_or("");
    format!("{session} {}", fingerprint.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_the_guard_fails_the_peer_only() {
        let mut rtc = GuardedRtc::new(Rtc::builder().build(Instant::now()));
        assert_eq!(rtc.call(|r| r.is_alive()), Some(true));
        let got: Option<()> = rtc.call(|_| panic!("a str0m bug"));
        assert_eq!(got, None, "the panic is caught");
        assert!(!rtc.is_alive(), "the peer counts as closed, to be reaped");
        let mut called = false;
        assert_eq!(rtc.call(|_| called = true), None);
        assert!(!called, "a failed session is never called again");
        // Another peer's session is untouched.
        let mut other = GuardedRtc::new(Rtc::builder().build(Instant::now()));
        assert_eq!(other.call(|r| r.is_alive()), Some(true));
    }

    #[test]
    fn session_origin_names_the_browser_session() {
        let a = "v=0\r\no=- 123 2 IN IP4 0.0.0.0\r\na=fingerprint:sha-256 AA:BB\r\n";
        let renegotiated = "v=0\r\no=- 123 3 IN IP4 0.0.0.0\r\na=fingerprint:sha-256 AA:BB\r\n";
        let reloaded = "v=0\r\no=- 456 2 IN IP4 0.0.0.0\r\na=fingerprint:sha-256 CC:DD\r\n";
        assert_eq!(session_origin(a), "123 sha-256 AA:BB");
        assert_eq!(session_origin(a), session_origin(renegotiated));
        assert_ne!(session_origin(a), session_origin(reloaded));
    }
}
