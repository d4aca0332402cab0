//! Join/leave churn: a few consults, each with a provider peer that stays and admits; patients,
//! two at a time per consult,
//! join (one-time link → token → signaling → ICE, DTLS → first remote media), then leave, over
//! and over. The server's resident memory (and its allocator's own count of the live heap) is
//! sampled every `every` cycles; what matters is that it stops growing after the warm-up, not
//! its level.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::api::{self, Practice, Staff};
use crate::metrics::{Metrics, ProcSampler};
use crate::peer::{self, PeerPlan};
use crate::scenario::Media;
use crate::server::DemoServer;

/// Patient visits per consult before it ends and the next one starts. Every visit here is a new
/// link, so a new participant, and the SFU adds two m-lines to the provider's session for each
/// distinct participant (it takes them back only when the same participant returns): one
/// consult cannot take thousands of distinct visitors, its SDP would outgrow the signaling limit.
const PER_CONSULT: u64 = 10;

#[derive(Serialize)]
pub struct ChurnResult {
    /// Cycles done, warm-up included.
    pub cycles: u64,
    /// Cycles before memory is judged: caches, the metrics' windows and the allocator settle.
    pub warmup_cycles: u64,
    pub failed: u64,
    pub seconds: f64,
    pub consults: u32,
    pub parallel: u32,
    /// (cycles done, server RSS MiB).
    pub rss_mib: Vec<(u64, f64)>,
    /// RSS at the last sample under load minus RSS at the first sample past warm-up.
    pub growth_after_warmup_mib: f64,
    /// RSS growth past warm-up as a least-squares line through the samples taken under load,
    /// in MiB per 10,000 cycles: less swayed by one sample than the difference above. (The last
    /// sample of each series is taken after every patient has left and is in neither.)
    pub rss_trend_mib_per_10k: f64,
    /// (cycles done, bytes the server's allocator counts as allocated, MiB), from its /metrics
    /// (`process_heap_allocated_bytes`): the live heap, without what the allocator keeps.
    pub heap_allocated_mib: Vec<(u64, f64)>,
    /// The same difference for the live heap.
    pub heap_growth_after_warmup_mib: f64,
    /// The same line for the live heap.
    pub heap_trend_mib_per_10k: f64,
    /// (cycles done, what the allocator holds resident, MiB): the live heap, its fragmentation
    /// and the freed pages it has not given back yet (`process_heap_resident_bytes`).
    pub allocator_resident_mib: Vec<(u64, f64)>,
}

/// The server's memory, sampled as the cycles go by.
#[derive(Default)]
struct Samples {
    rss: Vec<(u64, f64)>,
    heap: Vec<(u64, f64)>,
    resident: Vec<(u64, f64)>,
}

impl Samples {
    /// RSS from /proc; the heap figures from /metrics, if the server exports them.
    async fn take(&mut self, cycles: u64, proc: &ProcSampler, staff: &Staff, token: &str) {
        self.rss.push((cycles, proc.rss_mib()));
        if let Some((h, r)) = heap_mib(staff, token).await {
            self.heap.push((cycles, h));
            self.resident.push((cycles, r));
        }
    }
}

/// The server's live heap and its allocator's resident memory in MiB, from its /metrics;
/// `None` if it does not export them.
async fn heap_mib(staff: &Staff, token: &str) -> Option<(f64, f64)> {
    let text = staff
        .get("/metrics")
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|b| b / (1024.0 * 1024.0))
    };
    Some((
        value("process_heap_allocated_bytes")?,
        value("process_heap_resident_bytes")?,
    ))
}

pub async fn churn(
    server: &DemoServer,
    warmup: u64,
    measured: u64,
    consults: u32,
    every: u64,
) -> anyhow::Result<ChurnResult> {
    let metrics = Arc::new(Metrics::new(Instant::now()));
    let login = |u: &str| server.login(u).map(|l| l.password.clone());
    let provider = Staff::sign_in(
        &server.base,
        "dr.hartwell",
        &login("dr.hartwell")?,
        metrics.clone(),
    )
    .await?;
    let desk = Staff::sign_in(
        &server.base,
        "frontdesk",
        &login("frontdesk")?,
        metrics.clone(),
    )
    .await?;
    let practice = Practice::discover(&desk, &provider).await?;
    // Audio and the lowest layer only: the point is sessions coming and going, not bandwidth.
    let cycles = warmup + measured;
    let media = Arc::new(Media {
        video_layers: Media::default().video_layers.into_iter().take(1).collect(),
        ..Media::default()
    });
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let sampler = ProcSampler::new(server.pid);
    let mut samples = Samples::default();
    samples
        .take(0, &sampler, &desk, &server.metrics_token)
        .await;
    // Two patients at a time per consult: the room holds four, and a leave is processed after
    // the next join may already have arrived.
    let parallel = consults * 2;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for lane in 0..consults {
        let (provider, media, metrics) = (provider.clone(), media.clone(), metrics.clone());
        let (done, failed, next) = (done.clone(), failed.clone(), next.clone());
        let (base, location) = (server.base.clone(), practice.location.clone());
        workers.push(tokio::spawn(async move {
            // A consult sees `PER_CONSULT` patient visits, then ends and a new one starts.
            while next.load(Ordering::Relaxed) < cycles {
                let Some(t) = api::open_consult(&provider, &location).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let (stop_tx, stop_rx) = watch::channel(false);
                let host = tokio::spawn(peer::run(PeerPlan {
                    id: lane * 1000,
                    ws_url: peer::ws_url(&base),
                    token: t.provider,
                    host: true,
                    media: media.clone(),
                    epoch: metrics.epoch,
                    metrics: metrics.clone(),
                    stop: stop_rx.clone(),
                    join_timeout: Duration::from_secs(3600),
                    leave_after_media: false,
                }));
                let visits = Arc::new(AtomicU64::new(0));
                let mut patients = Vec::new();
                for seat in 0..2u32 {
                    let (provider, media, metrics, stop_rx) = (
                        provider.clone(),
                        media.clone(),
                        metrics.clone(),
                        stop_rx.clone(),
                    );
                    let (done, failed, next, visits) =
                        (done.clone(), failed.clone(), next.clone(), visits.clone());
                    let (base, consult) = (base.clone(), t.id.clone());
                    patients.push(tokio::spawn(async move {
                        while visits.fetch_add(1, Ordering::Relaxed) < PER_CONSULT
                            && next.fetch_add(1, Ordering::Relaxed) < cycles
                        {
                            let ok = match api::join_token(&provider, &consult, "patient").await {
                                Some(token) => peer::run(PeerPlan {
                                    id: lane * 1000 + seat + 1,
                                    ws_url: peer::ws_url(&base),
                                    token,
                                    host: false,
                                    media: media.clone(),
                                    epoch: metrics.epoch,
                                    metrics: metrics.clone(),
                                    stop: stop_rx.clone(),
                                    join_timeout: Duration::from_secs(20),
                                    leave_after_media: true,
                                })
                                .await
                                .inspect_err(|e| tracing::warn!(error = %e, "churn cycle failed"))
                                .is_ok(),
                                None => false,
                            };
                            if !ok {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                for p in patients {
                    let _ = p.await;
                }
                let _ = stop_tx.send(true);
                if let Ok(Err(e)) = host.await {
                    tracing::warn!(error = %e, "churn host failed");
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                api::end_consult(&provider, &t.id).await;
            }
        }));
    }
    let bar = indicatif::ProgressBar::new(cycles);
    let mut next_sample = every;
    loop {
        let d = done.load(Ordering::Relaxed);
        bar.set_position(d);
        if d >= next_sample {
            samples
                .take(d, &sampler, &desk, &server.metrics_token)
                .await;
            next_sample += every;
        }
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    // Past warm-up and under load: not the samples taken when the last cycles were done.
    let judged = |samples: &[(u64, f64)]| -> Vec<(u64, f64)> {
        samples
            .iter()
            .copied()
            .filter(|(c, _)| (warmup..cycles).contains(c))
            .collect()
    };
    let (rss_judged, heap_judged) = (judged(&samples.rss), judged(&samples.heap));
    samples
        .take(
            done.load(Ordering::Relaxed),
            &sampler,
            &desk,
            &server.metrics_token,
        )
        .await;
    let growth = |s: &[(u64, f64)]| match (s.first(), s.last()) {
        (Some(a), Some(b)) => b.1 - a.1,
        _ => 0.0,
    };
    Ok(ChurnResult {
        cycles: done.load(Ordering::Relaxed),
        warmup_cycles: warmup,
        failed: failed.load(Ordering::Relaxed),
        seconds,
        consults,
        parallel,
        growth_after_warmup_mib: growth(&rss_judged),
        rss_trend_mib_per_10k: trend(&rss_judged),
        heap_trend_mib_per_10k: trend(&heap_judged),
        rss_mib: samples.rss,
        heap_growth_after_warmup_mib: growth(&heap_judged),
        heap_allocated_mib: samples.heap,
        allocator_resident_mib: samples.resident,
    })
}

/// The slope of the least-squares line through the samples, in MiB per 10,000 cycles (0 with
/// fewer than three samples).
pub fn trend(samples: &[(u64, f64)]) -> f64 {
    let s: Vec<(f64, f64)> = samples.iter().map(|&(c, v)| (c as f64, v)).collect();
    if s.len() < 3 {
        return 0.0;
    }
    let n = s.len() as f64;
    let (mx, my) = (
        s.iter().map(|p| p.0).sum::<f64>() / n,
        s.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = s.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    let sxy: f64 = s.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    sxy / sxx * 10_000.0
}

#[cfg(test)]
mod tests {
    use super::trend;

    #[test]
    fn the_trend_is_the_slope_past_warm_up() {
        // Warm-up climbs 30 MiB, then 0.5 MiB per 1,000 cycles, with noise.
        let mut s = vec![(0, 10.0), (1000, 40.0)];
        for (i, c) in (2000..=10_000).step_by(1000).enumerate() {
            let noise = if i % 2 == 0 { 0.3 } else { -0.3 };
            s.push((c, 40.0 + 0.5 * (c - 2000) as f64 / 1000.0 + noise));
        }
        let t = trend(&s[2..]);
        assert!((t - 5.0).abs() < 0.2, "{t}");
        // The warm-up's climb would count if it were judged.
        assert!(trend(&s) > 10.0);
        let flat: Vec<_> = s[2..].iter().map(|&(c, _)| (c, 40.0)).collect();
        assert_eq!(trend(&flat), 0.0);
        assert_eq!(trend(&s[2..4]), 0.0);
    }
}
