//! Which simulcast layer a subscriber gets: the best one its bandwidth estimate carries, capped by
//! its preference (normal, low-data, audio-only). Downgrades are decided at once, upgrades only
//! after the estimate has stayed high for a while; either way the switch happens at a keyframe of
//! the new layer, which the forwarder asks for (throttled) and waits for, forwarding the old layer
//! meanwhile.

use std::time::{Duration, Instant};

/// A subscriber's wish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Preference {
    #[default]
    Normal,
    /// The lowest layer only.
    LowData,
    /// No video.
    AudioOnly,
}

/// Fraction of the estimate that video may use (the rest is for audio and headroom).
const HEADROOM: f64 = 0.85;
/// How long the estimate must carry a higher layer before switching up.
const UPGRADE_AFTER: Duration = Duration::from_secs(2);

/// The layer choice for one subscriber of one published video track.
#[derive(Debug, Default)]
pub struct LayerSelector {
    pref: Preference,
    current: Option<u8>,
    target: Option<u8>,
    upgrade_since: Option<Instant>,
}

/// What to do with an incoming video packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it on the current layer.
    Forward,
    /// Switch to this packet's layer (it starts a keyframe), then forward it.
    SwitchAndForward,
    Drop,
}

impl LayerSelector {
    pub fn set_preference(&mut self, pref: Preference) {
        self.pref = pref;
    }

    pub fn current(&self) -> Option<u8> {
        self.current
    }

    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// The best layer for `estimate_bps`, given each layer's measured bitrate (index = layer,
    /// lowest first; 0 means not seen yet).
    pub fn ideal(&self, bitrates: &[u64], estimate_bps: u64) -> Option<u8> {
        let seen: Vec<u8> = (0..bitrates.len() as u8)
            .filter(|&i| bitrates[i as usize] > 0)
            .collect();
        let lowest = *seen.first()?;
        match self.pref {
            Preference::AudioOnly => None,
            Preference::LowData => Some(lowest),
            Preference::Normal => {
                let budget = estimate_bps as f64 * HEADROOM;
                Some(
                    seen.iter()
                        .rev()
                        .copied()
                        .find(|&i| bitrates[i as usize] as f64 <= budget)
                        .unwrap_or(lowest),
                )
            }
        }
    }

    /// The bitrate this subscriber would need for the layer it would like most (the top layer
    /// seen, the lowest for low data, nothing for audio only), headroom included: what the
    /// bandwidth estimator is asked to probe for, so a subscriber on a fast link climbs to the
    /// top layer instead of staying at the layer its first estimate allowed.
    pub fn wanted_bps(&self, bitrates: &[u64]) -> u64 {
        let mut seen = bitrates.iter().copied().filter(|&b| b > 0);
        let rate = match self.pref {
            Preference::AudioOnly => 0,
            Preference::LowData => seen.next().unwrap_or(0),
            Preference::Normal => seen.max().unwrap_or(0),
        };
        (rate as f64 / HEADROOM).ceil() as u64
    }

    /// Re-decides the target layer; returns a layer to request a keyframe on when the target
    /// changed to one not yet forwarded.
    pub fn update(&mut self, now: Instant, bitrates: &[u64], estimate_bps: u64) -> Option<u8> {
        let ideal = self.ideal(bitrates, estimate_bps);
        let new_target = match (ideal, self.target) {
            (Some(i), Some(t)) if i > t => {
                let since = *self.upgrade_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= UPGRADE_AFTER {
                    Some(i)
                } else {
                    Some(t)
                }
            }
            _ => {
                self.upgrade_since = None;
                ideal
            }
        };
        if new_target != self.target {
            self.upgrade_since = None;
        }
        self.target = new_target;
        match self.target {
            None => {
                self.current = None;
                None
            }
            Some(t) if Some(t) != self.current => Some(t),
            Some(_) => None,
        }
    }

    /// Decides for a packet of `layer`; `keyframe_start` when it begins a keyframe.
    pub fn on_packet(&mut self, layer: u8, keyframe_start: bool) -> Verdict {
        if self.target.is_none() {
            return Verdict::Drop;
        }
        if Some(layer) == self.target && Some(layer) != self.current && keyframe_start {
            self.current = Some(layer);
            return Verdict::SwitchAndForward;
        }
        if Some(layer) == self.current {
            Verdict::Forward
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: [u64; 3] = [150_000, 500_000, 1_500_000];

    #[test]
    fn the_estimate_picks_the_layer() {
        let s = LayerSelector::default();
        assert_eq!(s.ideal(&RATES, 3_000_000), Some(2));
        assert_eq!(s.ideal(&RATES, 700_000), Some(1));
        assert_eq!(s.ideal(&RATES, 100_000), Some(0), "never below the lowest");
        assert_eq!(
            s.ideal(&[0, 0, 0], 3_000_000),
            None,
            "nothing published yet"
        );
        assert_eq!(
            s.ideal(&[0, 500_000, 0], 100_000),
            Some(1),
            "only what is seen"
        );
    }

    #[test]
    fn what_is_wanted_from_the_estimator_follows_the_preference() {
        let mut s = LayerSelector::default();
        let top = s.wanted_bps(&RATES);
        assert_eq!(s.ideal(&RATES, top), Some(2), "enough for the top layer");
        assert!(s.ideal(&RATES, top * 9 / 10) < Some(2), "and not much more");
        assert_eq!(s.wanted_bps(&[0, 0, 0]), 0, "nothing published yet");
        s.set_preference(Preference::LowData);
        assert_eq!(s.ideal(&RATES, s.wanted_bps(&RATES)), Some(0));
        assert!(s.wanted_bps(&RATES) < top / 2);
        s.set_preference(Preference::AudioOnly);
        assert_eq!(s.wanted_bps(&RATES), 0);
    }

    #[test]
    fn preferences_cap_the_choice() {
        let mut s = LayerSelector::default();
        s.set_preference(Preference::LowData);
        assert_eq!(s.ideal(&RATES, 10_000_000), Some(0));
        s.set_preference(Preference::AudioOnly);
        assert_eq!(s.ideal(&RATES, 10_000_000), None);
        let t = Instant::now();
        assert_eq!(s.update(t, &RATES, 10_000_000), None);
        assert_eq!(s.on_packet(0, true), Verdict::Drop);
    }

    #[test]
    fn switches_wait_for_a_keyframe_and_upgrades_for_a_steady_estimate() {
        let t = Instant::now();
        let mut s = LayerSelector::default();
        assert_eq!(
            s.update(t, &RATES, 3_000_000),
            Some(2),
            "ask for a keyframe on the high layer"
        );
        assert_eq!(
            s.on_packet(2, false),
            Verdict::Drop,
            "not before its keyframe"
        );
        assert_eq!(s.on_packet(2, true), Verdict::SwitchAndForward);
        assert_eq!(s.on_packet(2, false), Verdict::Forward);
        assert_eq!(s.on_packet(0, true), Verdict::Drop);
        // The estimate collapses: downgrade decided at once, old layer forwarded until the keyframe.
        assert_eq!(s.update(t, &RATES, 300_000), Some(0));
        assert_eq!(s.on_packet(2, false), Verdict::Forward);
        assert_eq!(s.on_packet(0, false), Verdict::Drop);
        assert_eq!(s.on_packet(0, true), Verdict::SwitchAndForward);
        assert_eq!(s.on_packet(2, true), Verdict::Drop);
        // It recovers: only after it stays high for a while.
        assert_eq!(s.update(t, &RATES, 3_000_000), None);
        assert_eq!(
            s.update(t + Duration::from_secs(1), &RATES, 3_000_000),
            None
        );
        assert_eq!(
            s.update(t + Duration::from_secs(2), &RATES, 3_000_000),
            Some(2)
        );
        // A dip in between restarts the wait.
        let mut s2 = LayerSelector::default();
        s2.update(t, &RATES, 300_000);
        s2.on_packet(0, true);
        s2.update(t, &RATES, 3_000_000);
        s2.update(t + Duration::from_secs(1), &RATES, 300_000);
        assert_eq!(
            s2.update(t + Duration::from_millis(2500), &RATES, 3_000_000),
            None
        );
    }
}
