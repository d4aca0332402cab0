//! Signaling's side of a worker: [`SfuHandle`] sends it commands over a channel, and the worker
//! answers through the commands' reply channels and [`Notice`]s.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::mpsc as smpsc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::Worker;
use crate::layers::Preference;

/// Why the worker refused a command.
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

pub(super) enum Command {
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

/// Commands waiting for a worker, at most (a worker drains them on every pass, so a full queue
/// means it is far behind).
pub const COMMAND_QUEUE: usize = 4096;

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
        super::install_crypto();
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
            .spawn(move || Worker::new(socket, udp_addr, tcp, notices, Instant::now()).run(rx))?;
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

    /// A trickled ICE candidate of the participant's (with or without the `a=` prefix).
    pub fn candidate(&self, participant: &str, candidate: String) {
        let _ = self.command(Command::Candidate {
            participant: participant.into(),
            candidate,
        });
    }

    /// The participant's wish for the video it receives.
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
