//! `loadtest api`: the clinic API alone under a busy morning's mix, ramped until p99 passes its
//! limit, on SQLite and on PostgreSQL, beside a bare axum + sqlx ceiling doing the same database
//! work per request; then the same mix at a fixed rate with and without a flood of bad sign-ins.
//! Writes `api.json` and `report.html` to the output directory.

pub mod ceiling;
mod clinic;
pub mod drive;
mod mix;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use drive::{Level, Limits};
use mix::{Kind, Mix, Target};

#[derive(clap::Args)]
pub struct ApiArgs {
    /// Backends: `sqlite`, `postgres`, or `both` (default: both when a PostgreSQL URL is given,
    /// else sqlite).
    #[arg(long)]
    backend: Option<String>,
    /// A PostgreSQL server to create the runs' databases on (a role that may CREATE DATABASE),
    /// e.g. postgres://postgres:clinic@127.0.0.1:55432/postgres.
    #[arg(long, env = "LOADTEST_PG_URL")]
    pg_url: Option<String>,
    /// What to run: `clinic`, `ceiling`, or `all`.
    #[arg(long, default_value = "all")]
    target: String,
    /// First level, requests per second.
    #[arg(long, default_value_t = 100.0)]
    from: f64,
    /// Each level is this many times the last.
    #[arg(long, default_value_t = 1.25)]
    factor: f64,
    /// Highest level tried.
    #[arg(long, default_value_t = 6000.0)]
    max: f64,
    /// Seconds of each level not counted (the schedule settling).
    #[arg(long, default_value_t = 2.0)]
    warm_s: f64,
    /// Seconds of each level counted.
    #[arg(long, default_value_t = 8.0)]
    step_s: f64,
    /// p99 limit of the whole mix, ms.
    #[arg(long, default_value_t = 25.0)]
    p99_ms: f64,
    /// Concurrent bad sign-ins of the flood (0: no flood comparison).
    #[arg(long, default_value_t = 64)]
    flood: usize,
    /// Seconds counted of the flood comparison's two levels.
    #[arg(long, default_value_t = 20.0)]
    flood_s: f64,
    /// A short run for CI: SQLite, two low levels, a small practice, a 16-client flood; fails
    /// on any unexpected answer.
    #[arg(long)]
    quick: bool,
    /// The `clinic` binary (default: beside this one, or $CLINIC_BIN).
    #[arg(long)]
    clinic_bin: Option<PathBuf>,
    /// Output directory (default target/loadtest/api).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One target's ramp on one backend.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ramp {
    pub backend: String,
    pub target: String,
    pub levels: Vec<Level>,
    /// The highest rate that met the limits (0 when none did).
    pub sustained_rps: f64,
    /// Why the ramp stopped.
    pub stopped_because: String,
    pub setup_s: f64,
}

/// The mix at one rate without, then with, the sign-in flood beside it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Flood {
    pub backend: String,
    pub rps: f64,
    pub attackers: usize,
    pub baseline: Level,
    pub flooded: Level,
    /// The attackers' answers by status (0: no answer).
    pub attacker_answers: BTreeMap<u16, u64>,
    /// Flooded p99 ÷ baseline p99 of the mix (the attackers' own requests are not in it).
    pub p99_ratio: f64,
    pub passed: bool,
}

/// Goals per backend, req/s at p99 ≤ the limit.
pub fn goal_rps(backend: &str) -> f64 {
    if backend == "postgres" { 600.0 } else { 300.0 }
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiBench {
    pub started: String,
    pub limits: Limits,
    pub mix: Vec<(String, f64)>,
    pub ramps: Vec<Ramp>,
    pub floods: Vec<Flood>,
    pub quick: bool,
    pub machine: String,
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_default();
    format!("{cores} cores, {model}; the load client runs on the same cores")
}

/// A fresh database on the PostgreSQL server at `admin` (dropped by nobody: they are small and
/// named by time, to be looked at afterwards if wanted).
async fn fresh_pg(admin: &str, prefix: &str) -> anyhow::Result<String> {
    sqlx::any::install_default_drivers();
    let name = format!(
        "{prefix}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(admin)
        .await
        .context("connecting to the PostgreSQL server")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await?;
    pool.close().await;
    let (head, _) = admin
        .rsplit_once('/')
        .context("a PostgreSQL URL ends in /DATABASE")?;
    let (head, query) = match admin.split_once('?') {
        Some((_, q)) => (head, format!("?{q}")),
        None => (head, String::new()),
    };
    Ok(format!("{head}/{name}{query}"))
}

struct Plan {
    limits: Limits,
    from: f64,
    factor: f64,
    max: f64,
    warm: f64,
    secs: f64,
    setup: clinic::Setup,
    flood: usize,
    flood_s: f64,
}

async fn ramp_ceiling(
    backend: &str,
    db: &str,
    plan: &Plan,
    out: &std::path::Path,
) -> anyhow::Result<Ramp> {
    let t = Instant::now();
    let server =
        ceiling::CeilingProcess::start(db, &out.join(format!("ceiling-{backend}.log"))).await?;
    let target = Arc::new(Target {
        name: format!("ceiling ({backend})"),
        mix: Mix::default(),
        kind: Kind::Ceiling(ceiling::CeilingTarget::setup(&server.base, 24).await?),
    });
    let setup_s = t.elapsed().as_secs_f64();
    eprintln!("{}: ready in {setup_s:.0} s", target.name);
    let (levels, best) = plan.ramp(&target, server.pid).await;
    server.stop().await;
    Ok(ramp_result(backend, "ceiling", levels, best, setup_s))
}

fn ramp_result(backend: &str, target: &str, levels: Vec<Level>, best: f64, setup_s: f64) -> Ramp {
    let stopped_because = levels
        .iter()
        .filter_map(|l| {
            l.failed_because
                .as_ref()
                .map(|w| format!("{:.0} req/s: {w}", l.offered_rps))
        })
        .next_back()
        .unwrap_or_else(|| "nothing: every level tried met the limits".into());
    Ramp {
        backend: backend.into(),
        target: target.into(),
        levels,
        sustained_rps: best,
        stopped_because,
        setup_s,
    }
}

async fn ramp_clinic(
    backend: &str,
    db: Option<&str>,
    plan: &Plan,
    bin: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<(Ramp, Option<Flood>)> {
    let t = Instant::now();
    let server =
        crate::server::DemoServer::start_on(bin, &out.join(format!("clinic-{backend}.log")), db)
            .await?;
    let photo = bytes::Bytes::from(imaging::testimages::phone_photo_like(1600, 1200));
    let target = Arc::new(Target {
        name: format!("clinic ({backend})"),
        mix: Mix::default(),
        kind: Kind::Clinic(Box::new(
            clinic::ClinicTarget::setup(&server, photo, &plan.setup).await?,
        )),
    });
    let setup_s = t.elapsed().as_secs_f64();
    eprintln!("{}: demo practice set up in {setup_s:.0} s", target.name);
    let (levels, best) = plan.ramp(&target, server.pid).await;
    let flood = if plan.flood > 0 {
        // At the goal when it was sustained, else at 80% of what was.
        let goal = goal_rps(backend);
        let rps = if best >= goal {
            goal
        } else {
            (best * 0.8).max(plan.from / 2.0)
        };
        Some(flood(&target, backend, rps, plan, server.pid).await)
    } else {
        None
    };
    server.stop().await;
    Ok((ramp_result(backend, "clinic", levels, best, setup_s), flood))
}

impl Plan {
    /// The plan's ramp against `target` (served by process `pid`).
    async fn ramp(&self, target: &Arc<Target>, pid: u32) -> (Vec<Level>, f64) {
        drive::ramp(
            target,
            &target.name,
            self.from,
            self.factor,
            self.max,
            self.warm,
            self.secs,
            self.limits,
            Some(pid),
        )
        .await
    }
}

async fn flood(target: &Arc<Target>, backend: &str, rps: f64, plan: &Plan, pid: u32) -> Flood {
    let mut reruns = 0;
    loop {
        let f = flood_once(target, backend, rps, plan, pid).await;
        let stolen = f.baseline.steal_pct.max(f.flooded.steal_pct) > plan.limits.max_steal_pct;
        if f.passed || !stolen || reruns >= drive::STEAL_RERUNS {
            return f;
        }
        reruns += 1;
        eprintln!(
            "    (steal {:.0}%: the pair runs again)",
            f.baseline.steal_pct.max(f.flooded.steal_pct)
        );
        drive::wait_for_quiet(plan.limits.max_steal_pct).await;
    }
}

async fn flood_once(target: &Arc<Target>, backend: &str, rps: f64, plan: &Plan, pid: u32) -> Flood {
    // Sign-in throttles and lockouts from the ramp's own sign-ins are long gone by now; the
    // attackers' usernames are new every attempt, so no real account locks.
    let baseline = drive::judged_level(
        target,
        &format!("{backend} {rps:.0}/s, no flood"),
        rps,
        plan.warm,
        plan.flood_s,
        plan.limits,
        Some(pid),
    )
    .await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let attackers = {
        let target = target.clone();
        let n = plan.flood;
        tokio::spawn(async move {
            let Kind::Clinic(c) = &target.kind else {
                return BTreeMap::new();
            };
            c.flood(n, stop_rx).await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut flooded = drive::level(
        target,
        &format!("{backend} {rps:.0}/s, {} bad sign-ins", plan.flood),
        rps,
        plan.warm,
        plan.flood_s,
        Some(pid),
    )
    .await;
    let _ = stop_tx.send(true);
    let attacker_answers = attackers.await.unwrap_or_default();
    plan.limits.judge(&mut flooded);
    eprintln!("  {}", drive::describe(&flooded));
    eprintln!("  the flood's answers by status: {attacker_answers:?}");
    let p99_ratio = if baseline.all_ms.p99 > 0.0 {
        flooded.all_ms.p99 / baseline.all_ms.p99
    } else {
        f64::INFINITY
    };
    // Zero 5xx for anyone: the mix's requests and the attackers' own (a 503 shed from the
    // password-check queue counts too).
    let passed = p99_ratio <= 2.0
        && flooded.server_errors == 0
        && !attacker_answers.keys().any(|s| *s >= 500);
    Flood {
        backend: backend.into(),
        rps,
        attackers: plan.flood,
        baseline,
        flooded,
        attacker_answers,
        p99_ratio,
        passed,
    }
}

pub async fn run(a: ApiArgs) -> anyhow::Result<()> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/loadtest/api"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bin = crate::server::find_binary(a.clinic_bin.as_deref())?;
    let backends: Vec<&str> = match (a.backend.as_deref(), &a.pg_url) {
        (Some("both"), _) | (None, Some(_)) if !a.quick => vec!["sqlite", "postgres"],
        (Some("postgres"), _) => vec!["postgres"],
        (Some("sqlite") | None, _) | (Some("both"), _) => vec!["sqlite"],
        (Some(other), _) => bail!("unknown backend {other} (sqlite, postgres, both)"),
    };
    if backends.contains(&"postgres") && a.pg_url.is_none() {
        bail!("the postgres backend needs --pg-url or LOADTEST_PG_URL");
    }
    let targets: Vec<&str> = match a.target.as_str() {
        "all" => vec!["ceiling", "clinic"],
        "clinic" => vec!["clinic"],
        "ceiling" => vec!["ceiling"],
        t => bail!("unknown target {t} (clinic, ceiling, all)"),
    };
    let limits = Limits {
        p99_ms: a.p99_ms,
        max_error_fraction: 0.001,
        min_achieved: 0.95,
        max_lag_ms: 10.0,
        max_steal_pct: 5.0,
    };
    let plan = if a.quick {
        Plan {
            limits,
            from: 50.0,
            factor: 2.0,
            max: 100.0,
            warm: 1.0,
            secs: 4.0,
            setup: clinic::Setup {
                workers: 4,
                signers: 6,
                patients: 20,
                photo_patients: 2,
            },
            flood: a.flood.min(16),
            flood_s: 4.0,
        }
    } else {
        Plan {
            limits,
            from: a.from,
            factor: a.factor.max(1.05),
            max: a.max,
            warm: a.warm_s,
            secs: a.step_s,
            setup: clinic::Setup {
                workers: 24,
                signers: 160,
                patients: 300,
                photo_patients: 20,
            },
            flood: a.flood,
            flood_s: a.flood_s,
        }
    };
    let mut bench = ApiBench {
        started: chrono::Utc::now().to_rfc3339(),
        limits,
        mix: Mix::default()
            .weights
            .iter()
            .map(|(op, w)| (op.name().to_string(), *w))
            .collect(),
        ramps: Vec::new(),
        floods: Vec::new(),
        quick: a.quick,
        machine: machine(),
    };
    for backend in &backends {
        for t in &targets {
            if !a.quick {
                // A ramp starts on a quiet machine (levels failed under steal are run again too).
                drive::wait_for_quiet(limits.max_steal_pct).await;
            }
            let db = match (*backend, &a.pg_url) {
                ("postgres", Some(pg)) => Some(fresh_pg(pg, &format!("bench_{t}")).await?),
                _ => None,
            };
            eprintln!("loadtest api: {t} on {backend}");
            if *t == "ceiling" {
                let db = db.unwrap_or_else(|| "sqlite".into());
                bench
                    .ramps
                    .push(ramp_ceiling(backend, &db, &plan, &out).await?);
            } else {
                let (ramp, flood) = ramp_clinic(backend, db.as_deref(), &plan, &bin, &out).await?;
                bench.ramps.push(ramp);
                bench.floods.extend(flood);
            }
            std::fs::write(out.join("api.json"), serde_json::to_string_pretty(&bench)?)?;
        }
    }
    std::fs::write(out.join("api.json"), serde_json::to_string_pretty(&bench)?)?;
    std::fs::write(out.join("report.html"), report::html(&bench))?;
    println!("{}", report::verdict_text(&bench));
    eprintln!("wrote {0}/api.json and {0}/report.html", out.display());
    if a.quick {
        let bad: Vec<String> = bench
            .ramps
            .iter()
            .flat_map(|r| r.levels.iter())
            .chain(bench.floods.iter().flat_map(|f| [&f.baseline, &f.flooded]))
            .filter(|l| l.client_errors + l.server_errors + l.transport_errors + l.not_started > 0)
            .map(|l| format!("{}: {:?}", l.label, l.error_samples))
            .collect();
        if !bad.is_empty() {
            bail!("unexpected answers: {bad:?}");
        }
        if let Some(f) = bench.floods.iter().find(|f| f.flooded.server_errors > 0) {
            bail!("{} 5xx under the sign-in flood", f.flooded.server_errors);
        }
    }
    Ok(())
}
