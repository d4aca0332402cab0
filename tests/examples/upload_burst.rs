//! An end-to-end photo-upload burst: a whole server as `clinic serve --demo` runs it (embedded
//! SQLite, the local encrypted blob store, the local key file) on 127.0.0.1:0, and `--uploads`
//! (default 50) 12 MP phone photos sent through the API at once by the demo medical assistant.
//! Reports upload-to-stored latency (request sent → 201 after the three sealed objects and the
//! row are durable) p50/p90/p99/max, the burst's wall time, and the process's peak memory during
//! the burst (VmHWM after resetting it; the client shares one copy of the photo, so the peak is
//! the server's). Fails if any upload fails or the count stored differs.
//!
//!     cargo run --release -p clinic-e2e --example upload_burst
//!     cargo run --release -p clinic-e2e --example upload_burst --features turbojpeg
//!     cargo run --release -p clinic-e2e --example upload_burst -- --parallel 50   # decodes unbounded
//!     cargo run --release -p clinic-e2e --example upload_burst -- --inflight-mib 64  # tighter memory cap
//!
//! Prints one JSON line last.

use std::time::{Duration, Instant};

use clinic_api::testkit::decode_base32;
use clinic_api::{demo, domains::identity::mfa};
use clinic_e2e::{Server, client, config};
use serde_json::{Value, json};

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A line of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let uploads: usize = args
        .iter()
        .position(|a| a == "--uploads")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(50), |v| v.parse())?;
    anyhow::ensure!((1..=500).contains(&uploads), "--uploads is 1..=500");

    // Uploads processed at once (imaging.max_parallel; 0 = one per core, the default).
    let parallel: usize = args
        .iter()
        .position(|a| a == "--parallel")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(0), |v| v.parse())?;

    // Upload bytes in memory at once (imaging.max_inflight_bytes), in MiB; default 256.
    let inflight_mib: u64 = args
        .iter()
        .position(|a| a == "--inflight-mib")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(256), |v| v.parse())?;

    let (mut config, dir) = config().await?;
    config.imaging.max_parallel = parallel;
    config.imaging.max_inflight_bytes = inflight_mib * 1024 * 1024;
    let server = Server::start(config, dir).await?;
    let seeded = demo::seed(&server.state).await?.expect("fresh demo");
    let login = seeded
        .logins
        .iter()
        .find(|l| l.username == "ma.rivera")
        .expect("demo medical assistant");

    // Sign in as the demo medical assistant (enrollment, as a new staff member does).
    let c = client();
    let body = json!({ "clinic": "demo", "username": login.username, "password": login.password });
    let r: Value = c
        .post(server.url("/api/v1/auth/login"))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(r["stage"] == "enroll_only", "unexpected login answer {r}");
    let enroll: Value = c
        .post(server.url("/api/v1/auth/mfa/enroll"))
        .send()
        .await?
        .json()
        .await?;
    let secret = decode_base32(enroll["secret"].as_str().unwrap_or_default());
    let confirm = c
        .post(server.url("/api/v1/auth/mfa/enroll/confirm"))
        .json(&json!({ "code": mfa::code_at(&secret, now_secs()) }))
        .send()
        .await?;
    anyhow::ensure!(confirm.status() == 200, "enrollment refused");
    let patients: Value = c
        .get(server.url("/api/v1/patients"))
        .send()
        .await?
        .json()
        .await?;
    let patient = patients[0]["id"].as_str().expect("a patient").to_string();

    let photo = bytes::Bytes::from(imaging::testimages::phone_photo_like(4000, 3000));
    let url = server.url(&format!("/api/v1/patients/{patient}/images"));
    // One upload first (warm code paths and the database), then the burst.
    let warm = c
        .post(&url)
        .header("content-type", "image/jpeg")
        .body(photo.clone())
        .send()
        .await?;
    anyhow::ensure!(warm.status() == 201, "warm-up upload: {}", warm.status());

    let rss_before = status_kib("VmRSS:");
    // Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..uploads {
        let (c, url, photo) = (c.clone(), url.clone(), photo.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c
                .post(&url)
                .header("content-type", "image/jpeg")
                .timeout(Duration::from_secs(300))
                .body(photo)
                .send()
                .await;
            let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
            (status, t.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut ms = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (status, took) = t.await?;
        if status == 201 {
            ms.push(took);
        } else {
            failed += 1;
            eprintln!("upload answered {status}");
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    let mut tx = server.state.tx(&seeded.clinic_id).await?;
    let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM images")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    server.stop().await?;
    anyhow::ensure!(failed == 0, "{failed} uploads failed");
    anyhow::ensure!(
        stored as usize == uploads + 1,
        "{stored} images stored, {} expected",
        uploads + 1
    );
    ms.sort_by(f64::total_cmp);
    let decode = if cfg!(feature = "turbojpeg") {
        "turbojpeg"
    } else {
        "pure-rust"
    };
    println!(
        "{{\"build\":\"{decode}\",\"uploads\":{uploads},\"max_parallel\":{parallel},\"inflight_mib\":{inflight_mib},\"photo_bytes\":{},\"cores\":{},\"wall_s\":{wall:.2},\"per_s\":{:.2},\"p50_ms\":{:.0},\"p90_ms\":{:.0},\"p99_ms\":{:.0},\"max_ms\":{:.0},\"rss_before_mib\":{},\"peak_rss_mib\":{}}}",
        photo.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        uploads as f64 / wall,
        pct(&ms, 0.5),
        pct(&ms, 0.9),
        pct(&ms, 0.99),
        ms.last().copied().unwrap_or(0.0),
        rss_before / 1024,
        peak / 1024
    );
    Ok(())
}
