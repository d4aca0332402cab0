//! Media through the SFU: two independent WebRTC stacks (webrtc-rs peers, not str0m) join one
//! consult through the WebSocket signaling, negotiate with the SFU (including the SFU's own
//! offers for the other participant's tracks), and each receives the other's Opus audio and VP8
//! video RTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use clinic_api::authz::Role;
use clinic_api::sessions::Stage;
use clinic_api::testkit::TestApp;
use futures_util::{SinkExt, StreamExt};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder,
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
    /// `stats` entries a host received.
    stats: std::sync::Mutex<Vec<Value>>,
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
                    TrackRemoteEvent::OnRtpPacket(_) => {
                        received.video.fetch_add(1, Ordering::Relaxed);
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

/// One synthetic participant (with `tcp_only`, on a network that blocks UDP: it gathers TCP only,
/// ignores the SFU's UDP candidates and dials its passive ICE-TCP candidate): joins, negotiates, answers the SFU's offers, sends RTP until told to
/// stop, and counts what it receives.
async fn participant(
    addr: std::net::SocketAddr,
    token: String,
    host: bool,
    tcp_only: bool,
    ssrc_base: u32,
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
    me.register_default_codecs()?;
    let network = if tcp_only {
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
            .with_handler(Arc::new(Handler {
                gather: gather_tx,
                state: state_tx,
                received: received.clone(),
            }))
            .with_udp_addrs(if tcp_only {
                vec![]
            } else {
                vec!["127.0.0.1:0"]
            })
            .with_tcp_addrs(if tcp_only {
                vec!["127.0.0.1:0"]
            } else {
                vec![]
            })
            .build()
            .await?,
    );
    let opus = RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    };
    let vp8 = RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    };
    let (a_ssrc, v_ssrc) = (ssrc_base + 1, ssrc_base + 2);
    let audio = rtp_track(RtpCodecKind::Audio, "audio", a_ssrc, opus);
    let video = rtp_track(RtpCodecKind::Video, "video", v_ssrc, vp8);
    pc.add_track(audio.clone() as Arc<dyn TrackLocal>).await?;
    pc.add_track(video.clone() as Arc<dyn TrackLocal>).await?;

    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), gather_rx.recv()).await;
    let sdp = pc.local_description().await.expect("local description").sdp;
    send(&mut ws, json!({ "type": "offer", "sdp": sdp })).await;

    let mut seq: u16 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut connected = false;
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            msg = next_msg(&mut ws) => {
                let Some(m) = msg else { anyhow::bail!("signaling closed") };
                match m["type"].as_str() {
                    Some("answer") => {
                        let sdp = m["sdp"].as_str().unwrap().to_owned();
                        if tcp_only {
                            pc.set_remote_description(RTCSessionDescription::answer(without_udp(&sdp))?).await?;
                            for line in sdp.lines().filter(|l| l.starts_with("a=candidate") && l.contains(" tcp ")) {
                                let candidate = RTCIceCandidateInit {
                                    candidate: line.trim_start_matches("a=").to_owned(),
                                    sdp_mid: Some("0".into()),
                                    sdp_mline_index: Some(0),
                                    ..Default::default()
                                };
                                pc.add_ice_candidate(candidate).await?;
                            }
                        } else {
                            pc.set_remote_description(RTCSessionDescription::answer(sdp)?).await?;
                        }
                    }
                    Some("offer") => {
                        let sdp = m["sdp"].as_str().unwrap().to_owned();
                        let sdp = if tcp_only { without_udp(&sdp) } else { sdp };
                        pc.set_remote_description(RTCSessionDescription::offer(sdp)?).await?;
                        let answer = pc.create_answer(None).await?;
                        while gather_rx.try_recv().is_ok() {}
                        pc.set_local_description(answer).await?;
                        let _ = tokio::time::timeout(Duration::from_secs(2), gather_rx.recv()).await;
                        let sdp = pc.local_description().await.expect("local description").sdp;
                        send(&mut ws, json!({ "type": "answer", "sdp": sdp })).await;
                    }
                    Some("waiting_room") if host => {
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
                    Some(RTCPeerConnectionState::Failed) => anyhow::bail!("peer connection failed"),
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
                let _ = audio.write_rtp(rtp::Packet { header: header(111, a_ssrc, n * 960, false), payload: opus_frame }).await;
                // VP8: descriptor with S=1, then a key frame header every 25 packets (P bit 0).
                let key = n % 25 == 1;
                let payload = Bytes::from(vec![0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]);
                let _ = video.write_rtp(rtp::Packet { header: header(96, v_ssrc, n * 3000, true), payload }).await;
            }
        }
    }
    pc.close().await?;
    Ok(())
}

async fn exchange(patient_tcp_only: bool) {
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
    for role in ["provider", "patient"] {
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (dr_rx, pat_rx) = (Arc::new(Received::default()), Arc::new(Received::default()));
    let dr = tokio::spawn(participant(
        addr,
        tokens[0].clone(),
        true,
        false,
        0x1000,
        dr_rx.clone(),
        stop_rx.clone(),
    ));
    let pat = tokio::spawn(participant(
        addr,
        tokens[1].clone(),
        false,
        patient_tcp_only,
        0x2000,
        pat_rx.clone(),
        stop_rx,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let enough = |r: &Received| {
        r.audio.load(Ordering::Relaxed) >= 50 && r.video.load(Ordering::Relaxed) >= 50
    };
    let want = if patient_tcp_only { "tcp" } else { "udp" };
    let stats_in = |r: &Received| {
        r.stats
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["transport"] == want && e["packets_in"].as_u64() > Some(0))
    };
    while tokio::time::Instant::now() < deadline
        && !(enough(&dr_rx) && enough(&pat_rx) && stats_in(&dr_rx))
    {
        if dr.is_finished() || pat.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let (a, b) = (dr.await.unwrap(), pat.await.unwrap());
    let counts = |r: &Received| {
        (
            r.audio.load(Ordering::Relaxed),
            r.video.load(Ordering::Relaxed),
        )
    };
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
    // The provider's page gets per-participant stats, and /metrics exports them.
    let stats = dr_rx.stats.lock().unwrap().clone();
    assert!(
        stats
            .iter()
            .any(|e| e["packets_in"].as_u64() > Some(0) && e["bitrate_in_bps"].as_u64() > Some(0)),
        "{stats:?}"
    );
    let want = if patient_tcp_only { "tcp" } else { "udp" };
    assert!(
        stats.iter().any(|e| e["transport"] == want),
        "a participant on {want}: {stats:?}"
    );
    let metrics = app.call(Method::GET, "/metrics", None, None).await.text;
    assert!(
        metrics.contains("sfu_participant_bitrate_in_bps{consult="),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_peers_exchange_audio_and_video_through_the_sfu() {
    exchange(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_network_blocks_udp_connects_over_ice_tcp() {
    exchange(true).await;
}
