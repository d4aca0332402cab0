//! Join/leave churn: a few consults, each with a provider peer that stays and admits; patients,
//! two at a time per consult,
//! join (one-time link → token → signaling → ICE, DTLS → first remote media), then leave, over
//! and over. The server's resident memory is sampled every `every` cycles; what matters is
//! that it stops growing once the caches are warm, not its level.

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
    pub cycles: u64,
    pub failed: u64,
    pub seconds: f64,
    pub consults: u32,
    pub parallel: u32,
    /// (cycles done, server RSS MiB).
    pub rss_mib: Vec<(u64, f64)>,
    /// RSS at the end minus RSS after the first sample past warm-up (10% of the cycles).
    pub growth_after_warmup_mib: f64,
}

pub async fn churn(
    server: &DemoServer,
    cycles: u64,
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
    let media = Arc::new(Media {
        video_layers: Media::default().video_layers.into_iter().take(1).collect(),
        ..Media::default()
    });
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let sampler = ProcSampler::new(server.pid);
    let mut rss = vec![(0u64, sampler.rss_mib())];
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
            rss.push((d, sampler.rss_mib()));
            next_sample += every;
        }
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    rss.push((done.load(Ordering::Relaxed), sampler.rss_mib()));
    let warm = rss
        .iter()
        .find(|(c, _)| *c >= cycles / 10)
        .map_or(0.0, |r| r.1);
    let last = rss.last().map_or(0.0, |r| r.1);
    Ok(ChurnResult {
        cycles: done.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds,
        consults,
        parallel,
        growth_after_warmup_mib: last - warm,
        rss_mib: rss,
    })
}
