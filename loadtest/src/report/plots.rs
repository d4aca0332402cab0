//! The report's plots: latency and loss against load (every target together), quantities over
//! time, latency percentile bars. Drawn by [`super::chart`]; run `r` has colour `r` in each.

use super::chart::{Bars, bar_chart};
use super::verdict::phase_loss;
use super::*;

/// Title of the combined load chart (the first chart of every report that has one).
pub(super) const LOAD_TITLE: &str = "p99 media latency and loss against load";

/// One curve per run (empty curves kept, so run `r` keeps colour `r`): the capacity steps of a
/// capacity run, else its phases (loss: the larger of audio and video loss), by increasing load.
pub(super) fn load_curves(runs: &[RunResult], labels: &[String]) -> Vec<Curve> {
    runs.iter()
        .zip(labels)
        .map(|(run, label)| {
            let mut points: Vec<(f64, f64, f64)> = match &run.capacity {
                Some(cap) if !cap.steps.is_empty() => cap
                    .steps
                    .iter()
                    .map(|s| (f64::from(s.consults), s.latency_p99_ms, s.loss))
                    .collect(),
                _ => run
                    .phases
                    .iter()
                    .filter(|p| p.media_latency_ms.count > 0 || p.media_latency_ms.p99 > 0.0)
                    .map(|p| (f64::from(p.consults), p.media_latency_ms.p99, phase_loss(p)))
                    .collect(),
            };
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Curve {
                label: label.clone(),
                points,
            }
        })
        .collect()
}

/// The combined load chart and a line on what it shows; empty when no run has a level with a
/// finite latency or loss.
pub(super) fn load_section(runs: &[RunResult], labels: &[String]) -> String {
    let curves = load_curves(runs, labels);
    let any = curves
        .iter()
        .flat_map(|c| &c.points)
        .any(|&(x, y, l)| x.is_finite() && (y.is_finite() || l.is_finite()));
    if !any {
        return String::new();
    }
    let caps: Vec<&Capacity> = runs.iter().filter_map(|r| r.capacity.as_ref()).collect();
    let latency_limit = caps.first().map(|c| c.latency_limit_ms);
    let loss_limit = caps.first().map(|c| c.loss_limit);
    let mut s = String::from("<h2>Latency and loss against load</h2>\n");
    s.push_str(&load_chart(
        LOAD_TITLE,
        "concurrent consults",
        &curves,
        latency_limit,
        loss_limit,
    ));
    let mut notes = Vec::new();
    if !caps.is_empty() {
        notes.push("capacity runs: one point per level of the search");
    }
    if runs.iter().any(|r| r.capacity.is_none()) {
        notes.push("scenario runs: one point per phase, loss the larger of audio and video loss");
    }
    if !caps.is_empty() {
        notes.push("dashed: the capacity search's limits");
    }
    let differ = caps.iter().any(|c| {
        c.latency_limit_ms.to_bits() != caps[0].latency_limit_ms.to_bits()
            || c.loss_limit.to_bits() != caps[0].loss_limit.to_bits()
    });
    if differ {
        notes.push("the runs' limits differ: the first run's are drawn");
    }
    let mut caption = notes.join("; ");
    if let Some(first) = caption.get(..1) {
        caption = format!("{}{}", first.to_uppercase(), &caption[1..]);
    }
    s.push_str(&format!("<p class=\"muted\">{caption}.</p>\n"));
    s
}

/// One quantity of a [`Sample`] drawn over time.
struct Metric {
    name: &'static str,
    dashed: bool,
    value: fn(&Sample) -> f64,
}

/// One plot over time: its title, y-axis title and the quantities it draws.
struct TimelinePlot {
    title: &'static str,
    y_title: &'static str,
    metrics: Vec<Metric>,
}

/// A solid-line quantity.
fn metric(name: &'static str, value: fn(&Sample) -> f64) -> Metric {
    Metric {
        name,
        dashed: false,
        value,
    }
}

/// The plots over time.
fn timeline_specs() -> Vec<TimelinePlot> {
    vec![
        TimelinePlot {
            title: "Media latency",
            y_title: "latency (ms)",
            metrics: vec![
                metric("p50", |s: &Sample| s.latency_p50_ms),
                Metric {
                    name: "p99",
                    dashed: true,
                    value: |s: &Sample| s.latency_p99_ms,
                },
            ],
        },
        TimelinePlot {
            title: "Media loss",
            y_title: "loss (%)",
            metrics: vec![metric("loss", |s: &Sample| s.loss * 100.0)],
        },
        TimelinePlot {
            title: "Media packets forwarded",
            y_title: "packets/s",
            metrics: vec![metric("pkt/s", |s: &Sample| s.media_pps)],
        },
        TimelinePlot {
            title: "Consults live",
            y_title: "consults",
            metrics: vec![metric("consults", |s: &Sample| f64::from(s.consults_live))],
        },
        TimelinePlot {
            title: "API requests",
            y_title: "requests/s",
            metrics: vec![metric("req/s", |s: &Sample| s.api_rps)],
        },
        TimelinePlot {
            title: "API latency p99",
            y_title: "p99 latency (ms)",
            metrics: vec![metric("p99", |s: &Sample| s.api_p99_ms)],
        },
        TimelinePlot {
            title: "Server CPU",
            y_title: "CPU (%, 100 = one core)",
            metrics: vec![metric("CPU", |s: &Sample| s.server_cpu_pct)],
        },
        TimelinePlot {
            title: "Server memory",
            y_title: "RSS (MiB)",
            metrics: vec![metric("RSS", |s: &Sample| s.server_rss_mib)],
        },
    ]
}

/// The plots over time, every run overlaid (run `r` in colour `r`, a plot's second quantity
/// dashed). A plot whose quantities are zero or missing throughout is left out, and named in
/// one line. Empty when no run has timeline samples.
pub(super) fn timeline_section(runs: &[RunResult], labels: &[String]) -> String {
    if runs.iter().all(|run| run.timeline.is_empty()) {
        return String::new();
    }
    let mut plots = String::new();
    let mut zero = Vec::new();
    for spec in timeline_specs() {
        let shows_something = runs.iter().flat_map(|run| &run.timeline).any(|sample| {
            spec.metrics.iter().any(|m| {
                let v = (m.value)(sample);
                v.is_finite() && v != 0.0
            })
        });
        if !shows_something {
            zero.push(spec.title);
            continue;
        }
        let mut lines = Vec::new();
        for (r, (run, label)) in runs.iter().zip(labels).enumerate() {
            if run.timeline.is_empty() {
                continue;
            }
            for metric in &spec.metrics {
                lines.push(Line {
                    label: if spec.metrics.len() == 1 {
                        label.clone()
                    } else {
                        format!("{label} {}", metric.name)
                    },
                    colour: r,
                    dashed: metric.dashed,
                    points: run
                        .timeline
                        .iter()
                        .map(|sample| (sample.t_s, (metric.value)(sample)))
                        .collect(),
                });
            }
        }
        plots.push_str(&line_chart(spec.title, "time (s)", spec.y_title, &lines));
    }
    let mut s = String::new();
    if !plots.is_empty() {
        s.push_str("<h2>Over time</h2>\n<div class=\"plots\">\n");
        s.push_str(&plots);
        s.push_str("</div>\n");
    }
    if !zero.is_empty() {
        let noun = if plots.is_empty() {
            "Over time"
        } else {
            "Left out"
        };
        s.push_str(&format!(
            "<p class=\"muted\">{noun}: {} stayed at zero throughout.</p>\n",
            escape(&zero.join(", "))
        ));
    }
    s
}

/// Opacity of percentile `k` (0 = p50, 1 = p95, 2 = p99) of a run.
fn bar_opacity(k: usize) -> f64 {
    match k {
        0 => 0.35,
        1 => 0.65,
        _ => 1.0,
    }
}

/// Grouped bars: for each phase (by name, in order of first appearance) that received media,
/// media latency p50, p95 and p99 of every run that has it. Empty when no phase received media.
pub(super) fn percentile_section(runs: &[RunResult], labels: &[String]) -> String {
    let has_media = |p: &PhaseResult| p.media_latency_ms.count > 0;
    let mut names: Vec<String> = Vec::new();
    for phase in runs
        .iter()
        .flat_map(|run| &run.phases)
        .filter(|p| has_media(p))
    {
        if !names.contains(&phase.name) {
            names.push(phase.name.clone());
        }
    }
    if names.is_empty() {
        return String::new();
    }
    let mut bars = Vec::new();
    for (r, (run, label)) in runs.iter().zip(labels).enumerate() {
        if !run.phases.iter().any(has_media) {
            continue;
        }
        for (k, pct_name) in ["p50", "p95", "p99"].into_iter().enumerate() {
            let values = names
                .iter()
                .map(|name| {
                    run.phases
                        .iter()
                        .find(|p| &p.name == name && has_media(p))
                        .map_or(f64::NAN, |p| {
                            let m = &p.media_latency_ms;
                            [m.p50, m.p95, m.p99][k]
                        })
                })
                .collect();
            bars.push(Bars {
                label: format!("{label} {pct_name}"),
                colour: r,
                opacity: bar_opacity(k),
                values,
            });
        }
    }
    let mut s =
        String::from("<h2>Media latency percentiles per phase</h2>\n<div class=\"plots\">\n");
    s.push_str(&bar_chart(
        "Media latency percentiles per phase",
        "phase",
        "media latency (ms)",
        &names,
        &bars,
    ));
    s.push_str("</div>\n");
    s
}
