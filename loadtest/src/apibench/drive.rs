//! The open-loop driver: requests are started on a fixed schedule (a rate per level), whether or
//! not earlier ones have answered, so a slow server cannot slow the load down and hide its own
//! latency (coordinated omission). Requests are timed from the moment the client starts them;
//! how late that was against the schedule (the client's own lag: its timer's 1 ms granularity,
//! a descheduled core) is measured beside, and a level whose lag p99 passes
//! [`Limits::max_lag_ms`] fails as the client's, so a server that starves the client of CPU
//! cannot hide its latency in the client.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::mix::{Op, Target};
use crate::results::Pcts;

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The status the operation wants.
    Ok,
    /// An answer a real client expects some of the time and handles (a slot taken since it was
    /// listed: 409; a throttled sign-in: 429). Not an error.
    Expected,
    /// Any other 4xx.
    Client,
    /// 5xx.
    Server,
    /// No answer (connection refused or reset, timeout).
    Transport,
}

impl Outcome {
    /// Sorts a status into an outcome given the wanted and tolerated statuses.
    pub fn of(status: u16, want: u16, tolerated: &[u16]) -> Outcome {
        if status == want {
            Outcome::Ok
        } else if tolerated.contains(&status) {
            Outcome::Expected
        } else if status >= 500 {
            Outcome::Server
        } else {
            Outcome::Client
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 120 s at 3 significant figures.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

use crate::metrics::pcts;

#[derive(Default)]
struct Tally {
    latency: BTreeMap<&'static str, Histogram<u64>>,
    all: Option<Histogram<u64>>,
    lag: Option<Histogram<u64>>,
    ok: u64,
    expected: u64,
    client: u64,
    server: u64,
    transport: u64,
    /// A few of the unexpected answers, for the report (route, status or error, code).
    samples: Vec<String>,
}

/// Counts and times the requests of one level.
#[derive(Default)]
pub struct Recorder {
    tally: Mutex<Tally>,
    /// Whether requests are being counted (not during a level's warm-up).
    counting: std::sync::atomic::AtomicBool,
    /// Operations that could not run as drawn (no free sign-in account, no booked appointment
    /// to check in) and ran as their stand-in instead, by the drawn operation.
    pub substituted: Mutex<BTreeMap<&'static str, u64>>,
}

impl Recorder {
    /// One request's answer on `route` (method and template) after `elapsed`.
    pub fn record(&self, route: &'static str, elapsed: Duration, outcome: Outcome, note: &str) {
        if !self.counting.load(Ordering::Relaxed) {
            return;
        }
        let us = (elapsed.as_micros() as u64).clamp(1, 120_000_000);
        let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        let _ = t.latency.entry(route).or_insert_with(histogram).record(us);
        let _ = t.all.get_or_insert_with(histogram).record(us);
        match outcome {
            Outcome::Ok => t.ok += 1,
            Outcome::Expected => t.expected += 1,
            Outcome::Client => t.client += 1,
            Outcome::Server => t.server += 1,
            Outcome::Transport => t.transport += 1,
        }
        if !matches!(outcome, Outcome::Ok | Outcome::Expected) && t.samples.len() < 8 {
            t.samples.push(format!("{route}: {note}"));
        }
    }

    /// How late after its due time the client started one operation.
    pub fn lag(&self, late: Duration) {
        if !self.counting.load(Ordering::Relaxed) {
            return;
        }
        let us = (late.as_micros() as u64).clamp(1, 120_000_000);
        let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        let _ = t.lag.get_or_insert_with(histogram).record(us);
    }

    /// An operation drawn as `op` that ran as its stand-in.
    pub fn substitute(&self, op: Op) {
        if self.counting.load(Ordering::Relaxed) {
            *self
                .substituted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(op.name())
                .or_default() += 1;
        }
    }
}

/// One level's result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Level {
    pub label: String,
    /// Requests per second the schedule asked for.
    pub offered_rps: f64,
    /// Requests answered per second (any status), over the measured seconds.
    pub achieved_rps: f64,
    pub seconds: f64,
    /// Every request of the mix together.
    pub all_ms: Pcts,
    /// By method and route template.
    pub routes: BTreeMap<String, Pcts>,
    pub ok: u64,
    pub expected: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    /// Operations due but not started because too many were already in flight (the client's
    /// own cap): the server has fallen behind.
    pub not_started: u64,
    pub substituted: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    /// Server CPU (100 = one core) and resident memory over the level.
    pub server_cpu_pct: f64,
    pub server_rss_mib: f64,
    /// How late the client started operations against their schedule.
    #[serde(default)]
    pub client_lag_ms: Pcts,
    /// The machine's CPU time taken by the hypervisor (steal), % of all cores' time.
    #[serde(default)]
    pub steal_pct: f64,
    /// Earlier runs of this level thrown away because they failed while the steal passed
    /// [`Limits::max_steal_pct`].
    #[serde(default)]
    pub steal_reruns: u32,
    /// Whether the level met the limits.
    pub passed: bool,
    /// Why not, when it did not.
    pub failed_because: Option<String>,
}

impl Level {
    /// Errors (unexpected 4xx, 5xx, no answer, not started) as a fraction of requests due.
    pub fn error_fraction(&self) -> f64 {
        let bad =
            self.client_errors + self.server_errors + self.transport_errors + self.not_started;
        let total = self.ok + self.expected + bad;
        if total == 0 {
            0.0
        } else {
            bad as f64 / total as f64
        }
    }
}

/// The limits a level must meet to count as sustained.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Limits {
    pub p99_ms: f64,
    /// At most this fraction of requests may fail (unexpected status or no answer).
    pub max_error_fraction: f64,
    /// At least this fraction of the offered rate must be answered.
    pub min_achieved: f64,
    /// The client's own lag p99 (ms) past which a level is not judged on the server.
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: f64,
    /// A level that fails while the hypervisor takes more than this share of the machine
    /// (steal, %) is run again, up to [`STEAL_RERUNS`] times: the failure was the neighbours'.
    #[serde(default = "default_max_steal_pct")]
    pub max_steal_pct: f64,
}

/// How many times a level failed under steal is run again.
pub const STEAL_RERUNS: u32 = 3;

fn default_max_steal_pct() -> f64 {
    5.0
}

fn default_max_lag_ms() -> f64 {
    10.0
}

impl Limits {
    pub fn judge(&self, l: &mut Level) {
        let why = if l.server_errors > 0 {
            Some(format!("{} answers were 5xx", l.server_errors))
        } else if l.all_ms.p99 > self.p99_ms {
            Some(format!(
                "p99 {:.1} ms passed {:.0} ms",
                l.all_ms.p99, self.p99_ms
            ))
        } else if l.error_fraction() > self.max_error_fraction {
            Some(format!(
                "{:.2}% of requests failed",
                l.error_fraction() * 100.0
            ))
        } else if l.client_lag_ms.p99 > self.max_lag_ms {
            Some(format!(
                "the load client fell behind (its lag p99 {:.1} ms passed {:.0} ms)",
                l.client_lag_ms.p99, self.max_lag_ms
            ))
        } else if l.achieved_rps < self.min_achieved * l.offered_rps {
            Some(format!(
                "answered {:.0} of {:.0} req/s offered",
                l.achieved_rps, l.offered_rps
            ))
        } else {
            None
        };
        l.passed = why.is_none();
        l.failed_because = why.map(|w| {
            if l.steal_pct > self.max_steal_pct {
                format!(
                    "{w}, while the hypervisor took {:.0}% of the machine",
                    l.steal_pct
                )
            } else {
                w
            }
        });
    }

    /// Whether a failed level should be run again: it failed while the steal was high.
    pub fn rerun(&self, l: &Level) -> bool {
        !l.passed && l.steal_pct > self.max_steal_pct && l.steal_reruns < STEAL_RERUNS
    }
}

/// One level, judged; run again while it fails under steal (see [`Limits::rerun`]).
#[allow(clippy::too_many_arguments)]
pub async fn judged_level(
    target: &Arc<Target>,
    label: &str,
    rps: f64,
    warm: f64,
    secs: f64,
    limits: Limits,
    server_pid: Option<u32>,
) -> Level {
    let mut reruns = 0;
    loop {
        let mut l = level(target, label, rps, warm, secs, server_pid).await;
        l.steal_reruns = reruns;
        limits.judge(&mut l);
        eprintln!("  {}", describe(&l));
        if !limits.rerun(&l) {
            return l;
        }
        reruns += 1;
        eprintln!("    (steal {:.0}%: run again)", l.steal_pct);
        wait_for_quiet(limits.max_steal_pct).await;
    }
}

/// Waits, up to 10 minutes, for a 5 s stretch in which the hypervisor takes at most `max_pct`
/// of the machine; returns the last stretch's steal.
pub async fn wait_for_quiet(max_pct: f64) -> f64 {
    let give_up = Instant::now() + Duration::from_secs(600);
    loop {
        let a = machine_ticks();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let steal = steal_between(a, machine_ticks());
        if steal <= max_pct || Instant::now() >= give_up {
            return steal;
        }
        eprintln!("    (waiting for a quieter machine: steal {steal:.0}%)");
    }
}

/// How many operations may be in flight before the client stops starting new ones (and counts
/// them as not started): far past any level a 2-core server sustains at 25 ms.
const MAX_IN_FLIGHT: usize = 2048;

/// Samples the server's CPU and memory over a level, from /proc (Linux).
pub struct ProcSampler {
    pid: u32,
    start_ticks: Option<u64>,
    started: Instant,
}

/// (steal, total) clock ticks of all cores, from the first line of /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    (f.len() == 8).then(|| (f[7], f.iter().sum()))
}

/// The hypervisor's share (%) of all cores' time between two `machine_ticks` readings.
fn steal_between(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> f64 {
    match (a, b) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
            s1.saturating_sub(s0) as f64 / (t1 - t0) as f64 * 100.0
        }
        _ => 0.0,
    }
}

fn proc_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn proc_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

impl ProcSampler {
    pub fn start(pid: u32) -> Self {
        ProcSampler {
            pid,
            start_ticks: proc_ticks(pid),
            started: Instant::now(),
        }
    }

    /// (CPU %, RSS MiB) since `start`. Clock ticks are 100 a second on Linux.
    pub fn finish(&self) -> (f64, f64) {
        let cpu = match (self.start_ticks, proc_ticks(self.pid)) {
            (Some(a), Some(b)) => {
                (b.saturating_sub(a)) as f64 / 100.0 / self.started.elapsed().as_secs_f64() * 100.0
            }
            _ => 0.0,
        };
        (cpu, proc_rss_mib(self.pid))
    }
}

/// Runs the mix against `target` at `rps` requests a second: `warm` seconds not counted, then
/// `secs` counted. `beside` runs alongside (the sign-in flood) and is stopped at the end.
pub async fn level(
    target: &Arc<Target>,
    label: &str,
    rps: f64,
    warm: f64,
    secs: f64,
    server_pid: Option<u32>,
) -> Level {
    let rec = Arc::new(Recorder::default());
    // Operations a second: sign-ins send two requests, the rest one.
    let ops_per_sec = rps / target.mix.requests_per_op();
    let period = Duration::from_secs_f64(1.0 / ops_per_sec.max(0.1));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let not_started = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let warm_end = started + Duration::from_secs_f64(warm);
    let end = warm_end + Duration::from_secs_f64(secs);
    let mut counting_since = None;
    let mut sampler = None;
    let mut machine_at_start = None;
    let mut draw = crate::apibench::mix::Draw::new(label);
    let mut i: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let due = started + period.mul_f64(i as f64);
        if due >= end {
            break;
        }
        if counting_since.is_none() && due >= warm_end {
            rec.counting.store(true, Ordering::Relaxed);
            counting_since = Some(due);
            not_started.store(0, Ordering::Relaxed);
            sampler = server_pid.map(ProcSampler::start);
            machine_at_start = machine_ticks();
        }
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        }
        i += 1;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            not_started.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let op = target.mix.pick(draw.unit());
        let (target, rec, in_flight) = (target.clone(), rec.clone(), in_flight.clone());
        let pick = draw.draw();
        in_flight.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let start = Instant::now();
            rec.lag(start.saturating_duration_since(due));
            target.run(op, pick, start, &rec).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        // Reap finished tasks as we go so the set does not grow with the level.
        while tasks.try_join_next().is_some() {}
    }
    let counted_for = counting_since.map_or(secs, |s| end.duration_since(s).as_secs_f64());
    // Requests still in flight at the end are waited for (up to the client's timeout) and
    // counted: a level's slowest answers belong to it.
    while tasks.join_next().await.is_some() {}
    rec.counting.store(false, Ordering::Relaxed);
    let (cpu, rss) = sampler.map_or((0.0, 0.0), |s| s.finish());
    let steal = steal_between(machine_at_start, machine_ticks());
    let t = std::mem::take(&mut *rec.tally.lock().unwrap_or_else(|e| e.into_inner()));
    let answered = t.ok + t.expected + t.client + t.server;
    Level {
        label: label.to_string(),
        offered_rps: rps,
        achieved_rps: answered as f64 / counted_for.max(0.001),
        seconds: counted_for,
        all_ms: t.all.as_ref().map(pcts).unwrap_or_default(),
        routes: t
            .latency
            .iter()
            .map(|(r, h)| (r.to_string(), pcts(h)))
            .collect(),
        ok: t.ok,
        expected: t.expected,
        client_errors: t.client,
        server_errors: t.server,
        transport_errors: t.transport,
        not_started: not_started.load(Ordering::Relaxed),
        substituted: rec
            .substituted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        error_samples: t.samples,
        server_cpu_pct: cpu,
        server_rss_mib: rss,
        client_lag_ms: t.lag.as_ref().map(pcts).unwrap_or_default(),
        steal_pct: steal,
        steal_reruns: 0,
        passed: false,
        failed_because: None,
    }
}

/// A ramp: levels from `from` req/s, each `factor` × the last, until one fails the limits or
/// `max` is passed; then two halvings of the gap between the last level sustained and the first
/// that was not. Returns every level run, in the order run, and the highest rate sustained.
#[allow(clippy::too_many_arguments)]
pub async fn ramp(
    target: &Arc<Target>,
    name: &str,
    from: f64,
    factor: f64,
    max: f64,
    warm: f64,
    secs: f64,
    limits: Limits,
    server_pid: Option<u32>,
) -> (Vec<Level>, f64) {
    let mut levels = Vec::new();
    let mut rate = from;
    let mut best = 0.0;
    let mut failed_at = None;
    while rate <= max {
        let label = format!("{name} {rate:.0}/s");
        let l = judged_level(target, &label, rate, warm, secs, limits, server_pid).await;
        let passed = l.passed;
        levels.push(l);
        if !passed {
            failed_at = Some(rate);
            break;
        }
        best = rate;
        rate *= factor;
    }
    if let Some(mut hi) = failed_at {
        let mut lo = best;
        for _ in 0..2 {
            let mid = ((lo + hi) / 2.0).round();
            if mid <= lo || mid >= hi {
                break;
            }
            let label = format!("{name} {mid:.0}/s");
            let l = judged_level(target, &label, mid, warm, secs, limits, server_pid).await;
            if l.passed {
                lo = mid;
                best = best.max(mid);
            } else {
                hi = mid;
            }
            levels.push(l);
        }
    }
    (levels, best)
}

/// One line for the console.
pub fn describe(l: &Level) -> String {
    format!(
        "{:<28} offered {:>6.0} answered {:>6.0} req/s  p50 {:>6.2} p99 {:>7.2} ms  errors {:.2}%  5xx {}  cpu {:>4.0}%  lag p99 {:.1} ms  steal {:.0}%  {}",
        l.label,
        l.offered_rps,
        l.achieved_rps,
        l.all_ms.p50,
        l.all_ms.p99,
        l.error_fraction() * 100.0,
        l.server_errors,
        l.server_cpu_pct,
        l.client_lag_ms.p99,
        l.steal_pct,
        match &l.failed_because {
            None if l.passed => "ok".to_string(),
            None => String::new(),
            Some(w) => format!("stop: {w}"),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(p99: f64, offered: f64, achieved: f64) -> Level {
        Level {
            offered_rps: offered,
            achieved_rps: achieved,
            all_ms: Pcts {
                count: 1000,
                p50: p99 / 3.0,
                p95: p99 / 2.0,
                p99,
                max: p99 * 2.0,
            },
            ok: 1000,
            ..Level::default()
        }
    }

    const LIMITS: Limits = Limits {
        p99_ms: 25.0,
        max_error_fraction: 0.001,
        min_achieved: 0.95,
        max_lag_ms: 10.0,
        max_steal_pct: 5.0,
    };

    #[test]
    fn a_level_passes_only_within_every_limit() {
        let mut l = level(20.0, 300.0, 299.0);
        LIMITS.judge(&mut l);
        assert!(l.passed, "{:?}", l.failed_because);

        let mut slow = level(26.0, 300.0, 299.0);
        LIMITS.judge(&mut slow);
        assert!(!slow.passed);
        assert!(slow.failed_because.unwrap().contains("p99 26.0 ms"));

        let mut behind = level(10.0, 300.0, 200.0);
        LIMITS.judge(&mut behind);
        assert!(
            behind
                .failed_because
                .unwrap()
                .contains("answered 200 of 300")
        );

        let mut one_5xx = level(10.0, 300.0, 300.0);
        one_5xx.server_errors = 1;
        LIMITS.judge(&mut one_5xx);
        assert!(one_5xx.failed_because.unwrap().contains("5xx"));

        let mut failing = level(10.0, 300.0, 300.0);
        failing.client_errors = 2;
        LIMITS.judge(&mut failing);
        assert!(failing.failed_because.unwrap().contains("failed"));

        let mut client_late = level(10.0, 300.0, 300.0);
        client_late.client_lag_ms.p99 = 11.0;
        LIMITS.judge(&mut client_late);
        assert!(
            client_late
                .failed_because
                .unwrap()
                .contains("load client fell behind")
        );
    }

    #[test]
    fn a_level_failed_under_steal_is_run_again_a_few_times() {
        let mut calm = level(30.0, 300.0, 300.0);
        calm.steal_pct = 1.0;
        LIMITS.judge(&mut calm);
        assert!(
            !LIMITS.rerun(&calm),
            "a failure on a quiet machine is the server's"
        );

        let mut stolen = level(30.0, 300.0, 300.0);
        stolen.steal_pct = 22.0;
        LIMITS.judge(&mut stolen);
        assert!(LIMITS.rerun(&stolen));
        assert!(
            stolen
                .failed_because
                .as_deref()
                .unwrap()
                .contains("hypervisor took 22%")
        );
        stolen.steal_reruns = STEAL_RERUNS;
        assert!(!LIMITS.rerun(&stolen), "at most {STEAL_RERUNS} reruns");

        let mut passed = level(10.0, 300.0, 300.0);
        passed.steal_pct = 22.0;
        LIMITS.judge(&mut passed);
        assert!(passed.passed && !LIMITS.rerun(&passed));
    }

    #[test]
    fn steal_is_the_hypervisors_share_of_all_ticks() {
        assert_eq!(steal_between(Some((10, 1000)), Some((30, 1100))), 20.0);
        assert_eq!(steal_between(None, Some((30, 1100))), 0.0);
        assert_eq!(steal_between(Some((10, 1000)), Some((10, 1000))), 0.0);
        let (steal, total) = machine_ticks().expect("/proc/stat reads on Linux");
        assert!(total > 0 && steal <= total);
    }

    #[test]
    fn statuses_sort_into_outcomes() {
        assert_eq!(Outcome::of(200, 200, &[]), Outcome::Ok);
        assert_eq!(Outcome::of(409, 201, &[409]), Outcome::Expected);
        assert_eq!(Outcome::of(404, 200, &[409]), Outcome::Client);
        assert_eq!(Outcome::of(503, 200, &[]), Outcome::Server);
    }

    #[test]
    fn only_counted_requests_are_recorded() {
        let rec = Recorder::default();
        rec.record("GET /x", Duration::from_millis(3), Outcome::Ok, "");
        assert_eq!(
            rec.tally.lock().unwrap().ok,
            0,
            "warm-up requests are not counted"
        );
        rec.counting.store(true, Ordering::Relaxed);
        rec.record("GET /x", Duration::from_millis(3), Outcome::Ok, "");
        rec.record(
            "GET /x",
            Duration::from_millis(5),
            Outcome::Server,
            "500 null",
        );
        let t = rec.tally.lock().unwrap();
        assert_eq!((t.ok, t.server), (1, 1));
        assert_eq!(t.samples, vec!["GET /x: 500 null".to_string()]);
        assert_eq!(t.latency["GET /x"].len(), 2);
        drop(t);
        rec.lag(Duration::from_micros(700));
        assert_eq!(
            rec.tally.lock().unwrap().lag.as_ref().map(|h| h.len()),
            Some(1)
        );
    }
}
