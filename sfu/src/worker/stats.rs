//! The worker's once-a-second tick: layer rates for the selectors, what each subscriber's
//! bandwidth estimator should probe for, and the notices signaling turns into host stats and
//! `/metrics`.

use std::collections::HashMap;
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::media::{MediaKind, Mid};

use super::{Notice, Worker};

/// How far above what a subscriber's preferred layers need its bandwidth estimator probes. str0m
/// paces output at 1.1× the estimate, so an estimate just above the media rate holds every
/// keyframe burst back in the pacer: on loopback, 8 consults at the top layer had a p99 of 5–25 ms
/// with the bare need and 6–7 ms with three times it. On a real link the estimate stops at what
/// the link carries anyway; probes are short bursts.
const PROBE_ABOVE: u64 = 3;

impl Worker {
    pub(super) fn stats(&mut self, now: Instant) {
        let secs = now.duration_since(self.last_stats).as_secs_f64().max(0.001);
        self.last_stats = now;
        for (_, p) in self.peers.iter_mut() {
            for t in &mut p.tracks_in {
                for l in 0..3 {
                    t.rates[l] = (t.bytes[l] as f64 * 8.0 / secs) as u64;
                    t.bytes[l] = 0;
                }
            }
        }
        // Each subscriber's estimator is told what its preferred layers need (audio at a nominal
        // 64 kbit/s), times PROBE_ABOVE, so str0m probes above what is being sent and the
        // selector can climb: without it the estimate follows what is sent (it may grow only so
        // far past what is acknowledged), and a subscriber that started on a low layer stayed
        // there. Only a change of more than a tenth is passed on; a higher desire starts a probe.
        let rates: HashMap<(usize, Mid), [u64; 3]> = self
            .peers
            .iter()
            .flat_map(|(k, p)| p.tracks_in.iter().map(move |t| ((k, t.mid), t.rates)))
            .collect();
        let desired: Vec<u64> = self
            .peers
            .iter()
            .map(|(_, p)| {
                p.mlines
                    .tracks()
                    .iter()
                    .map(|t| match t.kind {
                        MediaKind::Video => rates
                            .get(&(t.source_peer, t.source_mid))
                            .map_or(0, |r| t.down.wanted_bps(r)),
                        _ => 64_000,
                    })
                    .sum()
            })
            .collect();
        for ((_, p), desired) in self.peers.iter_mut().zip(desired) {
            if desired.abs_diff(p.desired_bps) * 10 > p.desired_bps {
                p.desired_bps = desired;
                p.rtc.call(|rtc| {
                    rtc.bwe()
                        .set_bitrate(Bitrate::ZERO, Bitrate::bps(desired * PROBE_ABOVE))
                });
                p.dirty = true;
            }
        }
        for (_, p) in self.peers.iter_mut() {
            p.stats.bitrate_in_bps = (p.bytes_in as f64 * 8.0 / secs) as u64;
            p.stats.bitrate_out_bps = (p.bytes_out as f64 * 8.0 / secs) as u64;
            p.bytes_in = 0;
            p.bytes_out = 0;
            p.stats.estimate_bps = p.estimate_bps;
            p.stats.layer = p
                .mlines
                .tracks()
                .iter()
                .filter_map(|t| t.down.layer())
                .max();
            // Stats are the first to go when signaling is behind.
            let _ = self.notices.try_send(Notice::Stats {
                consult: p.consult.clone(),
                participant: p.participant.clone(),
                stats: p.stats.clone(),
            });
        }
        let _ = self.notices.try_send(Notice::Worker {
            udp_addr: self.addr,
            peers: self.peers.len(),
            dropped_unknown: self.dropped_unknown,
        });
    }
}
