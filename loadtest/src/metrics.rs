//! Collection: peers and API workers count into local tallies and merge them into [`Metrics`]
//! about once a second, so the shared lock is taken a few hundred times a second at most, not
//! once per packet. Everything is kept per second of the run; phases and the timeline are cut
//! from those seconds at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::results::{Pcts, Sample};

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram of microseconds, in milliseconds.
pub fn pcts(h: &Histogram<u64>) -> Pcts {
    if h.is_empty() {
        return Pcts::default();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Pcts {
        count: h.len(),
        p50: ms(0.50),
        p95: ms(0.95),
        p99: ms(0.99),
        max: h.max() as f64 / 1000.0,
    }
}

/// One peer's counts since its last merge.
pub struct PeerTally {
    pub join_ms: Option<f64>,
    latency: Histogram<u64>,
    rx_audio: u64,
    rx_video: u64,
    rx_bytes: u64,
    tx_audio: u64,
    tx_video: u64,
    /// Cumulative expected / received packets from sequence numbers, and what was merged so far.
    seq_totals: [(u64, u64); 2],
    seq_merged: [(u64, u64); 2],
    errors: BTreeMap<&'static str, u64>,
    join_reported: bool,
}

impl Default for PeerTally {
    fn default() -> Self {
        Self {
            join_ms: None,
            latency: histogram(),
            rx_audio: 0,
            rx_video: 0,
            rx_bytes: 0,
            tx_audio: 0,
            tx_video: 0,
            seq_totals: [(0, 0); 2],
            seq_merged: [(0, 0); 2],
            errors: BTreeMap::new(),
            join_reported: false,
        }
    }
}

impl PeerTally {
    pub fn latency_us(&mut self, us: u64) {
        let _ = self.latency.record(us.clamp(1, 60_000_000));
    }
    pub fn received(&mut self, video: bool, bytes: usize) {
        if video {
            self.rx_video += 1;
        } else {
            self.rx_audio += 1;
        }
        self.rx_bytes += bytes as u64;
    }
    pub fn sent(&mut self, video: bool) {
        if video {
            self.tx_video += 1;
        } else {
            self.tx_audio += 1;
        }
    }
    pub fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }
    /// Cumulative (expected, received) packets of [audio, video], from sequence numbers.
    pub fn set_sequence_totals(&mut self, totals: [(u64, u64); 2]) {
        self.seq_totals = totals;
    }
}

/// One second of the run.
pub struct Second {
    pub latency: Histogram<u64>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    /// (expected, received) packets of [audio, video].
    pub seq: [(u64, u64); 2],
    pub api: Histogram<u64>,
    pub errors: u64,
    pub consults_live: u32,
    pub peers_connected: u32,
    pub server_cpu_pct: f64,
    pub server_rss_mib: f64,
}

impl Default for Second {
    fn default() -> Self {
        Self {
            latency: histogram(),
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            seq: [(0, 0); 2],
            api: histogram(),
            errors: 0,
            consults_live: 0,
            peers_connected: 0,
            server_cpu_pct: 0.0,
            server_rss_mib: 0.0,
        }
    }
}

/// One API call.
#[derive(Clone, Debug)]
pub struct ApiCall {
    pub t_s: f64,
    /// Method and route template.
    pub endpoint: &'static str,
    pub us: u64,
}

#[derive(Default)]
pub struct Inner {
    pub seconds: Vec<Second>,
    /// (seconds since start, join time ms).
    pub joins: Vec<(f64, f64)>,
    pub errors: BTreeMap<String, u64>,
    pub api: Vec<ApiCall>,
    /// (seconds since start, upload-to-stored µs).
    pub uploads: Vec<(f64, u64)>,
}

pub struct Metrics {
    pub epoch: Instant,
    pub inner: Mutex<Inner>,
    peers_connected: AtomicI64,
    consults_live: AtomicI64,
}

impl Metrics {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            inner: Mutex::new(Inner::default()),
            peers_connected: AtomicI64::new(0),
            consults_live: AtomicI64::new(0),
        }
    }

    fn now_s(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn with_second<R>(inner: &mut Inner, t_s: f64, f: impl FnOnce(&mut Second) -> R) -> R {
        let i = t_s.max(0.0) as usize;
        while inner.seconds.len() <= i {
            inner.seconds.push(Second::default());
        }
        f(&mut inner.seconds[i])
    }

    /// Merges and resets a peer's tally.
    pub fn merge(&self, t: &mut PeerTally) {
        let now = self.now_s();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ms) = t.join_ms
            && !t.join_reported
        {
            t.join_reported = true;
            inner.joins.push((now, ms));
            self.peers_connected.fetch_add(1, Ordering::Relaxed);
        }
        for (k, v) in std::mem::take(&mut t.errors) {
            *inner.errors.entry(k.to_string()).or_default() += v;
            Self::with_second(&mut inner, now, |s| s.errors += v);
        }
        let delta: [(u64, u64); 2] = std::array::from_fn(|k| {
            let ((e, r), (me, mr)) = (t.seq_totals[k], t.seq_merged[k]);
            (e.saturating_sub(me), r.saturating_sub(mr))
        });
        t.seq_merged = t.seq_totals;
        let latency = std::mem::replace(&mut t.latency, histogram());
        Self::with_second(&mut inner, now, |s| {
            let _ = s.latency.add(&latency);
            s.rx_packets += t.rx_audio + t.rx_video;
            s.rx_bytes += t.rx_bytes;
            s.tx_packets += t.tx_audio + t.tx_video;
            for (acc, d) in s.seq.iter_mut().zip(delta) {
                acc.0 += d.0;
                acc.1 += d.1;
            }
        });
        t.rx_audio = 0;
        t.rx_video = 0;
        t.rx_bytes = 0;
        t.tx_audio = 0;
        t.tx_video = 0;
    }

    /// A peer that had joined has left.
    pub fn peer_left(&self) {
        self.peers_connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn consult_started(&self) {
        self.consults_live.fetch_add(1, Ordering::Relaxed);
    }

    pub fn consult_ended(&self) {
        self.consults_live.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn consults_live(&self) -> u32 {
        self.consults_live.load(Ordering::Relaxed).max(0) as u32
    }

    /// A timed API call (failures are counted as errors by the caller).
    pub fn api(&self, endpoint: &'static str, us: u64) {
        let now = self.now_s();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.api.push(ApiCall {
            t_s: now,
            endpoint,
            us,
        });
        Self::with_second(&mut inner, now, |s| {
            let _ = s.api.record(us.clamp(1, 60_000_000));
        });
    }

    pub fn upload(&self, us: u64) {
        let now = self.now_s();
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .uploads
            .push((now, us));
    }

    pub fn error(&self, kind: &str) {
        let now = self.now_s();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.errors.entry(kind.to_string()).or_default() += 1;
        Self::with_second(&mut inner, now, |s| s.errors += 1);
    }

    /// Once a second: the gauges and the server's CPU and memory.
    pub fn gauge(&self, cpu_pct: f64, rss_mib: f64) {
        let now = self.now_s();
        let peers = self.peers_connected.load(Ordering::Relaxed).max(0) as u32;
        let consults = self.consults_live();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Self::with_second(&mut inner, now, |s| {
            s.server_cpu_pct = cpu_pct;
            s.server_rss_mib = rss_mib;
            s.peers_connected = peers;
            s.consults_live = consults;
        });
    }

    pub fn error_total(&self) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.errors.values().sum()
    }

    /// The timeline, one sample per second.
    pub fn timeline(&self) -> Vec<Sample> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| sample(i, s))
            .collect()
    }

    /// The second before the current one (for the progress line), without the whole timeline.
    pub fn last_complete_second(&self) -> Option<Sample> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let i = inner.seconds.len().checked_sub(2)?;
        Some(sample(i, &inner.seconds[i]))
    }
}

fn sample(i: usize, s: &Second) -> Sample {
    let lat = pcts(&s.latency);
    let api = pcts(&s.api);
    Sample {
        t_s: i as f64,
        consults_live: s.consults_live,
        peers_connected: s.peers_connected,
        media_pps: s.rx_packets as f64,
        latency_p50_ms: lat.p50,
        latency_p99_ms: lat.p99,
        loss: loss(s.seq[0].0 + s.seq[1].0, s.seq[0].1 + s.seq[1].1),
        api_rps: api.count as f64,
        api_p99_ms: api.p99,
        server_cpu_pct: s.server_cpu_pct,
        server_rss_mib: s.server_rss_mib,
        errors: s.errors,
    }
}

/// Fraction lost, 0 when nothing was expected.
pub fn loss(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        (expected.saturating_sub(received)) as f64 / expected as f64
    }
}

/// The CPU share and resident memory of a process, from /proc, between two calls.
pub struct ProcSampler {
    pid: u32,
    last: Option<(Instant, u64)>,
    ticks_per_s: f64,
}

impl ProcSampler {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            last: None,
            // USER_HZ is 100 on every Linux architecture this runs on.
            ticks_per_s: 100.0,
        }
    }

    fn ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the command name (which is in parentheses and may hold spaces).
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }

    pub fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// CPU percent (100 = one core) since the previous call.
    pub fn cpu_pct(&mut self) -> f64 {
        let now = Instant::now();
        let Some(t) = self.ticks() else { return 0.0 };
        let pct = match self.last {
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs <= 0.0 {
                    0.0
                } else {
                    (t.saturating_sub(before)) as f64 / self.ticks_per_s / secs * 100.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, t));
        pct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_into_seconds_and_loss_counts_deltas() {
        let m = Metrics::new(Instant::now());
        let mut t = PeerTally::default();
        for us in [500, 1000, 1500, 2000] {
            t.latency_us(us);
        }
        t.received(true, 1000);
        t.received(false, 80);
        t.sent(true);
        t.set_sequence_totals([(0, 0), (10, 9)]);
        t.join_ms = Some(120.0);
        m.merge(&mut t);
        t.set_sequence_totals([(0, 0), (20, 19)]);
        m.merge(&mut t);
        let timeline = m.timeline();
        assert_eq!(timeline.len(), 1);
        let s = &timeline[0];
        assert_eq!(s.media_pps, 2.0);
        // 20 expected over both windows, 19 received.
        assert!((s.loss - 0.05).abs() < 1e-9, "{}", s.loss);
        assert!(s.latency_p99_ms >= 1.99 && s.latency_p99_ms <= 2.01);
        assert_eq!(
            m.inner.lock().unwrap().joins.len(),
            1,
            "a join is reported once"
        );
    }

    #[test]
    fn this_process_has_cpu_and_memory_in_proc() {
        let mut p = ProcSampler::new(std::process::id());
        assert!(p.rss_mib() > 0.0);
        p.cpu_pct();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 200 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let pct = p.cpu_pct();
        assert!(pct > 30.0 && pct < 250.0, "{pct}");
    }
}
