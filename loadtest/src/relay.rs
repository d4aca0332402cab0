//! The raw UDP relay ceiling: what this machine can forward at all, with the same packet sizes
//! and rates as the synthetic consult peers and none of the WebRTC work (no ICE, DTLS, SRTP,
//! RTCP, congestion control). The relay runs as its own process (`loadtest relay-server`) so
//! its CPU is measured from /proc like the SFU's: one thread per core, each with one UDP
//! socket, batched as the SFU's workers batch theirs ([`sfu::udp`]: `recvmmsg` for what is
//! waiting, then each datagram's copies sent with one `sendmmsg`). A peer says hello
//! with its consult number, and from then on each datagram it sends goes to the other peers of
//! that consult, as an SFU forwards: audio always, video only from the top simulcast layer (the
//! relay receives every layer, as the SFU does, and drops the others).
//!
//! Datagram: `R` · kind (0 audio, 1–3 video layer, 0x80 on the top layer) · sequence (u32, per sender and kind) ·
//! payload ending in the [`Stamp`](crate::peer::Stamp). Hello: `H` · consult (u32).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::metrics::{Metrics, PeerTally};
use crate::peer::{STAMP_LEN, Stamp};
use crate::scenario::Media;

/// Runs the relay: `workers` threads on consecutive ports from `port` (0: any); prints the
/// addresses, one per line, then serves until killed.
pub fn serve(workers: usize, port: u16) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for w in 0..workers.max(1) {
        let p = if port == 0 { 0 } else { port + w as u16 };
        let socket = UdpSocket::bind(("127.0.0.1", p))?;
        println!("{}", socket.local_addr()?);
        handles.push(std::thread::spawn(move || relay_loop(socket)));
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn relay_loop(socket: UdpSocket) {
    let mut batch = sfu::udp::RecvBatch::default();
    let mut out = sfu::udp::SendQueue::default();
    // Peer address → consult; consult → its peers.
    let mut consult_of: HashMap<SocketAddr, u32> = HashMap::new();
    let mut members: HashMap<u32, Vec<SocketAddr>> = HashMap::new();
    loop {
        match batch.recv(&socket) {
            Ok(0) => {
                let _ = sfu::udp::wait_readable(&socket, Duration::from_millis(100));
                continue;
            }
            Ok(_) => {}
            Err(_) => continue,
        }
        for (d, from) in batch.datagrams() {
            relay_one(d, from, &mut consult_of, &mut members, &mut out);
            out.flush(&socket);
        }
    }
}

/// One datagram: a hello, a bye, or media to copy to the consult's other peers (queued in
/// `out`).
fn relay_one(
    d: &[u8],
    from: SocketAddr,
    consult_of: &mut HashMap<SocketAddr, u32>,
    members: &mut HashMap<u32, Vec<SocketAddr>>,
    out: &mut sfu::udp::SendQueue,
) {
    let n = d.len();
    match d.first() {
        Some(b'H') if n >= 5 => {
            let consult = u32::from_be_bytes([d[1], d[2], d[3], d[4]]);
            if let Some(old) = consult_of.insert(from, consult)
                && let Some(m) = members.get_mut(&old)
            {
                m.retain(|a| *a != from);
            }
            let m = members.entry(consult).or_default();
            if !m.contains(&from) {
                m.push(from);
            }
            out.push(b"OK".to_vec(), from);
        }
        Some(b'B') => {
            // Bye.
            if let Some(c) = consult_of.remove(&from)
                && let Some(m) = members.get_mut(&c)
            {
                m.retain(|a| *a != from);
                if m.is_empty() {
                    members.remove(&c);
                }
            }
        }
        Some(b'R') if n >= 6 => {
            // Audio, and the top video layer (flag 0x80), as an SFU forwards to a
            // well-connected peer.
            if d[1] != 0 && d[1] & 0x80 == 0 {
                return;
            }
            let Some(c) = consult_of.get(&from) else {
                return;
            };
            if let Some(m) = members.get(c) {
                for to in m {
                    if *to != from {
                        out.push(d.to_vec(), *to);
                    }
                }
            }
        }
        _ => {}
    }
}

/// One relay peer of consult `consult`, sending the scenario's media until `stop`.
pub async fn peer(
    relay: SocketAddr,
    consult: u32,
    id: u32,
    media: Arc<Media>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tally = PeerTally::default();
    let started = Instant::now();
    let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        metrics.error("socket");
        return;
    };
    let mut hello = vec![b'H'];
    hello.extend_from_slice(&consult.to_be_bytes());
    // Hello until acknowledged.
    let mut buf = vec![0u8; 2048];
    let mut ok = false;
    for _ in 0..50 {
        let _ = socket.send_to(&hello, relay).await;
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
            && &buf[..n] == b"OK"
        {
            ok = true;
            break;
        }
    }
    if !ok {
        tally.error("relay_hello");
        metrics.merge(&mut tally);
        return;
    }
    let layers = media.video_layers.len();
    // Streams: (kind, interval, bytes per frame, keyframe every n frames).
    let mut streams: Vec<(u8, Duration, usize, u64, Instant, u64, u32)> = vec![(
        0,
        Duration::from_secs_f64(1.0 / media.audio_pps as f64),
        media.audio_bytes,
        0,
        Instant::now(),
        0,
        0,
    )];
    for (i, l) in media.video_layers.iter().enumerate() {
        let fps = l.fps.max(1) as f64;
        streams.push((
            (i + 1) as u8,
            Duration::from_secs_f64(1.0 / fps),
            (l.kbps as f64 * 125.0 / fps) as usize,
            ((media.keyframe_interval_s * fps).round() as u64).max(1),
            Instant::now(),
            0,
            0,
        ));
    }
    // Received: (sender stamp peer, kind) → (first seq, last seq, count).
    // Streams are told apart by their sender and kind.
    let mut rx: crate::peer::Reception<(u32, u8)> =
        crate::peer::Reception::new(started, metrics.epoch);
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let epoch = metrics.epoch;
    loop {
        if *stop.borrow() {
            break;
        }
        if rx.first_media.is_none() && started.elapsed() > Duration::from_secs(20) {
            tally.error("media_timeout");
            break;
        }
        let next = streams
            .iter()
            .map(|s| s.4)
            .min()
            .unwrap_or_else(Instant::now);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                let d = &buf[..n];
                if n < 6 + STAMP_LEN || d[0] != b'R' {
                    continue;
                }
                let kind = d[1] & 0x7f;
                let seq = u32::from_be_bytes([d[2], d[3], d[4], d[5]]) as u64;
                let sender = Stamp::read(d).map_or(0, |s| s.peer);
                rx.packet(&mut tally, (sender, kind), seq, kind != 0, d);
            }
            _ = flush.tick() => {
                rx.totals(&mut tally);
                metrics.merge(&mut tally);
            }
            _ = stop.changed() => {}
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
        }
        let now = Instant::now();
        for s in streams.iter_mut() {
            if now.duration_since(s.4) > s.1 * 4 {
                s.4 = now;
            }
            while s.4 <= now {
                let stamp = Stamp {
                    peer: id,
                    sent_ns: now.duration_since(epoch).as_nanos() as u64,
                };
                let key = s.0 != 0 && s.5.is_multiple_of(s.3);
                let size = if key {
                    s.2 * media.keyframe_factor as usize
                } else {
                    s.2
                };
                // The same packetization as the WebRTC peers: at most 1096 bytes per packet.
                let count = if s.0 == 0 {
                    1
                } else {
                    size.div_ceil(1096).max(1)
                };
                let per = if s.0 == 0 { size } else { size.div_ceil(count) };
                for _ in 0..count {
                    let mut p = vec![0u8; 6 + per.max(STAMP_LEN)];
                    p[0] = b'R';
                    p[1] = s.0 | if s.0 as usize == layers { 0x80 } else { 0 };
                    p[2..6].copy_from_slice(&s.6.to_be_bytes());
                    stamp.write(&mut p);
                    let _ = socket.send_to(&p, relay).await;
                    s.6 = s.6.wrapping_add(1);
                    tally.sent(s.0 != 0);
                }
                s.5 += 1;
                s.4 += s.1;
            }
        }
    }
    let _ = socket.send_to(b"B", relay).await;
    rx.totals(&mut tally);
    metrics.merge(&mut tally);
    if rx.first_media.is_some() {
        metrics.peer_left();
    }
}

/// The relay process: `loadtest relay-server`, started for a run and killed after it.
pub struct RelayProcess {
    pub addrs: Vec<SocketAddr>,
    pub pid: u32,
    child: tokio::process::Child,
}

impl RelayProcess {
    pub async fn start(workers: usize) -> anyhow::Result<RelayProcess> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["relay-server", "--workers", &workers.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("relay stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut addrs = Vec::new();
        while addrs.len() < workers.max(1) {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await??
                .ok_or_else(|| anyhow::anyhow!("the relay exited"))?;
            addrs.push(line.trim().parse()?);
        }
        Ok(RelayProcess { addrs, pid, child })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
