//! The forwarding decisions, sans-IO: for one subscriber of one published track, what happens to
//! a received packet (forwarded on the chosen simulcast layer with rewritten numbers, or dropped),
//! and which keyframe requests go to the publisher. The worker reads the packet once
//! ([`Packet::read`]), asks each subscriber's [`Downtrack`] for a [`Decision`], and does what it
//! says (`write_rtp`, and `request_keyframe` for what [`KeyframeRequests`] lets through). Time is
//! always passed in, so the tests below move it by hand.

use std::hash::Hash;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{MediaKind, Mid};

use crate::codec::{Vp8Descriptor, h264_keyframe, vp8};
use crate::keyframes::KeyframeThrottle;
use crate::layers::{LayerSelector, Preference, Verdict};
use crate::rewrite::{Mapped, Rewriter};

/// What the forwarder reads of a received packet, once for all of its subscribers.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    /// The published track's kind: only video has layers to choose between.
    pub kind: MediaKind,
    /// The simulcast layer it arrived on (see [`layer_of`]).
    pub layer: u8,
    /// The extended incoming sequence number.
    pub seq: u64,
    /// The incoming RTP timestamp.
    pub timestamp: u32,
    /// Whether a keyframe starts in it. Always true where there is no keyframe to wait for
    /// (audio, codecs the forwarder does not parse).
    pub keyframe: bool,
    /// The VP8 payload descriptor: its PictureID and TL0PICIDX are rewritten on the way out.
    pub vp8: Option<Vp8Descriptor>,
    /// The source track's layer bitrates over the last window, a layer seen now counting as
    /// present (see [`Packet::read`]).
    pub rates: [u64; 3],
}

impl Packet {
    /// Reads what forwarding needs from a packet of `codec` arriving on `layer`. `rates` are the
    /// source track's layer bitrates measured over the last window; before the first window a
    /// layer seen now counts as present (with a nominal rate), so forwarding starts at once.
    pub fn read(
        kind: MediaKind,
        codec: Codec,
        layer: u8,
        seq: u64,
        timestamp: u32,
        payload: &[u8],
        mut rates: [u64; 3],
    ) -> Self {
        let vp8 = if codec == Codec::Vp8 {
            vp8(payload)
        } else {
            None
        };
        let keyframe = match codec {
            Codec::Vp8 => vp8.is_some_and(|d| d.keyframe),
            Codec::H264 => h264_keyframe(payload),
            _ => true,
        };
        if rates[layer as usize] == 0 {
            rates[layer as usize] = 1;
        }
        Self {
            kind,
            layer,
            seq,
            timestamp,
            keyframe,
            vp8,
            rates,
        }
    }
}

/// Layer index of a simulcast rid: `l`/`q` lowest, `m` above, `h`/`f` top; no rid is layer 0.
pub fn layer_of(rid: Option<&str>) -> u8 {
    match rid {
        Some("h") | Some("f") => 2,
        Some("m") => 1,
        _ => 0,
    }
}

/// What to do with one packet for one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Send it with these numbers (the SSRC is the subscriber's outgoing stream's own, which
    /// str0m writes); `None`: not for this subscriber (another layer, or before a switch point).
    pub forward: Option<Mapped>,
    /// Ask the publisher for a keyframe on this layer (through [`KeyframeRequests`]): the
    /// subscriber's target layer changed to one not yet forwarded.
    pub keyframe: Option<u8>,
}

/// One subscriber's copy of one published track: which layer it gets ([`LayerSelector`]) and
/// how that layer's packets are renumbered into one continuous stream ([`Rewriter`]).
#[derive(Debug)]
pub struct Downtrack {
    kind: MediaKind,
    selector: LayerSelector,
    rewriter: Rewriter,
}

impl Downtrack {
    /// A subscriber's copy of a `kind` track, for a subscriber who prefers `preference`.
    pub fn new(kind: MediaKind, preference: Preference) -> Self {
        let mut selector = LayerSelector::default();
        selector.set_preference(preference);
        Self {
            kind,
            selector,
            rewriter: Rewriter::new(clock_rate(kind)),
        }
    }

    /// The subscriber changed its wish (normal, low data, audio only).
    pub fn set_preference(&mut self, preference: Preference) {
        self.selector.set_preference(preference);
    }

    /// The layer currently forwarded (video only).
    pub fn layer(&self) -> Option<u8> {
        self.selector.current()
    }

    /// What this subscriber's bandwidth estimator should probe for, given the source track's
    /// layer bitrates (see [`LayerSelector::wanted_bps`]).
    pub fn wanted_bps(&self, rates: &[u64]) -> u64 {
        self.selector.wanted_bps(rates)
    }

    /// Takes the renumbering out (the m-line is parked for the source's return), leaving a
    /// fresh one.
    pub fn park(&mut self) -> Rewriter {
        std::mem::replace(&mut self.rewriter, Rewriter::new(clock_rate(self.kind)))
    }

    /// The renumbering, for parking a track that is going away.
    pub fn into_rewriter(self) -> Rewriter {
        self.rewriter
    }

    /// Continues a parked m-line's numbering with a new source behind it.
    pub fn resume(&mut self, mut rewriter: Rewriter) {
        rewriter.new_source();
        self.rewriter = rewriter;
    }

    /// Decides for `pkt` at `now`, given this subscriber's bandwidth estimate. A video packet of
    /// the target layer switches to it only at a keyframe; until then the old layer goes on. For
    /// a VP8 packet that is forwarded, `payload` is asked once for a copy of the payload to
    /// rewrite in place (so a dropped packet costs no copy, and other codecs none at all).
    pub fn decide<'p>(
        &mut self,
        now: Instant,
        pkt: &Packet,
        estimate_bps: u64,
        payload: impl FnOnce() -> &'p mut [u8],
    ) -> Decision {
        let mut keyframe = None;
        if self.kind == MediaKind::Video {
            keyframe = self.selector.update(now, &pkt.rates, estimate_bps);
            match self.selector.on_packet(pkt.layer, pkt.keyframe) {
                Verdict::Drop => {
                    return Decision {
                        forward: None,
                        keyframe,
                    };
                }
                Verdict::SwitchAndForward => {
                    self.rewriter
                        .switch(now, pkt.layer, pkt.seq, pkt.timestamp, pkt.vp8.as_ref())
                }
                Verdict::Forward => {}
            }
        } else if self.rewriter.layer().is_none() {
            self.rewriter.switch(now, 0, pkt.seq, pkt.timestamp, None);
        }
        let vp8 = pkt.vp8.as_ref().map(|d| (d, payload()));
        let forward = self
            .rewriter
            .map(now, pkt.layer, pkt.seq, pkt.timestamp, vp8);
        Decision { forward, keyframe }
    }
}

/// The codec's RTP clock: 48 kHz for Opus, 90 kHz for video.
fn clock_rate(kind: MediaKind) -> u32 {
    if kind == MediaKind::Audio {
        48_000
    } else {
        90_000
    }
}

/// Keyframe requests towards publishers, by source `S` (the worker's peer key), track and layer:
/// however many subscribers ask (joins, layer switches, loss), a publisher's layer is asked at
/// most once per interval.
#[derive(Debug)]
pub struct KeyframeRequests<S> {
    throttle: KeyframeThrottle<(S, Mid, u8)>,
}

impl<S: Hash + Eq + Copy> KeyframeRequests<S> {
    /// At most one request per source layer per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            throttle: KeyframeThrottle::new(interval),
        }
    }

    /// Whether a request for `layer` of `source`'s track `mid` goes out at `now`.
    pub fn allow(&mut self, now: Instant, source: S, mid: Mid, layer: u8) -> bool {
        self.throttle.allow(now, (source, mid, layer))
    }

    /// The source left: its request times go (kept, they would grow by a few entries per
    /// visitor forever, and a returning source would wait out an old interval).
    pub fn source_left(&mut self, source: S) {
        self.throttle.forget_where(|(s, _, _)| *s == source);
    }

    /// Source layers remembered.
    pub fn len(&self) -> usize {
        self.throttle.len()
    }

    /// Whether no source layer is remembered.
    pub fn is_empty(&self) -> bool {
        self.throttle.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: [u64; 3] = [150_000, 500_000, 1_500_000];

    /// A VP8 packet on `layer` with 15-bit PictureID `pid` and TL0PICIDX `tl0`.
    fn vp8_payload(keyframe: bool, pid: u16, tl0: u8) -> [u8; 7] {
        // X and S bits; I and L present; M bit with the 15-bit PictureID; then the VP8 payload
        // header, whose lowest bit is 0 for a keyframe.
        [
            0x90,
            0xc0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            if keyframe { 0x00 } else { 0x01 },
            0,
        ]
    }

    fn packet(layer: u8, seq: u64, ts: u32, payload: &[u8]) -> Packet {
        Packet::read(MediaKind::Video, Codec::Vp8, layer, seq, ts, payload, RATES)
    }

    /// Feeds one packet through the downtrack the way the worker does; the payload as sent.
    fn send(
        d: &mut Downtrack,
        now: Instant,
        estimate: u64,
        layer: u8,
        seq: u64,
        ts: u32,
        payload: [u8; 7],
    ) -> (Decision, [u8; 7]) {
        let pkt = packet(layer, seq, ts, &payload);
        let mut copy = payload;
        let decision = d.decide(now, &pkt, estimate, || &mut copy[..]);
        (decision, copy)
    }

    #[test]
    fn a_layer_switch_waits_for_a_keyframe_and_the_receiver_sees_one_stream() {
        let t = Instant::now();
        let mut d = Downtrack::new(MediaKind::Video, Preference::Normal);
        // A low estimate: the low layer, from its keyframe on.
        let (first, _) = send(&mut d, t, 300_000, 0, 50, 9000, vp8_payload(false, 7, 1));
        assert_eq!(first.keyframe, Some(0), "a keyframe is asked for layer 0");
        assert_eq!(first.forward, None, "nothing before the keyframe");
        let mut out = Vec::new();
        let mut seq = 51;
        let mut ts: u32 = 9000;
        for i in 0..30u64 {
            let now = t + Duration::from_millis(33 * i);
            let key = i == 0;
            for layer in 0..3u8 {
                // Every layer is published, each numbered its own way.
                let (s, stamp) = (seq + 10_000 * layer as u64, ts.wrapping_add(layer as u32));
                let (dec, sent) = send(
                    &mut d,
                    now,
                    300_000,
                    layer,
                    s,
                    stamp,
                    vp8_payload(key, 100 * layer as u16 + i as u16, layer),
                );
                if let Some(m) = dec.forward {
                    assert_eq!(layer, 0, "only the low layer goes out");
                    out.push((m, sent));
                }
            }
            seq += 1;
            ts = ts.wrapping_add(2970);
        }
        assert_eq!(out.len(), 30);
        // The estimate rises: the switch up is decided after 2 s of it, and asks for a
        // keyframe on the top layer; until that keyframe comes the low layer goes on.
        let up = t + Duration::from_secs(1);
        let mut asked = Vec::new();
        for i in 0..100u64 {
            let now = up + Duration::from_millis(33 * i);
            let key_on_top = i == 80;
            // The top layer first: at packet 80 its keyframe comes before that frame's low one.
            for layer in (0..3u8).rev() {
                let key = layer == 2 && key_on_top;
                let (dec, sent) = send(
                    &mut d,
                    now,
                    3_000_000,
                    layer,
                    seq + 10_000 * layer as u64,
                    ts.wrapping_add(layer as u32 * 1_000_000),
                    vp8_payload(key, 100 * layer as u16 + (30 + i) as u16, layer),
                );
                asked.extend(dec.keyframe.map(|l| (i, l)));
                if let Some(m) = dec.forward {
                    let want = if i < 80 { 0 } else { 2 };
                    assert_eq!(layer, want, "packet {i}: the old layer until the keyframe");
                    out.push((m, sent));
                }
            }
            seq += 1;
            ts = ts.wrapping_add(2970);
        }
        let (first_ask, layer) = asked[0];
        assert_eq!(layer, 2, "the keyframe is asked on the target layer");
        assert!(
            (first_ask as f64 * 33.0) >= 2000.0 - 33.0,
            "upgrades wait for a steady estimate: asked at packet {first_ask}"
        );
        assert!(asked.iter().all(|&(i, l)| l == 2 && i <= 80));
        assert_eq!(d.layer(), Some(2));
        assert_eq!(out.len(), 130);
        // What the receiver sees: one stream, no gaps, no jumps, across the switch.
        for pair in out.windows(2) {
            let ((a, pa), (b, pb)) = (pair[0], pair[1]);
            assert_eq!(b.seq, a.seq + 1, "sequence numbers are continuous");
            let dt = b.timestamp.wrapping_sub(a.timestamp);
            assert!(
                (1..=4000).contains(&dt),
                "timestamps advance by a frame: {dt}"
            );
            let (da, db) = (vp8(&pa).unwrap(), vp8(&pb).unwrap());
            let (ida, idb) = (da.picture_id.unwrap().0, db.picture_id.unwrap().0);
            assert_eq!(idb, (ida + 1) & 0x7fff, "PictureIDs are continuous");
        }
    }

    #[test]
    fn a_low_estimate_switches_down_at_the_low_layers_keyframe() {
        let t = Instant::now();
        let mut d = Downtrack::new(MediaKind::Video, Preference::Normal);
        let (start, _) = send(&mut d, t, 3_000_000, 2, 1, 0, vp8_payload(true, 1, 0));
        assert_eq!(start.keyframe, Some(2));
        let top = start.forward.expect("the top layer's keyframe starts it");
        let later = t + Duration::from_millis(33);
        let (dec, _) = send(&mut d, later, 200_000, 0, 700, 5, vp8_payload(false, 9, 0));
        assert_eq!(dec.keyframe, Some(0), "a downgrade is decided at once");
        assert_eq!(dec.forward, None, "but not before the low layer's keyframe");
        let (dec, _) = send(&mut d, later, 200_000, 2, 2, 2970, vp8_payload(false, 2, 0));
        assert_eq!(
            dec.forward.map(|m| m.seq),
            Some(top.seq + 1),
            "the top goes on"
        );
        let (dec, _) = send(&mut d, later, 200_000, 0, 701, 5, vp8_payload(true, 10, 0));
        assert_eq!(
            dec.forward.map(|m| m.seq),
            Some(top.seq + 2),
            "and continues"
        );
        let (dec, _) = send(&mut d, later, 200_000, 2, 3, 5940, vp8_payload(false, 3, 0));
        assert_eq!(dec.forward, None, "the top layer is no longer sent");
    }

    #[test]
    fn audio_is_forwarded_from_its_first_packet_and_copies_nothing() {
        let t = Instant::now();
        let mut d = Downtrack::new(MediaKind::Audio, Preference::AudioOnly);
        let opus = [0xfcu8, 1, 2];
        for i in 0..5u64 {
            let pkt = Packet::read(
                MediaKind::Audio,
                Codec::Opus,
                0,
                300 + i,
                960 * i as u32,
                &opus,
                [0; 3],
            );
            let dec = d.decide(t, &pkt, 10_000, || {
                unreachable!("no payload rewrite for Opus")
            });
            assert_eq!(dec.forward.map(|m| m.seq), Some(1000 + i));
            assert_eq!(dec.keyframe, None);
        }
    }

    #[test]
    fn keyframe_requests_are_throttled_per_source_layer() {
        let t = Instant::now();
        let mut k = KeyframeRequests::new(Duration::from_millis(500));
        let mid = Mid::from("1");
        // Ten subscribers switch at once, again and again for a second.
        let mut sent = 0;
        for ms in (0..1000).step_by(50) {
            for _subscriber in 0..10 {
                sent += k.allow(t + Duration::from_millis(ms), 7usize, mid, 2) as usize;
            }
        }
        assert_eq!(sent, 2, "one request per 500 ms reaches the publisher");
        assert!(k.allow(t, 7, mid, 0), "another layer is asked on its own");
        assert!(k.allow(t, 8, mid, 2), "and another publisher");
        // The last went out at 500 ms: the next may go at 1000 ms, not before.
        assert!(!k.allow(t + Duration::from_millis(999), 7, mid, 2));
        assert!(k.allow(t + Duration::from_millis(1000), 7, mid, 2));
    }

    #[test]
    fn a_departed_sources_keyframe_state_is_dropped() {
        let t = Instant::now();
        let mut k = KeyframeRequests::new(Duration::from_millis(500));
        for layer in 0..3 {
            assert!(k.allow(t, 1usize, Mid::from("0"), layer));
            assert!(k.allow(t, 2usize, Mid::from("0"), layer));
        }
        k.source_left(1);
        assert_eq!(k.len(), 3, "only the departed source's layers go");
        assert!(
            k.allow(t, 1, Mid::from("0"), 2),
            "a newcomer in its place is asked at once"
        );
        assert!(!k.allow(t, 2, Mid::from("0"), 2));
    }

    #[test]
    fn rids_name_layers() {
        assert_eq!(layer_of(None), 0);
        assert_eq!(layer_of(Some("l")), 0);
        assert_eq!(layer_of(Some("q")), 0);
        assert_eq!(layer_of(Some("m")), 1);
        assert_eq!(layer_of(Some("h")), 2);
        assert_eq!(layer_of(Some("f")), 2);
    }
}
