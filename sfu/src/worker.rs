//! The media worker: one thread owning one UDP socket and every peer (a str0m `Rtc` in RTP mode,
//! ICE-lite) of the consults assigned to it, so a consult's forwarding never crosses threads and
//! needs no locks. Signaling talks to it through [`SfuHandle`]: offers and answers in, answers,
//! server-initiated offers and notices out.
//!
//! Forwarding: an incoming RTP packet of participant A's track goes to every other peer of the
//! consult that has negotiated an outgoing track for it, through that subscriber's
//! [`LayerSelector`] (which simulcast layer) and [`Rewriter`] (one continuous stream). Keyframe
//! requests to publishers go through a [`KeyframeThrottle`]. Every call into a peer's `Rtc` is
//! isolated with `catch_unwind`: a peer that trips a bug is disconnected, the others go on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc as smpsc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{h264_keyframe, vp8};
use crate::keyframes::KeyframeThrottle;
use crate::layers::{LayerSelector, Preference, Verdict};
use crate::rewrite::Rewriter;
use crate::udp;

/// Whose a known source address is, and where that peer was last seen in `Worker::peers` (a
/// hint: checked, and refreshed when peers have moved), so a datagram finds its peer without
/// comparing its participant with every peer's.
struct Known {
    participant: String,
    hint: usize,
}

fn hash_of(s: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(s)
}

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("the SDP could not be used: {0}")]
    InvalidSdp(String),
    #[error("no media session for this participant")]
    UnknownParticipant,
    #[error("the media worker has stopped")]
    Stopped,
    #[error("the media worker is overloaded; try again")]
    Busy,
}

/// What the worker tells signaling.
#[derive(Debug)]
pub enum Notice {
    /// Send this offer to the participant (new tracks to receive); their answer comes back
    /// through [`SfuHandle::answer`].
    Offer {
        consult: String,
        participant: String,
        sdp: String,
    },
    /// Per-participant media stats, about once a second.
    Stats {
        consult: String,
        participant: String,
        stats: PeerStats,
    },
    /// The worker's own numbers, about once a second.
    Worker {
        /// The worker's UDP address (its identity).
        udp_addr: SocketAddr,
        /// Media sessions it holds.
        peers: usize,
        /// Packets dropped since start because no session accepted them (unknown sources,
        /// garbage, floods).
        dropped_unknown: u64,
    },
}

/// A participant's media numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerStats {
    pub bitrate_in_bps: u64,
    pub bitrate_out_bps: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// The bandwidth estimate towards this participant.
    pub estimate_bps: u64,
    /// The simulcast layer currently forwarded to this participant (highest over its tracks).
    pub layer: Option<u8>,
    pub connected: bool,
    /// Fraction of packets lost towards the SFU (0..1), from the peer's reports.
    pub loss_in: Option<f32>,
    /// Fraction of packets lost towards the participant (0..1).
    pub loss_out: Option<f32>,
    pub rtt_ms: Option<u64>,
    /// `udp` or `tcp` (ICE-TCP) for the selected candidate pair.
    pub transport: Option<&'static str>,
    /// Retransmission requests (NACKs) received from this participant, since its session began.
    pub nacks: u64,
}

enum Command {
    Offer {
        consult: String,
        participant: String,
        sdp: String,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    Answer {
        participant: String,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Candidate {
        participant: String,
        candidate: String,
    },
    Preference {
        participant: String,
        preference: Preference,
    },
    Drop {
        participant: String,
    },
    Shutdown,
}

/// The signaling side's handle on a worker.
pub struct SfuHandle {
    tx: smpsc::SyncSender<Command>,
    /// The UDP address peers send media to.
    pub udp_addr: SocketAddr,
    /// The ICE-TCP address (RFC 4571 framing) for networks that block UDP.
    pub tcp_addr: Option<SocketAddr>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SfuHandle {
    /// Binds `bind` for UDP (port 0 for any) and, with `tcp_bind`, a TCP listener for ICE-TCP,
    /// and starts the worker thread; notices go to `notices`.
    ///
    /// Both queues are bounded. Notices are offered with `try_send` (the worker thread never
    /// waits for signaling): when `notices` is full, stats are dropped first, and an offer is
    /// dropped with a warning. Commands beyond [`COMMAND_QUEUE`] waiting for the worker are
    /// refused: an offer or answer with [`SfuError::Busy`], a candidate or preference silently.
    pub fn start(
        bind: SocketAddr,
        tcp_bind: Option<SocketAddr>,
        notices: mpsc::Sender<Notice>,
    ) -> std::io::Result<Self> {
        static CRYPTO: std::sync::Once = std::sync::Once::new();
        CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
        let socket = UdpSocket::bind(bind)?;
        let udp_addr = socket.local_addr()?;
        let tcp = match tcp_bind {
            Some(addr) => {
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                let local = listener.local_addr()?;
                Some((listener, local))
            }
            None => None,
        };
        let tcp_addr = tcp.as_ref().map(|(_, a)| *a);
        let (tx, rx) = smpsc::sync_channel(COMMAND_QUEUE);
        let thread = std::thread::Builder::new()
            .name(format!("sfu-{}", udp_addr.port()))
            .spawn(move || Worker::new(socket, udp_addr, tcp, notices).run(rx))?;
        Ok(Self {
            tx,
            udp_addr,
            tcp_addr,
            thread: Some(thread),
        })
    }

    /// Accepts a participant's offer (a new media session, or a renegotiation/ICE restart of
    /// theirs); returns the answer SDP.
    pub async fn offer(
        &self,
        consult: &str,
        participant: &str,
        sdp: String,
    ) -> Result<String, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Offer {
            consult: consult.into(),
            participant: participant.into(),
            sdp,
            reply,
        })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Applies a participant's answer to the worker's last offer.
    pub async fn answer(&self, participant: &str, sdp: String) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Answer {
            participant: participant.into(),
            sdp,
            reply,
        })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Queues a command for the worker without waiting.
    fn command(&self, cmd: Command) -> Result<(), SfuError> {
        self.tx.try_send(cmd).map_err(|e| match e {
            smpsc::TrySendError::Full(_) => SfuError::Busy,
            smpsc::TrySendError::Disconnected(_) => SfuError::Stopped,
        })
    }

    pub fn candidate(&self, participant: &str, candidate: String) {
        let _ = self.command(Command::Candidate {
            participant: participant.into(),
            candidate,
        });
    }

    pub fn preference(&self, participant: &str, preference: Preference) {
        let _ = self.command(Command::Preference {
            participant: participant.into(),
            preference,
        });
    }

    /// Ends a participant's media session.
    pub fn drop_participant(&self, participant: &str) {
        let dropped = self.command(Command::Drop {
            participant: participant.into(),
        });
        if matches!(dropped, Err(SfuError::Busy)) {
            tracing::warn!("media worker queue full; a participant's session is not dropped");
        }
    }
}

impl Drop for SfuHandle {
    fn drop(&mut self) {
        // Blocking is fine here: the worker drains its queue on every pass.
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A published track of a peer.
struct TrackIn {
    mid: Mid,
    kind: MediaKind,
    /// Bytes seen per layer in the current window, and the last window's rates.
    bytes: [u64; 3],
    rates: [u64; 3],
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OutState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
}

/// An m-line that carried a departed source's track to this peer. When the same participant comes
/// back with a new media session (a reload, a new device, a reconnect after the network changed),
/// its new track of the same kind takes this m-line again instead of a new one: the page keeps
/// its transceiver and tile, and the session's SDP does not grow with every return. (str0m
/// cannot recycle a stopped m-line, and each one stays in every later offer; without this,
/// some fifteen returns in one consult pushed the SDP past the signaling limit.) The m-line's
/// `msid` names the source, which is why only that source may take it.
struct Parked {
    mid: Mid,
    kind: MediaKind,
    source: String,
    /// Where its outgoing numbering stopped: the returning source continues from there.
    rewriter: Rewriter,
}

/// Another participant's track, sent to this peer.
struct TrackOut {
    source: String,
    source_mid: Mid,
    kind: MediaKind,
    state: OutState,
    rewriter: Rewriter,
    selector: LayerSelector,
}

struct Peer {
    participant: String,
    consult: String,
    /// A hash of `consult`: forwarding compares it first, so finding a packet's subscribers
    /// costs an integer comparison per peer of the worker, not a string comparison.
    consult_hash: u64,
    rtc: Rtc,
    /// Which browser session this is: the offer's `o=` session id and DTLS fingerprint. A new
    /// value (a reloaded page, a new RTCPeerConnection) replaces the session instead of
    /// renegotiating it.
    origin: String,
    pending: Option<SdpPendingOffer>,
    /// M-lines of sources that went away, to be made inactive at the next negotiation.
    to_park: Vec<Mid>,
    /// Inactive m-lines of sources that went away, kept for the same source's return.
    parked: Vec<Parked>,
    tracks_in: Vec<TrackIn>,
    tracks_out: Vec<TrackOut>,
    preference: Preference,
    estimate_bps: u64,
    /// What the bandwidth estimator was last asked to probe for (see [`Worker::stats`]).
    desired_bps: u64,
    stats: PeerStats,
    /// NACKs per outgoing stream, as str0m counts them (cumulative per stream).
    nacks: Vec<(Mid, Option<Rid>, u64)>,
    bytes_in: u64,
    bytes_out: u64,
    /// When str0m next wants a timeout input (its last `Output::Timeout`).
    next_timeout: Instant,
    /// Something was written into this peer's `Rtc` (media, a keyframe request, an SDP change)
    /// since it was last drained: poll it even if its timeout is not due. Peers that are neither
    /// dirty nor due are skipped, so a datagram costs work for the peers it concerns only, not
    /// for every peer of the worker.
    dirty: bool,
}

/// Layer index of a simulcast rid: `l`/`q` lowest, `m`/`h` above; no rid is layer 0.
fn layer_of(rid: Option<Rid>) -> u8 {
    match rid.as_deref() {
        Some("h") | Some("f") => 2,
        Some("m") => 1,
        _ => 0,
    }
}

/// An ICE-TCP connection: RFC 4571 frames (16-bit length, then the packet) both ways.
struct TcpConn {
    stream: TcpStream,
    remote: SocketAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    alive: bool,
}

/// How far above what a subscriber's preferred layers need its bandwidth estimator probes. str0m
/// paces output at 1.1× the estimate, so an estimate just above the media rate holds every
/// keyframe burst back in the pacer: on loopback, 8 consults at the top layer had a p99 of 5–25 ms
/// with the bare need and 6–7 ms with three times it. On a real link the estimate stops at what
/// the link carries anyway; probes are short bursts.
const PROBE_ABOVE: u64 = 3;

/// Most source addresses remembered; past it, those of departed peers are forgotten.
const MAX_KNOWN_SOURCES: usize = 4096;
/// How often the ICE-TCP listener is asked for new connections. Asking on every pass of the loop
/// cost a tenth of the worker's CPU at 64 consults: Linux allocates a socket and a file for every
/// `accept`, also for the ones that find nothing (EAGAIN). A new ICE-TCP connection waits at most
/// this long more.
const ACCEPT_EVERY: Duration = Duration::from_millis(5);

/// Most ICE-TCP connections a worker holds; more are refused.
const MAX_TCP_CONNS: usize = 512;
/// A connection whose unsent data grows past this is too slow: packets are dropped for it.
const MAX_TCP_BACKLOG: usize = 1 << 20;
/// Commands waiting for a worker, at most (a worker drains them on every pass, so a full queue
/// means it is far behind).
pub const COMMAND_QUEUE: usize = 4096;

struct Worker {
    socket: UdpSocket,
    addr: SocketAddr,
    tcp: Option<(TcpListener, SocketAddr)>,
    tcp_conns: Vec<TcpConn>,
    notices: mpsc::Sender<Notice>,
    peers: Vec<Peer>,
    throttle: KeyframeThrottle<(String, Mid, u8)>,
    last_stats: Instant,
    dropped_unknown: u64,
    /// When the ICE-TCP listener is next asked for new connections (see [`ACCEPT_EVERY`]).
    next_accept: Instant,
    /// Source addresses some peer has accepted, and whose they are. A datagram from any other
    /// address must be a STUN binding request (ICE comes first); anything else is dropped after
    /// one hash lookup, without asking every peer.
    known: HashMap<SocketAddr, Known>,
    /// Datagrams received in one system call (see [`udp`](crate::udp)); `None` only while
    /// they are being handled.
    rx: Option<Box<udp::RecvBatch>>,
    /// UDP datagrams the peers produced, sent with one `sendmmsg` after each received datagram
    /// is carried through, and before the worker waits for the socket.
    tx: udp::SendQueue,
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
    ) -> Self {
        Self {
            socket,
            addr,
            tcp,
            tcp_conns: Vec::new(),
            notices,
            peers: Vec::new(),
            throttle: KeyframeThrottle::new(Duration::from_millis(500)),
            last_stats: Instant::now(),
            dropped_unknown: 0,
            next_accept: Instant::now(),
            known: HashMap::new(),
            rx: Some(Box::default()),
            tx: udp::SendQueue::default(),
            events: VecDeque::new(),
        }
    }

    fn run(mut self, rx: smpsc::Receiver<Command>) {
        loop {
            // Events hold peer indexes: handle them before a command may remove a peer.
            while let Some((i, e)) = self.events.pop_front() {
                self.event(i, e);
            }
            loop {
                match rx.try_recv() {
                    Ok(Command::Shutdown) | Err(smpsc::TryRecvError::Disconnected) => return,
                    Ok(cmd) => {
                        self.command(cmd);
                        self.peers.iter_mut().for_each(|p| p.dirty = true);
                    }
                    Err(smpsc::TryRecvError::Empty) => break,
                }
            }
            let next = self.poll_peers();
            if !self.events.is_empty() {
                while let Some((i, e)) = self.events.pop_front() {
                    self.event(i, e);
                }
                continue;
            }
            self.negotiate();
            self.reap();
            self.tcp_io();
            let mut wait = next
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            if !self.tcp_conns.is_empty() {
                // TCP is polled between UDP reads: keep the wait short while connections exist.
                wait = wait.min(Duration::from_millis(2));
            }
            // Everything produced so far goes out before the worker may wait.
            self.tx.flush(&self.socket);
            // What is waiting is taken at once; only an empty socket is waited for.
            let mut rx = self.rx.take().expect("the receive batch is in place");
            let mut got = rx.recv(&self.socket);
            if matches!(got, Ok(0)) && udp::wait_readable(&self.socket, wait).unwrap_or(false) {
                got = rx.recv(&self.socket);
            }
            match got {
                Ok(_) => {
                    for (data, source) in rx.datagrams() {
                        self.datagram(data, source);
                        // Each datagram is carried through before the next: its events (a
                        // packet to forward), the subscribers' output, the send. Held for the
                        // whole batch, every packet waited for the batch's work (measured:
                        // median +0.6 ms, p99 about doubled at 40 consults).
                        self.carry_through();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sfu socket read failed"),
            }
            self.rx = Some(rx);
            self.timeouts();
            self.tx.flush(&self.socket);
            let now = Instant::now();
            if now.duration_since(self.last_stats) >= Duration::from_secs(1) {
                self.stats(now);
            }
        }
    }

    /// What the loop did after each datagram before datagrams came in batches, now done after
    /// each datagram of a batch: its events (a packet to forward), due timeouts (str0m's pacer
    /// releases packets on them), the peers' output, the send.
    fn carry_through(&mut self) {
        while let Some((i, e)) = self.events.pop_front() {
            self.event(i, e);
        }
        self.timeouts();
        self.poll_peers();
        self.tx.flush(&self.socket);
    }

    /// Feeds the current time to every peer whose timeout is due.
    fn timeouts(&mut self) {
        let now = Instant::now();
        for i in 0..self.peers.len() {
            if self.peers[i].next_timeout <= now {
                self.input(i, Input::Timeout(now));
            }
        }
    }

    /// Polls every peer that is dirty or due until it has nothing more to give: transmits are
    /// queued, events queued in `events`. Returns when the next peer timeout is due (at most
    /// 20 ms ahead).
    fn poll_peers(&mut self) -> Instant {
        let now = Instant::now();
        let mut next = now + Duration::from_millis(20);
        for i in 0..self.peers.len() {
            let peer = &self.peers[i];
            if !peer.dirty && peer.next_timeout > now {
                next = next.min(peer.next_timeout);
                continue;
            }
            loop {
                match self.poll(i) {
                    Step::Timeout(t) => {
                        next = next.min(t);
                        break;
                    }
                    Step::Event(e) => self.events.push_back((i, e)),
                    Step::Continue => {}
                    Step::Nothing => break,
                }
            }
        }
        next
    }

    /// Drains one output of peer `i`: transmits are queued, events and timeouts come back.
    fn poll(&mut self, i: usize) -> Step {
        let peer = &mut self.peers[i];
        if !peer.rtc.is_alive() {
            return Step::Nothing;
        }
        match catch_unwind(AssertUnwindSafe(|| peer.rtc.poll_output())) {
            Ok(Ok(Output::Transmit(t))) => {
                peer.bytes_out += t.contents.len() as u64;
                if t.proto == Protocol::Tcp {
                    if let Some(conn) = self
                        .tcp_conns
                        .iter_mut()
                        .find(|c| c.alive && c.remote == t.destination)
                        && conn.wbuf.len() + t.contents.len() + 2 <= MAX_TCP_BACKLOG
                        && t.contents.len() <= u16::MAX as usize
                    {
                        conn.wbuf
                            .extend_from_slice(&(t.contents.len() as u16).to_be_bytes());
                        conn.wbuf.extend_from_slice(&t.contents);
                        flush(conn);
                    }
                } else {
                    self.tx.push(t.contents.into(), t.destination);
                    if self.tx.len() >= udp::BATCH {
                        self.tx.flush(&self.socket);
                    }
                }
                Step::Continue
            }
            Ok(Ok(Output::Timeout(t))) => {
                peer.next_timeout = t;
                peer.dirty = false;
                Step::Timeout(t)
            }
            Ok(Ok(Output::Event(e))) => Step::Event(e),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "peer failed; disconnecting it");
                peer.rtc.disconnect();
                Step::Nothing
            }
            Err(_) => {
                tracing::error!("peer panicked in str0m; disconnecting it");
                peer.rtc.disconnect();
                Step::Nothing
            }
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let peer = &mut self.peers[i];
        if !peer.rtc.is_alive() {
            return;
        }
        match catch_unwind(AssertUnwindSafe(|| peer.rtc.handle_input(input))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "peer input refused");
            }
            Err(_) => {
                tracing::error!("peer panicked on input; disconnecting it");
                peer.rtc.disconnect();
            }
        }
        // Drain now: the next input to this peer would otherwise overwrite a pending packet.
        loop {
            match self.poll(i) {
                Step::Event(e) => self.events.push_back((i, e)),
                Step::Continue => {}
                Step::Timeout(_) | Step::Nothing => break,
            }
        }
    }

    /// Accepts ICE-TCP connections, reads their frames into the peers, and flushes their output.
    fn tcp_io(&mut self) {
        let now = Instant::now();
        if let Some((listener, _)) = &self.tcp
            && now >= self.next_accept
        {
            self.next_accept = now + ACCEPT_EVERY;
            while let Ok((stream, remote)) = listener.accept() {
                if self.tcp_conns.len() >= MAX_TCP_CONNS || stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                self.tcp_conns.push(TcpConn {
                    stream,
                    remote,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    alive: true,
                });
            }
        }
        let mut frames: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        let mut chunk = [0u8; 4096];
        for conn in &mut self.tcp_conns {
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        conn.alive = false;
                        break;
                    }
                    Ok(n) => conn.rbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        conn.alive = false;
                        break;
                    }
                }
                if conn.rbuf.len() > 4 * 65_538 {
                    // Not a framing this side speaks: a flood or garbage.
                    conn.alive = false;
                    break;
                }
            }
            let mut at = 0;
            while conn.rbuf.len() >= at + 2 {
                let len = u16::from_be_bytes([conn.rbuf[at], conn.rbuf[at + 1]]) as usize;
                if conn.rbuf.len() < at + 2 + len {
                    break;
                }
                frames.push((conn.rbuf[at + 2..at + 2 + len].to_vec(), conn.remote));
                at += 2 + len;
            }
            conn.rbuf.drain(..at);
            flush(conn);
        }
        self.tcp_conns.retain(|c| c.alive);
        for (frame, remote) in frames {
            self.receive(&frame, remote, Protocol::Tcp);
        }
    }

    fn datagram(&mut self, data: &[u8], source: SocketAddr) {
        self.receive(data, source, Protocol::Udp);
    }

    /// Routes a packet to the peer whose ICE/DTLS/SRTP state accepts it; others are dropped.
    fn receive(&mut self, data: &[u8], source: SocketAddr, proto: Protocol) {
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
            Protocol::Tcp => self.tcp.as_ref().map_or(self.addr, |(_, a)| *a),
            _ => self.addr,
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        // A known source's peer is asked first; only STUN from new sources asks every peer.
        let owner = self
            .known
            .get_mut(&source)
            .and_then(|who| {
                if self
                    .peers
                    .get(who.hint)
                    .is_none_or(|p| p.participant != who.participant)
                {
                    who.hint = self
                        .peers
                        .iter()
                        .position(|p| p.participant == who.participant)?;
                }
                Some(who.hint)
            })
            .filter(|&i| self.peers[i].rtc.is_alive() && self.peers[i].rtc.accepts(&input));
        let Some(i) = owner.or_else(|| {
            self.peers
                .iter()
                .position(|p| p.rtc.is_alive() && p.rtc.accepts(&input))
        }) else {
            self.dropped_unknown += 1;
            return;
        };
        if stun && !self.known.contains_key(&source) {
            if self.known.len() >= MAX_KNOWN_SOURCES {
                let live: HashSet<&str> =
                    self.peers.iter().map(|p| p.participant.as_str()).collect();
                self.known
                    .retain(|_, who| live.contains(who.participant.as_str()));
            }
            let participant = self.peers[i].participant.clone();
            self.known.insert(
                source,
                Known {
                    participant,
                    hint: i,
                },
            );
        }
        self.peers[i].bytes_in += data.len() as u64;
        self.input(i, input);
    }

    fn find(&self, participant: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.participant == participant)
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Offer {
                consult,
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.offer(consult, participant, &sdp));
            }
            Command::Answer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.answer(&participant, &sdp));
            }
            Command::Candidate {
                participant,
                candidate,
            } => {
                if let (Some(i), Ok(c)) = (
                    self.find(&participant),
                    Candidate::from_sdp_string(candidate.trim_start_matches("a=")),
                ) {
                    self.peers[i].rtc.add_remote_candidate(c);
                }
            }
            Command::Preference {
                participant,
                preference,
            } => {
                if let Some(i) = self.find(&participant) {
                    self.peers[i].preference = preference;
                    for t in &mut self.peers[i].tracks_out {
                        t.selector.set_preference(preference);
                    }
                }
            }
            Command::Drop { participant } => {
                if let Some(i) = self.find(&participant) {
                    self.peers[i].rtc.disconnect();
                }
            }
            Command::Shutdown => {}
        }
    }

    fn offer(
        &mut self,
        consult: String,
        participant: String,
        sdp: &str,
    ) -> Result<String, SfuError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let origin = session_origin(sdp);
        let i = match self
            .find(&participant)
            .filter(|&i| self.peers[i].rtc.is_alive() && self.peers[i].origin == origin)
        {
            Some(i) => i,
            None => {
                // A dead session, or a live one this offer does not continue (the page was
                // reloaded, the seat taken over): the old session goes, with its tracks at the
                // others, before the new one starts.
                if let Some(stale) = self.find(&participant) {
                    self.remove_peer(stale);
                }
                let mut rtc = Rtc::builder()
                    .set_rtp_mode(true)
                    .set_ice_lite(true)
                    .enable_bwe(Some(Bitrate::kbps(1_000)))
                    .set_stats_interval(Some(Duration::from_secs(1)))
                    .build(Instant::now());
                let candidate = Candidate::host(self.addr, "udp")
                    .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
                rtc.add_local_candidate(candidate);
                if let Some((_, tcp_addr)) = &self.tcp {
                    let tcp = Candidate::builder()
                        .tcp()
                        .host(*tcp_addr)
                        .tcptype(TcpType::Passive)
                        .build()
                        .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
                    rtc.add_local_candidate(tcp);
                }
                let mut peer = Peer {
                    participant: participant.clone(),
                    consult_hash: hash_of(&consult),
                    consult: consult.clone(),
                    rtc,
                    origin,
                    pending: None,
                    to_park: Vec::new(),
                    parked: Vec::new(),
                    tracks_in: Vec::new(),
                    tracks_out: Vec::new(),
                    preference: Preference::Normal,
                    estimate_bps: 1_000_000,
                    desired_bps: 0,
                    stats: PeerStats::default(),
                    nacks: Vec::new(),
                    bytes_in: 0,
                    bytes_out: 0,
                    next_timeout: Instant::now(),
                    dirty: true,
                };
                // Everything already published in the consult is to be sent to the newcomer.
                for other in self
                    .peers
                    .iter()
                    .filter(|p| p.consult == consult && p.rtc.is_alive())
                {
                    for t in &other.tracks_in {
                        peer.tracks_out.push(track_out(
                            &other.participant,
                            t.mid,
                            t.kind,
                            peer.preference,
                        ));
                    }
                }
                self.peers.push(peer);
                self.peers.len() - 1
            }
        };
        let peer = &mut self.peers[i];
        // An offer from the peer while ours is pending: theirs wins (glare), ours is redone later.
        // A taken-back m-line goes back to the parked ones, to be taken back again.
        if peer.pending.take().is_some() {
            let Peer {
                rtc,
                tracks_out,
                parked,
                ..
            } = peer;
            for t in tracks_out.iter_mut() {
                if let OutState::Negotiating(mid) = t.state {
                    t.state = OutState::ToOpen;
                    if rtc.media(mid).is_some() {
                        let fresh = Rewriter::new(t.rewriter.clock_rate());
                        parked.push(Parked {
                            mid,
                            kind: t.kind,
                            source: t.source.clone(),
                            rewriter: std::mem::replace(&mut t.rewriter, fresh),
                        });
                    }
                }
            }
        }
        let answer = match catch_unwind(AssertUnwindSafe(|| peer.rtc.sdp_api().accept_offer(offer)))
        {
            Ok(answer) => answer.map_err(|e| SfuError::InvalidSdp(e.to_string()))?,
            // str0m 0.25 panics on some contradictory offers (e.g. a payload type bound twice):
            // its state may be half-changed, so that session ends; the page can offer afresh.
            Err(_) => {
                tracing::warn!("str0m panicked on an offer; closing that media session");
                peer.rtc.disconnect();
                return Err(SfuError::InvalidSdp(
                    "the offer could not be processed; the media session was closed".into(),
                ));
            }
        };
        Ok(answer.to_sdp_string())
    }

    fn answer(&mut self, participant: &str, sdp: &str) -> Result<(), SfuError> {
        let i = self.find(participant).ok_or(SfuError::UnknownParticipant)?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let peer = &mut self.peers[i];
        let pending = peer
            .pending
            .take()
            .ok_or_else(|| SfuError::InvalidSdp("no offer is waiting for an answer".into()))?;
        catch_unwind(AssertUnwindSafe(|| {
            peer.rtc.sdp_api().accept_answer(pending, answer)
        }))
        .map_err(|_| SfuError::InvalidSdp("the answer could not be processed".into()))?
        .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        for t in &mut peer.tracks_out {
            if let OutState::Negotiating(m) = t.state {
                t.state = OutState::Open(m);
            }
        }
        // Ask the sources for keyframes so the new subscriber's video starts at once.
        let wanted: Vec<(String, Mid)> = peer
            .tracks_out
            .iter()
            .filter(|t| t.kind == MediaKind::Video)
            .map(|t| (t.source.clone(), t.source_mid))
            .collect();
        self.request_starting_keyframes(wanted);
        Ok(())
    }

    /// Offers pending outgoing tracks to peers with none in flight: a returning source's track
    /// takes its parked m-line back, any other gets a new one; departed sources' m-lines go
    /// inactive.
    fn negotiate(&mut self) {
        let mut keyframes = Vec::new();
        for peer in &mut self.peers {
            if peer.pending.is_some()
                || !peer.rtc.is_alive()
                || (peer.to_park.is_empty()
                    && !peer.tracks_out.iter().any(|t| t.state == OutState::ToOpen))
            {
                continue;
            }
            let Peer {
                rtc,
                to_park,
                parked,
                tracks_out,
                ..
            } = peer;
            // A parked m-line whose negotiation never completed (an offer lost to glare) does
            // not exist in the session: it cannot be taken back.
            parked.retain(|p| rtc.media(p.mid).is_some());
            let mut reactivate = Vec::new();
            for t in tracks_out
                .iter_mut()
                .filter(|t| t.state == OutState::ToOpen)
            {
                let Some(at) = parked
                    .iter()
                    .position(|p| p.kind == t.kind && p.source == t.source)
                else {
                    continue;
                };
                let slot = parked.swap_remove(at);
                t.rewriter = slot.rewriter;
                t.rewriter.new_source();
                if let Some(k) = to_park.iter().position(|m| *m == slot.mid) {
                    // Not made inactive yet: the m-line still sends, nothing to negotiate.
                    to_park.swap_remove(k);
                    t.state = OutState::Open(slot.mid);
                    if t.kind == MediaKind::Video {
                        keyframes.push((t.source.clone(), t.source_mid));
                    }
                } else {
                    // Already sending locally (an offer that lost to glare set it): made inactive
                    // and sending again in the same change, so the next offer carries it.
                    let sending = rtc
                        .media(slot.mid)
                        .is_some_and(|m| m.direction() == Direction::SendOnly);
                    reactivate.push((slot.mid, sending));
                    t.state = OutState::Negotiating(slot.mid);
                }
            }
            let mut change = rtc.sdp_api();
            for mid in to_park.drain(..) {
                change.set_direction(mid, Direction::Inactive);
            }
            for (mid, sending) in reactivate {
                if sending {
                    change.set_direction(mid, Direction::Inactive);
                }
                change.set_direction(mid, Direction::SendOnly);
            }
            for t in tracks_out.iter_mut() {
                if t.state == OutState::ToOpen {
                    let mid = change.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(t.source.clone()),
                        None,
                        None,
                    );
                    t.state = OutState::Negotiating(mid);
                }
            }
            peer.dirty = true;
            if let Some((offer, pending)) = change.apply() {
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
        self.request_starting_keyframes(keyframes);
    }

    /// Asks the sources of these video tracks for a keyframe on every layer, so a subscriber's
    /// newly opened (or taken back) track starts at once, whichever layer it gets.
    fn request_starting_keyframes(&mut self, tracks: Vec<(String, Mid)>) {
        let now = Instant::now();
        for (source, mid) in tracks {
            for layer in 0..3 {
                self.request_keyframe(now, &source, mid, layer);
            }
        }
    }

    /// Removes dead peers, and the tracks others received from them.
    fn reap(&mut self) {
        while let Some(i) = self.peers.iter().position(|p| !p.rtc.is_alive()) {
            self.remove_peer(i);
        }
    }

    /// Removes a peer (its session closed). The others stop forwarding its tracks, and the
    /// m-lines that carried them go inactive at their next negotiation, so their pages see the
    /// tracks pause instead of going silent; they are kept for the participant's return.
    fn remove_peer(&mut self, i: usize) {
        let mut gone = self.peers.remove(i);
        gone.rtc.disconnect();
        self.known
            .retain(|_, who| who.participant != gone.participant);
        // Its keyframe-request times too: kept, they grow by a few entries per visitor forever.
        self.throttle
            .forget_where(|(source, _, _)| *source == gone.participant);
        for peer in &mut self.peers {
            let Peer {
                tracks_out,
                to_park,
                parked,
                ..
            } = peer;
            let mut k = 0;
            while k < tracks_out.len() {
                if tracks_out[k].source != gone.participant {
                    k += 1;
                    continue;
                }
                let t = tracks_out.remove(k);
                if let OutState::Open(mid) | OutState::Negotiating(mid) = t.state {
                    to_park.push(mid);
                    parked.push(Parked {
                        mid,
                        kind: t.kind,
                        source: t.source,
                        rewriter: t.rewriter,
                    });
                }
            }
        }
    }

    fn event(&mut self, i: usize, e: Event) {
        if let Some(p) = self.peers.get_mut(i) {
            p.dirty = true;
        }
        match e {
            Event::MediaAdded(m) if m.direction != Direction::SendOnly => {
                let (consult, source) = (
                    self.peers[i].consult.clone(),
                    self.peers[i].participant.clone(),
                );
                if self.peers[i].tracks_in.iter().any(|t| t.mid == m.mid) {
                    return;
                }
                self.peers[i].tracks_in.push(TrackIn {
                    mid: m.mid,
                    kind: m.kind,
                    bytes: [0; 3],
                    rates: [0; 3],
                });
                for (j, other) in self.peers.iter_mut().enumerate() {
                    if j != i && other.consult == consult {
                        let pref = other.preference;
                        other
                            .tracks_out
                            .push(track_out(&source, m.mid, m.kind, pref));
                    }
                }
            }
            Event::RtpPacket(pkt) => self.forward(i, pkt),
            Event::KeyframeRequest(req) => {
                let now = Instant::now();
                let target = self.peers[i]
                    .tracks_out
                    .iter()
                    .find(|t| t.state == OutState::Open(req.mid))
                    .map(|t| {
                        (
                            t.source.clone(),
                            t.source_mid,
                            t.selector.current().unwrap_or(0),
                        )
                    });
                if let Some((source, mid, layer)) = target {
                    self.request_keyframe(now, &source, mid, layer);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.peers[i].estimate_bps = estimate.as_u64();
            }
            Event::MediaEgressStats(es) => {
                let peer = &mut self.peers[i];
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
                let stats = &mut self.peers[i].stats;
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
                self.peers[i].stats.connected = matches!(
                    state,
                    IceConnectionState::Connected | IceConnectionState::Completed
                );
            }
            _ => {}
        }
    }

    fn request_keyframe(&mut self, now: Instant, source: &str, mid: Mid, layer: u8) {
        let Some(s) = self.find(source) else { return };
        if !self.throttle.allow(now, (source.to_string(), mid, layer)) {
            return;
        }
        let rid = match layer {
            0 => None,
            1 => Some(Rid::from("m")),
            _ => Some(Rid::from("h")),
        };
        let mut api = self.peers[s].rtc.direct_api();
        let stream = match api.stream_rx_by_mid(mid, rid) {
            Some(s) => Some(s),
            None if layer == 0 => api.stream_rx_by_mid(mid, Some(Rid::from("l"))),
            None => None,
        };
        if let Some(stream) = stream {
            stream.request_keyframe(KeyframeRequestKind::Pli);
        }
        self.peers[s].dirty = true;
    }

    fn forward(&mut self, i: usize, pkt: RtpPacket) {
        let now = Instant::now();
        let src = &mut self.peers[i];
        let Some((mid, rid)) = src
            .rtc
            .direct_api()
            .stream_rx(&pkt.header.ssrc)
            .map(|s| (s.mid(), s.rid()))
        else {
            return;
        };
        let layer = layer_of(rid);
        let Some(track) = src.tracks_in.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        track.bytes[layer as usize] += pkt.payload.len() as u64;
        src.stats.packets_in += 1;
        let (kind, rates) = (track.kind, track.rates);
        let Some(params) = src
            .rtc
            .codec_config()
            .iter()
            .find(|p| p.pt() == pkt.header.payload_type)
            .copied()
        else {
            return;
        };
        let codec = params.spec().codec;
        let vp8_desc = if codec == Codec::Vp8 {
            vp8(&pkt.payload)
        } else {
            None
        };
        let keyframe = match codec {
            Codec::Vp8 => vp8_desc.is_some_and(|d| d.keyframe),
            Codec::H264 => h264_keyframe(&pkt.payload),
            _ => true,
        };
        // The source is borrowed beside its subscribers (no copies of its ids per packet).
        let (before, rest) = self.peers.split_at_mut(i);
        let (src, after) = rest.split_first_mut().expect("peer i exists");
        let (consult, source) = (src.consult.as_str(), src.participant.as_str());
        let consult_hash = src.consult_hash;
        let mut keyframe_wanted = Vec::new();
        for sub in before.iter_mut().chain(after.iter_mut()) {
            if sub.consult_hash != consult_hash || sub.consult != consult || !sub.rtc.is_alive() {
                continue;
            }
            let estimate = sub.estimate_bps;
            let Some(out) = sub
                .tracks_out
                .iter_mut()
                .find(|t| t.source == source && t.source_mid == mid)
            else {
                continue;
            };
            let OutState::Open(out_mid) = out.state else {
                continue;
            };
            if kind == MediaKind::Video {
                if let Some(l) = out
                    .selector
                    .update(now, &rates_or_seen(rates, layer), estimate)
                {
                    keyframe_wanted.push(l);
                }
                match out.selector.on_packet(layer, keyframe) {
                    Verdict::Drop => continue,
                    Verdict::SwitchAndForward => out.rewriter.switch(
                        now,
                        layer,
                        *pkt.seq_no,
                        pkt.header.timestamp,
                        vp8_desc.as_ref(),
                    ),
                    Verdict::Forward => {}
                }
            } else if out.rewriter.layer().is_none() {
                out.rewriter
                    .switch(now, 0, *pkt.seq_no, pkt.header.timestamp, None);
            }
            // Only a VP8 payload is rewritten (PictureID/TL0PICIDX), so only it is copied; any
            // other payload is shared with str0m's buffer.
            let (mapped, payload): (_, std::sync::Arc<[u8]>) = match vp8_desc.as_ref() {
                Some(d) => {
                    // Copied once, straight into the shared buffer str0m takes (a Vec turned
                    // into an `Arc<[u8]>` would be copied a second time).
                    let mut copy: std::sync::Arc<[u8]> = std::sync::Arc::from(&pkt.payload[..]);
                    let bytes = std::sync::Arc::get_mut(&mut copy).expect("a fresh Arc is unique");
                    let m = out.rewriter.map(
                        now,
                        layer,
                        *pkt.seq_no,
                        pkt.header.timestamp,
                        Some((d, bytes)),
                    );
                    (m, copy)
                }
                None => (
                    out.rewriter
                        .map(now, layer, *pkt.seq_no, pkt.header.timestamp, None),
                    pkt.payload.clone(),
                ),
            };
            let Some(mapped) = mapped else { continue };
            // The subscriber's payload type for the same codec.
            let pt = sub.rtc.media(out_mid).and_then(|m| {
                let cfg = sub.rtc.codec_config();
                m.remote_pts()
                    .iter()
                    .copied()
                    .find(|pt| cfg.iter().any(|p| p.pt() == *pt && p.spec().codec == codec))
            });
            let Some(pt) = pt else { continue };
            let write = RtpWrite::new(pt, mapped.seq.into(), mapped.timestamp, now, payload)
                .marker(pkt.header.marker)
                .nackable(kind == MediaKind::Video);
            let mut api = sub.rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(out_mid, None) else {
                continue;
            };
            stream.write_rtp(write);
            sub.dirty = true;
            sub.stats.packets_out += 1;
        }
        if !keyframe_wanted.is_empty() {
            let source = source.to_owned();
            for l in keyframe_wanted {
                self.request_keyframe(now, &source, mid, l);
            }
        }
    }

    fn stats(&mut self, now: Instant) {
        let secs = now.duration_since(self.last_stats).as_secs_f64().max(0.001);
        self.last_stats = now;
        for p in &mut self.peers {
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
        let rates: HashMap<(&str, Mid), [u64; 3]> = self
            .peers
            .iter()
            .flat_map(|p| {
                p.tracks_in
                    .iter()
                    .map(move |t| ((p.participant.as_str(), t.mid), t.rates))
            })
            .collect();
        let desired: Vec<u64> = self
            .peers
            .iter()
            .map(|p| {
                p.tracks_out
                    .iter()
                    .map(|t| match t.kind {
                        MediaKind::Video => rates
                            .get(&(t.source.as_str(), t.source_mid))
                            .map_or(0, |r| t.selector.wanted_bps(r)),
                        _ => 64_000,
                    })
                    .sum()
            })
            .collect();
        for (p, desired) in self.peers.iter_mut().zip(desired) {
            if desired.abs_diff(p.desired_bps) * 10 > p.desired_bps {
                p.desired_bps = desired;
                p.rtc
                    .bwe()
                    .set_bitrate(Bitrate::ZERO, Bitrate::bps(desired * PROBE_ABOVE));
                p.dirty = true;
            }
        }
        for p in &mut self.peers {
            p.stats.bitrate_in_bps = (p.bytes_in as f64 * 8.0 / secs) as u64;
            p.stats.bitrate_out_bps = (p.bytes_out as f64 * 8.0 / secs) as u64;
            p.bytes_in = 0;
            p.bytes_out = 0;
            p.stats.estimate_bps = p.estimate_bps;
            p.stats.layer = p
                .tracks_out
                .iter()
                .filter_map(|t| t.selector.current())
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

/// Writes as much of a connection's backlog as the socket takes now.
fn flush(conn: &mut TcpConn) {
    while !conn.wbuf.is_empty() {
        match conn.stream.write(&conn.wbuf) {
            Ok(0) => {
                conn.alive = false;
                return;
            }
            Ok(n) => {
                conn.wbuf.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                conn.alive = false;
                return;
            }
        }
    }
}

/// Layer rates for selection; before the first measurement window, a layer seen now counts as
/// present (with a nominal rate) so forwarding starts at once.
fn rates_or_seen(mut rates: [u64; 3], layer: u8) -> [u64; 3] {
    if rates[layer as usize] == 0 {
        rates[layer as usize] = 1;
    }
    rates
}

fn track_out(source: &str, mid: Mid, kind: MediaKind, pref: Preference) -> TrackOut {
    let clock = if kind == MediaKind::Audio {
        48_000
    } else {
        90_000
    };
    let mut selector = LayerSelector::default();
    selector.set_preference(pref);
    TrackOut {
        source: source.to_string(),
        source_mid: mid,
        kind,
        state: OutState::ToOpen,
        rewriter: Rewriter::new(clock),
        selector,
    }
}

/// The identity of the browser session behind an offer: its `o=` session id and its DTLS
/// fingerprint. Renegotiations and ICE restarts keep both; a new RTCPeerConnection changes both.
fn session_origin(sdp: &str) -> String {
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
