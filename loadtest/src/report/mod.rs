//! The HTML report of a load test: one self-contained page (inline CSS and SVG, no script, no
//! external resources) for one run, or for several runs side by side with their plots overlaid.
//!
//! The page opens with the verdict (per target: the level it sustained and what stopped it, then
//! the ratios between targets), then one chart of p99 latency and loss against load for every
//! target together, then the tables and the other charts. A section with nothing to show is left
//! out. Charts are drawn with plotters ([`chart`]); [`load_chart`] is shared with other reports.

use crate::results::*;

mod chart;
mod plots;
mod tables;
#[cfg(test)]
mod tests;
mod verdict;

pub use chart::{Curve, load_chart};
pub use chart::{Line, line_chart};

use plots::{load_section, percentile_section, timeline_section};
use tables::{api_tables, capacity_table, errors_table, run_meta, summary_table};

/// Shown in place of a number that is not finite.
pub(super) const DASH: &str = "–";

pub(super) const STYLE: &str = "<style>
body{font-family:system-ui,sans-serif;color:#222;max-width:1440px;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.6rem}
h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{font-size:1.1rem;margin:1.2rem 0 .4rem}
h4{font-size:.95rem;margin:.8rem 0 .3rem}
section.verdict{background:#f6f8fb;border:1px solid #dbe2ea;border-radius:4px;padding:0 1.2rem .6rem}
section.verdict h2{margin-top:.8rem;border:0}
section.verdict li{margin:.35rem 0;line-height:1.45}
table{border-collapse:collapse;margin:.3rem 0 1rem;font-size:.88rem}
th,td{padding:.2rem .6rem;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
th{background:#f4f4f4;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:600}
.ok{color:#2a7d2a;font-weight:600}.bad{color:#c0392b;font-weight:600}.muted{color:#777}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
svg.plot{display:block;max-width:100%;height:auto;border:1px solid #e4e4e4;background:#fff}
</style>
";

/// The HTML report of one run, or of several runs side by side (e.g. our SFU, Janus, raw UDP
/// relay measured in the same session).
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

    out.push_str(&verdict::verdict(runs, &labels));
    out.push_str(&load_section(runs, &labels));
    out.push_str(&per_run("Capacity search", runs, &labels, |run| {
        run.capacity
            .as_ref()
            .map(capacity_table)
            .unwrap_or_default()
    }));
    out.push_str(&per_run("Summary by phase", runs, &labels, summary_table));
    out.push_str(&per_run("API latency", runs, &labels, api_tables));
    out.push_str(&per_run("Errors by kind", runs, &labels, errors_table));
    out.push_str(&timeline_section(runs, &labels));
    out.push_str(&percentile_section(runs, &labels));
    out.push_str(&per_run("Runs", runs, &labels, run_meta));
    out.push_str("</body>\n</html>\n");
    out
}

/// A section of one part per run (headed by the run's label when there are several); runs
/// whose part is empty are left out, and the whole section when all are.
fn per_run(
    title: &str,
    runs: &[RunResult],
    labels: &[String],
    part: impl Fn(&RunResult) -> String,
) -> String {
    let mut body = String::new();
    for (run, label) in runs.iter().zip(labels) {
        let text = part(run);
        if text.is_empty() {
            continue;
        }
        if runs.len() > 1 {
            body.push_str(&format!("<h3>{}</h3>\n", escape(label)));
        }
        body.push_str(&text);
    }
    if body.is_empty() {
        return body;
    }
    format!("<h2>{}</h2>\n{body}", escape(title))
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

/// At most `n` characters of `s`, with an ellipsis when cut.
pub(super) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{head}…")
    }
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
