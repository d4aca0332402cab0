//! The m-lines of one subscriber's session that carry the other participants' tracks, sans-IO:
//! which tracks still need an m-line, which departed sources' m-lines go inactive, and which of
//! those a returning participant takes back. The worker asks for a [`Plan`], applies it to str0m's
//! SDP API, and reports the m-lines str0m added ([`MLines::added`]); the session's existing
//! m-lines are passed in as a lookup, so the planning is tested without a session.
//!
//! Why m-lines are taken back: when a participant comes back with a new media session (a reload,
//! a new device, a reconnect after the network changed), its new track of the same kind takes the
//! m-line that carried its old one, instead of a new one: the page keeps its transceiver and tile,
//! and the session's SDP does not grow with every return. (str0m cannot recycle a stopped
//! m-line, and each one stays in every later offer; without this, some fifteen returns in one
//! consult pushed the SDP past the signaling limit.) The m-line's `msid` names the source, which
//! is why only that source may take it.

use str0m::media::{Direction, MediaKind, Mid};

use crate::forward::Downtrack;
use crate::layers::Preference;
use crate::rewrite::Rewriter;

/// Where an outgoing track's m-line stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OutState {
    /// Needs an m-line (new, or a parked one taken back) at the next offer.
    ToOpen,
    /// In an offer that has not been answered yet.
    Negotiating(Mid),
    /// Negotiated: packets go out on it.
    Open(Mid),
}

/// Another participant's track, sent to this subscriber.
#[derive(Debug)]
pub struct TrackOut {
    /// The publishing participant (the m-line's `msid` stream).
    pub source: String,
    /// The publisher's peer in the worker (its key): forwarding matches packets by it, an
    /// integer comparison instead of a string one.
    pub source_peer: usize,
    /// The published track, in the publisher's session.
    pub source_mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// Where its m-line stands.
    pub state: OutState,
    /// Layer choice and renumbering.
    pub down: Downtrack,
}

/// An m-line that carried a departed source's track, kept for that source's return.
#[derive(Debug)]
struct Parked {
    mid: Mid,
    kind: MediaKind,
    source: String,
    /// Where its outgoing numbering stopped: the returning source continues from there.
    rewriter: Rewriter,
}

/// A track that needs a new m-line: `add_media(kind, SendOnly, Some(stream))`, then
/// [`MLines::added`] with the m-line's `Mid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLine {
    /// The track, for [`MLines::added`].
    pub track: usize,
    /// The m-line's kind.
    pub kind: MediaKind,
    /// The `msid` stream id: the source participant.
    pub stream: String,
}

/// The changes of the subscriber's next offer, in the order to apply them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Departed sources' m-lines, to be made inactive.
    pub inactive: Vec<Mid>,
    /// Parked m-lines taken back, to be made send-only again. `true`: the session still has it
    /// send-only (an offer that lost to glare set it), so it is first made inactive in the same
    /// change, or the offer would not carry it.
    pub reopen: Vec<(Mid, bool)>,
    /// Tracks that need a new m-line.
    pub add: Vec<NewLine>,
    /// Video tracks that took back an m-line not made inactive yet: they send at once, so their
    /// publishers (peer key, track) are asked for a keyframe.
    pub keyframes: Vec<(usize, Mid)>,
}

/// A subscriber's outgoing tracks and their m-lines.
#[derive(Debug, Default)]
pub struct MLines {
    tracks: Vec<TrackOut>,
    /// M-lines of sources that went away, to be made inactive at the next negotiation.
    to_park: Vec<Mid>,
    /// Inactive m-lines of sources that went away, kept for the same source's return.
    parked: Vec<Parked>,
}

impl MLines {
    /// The outgoing tracks.
    pub fn tracks(&self) -> &[TrackOut] {
        &self.tracks
    }

    /// A track of `source` (peer key `source_peer`) to send to this subscriber; it gets an
    /// m-line at the next offer.
    pub fn add(
        &mut self,
        source: &str,
        source_peer: usize,
        source_mid: Mid,
        kind: MediaKind,
        preference: Preference,
    ) {
        self.tracks.push(TrackOut {
            source: source.to_string(),
            source_peer,
            source_mid,
            kind,
            state: OutState::ToOpen,
            down: Downtrack::new(kind, preference),
        });
    }

    /// The subscriber changed its wish: every track's layer choice follows it.
    pub fn set_preference(&mut self, preference: Preference) {
        for t in &mut self.tracks {
            t.down.set_preference(preference);
        }
    }

    /// The open track that carries `source_peer`'s track `source_mid`, and its m-line: where a
    /// packet of that track goes for this subscriber, if anywhere.
    pub fn sending(
        &mut self,
        source_peer: usize,
        source_mid: Mid,
    ) -> Option<(&mut Downtrack, Mid)> {
        let t = self
            .tracks
            .iter_mut()
            .find(|t| t.source_peer == source_peer && t.source_mid == source_mid)?;
        match t.state {
            OutState::Open(mid) => Some((&mut t.down, mid)),
            _ => None,
        }
    }

    /// The open track on m-line `mid`: its publisher, their track, and the layer forwarded (for
    /// a keyframe request the subscriber sent on that m-line).
    pub fn source_of(&self, mid: Mid) -> Option<(usize, Mid, u8)> {
        self.tracks
            .iter()
            .find(|t| t.state == OutState::Open(mid))
            .map(|t| (t.source_peer, t.source_mid, t.down.layer().unwrap_or(0)))
    }

    /// Whether the next offer has something to change.
    pub fn wants_offer(&self) -> bool {
        !self.to_park.is_empty() || self.tracks.iter().any(|t| t.state == OutState::ToOpen)
    }

    /// Plans the next offer. `session(mid)` is the direction of an m-line the session has
    /// (`None`: not in it). A returning source's track takes its parked m-line back; any other
    /// gets a new one; departed sources' m-lines go inactive.
    pub fn plan(&mut self, session: impl Fn(Mid) -> Option<Direction>) -> Plan {
        let mut plan = Plan::default();
        // A parked m-line whose negotiation never completed (an offer lost to glare) does not
        // exist in the session: it cannot be taken back.
        self.parked.retain(|p| session(p.mid).is_some());
        for t in self
            .tracks
            .iter_mut()
            .filter(|t| t.state == OutState::ToOpen)
        {
            let Some(at) = self
                .parked
                .iter()
                .position(|p| p.kind == t.kind && p.source == t.source)
            else {
                continue;
            };
            let slot = self.parked.swap_remove(at);
            t.down.resume(slot.rewriter);
            if let Some(k) = self.to_park.iter().position(|m| *m == slot.mid) {
                // Not made inactive yet: the m-line still sends, nothing to negotiate.
                self.to_park.swap_remove(k);
                t.state = OutState::Open(slot.mid);
                if t.kind == MediaKind::Video {
                    plan.keyframes.push((t.source_peer, t.source_mid));
                }
            } else {
                let sending = session(slot.mid) == Some(Direction::SendOnly);
                plan.reopen.push((slot.mid, sending));
                t.state = OutState::Negotiating(slot.mid);
            }
        }
        plan.inactive = std::mem::take(&mut self.to_park);
        for (i, t) in self.tracks.iter().enumerate() {
            if t.state == OutState::ToOpen {
                plan.add.push(NewLine {
                    track: i,
                    kind: t.kind,
                    stream: t.source.clone(),
                });
            }
        }
        plan
    }

    /// str0m added m-line `mid` for the plan's new line of `track`.
    pub fn added(&mut self, track: usize, mid: Mid) {
        if let Some(t) = self.tracks.get_mut(track) {
            t.state = OutState::Negotiating(mid);
        }
    }

    /// The subscriber's answer to the offer came: its m-lines are open. Returns the video
    /// tracks' publishers (peer key, track), to be asked for keyframes so the subscriber's video
    /// starts at once.
    pub fn answered(&mut self) -> Vec<(usize, Mid)> {
        for t in &mut self.tracks {
            if let OutState::Negotiating(m) = t.state {
                t.state = OutState::Open(m);
            }
        }
        self.tracks
            .iter()
            .filter(|t| t.kind == MediaKind::Video)
            .map(|t| (t.source_peer, t.source_mid))
            .collect()
    }

    /// The subscriber's own offer crossed ours (glare): theirs wins, ours is redone at the next
    /// plan. A taken-back m-line (`session(mid)` has it) goes back to the parked ones, to be
    /// taken back again; a new one never existed.
    pub fn offer_lost(&mut self, session: impl Fn(Mid) -> bool) {
        for t in &mut self.tracks {
            if let OutState::Negotiating(mid) = t.state {
                t.state = OutState::ToOpen;
                if session(mid) {
                    self.parked.push(Parked {
                        mid,
                        kind: t.kind,
                        source: t.source.clone(),
                        rewriter: t.down.park(),
                    });
                }
            }
        }
    }

    /// The publisher `source_peer` left: its tracks stop, and their m-lines go inactive at the
    /// next negotiation (so the page sees the tracks pause instead of going silent), kept for
    /// the participant's return.
    pub fn source_left(&mut self, source_peer: usize) {
        let mut k = 0;
        while k < self.tracks.len() {
            if self.tracks[k].source_peer != source_peer {
                k += 1;
                continue;
            }
            let t = self.tracks.remove(k);
            if let OutState::Open(mid) | OutState::Negotiating(mid) = t.state {
                self.to_park.push(mid);
                self.parked.push(Parked {
                    mid,
                    kind: t.kind,
                    source: t.source,
                    rewriter: t.down.into_rewriter(),
                });
            }
        }
    }

    /// M-lines kept for returns (inactive or about to be).
    pub fn parked(&self) -> usize {
        self.parked.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A subscriber's session as far as planning sees it: its m-lines and their directions,
    /// changed the way the worker changes str0m's (offer applied, then answered).
    #[derive(Default)]
    struct Session {
        lines: BTreeMap<String, Direction>,
    }

    impl Session {
        fn direction(&self, mid: Mid) -> Option<Direction> {
            self.lines.get(&*mid).copied()
        }

        /// Plans and applies an offer, then the subscriber's answer; the plan it made.
        fn negotiate(&mut self, m: &mut MLines) -> Plan {
            assert!(m.wants_offer());
            let plan = m.plan(|mid| self.direction(mid));
            for mid in &plan.inactive {
                self.lines.insert(mid.to_string(), Direction::Inactive);
            }
            for (mid, _) in &plan.reopen {
                self.lines.insert(mid.to_string(), Direction::SendOnly);
            }
            for line in &plan.add {
                let mid = Mid::from(self.lines.len().to_string().as_str());
                self.lines.insert(mid.to_string(), Direction::SendOnly);
                m.added(line.track, mid);
            }
            m.answered();
            plan
        }
    }

    fn publish(m: &mut MLines, source: &str, peer: usize) {
        m.add(
            source,
            peer,
            Mid::from("a"),
            MediaKind::Audio,
            Preference::Normal,
        );
        m.add(
            source,
            peer,
            Mid::from("v"),
            MediaKind::Video,
            Preference::Normal,
        );
    }

    fn open(m: &MLines) -> Vec<(String, MediaKind, Mid)> {
        m.tracks()
            .iter()
            .filter_map(|t| match t.state {
                OutState::Open(mid) => Some((t.source.clone(), t.kind, mid)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_returning_participant_takes_its_parked_mlines_back() {
        let mut s = Session::default();
        let mut m = MLines::default();
        publish(&mut m, "doctor", 1);
        publish(&mut m, "patient", 2);
        let first = s.negotiate(&mut m);
        assert_eq!(first.add.len(), 4, "four tracks, four m-lines");
        assert_eq!(s.lines.len(), 4);
        let patient_lines: Vec<Mid> = open(&m)
            .into_iter()
            .filter(|(who, _, _)| who == "patient")
            .map(|(_, _, mid)| mid)
            .collect();
        // The patient reloads the page ten times: each time its old session goes, the m-lines
        // go inactive, and the new session's tracks take them back.
        for round in 0..10 {
            let old_peer = 2 + round;
            m.source_left(old_peer);
            assert!(
                m.sending(old_peer, Mid::from("v")).is_none(),
                "nothing goes out"
            );
            assert_eq!(m.parked(), 2);
            let gone = s.negotiate(&mut m);
            assert_eq!(
                gone.inactive.len(),
                2,
                "round {round}: its m-lines go inactive"
            );
            assert!(gone.add.is_empty());
            for mid in &patient_lines {
                assert_eq!(s.direction(*mid), Some(Direction::Inactive));
            }
            publish(&mut m, "patient", old_peer + 1);
            let back = s.negotiate(&mut m);
            assert!(back.add.is_empty(), "round {round}: no new m-line");
            let mut reopened: Vec<Mid> = back.reopen.iter().map(|(mid, _)| *mid).collect();
            reopened.sort();
            let mut expected = patient_lines.clone();
            expected.sort();
            assert_eq!(reopened, expected, "the same m-lines, sending again");
            assert_eq!(s.lines.len(), 4, "round {round}: the session does not grow");
            assert_eq!(m.parked(), 0);
            let (down, mid) = m.sending(old_peer + 1, Mid::from("v")).expect("open");
            assert!(patient_lines.contains(&mid));
            assert_eq!(
                down.layer(),
                None,
                "a fresh layer choice for the new session"
            );
        }
        assert_eq!(open(&m).len(), 4);
    }

    #[test]
    fn a_quick_return_reuses_the_mline_before_it_goes_inactive() {
        let mut s = Session::default();
        let mut m = MLines::default();
        publish(&mut m, "patient", 5);
        s.negotiate(&mut m);
        let before = open(&m);
        m.source_left(5);
        publish(&mut m, "patient", 6);
        let plan = m.plan(|mid| s.direction(mid));
        assert_eq!(
            plan,
            Plan {
                keyframes: vec![(6, Mid::from("v"))],
                ..Plan::default()
            },
            "nothing to negotiate: the m-lines still send; the video asks for a keyframe"
        );
        assert!(!m.wants_offer());
        let mut after = open(&m);
        after.sort_by_key(|(_, kind, _)| *kind == MediaKind::Video);
        let mut before = before;
        before.sort_by_key(|(_, kind, _)| *kind == MediaKind::Video);
        assert_eq!(after, before);
    }

    #[test]
    fn only_the_same_source_takes_an_mline_back() {
        let mut s = Session::default();
        let mut m = MLines::default();
        publish(&mut m, "doctor", 1);
        s.negotiate(&mut m);
        m.source_left(1);
        s.negotiate(&mut m);
        publish(&mut m, "nurse", 2);
        let plan = s.negotiate(&mut m);
        assert_eq!(plan.add.len(), 2, "another participant gets new m-lines");
        assert!(plan.reopen.is_empty());
        assert_eq!(m.parked(), 2, "the doctor's stay kept for the doctor");
    }

    #[test]
    fn a_departed_sources_tracks_are_dropped_and_others_go_on() {
        let mut s = Session::default();
        let mut m = MLines::default();
        publish(&mut m, "doctor", 1);
        publish(&mut m, "patient", 2);
        s.negotiate(&mut m);
        m.source_left(1);
        assert_eq!(m.tracks().len(), 2, "only the patient's tracks remain");
        assert!(m.tracks().iter().all(|t| t.source == "patient"));
        assert!(m.sending(1, Mid::from("a")).is_none());
        assert!(m.sending(2, Mid::from("a")).is_some());
        assert_eq!(
            m.source_of(Mid::from("0")),
            None,
            "its m-line has no source now"
        );
    }

    #[test]
    fn an_offer_lost_to_glare_is_redone_and_keeps_taken_back_mlines() {
        let mut s = Session::default();
        let mut m = MLines::default();
        publish(&mut m, "patient", 1);
        s.negotiate(&mut m);
        m.source_left(1);
        s.negotiate(&mut m);
        publish(&mut m, "patient", 2);
        publish(&mut m, "doctor", 3);
        // Our offer goes out, then the subscriber's own offer crosses it.
        let plan = m.plan(|mid| s.direction(mid));
        assert_eq!((plan.reopen.len(), plan.add.len()), (2, 2));
        for (mid, _) in &plan.reopen {
            s.lines.insert(mid.to_string(), Direction::SendOnly);
        }
        for line in &plan.add {
            m.added(line.track, Mid::from(format!("new{}", line.track).as_str()));
        }
        m.offer_lost(|mid| s.direction(mid).is_some());
        assert_eq!(m.parked(), 2, "taken-back m-lines are parked again");
        assert!(m.tracks().iter().all(|t| t.state == OutState::ToOpen));
        // Redone: the patient takes them back again (still send-only in the session, so made
        // inactive first), the doctor gets new ones.
        let redo = s.negotiate(&mut m);
        assert_eq!(redo.add.len(), 2);
        assert_eq!(redo.reopen.len(), 2);
        assert!(redo.reopen.iter().all(|(_, sending)| *sending));
        assert_eq!(s.lines.len(), 4);
    }
}
