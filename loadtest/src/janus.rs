//! The Janus VideoRoom target: the same synthetic media, through Janus (Debian package `janus`)
//! instead of our SFU. Janus is started with a loopback-only configuration written to a
//! temporary folder (HTTP transport on 127.0.0.1, ICE on `lo` only, only the VideoRoom plugin).
//! Each consult is a room; each participant is a Janus session with a publisher handle (one
//! str0m `Rtc` sending Opus-sized audio and VP8 simulcast, as to our SFU) and a subscriber handle
//! (a second `Rtc` receiving the other participant's feed), which is how VideoRoom works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::Ssrc;
use str0m::{Event, Input, Output};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::metrics::{Metrics, PeerTally};
use crate::peer;
use crate::scenario::Media;

pub struct JanusProcess {
    /// `http://127.0.0.1:PORT/janus`
    pub base: String,
    pub pid: u32,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// Janus (libnice) never gathers candidates on a loopback interface, so it gets a local address
/// of its own on one end of a veth pair. The kernel delivers traffic to a local address over
/// `lo` (`ip route get 10.253.0.1` says `local … dev lo`): nothing leaves the machine.
const IFACE: &str = "jv0";
const IFACE_ADDR: &str = "10.253.0.1/32";
/// The synthetic peers talk to Janus from the same local address (str0m pairs candidates of
/// like addresses only, so a 127.0.0.1 peer would not pair with Janus's 10.253.0.1).
const CLIENT_ADDR: &str = "10.253.0.1:0";

/// Creates the veth pair with Janus's address unless it exists (needs CAP_NET_ADMIN).
fn ensure_interface() -> anyhow::Result<()> {
    let exists = std::process::Command::new("ip")
        .args(["link", "show", IFACE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        return Ok(());
    }
    for args in [
        vec!["link", "add", IFACE, "type", "veth", "peer", "name", "jv1"],
        vec!["addr", "add", IFACE_ADDR, "dev", IFACE],
        vec!["link", "set", IFACE, "up"],
        vec!["link", "set", "jv1", "up"],
    ] {
        let ok = std::process::Command::new("ip")
            .args(&args)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "ip {} failed (Janus needs a non-loopback local address; run as root)",
                args.join(" ")
            );
        }
    }
    Ok(())
}

const PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/janus/plugins";
const TRANSPORTS: &str = "/usr/lib/x86_64-linux-gnu/janus/transports";

impl JanusProcess {
    pub async fn start(log: &std::path::Path) -> anyhow::Result<JanusProcess> {
        let bin = which("janus").context(
            "janus is not installed (Debian: apt-get install janus); the Janus comparison needs it",
        )?;
        ensure_interface()?;
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let other_plugins = [
            "audiobridge",
            "duktape",
            "echotest",
            "lua",
            "nosip",
            "recordplay",
            "sip",
            "streaming",
            "textroom",
            "videocall",
            "voicemail",
        ]
        .map(|p| format!("libjanus_{p}.so"))
        .join(",");
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("janus.jcfg"),
            format!(
                r#"general: {{
    configs_folder = "{d}"
    plugins_folder = "{PLUGINS}"
    transports_folder = "{TRANSPORTS}"
    events_folder = "/nonexistent"
    loggers_folder = "/nonexistent"
    debug_level = 4
    admin_secret = "unused-{port}"
    protected_folders = ["/"]
}}
media: {{
    rtp_port_range = "40000-60000"
}}
nat: {{
    ice_enforce_list = "{IFACE}"
    ignore_mdns = true
}}
plugins: {{
    disable = "{other_plugins}"
}}
transports: {{
    disable = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so,libjanus_websockets.so"
}}
events: {{
    broadcast = false
}}
"#
            ),
        )?;
        std::fs::write(
            dir.path().join("janus.transport.http.jcfg"),
            format!(
                "general: {{\n    json = \"compact\"\n    base_path = \"/janus\"\n    http = true\n    port = {port}\n    ip = \"127.0.0.1\"\n    https = false\n}}\nadmin: {{\n    admin_http = false\n}}\n"
            ),
        )?;
        std::fs::write(
            dir.path().join("janus.plugin.videoroom.jcfg"),
            "general: {\n}\n",
        )?;
        let log_file = std::fs::File::create(log)?;
        let child = tokio::process::Command::new(bin)
            .args(["-C", &dir.path().join("janus.jcfg").display().to_string()])
            .args(["-F", &dir.path().display().to_string()])
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let base = format!("http://127.0.0.1:{port}/janus");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http
                .get(format!("{base}/info"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "janus did not answer on {base} within 20 s (see {})",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let info: Value = http
            .get(format!("{base}/info"))
            .send()
            .await?
            .json()
            .await?;
        tracing::info!(version = %info["version_string"], "janus up");
        Ok(JanusProcess {
            base,
            pid,
            child,
            _dir: dir,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
}

/// A Janus session with its long-poll reader.
struct Session {
    http: reqwest::Client,
    url: String,
    events: mpsc::UnboundedReceiver<Value>,
    /// Events that arrived while waiting for another one.
    stash: Vec<Value>,
    poller: tokio::task::JoinHandle<()>,
}

fn tx_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}", N.fetch_add(1, Ordering::Relaxed))
}

impl Session {
    async fn create(base: &str) -> anyhow::Result<Session> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()?;
        let r: Value = http
            .post(base)
            .json(&json!({ "janus": "create", "transaction": tx_id() }))
            .send()
            .await?
            .json()
            .await?;
        let id = r["data"]["id"].as_u64().context("janus session id")?;
        let url = format!("{base}/{id}");
        let (tx, events) = mpsc::unbounded_channel();
        let (poll_http, poll_url) = (http.clone(), url.clone());
        let poller = tokio::spawn(async move {
            loop {
                let Ok(r) = poll_http.get(format!("{poll_url}?maxev=10")).send().await else {
                    break;
                };
                let Ok(v) = r.json::<Value>().await else {
                    break;
                };
                let list = match v {
                    Value::Array(a) => a,
                    other => vec![other],
                };
                for e in list {
                    if e["janus"] != "keepalive" && tx.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Session {
            http,
            url,
            events,
            stash: Vec::new(),
            poller,
        })
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = if path.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{path}", self.url)
        };
        let r: Value = self.http.post(url).json(&body).send().await?.json().await?;
        if r["janus"] == "error" {
            bail!("janus error: {}", r["error"]);
        }
        Ok(r)
    }

    async fn attach(&self) -> anyhow::Result<u64> {
        let r = self
            .post(
                "",
                json!({ "janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": tx_id() }),
            )
            .await?;
        r["data"]["id"].as_u64().context("janus handle id")
    }

    /// A plugin message; the synchronous reply's plugin data.
    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut m = json!({ "janus": "message", "transaction": tx_id(), "body": body });
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        let r = self.post(&handle.to_string(), m).await?;
        Ok(r)
    }

    /// The next event from `handle` that `want` accepts (others are kept for later).
    async fn wait(
        &mut self,
        handle: u64,
        within: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        if let Some(i) = self
            .stash
            .iter()
            .position(|e| e["sender"].as_u64() == Some(handle) && want(e))
        {
            return Ok(self.stash.remove(i));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .context("janus event timed out")?
                .context("janus session closed")?;
            if e["sender"].as_u64() == Some(handle) && want(&e) {
                return Ok(e);
            }
            self.stash.push(e);
            if self.stash.len() > 256 {
                self.stash.remove(0);
            }
        }
    }

    async fn destroy(self) {
        let _ = self
            .post("", json!({ "janus": "destroy", "transaction": tx_id() }))
            .await;
        self.poller.abort();
    }
}

/// Creates room `room` for a consult.
pub async fn create_room(base: &str, room: u64) -> anyhow::Result<()> {
    let s = Session::create(base).await?;
    let h = s.attach().await?;
    let r = s
        .message(
            h,
            json!({ "request": "create", "room": room, "publishers": 4, "audiocodec": "opus",
                    "videocodec": "vp8", "bitrate": 0, "fir_freq": 0, "notify_joining": false }),
            None,
        )
        .await?;
    let data = &r["plugindata"]["data"];
    if data["videoroom"] != "created" {
        bail!("room not created: {data}");
    }
    s.destroy().await;
    Ok(())
}

fn jsep_sdp(e: &Value) -> Option<String> {
    e["jsep"]["sdp"].as_str().map(String::from)
}

/// One participant: publishes as `feed`, subscribes to `other`.
#[allow(clippy::too_many_arguments)]
pub async fn participant(
    base: String,
    room: u64,
    feed: u64,
    other: u64,
    id: u32,
    media: Arc<Media>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let mut tally = PeerTally::default();
    let r = participant_inner(
        &base, room, feed, other, id, &media, &metrics, stop, &mut tally,
    )
    .await;
    if let Err(e) = r {
        tracing::warn!(error = %format!("{e:#}"), "janus participant failed");
        tally.error("janus_participant");
    }
    metrics.merge(&mut tally);
}

#[allow(clippy::too_many_arguments)]
async fn participant_inner(
    base: &str,
    room: u64,
    feed: u64,
    other: u64,
    id: u32,
    media: &Arc<Media>,
    metrics: &Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    tally: &mut PeerTally,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let epoch = metrics.epoch;
    let mut s = Session::create(base).await?;
    let pub_h = s.attach().await?;
    s.message(
        pub_h,
        json!({ "request": "join", "ptype": "publisher", "room": room, "id": feed }),
        None,
    )
    .await?;
    s.wait(pub_h, Duration::from_secs(10), |e| {
        e["plugindata"]["data"]["videoroom"] == "joined"
    })
    .await?;

    // Publisher: the same offer as to our SFU.
    let pub_sock = UdpSocket::bind(CLIENT_ADDR).await?;
    let pub_addr = pub_sock.local_addr()?;
    let mut pub_rtc = peer::new_rtc(pub_addr)?;
    let mut api = pub_rtc.sdp_api();
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    // Janus ranks simulcast layers by the order of the rids, highest first (its rid names mean
    // nothing to it), so they are offered h, m, l; its subscribers ask for substream 2, the top,
    // which is the `h` layer our SFU also forwards when the estimate allows.
    let mut sim = Simulcast::new();
    for l in media.video_layers.iter().rev() {
        sim.add_send_layer(SimulcastLayer::new(&l.rid));
    }
    let sim = (media.video_layers.len() > 1).then_some(sim);
    let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim);
    let (offer, pending) = api.apply().context("nothing to offer")?;
    s.message(
        pub_h,
        json!({ "request": "configure", "audio": true, "video": true }),
        Some(json!({ "type": "offer", "sdp": offer.to_sdp_string(), "trickle": false })),
    )
    .await?;
    let answer = s
        .wait(pub_h, Duration::from_secs(10), |e| {
            e["jsep"]["type"] == "answer"
        })
        .await?;
    tracing::debug!(sdp = %answer["jsep"]["sdp"], "janus answer");
    pub_rtc.sdp_api().accept_answer(
        pending,
        SdpAnswer::from_sdp_string(&jsep_sdp(&answer).context("answer sdp")?)?,
    )?;

    // Subscriber to the other participant's feed, once it is published.
    let sub_h = s.attach().await?;
    let sub_sock = UdpSocket::bind(CLIENT_ADDR).await?;
    let sub_addr = sub_sock.local_addr()?;
    let mut sub_rtc = peer::new_rtc(sub_addr)?;
    let mut subscribed = false;
    let mut sub_deadline = Instant::now();

    let mut senders = Vec::new();
    let mine = [(audio, MediaKind::Audio), (video, MediaKind::Video)];
    let mut rx: peer::Reception<Ssrc> = peer::Reception::new(started, epoch);
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let (mut pub_buf, mut sub_buf) = (vec![0u8; 2000], vec![0u8; 2000]);
    let mut pub_timeout;
    let mut sub_timeout;
    let result: anyhow::Result<()> = loop {
        if *stop.borrow() {
            break Ok(());
        }
        if !subscribed && Instant::now() >= sub_deadline {
            // Join as subscriber; Janus refuses until the feed exists.
            let r = s
                .message(
                    sub_h,
                    json!({ "request": "join", "ptype": "subscriber", "room": room,
                            "streams": [{ "feed": other, "substream": 2, "temporal": 2 }] }),
                    None,
                )
                .await;
            if r.is_ok() {
                match s
                    .wait(sub_h, Duration::from_secs(3), |e| {
                        e["jsep"]["type"] == "offer"
                            || e["plugindata"]["data"]["error_code"].is_u64()
                    })
                    .await
                {
                    Ok(e) if e["jsep"]["type"] == "offer" => {
                        let offer = SdpOffer::from_sdp_string(&jsep_sdp(&e).context("offer sdp")?)?;
                        let answer = sub_rtc.sdp_api().accept_offer(offer)?;
                        s.message(
                            sub_h,
                            json!({ "request": "start" }),
                            Some(json!({ "type": "answer", "sdp": answer.to_sdp_string() })),
                        )
                        .await?;
                        subscribed = true;
                    }
                    _ => {}
                }
            }
            if !subscribed {
                sub_deadline = Instant::now() + Duration::from_millis(300);
            }
        }
        if rx.first_media.is_none() && started.elapsed() > Duration::from_secs(30) {
            break Err(anyhow::anyhow!(
                "media_timeout: no media from Janus within 30 s"
            ));
        }
        // Drain both.
        loop {
            match pub_rtc.poll_output()? {
                Output::Transmit(t) => {
                    let _ = pub_sock.send_to(&t.contents, t.destination).await;
                }
                Output::Timeout(t) => {
                    pub_timeout = t;
                    break;
                }
                Output::Event(Event::Connected) => {
                    senders = peer::make_senders(&mut pub_rtc, media, &mine, Instant::now());
                }
                Output::Event(_) => {}
            }
        }
        loop {
            match sub_rtc.poll_output()? {
                Output::Transmit(t) => {
                    let _ = sub_sock.send_to(&t.contents, t.destination).await;
                }
                Output::Timeout(t) => {
                    sub_timeout = t;
                    break;
                }
                Output::Event(Event::RtpPacket(pkt)) => {
                    let video = peer::is_video(&pkt.payload);
                    rx.packet(tally, pkt.header.ssrc, *pkt.seq_no, video, &pkt.payload);
                }
                Output::Event(_) => {}
            }
        }
        let next_send = senders.iter().map(peer::next_due).min();
        let mut wake = pub_timeout.min(sub_timeout);
        if let Some(n) = next_send {
            wake = wake.min(n);
        }
        if !subscribed {
            wake = wake.min(sub_deadline);
        }
        let wake = tokio::time::Instant::from_std(wake.max(Instant::now()));
        tokio::select! {
            r = pub_sock.recv_from(&mut pub_buf) => {
                if let Ok((n, source)) = r && let Ok(contents) = pub_buf[..n].try_into() {
                    let _ = pub_rtc.handle_input(Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: pub_addr, contents }));
                }
            }
            r = sub_sock.recv_from(&mut sub_buf) => {
                if let Ok((n, source)) = r && let Ok(contents) = sub_buf[..n].try_into() {
                    let _ = sub_rtc.handle_input(Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: sub_addr, contents }));
                }
            }
            _ = flush.tick() => {
                rx.totals(tally);
                metrics.merge(tally);
            }
            _ = stop.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        pub_rtc.handle_input(Input::Timeout(now))?;
        sub_rtc.handle_input(Input::Timeout(now))?;
        if pub_rtc.is_connected() {
            peer::send_due(&mut pub_rtc, &mut senders, media, id, epoch, now, tally);
        }
    };
    rx.totals(tally);
    if rx.first_media.is_some() {
        metrics.peer_left();
    }
    s.destroy().await;
    result
}
