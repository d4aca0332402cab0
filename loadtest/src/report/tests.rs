use std::collections::BTreeMap;

use super::chart::tick;
use super::plots::LOAD_TITLE;
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

/// The first index of `needle` in `html`, failing the test when it is missing.
fn at(html: &str, needle: &str) -> usize {
    html.find(needle)
        .unwrap_or_else(|| panic!("missing {needle:?}"))
}

/// The `<svg>` elements of `html`, in order.
fn svgs(html: &str) -> Vec<&str> {
    html.match_indices("<svg")
        .map(|(i, _)| {
            let end = html[i..].find("</svg>").map_or(html.len(), |e| i + e + 6);
            &html[i..end]
        })
        .collect()
}

/// A text element with exactly `text` as plotters writes it.
fn svg_text(text: &str) -> String {
    format!(">\n{text}\n</text>")
}

/// A scenario run (no capacity search) of `sample_run`, with no errors.
fn scenario_run(target: &str) -> RunResult {
    let mut run = sample_run(target, 1.0, 0);
    run.capacity = None;
    run.errors.clear();
    for phase in &mut run.phases {
        phase.errors = 0;
    }
    run
}

/// A capacity run that made no API calls or uploads and had no errors.
fn capacity_run_without_api(target: &str, scale: f64, highest: u32) -> RunResult {
    let mut run = sample_run(target, scale, highest);
    run.errors.clear();
    for phase in &mut run.phases {
        phase.api_ms.clear();
        phase.upload_ms = Pcts::default();
        phase.errors = 0;
    }
    for sample in &mut run.timeline {
        sample.api_rps = 0.0;
        sample.api_p99_ms = 0.0;
        sample.errors = 0;
    }
    run
}

#[test]
fn verdict_comes_before_the_first_table_and_chart() {
    let runs = [
        sample_run("clinic", 1.0, 40),
        sample_run("janus", 1.3, 37),
        sample_run("relay", 0.2, 60),
    ];
    let html = html(&runs);
    let verdict = at(&html, "<h2>Verdict</h2>");
    assert!(verdict < at(&html, "<table"));
    assert!(verdict < at(&html, "<svg"));
    for (target, level) in [("clinic", 40), ("janus", 37), ("relay", 60)] {
        let sentence =
            format!("<strong>{target}</strong>: sustained <strong>{level} consults</strong>");
        assert!(at(&html, &sentence) < at(&html, "<table"), "{target}");
    }
    assert!(html.contains("within p99 ≤ 100.0 ms and loss ≤ 1.00 %"));
    assert!(html.contains("stopped because p99 above the latency limit"));
    assert!(html.contains(
        "<strong>clinic</strong> ÷ <strong>janus</strong>: <strong>1.08×</strong> (40 ÷ 37 consults)"
    ));
    assert!(html.contains(
        "<strong>clinic</strong> ÷ <strong>relay</strong>: <strong>0.67×</strong> (40 ÷ 60 consults)"
    ));
    assert!(at(&html, "class=\"ratios\"") < at(&html, "<table"));
    assert!(!has_non_finite(&html));
}

#[test]
fn exactly_one_load_chart_comes_first_with_every_target() {
    let runs = [
        sample_run("clinic", 1.0, 40),
        sample_run("janus", 1.3, 37),
        sample_run("relay", 0.2, 60),
    ];
    let html = html(&runs);
    let label = format!("aria-label=\"{LOAD_TITLE}\"");
    assert_eq!(html.matches(&label).count(), 1);
    let all = svgs(&html);
    let first = all.first().copied().unwrap_or_default();
    assert!(first.contains(&label), "the first chart is the load chart");
    assert!(at(&html, &label) < at(&html, "<table"));
    for target in ["clinic", "janus", "relay"] {
        assert!(first.contains(&svg_text(target)), "legend {target}");
    }
    assert!(first.contains(&svg_text("p99 latency (ms)")));
    assert!(first.contains(&svg_text("loss (%)")));
    assert!(first.contains(&svg_text("concurrent consults")));
    assert!(first.contains(&svg_text("p99 limit 100 ms")));
    assert!(first.contains(&svg_text("loss limit 1 %")));
    // Four levels per target, a dot in each panel, one more in each legend entry.
    assert_eq!(first.matches("<circle").count(), 3 * 4 * 2 + 3);
    // The other charts follow: over time and the percentile bars.
    assert!(all.len() >= 8, "{} charts", all.len());
    assert!(html.contains("aria-label=\"Media latency percentiles per phase\""));
}

#[test]
fn capacity_run_without_api_calls_prints_no_empty_sections() {
    let html = html(&[capacity_run_without_api("clinic", 1.0, 40)]);
    for placeholder in [
        "No API",
        "No phases",
        "No notes",
        "No steps",
        "No timeline",
        "no errors",
        "no data",
    ] {
        assert!(!html.contains(placeholder), "placeholder {placeholder:?}");
    }
    for empty in ["<h2>API latency</h2>", "<h2>Errors by kind</h2>", "<h4>"] {
        assert!(!html.contains(empty), "empty section {empty}");
    }
    assert!(!html.contains("aria-label=\"API requests\""));
    assert!(!html.contains("aria-label=\"API latency p99\""));
    assert!(html.contains("Left out: API requests, API latency p99 stayed at zero throughout."));
    assert!(html.contains("<h2>Capacity search</h2>"));
    assert!(html.contains("<h2>Summary by phase</h2>"));
    // One run: no per-run headings.
    assert!(!html.contains("<h3>"));
}

#[test]
fn api_tables_only_for_phases_with_calls() {
    let mut run = sample_run("clinic", 1.0, 40);
    if let Some(phase) = run.phases.first_mut() {
        phase.api_ms.clear();
        phase.upload_ms = Pcts::default();
    }
    let html = html(&[run, capacity_run_without_api("janus", 1.3, 37)]);
    assert_eq!(html.matches("<h4>").count(), 2);
    assert!(!html.contains("<h4>warm-up</h4>"));
    let api = at(&html, "<h2>API latency</h2>");
    let next = api + at(&html[api + 1..], "<h2>");
    assert!(html[api..next].contains("<h3>clinic</h3>"));
    assert!(!html[api..next].contains("<h3>janus</h3>"));
}

#[test]
fn scenario_runs_say_whether_they_ran_clean() {
    let clean = html(&[scenario_run("clinic")]);
    assert!(clean.contains(
        "<strong>clinic</strong>: <span class=\"ok\">ran clean</span>: no errors, every peer got \
         media; peak <strong>40 consults</strong> (p99 62.4 ms, loss 0.30 %)."
    ));
    assert!(at(&clean, "ran clean") < at(&clean, "<table"));
    assert!(clean.contains(&format!("aria-label=\"{LOAD_TITLE}\"")));

    let mut failed = scenario_run("janus");
    failed.errors.insert("media_timeout".to_string(), 2);
    let both = html(&[scenario_run("clinic"), failed]);
    assert!(both.contains(
        "<strong>janus</strong>: <span class=\"bad\">not clean</span>: 2 errors (media_timeout 2); \
         2 peers got no media; peak <strong>40 consults</strong>"
    ));
    assert!(
        both.contains(
            "<strong>clinic</strong> ÷ <strong>janus</strong>: – (janus did not run clean)"
        )
    );
}

#[test]
fn load_chart_takes_zero_one_and_three_curves() {
    let none = load_chart("t", "requests/s offered", &[], None, None);
    assert!(none.starts_with("<svg class=\"plot\""));
    assert!(none.contains(&svg_text("no data")));
    assert!(none.trim_end().ends_with("</svg>"));
    assert!(!none.contains("<?xml"));
    assert!(!has_non_finite(&none));

    let one = load_chart(
        "API",
        "requests/s offered",
        &[Curve {
            label: "clinic-api".to_string(),
            points: vec![(100.0, 4.0, 0.0), (200.0, 9.5, 0.002), (400.0, 80.0, 0.05)],
        }],
        Some(50.0),
        Some(0.01),
    );
    assert!(one.contains(&svg_text("clinic-api")));
    assert!(one.contains(&svg_text("requests/s offered")));
    assert!(one.contains(&svg_text("p99 limit 50 ms")));
    assert_eq!(one.matches("<circle").count(), 3 * 2 + 1);
    assert!(!has_non_finite(&one));

    let curve = |label: &str, points: Vec<(f64, f64, f64)>| Curve {
        label: label.to_string(),
        points,
    };
    let three = load_chart(
        "mixed",
        "consults",
        &[
            curve("a", vec![(1.0, f64::NAN, 0.0), (2.0, 3.0, f64::INFINITY)]),
            curve("b", vec![(f64::NEG_INFINITY, 1.0, 0.0), (3.0, 1e300, 0.5)]),
            curve("c", Vec::new()),
        ],
        Some(f64::NAN),
        Some(f64::INFINITY),
    );
    for label in ["a", "b", "c"] {
        assert!(three.contains(&svg_text(label)), "legend {label}");
    }
    // a: one latency point and one loss point; b: one loss point (1e300 ms is not plottable).
    assert_eq!(three.matches("<circle").count(), (1 + 1) + 1 + 3);
    assert!(!three.contains(&svg_text("limit")));
    assert!(!has_non_finite(&three));
}

#[test]
fn line_chart_skips_non_finite_points() {
    let chart = line_chart(
        "Server CPU",
        "time (s)",
        "CPU (%)",
        &[
            Line {
                label: "clinic".to_string(),
                colour: 0,
                dashed: false,
                points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)],
            },
            Line {
                label: "janus".to_string(),
                colour: 1,
                dashed: true,
                points: vec![(f64::INFINITY, 1.0)],
            },
        ],
    );
    assert!(chart.contains(&svg_text("clinic")) && chart.contains(&svg_text("janus")));
    assert!(chart.contains("<polyline"));
    assert!(!has_non_finite(&chart));
    let empty = line_chart("e", "x", "y", &[]);
    assert!(empty.contains(&svg_text("no data")));
}

#[test]
fn tick_labels_are_short() {
    assert_eq!(tick(&20_000.0), "20k");
    assert_eq!(tick(&2_500_000.0), "2.5M");
    assert_eq!(tick(&0.2), "0.2");
    assert_eq!(tick(&(0.1 + 0.2)), "0.3");
    assert_eq!(tick(&-0.0), "0");
    assert_eq!(tick(&40.0), "40");
}

#[test]
fn empty_input_renders() {
    let html = html(&[RunResult::default()]);
    assert!(html.contains("<strong>run 1</strong>: nothing measured (no phases recorded)."));
    assert!(!html.contains("<svg"));
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
        if let Some(step) = cap.steps.first_mut() {
            step.latency_p99_ms = f64::INFINITY;
            step.loss = f64::NAN;
        }
    }
    let html = html(&[run]);
    assert!(html.contains("<strong>0 consults</strong>"));
    assert!(!has_non_finite(&html));
}

#[test]
fn page_is_self_contained() {
    let html = html(&[sample_run("clinic", 1.0, 40), sample_run("janus", 1.3, 37)]);
    assert!(!html.contains("<script"));
    assert!(!html.contains("<?xml"));
    for attr in ["href=", "src=", "url("] {
        assert!(!html.contains(attr), "external reference {attr}");
    }
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
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
