//! Negotiation, driven from the worker: a participant's offers and answers, and the worker's own
//! offers when the tracks a peer receives change. What goes into an offer is planned by the peer's
//! [`MLines`](crate::mlines::MLines); this applies the plan to str0m's SDP API.

use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, Mid};
use str0m::net::TcpType;
use str0m::{Candidate, Rtc};

use super::peer::{Peer, session_origin};
use super::{Notice, SfuError, Worker};
use tokio::sync::mpsc;

impl Worker {
    /// A participant's offer: a new media session, or a renegotiation or ICE restart of the
    /// current one. Returns the answer.
    pub(super) fn offer(
        &mut self,
        now: Instant,
        consult: String,
        participant: String,
        sdp: &str,
    ) -> Result<String, SfuError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let origin = session_origin(sdp);
        let k = match self
            .find(&participant)
            .filter(|&k| self.peers[k].rtc.is_alive() && self.peers[k].origin == origin)
        {
            Some(k) => k,
            None => {
                // A dead session, or a live one this offer does not continue (the page was
                // reloaded, the seat taken over): the old session goes, with its tracks at the
                // others, before the new one starts.
                if let Some(stale) = self.find(&participant) {
                    self.remove_peer(stale);
                }
                let udp = Candidate::host(self.addr, "udp")
                    .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
                let tcp = match &self.out.tcp {
                    Some(tcp) => Some(
                        Candidate::builder()
                            .tcp()
                            .host(tcp.addr())
                            .tcptype(TcpType::Passive)
                            .build()
                            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?,
                    ),
                    None => None,
                };
                let rtc = Rtc::builder()
                    .set_rtp_mode(true)
                    .set_ice_lite(true)
                    .enable_bwe(Some(Bitrate::kbps(1_000)))
                    .set_stats_interval(Some(Duration::from_secs(1)))
                    .build(now);
                let mut peer = Peer::new(participant, consult, origin, rtc, now);
                peer.rtc.call(|rtc| {
                    rtc.add_local_candidate(udp);
                    if let Some(tcp) = tcp {
                        rtc.add_local_candidate(tcp);
                    }
                });
                // Everything already published in the consult is to be sent to the newcomer.
                for (k, other) in self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.consult == peer.consult && p.rtc.is_alive())
                {
                    for t in &other.tracks_in {
                        peer.mlines
                            .add(&other.participant, k, t.mid, t.kind, peer.preference);
                    }
                }
                self.peers.insert(peer)
            }
        };
        let peer = &mut self.peers[k];
        // An offer from the peer while ours is pending: theirs wins (glare), ours is redone later.
        if peer.pending.take().is_some() {
            peer.rtc
                .call(|rtc| peer.mlines.offer_lost(|mid| rtc.media(mid).is_some()));
        }
        match peer.rtc.call(|rtc| rtc.sdp_api().accept_offer(offer)) {
            Some(answer) => Ok(answer
                .map_err(|e| SfuError::InvalidSdp(e.to_string()))?
                .to_sdp_string()),
            // str0m 0.25 panics on some contradictory offers (e.g. a payload type bound twice):
            // its state may be half-changed, so the guard has failed that session, to be reaped;
            // the page can offer afresh.
            None => Err(SfuError::InvalidSdp(
                "the offer could not be processed; the media session was closed".into(),
            )),
        }
    }

    /// A participant's answer to the worker's last offer.
    pub(super) fn answer(
        &mut self,
        now: Instant,
        participant: &str,
        sdp: &str,
    ) -> Result<(), SfuError> {
        let k = self.find(participant).ok_or(SfuError::UnknownParticipant)?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let peer = &mut self.peers[k];
        let pending = peer
            .pending
            .take()
            .ok_or_else(|| SfuError::InvalidSdp("no offer is waiting for an answer".into()))?;
        peer.rtc
            .call(|rtc| rtc.sdp_api().accept_answer(pending, answer))
            .ok_or_else(|| SfuError::InvalidSdp("the answer could not be processed".into()))?
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        // Ask the sources for keyframes so the new subscriber's video starts at once.
        let wanted = peer.mlines.answered();
        self.request_starting_keyframes(now, wanted);
        Ok(())
    }

    /// Offers pending outgoing tracks to peers with none in flight, as their [`MLines`] plan it:
    /// a returning source's track takes its parked m-line back, any other gets a new one;
    /// departed sources' m-lines go inactive.
    ///
    /// [`MLines`]: crate::mlines::MLines
    pub(super) fn negotiate(&mut self, now: Instant) {
        let mut keyframes = Vec::new();
        for (_, peer) in self.peers.iter_mut() {
            if peer.pending.is_some() || !peer.rtc.is_alive() || !peer.mlines.wants_offer() {
                continue;
            }
            let mlines = &mut peer.mlines;
            let applied = peer.rtc.call(|rtc| {
                let plan = mlines.plan(|mid| rtc.media(mid).map(|m| m.direction()));
                keyframes.extend_from_slice(&plan.keyframes);
                let mut change = rtc.sdp_api();
                for mid in plan.inactive {
                    change.set_direction(mid, Direction::Inactive);
                }
                for (mid, sending) in plan.reopen {
                    if sending {
                        change.set_direction(mid, Direction::Inactive);
                    }
                    change.set_direction(mid, Direction::SendOnly);
                }
                for line in plan.add {
                    let mid = change.add_media(
                        line.kind,
                        Direction::SendOnly,
                        Some(line.stream),
                        None,
                        None,
                    );
                    mlines.added(line.track, mid);
                }
                change.apply()
            });
            peer.dirty = true;
            if let Some(Some((offer, pending))) = applied {
                peer.pending = Some(pending);
                let sent = self.notices.try_send(Notice::Offer {
                    consult: peer.consult.clone(),
                    participant: peer.participant.clone(),
                    sdp: offer.to_sdp_string(),
                });
                if let Err(mpsc::error::TrySendError::Full(_)) = sent {
                    tracing::warn!("notice queue full; an offer to a participant was dropped");
                }
            }
        }
        self.request_starting_keyframes(now, keyframes);
    }

    /// Asks the sources (peer key, track) of these video tracks for a keyframe on every layer,
    /// so a subscriber's newly opened (or taken back) track starts at once, whichever layer it
    /// gets.
    pub(super) fn request_starting_keyframes(&mut self, now: Instant, tracks: Vec<(usize, Mid)>) {
        for (source, mid) in tracks {
            for layer in 0..3 {
                self.request_keyframe(now, source, mid, layer);
            }
        }
    }
}
