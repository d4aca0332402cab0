//! The media worker: one thread owning one UDP socket and every peer (a str0m `Rtc` in RTP mode,
//! ICE-lite) of the consults assigned to it, so a consult's forwarding never crosses threads and
//! needs no locks. Signaling talks to it through [`SfuHandle`]: offers and answers in, answers,
//! server-initiated offers and notices out.
//!
//! The worker is a driver: it moves bytes between sockets and str0m sessions and passes the time
//! in; the decisions are sans-IO. Forwarding: an incoming RTP packet of participant A's track goes
//! to every other peer of the consult that has negotiated an outgoing track for it, as that
//! subscriber's [`Downtrack`](crate::forward::Downtrack) decides (which simulcast layer, one
//! continuous stream); keyframe requests to publishers go through
//! [`KeyframeRequests`](crate::forward::KeyframeRequests). Which m-lines a peer's session carries
//! is planned by its [`MLines`](crate::mlines::MLines). Every call into a peer's `Rtc` goes
//! through its [`GuardedRtc`](peer::GuardedRtc), isolated with `catch_unwind`: a peer that trips
//! a bug is disconnected, the others go on.

mod forwarding;
mod handle;
mod peer;
mod session;
mod stats;
mod tcp;

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::mpsc as smpsc;
use std::time::{Duration, Instant};

use slab::Slab;
use str0m::bwe::BweKind;
use str0m::media::Direction;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output};
use tokio::sync::mpsc;

pub use handle::{COMMAND_QUEUE, Notice, PeerStats, SfuError, SfuHandle};

use crate::forward::KeyframeRequests;
use crate::udp;
use handle::Command;
use peer::{Peer, TrackIn};
use tcp::IceTcp;

/// Most source addresses remembered; past it, those of departed peers are forgotten.
const MAX_KNOWN_SOURCES: usize = 4096;

/// Installs str0m's crypto provider for the process, once.
fn install_crypto() {
    static CRYPTO: std::sync::Once = std::sync::Once::new();
    CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}

/// Where the peers' output goes: UDP datagrams into the send queue, ICE-TCP frames onto their
/// connection.
struct Outbox {
    socket: UdpSocket,
    /// UDP datagrams the peers produced, sent with one `sendmmsg` after each received datagram
    /// is carried through, and before the worker waits for the socket.
    tx: udp::SendQueue,
    tcp: Option<IceTcp>,
}

struct Worker {
    addr: SocketAddr,
    out: Outbox,
    notices: mpsc::Sender<Notice>,
    /// The peers, by key. A slab rather than a Vec: a key stays valid for as long as its peer
    /// lives, so queued events, known sources and the other peers' tracks name their peer by
    /// key. (With a Vec, removing a peer shifted every index behind it, and every holder of an
    /// index had to check and re-search it.) A removed peer's key can be taken by the next new
    /// peer, so everything holding it is cleared in [`Worker::remove_peer`].
    peers: Slab<Peer>,
    keyframes: KeyframeRequests<usize>,
    last_stats: Instant,
    dropped_unknown: u64,
    /// Source addresses some peer has accepted, and that peer's key. A datagram from any other
    /// address must be a STUN binding request (ICE comes first); anything else is dropped after
    /// one hash lookup, without asking every peer.
    known: HashMap<SocketAddr, usize>,
    /// Datagrams received in one system call (see [`udp`](crate::udp)); `None` only while
    /// they are being handled.
    rx: Option<Box<udp::RecvBatch>>,
    /// Peer events waiting to be handled. Every input is followed by draining that peer's
    /// output into this queue: in RTP mode str0m holds one received packet until polled, so a
    /// second input before a poll would drop the first.
    events: VecDeque<(usize, Event)>,
}

// str0m's `Event` is large; boxing it would allocate once per packet on the forwarding path, and a
// `Step` only lives on the stack for one match.
#[allow(clippy::large_enum_variant)]
enum Step {
    Timeout(Instant),
    Event(Event),
    /// Output was handled (a datagram sent); poll again.
    Continue,
    Nothing,
}

impl Worker {
    fn new(
        socket: UdpSocket,
        addr: SocketAddr,
        tcp: Option<(TcpListener, SocketAddr)>,
        notices: mpsc::Sender<Notice>,
        now: Instant,
    ) -> Self {
        Self {
            addr,
            out: Outbox {
                socket,
                tx: udp::SendQueue::default(),
                tcp: tcp.map(|(listener, addr)| IceTcp::new(listener, addr, now)),
            },
            notices,
            peers: Slab::new(),
            keyframes: KeyframeRequests::new(Duration::from_millis(500)),
            last_stats: now,
            dropped_unknown: 0,
            known: HashMap::new(),
            rx: Some(Box::default()),
            events: VecDeque::new(),
        }
    }

    /// The loop. The clock is read once per pass and once per received datagram, and passed
    /// down to everything the pass or the datagram drives.
    fn run(mut self, rx: smpsc::Receiver<Command>) {
        let mut now = Instant::now();
        loop {
            // Events hold peer keys: handle them before a command may remove a peer (and a new
            // one take its key).
            self.handle_events(now);
            loop {
                match rx.try_recv() {
                    Ok(Command::Shutdown) | Err(smpsc::TryRecvError::Disconnected) => return,
                    Ok(cmd) => {
                        self.command(now, cmd);
                        self.peers.iter_mut().for_each(|(_, p)| p.dirty = true);
                    }
                    Err(smpsc::TryRecvError::Empty) => break,
                }
            }
            let next = self.poll_peers(now);
            if !self.events.is_empty() {
                self.handle_events(now);
                now = Instant::now();
                continue;
            }
            self.negotiate(now);
            self.reap();
            self.tcp_io(now);
            let mut wait = next
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            if self.out.tcp.as_ref().is_some_and(|t| t.has_connections()) {
                // TCP is polled between UDP reads: keep the wait short while connections exist.
                wait = wait.min(Duration::from_millis(2));
            }
            // Everything produced so far goes out before the worker may wait.
            self.out.tx.flush(&self.out.socket);
            // What is waiting is taken at once; only an empty socket is waited for.
            let mut rx = self.rx.take().expect("the receive batch is in place");
            let mut got = rx.recv(&self.out.socket);
            if matches!(got, Ok(0)) && udp::wait_readable(&self.out.socket, wait).unwrap_or(false) {
                got = rx.recv(&self.out.socket);
            }
            match got {
                Ok(_) => {
                    for (data, source) in rx.datagrams() {
                        let now = Instant::now();
                        self.receive(now, data, source, Protocol::Udp);
                        // Each datagram is carried through before the next: its events (a
                        // packet to forward), the subscribers' output, the send. Held for the
                        // whole batch, every packet waited for the batch's work (measured:
                        // median +0.6 ms, p99 about doubled at 40 consults).
                        self.carry_through(now);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sfu socket read failed"),
            }
            self.rx = Some(rx);
            // After the wait and the batch; the next pass starts with this reading too.
            now = Instant::now();
            self.timeouts(now);
            self.out.tx.flush(&self.out.socket);
            if now.duration_since(self.last_stats) >= Duration::from_secs(1) {
                self.stats(now);
            }
        }
    }

    fn handle_events(&mut self, now: Instant) {
        while let Some((k, e)) = self.events.pop_front() {
            self.event(now, k, e);
        }
    }

    /// What the loop did after each datagram before datagrams came in batches, now done after
    /// each datagram of a batch: its events (a packet to forward), due timeouts (str0m's pacer
    /// releases packets on them), the peers' output, the send.
    fn carry_through(&mut self, now: Instant) {
        self.handle_events(now);
        self.timeouts(now);
        self.poll_peers(now);
        self.out.tx.flush(&self.out.socket);
    }

    /// Feeds the time to every peer whose timeout is due.
    fn timeouts(&mut self, now: Instant) {
        for (k, peer) in self.peers.iter_mut() {
            if peer.next_timeout <= now {
                feed(
                    k,
                    peer,
                    Input::Timeout(now),
                    &mut self.out,
                    &mut self.events,
                );
            }
        }
    }

    /// Polls every peer that is dirty or due until it has nothing more to give: transmits are
    /// queued, events queued in `events`. Returns when the next peer timeout is due (at most
    /// 20 ms ahead).
    fn poll_peers(&mut self, now: Instant) -> Instant {
        let mut next = now + Duration::from_millis(20);
        for (k, peer) in self.peers.iter_mut() {
            if !peer.dirty && peer.next_timeout > now {
                next = next.min(peer.next_timeout);
                continue;
            }
            loop {
                match poll(peer, &mut self.out) {
                    Step::Timeout(t) => {
                        next = next.min(t);
                        break;
                    }
                    Step::Event(e) => self.events.push_back((k, e)),
                    Step::Continue => {}
                    Step::Nothing => break,
                }
            }
        }
        next
    }

    /// Reads the ICE-TCP connections' frames into the peers, and flushes their output.
    fn tcp_io(&mut self, now: Instant) {
        let Some(tcp) = &mut self.out.tcp else {
            return;
        };
        let mut frames: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        tcp.io(now, &mut frames);
        for (frame, remote) in frames {
            self.receive(now, &frame, remote, Protocol::Tcp);
        }
    }

    /// Routes a packet to the peer whose ICE/DTLS/SRTP state accepts it; others are dropped.
    fn receive(&mut self, now: Instant, data: &[u8], source: SocketAddr, proto: Protocol) {
        let stun = data.len() >= 20 && data[0] < 2 && data[4..8] == [0x21, 0x12, 0xa4, 0x42];
        if !stun && !self.known.contains_key(&source) {
            self.dropped_unknown += 1;
            return;
        }
        let Ok(contents) = data.try_into() else {
            self.dropped_unknown += 1;
            return;
        };
        let destination = match proto {
            Protocol::Tcp => self.out.tcp.as_ref().map_or(self.addr, |t| t.addr()),
            _ => self.addr,
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let accepts =
            |p: &mut Peer| p.rtc.is_alive() && p.rtc.call(|r| r.accepts(&input)).unwrap_or(false);
        // A known source's peer is asked first; only STUN from new sources asks every peer.
        let owner = self
            .known
            .get(&source)
            .copied()
            .filter(|&k| self.peers.get_mut(k).is_some_and(&accepts));
        let Some(k) = owner.or_else(|| {
            self.peers
                .iter_mut()
                .find_map(|(k, p)| accepts(p).then_some(k))
        }) else {
            self.dropped_unknown += 1;
            return;
        };
        if stun && !self.known.contains_key(&source) {
            if self.known.len() >= MAX_KNOWN_SOURCES {
                let peers = &self.peers;
                self.known.retain(|_, k| peers.contains(*k));
            }
            self.known.insert(source, k);
        }
        let peer = &mut self.peers[k];
        peer.bytes_in += data.len() as u64;
        feed(k, peer, input, &mut self.out, &mut self.events);
    }

    fn find(&self, participant: &str) -> Option<usize> {
        self.peers
            .iter()
            .find(|(_, p)| p.participant == participant)
            .map(|(k, _)| k)
    }

    fn command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Offer {
                consult,
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.offer(now, consult, participant, &sdp));
            }
            Command::Answer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.answer(now, &participant, &sdp));
            }
            Command::Candidate {
                participant,
                candidate,
            } => {
                if let (Some(k), Ok(c)) = (
                    self.find(&participant),
                    Candidate::from_sdp_string(candidate.trim_start_matches("a=")),
                ) {
                    self.peers[k].rtc.call(|rtc| rtc.add_remote_candidate(c));
                }
            }
            Command::Preference {
                participant,
                preference,
            } => {
                if let Some(k) = self.find(&participant) {
                    let peer = &mut self.peers[k];
                    peer.preference = preference;
                    peer.mlines.set_preference(preference);
                }
            }
            Command::Drop { participant } => {
                if let Some(k) = self.find(&participant) {
                    self.peers[k].rtc.disconnect();
                }
            }
            Command::Shutdown => {}
        }
    }

    /// Removes dead peers (closed, or failed in str0m), and the tracks others received from them.
    fn reap(&mut self) {
        while let Some(k) = self
            .peers
            .iter()
            .find(|(_, p)| !p.rtc.is_alive())
            .map(|(k, _)| k)
        {
            self.remove_peer(k);
        }
    }

    /// Removes a peer (its session closed), and everything that names it by key. The others stop
    /// forwarding its tracks, and the m-lines that carried them go inactive at their next
    /// negotiation, so their pages see the tracks pause instead of going silent; they are kept
    /// for the participant's return.
    fn remove_peer(&mut self, k: usize) {
        let mut gone = self.peers.remove(k);
        gone.rtc.disconnect();
        self.known.retain(|_, who| *who != k);
        self.keyframes.source_left(k);
        for (_, peer) in self.peers.iter_mut() {
            peer.mlines.source_left(k);
        }
    }

    fn event(&mut self, now: Instant, k: usize, e: Event) {
        let Some(peer) = self.peers.get_mut(k) else {
            return;
        };
        peer.dirty = true;
        match e {
            Event::MediaAdded(m) if m.direction != Direction::SendOnly => {
                if peer.tracks_in.iter().any(|t| t.mid == m.mid) {
                    return;
                }
                peer.tracks_in.push(TrackIn {
                    mid: m.mid,
                    kind: m.kind,
                    bytes: [0; 3],
                    rates: [0; 3],
                });
                let (consult, source) = (peer.consult.clone(), peer.participant.clone());
                for (j, other) in self.peers.iter_mut() {
                    if j != k && other.consult == consult {
                        let pref = other.preference;
                        other.mlines.add(&source, k, m.mid, m.kind, pref);
                    }
                }
            }
            Event::RtpPacket(pkt) => self.forward(now, k, pkt),
            Event::KeyframeRequest(req) => {
                if let Some((source, mid, layer)) = peer.mlines.source_of(req.mid) {
                    self.request_keyframe(now, source, mid, layer);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                peer.estimate_bps = estimate.as_u64();
            }
            Event::MediaEgressStats(es) => {
                match peer
                    .nacks
                    .iter_mut()
                    .find(|(m, r, _)| *m == es.mid && *r == es.rid)
                {
                    Some(entry) => entry.2 = es.nacks,
                    None => peer.nacks.push((es.mid, es.rid, es.nacks)),
                }
                peer.stats.nacks = peer.nacks.iter().map(|e| e.2).sum();
            }
            Event::PeerStats(ps) => {
                let stats = &mut peer.stats;
                stats.loss_in = ps.ingress_loss_fraction;
                stats.loss_out = ps.egress_loss_fraction;
                stats.rtt_ms = ps.rtt.map(|d| d.as_millis() as u64);
                stats.transport = ps.selected_candidate_pair.map(|p| {
                    if p.protocol == Protocol::Tcp {
                        "tcp"
                    } else {
                        "udp"
                    }
                });
            }
            Event::IceConnectionStateChange(state) => {
                peer.stats.connected = matches!(
                    state,
                    IceConnectionState::Connected | IceConnectionState::Completed
                );
            }
            _ => {}
        }
    }
}

/// Feeds one input to peer `k`, then drains its output: the next input to this peer would
/// otherwise overwrite a pending packet.
fn feed(
    k: usize,
    peer: &mut Peer,
    input: Input,
    out: &mut Outbox,
    events: &mut VecDeque<(usize, Event)>,
) {
    if !peer.rtc.is_alive() {
        return;
    }
    if let Some(Err(e)) = peer.rtc.call(|rtc| rtc.handle_input(input)) {
        tracing::debug!(error = %e, "peer input refused");
    }
    loop {
        match poll(peer, out) {
            Step::Event(e) => events.push_back((k, e)),
            Step::Continue => {}
            Step::Timeout(_) | Step::Nothing => break,
        }
    }
}

/// Drains one output of a peer: transmits are queued, events and timeouts come back.
fn poll(peer: &mut Peer, out: &mut Outbox) -> Step {
    if !peer.rtc.is_alive() {
        return Step::Nothing;
    }
    match peer.rtc.call(|rtc| rtc.poll_output()) {
        Some(Ok(Output::Transmit(t))) => {
            peer.bytes_out += t.contents.len() as u64;
            if t.proto == Protocol::Tcp {
                if let Some(tcp) = &mut out.tcp {
                    tcp.send(t.destination, &t.contents);
                }
            } else {
                out.tx.push(t.contents.into(), t.destination);
                if out.tx.len() >= udp::BATCH {
                    out.tx.flush(&out.socket);
                }
            }
            Step::Continue
        }
        Some(Ok(Output::Timeout(t))) => {
            peer.next_timeout = t;
            peer.dirty = false;
            Step::Timeout(t)
        }
        Some(Ok(Output::Event(e))) => Step::Event(e),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "peer failed; disconnecting it");
            peer.rtc.disconnect();
            Step::Nothing
        }
        // It panicked: the guard has failed it, and the worker reaps it.
        None => Step::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use str0m::Rtc;
    use str0m::media::{MediaKind, Mid};

    use super::*;
    use crate::layers::Preference;

    /// An offer as a browser would make it: audio and video, send and receive.
    fn browser_offer() -> String {
        install_crypto();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(
            Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp").unwrap(),
        );
        let mut change = rtc.sdp_api();
        for kind in [MediaKind::Audio, MediaKind::Video] {
            change.add_media(kind, Direction::SendRecv, Some("s".into()), None, None);
        }
        let (offer, _) = change.apply().expect("an offer");
        offer.to_sdp_string()
    }

    fn worker(now: Instant) -> (Worker, mpsc::Receiver<Notice>) {
        install_crypto();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(1024);
        (Worker::new(socket, addr, None, tx, now), rx)
    }

    #[test]
    fn a_peer_that_panics_in_the_guard_is_reaped_and_the_worker_goes_on() {
        let t = Instant::now();
        let (mut w, _notices) = worker(t);
        for who in ["doctor", "patient"] {
            w.offer(t, "c".into(), who.into(), &browser_offer())
                .expect("answered");
        }
        let patient = w.find("patient").unwrap();
        let got: Option<()> = w.peers[patient].rtc.call(|_| panic!("a str0m bug"));
        assert_eq!(got, None);
        assert!(!w.peers[patient].rtc.is_alive(), "marked failed");
        // The worker's passes go on over it: nothing calls into the failed session.
        let later = t + Duration::from_millis(10);
        w.timeouts(later);
        w.poll_peers(later);
        w.negotiate(later);
        w.reap();
        assert_eq!(w.find("patient"), None, "reaped");
        let doctor = w.find("doctor").expect("the other peer stays");
        assert!(w.peers[doctor].rtc.is_alive());
        w.poll_peers(later);
        assert!(
            w.offer(later, "c".into(), "patient".into(), &browser_offer())
                .is_ok(),
            "and the participant can start afresh"
        );
        assert_eq!(w.peers.len(), 2);
    }

    #[test]
    fn a_departed_peers_state_is_dropped() {
        let t = Instant::now();
        let (mut w, _notices) = worker(t);
        for who in ["doctor", "patient"] {
            w.offer(t, "c".into(), who.into(), &browser_offer())
                .expect("answered");
        }
        let (doctor, patient) = (w.find("doctor").unwrap(), w.find("patient").unwrap());
        // The patient publishes video the doctor receives, has a known address, and was asked
        // for a keyframe.
        let mid = Mid::from("1");
        w.peers[patient].tracks_in.push(TrackIn {
            mid,
            kind: MediaKind::Video,
            bytes: [0; 3],
            rates: [0; 3],
        });
        let lines = &mut w.peers[doctor].mlines;
        lines.add(
            "patient",
            patient,
            mid,
            MediaKind::Video,
            Preference::Normal,
        );
        let plan = lines.plan(|_| None);
        lines.added(plan.add[0].track, Mid::from("7"));
        w.known.insert("127.0.0.1:5000".parse().unwrap(), patient);
        w.known.insert("127.0.0.1:5001".parse().unwrap(), doctor);
        w.request_keyframe(t, patient, mid, 0);
        assert_eq!(w.keyframes.len(), 1);

        w.peers[patient].rtc.disconnect();
        w.reap();
        assert_eq!(w.find("patient"), None);
        assert_eq!(w.known.len(), 1, "its addresses are forgotten");
        assert!(w.known.values().all(|k| *k == doctor));
        assert!(
            w.keyframes.is_empty(),
            "its keyframe requests are forgotten"
        );
        let lines = &w.peers[doctor].mlines;
        assert!(
            lines.tracks().is_empty(),
            "the doctor no longer receives it"
        );
        assert_eq!(lines.parked(), 1, "its m-line is kept for its return");
        assert!(lines.wants_offer(), "and goes inactive at the next offer");
    }
}
