//! The forwarding path, driven from the worker: a received RTP packet is read once, each
//! subscriber's [`Downtrack`](crate::forward::Downtrack) decides what it gets, and the worker
//! writes that into the subscriber's session; keyframe requests go to publishers through
//! [`KeyframeRequests`](crate::forward::KeyframeRequests).

use std::sync::Arc;
use std::time::Instant;

use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::rtp::{RtpPacket, RtpWrite};

use super::Worker;
use super::peer::{RTX_CACHE_AGE, RTX_CACHE_PACKETS, RTX_RATIO_CAP};
use crate::forward::{Packet, layer_of};

impl Worker {
    /// Forwards a packet peer `i` published to the other peers of its consult that receive the
    /// track, each on its own layer and numbering.
    pub(super) fn forward(&mut self, now: Instant, i: usize, pkt: RtpPacket) {
        let Some(src) = self.peers.get_mut(i) else {
            return;
        };
        let (ssrc, pt) = (pkt.header.ssrc, pkt.header.payload_type);
        let Some(Some((mid, rid, codec))) = src.rtc.call(|rtc| {
            let (mid, rid) = rtc
                .direct_api()
                .stream_rx(&ssrc)
                .map(|s| (s.mid(), s.rid()))?;
            let codec = rtc
                .codec_config()
                .iter()
                .find(|p| p.pt() == pt)
                .map(|p| p.spec().codec);
            Some((mid, rid, codec))
        }) else {
            return;
        };
        let layer = layer_of(rid.as_deref());
        let Some(track) = src.tracks_in.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        track.bytes[layer as usize] += pkt.payload.len() as u64;
        src.stats.packets_in += 1;
        let Some(codec) = codec else {
            return;
        };
        let packet = Packet::read(
            track.kind,
            codec,
            layer,
            *pkt.seq_no,
            pkt.header.timestamp,
            &pkt.payload,
            track.rates,
        );
        let (marker, nackable) = (pkt.header.marker, packet.kind == MediaKind::Video);
        // Subscribers are found by the consult's hash and, in their tracks, by the source's peer
        // key: integer comparisons, no copies of the source's ids per packet.
        let consult_hash = src.consult_hash;
        let mut keyframe_wanted = Vec::new();
        for (k, sub) in self.peers.iter_mut() {
            if k == i || sub.consult_hash != consult_hash || !sub.rtc.is_alive() {
                continue;
            }
            let estimate = sub.estimate_bps;
            let Some((down, out_mid)) = sub.mlines.sending(i, mid) else {
                continue;
            };
            // Only a VP8 payload is rewritten (PictureID/TL0PICIDX), so only it is copied, and
            // only when it is forwarded; any other payload is shared with str0m's buffer. The
            // copy goes straight into the shared buffer str0m takes (a Vec turned into an
            // `Arc<[u8]>` would be copied a second time).
            let mut copy: Option<Arc<[u8]>> = None;
            let slot = &mut copy;
            let payload = &pkt.payload;
            let decision = down.decide(now, &packet, estimate, move || {
                let slot = slot;
                Arc::get_mut(slot.insert(Arc::from(&payload[..]))).expect("a fresh Arc is unique")
            });
            keyframe_wanted.extend(decision.keyframe);
            let Some(mapped) = decision.forward else {
                continue;
            };
            let payload = copy.unwrap_or_else(|| pkt.payload.clone());
            let budgeted = &mut sub.rtx_budgeted;
            let written = sub.rtc.call(|rtc| {
                // The subscriber's payload type for the same codec.
                let pt = rtc.media(out_mid).and_then(|m| {
                    let cfg = rtc.codec_config();
                    m.remote_pts()
                        .iter()
                        .copied()
                        .find(|pt| cfg.iter().any(|p| p.pt() == *pt && p.spec().codec == codec))
                })?;
                let write = RtpWrite::new(pt, mapped.seq.into(), mapped.timestamp, now, payload)
                    .marker(marker)
                    .nackable(nackable);
                let mut api = rtc.direct_api();
                let tx = api.stream_tx_by_mid(out_mid, None)?;
                // Before the stream's first packet (setting it empties the cache).
                if !budgeted.contains(&out_mid) {
                    tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
                    budgeted.push(out_mid);
                }
                tx.write_rtp(write);
                Some(())
            });
            if written.flatten().is_some() {
                sub.dirty = true;
                sub.stats.packets_out += 1;
            }
        }
        for l in keyframe_wanted {
            self.request_keyframe(now, i, mid, l);
        }
    }

    /// Asks publisher `source` (its peer key) for a keyframe on `layer` of its track `mid`,
    /// unless one was asked for within the throttle's interval.
    pub(super) fn request_keyframe(&mut self, now: Instant, source: usize, mid: Mid, layer: u8) {
        let Some(peer) = self.peers.get_mut(source) else {
            return;
        };
        if !self.keyframes.allow(now, source, mid, layer) {
            return;
        }
        let rid = match layer {
            0 => None,
            1 => Some(Rid::from("m")),
            _ => Some(Rid::from("h")),
        };
        peer.rtc.call(|rtc| {
            let mut api = rtc.direct_api();
            let stream = match api.stream_rx_by_mid(mid, rid) {
                Some(s) => Some(s),
                None if layer == 0 => api.stream_rx_by_mid(mid, Some(Rid::from("l"))),
                None => None,
            };
            if let Some(stream) = stream {
                stream.request_keyframe(KeyframeRequestKind::Pli);
            }
        });
        peer.dirty = true;
    }
}
