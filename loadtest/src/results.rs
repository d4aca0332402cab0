//! The result of a run: what `loadtest` writes as JSON and renders as the HTML report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Percentiles of one measured quantity (milliseconds unless the field says otherwise).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Pcts {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// One ramp phase of a scenario (a level of concurrent consults held for a while).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseResult {
    pub name: String,
    /// Consults meant to be live in this phase.
    pub consults: u32,
    /// Seconds since the run started.
    pub start_s: f64,
    pub end_s: f64,
    /// WebSocket connect → first remote media packet, per peer that joined in this phase.
    pub join_ms: Pcts,
    /// One-way latency through the SFU of every media packet received in this phase.
    pub media_latency_ms: Pcts,
    /// Fraction (0..1) of the packets sent in this phase that no subscriber received.
    pub audio_loss: f64,
    pub video_loss: f64,
    /// Media packets received by all peers per second (what the SFU forwarded).
    pub forwarded_pps: f64,
    /// API latency per endpoint (method and route template, e.g. `POST /api/v1/appointments`).
    pub api_ms: BTreeMap<String, Pcts>,
    /// Upload request sent → 201 (stored).
    pub upload_ms: Pcts,
    /// Server CPU (100 = one core) and resident memory, averaged over the phase.
    pub server_cpu_pct: f64,
    pub server_rss_mib: f64,
    pub errors: u64,
}

/// One second of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    pub consults_live: u32,
    pub peers_connected: u32,
    /// Media packets received by peers in this second.
    pub media_pps: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Fraction (0..1) of media packets sent in this second not received.
    pub loss: f64,
    pub api_rps: f64,
    pub api_p99_ms: f64,
    pub server_cpu_pct: f64,
    pub server_rss_mib: f64,
    pub errors: u64,
}

/// One level of the capacity search.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CapacityStep {
    pub consults: u32,
    pub forwarded_pps: f64,
    pub latency_p99_ms: f64,
    pub loss: f64,
    pub server_cpu_pct: f64,
    /// Within the limits (p99 ≤ the latency limit and loss ≤ the loss limit).
    pub ok: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Capacity {
    pub latency_limit_ms: f64,
    pub loss_limit: f64,
    pub steps: Vec<CapacityStep>,
    /// The highest level that stayed within the limits (0 if none did).
    pub highest_sustained: u32,
    /// Why the search stopped.
    pub stopped_because: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    /// What was measured: `clinic` (our SFU and API), `janus` (Janus VideoRoom) or `relay` (raw UDP).
    pub target: String,
    /// RFC 3339.
    pub started_at: String,
    pub duration_s: f64,
    pub phases: Vec<PhaseResult>,
    pub timeline: Vec<Sample>,
    /// Errors by kind (e.g. `join_refused`, `api_5xx`, `upload_failed`, `media_timeout`).
    pub errors: BTreeMap<String, u64>,
    pub capacity: Option<Capacity>,
    /// Free-form facts about the run (machine, versions, settings).
    pub notes: BTreeMap<String, String>,
}
