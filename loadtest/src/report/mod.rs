//! The HTML report of a load test: one self-contained page (inline CSS and SVG, no script, no
//! external resources) for one run, or for several runs side by side with their plots overlaid.

use crate::results::*;

mod plots;
mod svg;
mod tables;
#[cfg(test)]
mod tests;

use plots::{capacity_section, percentile_bars, timeline_plots};
use tables::{api_tables, errors_table, run_meta, summary_table};

/// Series colours (Tableau 10). With several runs, a run keeps its colour in every plot.
pub(super) const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// The latency-limit line of a capacity plot with a single run.
pub(super) const LIMIT_COLOUR: &str = "#c0392b";

/// Shown in place of a number that is not finite.
pub(super) const DASH: &str = "–";

pub(super) const STYLE: &str = "<style>
body{font-family:system-ui,sans-serif;color:#222;max-width:1440px;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.6rem}
h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{font-size:1.1rem;margin:1.2rem 0 .4rem}
h4{font-size:.95rem;margin:.8rem 0 .3rem}
table{border-collapse:collapse;margin:.3rem 0 1rem;font-size:.88rem}
th,td{padding:.2rem .6rem;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
th{background:#f4f4f4;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:600}
.ok{color:#2a7d2a}.bad{color:#c0392b}.muted{color:#777}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
svg.plot{max-width:100%;height:auto;border:1px solid #e4e4e4;background:#fff}
svg .title{font-size:14px;font-weight:600;fill:#222}
svg .tick{font-size:11px;fill:#555}
svg .axis-title{font-size:12px;fill:#333}
svg .legend{font-size:11px;fill:#333}
svg .grid{stroke:#ececec}
svg .axis{stroke:#888}
</style>
";

/// The HTML report of one run, or of several runs side by side (e.g. our SFU, Janus, raw UDP relay measured in the same session).
pub fn html(runs: &[RunResult]) -> String {
    let labels = run_labels(runs);
    let title = format!("Load test: {}", scenario_names(runs));
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(&format!("<title>{}</title>\n", escape(&title)));
    out.push_str(STYLE);
    out.push_str("</head>\n<body>\n");
    out.push_str(&format!("<h1>{}</h1>\n", escape(&title)));
    if runs.is_empty() {
        out.push_str("<p class=\"muted\">No runs.</p>\n</body>\n</html>\n");
        return out;
    }

    out.push_str("<h2>Runs</h2>\n");
    for (run, label) in runs.iter().zip(&labels) {
        out.push_str(&run_meta(run, label));
    }
    out.push_str("<h2>Summary by phase</h2>\n");
    for (run, label) in runs.iter().zip(&labels) {
        out.push_str(&format!("<h3>{}</h3>\n", escape(label)));
        out.push_str(&summary_table(run));
    }
    out.push_str("<h2>API latency</h2>\n");
    for (run, label) in runs.iter().zip(&labels) {
        out.push_str(&format!("<h3>{}</h3>\n", escape(label)));
        out.push_str(&api_tables(run));
    }
    out.push_str("<h2>Errors by kind</h2>\n");
    for (run, label) in runs.iter().zip(&labels) {
        out.push_str(&format!("<h3>{}</h3>\n", escape(label)));
        out.push_str(&errors_table(run));
    }
    out.push_str("<h2>Over time</h2>\n");
    out.push_str(&timeline_plots(runs, &labels));
    out.push_str("<h2>Media latency percentiles per phase</h2>\n");
    out.push_str(&percentile_bars(runs, &labels));
    out.push_str(&capacity_section(runs, &labels));
    out.push_str("</body>\n</html>\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Text and numbers

/// Escapes text for HTML element content and attribute values.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// `v` with `prec` decimals, or a dash when it is not finite.
pub(super) fn num(v: f64, prec: usize) -> String {
    if v.is_finite() {
        let v = v + 0.0; // -0.0 → 0.0
        format!("{v:.prec$}")
    } else {
        DASH.to_string()
    }
}

/// Milliseconds.
pub(super) fn ms(v: f64) -> String {
    num(v, 1)
}

/// A fraction (0..1) as a percentage.
pub(super) fn pct(fraction: f64) -> String {
    num(fraction * 100.0, 2)
}

/// Seconds as `12.3 s` or `4 min 05 s`.
pub(super) fn duration(s: f64) -> String {
    if !s.is_finite() {
        return DASH.to_string();
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let total = s.round() as u64;
    let (min, sec) = (total / 60, total % 60);
    format!("{min} min {sec:02} s")
}

/// An SVG coordinate (finite, one decimal).
pub(super) fn coord(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}", v + 0.0)
    } else {
        "0".to_string()
    }
}

/// `v`, or 0 when it is not finite.
pub(super) fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// At most `n` characters of `s`, with an ellipsis when cut.
pub(super) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{head}…")
    }
}

/// The colour of series `i`.
pub(super) fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// The distinct scenario names of the runs, or `(unnamed)`.
pub(super) fn scenario_names(runs: &[RunResult]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for run in runs {
        let name = run.scenario.trim();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        "(unnamed)".to_string()
    } else {
        names.join(", ")
    }
}

/// A label per run: its target, `run N` when it has none, with `#N` appended to repeated targets.
pub(super) fn run_labels(runs: &[RunResult]) -> Vec<String> {
    let base: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| {
            let target = run.target.trim();
            if target.is_empty() {
                format!("run {}", i + 1)
            } else {
                target.to_string()
            }
        })
        .collect();
    base.iter()
        .enumerate()
        .map(|(i, label)| {
            if base.iter().filter(|other| *other == label).count() > 1 {
                let nth = base.iter().take(i).filter(|other| *other == label).count() + 1;
                format!("{label} #{nth}")
            } else {
                label.clone()
            }
        })
        .collect()
}
