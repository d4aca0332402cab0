//! One continuous outgoing stream from several incoming ones (simulcast layers): a subscriber sees
//! a single SSRC whose sequence numbers, timestamps and (VP8) PictureID/TL0PICIDX never jump, even
//! when the forwarder switches layers. The SSRC itself is the outgoing stream's own (str0m writes
//! it); this type computes the rest.

use std::time::{Duration, Instant};

use crate::codec::{Vp8Descriptor, vp8_rewrite};

/// Where an incoming packet's numbers map to on the outgoing stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// Extended (never wrapping) outgoing sequence number.
    pub seq: u64,
    pub timestamp: u32,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    layer: u8,
    /// First incoming sequence number of this layer that is forwarded (its keyframe).
    first_in_seq: u64,
    seq_offset: i64,
    ts_offset: u32,
    pid_offset: u16,
    tl0_offset: u8,
}

/// Rewrites one subscriber's view of one published track.
#[derive(Debug)]
pub struct Rewriter {
    clock_rate: u32,
    mapping: Option<Mapping>,
    last_seq: u64,
    last_ts: u32,
    last_at: Option<Instant>,
    last_pid: u16,
    last_tl0: u8,
}

impl Rewriter {
    /// `clock_rate`: the codec's RTP clock (90 kHz video, 48 kHz Opus).
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate,
            mapping: None,
            last_seq: 0,
            last_ts: 0,
            last_at: None,
            last_pid: 0,
            last_tl0: 0,
        }
    }

    /// The source behind the outgoing stream changes (a participant back with a new media
    /// session): nothing maps until the next [`Rewriter::switch`], which continues the numbering
    /// where it stopped.
    pub fn new_source(&mut self) {
        self.mapping = None;
    }

    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// The layer currently forwarded.
    pub fn layer(&self) -> Option<u8> {
        self.mapping.map(|m| m.layer)
    }

    /// Starts forwarding `layer` at the packet (`in_seq`, `in_ts`), which must begin a keyframe
    /// (or be the first packet of an audio stream). The outgoing stream continues one sequence
    /// number later, and its timestamp advances by the wall-clock time since the last packet.
    pub fn switch(
        &mut self,
        now: Instant,
        layer: u8,
        in_seq: u64,
        in_ts: u32,
        vp8: Option<&Vp8Descriptor>,
    ) {
        let out_seq = if self.last_at.is_some() {
            self.last_seq + 1
        } else {
            1000
        };
        let elapsed = self
            .last_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let ticks = ((elapsed.as_secs_f64() * self.clock_rate as f64) as u32).max(1);
        let out_ts = if self.last_at.is_some() {
            self.last_ts.wrapping_add(ticks)
        } else {
            in_ts
        };
        let (pid_offset, tl0_offset) = match vp8 {
            Some(d) => (
                d.picture_id.map_or(0, |(pid, _, _)| {
                    self.last_pid.wrapping_add(1).wrapping_sub(pid)
                }),
                d.tl0picidx
                    .map_or(0, |(t, _)| self.last_tl0.wrapping_add(1).wrapping_sub(t)),
            ),
            None => (0, 0),
        };
        self.mapping = Some(Mapping {
            layer,
            first_in_seq: in_seq,
            seq_offset: out_seq as i64 - in_seq as i64,
            ts_offset: out_ts.wrapping_sub(in_ts),
            pid_offset,
            tl0_offset,
        });
    }

    /// Maps a packet of the current layer, rewriting a VP8 payload in place; `None` for packets of
    /// another layer or from before the switch point (they would jump backwards).
    pub fn map(
        &mut self,
        now: Instant,
        layer: u8,
        in_seq: u64,
        in_ts: u32,
        vp8: Option<(&Vp8Descriptor, &mut [u8])>,
    ) -> Option<Mapped> {
        let m = self
            .mapping
            .filter(|m| m.layer == layer && in_seq >= m.first_in_seq)?;
        let seq = (in_seq as i64 + m.seq_offset) as u64;
        let timestamp = in_ts.wrapping_add(m.ts_offset);
        if let Some((d, payload)) = vp8 {
            let wide = d.picture_id.is_some_and(|(_, _, w)| w);
            let mask = if wide { 0x7fff } else { 0x7f };
            let pid = d
                .picture_id
                .map_or(0, |(p, _, _)| p.wrapping_add(m.pid_offset) & mask);
            let tl0 = d.tl0picidx.map_or(0, |(t, _)| t.wrapping_add(m.tl0_offset));
            vp8_rewrite(payload, d, pid, tl0);
            if seq >= self.last_seq {
                self.last_pid = pid;
                self.last_tl0 = tl0;
            }
        }
        // Retransmissions and reordering keep their mapping; only newer packets move the end.
        if seq >= self.last_seq || self.last_at.is_none() {
            self.last_seq = seq;
            self.last_ts = timestamp;
            self.last_at = Some(now);
        }
        Some(Mapped { seq, timestamp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::vp8;

    #[test]
    fn one_layer_passes_through_with_a_fixed_offset() {
        let t = Instant::now();
        let mut r = Rewriter::new(90_000);
        r.switch(t, 0, 500, 3000, None);
        let a = r.map(t, 0, 500, 3000, None).unwrap();
        let b = r.map(t, 0, 501, 3000, None).unwrap();
        let c = r.map(t, 0, 502, 6000, None).unwrap();
        assert_eq!((b.seq - a.seq, c.seq - b.seq), (1, 1));
        assert_eq!(c.timestamp.wrapping_sub(a.timestamp), 3000);
        assert!(
            r.map(t, 0, 499, 0, None).is_none(),
            "from before the switch point"
        );
        assert!(r.map(t, 1, 600, 0, None).is_none(), "another layer");
    }

    #[test]
    fn switching_layers_keeps_the_stream_continuous() {
        let t = Instant::now();
        let mut r = Rewriter::new(90_000);
        r.switch(t, 2, 10_000, 1_000_000, None);
        let mut last = r.map(t, 2, 10_000, 1_000_000, None).unwrap();
        for i in 1..50u64 {
            last = r
                .map(
                    t + Duration::from_millis(i * 33),
                    2,
                    10_000 + i,
                    1_000_000 + (i as u32) * 2970,
                    None,
                )
                .unwrap();
        }
        // Low layer: wildly different numbering, including a timestamp about to wrap.
        let at = t + Duration::from_millis(50 * 33);
        r.switch(at, 0, 7, u32::MAX - 100, None);
        let first = r.map(at, 0, 7, u32::MAX - 100, None).unwrap();
        assert_eq!(first.seq, last.seq + 1, "sequence continues");
        let dt = first.timestamp.wrapping_sub(last.timestamp);
        assert!(
            (2900..=3100).contains(&dt),
            "timestamp advances by the elapsed time: {dt}"
        );
        let next = r
            .map(
                at + Duration::from_millis(33),
                0,
                8,
                (u32::MAX - 100).wrapping_add(2970),
                None,
            )
            .unwrap();
        assert_eq!(next.seq, first.seq + 1);
        assert_eq!(
            next.timestamp.wrapping_sub(first.timestamp),
            2970,
            "wraps cleanly"
        );
        assert!(
            r.map(at, 2, 10_051, 0, None).is_none(),
            "the old layer is no longer forwarded"
        );
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_switch() {
        let t = Instant::now();
        let mut r = Rewriter::new(90_000);
        let mut high = [0x90u8, 0xc0, 0x80 | 0x10, 0x00, 50, 0x00];
        let d = vp8(&high).unwrap();
        r.switch(t, 1, 1, 0, Some(&d));
        r.map(t, 1, 1, 0, Some((&d, &mut high))).unwrap();
        let out_pid = vp8(&high).unwrap().picture_id.unwrap().0;
        let out_tl0 = vp8(&high).unwrap().tl0picidx.unwrap().0;
        let mut low = [0x90u8, 0xc0, 0x80 | 0x7f, 0xff, 3, 0x00];
        let d = vp8(&low).unwrap();
        r.switch(t, 0, 900, 0, Some(&d));
        r.map(t, 0, 900, 0, Some((&d, &mut low))).unwrap();
        let after = vp8(&low).unwrap();
        assert_eq!(after.picture_id.unwrap().0, (out_pid + 1) & 0x7fff);
        assert_eq!(after.tl0picidx.unwrap().0, out_tl0.wrapping_add(1));
    }

    #[test]
    fn a_new_source_continues_the_numbering_after_the_switch() {
        let t = Instant::now();
        let mut r = Rewriter::new(48_000);
        r.switch(t, 0, 100, 0, None);
        r.map(t, 0, 100, 0, None).unwrap();
        let last = r.map(t, 0, 101, 960, None).unwrap();
        // The participant is back with a new session: new SSRC, numbering from elsewhere.
        r.new_source();
        assert_eq!(r.layer(), None, "nothing maps until the switch");
        assert!(r.map(t, 0, 40_000, 7, None).is_none());
        let at = t + Duration::from_secs(3);
        r.switch(at, 0, 40_000, 7, None);
        let first = r.map(at, 0, 40_000, 7, None).unwrap();
        assert_eq!(first.seq, last.seq + 1);
        let dt = first.timestamp.wrapping_sub(last.timestamp);
        assert!(
            (143_000..=145_000).contains(&dt),
            "the timestamp advances by the 3 s away: {dt}"
        );
    }

    #[test]
    fn retransmissions_keep_their_place() {
        let t = Instant::now();
        let mut r = Rewriter::new(48_000);
        r.switch(t, 0, 100, 0, None);
        let a = r.map(t, 0, 100, 0, None).unwrap();
        r.map(t, 0, 101, 960, None).unwrap();
        r.map(t, 0, 102, 1920, None).unwrap();
        let again = r.map(t, 0, 101, 960, None).unwrap();
        assert_eq!(again.seq, a.seq + 1);
        let next = r.map(t, 0, 103, 2880, None).unwrap();
        assert_eq!(next.seq, a.seq + 3);
    }
}
