use std::collections::BTreeMap;

use super::svg::*;
use super::*;

/// True when `html` holds a token a non-finite float prints as.
fn has_non_finite(html: &str) -> bool {
    html.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|token| token == "NaN" || token == "inf" || token == "infinity")
}

fn pcts(p50: f64) -> Pcts {
    Pcts {
        count: 120,
        p50,
        p95: p50 * 1.8,
        p99: p50 * 2.6,
        max: p50 * 4.0,
    }
}

fn sample_run(target: &str, scale: f64, highest: u32) -> RunResult {
    let phases = [("warm-up", 5u32), ("ramp-20", 20), ("peak-40", 40)]
        .into_iter()
        .enumerate()
        .map(|(i, (name, consults))| {
            let level = i as f64 + 1.0;
            let mut api_ms = BTreeMap::new();
            api_ms.insert("GET /api/v1/appointments".to_string(), pcts(6.0 * scale));
            api_ms.insert("POST /api/v1/intake".to_string(), pcts(14.0 * level));
            PhaseResult {
                name: name.to_string(),
                consults,
                start_s: i as f64 * 60.0,
                end_s: level * 60.0,
                join_ms: pcts(180.0 * scale),
                media_latency_ms: pcts(8.0 * level * scale),
                audio_loss: 0.0005 * level,
                video_loss: 0.001 * level,
                forwarded_pps: 1500.0 * f64::from(consults),
                api_ms,
                upload_ms: pcts(95.0),
                server_cpu_pct: 30.0 * level,
                server_rss_mib: 80.0 + 10.0 * level,
                errors: i as u64,
            }
        })
        .collect();
    let timeline = (0u32..20)
        .map(|t| Sample {
            t_s: f64::from(t),
            consults_live: t * 2,
            peers_connected: t * 4,
            media_pps: 1500.0 * f64::from(t) * scale,
            latency_p50_ms: 5.0 + f64::from(t) * scale,
            latency_p99_ms: 12.0 + 2.0 * f64::from(t) * scale,
            loss: if t % 7 == 0 { 0.004 } else { 0.0 },
            api_rps: 25.0,
            api_p99_ms: 40.0,
            server_cpu_pct: 3.0 * f64::from(t),
            server_rss_mib: 90.0,
            errors: u64::from(t % 5 == 0),
        })
        .collect();
    let steps = [10u32, 20, 40, 60]
        .into_iter()
        .map(|consults| {
            let p99 = 2.0 * f64::from(consults) * scale;
            CapacityStep {
                consults,
                forwarded_pps: 1500.0 * f64::from(consults),
                latency_p99_ms: p99,
                loss: 0.001,
                server_cpu_pct: 2.0 * f64::from(consults),
                ok: p99 <= 100.0,
            }
        })
        .collect();
    RunResult {
        scenario: "busy-morning".to_string(),
        target: target.to_string(),
        started_at: "2025-03-01T08:00:00Z".to_string(),
        duration_s: 180.0,
        phases,
        timeline,
        errors: BTreeMap::from([("api_5xx".to_string(), 3), ("media_timeout".to_string(), 1)]),
        capacity: Some(Capacity {
            latency_limit_ms: 100.0,
            loss_limit: 0.01,
            steps,
            highest_sustained: highest,
            stopped_because: "p99 above the latency limit".to_string(),
        }),
        notes: BTreeMap::from([("machine".to_string(), "8 cores".to_string())]),
    }
}

#[test]
fn two_runs_render_every_section() {
    let runs = [sample_run("clinic", 1.0, 40), sample_run("janus", 1.3, 37)];
    let html = html(&runs);
    assert!(html.matches("<svg").count() >= 6);
    for phase in ["warm-up", "ramp-20", "peak-40"] {
        assert!(html.contains(phase), "missing phase {phase}");
    }
    assert!(html.contains("clinic") && html.contains("janus"));
    assert!(html.contains("<strong>40 consults</strong>"));
    assert!(html.contains("<strong>37 consults</strong>"));
    assert!(html.contains("Load test: busy-morning"));
    assert!(html.contains("GET /api/v1/appointments"));
    assert!(html.contains("media_timeout"));
    assert!(html.contains("stroke-dasharray=\"6 4\""));
    assert!(!has_non_finite(&html));
}

#[test]
fn empty_input_renders() {
    let html = html(&[RunResult::default()]);
    assert!(html.contains("no errors"));
    assert!(!has_non_finite(&html));
    let none = super::html(&[]);
    assert!(none.contains("No runs."));
}

#[test]
fn non_finite_and_zero_values_stay_out_of_the_svg() {
    let mut run = sample_run("relay", 1.0, 0);
    for sample in &mut run.timeline {
        sample.latency_p99_ms = f64::NAN;
        sample.media_pps = 0.0;
        sample.server_rss_mib = f64::INFINITY;
    }
    if let Some(phase) = run.phases.first_mut() {
        phase.media_latency_ms.p99 = f64::NEG_INFINITY;
        phase.server_cpu_pct = f64::NAN;
    }
    if let Some(cap) = &mut run.capacity {
        cap.latency_limit_ms = f64::NAN;
    }
    let html = html(&[run]);
    assert!(!has_non_finite(&html));
}

#[test]
fn empty_and_flat_plots_have_finite_axes() {
    let plot = |points: Vec<(f64, f64)>| {
        line_plot(&LinePlot {
            title: "t",
            x_title: "x",
            y_title: "y",
            series: vec![Series {
                label: "s".to_string(),
                colour: colour(0),
                dash: None,
                points,
                markers: false,
            }],
            hlines: Vec::new(),
        })
    };
    let empty = plot(Vec::new());
    assert!(empty.contains("no data"));
    assert!(!has_non_finite(&empty));
    let flat = plot(vec![(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)]);
    assert!(flat.contains("<polyline"));
    assert!(!has_non_finite(&flat));
}

#[test]
fn axis_ticks_are_round() {
    let axis = Axis::new(0.0, 37.0);
    let labels: Vec<String> = axis.ticks.iter().map(|&t| axis.label(t)).collect();
    assert_eq!(labels, ["0", "10", "20", "30", "40"]);
    let small = Axis::new(0.0, 0.9);
    assert_eq!(small.label(0.2), "0.2");
    let big = Axis::new(0.0, 45_000.0);
    assert_eq!(big.label(20_000.0), "20k");
    let flat = Axis::new(0.0, 0.0);
    assert!(flat.hi > flat.lo);
}

#[test]
fn notes_are_escaped() {
    let mut run = RunResult::default();
    run.notes.insert(
        "comment".to_string(),
        "<script>alert('x')</script>".to_string(),
    );
    let html = html(&[run]);
    assert!(!html.contains("<script>"));
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert_eq!(escape("a&b\"c"), "a&amp;b&quot;c");
}
