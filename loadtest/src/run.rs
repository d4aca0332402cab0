//! Runs a scenario against a demo server: the consult level follows the phases' ramps (each
//! consult created through the API, its provider and patient joined as synthetic peers), intake
//! and bookings at their rates, photo bursts at phase starts; once a second the server's CPU and
//! memory. At the end the per-second numbers are cut into phases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::api::{self, Practice, Staff};
use crate::janus::JanusProcess;
use crate::metrics::{Metrics, ProcSampler, loss, pcts};
use crate::peer::{self, PeerPlan};
use crate::relay::RelayProcess;
use crate::results::{Capacity, CapacityStep, PhaseResult, RunResult};
use crate::scenario::{Media, Scenario};
use crate::server::DemoServer;

/// What the synthetic consults run against.
pub enum Target<'a> {
    /// `clinic serve --demo`: our API, signaling and SFU.
    Clinic(&'a DemoServer),
    /// The raw UDP relay (media only).
    Relay(&'a RelayProcess),
    /// Janus VideoRoom (media only).
    Janus(&'a JanusProcess),
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Target::Clinic(_) => "clinic",
            Target::Relay(_) => "relay",
            Target::Janus(_) => "janus",
        }
    }
    fn pid(&self) -> u32 {
        match self {
            Target::Clinic(s) => s.pid,
            Target::Relay(r) => r.pid,
            Target::Janus(j) => j.pid,
        }
    }
}

/// The signed-in staff of a clinic run.
struct ClinicSide {
    provider: Staff,
    desk: Staff,
    ma: Staff,
    practice: Arc<Practice>,
    base: String,
}

/// Seconds after a level's ramp before the capacity search starts judging it (joins, first
/// keyframes and layer choices settle).
const SETTLE_S: f64 = 2.0;

/// Limits of the capacity search.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub latency_p99_ms: f64,
    pub loss: f64,
}

struct LiveConsult {
    /// The consult's id on a clinic target.
    id: Option<String>,
    stop: watch::Sender<bool>,
    peers: Vec<tokio::task::JoinHandle<()>>,
}

/// Phase boundaries in seconds since the start: (start, end of ramp, end).
fn bounds(s: &Scenario) -> Vec<(f64, f64, f64)> {
    let mut t = 0.0;
    s.phases
        .iter()
        .map(|p| {
            let b = (t, t + p.ramp_s, t + p.ramp_s + p.hold_s);
            t = b.2;
            b
        })
        .collect()
}

/// The consult level the scenario asks for at `t`.
fn level_at(s: &Scenario, t: f64) -> u32 {
    let mut prev = 0.0;
    for (p, (start, ramped, end)) in s.phases.iter().zip(bounds(s)) {
        if t < end {
            let target = p.consults as f64;
            if t >= ramped || p.ramp_s <= 0.0 {
                return p.consults;
            }
            let f = ((t - start) / p.ramp_s).clamp(0.0, 1.0);
            return (prev + (target - prev) * f).round() as u32;
        }
        prev = p.consults as f64;
    }
    0
}

#[allow(clippy::too_many_arguments)]
async fn start_consult(
    target: &Target<'_>,
    clinic: Option<&ClinicSide>,
    media: &Arc<Media>,
    metrics: &Arc<Metrics>,
    next_peer: &mut u32,
    number: u32,
    join_timeout: Duration,
) -> Option<LiveConsult> {
    let (stop, stop_rx) = watch::channel(false);
    let mut peers = Vec::new();
    let id = match (target, clinic) {
        (Target::Clinic(_), Some(c)) => {
            let tokens = api::open_consult(&c.provider, &c.practice.location).await?;
            for (token, host) in [(tokens.provider, true), (tokens.patient, false)] {
                *next_peer += 1;
                let plan = PeerPlan {
                    id: *next_peer,
                    ws_url: peer::ws_url(&c.base),
                    token,
                    host,
                    media: media.clone(),
                    epoch: metrics.epoch,
                    metrics: metrics.clone(),
                    stop: stop_rx.clone(),
                    join_timeout,
                    leave_after_media: false,
                };
                peers.push(tokio::spawn(async move {
                    if let Err(e) = peer::run(plan).await {
                        tracing::warn!(error = %e, "peer ended with an error");
                    }
                }));
            }
            Some(tokens.id)
        }
        (Target::Relay(r), _) => {
            let addr = r.addrs[number as usize % r.addrs.len()];
            for _ in 0..2 {
                *next_peer += 1;
                let fut = crate::relay::peer(
                    addr,
                    number,
                    *next_peer,
                    media.clone(),
                    metrics.clone(),
                    stop_rx.clone(),
                );
                peers.push(tokio::spawn(fut));
            }
            None
        }
        (Target::Janus(j), _) => {
            let room = number as u64;
            if let Err(e) = crate::janus::create_room(&j.base, room).await {
                tracing::warn!(error = %format!("{e:#}"), "janus room");
                return None;
            }
            for k in 0..2u64 {
                *next_peer += 1;
                let fut = crate::janus::participant(
                    j.base.clone(),
                    room,
                    room * 10 + 1 + k,
                    room * 10 + 2 - k,
                    *next_peer,
                    media.clone(),
                    metrics.clone(),
                    stop_rx.clone(),
                );
                peers.push(tokio::spawn(fut));
            }
            None
        }
        _ => return None,
    };
    metrics.consult_started();
    Some(LiveConsult { id, stop, peers })
}

async fn end_consult(clinic: Option<&ClinicSide>, c: LiveConsult, metrics: &Metrics) {
    let _ = c.stop.send(true);
    for p in c.peers {
        let _ = p.await;
    }
    if let (Some(side), Some(id)) = (clinic, &c.id) {
        api::end_consult(&side.provider, id).await;
    }
    metrics.consult_ended();
}

/// Runs `scenario`; with `limits`, as a capacity search that stops at the first phase past them.
pub async fn run(
    target: Target<'_>,
    scenario: &Scenario,
    limits: Option<Limits>,
) -> anyhow::Result<RunResult> {
    let started_at = chrono::Utc::now().to_rfc3339();
    let epoch = Instant::now();
    let metrics = Arc::new(Metrics::new(epoch));
    let clinic = match &target {
        Target::Clinic(server) => {
            let base = server.base.clone();
            let sign_in = |user: &'static str| {
                let (base, metrics) = (base.clone(), metrics.clone());
                let password = server.login(user).map(|l| l.password.clone());
                async move { Staff::sign_in(&base, user, &password?, metrics).await }
            };
            let provider = sign_in("dr.hartwell").await?;
            let desk = sign_in("frontdesk").await?;
            let ma = sign_in("ma.rivera").await?;
            let practice = Arc::new(
                Practice::discover(&desk, &provider)
                    .await
                    .context("the demo practice")?,
            );
            Some(ClinicSide {
                provider,
                desk,
                ma,
                practice,
                base,
            })
        }
        Target::Relay(_) | Target::Janus(_) => None,
    };
    let media = Arc::new(scenario.media.clone());
    let join_timeout = Duration::from_secs_f64(scenario.join_timeout_s);
    let photo = bytes::Bytes::from(imaging::testimages::phone_photo_like(
        scenario.api.photo_width,
        scenario.api.photo_height,
    ));

    let total = scenario.duration_s();
    let bar = ProgressBar::new(total.ceil() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} s  {prefix}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );

    let mut sampler = ProcSampler::new(target.pid());
    sampler.cpu_pct();
    let mut live: Vec<LiveConsult> = Vec::new();
    let mut next_peer = 0u32;
    let mut consult_number = 0u32;
    let phase_bounds = bounds(scenario);
    let mut phase_idx = usize::MAX;
    let mut api_tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let (phase_stop_tx, _) = watch::channel(0usize);
    let mut capacity_steps = Vec::new();
    let mut stopped_because = String::from("reached the scenario's last level");
    let mut last_gauge = Instant::now() - Duration::from_secs(2);
    let mut end_s = total;
    // A capacity search judges each level once it has ended, from its settled part.
    let judge = |i: usize, lim: Limits| {
        let (_, ramped, end) = phase_bounds[i];
        capacity_step(
            &metrics,
            scenario.phases[i].consults,
            ramped + SETTLE_S,
            end,
            lim,
        )
    };
    loop {
        let t = epoch.elapsed().as_secs_f64();
        if t >= total {
            break;
        }
        // Phase changes: start its API workers and its upload burst.
        let idx = phase_bounds
            .iter()
            .position(|b| t < b.2)
            .unwrap_or(phase_bounds.len() - 1);
        if idx != phase_idx {
            if let Some(lim) = limits
                && phase_idx != usize::MAX
            {
                let step = judge(phase_idx, lim);
                let ok = step.ok;
                if !ok {
                    stopped_because = past_limits(&step, lim);
                }
                capacity_steps.push(step);
                if !ok {
                    end_s = t;
                    break;
                }
            }
            phase_idx = idx;
            let _ = phase_stop_tx.send(idx);
            let phase = &scenario.phases[idx];
            bar.set_prefix(format!("{} ({} consults)", phase.name, phase.consults));
            let api_work = match &clinic {
                Some(c) => vec![
                    (phase.intake_per_min, 0u8, c),
                    (phase.bookings_per_min, 1u8, c),
                ],
                None => Vec::new(),
            };
            for (rate, kind, c) in api_work {
                if rate <= 0.0 {
                    continue;
                }
                let (desk, practice) = (c.desk.clone(), c.practice.clone());
                let mut rx = phase_stop_tx.subscribe();
                let every = Duration::from_secs_f64(60.0 / rate);
                api_tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut n = idx as u64 * 100_000;
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = rx.changed() => break,
                        }
                        n += 1;
                        match kind {
                            0 => {
                                api::intake(&desk, &practice.location, n).await;
                            }
                            _ => {
                                let patient =
                                    &practice.patients[n as usize % practice.patients.len()];
                                api::book(&desk, &practice, patient, n).await;
                            }
                        }
                    }
                }));
            }
            for i in 0..clinic.as_ref().map_or(0, |_| phase.uploads) {
                let Some(c) = &clinic else { break };
                let (ma, practice, photo) = (c.ma.clone(), c.practice.clone(), photo.clone());
                api_tasks.push(tokio::spawn(async move {
                    let patient = &practice.patients[i as usize % practice.patients.len()];
                    api::upload(&ma, patient, photo).await;
                }));
            }
        }
        // Follow the consult level, one change per pass so ramps stay smooth.
        let want = level_at(scenario, t) as usize;
        if live.len() < want {
            consult_number += 1;
            match start_consult(
                &target,
                clinic.as_ref(),
                &media,
                &metrics,
                &mut next_peer,
                consult_number,
                join_timeout,
            )
            .await
            {
                Some(c) => live.push(c),
                None => {
                    // Counted; and no retry storm against a server that refuses.
                    metrics.error("consult_setup");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        } else if live.len() > want
            && let Some(c) = live.pop()
        {
            end_consult(clinic.as_ref(), c, &metrics).await;
        }
        if last_gauge.elapsed() >= Duration::from_secs(1) {
            last_gauge = Instant::now();
            metrics.gauge(sampler.cpu_pct(), sampler.rss_mib());
            // The last complete second.
            let prev = metrics.last_complete_second().unwrap_or_default();
            bar.set_position(t as u64);
            bar.set_message(format!(
                "consults {} · {:.0} pkt/s · p99 {:.1} ms · loss {:.2}% · server {:.0}% CPU {:.0} MiB · errors {}",
                metrics.consults_live(),
                prev.media_pps,
                prev.latency_p99_ms,
                prev.loss * 100.0,
                prev.server_cpu_pct,
                prev.server_rss_mib,
                metrics.error_total()
            ));
        }
        if live.len() == want {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The last level of a capacity search.
    if let Some(lim) = limits
        && capacity_steps.len() < scenario.phases.len()
        && end_s >= total
        && phase_idx != usize::MAX
    {
        let step = judge(phase_idx, lim);
        if !step.ok {
            stopped_because = past_limits(&step, lim);
        }
        capacity_steps.push(step);
    }
    let _ = phase_stop_tx.send(usize::MAX);
    for t in api_tasks {
        let _ = t.await;
    }
    for c in live.drain(..) {
        end_consult(clinic.as_ref(), c, &metrics).await;
    }
    bar.finish_and_clear();

    let duration_s = epoch.elapsed().as_secs_f64();
    let phases = phase_bounds
        .iter()
        .zip(&scenario.phases)
        // A level the capacity search stopped at as it began has no numbers of its own.
        .filter(|((start, _, _), _)| *start + 1.0 < end_s)
        .map(|(&(start, _, end), p)| {
            phase_result(&metrics, &p.name, p.consults, start, end.min(end_s))
        })
        .collect();
    let inner = metrics.inner.lock().unwrap_or_else(|e| e.into_inner());
    let errors = inner.errors.clone();
    drop(inner);
    let capacity = limits.map(|lim| {
        let highest = capacity_steps
            .iter()
            .take_while(|s| s.ok)
            .map(|s| s.consults)
            .max()
            .unwrap_or(0);
        Capacity {
            latency_limit_ms: lim.latency_p99_ms,
            loss_limit: lim.loss,
            steps: capacity_steps,
            highest_sustained: highest,
            stopped_because,
        }
    });
    let mut notes = std::collections::BTreeMap::new();
    notes.insert("scenario".into(), scenario.description.clone());
    notes.insert(
        "server".into(),
        match &target {
            Target::Clinic(s) => format!("clinic serve --demo at {} (pid {})", s.base, s.pid),
            Target::Relay(r) => format!(
                "raw UDP relay, {} worker threads (pid {}): no ICE, DTLS, SRTP or RTCP",
                r.addrs.len(),
                r.pid
            ),
            Target::Janus(j) => format!(
                "Janus VideoRoom (Debian janus 1.1.2), loopback-only configuration, at {} (pid {})",
                j.base, j.pid
            ),
        },
    );
    notes.insert(
        "machine".into(),
        format!(
            "{} cores; loadtest and server share them",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    );
    notes.insert(
        "media per publisher".into(),
        format!(
            "audio {} pkt/s; video {}; keyframe every {} s; about {:.0} packets/s",
            media.audio_pps,
            media
                .video_layers
                .iter()
                .map(|l| format!("{} {} fps {} kbit/s", l.rid, l.fps, l.kbps))
                .collect::<Vec<_>>()
                .join(", "),
            media.keyframe_interval_s,
            media.packets_per_s()
        ),
    );
    notes.insert(
        "latency".into(),
        "one-way, send stamp to receipt, through the SFU; includes both synthetic peers' SRTP work"
            .into(),
    );
    notes.insert(
        "intake".into(),
        "intake forms do not exist yet: a front-desk patient registration (POST /api/v1/patients, then GET) stands in"
            .into(),
    );
    Ok(RunResult {
        scenario: scenario.name.clone(),
        target: target.name().into(),
        started_at,
        duration_s,
        phases,
        timeline: metrics.timeline(),
        errors,
        capacity,
        notes,
    })
}

/// Seconds of the run as (first, last+1) indexes.
fn range(from_s: f64, to_s: f64) -> std::ops::Range<usize> {
    (from_s.max(0.0) as usize)..(to_s.max(0.0) as usize)
}

fn past_limits(step: &CapacityStep, lim: Limits) -> String {
    format!(
        "{} consults went past p99 {} ms or loss {:.1}%",
        step.consults,
        lim.latency_p99_ms,
        lim.loss * 100.0
    )
}

fn capacity_step(m: &Metrics, consults: u32, from_s: f64, to_s: f64, lim: Limits) -> CapacityStep {
    let p = phase_result(m, "", consults, from_s, to_s);
    let lossf = p.audio_loss.max(p.video_loss);
    CapacityStep {
        consults,
        forwarded_pps: p.forwarded_pps,
        latency_p99_ms: p.media_latency_ms.p99,
        loss: lossf,
        server_cpu_pct: p.server_cpu_pct,
        ok: p.errors == 0
            && p.media_latency_ms.count > 0
            && p.media_latency_ms.p99 <= lim.latency_p99_ms
            && lossf <= lim.loss,
    }
}

fn phase_result(m: &Metrics, name: &str, consults: u32, start: f64, end: f64) -> PhaseResult {
    let inner = m.inner.lock().unwrap_or_else(|e| e.into_inner());
    let r = range(start, end);
    let secs: Vec<_> = inner
        .seconds
        .iter()
        .enumerate()
        .filter(|(i, _)| r.contains(i))
        .map(|(_, s)| s)
        .collect();
    let mut lat = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .expect("valid histogram bounds");
    let (mut rx, mut seq, mut errors) = (0u64, [(0u64, 0u64); 2], 0u64);
    let (mut cpu, mut rss) = (0.0, 0.0);
    for s in &secs {
        let _ = lat.add(&s.latency);
        rx += s.rx_packets;
        for (acc, d) in seq.iter_mut().zip(s.seq) {
            acc.0 += d.0;
            acc.1 += d.1;
        }
        errors += s.errors;
        cpu += s.server_cpu_pct;
        rss += s.server_rss_mib;
    }
    let n = secs.len().max(1) as f64;
    let mut join = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .expect("valid histogram bounds");
    for (t, ms) in &inner.joins {
        if *t >= start && *t < end {
            let _ = join.record(((ms * 1000.0) as u64).clamp(1, 60_000_000));
        }
    }
    let mut api: std::collections::BTreeMap<&str, hdrhistogram::Histogram<u64>> =
        Default::default();
    for c in inner.api.iter().filter(|c| c.t_s >= start && c.t_s < end) {
        let _ = api
            .entry(c.endpoint)
            .or_insert_with(|| {
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("valid histogram bounds")
            })
            .record(c.us.clamp(1, 60_000_000));
    }
    let mut up = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .expect("valid histogram bounds");
    for (t, us) in &inner.uploads {
        if *t >= start && *t < end {
            let _ = up.record((*us).clamp(1, 60_000_000));
        }
    }
    PhaseResult {
        name: name.to_string(),
        consults,
        start_s: start,
        end_s: end,
        join_ms: pcts(&join),
        media_latency_ms: pcts(&lat),
        audio_loss: loss(seq[0].0, seq[0].1),
        video_loss: loss(seq[1].0, seq[1].1),
        forwarded_pps: rx as f64 / n,
        api_ms: api.iter().map(|(k, h)| (k.to_string(), pcts(h))).collect(),
        upload_ms: pcts(&up),
        server_cpu_pct: cpu / n,
        server_rss_mib: rss / n,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_follows_the_ramps() {
        let s = Scenario::load("clinic-morning").unwrap();
        // doors open: 0 → 4 over 10 s, held 20 s; rush: 4 → 12 over 15 s.
        assert_eq!(level_at(&s, 0.0), 0);
        assert_eq!(level_at(&s, 5.0), 2);
        assert_eq!(level_at(&s, 12.0), 4);
        assert_eq!(level_at(&s, 30.0 + 7.5), 8);
        assert_eq!(level_at(&s, 50.0), 12);
        // late morning: 12 → 8 over 5 s from 75 s.
        assert_eq!(level_at(&s, 77.5), 10);
        assert_eq!(level_at(&s, 80.0), 8);
        assert_eq!(level_at(&s, 10_000.0), 0);
    }
}
