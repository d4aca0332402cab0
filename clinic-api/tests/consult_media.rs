//! Media through the SFU: independent WebRTC stacks (webrtc-rs peers, not str0m) join one
//! consult through the WebSocket signaling, negotiate with the SFU (including the SFU's own offers
//! for the other participant's tracks), and each receives the other's Opus audio and VP8 or H.264
//! video RTP. Variants: a patient whose network blocks UDP (ICE-TCP); H.264 instead of VP8; a
//! lossy path to the patient (NACKs answered with RTX retransmissions); a poor mobile link both
//! ways (5% loss, 80 ms ± 20 ms) that must leave 99% of the frames decodable; and misbehaving
//! peers (a flood from an unknown address, junk from a known one, a participant that never
//! answers) that must not degrade the consult.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::TestApp;
use futures_util::{SinkExt, StreamExt};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};

/// The SDP without UDP candidates (what a network that blocks UDP leaves usable).
fn without_udp(sdp: &str) -> String {
    sdp.split("\r\n")
        .filter(|l| !(l.starts_with("a=candidate") && l.to_ascii_lowercase().contains(" udp ")))
        .collect::<Vec<_>>()
        .join("\r\n")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Default)]
struct Received {
    audio: AtomicU64,
    video: AtomicU64,
    /// The codec of the first video packet received.
    video_mime: Mutex<Option<String>>,
    /// Sequence numbers of the video packets received (after any RTX repair).
    video_seqs: Mutex<HashSet<u16>>,
    /// Each video packet received (after any RTX repair): sequence number, whether it starts a
    /// keyframe (VP8), and when.
    video_arrivals: Mutex<Vec<(u16, bool, std::time::Instant)>>,
    /// Audio packets this participant sent.
    sent_audio: AtomicU64,
    /// `stats` entries a host received.
    stats: Mutex<Vec<Value>>,
    /// The SFU's offers to this participant (new tracks to receive), as received.
    offers: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct Handler {
    gather: mpsc::UnboundedSender<()>,
    state: mpsc::UnboundedSender<RTCPeerConnectionState>,
    received: Arc<Received>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            let _ = self.gather.send(());
        }
    }
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        let _ = self.state.send(s);
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let received = self.received.clone();
        let audio = track.kind().await == RtpCodecKind::Audio;
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(_) if audio => {
                        received.audio.fetch_add(1, Ordering::Relaxed);
                    }
                    TrackRemoteEvent::OnRtpPacket(pkt) => {
                        received
                            .video_seqs
                            .lock()
                            .unwrap()
                            .insert(pkt.header.sequence_number);
                        // The VP8 payload descriptor (one byte here), then the frame header
                        // whose lowest bit is 0 on a keyframe.
                        let key = pkt.payload.len() > 1 && pkt.payload[1] & 1 == 0;
                        received.video_arrivals.lock().unwrap().push((
                            pkt.header.sequence_number,
                            key,
                            std::time::Instant::now(),
                        ));
                        if received.video.fetch_add(1, Ordering::Relaxed) == 0 {
                            let codec = track.codec(pkt.header.ssrc).await;
                            *received.video_mime.lock().unwrap() = codec.map(|c| c.mime_type);
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

fn rtp_track(
    kind: RtpCodecKind,
    id: &str,
    ssrc: u32,
    codec: RTCRtpCodec,
) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("stream-{id}"),
        id.to_owned(),
        id.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )))
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn next_msg(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// How a synthetic participant behaves.
#[derive(Clone, Default)]
struct Who {
    /// Admits whoever waits.
    host: bool,
    /// On a network that blocks UDP: gathers TCP only, ignores the SFU's UDP candidates and
    /// dials its passive ICE-TCP candidate.
    tcp_only: bool,
    /// Publishes H.264 (and offers only H.264 for video) instead of VP8.
    h264: bool,
    /// Runs webrtc-rs's default interceptors: NACK generator and responder, RTCP reports, TWCC.
    interceptors: bool,
    /// Reaches the SFU through this UDP proxy.
    proxy: Option<(SocketAddr, Arc<Proxy>)>,
    /// Sends its offer, then never answers anything and never connects.
    silent: bool,
    ssrc_base: u32,
}

/// A UDP relay between one participant and the SFU: drops every `drop_every`-th video packet
/// towards the participant (never a retransmission), counts the RTX retransmissions that pass,
/// and while `garbage` is set sends junk (1,000 datagrams a second) to the SFU from the address
/// the SFU knows as the participant's.
#[derive(Default)]
struct Proxy {
    /// The SFU's UDP address, learnt from its SDP.
    target: Mutex<Option<SocketAddr>>,
    video_pts: Mutex<HashSet<u8>>,
    rtx_pts: Mutex<HashSet<u8>>,
    drop_every: u64,
    garbage: AtomicBool,
    video_seen: AtomicU64,
    dropped: AtomicU64,
    /// Sequence numbers of the video packets dropped, and when.
    dropped_seqs: Mutex<Vec<(u16, std::time::Instant)>>,
    rtx: AtomicU64,
    garbage_sent: AtomicU64,
    /// A poor link instead of `drop_every`: every datagram, both ways, is lost with this
    /// probability or else delivered after a uniform random delay in this range (what
    /// `tc netem loss 5% delay 80ms 20ms` does; the kernel here has no netem qdisc).
    impair: Option<Impairment>,
    /// The generator behind the losses and delays.
    rng: Mutex<u64>,
    /// When each video packet towards the participant (its sequence number in the SFU's
    /// outgoing numbering) first reached the proxy, lost or not.
    video_first_seen: Mutex<Vec<(u16, std::time::Instant)>>,
    /// Datagrams lost by the impairment, towards the participant and towards the SFU.
    lost_down: AtomicU64,
    lost_up: AtomicU64,
}

#[derive(Clone, Copy)]
struct Impairment {
    loss: f64,
    delay_ms: (u64, u64),
}

impl Proxy {
    fn next_random(&self) -> u64 {
        let mut x = self.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// What the impairment does to one datagram: `None` lost, else its delay.
    fn fate(&self) -> Option<Duration> {
        let Some(i) = self.impair else {
            return Some(Duration::ZERO);
        };
        if (self.next_random() % 1_000_000) as f64 / 1e6 < i.loss {
            return None;
        }
        let span = i.delay_ms.1 - i.delay_ms.0 + 1;
        Some(Duration::from_millis(
            i.delay_ms.0 + self.next_random() % span,
        ))
    }
}

/// Sends `pkt` from `sock` to `to` after `delay` (at once when zero). Like netem's jitter, a
/// delay larger than the gap to the next datagram reorders them.
async fn deliver(sock: &Arc<UdpSocket>, pkt: &[u8], to: SocketAddr, delay: Duration) {
    if delay.is_zero() {
        let _ = sock.send_to(pkt, to).await;
        return;
    }
    let (sock, pkt) = (sock.clone(), pkt.to_vec());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = sock.send_to(&pkt, to).await;
    });
}

/// The payload type of an RTP packet (not RTCP, STUN or DTLS), read from its clear header.
fn rtp_payload_type(pkt: &[u8]) -> Option<u8> {
    (pkt.len() >= 12 && pkt[0] >> 6 == 2 && !(192..=223).contains(&pkt[1])).then_some(pkt[1] & 0x7f)
}

/// The payload types of `codec` in an SDP, and of the RTX streams (`apt=`) that repair them.
fn payload_types(sdp: &str, codec: &str) -> (HashSet<u8>, HashSet<u8>) {
    let mut media = HashSet::new();
    let mut rtx = Vec::new();
    for l in sdp.lines() {
        if let Some((pt, name)) = l.strip_prefix("a=rtpmap:").and_then(|r| r.split_once(' '))
            && name
                .to_ascii_uppercase()
                .starts_with(&format!("{}/", codec.to_ascii_uppercase()))
            && let Ok(pt) = pt.parse::<u8>()
        {
            media.insert(pt);
        }
        if let Some((pt, params)) = l.strip_prefix("a=fmtp:").and_then(|r| r.split_once(' ')) {
            for p in params.split(';') {
                if let (Ok(pt), Some(Ok(apt))) = (
                    pt.parse::<u8>(),
                    p.trim().strip_prefix("apt=").map(str::parse::<u8>),
                ) {
                    rtx.push((pt, apt));
                }
            }
        }
    }
    let rtx = rtx
        .into_iter()
        .filter(|(_, apt)| media.contains(apt))
        .map(|(pt, _)| pt)
        .collect();
    (media, rtx)
}

impl Proxy {
    async fn start(drop_every: u64) -> (SocketAddr, Arc<Proxy>) {
        Self::start_with(Proxy {
            drop_every,
            ..Default::default()
        })
        .await
    }

    async fn start_with(proxy: Proxy) -> (SocketAddr, Arc<Proxy>) {
        // `near` faces the participant; `far` is the participant's address as the SFU sees it.
        let near = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let far = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = near.local_addr().unwrap();
        let proxy = Arc::new(proxy);
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        tokio::spawn({
            let (near, far, proxy, client) =
                (near.clone(), far.clone(), proxy.clone(), client.clone());
            async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = near.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    let target = *proxy.target.lock().unwrap();
                    let Some(delay) = proxy.fate() else {
                        proxy.lost_up.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if let Some(t) = target {
                        deliver(&far, &buf[..n], t, delay).await;
                    }
                }
            }
        });
        tokio::spawn({
            let (far, proxy) = (far.clone(), proxy.clone());
            async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, _)) = far.recv_from(&mut buf).await {
                    let pkt = &buf[..n];
                    if let Some(pt) = rtp_payload_type(pkt) {
                        if proxy.video_pts.lock().unwrap().contains(&pt) {
                            let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
                            proxy
                                .video_first_seen
                                .lock()
                                .unwrap()
                                .push((seq, std::time::Instant::now()));
                            let k = proxy.video_seen.fetch_add(1, Ordering::Relaxed) + 1;
                            if proxy.drop_every > 0 && k % proxy.drop_every == 0 {
                                proxy.dropped.fetch_add(1, Ordering::Relaxed);
                                let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
                                proxy
                                    .dropped_seqs
                                    .lock()
                                    .unwrap()
                                    .push((seq, std::time::Instant::now()));
                                continue;
                            }
                        } else if proxy.rtx_pts.lock().unwrap().contains(&pt) {
                            proxy.rtx.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let Some(delay) = proxy.fate() else {
                        proxy.lost_down.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let to = *client.lock().unwrap();
                    if let Some(to) = to {
                        deliver(&near, pkt, to, delay).await;
                    }
                }
            }
        });
        {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(1));
                let mut x: u32 = 0x9e37_79b9;
                loop {
                    ticker.tick().await;
                    if !proxy.garbage.load(Ordering::Relaxed) {
                        continue;
                    }
                    let Some(t) = *proxy.target.lock().unwrap() else {
                        continue;
                    };
                    // Junk shaped like each protocol the SFU demultiplexes: SRTP, SRTCP, STUN,
                    // DTLS, and none of them.
                    let k = proxy.garbage_sent.fetch_add(1, Ordering::Relaxed);
                    let mut pkt: Vec<u8> = (0..120)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 17;
                            x ^= x << 5;
                            x as u8
                        })
                        .collect();
                    match k % 5 {
                        0 => pkt[..2].copy_from_slice(&[0x80, 0x60]),
                        1 => pkt[..2].copy_from_slice(&[0x80, 0xc8]),
                        2 => pkt[..8]
                            .copy_from_slice(&[0x00, 0x01, 0x00, 0x64, 0x21, 0x12, 0xa4, 0x42]),
                        3 => pkt[..3].copy_from_slice(&[0x17, 0xfe, 0xfd]),
                        _ => pkt[0] = 0xff,
                    }
                    let _ = far.send_to(&pkt, t).await;
                }
            });
        }
        (addr, proxy)
    }

    /// Learns the SFU's address and the payload types from the SFU's SDP, and rewrites its UDP
    /// candidate to the proxy's address.
    fn rewrite(&self, sdp: &str, me: SocketAddr) -> String {
        let (video, rtx) = payload_types(sdp, "VP8");
        self.video_pts.lock().unwrap().extend(video);
        self.rtx_pts.lock().unwrap().extend(rtx);
        sdp.split("\r\n")
            .map(|l| {
                if !(l.starts_with("a=candidate") && l.to_ascii_lowercase().contains(" udp ")) {
                    return l.to_owned();
                }
                // a=candidate:<foundation> <component> udp <priority> <ip> <port> typ host
                let mut cols: Vec<String> = l.split(' ').map(str::to_owned).collect();
                if cols.len() > 5
                    && let Ok(sfu) = format!("{}:{}", cols[4], cols[5]).parse::<SocketAddr>()
                {
                    *self.target.lock().unwrap() = Some(sfu);
                    cols[4] = me.ip().to_string();
                    cols[5] = me.port().to_string();
                }
                cols.join(" ")
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

/// Joins, negotiates, answers the SFU's offers, sends RTP (Opus at 50 packets/s, video at 50
/// packets/s with a keyframe every 25) until told to stop, and counts what it receives.
async fn participant(
    addr: SocketAddr,
    token: String,
    who: Who,
    received: Arc<Received>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/consults/ws")).await?;
    send(&mut ws, json!({ "type": "join", "v": 1, "token": token })).await;
    let welcome = next_msg(&mut ws)
        .await
        .ok_or_else(|| anyhow::anyhow!("no welcome"))?;
    anyhow::ensure!(welcome["type"] == "welcome", "{welcome}");
    if welcome["admitted"] == false {
        loop {
            let m = next_msg(&mut ws)
                .await
                .ok_or_else(|| anyhow::anyhow!("closed while waiting"))?;
            if m["type"] == "admitted" {
                break;
            }
        }
    }

    let mut me = MediaEngine::default();
    let h264 = RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .to_owned(),
        rtcp_feedback: vec![],
    };
    let opus = RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    };
    if who.h264 {
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus.clone(),
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )?;
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: h264.clone(),
                payload_type: 125,
            },
            RtpCodecKind::Video,
        )?;
    } else {
        me.register_default_codecs()?;
    }
    let registry = if who.interceptors {
        register_default_interceptors(Registry::new(), &mut me)?
    } else {
        Registry::new()
    };
    let network = if who.tcp_only {
        NetworkType::Tcp4
    } else {
        NetworkType::Udp4
    };
    let se = SettingEngineBuilder::new()
        .with_network_types(vec![network])
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let (gather_tx, mut gather_rx) = mpsc::unbounded_channel();
    let (state_tx, mut state_rx) = mpsc::unbounded_channel();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(me)
            .with_setting_engine(se)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                gather: gather_tx,
                state: state_tx,
                received: received.clone(),
            }))
            .with_udp_addrs(if who.tcp_only {
                vec![]
            } else {
                vec!["127.0.0.1:0"]
            })
            .with_tcp_addrs(if who.tcp_only {
                vec!["127.0.0.1:0"]
            } else {
                vec![]
            })
            .build()
            .await?,
    );
    let vp8 = RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    };
    let (a_ssrc, v_ssrc) = (who.ssrc_base + 1, who.ssrc_base + 2);
    let audio = rtp_track(RtpCodecKind::Audio, "audio", a_ssrc, opus);
    let (video_codec, video_pt) = if who.h264 { (h264, 125) } else { (vp8, 96) };
    let video = rtp_track(RtpCodecKind::Video, "video", v_ssrc, video_codec);
    pc.add_track(audio.clone() as Arc<dyn TrackLocal>).await?;
    pc.add_track(video.clone() as Arc<dyn TrackLocal>).await?;

    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), gather_rx.recv()).await;
    let sdp = pc.local_description().await.expect("local description").sdp;
    send(&mut ws, json!({ "type": "offer", "sdp": sdp })).await;

    // What the SFU's SDP becomes on this participant's network.
    let remote_sdp = |sdp: &str| -> String {
        if who.tcp_only {
            without_udp(sdp)
        } else if let Some((me, proxy)) = &who.proxy {
            proxy.rewrite(sdp, *me)
        } else {
            sdp.to_owned()
        }
    };

    let mut seq: u16 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut connected = false;
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            msg = next_msg(&mut ws) => {
                let Some(m) = msg else { anyhow::bail!("signaling closed") };
                if who.silent {
                    continue;
                }
                match m["type"].as_str() {
                    Some("answer") => {
                        let sdp = m["sdp"].as_str().unwrap().to_owned();
                        pc.set_remote_description(RTCSessionDescription::answer(remote_sdp(&sdp))?).await?;
                        if who.tcp_only {
                            for line in sdp.lines().filter(|l| l.starts_with("a=candidate") && l.contains(" tcp ")) {
                                let candidate = RTCIceCandidateInit {
                                    candidate: line.trim_start_matches("a=").to_owned(),
                                    sdp_mid: Some("0".into()),
                                    sdp_mline_index: Some(0),
                                    ..Default::default()
                                };
                                pc.add_ice_candidate(candidate).await?;
                            }
                        }
                    }
                    Some("offer") => {
                        received.offers.lock().unwrap().push(m["sdp"].as_str().unwrap_or("").to_owned());
                        let sdp = remote_sdp(m["sdp"].as_str().unwrap());
                        pc.set_remote_description(RTCSessionDescription::offer(sdp)?).await?;
                        let answer = pc.create_answer(None).await?;
                        while gather_rx.try_recv().is_ok() {}
                        pc.set_local_description(answer).await?;
                        let _ = tokio::time::timeout(Duration::from_secs(2), gather_rx.recv()).await;
                        let sdp = pc.local_description().await.expect("local description").sdp;
                        send(&mut ws, json!({ "type": "answer", "sdp": sdp })).await;
                    }
                    Some("waiting_room") if who.host => {
                        for w in m["waiting"].as_array().cloned().unwrap_or_default() {
                            send(&mut ws, json!({ "type": "admit", "participant": w["id"] })).await;
                        }
                    }
                    Some("stats") => {
                        received.stats.lock().unwrap().extend(m["participants"].as_array().cloned().unwrap_or_default());
                    }
                    Some("error") => anyhow::bail!("signaling error: {m}"),
                    _ => {}
                }
            }
            s = state_rx.recv() => {
                match s {
                    Some(RTCPeerConnectionState::Connected) => connected = true,
                    Some(RTCPeerConnectionState::Failed) if !who.silent => anyhow::bail!("peer connection failed"),
                    _ => {}
                }
            }
            _ = ticker.tick() => {
                if *stop.borrow() {
                    break;
                }
                if !connected {
                    continue;
                }
                n += 1;
                seq = seq.wrapping_add(1);
                let header = |pt: u8, ssrc: u32, ts: u32, marker: bool| rtp::Header { version: 2, payload_type: pt, sequence_number: seq, timestamp: ts, ssrc, marker, ..Default::default() };
                let opus_frame = Bytes::from_static(&[0xfc, 0xff, 0xfe, 0x01, 0x02, 0x03]);
                if audio.write_rtp(rtp::Packet { header: header(111, a_ssrc, n * 960, false), payload: opus_frame }).await.is_ok() {
                    received.sent_audio.fetch_add(1, Ordering::Relaxed);
                }
                let key = n % 25 == 1;
                let payload = if who.h264 {
                    // A single NAL unit: an IDR slice (type 5) for keyframes, else a non-IDR one.
                    Bytes::from(vec![if key { 0x65 } else { 0x41 }, 0x88, 0x84, 0x00, 0x33, 0xff])
                } else {
                    // VP8: descriptor with S=1, then a key frame header (P bit 0) or a delta one.
                    Bytes::from(vec![0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00])
                };
                let _ = video.write_rtp(rtp::Packet { header: header(video_pt, v_ssrc, n * 3000, true), payload }).await;
            }
        }
    }
    pc.close().await?;
    Ok(())
}

struct Consult {
    app: TestApp,
    addr: SocketAddr,
    tokens: Vec<String>,
}

/// A running server with one consult and a join token for each of `roles`.
async fn consult(roles: &[&str]) -> Consult {
    let app = TestApp::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(clinic_api::run(
        listener,
        app.state.clone(),
        std::future::pending(),
    ));
    let provider = app.user(Role::Provider).await;
    let cookie = app.session(&provider, Stage::Full).await;
    let consult = app
        .call(
            Method::POST,
            "/api/v1/consults",
            Some(&cookie),
            Some(json!({ "location_id": app.locations[0] })),
        )
        .await;
    let id = consult.body["id"].as_str().unwrap().to_string();
    let mut tokens = Vec::new();
    for role in roles {
        let link = app
            .call(
                Method::POST,
                &format!("/api/v1/consults/{id}/links"),
                Some(&cookie),
                Some(json!({ "role": role, "display_name": role })),
            )
            .await;
        let code = link.body["url"]
            .as_str()
            .unwrap()
            .split_once('#')
            .unwrap()
            .1
            .to_string();
        let joined = app
            .call(
                Method::POST,
                "/api/v1/consults/join",
                None,
                Some(json!({ "code": code })),
            )
            .await;
        tokens.push(joined.body["token"].as_str().unwrap().to_string());
    }
    Consult { app, addr, tokens }
}

fn counts(r: &Received) -> (u64, u64) {
    (
        r.audio.load(Ordering::Relaxed),
        r.video.load(Ordering::Relaxed),
    )
}

fn enough(r: &Received) -> bool {
    r.audio.load(Ordering::Relaxed) >= 50 && r.video.load(Ordering::Relaxed) >= 50
}

/// Polls `done` every 100 ms for up to `secs`, or until a peer task ends.
async fn wait_for(
    secs: u64,
    tasks: &[&tokio::task::JoinHandle<anyhow::Result<()>>],
    done: impl Fn() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        if tasks.iter().any(|t| t.is_finished()) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

async fn exchange(patient: Who) {
    let h264 = patient.h264;
    let c = consult(&["provider", "patient"]).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (dr_rx, pat_rx) = (Arc::new(Received::default()), Arc::new(Received::default()));
    let provider = Who {
        host: true,
        h264,
        ssrc_base: 0x1000,
        ..Default::default()
    };
    let dr = tokio::spawn(participant(
        c.addr,
        c.tokens[0].clone(),
        provider,
        dr_rx.clone(),
        stop_rx.clone(),
    ));
    let tcp_only = patient.tcp_only;
    let pat = tokio::spawn(participant(
        c.addr,
        c.tokens[1].clone(),
        Who {
            ssrc_base: 0x2000,
            ..patient
        },
        pat_rx.clone(),
        stop_rx,
    ));
    let want = if tcp_only { "tcp" } else { "udp" };
    let stats_in = |r: &Received| {
        r.stats
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["transport"] == want && e["packets_in"].as_u64() > Some(0))
    };
    wait_for(20, &[&dr, &pat], || {
        enough(&dr_rx) && enough(&pat_rx) && stats_in(&dr_rx)
    })
    .await;
    let _ = stop_tx.send(true);
    let (a, b) = (dr.await.unwrap(), pat.await.unwrap());
    eprintln!(
        "provider received {:?}, patient received {:?}",
        counts(&dr_rx),
        counts(&pat_rx)
    );
    a.expect("provider peer");
    b.expect("patient peer");
    assert!(
        enough(&dr_rx),
        "the provider received the patient's media: {:?}",
        counts(&dr_rx)
    );
    assert!(
        enough(&pat_rx),
        "the patient received the provider's media: {:?}",
        counts(&pat_rx)
    );
    let video_codec = if h264 { MIME_TYPE_H264 } else { MIME_TYPE_VP8 };
    for (who, r) in [("provider", &dr_rx), ("patient", &pat_rx)] {
        let mime = r.video_mime.lock().unwrap().clone();
        assert_eq!(
            mime.as_deref().map(str::to_ascii_lowercase),
            Some(video_codec.to_ascii_lowercase()),
            "the {who} received {video_codec}"
        );
    }
    // The provider's page gets per-participant stats, and /metrics exports them.
    let stats = dr_rx.stats.lock().unwrap().clone();
    assert!(
        stats
            .iter()
            .any(|e| e["packets_in"].as_u64() > Some(0) && e["bitrate_in_bps"].as_u64() > Some(0)),
        "{stats:?}"
    );
    assert!(
        stats.iter().any(|e| e["transport"] == want),
        "a participant on {want}: {stats:?}"
    );
    let metrics = c.app.scrape_metrics().await.text;
    assert!(
        metrics.contains("sfu_participant_bitrate_in_bps{consult="),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_peers_exchange_audio_and_video_through_the_sfu() {
    exchange(Who::default()).await;
}

/// A patient on a bad network comes back again and again with a new media session (a reload, a
/// new RTCPeerConnection): each time, the provider gets the patient's new audio and video on the
/// m-lines that carried the old ones, so the provider's session never grows. (Before, every
/// return added two m-lines and stopped two; after some fifteen returns the SFU's offer passed
/// the signaling limit and the consult lost its media.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_back_with_a_new_session_takes_its_old_m_lines_back() {
    let c = consult(&["provider", "patient"]).await;
    let (stop_all, stop_rx) = tokio::sync::watch::channel(false);
    let dr_rx = Arc::new(Received::default());
    let dr = tokio::spawn(participant(
        c.addr,
        c.tokens[0].clone(),
        Who {
            host: true,
            ssrc_base: 0x1000,
            ..Default::default()
        },
        dr_rx.clone(),
        stop_rx,
    ));
    const RETURNS: u32 = 8;
    for visit in 0..=RETURNS {
        let (base_audio, base_video) = counts(&dr_rx);
        let pat_rx = Arc::new(Received::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let pat = tokio::spawn(participant(
            c.addr,
            c.tokens[1].clone(),
            Who {
                ssrc_base: 0x2000 + 0x10 * visit,
                ..Default::default()
            },
            pat_rx.clone(),
            stop_rx,
        ));
        let got = wait_for(20, &[&dr, &pat], || {
            let (a, v) = counts(&dr_rx);
            a >= base_audio + 50 && v >= base_video + 50 && enough(&pat_rx)
        })
        .await;
        let _ = stop_tx.send(true);
        pat.await.unwrap().expect("patient peer");
        assert!(
            got,
            "visit {visit}: the provider received the patient's new media ({:?} after {:?}) and the patient the provider's ({:?})",
            counts(&dr_rx),
            (base_audio, base_video),
            counts(&pat_rx)
        );
    }
    let _ = stop_all.send(true);
    dr.await.unwrap().expect("provider peer");
    let offers = dr_rx.offers.lock().unwrap().clone();
    assert!(!offers.is_empty(), "the SFU offered the patient's tracks");
    for (n, sdp) in offers.iter().enumerate() {
        let m_lines: Vec<&str> = sdp.lines().filter(|l| l.starts_with("m=")).collect();
        // The provider's own audio and video, and the patient's audio and video: never more.
        assert!(
            m_lines.len() <= 4,
            "offer {n} of {} has {} m-lines: {m_lines:?}",
            offers.len(),
            m_lines.len()
        );
        assert!(
            !m_lines.iter().any(|l| l.split(' ').nth(1) == Some("0")),
            "offer {n}: no m-line is stopped: {m_lines:?}"
        );
    }
    eprintln!(
        "{} SFU offers to the provider over {RETURNS} returns, the largest {} bytes",
        offers.len(),
        offers.iter().map(String::len).max().unwrap_or(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_network_blocks_udp_connects_over_ice_tcp() {
    exchange(Who {
        tcp_only: true,
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_forwarded_both_ways() {
    exchange(Who {
        h264: true,
        ..Default::default()
    })
    .await;
}

/// A provider and a patient of consult `c` on their way: their peer tasks, what each receives,
/// and the switch that stops both.
struct Pair {
    stop: tokio::sync::watch::Sender<bool>,
    dr: tokio::task::JoinHandle<anyhow::Result<()>>,
    pat: tokio::task::JoinHandle<anyhow::Result<()>>,
    dr_rx: Arc<Received>,
    pat_rx: Arc<Received>,
}

fn pair(c: &Consult, provider: Who, patient: Who) -> Pair {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (dr_rx, pat_rx) = (Arc::new(Received::default()), Arc::new(Received::default()));
    let dr = tokio::spawn(participant(
        c.addr,
        c.tokens[0].clone(),
        provider,
        dr_rx.clone(),
        stop_rx.clone(),
    ));
    let pat = tokio::spawn(participant(
        c.addr,
        c.tokens[1].clone(),
        patient,
        pat_rx.clone(),
        stop_rx,
    ));
    Pair {
        stop,
        dr,
        pat,
        dr_rx,
        pat_rx,
    }
}

/// A lossy path to the patient: every 10th video packet the SFU sends is lost. The patient's
/// stack asks for them again (NACK), and the SFU answers with RTX retransmissions from its
/// send buffer; the provider's page sees the patient's NACK count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_packets_are_nacked_and_retransmitted_over_rtx() {
    let c = consult(&["provider", "patient"]).await;
    let (proxy_addr, proxy) = Proxy::start(10).await;
    let provider = Who {
        host: true,
        ssrc_base: 0x1000,
        ..Default::default()
    };
    let patient = Who {
        interceptors: true,
        proxy: Some((proxy_addr, proxy.clone())),
        ssrc_base: 0x2000,
        ..Default::default()
    };
    let Pair {
        stop: stop_tx,
        dr,
        pat,
        dr_rx,
        pat_rx,
    } = pair(&c, provider, patient);
    let nacks = |r: &Received| {
        r.stats
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| e["nacks"].as_u64())
            .max()
            .unwrap_or(0)
    };
    wait_for(25, &[&dr, &pat], || {
        enough(&pat_rx) && proxy.dropped.load(Ordering::Relaxed) >= 20 && nacks(&dr_rx) > 0
    })
    .await;
    // Give the last losses time to be repaired, then judge those older than 1.5 s (NACKs are
    // retried for a while; a loaded machine answers late).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cutoff = std::time::Instant::now() - Duration::from_millis(1500);
    let _ = stop_tx.send(true);
    let (a, b) = (dr.await.unwrap(), pat.await.unwrap());
    let lost: Vec<u16> = proxy
        .dropped_seqs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at < cutoff)
        .map(|(seq, _)| *seq)
        .collect();
    let got = pat_rx.video_seqs.lock().unwrap().clone();
    let repaired = lost.iter().filter(|s| got.contains(s)).count();
    eprintln!(
        "video packets towards the patient {}, dropped {} ({} judged), repaired {repaired}; \
         RTX packets seen (retransmissions and padding) {}; NACKs counted by the SFU {}; \
         patient received {:?}",
        proxy.video_seen.load(Ordering::Relaxed),
        proxy.dropped.load(Ordering::Relaxed),
        lost.len(),
        proxy.rtx.load(Ordering::Relaxed),
        nacks(&dr_rx),
        counts(&pat_rx)
    );
    a.expect("provider peer");
    b.expect("patient peer");
    assert!(lost.len() >= 15, "enough loss to judge: {}", lost.len());
    assert!(
        repaired * 10 >= lost.len() * 8,
        "lost video packets reached the patient again: {repaired} of {}",
        lost.len()
    );
    assert!(
        proxy.rtx.load(Ordering::Relaxed) > 0,
        "retransmissions came over RTX"
    );
    assert!(nacks(&dr_rx) > 0, "the SFU counted the patient's NACKs");
}

/// A patient on a poor mobile link: every datagram between the patient and the SFU, both ways
/// (media, RTX, NACKs and reports, ICE and DTLS), is lost 5% of the time or else delayed
/// 80 ms ± 20 ms (uniform, so reordered as netem's jitter reorders), for 30 s of 50 frames a
/// second with a keyframe every 25. A frame counts as decodable when it arrived within 1 s of
/// reaching the proxy (a jitter buffer's patience) and so did every frame back to its keyframe
/// (a delta frame needs its references). NACK and RTX must keep at least 99% decodable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_over_5_percent_loss_and_80_ms_jitter_stays_99_percent_decodable() {
    let c = consult(&["provider", "patient"]).await;
    let (proxy_addr, proxy) = Proxy::start_with(Proxy {
        impair: Some(Impairment {
            loss: 0.05,
            delay_ms: (60, 100),
        }),
        rng: Mutex::new(0x5eed_1234_abcd_0077),
        ..Default::default()
    })
    .await;
    let provider = Who {
        host: true,
        interceptors: true,
        ssrc_base: 0x1000,
        ..Default::default()
    };
    let patient = Who {
        interceptors: true,
        proxy: Some((proxy_addr, proxy.clone())),
        ssrc_base: 0x2000,
        ..Default::default()
    };
    let Pair {
        stop: stop_tx,
        dr,
        pat,
        pat_rx,
        ..
    } = pair(&c, provider, patient);
    assert!(
        wait_for(30, &[&dr, &pat], || pat_rx.video.load(Ordering::Relaxed)
            > 0)
        .await,
        "video reached the patient over the poor link"
    );
    let began = std::time::Instant::now();
    // 30 s of media (a peer that gives up ends early, and its error shows below).
    while began.elapsed() < Duration::from_secs(30) && !dr.is_finished() && !pat.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let (a, b) = (dr.await.unwrap(), pat.await.unwrap());
    a.expect("provider peer");
    b.expect("patient peer");

    // Judge the frames the SFU sent up to 1.5 s before the end (the last ones have had no time
    // to be repaired).
    let cutoff = began + Duration::from_millis(28_500);
    let sent = proxy.video_first_seen.lock().unwrap().clone();
    let mut first_seen: Vec<(u16, std::time::Instant)> = Vec::new();
    let mut seen = HashSet::new();
    for (seq, at) in sent {
        if seen.insert(seq) {
            first_seen.push((seq, at));
        }
    }
    let arrivals: std::collections::HashMap<u16, (bool, std::time::Instant)> =
        pat_rx.video_arrivals.lock().unwrap().iter().fold(
            Default::default(),
            |mut m, (seq, key, at)| {
                m.entry(*seq).or_insert((*key, *at));
                m
            },
        );
    let (mut frames, mut decodable, mut late, mut missing) = (0usize, 0usize, 0usize, 0usize);
    let mut chain = false;
    let mut latencies = Vec::new();
    // From the first keyframe the patient received on: a receiver starts decoding there.
    let start = first_seen
        .iter()
        .position(|(seq, at)| *at >= began && arrivals.get(seq).is_some_and(|(key, _)| *key))
        .unwrap_or(first_seen.len());
    for (seq, at) in first_seen[start..].iter().filter(|(_, at)| *at < cutoff) {
        frames += 1;
        match arrivals.get(seq) {
            Some((key, arrived))
                if arrived.saturating_duration_since(*at) <= Duration::from_secs(1) =>
            {
                latencies.push(arrived.saturating_duration_since(*at));
                chain = *key || chain;
            }
            Some(_) => {
                late += 1;
                chain = false;
            }
            None => {
                missing += 1;
                chain = false;
            }
        }
        decodable += usize::from(chain);
    }
    latencies.sort();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let share = decodable as f64 / frames.max(1) as f64;
    eprintln!(
        "poor link (5% loss, 80 ms ± 20 ms, both ways): {frames} frames judged, {decodable} \
         decodable ({:.2}%), {late} repaired too late, {missing} never arrived; datagrams lost \
         towards the patient {}, towards the SFU {}; RTX packets {}; arrival after the proxy \
         p50 {:?} p99 {:?} max {:?}",
        share * 100.0,
        proxy.lost_down.load(Ordering::Relaxed),
        proxy.lost_up.load(Ordering::Relaxed),
        proxy.rtx.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    assert!(frames >= 1_200, "enough frames to judge: {frames}");
    assert!(
        proxy.lost_down.load(Ordering::Relaxed) >= 50,
        "the link lost packets"
    );
    assert!(
        share >= 0.99,
        "{:.2}% of the frames decodable",
        share * 100.0
    );
}

/// Misbehaving peers do not degrade a consult: while a provider and a patient talk, an unknown
/// address floods the SFU's port with junk, junk shaped like SRTP, SRTCP, STUN and DTLS arrives
/// from the patient's own address, and a third participant sends an offer and then never
/// answers or connects. Over that window the patient still receives at least 90% of the audio
/// the provider sends, and the SFU reports the flood as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_garbage_and_a_silent_peer_do_not_degrade_the_others() {
    let c = consult(&["provider", "patient", "caregiver"]).await;
    let (proxy_addr, proxy) = Proxy::start(0).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let received: Vec<Arc<Received>> = (0..3).map(|_| Arc::new(Received::default())).collect();
    let whos = [
        Who {
            host: true,
            ssrc_base: 0x1000,
            ..Default::default()
        },
        Who {
            proxy: Some((proxy_addr, proxy.clone())),
            ssrc_base: 0x2000,
            ..Default::default()
        },
    ];
    let mut tasks: Vec<_> = whos
        .into_iter()
        .enumerate()
        .map(|(i, who)| {
            tokio::spawn(participant(
                c.addr,
                c.tokens[i].clone(),
                who,
                received[i].clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let (dr_rx, pat_rx) = (received[0].clone(), received[1].clone());
    assert!(
        wait_for(20, &[&tasks[0], &tasks[1]], || enough(&dr_rx)
            && enough(&pat_rx))
        .await,
        "the call is up: {:?} {:?}",
        counts(&dr_rx),
        counts(&pat_rx)
    );

    // Now the misbehaviour starts.
    let sfu = proxy.target.lock().unwrap().expect("the SFU's address");
    let flooding = Arc::new(AtomicBool::new(true));
    let flood_sent = Arc::new(AtomicU64::new(0));
    let flooder = tokio::spawn({
        let (flooding, flood_sent) = (flooding.clone(), flood_sent.clone());
        async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let junk = [
                0x80u8, 0x60, 0x12, 0x34, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4,
            ];
            let mut ticker = tokio::time::interval(Duration::from_millis(1));
            // About 10,000 packets a second.
            while flooding.load(Ordering::Relaxed) {
                ticker.tick().await;
                for _ in 0..10 {
                    if sock.send_to(&junk, sfu).await.is_ok() {
                        flood_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    proxy.garbage.store(true, Ordering::Relaxed);
    let silent = tokio::spawn(participant(
        c.addr,
        c.tokens[2].clone(),
        Who {
            silent: true,
            ssrc_base: 0x3000,
            ..Default::default()
        },
        received[2].clone(),
        stop_rx.clone(),
    ));
    let sent0 = dr_rx.sent_audio.load(Ordering::Relaxed);
    let got0 = pat_rx.audio.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = dr_rx.sent_audio.load(Ordering::Relaxed) - sent0;
    let got = pat_rx.audio.load(Ordering::Relaxed) - got0;
    flooding.store(false, Ordering::Relaxed);
    proxy.garbage.store(false, Ordering::Relaxed);
    let _ = flooder.await;
    let _ = stop_tx.send(true);
    for t in tasks.drain(..) {
        t.await.unwrap().expect("provider and patient peers");
    }
    silent
        .await
        .unwrap()
        .expect("the silent peer's signaling stayed up");
    let metrics = c.app.scrape_metrics().await.text;
    let dropped: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sfu_worker_dropped_unknown_packets_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "during the flood ({} junk packets from an unknown address, {} from the patient's): \
         provider sent {sent} audio packets, patient received {got}; SFU dropped {dropped} unknown",
        flood_sent.load(Ordering::Relaxed),
        proxy.garbage_sent.load(Ordering::Relaxed),
    );
    assert!(sent >= 150, "the provider kept sending: {sent}");
    assert!(
        got * 10 >= sent * 9,
        "the patient received {got} of {sent} audio packets during the flood"
    );
    assert!(
        dropped >= flood_sent.load(Ordering::Relaxed) as f64 / 2.0,
        "the SFU counted the flood as dropped: {dropped}"
    );
}
