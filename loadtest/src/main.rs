//! `loadtest`: bounded load against a clinic server on this machine.
//!
//! - `loadtest run SCENARIO`: a scenario (built-in `clinic-morning` or `clinic-morning-ci`, or a
//!   TOML file) against a `clinic serve --demo` it starts itself: consults of synthetic str0m
//!   peers (Opus-sized audio at 50 packets/s, VP8 simulcast), intake, bookings and photo bursts.
//!   Writes `result.json` and `report.html` to `--out`.
//! - `loadtest capacity`: consults ramped step by step (media only) until SFU p99 latency or
//!   loss passes its limit; reports the highest level sustained.
//! - `loadtest probe`: health and readiness latency of a running server.
//!
//! Targets are loopback only: this tool never sends load anywhere else.

mod api;
mod apibench;
mod churn;
mod janus;
mod metrics;
mod peer;
mod relay;
mod report;
mod results;
mod run;
mod scenario;
mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Bounded load against a clinic server on this machine"
)]
enum Cli {
    /// Run a scenario against a fresh `clinic serve --demo`.
    Run(RunArgs),
    /// Ramp consults until p99 latency or loss passes its limit.
    Capacity(CapacityArgs),
    /// Patients joining and leaving consults, over and over; the server's memory on the way.
    Churn(ChurnArgs),
    /// Health and readiness latency of a running server.
    Probe(ProbeArgs),
    /// The clinic API alone under a busy morning's mix, ramped until p99 passes its limit, on
    /// SQLite and PostgreSQL, beside a bare axum + sqlx ceiling; then a sign-in flood beside it.
    Api(apibench::ApiArgs),
    /// The API benchmark's bare ceiling server (started by `api`; prints its address).
    #[command(hide = true)]
    CeilingServer {
        #[arg(long)]
        db: String,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// The raw UDP relay (started by `capacity --target relay`; prints its addresses).
    #[command(hide = true)]
    RelayServer {
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

#[derive(clap::Args)]
struct Common {
    /// The `clinic` binary (default: beside this one, or $CLINIC_BIN).
    #[arg(long)]
    clinic_bin: Option<PathBuf>,
    /// Where result.json, report.html and server.log go (default target/loadtest/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit non-zero if anything failed or any peer got no media.
    #[arg(long)]
    assert_clean: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// A built-in scenario (clinic-morning, clinic-morning-ci) or a TOML file.
    #[arg(default_value = "clinic-morning")]
    scenario: String,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct CapacityArgs {
    /// Consults at the first level.
    #[arg(long, default_value_t = 4)]
    from: u32,
    /// Consults added per level.
    #[arg(long, default_value_t = 4)]
    step: u32,
    /// Highest level tried.
    #[arg(long, default_value_t = 200)]
    max: u32,
    /// Seconds each level is held (after a 2 s ramp).
    #[arg(long, default_value_t = 10.0)]
    step_s: f64,
    /// p99 one-way latency limit, ms.
    #[arg(long, default_value_t = 10.0)]
    latency_ms: f64,
    /// Loss limit, percent.
    #[arg(long, default_value_t = 1.0)]
    loss_pct: f64,
    /// What to measure: `clinic` (our SFU), `janus` (Janus VideoRoom), `relay` (the raw UDP
    /// ceiling), or `all` (the three in one run, one after the other, in one report).
    #[arg(long, default_value = "clinic")]
    target: String,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct ChurnArgs {
    /// Join/leave cycles judged (at most 100,000), after the warm-up.
    #[arg(long, default_value_t = 10_000)]
    cycles: u64,
    /// Cycles first, not judged: the caches, the metrics' 30 s windows and the allocator settle
    /// in the first minute (at most 100,000).
    #[arg(long, default_value_t = 5_000)]
    warmup: u64,
    /// Consults the patients churn through (two patients at a time each).
    #[arg(long, default_value_t = 6)]
    consults: u32,
    /// Sample the server's memory every this many cycles.
    #[arg(long, default_value_t = 500)]
    every: u64,
    /// Exit non-zero if the server's RSS grows by more than this many MiB per 10,000 cycles
    /// after the warm-up (the least-squares trend, `rss_trend_mib_per_10k`).
    #[arg(long)]
    max_rss_trend_mib: Option<f64>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// Base URL of the server (loopback only), e.g. http://127.0.0.1:8080
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Total requests (at most 1,000,000).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests in flight at once (at most 512).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Stop after this many seconds even if requests remain.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Write the JSON result here as well as printing it.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Refuses anything but a loopback host.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// targets are supported")?;
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default().to_string(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h).to_string(),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("target host {host} is not a loopback address; loadtest only targets this machine");
    }
    Ok(())
}

/// The value at quantile `q` (0..=1) of sorted samples, nearest-rank.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    check_loopback(&args.target)?;
    let requests = args.requests.min(1_000_000);
    let concurrency = args.concurrency.clamp(1, 512);
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, target) = (client.clone(), next.clone(), args.target.clone());
        workers.push(tokio::spawn(async move {
            let mut samples: Vec<(&'static str, Duration, bool)> = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests || Instant::now() > deadline {
                    break;
                }
                let path = if i % 2 == 0 { "/healthz" } else { "/readyz" };
                let t = Instant::now();
                let ok = client
                    .get(format!("{target}{path}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                samples.push((path, t.elapsed(), ok));
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await?);
    }
    let elapsed = started.elapsed();
    let mut report = serde_json::Map::new();
    for path in ["/healthz", "/readyz"] {
        let mut lat: Vec<Duration> = all.iter().filter(|s| s.0 == path).map(|s| s.1).collect();
        lat.sort();
        let errors = all.iter().filter(|s| s.0 == path && !s.2).count();
        report.insert(
            path.into(),
            serde_json::json!({
                "requests": lat.len(),
                "errors": errors,
                "p50_ms": percentile(&lat, 0.50).as_secs_f64() * 1e3,
                "p95_ms": percentile(&lat, 0.95).as_secs_f64() * 1e3,
                "p99_ms": percentile(&lat, 0.99).as_secs_f64() * 1e3,
            }),
        );
    }
    report.insert(
        "requests_per_second".into(),
        serde_json::json!(all.len() as f64 / elapsed.as_secs_f64()),
    );
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(out) = args.out {
        std::fs::write(out, &text)?;
    }
    let errors = all.iter().filter(|s| !s.2).count();
    if errors > 0 {
        bail!("{errors} of {} requests failed", all.len());
    }
    Ok(())
}

async fn scenario_run(
    scenario: scenario::Scenario,
    common: Common,
    limits: Option<run::Limits>,
    targets: &[&str],
) -> anyhow::Result<()> {
    let out = common
        .out
        .unwrap_or_else(|| PathBuf::from("target/loadtest").join(&scenario.name));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut results = Vec::new();
    for &t in targets {
        let result = match t {
            "clinic" => {
                let bin = server::find_binary(common.clinic_bin.as_deref())?;
                eprintln!(
                    "loadtest: {} ({:.0} s) against {} serve --demo; output in {}",
                    scenario.name,
                    scenario.duration_s(),
                    bin.display(),
                    out.display()
                );
                let server = server::DemoServer::start(&bin, &out.join("server.log")).await?;
                let r = run::run(run::Target::Clinic(&server), &scenario, limits).await;
                server.stop().await;
                r?
            }
            "relay" => {
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
                eprintln!("loadtest: {} against the raw UDP relay", scenario.name);
                let relay = relay::RelayProcess::start(workers).await?;
                let r = run::run(run::Target::Relay(&relay), &scenario, limits).await;
                relay.stop().await;
                r?
            }
            "janus" => {
                eprintln!("loadtest: {} against Janus VideoRoom", scenario.name);
                let janus = janus::JanusProcess::start(&out.join("janus.log")).await?;
                let r = run::run(run::Target::Janus(&janus), &scenario, limits).await;
                janus.stop().await;
                r?
            }
            other => bail!("unknown target {other} (clinic, relay, janus)"),
        };
        print_summary(&result);
        results.push(result);
    }
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(out.join("report.html"), report::html(&results))?;
    eprintln!("wrote {0}/result.json and {0}/report.html", out.display());
    if let (true, Some(result)) = (common.assert_clean, results.first()) {
        let joined: u64 = result.phases.iter().map(|p| p.join_ms.count).sum();
        let media: u64 = result.phases.iter().map(|p| p.media_latency_ms.count).sum();
        let uploads: u64 = result.phases.iter().map(|p| p.upload_ms.count).sum();
        let wanted_uploads: u64 = scenario.phases.iter().map(|p| p.uploads as u64).sum();
        let peers = 2 * scenario
            .phases
            .iter()
            .map(|p| p.consults as u64)
            .max()
            .unwrap_or(0);
        if let Some(r) = results.iter().find(|r| !r.errors.is_empty()) {
            bail!("{}: errors: {:?}", r.target, r.errors);
        }
        if joined < peers || media == 0 {
            bail!("{joined} peers got media ({peers} expected at least), {media} packets timed");
        }
        if limits.is_none() && uploads != wanted_uploads {
            bail!("{uploads} uploads stored, {wanted_uploads} sent");
        }
    }
    Ok(())
}

fn print_summary(r: &results::RunResult) {
    println!("== {} on {}", r.scenario, r.target);
    println!(
        "{:<16} {:>8} {:>22} {:>24} {:>9} {:>10} {:>8} {:>8} {:>7}",
        "phase",
        "consults",
        "join p50/p99 ms",
        "latency p50/p95/p99 ms",
        "loss %",
        "fwd pkt/s",
        "cpu %",
        "rss MiB",
        "errors"
    );
    for p in &r.phases {
        println!(
            "{:<16} {:>8} {:>22} {:>24} {:>9} {:>10.0} {:>8.0} {:>8.0} {:>7}",
            p.name,
            p.consults,
            format!("{:.0} / {:.0}", p.join_ms.p50, p.join_ms.p99),
            format!(
                "{:.2} / {:.2} / {:.2}",
                p.media_latency_ms.p50, p.media_latency_ms.p95, p.media_latency_ms.p99
            ),
            format!("{:.3}", p.audio_loss.max(p.video_loss) * 100.0),
            p.forwarded_pps,
            p.server_cpu_pct,
            p.server_rss_mib,
            p.errors
        );
        for (e, v) in &p.api_ms {
            println!(
                "    {e:<40} n={:<5} p50 {:>7.1} ms  p95 {:>7.1} ms  p99 {:>7.1} ms",
                v.count, v.p50, v.p95, v.p99
            );
        }
        if p.upload_ms.count > 0 {
            println!(
                "    {:<40} n={:<5} p50 {:>7.1} ms  p95 {:>7.1} ms  p99 {:>7.1} ms",
                "upload-to-stored",
                p.upload_ms.count,
                p.upload_ms.p50,
                p.upload_ms.p95,
                p.upload_ms.p99
            );
        }
    }
    if let Some(c) = &r.capacity {
        println!(
            "capacity: highest level sustained {} consults ({})",
            c.highest_sustained, c.stopped_because
        );
    }
    if r.errors.is_empty() {
        println!("errors: none");
    } else {
        println!("errors: {:?}", r.errors);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse() {
        Cli::Probe(a) => probe(a).await,
        Cli::Api(a) => apibench::run(a).await,
        Cli::CeilingServer { db, port } => apibench::ceiling::serve(&db, port).await,
        Cli::Run(a) => {
            scenario_run(
                scenario::Scenario::load(&a.scenario)?,
                a.common,
                None,
                &["clinic"],
            )
            .await
        }
        Cli::RelayServer { workers, port } => relay::serve(workers, port),
        Cli::Churn(a) => {
            let out = a
                .common
                .out
                .unwrap_or_else(|| PathBuf::from("target/loadtest/churn"));
            std::fs::create_dir_all(&out)?;
            let bin = server::find_binary(a.common.clinic_bin.as_deref())?;
            let server = server::DemoServer::start(&bin, &out.join("server.log")).await?;
            let r = churn::churn(
                &server,
                a.warmup.min(100_000),
                a.cycles.min(100_000),
                a.consults.clamp(1, 50),
                a.every.max(1),
            )
            .await;
            server.stop().await;
            let r = r?;
            let text = serde_json::to_string_pretty(&r)?;
            std::fs::write(out.join("churn.json"), &text)?;
            println!("{text}");
            if a.common.assert_clean && r.failed > 0 {
                bail!("{} of {} cycles failed", r.failed, r.cycles);
            }
            if let Some(max) = a.max_rss_trend_mib
                && r.rss_trend_mib_per_10k > max
            {
                bail!(
                    "server RSS grew {:.2} MiB per 10,000 cycles past warm-up (at most {max})",
                    r.rss_trend_mib_per_10k
                );
            }
            Ok(())
        }
        Cli::Capacity(a) => {
            let s = scenario::Scenario::capacity(a.from, a.step, a.max, a.step_s);
            let limits = run::Limits {
                latency_p99_ms: a.latency_ms,
                loss: a.loss_pct / 100.0,
            };
            let targets: Vec<&str> = match a.target.as_str() {
                "all" => vec!["relay", "clinic", "janus"],
                t => vec![t],
            };
            scenario_run(s, a.common, Some(limits), &targets).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1/x",
            "http://[::1]:80",
            "http://127.3.2.1",
        ] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://192.168.1.2",
            "http://example.com",
            "https://127.0.0.1",
            "ftp://127.0.0.1",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
