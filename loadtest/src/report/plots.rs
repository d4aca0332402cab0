//! The report's plots: metrics over time, latency percentile bars, capacity levels.

use super::svg::*;
use super::*;

/// One quantity of a [`Sample`] drawn over time.
pub(super) struct Metric {
    name: &'static str,
    dash: Option<&'static str>,
    value: fn(&Sample) -> f64,
}

/// One plot over time: its title, y-axis title and the quantities it draws.
pub(super) struct TimelinePlot {
    title: &'static str,
    y_title: &'static str,
    metrics: Vec<Metric>,
}

/// A solid-line quantity.
pub(super) fn metric(name: &'static str, value: fn(&Sample) -> f64) -> Metric {
    Metric {
        name,
        dash: None,
        value,
    }
}

/// The plots over time.
pub(super) fn timeline_specs() -> Vec<TimelinePlot> {
    vec![
        TimelinePlot {
            title: "Media latency",
            y_title: "latency (ms)",
            metrics: vec![
                metric("p50", |s: &Sample| s.latency_p50_ms),
                Metric {
                    name: "p99",
                    dash: Some("6 3"),
                    value: |s: &Sample| s.latency_p99_ms,
                },
            ],
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
        TimelinePlot {
            title: "Media loss",
            y_title: "loss (%)",
            metrics: vec![metric("loss", |s: &Sample| s.loss * 100.0)],
        },
    ]
}

/// The plots over time, every run overlaid. With one run, its quantities get distinct colours;
/// with several, each run has its colour and the quantities of a plot differ by dash.
pub(super) fn timeline_plots(runs: &[RunResult], labels: &[String]) -> String {
    if runs.iter().all(|run| run.timeline.is_empty()) {
        return "<p class=\"muted\">No timeline samples.</p>\n".to_string();
    }
    let single = runs.len() == 1;
    let mut s = String::from("<div class=\"plots\">\n");
    for spec in timeline_specs() {
        let mut series = Vec::new();
        for (r, (run, label)) in runs.iter().zip(labels).enumerate() {
            for (m, metric) in spec.metrics.iter().enumerate() {
                series.push(Series {
                    label: if spec.metrics.len() == 1 {
                        label.clone()
                    } else {
                        format!("{label} {}", metric.name)
                    },
                    colour: colour(if single { m } else { r }),
                    dash: metric.dash,
                    points: run
                        .timeline
                        .iter()
                        .map(|sample| (sample.t_s, (metric.value)(sample)))
                        .collect(),
                    markers: false,
                });
            }
        }
        s.push_str(&line_plot(&LinePlot {
            title: spec.title,
            x_title: "time (s)",
            y_title: spec.y_title,
            series,
            hlines: Vec::new(),
        }));
    }
    s.push_str("</div>\n");
    s
}

// ---------------------------------------------------------------------------------------------
// Percentile bars

/// Colour and opacity of the bar for percentile `k` (0 = p50, 1 = p95, 2 = p99) of run `r`.
pub(super) fn bar_style(single: bool, r: usize, k: usize) -> (&'static str, f64) {
    if single {
        (colour(k), 1.0)
    } else {
        let opacity = match k {
            0 => 0.4,
            1 => 0.7,
            _ => 1.0,
        };
        (colour(r), opacity)
    }
}

/// Grouped bars: for each phase (by name, in order of first appearance), media latency p50,
/// p95 and p99 of every run that has it.
pub(super) fn percentile_bars(runs: &[RunResult], labels: &[String]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for phase in runs.iter().flat_map(|run| &run.phases) {
        if !names.contains(&phase.name.as_str()) {
            names.push(&phase.name);
        }
    }
    if names.is_empty() {
        return "<p class=\"muted\">No phases.</p>\n".to_string();
    }
    let y_max = runs
        .iter()
        .flat_map(|run| &run.phases)
        .flat_map(|p| {
            let m = &p.media_latency_ms;
            [m.p50, m.p95, m.p99]
        })
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let ya = Axis::new(0.0, y_max);
    let f = FRAME;
    let single = runs.len() == 1;
    let group_w = (f.right - f.left) / names.len() as f64;
    let bar_w = group_w * 0.8 / (runs.len() * 3).max(1) as f64;
    let label_chars = ((group_w / 6.5) as usize).max(3);

    let mut s = String::from("<div class=\"plots\">\n");
    s.push_str(&svg_open("Media latency percentiles per phase"));
    s.push_str(&y_axis(&ya, "media latency (ms)"));
    for (g, name) in names.iter().enumerate() {
        let group_x = f.left + group_w * (g as f64 + 0.1);
        for (r, (run, label)) in runs.iter().zip(labels).enumerate() {
            let Some(phase) = run.phases.iter().find(|p| p.name == *name) else {
                continue;
            };
            let m = &phase.media_latency_ms;
            for (k, (pct_name, v)) in [("p50", m.p50), ("p95", m.p95), ("p99", m.p99)]
                .into_iter()
                .enumerate()
            {
                let (fill, opacity) = bar_style(single, r, k);
                let v = finite_or_zero(v).max(0.0);
                let top = f.y(&ya, v);
                let tip = format!("{label} · {name} · {pct_name}: {} ms", ms(v));
                s.push_str(&format!(
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\" \
                     fill-opacity=\"{}\"><title>{}</title></rect>\n",
                    coord(group_x + (r * 3 + k) as f64 * bar_w),
                    coord(top),
                    coord(bar_w * 0.9),
                    coord((f.bottom - top).max(0.0)),
                    num(opacity, 2),
                    escape(&tip)
                ));
            }
        }
        s.push_str(&format!(
            "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\"><title>{}</title>{}</text>\n",
            coord(f.left + group_w * (g as f64 + 0.5)),
            coord(f.bottom + 17.0),
            escape(name),
            escape(&truncate(name, label_chars))
        ));
    }
    s.push_str(&frame_lines());
    s.push_str(&x_title("phase"));
    let mut entries = Vec::new();
    for (r, label) in labels.iter().enumerate() {
        for (k, pct_name) in ["p50", "p95", "p99"].into_iter().enumerate() {
            let (colour, opacity) = bar_style(single, r, k);
            entries.push(LegendEntry {
                label: if single {
                    pct_name.to_string()
                } else {
                    format!("{label} {pct_name}")
                },
                colour,
                swatch: Swatch::Bar(opacity),
            });
        }
    }
    s.push_str(&legend(&entries));
    s.push_str("</svg>\n</div>\n");
    s
}

// ---------------------------------------------------------------------------------------------
// Capacity

/// The capacity search of one run: result, limits and steps.
pub(super) fn capacity_table(cap: &Capacity, label: &str) -> String {
    let stopped = if cap.stopped_because.trim().is_empty() {
        DASH.to_string()
    } else {
        escape(&cap.stopped_because)
    };
    let mut s = format!(
        "<h3>{}</h3>\n<p>Highest sustained level: <strong>{} consults</strong></p>\n\
         <p>Stopped because: {stopped}</p>\n\
         <p class=\"muted\">Limits: p99 ≤ {} ms, loss ≤ {} %</p>\n",
        escape(label),
        cap.highest_sustained,
        ms(cap.latency_limit_ms),
        pct(cap.loss_limit)
    );
    if cap.steps.is_empty() {
        s.push_str("<p class=\"muted\">No steps.</p>\n");
        return s;
    }
    s.push_str(
        "<table>\n<tr><th>consults</th><th>forwarded pkt/s</th><th>p99 (ms)</th>\
         <th>loss (%)</th><th>server CPU (%)</th><th>ok</th></tr>\n",
    );
    for step in &cap.steps {
        let ok = if step.ok {
            "<td class=\"ok\">✓</td>"
        } else {
            "<td class=\"bad\">✗</td>"
        };
        s.push_str(&format!(
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td>{ok}</tr>\n",
            step.consults,
            num(step.forwarded_pps, 0),
            ms(step.latency_p99_ms),
            pct(step.loss),
            num(step.server_cpu_pct, 1)
        ));
    }
    s.push_str("</table>\n");
    s
}

/// Every run's capacity search, then one plot of p99 latency against consults with each run's
/// latency limit dashed. Empty when no run has one.
pub(super) fn capacity_section(runs: &[RunResult], labels: &[String]) -> String {
    let with_capacity = runs.iter().filter(|run| run.capacity.is_some()).count();
    if with_capacity == 0 {
        return String::new();
    }
    let mut s = String::from("<h2>Capacity</h2>\n");
    let (mut series, mut hlines) = (Vec::new(), Vec::new());
    for (r, (run, label)) in runs.iter().zip(labels).enumerate() {
        let Some(cap) = &run.capacity else {
            continue;
        };
        s.push_str(&capacity_table(cap, label));
        let mut points: Vec<(f64, f64)> = cap
            .steps
            .iter()
            .map(|step| (f64::from(step.consults), step.latency_p99_ms))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push(Series {
            label: label.clone(),
            colour: colour(r),
            dash: None,
            points,
            markers: true,
        });
        let (limit_label, limit_colour) = if with_capacity == 1 {
            (
                format!("limit {} ms", ms(cap.latency_limit_ms)),
                LIMIT_COLOUR,
            )
        } else {
            (format!("{label} limit"), colour(r))
        };
        hlines.push(HLine {
            y: cap.latency_limit_ms,
            label: limit_label,
            colour: limit_colour,
        });
    }
    s.push_str("<div class=\"plots\">\n");
    s.push_str(&line_plot(&LinePlot {
        title: "p99 media latency vs consults",
        x_title: "concurrent consults",
        y_title: "p99 latency (ms)",
        series,
        hlines,
    }));
    s.push_str("</div>\n");
    s
}
