//! A synthetic consult participant: the consult signaling protocol over a WebSocket, and a str0m
//! `Rtc` (full ICE, RTP mode) on its own loopback UDP socket, sending Opus-sized audio at 50
//! packets/s and VP8 simulcast video (three layers, each at its frame rate and bitrate, with
//! periodic keyframes) at real-time pacing. No codec runs: payloads are valid VP8 payload
//! descriptors and frame headers followed by filler, which is all an SFU looks at.
//!
//! Every payload ends with a [`Stamp`]: a magic word, the sending peer and the send time, so the
//! receiving peer measures one-way latency through the SFU (both ends share this process's clock).
//! Loss is measured per received stream from RTP sequence numbers (extended by str0m), the way
//! RTCP receiver reports count it, so packets an SFU deliberately does not forward (the simulcast
//! layers a subscriber does not get) are not counted as lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

use crate::metrics::{Metrics, PeerTally};
use crate::scenario::Media;

const MAGIC: [u8; 4] = *b"LTs1";
/// Bytes of the stamp at the end of every payload.
pub const STAMP_LEN: usize = 16;
/// Largest RTP payload we write (leaves room for headers, SRTP and extensions in a 1200 MTU).
const MAX_PAYLOAD: usize = 1100;

/// The trailer of every synthetic payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub peer: u32,
    /// Nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8]) {
        let n = out.len();
        if n < STAMP_LEN {
            return;
        }
        let t = &mut out[n - STAMP_LEN..];
        t[..4].copy_from_slice(&MAGIC);
        t[4..8].copy_from_slice(&self.peer.to_be_bytes());
        t[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let n = payload.len();
        let t = payload.get(n.checked_sub(STAMP_LEN)?..)?;
        if t[..4] != MAGIC {
            return None;
        }
        Some(Stamp {
            peer: u32::from_be_bytes(t[4..8].try_into().ok()?),
            sent_ns: u64::from_be_bytes(t[8..16].try_into().ok()?),
        })
    }
}

/// The payloads of one video frame of `size` bytes: VP8 payload descriptors with a 15-bit
/// PictureID (as browsers send), the frame header on the first packet, then filler; each packet
/// stamped with `stamp`.
pub fn vp8_frame(size: usize, keyframe: bool, picture_id: u16, stamp: Stamp) -> Vec<Vec<u8>> {
    let size = size.max(STAMP_LEN + 16);
    let per = MAX_PAYLOAD - 4;
    let count = size.div_ceil(per);
    let mut out = Vec::with_capacity(count);
    let mut left = size;
    for i in 0..count {
        let body = left.min(per).max(STAMP_LEN + 10);
        left = left.saturating_sub(per);
        let mut p = vec![0u8; 4 + body];
        // X=1, S on the first packet (partition 0); I=1; M=1 (15-bit PictureID).
        p[0] = if i == 0 { 0x90 } else { 0x80 };
        p[1] = 0x80;
        p[2] = 0x80 | ((picture_id >> 8) as u8 & 0x7f);
        p[3] = picture_id as u8;
        if i == 0 {
            // Frame tag: P bit 0 for a key frame; then the key frame start code and 640×360.
            p[4] = if keyframe { 0x00 } else { 0x01 };
            if keyframe {
                p[7..10].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                p[10..12].copy_from_slice(&640u16.to_le_bytes());
                p[12..14].copy_from_slice(&360u16.to_le_bytes());
            }
        }
        stamp.write(&mut p);
        out.push(p);
    }
    out
}

/// An Opus-sized audio payload (a TOC byte, filler, the stamp).
pub fn opus_packet(size: usize, stamp: Stamp) -> Vec<u8> {
    let mut p = vec![0u8; size.max(STAMP_LEN + 2)];
    p[0] = 0xfc;
    stamp.write(&mut p);
    p
}

/// What a peer is told to do.
pub struct PeerPlan {
    pub id: u32,
    pub ws_url: String,
    pub token: String,
    /// The provider: admits whoever waits.
    pub host: bool,
    pub media: Arc<Media>,
    pub epoch: Instant,
    pub metrics: Arc<Metrics>,
    /// Leave when this flips to true.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Give up when no remote media arrived within this long.
    pub join_timeout: Duration,
    /// Leave as soon as the first remote media packet arrives (join/leave churn).
    pub leave_after_media: bool,
}

/// One outgoing stream's pacing state.
pub(crate) struct Sender {
    mid: Mid,
    rid: Option<Rid>,
    pt: str0m::media::Pt,
    clock: u32,
    /// Interval between frames (audio: between packets).
    every: Duration,
    next: Instant,
    seq: u64,
    frames: u64,
    bytes_per_frame: usize,
    keyframe_every: u64,
    video: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{kind}: {detail}")]
    Failed { kind: &'static str, detail: String },
}

fn fail(kind: &'static str, detail: impl std::fmt::Display) -> PeerError {
    PeerError::Failed {
        kind,
        detail: detail.to_string(),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_send(ws: &mut Ws, v: Value) -> Result<(), PeerError> {
    ws.send(Message::text(v.to_string()))
        .await
        .map_err(|e| fail("signaling_closed", e))
}

/// Runs one participant until `stop`, counting into `plan.metrics`. An error names its kind
/// (`join_refused`, `signaling_error`, `signaling_closed`, `media_timeout`, `sdp_refused`, …).
pub async fn run(plan: PeerPlan) -> Result<(), PeerError> {
    let PeerPlan {
        id,
        ws_url,
        token,
        host,
        media,
        epoch,
        metrics,
        mut stop,
        join_timeout,
        leave_after_media,
    } = plan;
    let started = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .map_err(|e| fail("ws_connect", e))?;
    ws_send(&mut ws, json!({ "type": "join", "v": 1, "token": token })).await?;

    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("socket", e))?;
    let local = socket.local_addr().map_err(|e| fail("socket", e))?;
    let mut rtc = new_rtc(local).map_err(|e| fail("socket", e))?;

    let mut tally = PeerTally::default();
    let mut admitted = false;
    let mut welcomed = false;
    // Participants this host has admitted (waiting_room messages repeat the waiting list).
    let mut admitting: std::collections::HashSet<String> = Default::default();
    let mut pending: Option<SdpPendingOffer> = None;
    let mut senders: Vec<Sender> = Vec::new();
    let mut offered = false;
    // Our own send-only m-lines.
    let mut mine: Vec<(Mid, MediaKind)> = Vec::new();
    let mut connected = false;
    let mut rx: Reception<Ssrc> = Reception::new(started, epoch);
    let mut buf = vec![0u8; 2000];
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rtc_timeout;

    let result: Result<(), PeerError> = 'run: loop {
        if *stop.borrow() || (leave_after_media && rx.first_media.is_some()) {
            break Ok(());
        }
        if rx.first_media.is_none() && started.elapsed() > join_timeout {
            break Err(fail(
                "media_timeout",
                format!("no remote media within {join_timeout:?}"),
            ));
        }
        // Offer our media once admitted.
        if admitted && !offered {
            let mut api = rtc.sdp_api();
            let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            mine.push((audio, MediaKind::Audio));
            let mut sim = Simulcast::new();
            for l in &media.video_layers {
                sim.add_send_layer(SimulcastLayer::new(&l.rid));
            }
            // One layer is sent without simulcast.
            let sim = (media.video_layers.len() > 1).then_some(sim);
            let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim);
            mine.push((video, MediaKind::Video));
            match api.apply() {
                Some((offer, p)) => {
                    pending = Some(p);
                    ws_send(
                        &mut ws,
                        json!({ "type": "offer", "sdp": offer.to_sdp_string() }),
                    )
                    .await?;
                }
                None => break Err(fail("sdp", "nothing to offer")),
            }
            offered = true;
        }
        // Drain str0m.
        loop {
            match rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Timeout(t)) => {
                    rtc_timeout = t;
                    break;
                }
                Ok(Output::Event(e)) => match e {
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected)
                        if connected =>
                    {
                        break 'run Err(fail("ice_disconnected", "ICE disconnected"));
                    }
                    Event::Connected => {
                        tracing::debug!(peer = id, host, "connected");
                        connected = true;
                        let now = Instant::now();
                        senders = make_senders(&mut rtc, &media, &mine, now);
                    }
                    Event::RtpPacket(pkt) => {
                        let video = is_video(&pkt.payload);
                        rx.packet(
                            &mut tally,
                            pkt.header.ssrc,
                            *pkt.seq_no,
                            video,
                            &pkt.payload,
                        );
                    }
                    _ => {}
                },
                Err(e) => break 'run Err(fail("rtc", e)),
            }
        }
        if !rtc.is_alive() {
            break Err(fail("rtc", "peer connection closed"));
        }
        let next_send = senders.iter().map(next_due).min();
        let wake = next_send.map_or(rtc_timeout, |n| n.min(rtc_timeout));
        let wake = tokio::time::Instant::from_std(wake.max(Instant::now()));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, source)) = r
                    && let Ok(contents) = buf[..n].try_into()
                {
                    let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: local, contents });
                    if let Err(e) = rtc.handle_input(input) {
                        tally.error("rtc_input");
                        tracing::debug!(error = %e, "input refused");
                    }
                }
            }
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { break Err(fail("signaling_closed", "the server closed signaling")) };
                let Message::Text(text) = msg else { continue };
                let Ok(m) = serde_json::from_str::<Value>(&text) else { continue };
                tracing::debug!(peer = id, host, kind = m["type"].as_str().unwrap_or("?"), "signaling message");
                match m["type"].as_str() {
                    Some("welcome") => {
                        welcomed = true;
                        admitted = m["admitted"] != false;
                    }
                    Some("admitted") => admitted = true,
                    Some("waiting_room") if host => {
                        // Each waiting_room message lists everyone still waiting: admit each once.
                        for w in m["waiting"].as_array().cloned().unwrap_or_default() {
                            let Some(who) = w["id"].as_str() else { continue };
                            if admitting.insert(who.to_string()) {
                                ws_send(&mut ws, json!({ "type": "admit", "participant": who })).await?;
                            }
                        }
                    }
                    Some("answer") => {
                        let Some(p) = pending.take() else { continue };
                        let answer = SdpAnswer::from_sdp_string(m["sdp"].as_str().unwrap_or_default())
                            .map_err(|e| fail("sdp_refused", e))?;
                        rtc.sdp_api().accept_answer(p, answer).map_err(|e| fail("sdp_refused", e))?;
                    }
                    Some("offer") => {
                        let offer = SdpOffer::from_sdp_string(m["sdp"].as_str().unwrap_or_default())
                            .map_err(|e| fail("sdp_refused", e))?;
                        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| fail("sdp_refused", e))?;
                        ws_send(&mut ws, json!({ "type": "answer", "sdp": answer.to_sdp_string() })).await?;
                    }
                    Some("error") => {
                        let code = m["code"].as_str().unwrap_or("error").to_string();
                        if !welcomed {
                            // Before the welcome an error is the server refusing the join.
                            break Err(fail("join_refused", code));
                        }
                        // After it, an answer to one of our messages: counted, not fatal.
                        tracing::warn!(peer = id, code, message = %m, "signaling error");
                        tally.error("signaling_error");
                    }
                    Some("stats") => tracing::debug!(peer = id, stats = %m["participants"], "sfu stats"),
                    Some("ended") | Some("removed") => break Ok(()),
                    _ => {}
                }
            }
            _ = flush.tick() => {
                rx.totals(&mut tally);
                metrics.merge(&mut tally);
            }
            _ = stop.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
            break Err(fail("rtc", e));
        }
        if connected {
            send_due(&mut rtc, &mut senders, &media, id, epoch, now, &mut tally);
        }
    };
    rx.totals(&mut tally);
    if let Err(PeerError::Failed { kind, .. }) = &result {
        tally.error(kind);
    }
    metrics.merge(&mut tally);
    if rx.first_media.is_some() {
        metrics.peer_left();
    }
    // Leave for good, so the room frees the place at once instead of holding it for a reconnect.
    let _ = ws_send(&mut ws, json!({ "type": "leave" })).await;
    let _ = ws.close(None).await;
    result
}

/// What one participant has received: when its first media came (its join time), and per
/// received stream (key `K`) the first and highest sequence number and the count, for loss.
pub(crate) struct Reception<K> {
    started: Instant,
    epoch: Instant,
    pub first_media: Option<Instant>,
    streams: HashMap<K, (u64, u64, u64, bool)>,
}

impl<K: std::hash::Hash + Eq> Reception<K> {
    /// `started`: when this participant began joining; `epoch`: the stamps' time base.
    pub fn new(started: Instant, epoch: Instant) -> Self {
        Self {
            started,
            epoch,
            first_media: None,
            streams: HashMap::new(),
        }
    }

    /// Counts one received media payload of stream `key` with (extended) sequence number `seq`.
    pub fn packet(&mut self, tally: &mut PeerTally, key: K, seq: u64, video: bool, payload: &[u8]) {
        let now = Instant::now();
        if self.first_media.is_none() {
            self.first_media = Some(now);
            tally.join_ms = Some(now.duration_since(self.started).as_secs_f64() * 1e3);
        }
        let e = self.streams.entry(key).or_insert((seq, seq, 0, video));
        e.0 = e.0.min(seq);
        e.1 = e.1.max(seq);
        e.2 += 1;
        if let Some(stamp) = Stamp::read(payload) {
            let now_ns = now.duration_since(self.epoch).as_nanos() as u64;
            tally.latency_us(now_ns.saturating_sub(stamp.sent_ns) / 1000);
        }
        tally.received(video, payload.len());
    }

    /// The sequence ranges as cumulative expected/received counts of [audio, video]; the tally
    /// turns them into per-window deltas.
    pub fn totals(&self, tally: &mut PeerTally) {
        let mut t = [(0u64, 0u64); 2];
        for (first, last, n, video) in self.streams.values() {
            let k = &mut t[*video as usize];
            k.0 += last - first + 1;
            k.1 += n;
        }
        tally.set_sequence_totals(t);
    }
}

/// Our synthetic payloads say what they are: Opus starts with its TOC byte 0xfc, VP8 with a
/// descriptor (X bit set).
pub(crate) fn is_video(payload: &[u8]) -> bool {
    payload.first() != Some(&0xfc)
}

/// A str0m `Rtc` as every synthetic peer uses it (RTP mode, full ICE, Opus and VP8) with a host
/// candidate at `local`.
pub(crate) fn new_rtc(local: std::net::SocketAddr) -> Result<Rtc, str0m::RtcError> {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    Ok(rtc)
}

pub(crate) fn make_senders(
    rtc: &mut Rtc,
    media: &Media,
    mine: &[(Mid, MediaKind)],
    now: Instant,
) -> Vec<Sender> {
    let mut out = Vec::new();
    let pt_of = |rtc: &Rtc, codec: Codec| {
        rtc.codec_config()
            .iter()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    };
    let (Some(opus), Some(vp8)) = (pt_of(rtc, Codec::Opus), pt_of(rtc, Codec::Vp8)) else {
        return out;
    };
    for &(mid, kind) in mine {
        match kind {
            MediaKind::Audio => out.push(Sender {
                mid,
                rid: None,
                pt: opus,
                clock: 48_000,
                every: Duration::from_secs_f64(1.0 / media.audio_pps as f64),
                next: now,
                seq: 1,
                frames: 0,
                bytes_per_frame: media.audio_bytes,
                keyframe_every: 0,
                video: false,
            }),
            MediaKind::Video => {
                for l in &media.video_layers {
                    let fps = l.fps.max(1) as f64;
                    out.push(Sender {
                        mid,
                        rid: (media.video_layers.len() > 1).then(|| Rid::from(l.rid.as_str())),
                        pt: vp8,
                        clock: 90_000,
                        every: Duration::from_secs_f64(1.0 / fps),
                        next: now,
                        seq: 1,
                        frames: 0,
                        bytes_per_frame: (l.kbps as f64 * 1000.0 / 8.0 / fps) as usize,
                        keyframe_every: ((media.keyframe_interval_s * fps).round() as u64).max(1),
                        video: true,
                    });
                }
            }
        }
    }
    out
}

pub(crate) fn send_due(
    rtc: &mut Rtc,
    senders: &mut [Sender],
    media: &Media,
    peer: u32,
    epoch: Instant,
    now: Instant,
    tally: &mut PeerTally,
) {
    for s in senders.iter_mut() {
        // Catch up at most a few frames after a stall rather than bursting a backlog.
        if now.duration_since(s.next) > s.every * 4 {
            s.next = now;
        }
        while s.next <= now {
            let stamp = Stamp {
                peer,
                sent_ns: now.duration_since(epoch).as_nanos() as u64,
            };
            let ts = (s.frames as f64 * s.every.as_secs_f64() * s.clock as f64) as u32;
            let payloads = if s.video {
                let key = s.frames.is_multiple_of(s.keyframe_every);
                let size = if key {
                    s.bytes_per_frame * media.keyframe_factor as usize
                } else {
                    s.bytes_per_frame
                };
                vp8_frame(size, key, s.frames as u16 & 0x7fff, stamp)
            } else {
                vec![opus_packet(s.bytes_per_frame, stamp)]
            };
            let last = payloads.len().saturating_sub(1);
            let mut api = rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(s.mid, s.rid) else {
                tally.error("no_send_stream");
                s.next += s.every;
                continue;
            };
            for (i, p) in payloads.into_iter().enumerate() {
                let write = RtpWrite::new(s.pt, s.seq.into(), ts, now, p)
                    .marker(!s.video || i == last)
                    .nackable(s.video);
                stream.write_rtp(write);
                s.seq += 1;
                tally.sent(s.video);
            }
            s.frames += 1;
            s.next += s.every;
        }
    }
}

/// When this stream's next frame is due.
pub(crate) fn next_due(s: &Sender) -> Instant {
    s.next
}

/// The socket address a URL's host and port name (loopback checks happen before this).
pub fn ws_url(base: &str) -> String {
    let rest = base.trim_end_matches('/');
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    format!("ws://{rest}/api/v1/consults/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_garbage_is_not_a_stamp() {
        let s = Stamp {
            peer: 7,
            sent_ns: 123_456_789,
        };
        let p = opus_packet(80, s);
        assert_eq!(p.len(), 80);
        assert_eq!(Stamp::read(&p), Some(s));
        assert_eq!(Stamp::read(&p[..10]), None);
        assert_eq!(Stamp::read(&[0u8; 40]), None);
    }

    #[test]
    fn vp8_frames_are_split_and_the_sfu_parser_sees_the_keyframe() {
        let s = Stamp {
            peer: 1,
            sent_ns: 9,
        };
        let key = vp8_frame(5000, true, 300, s);
        assert_eq!(key.len(), 5000usize.div_ceil(MAX_PAYLOAD - 4));
        assert!(key.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let d = sfu::codec::vp8(&key[0]).expect("descriptor");
        assert!(d.keyframe && d.start_of_frame);
        assert_eq!(d.picture_id.map(|p| p.0), Some(300));
        let d1 = sfu::codec::vp8(&key[1]).expect("descriptor");
        assert!(!d1.start_of_frame && !d1.keyframe);
        let delta = vp8_frame(800, false, 301, s);
        assert_eq!(delta.len(), 1);
        assert!(!sfu::codec::vp8(&delta[0]).unwrap().keyframe);
        assert!(key.iter().chain(&delta).all(|p| Stamp::read(p) == Some(s)));
        let total: usize = key.iter().map(|p| p.len() - 4).sum();
        assert!((5000..5000 + MAX_PAYLOAD).contains(&total), "{total}");
    }
}
