//! `loadtest`: load against a running `clinic`. For now one scenario, `probe`: a bounded number of
//! requests to the unauthenticated health and readiness endpoints at a fixed concurrency, with
//! latency percentiles. The busy-clinic-morning scenarios (consults, intake, uploads, bookings)
//! come with the load-test issue. Targets must be loopback addresses: this tool never sends load
//! anywhere else.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Bounded load against a clinic server on this machine"
)]
struct Args {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
