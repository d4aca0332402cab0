//! The HTML report of a load test: one self-contained page (inline CSS and SVG, no script, no
//! external resources) for one run, or for several runs side by side with their plots overlaid.

use crate::results::*;

/// Series colours (Tableau 10). With several runs, a run keeps its colour in every plot.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// The latency-limit line of a capacity plot with a single run.
const LIMIT_COLOUR: &str = "#c0392b";

/// Shown in place of a number that is not finite.
const DASH: &str = "–";

/// Size of every plot (SVG user units).
const W: f64 = 680.0;
const H: f64 = 300.0;

/// The plotting area inside a plot; the legend sits to its right.
const FRAME: Frame = Frame {
    left: 70.0,
    right: 510.0,
    top: 34.0,
    bottom: 252.0,
};

/// Height of one legend row.
const LEGEND_ROW: f64 = 18.0;

/// At most this many ticks on an axis (a guard; normal axes have about six).
const MAX_TICKS: f64 = 50.0;

const STYLE: &str = "<style>
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
fn escape(s: &str) -> String {
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
fn num(v: f64, prec: usize) -> String {
    if v.is_finite() {
        let v = v + 0.0; // -0.0 → 0.0
        format!("{v:.prec$}")
    } else {
        DASH.to_string()
    }
}

/// Milliseconds.
fn ms(v: f64) -> String {
    num(v, 1)
}

/// A fraction (0..1) as a percentage.
fn pct(fraction: f64) -> String {
    num(fraction * 100.0, 2)
}

/// Seconds as `12.3 s` or `4 min 05 s`.
fn duration(s: f64) -> String {
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
fn coord(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}", v + 0.0)
    } else {
        "0".to_string()
    }
}

/// `v`, or 0 when it is not finite.
fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// At most `n` characters of `s`, with an ellipsis when cut.
fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{head}…")
    }
}

/// The colour of series `i`.
fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// The distinct scenario names of the runs, or `(unnamed)`.
fn scenario_names(runs: &[RunResult]) -> String {
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
fn run_labels(runs: &[RunResult]) -> Vec<String> {
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

// ---------------------------------------------------------------------------------------------
// Tables

/// A table row: a text cell, then right-aligned (numeric) cells.
fn row(first: &str, cells: &[String]) -> String {
    let mut s = format!("<tr><td>{}</td>", escape(first));
    for cell in cells {
        s.push_str(&format!("<td class=\"n\">{}</td>", escape(cell)));
    }
    s.push_str("</tr>\n");
    s
}

/// Target, start, duration and notes of one run.
fn run_meta(run: &RunResult, label: &str) -> String {
    let or_dash = |s: &str| {
        if s.trim().is_empty() {
            DASH.to_string()
        } else {
            escape(s)
        }
    };
    let mut s = format!("<h3>{}</h3>\n<table>\n", escape(label));
    let facts = [
        ("target", or_dash(&run.target)),
        ("started at", or_dash(&run.started_at)),
        ("duration", duration(run.duration_s)),
        ("phases", run.phases.len().to_string()),
        ("timeline samples", run.timeline.len().to_string()),
    ];
    for (key, value) in facts {
        s.push_str(&format!("<tr><th>{key}</th><td>{value}</td></tr>\n"));
    }
    s.push_str("</table>\n");
    if run.notes.is_empty() {
        s.push_str("<p class=\"muted\">No notes.</p>\n");
    } else {
        s.push_str("<table>\n<tr><th>note</th><th>value</th></tr>\n");
        for (key, value) in &run.notes {
            s.push_str(&format!(
                "<tr><td>{}</td><td>{}</td></tr>\n",
                escape(key),
                escape(value)
            ));
        }
        s.push_str("</table>\n");
    }
    s
}

/// One row per phase: join and media latency, loss, throughput, server load, errors.
fn summary_table(run: &RunResult) -> String {
    if run.phases.is_empty() {
        return "<p class=\"muted\">No phases.</p>\n".to_string();
    }
    let mut s = String::from(
        "<table>\n<tr><th rowspan=\"2\">phase</th><th rowspan=\"2\">consults</th>\
         <th colspan=\"3\">join (ms)</th><th colspan=\"3\">media latency (ms)</th>\
         <th colspan=\"2\">loss (%)</th><th rowspan=\"2\">forwarded pkt/s</th>\
         <th rowspan=\"2\">server CPU (%)</th><th rowspan=\"2\">server RSS (MiB)</th>\
         <th rowspan=\"2\">errors</th></tr>\n\
         <tr><th>p50</th><th>p95</th><th>p99</th><th>p50</th><th>p95</th><th>p99</th>\
         <th>audio</th><th>video</th></tr>\n",
    );
    for p in &run.phases {
        let cells = [
            p.consults.to_string(),
            ms(p.join_ms.p50),
            ms(p.join_ms.p95),
            ms(p.join_ms.p99),
            ms(p.media_latency_ms.p50),
            ms(p.media_latency_ms.p95),
            ms(p.media_latency_ms.p99),
            pct(p.audio_loss),
            pct(p.video_loss),
            num(p.forwarded_pps, 0),
            num(p.server_cpu_pct, 1),
            num(p.server_rss_mib, 1),
            p.errors.to_string(),
        ];
        s.push_str(&row(&p.name, &cells));
    }
    s.push_str("</table>\n");
    s
}

/// Count, p50, p95, p99 and max of one quantity.
fn pcts_cells(p: &Pcts) -> [String; 5] {
    [
        p.count.to_string(),
        ms(p.p50),
        ms(p.p95),
        ms(p.p99),
        ms(p.max),
    ]
}

/// Per phase: API latency per endpoint, then upload → stored.
fn api_tables(run: &RunResult) -> String {
    if run.phases.is_empty() {
        return "<p class=\"muted\">No phases.</p>\n".to_string();
    }
    let mut s = String::new();
    for p in &run.phases {
        s.push_str(&format!("<h4>{}</h4>\n", escape(&p.name)));
        if p.api_ms.is_empty() && p.upload_ms.count == 0 {
            s.push_str("<p class=\"muted\">No API requests or uploads.</p>\n");
            continue;
        }
        s.push_str(
            "<table>\n<tr><th>endpoint</th><th>count</th><th>p50 (ms)</th><th>p95 (ms)</th>\
             <th>p99 (ms)</th><th>max (ms)</th></tr>\n",
        );
        for (endpoint, pcts) in &p.api_ms {
            s.push_str(&row(endpoint, &pcts_cells(pcts)));
        }
        s.push_str(&row("upload → stored", &pcts_cells(&p.upload_ms)));
        s.push_str("</table>\n");
    }
    s
}

/// Errors by kind with a total, or "no errors".
fn errors_table(run: &RunResult) -> String {
    if run.errors.is_empty() {
        return "<p class=\"muted\">no errors</p>\n".to_string();
    }
    let mut s = String::from("<table>\n<tr><th>kind</th><th>count</th></tr>\n");
    for (kind, count) in &run.errors {
        s.push_str(&row(kind, &[count.to_string()]));
    }
    let total = run
        .errors
        .values()
        .fold(0u64, |sum, &count| sum.saturating_add(count));
    s.push_str(&format!(
        "<tr class=\"total\"><td>total</td><td class=\"n\">{total}</td></tr>\n</table>\n"
    ));
    s
}

// ---------------------------------------------------------------------------------------------
// Axes

/// A numeric axis: a range from one round number to another, and its ticks.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    /// Decimals of the tick labels.
    decimals: u8,
    /// Tick labels are `value / div` followed by `suffix` (`k`, `M`).
    div: f64,
    suffix: &'static str,
}

impl Axis {
    /// An axis covering `min..=max` with about six ticks at round numbers; 0..1 when the range
    /// is empty or cannot be drawn.
    fn new(min: f64, max: f64) -> Self {
        let (a, b) = (finite_or_zero(min), finite_or_zero(max));
        let (lo, hi) = (a.min(b), a.max(b));
        let hi = if hi > lo { hi } else { lo + lo.abs().max(1.0) };
        let step = nice_step((hi - lo) / 5.0);
        let (k0, k1) = ((lo / step).floor(), (hi / step).ceil());
        let n = k1 - k0;
        let (first, last) = (k0 * step, k1 * step);
        if !(first.is_finite()
            && last.is_finite()
            && last > first
            && (1.0..=MAX_TICKS).contains(&n))
        {
            return Self::unit();
        }
        let ticks = (0..=n as usize).map(|i| (k0 + i as f64) * step).collect();
        let big = first.abs().max(last.abs());
        let (div, suffix) = if big >= 1e6 {
            (1e6, "M")
        } else if big >= 1e4 {
            (1e3, "k")
        } else {
            (1.0, "")
        };
        Self {
            lo: first,
            hi: last,
            ticks,
            decimals: decimals(step / div),
            div,
            suffix,
        }
    }

    /// The 0..1 axis.
    fn unit() -> Self {
        Self {
            lo: 0.0,
            hi: 1.0,
            ticks: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            decimals: 1,
            div: 1.0,
            suffix: "",
        }
    }

    /// Maps `v` linearly from the axis range onto `from..to` (clamped to it).
    fn map(&self, v: f64, from: f64, to: f64) -> f64 {
        let t = (v - self.lo) / (self.hi - self.lo);
        (from + t * (to - from)).clamp(from.min(to), from.max(to))
    }

    /// The label of tick `v`.
    fn label(&self, v: f64) -> String {
        let x = v / self.div;
        let d = self.decimals;
        if !x.is_finite() || x.abs() < 0.5 * 10f64.powi(-i32::from(d)) {
            return "0".to_string();
        }
        let d = usize::from(d);
        format!("{x:.d$}{}", self.suffix)
    }
}

/// A round step (1, 2, 2.5 or 5 times a power of ten) of at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    if !(magnitude.is_finite() && magnitude > 0.0) {
        return 1.0;
    }
    let norm = raw / magnitude;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Decimals needed to print multiples of `step` exactly (at most 6).
fn decimals(step: f64) -> u8 {
    (0u8..=6)
        .find(|&d| {
            let x = step * 10f64.powi(i32::from(d));
            (x - x.round()).abs() < 1e-6 * x.abs().max(1.0)
        })
        .unwrap_or(6)
}

/// The plotting area of a plot, in SVG units (`top` < `bottom`).
#[derive(Clone, Copy)]
struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn x(&self, axis: &Axis, v: f64) -> f64 {
        axis.map(v, self.left, self.right)
    }

    fn y(&self, axis: &Axis, v: f64) -> f64 {
        axis.map(v, self.bottom, self.top)
    }
}

// ---------------------------------------------------------------------------------------------
// SVG building blocks

/// The opening `<svg>` tag of a plot and its title.
fn svg_open(title: &str) -> String {
    let t = escape(title);
    format!(
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\">\n\
         <text class=\"title\" x=\"{}\" y=\"20\">{t}</text>\n",
        coord(FRAME.left)
    )
}

/// Horizontal grid lines, tick labels and the (vertical) title of the y axis.
fn y_axis(axis: &Axis, title: &str) -> String {
    let f = FRAME;
    let mut s = String::new();
    for &t in &axis.ticks {
        let y = coord(f.y(axis, t));
        s.push_str(&format!(
            "<line class=\"grid\" x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>\
             <text class=\"tick\" x=\"{}\" y=\"{y}\" text-anchor=\"end\" \
             dominant-baseline=\"middle\">{}</text>\n",
            coord(f.left),
            coord(f.right),
            coord(f.left - 6.0),
            escape(&axis.label(t))
        ));
    }
    let (cx, cy) = (coord(16.0), coord((f.top + f.bottom) / 2.0));
    s.push_str(&format!(
        "<text class=\"axis-title\" x=\"{cx}\" y=\"{cy}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 {cx} {cy})\">{}</text>\n",
        escape(title)
    ));
    s
}

/// Tick marks, tick labels and the title of a numeric x axis.
fn x_axis(axis: &Axis, title: &str) -> String {
    let f = FRAME;
    let (y0, y1, label_y) = (
        coord(f.bottom),
        coord(f.bottom + 4.0),
        coord(f.bottom + 17.0),
    );
    let mut s = String::new();
    for &t in &axis.ticks {
        let x = coord(f.x(axis, t));
        s.push_str(&format!(
            "<line class=\"axis\" x1=\"{x}\" y1=\"{y0}\" x2=\"{x}\" y2=\"{y1}\"/>\
             <text class=\"tick\" x=\"{x}\" y=\"{label_y}\" text-anchor=\"middle\">{}</text>\n",
            escape(&axis.label(t))
        ));
    }
    s.push_str(&x_title(title));
    s
}

/// The title under the x axis.
fn x_title(title: &str) -> String {
    let f = FRAME;
    format!(
        "<text class=\"axis-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
        coord((f.left + f.right) / 2.0),
        coord(f.bottom + 38.0),
        escape(title)
    )
}

/// The two axis lines (left and bottom of the frame).
fn frame_lines() -> String {
    let f = FRAME;
    let (l, r, t, b) = (coord(f.left), coord(f.right), coord(f.top), coord(f.bottom));
    format!(
        "<line class=\"axis\" x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{b}\"/>\n"
    )
}

/// What a legend entry shows next to its label.
enum Swatch {
    /// A line, optionally dashed (`stroke-dasharray`).
    Line(Option<&'static str>),
    /// A filled box with this opacity.
    Bar(f64),
}

struct LegendEntry {
    label: String,
    colour: &'static str,
    swatch: Swatch,
}

/// The legend, in a column right of the frame; entries that do not fit are counted.
fn legend(entries: &[LegendEntry]) -> String {
    let f = FRAME;
    let x = f.right + 16.0;
    let rows = (((f.bottom - f.top) / LEGEND_ROW).floor() as usize).max(1);
    let shown = if entries.len() > rows {
        rows - 1
    } else {
        entries.len()
    };
    let row_y = |i: usize| f.top + 8.0 + i as f64 * LEGEND_ROW;
    let mut s = String::new();
    for (i, entry) in entries.iter().take(shown).enumerate() {
        let y = row_y(i);
        let c = entry.colour;
        match entry.swatch {
            Swatch::Line(dash) => {
                let dash = dash
                    .map(|d| format!(" stroke-dasharray=\"{d}\""))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "<line x1=\"{}\" y1=\"{yy}\" x2=\"{}\" y2=\"{yy}\" stroke=\"{c}\" \
                     stroke-width=\"2\"{dash}/>",
                    coord(x),
                    coord(x + 22.0),
                    yy = coord(y)
                ));
            }
            Swatch::Bar(opacity) => {
                s.push_str(&format!(
                    "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"10\" fill=\"{c}\" \
                     fill-opacity=\"{}\"/>",
                    coord(x + 4.0),
                    coord(y - 5.0),
                    num(opacity, 2)
                ));
            }
        }
        s.push_str(&format!(
            "<text class=\"legend\" x=\"{}\" y=\"{}\" dominant-baseline=\"middle\">\
             <title>{}</title>{}</text>\n",
            coord(x + 28.0),
            coord(y),
            escape(&entry.label),
            escape(&truncate(&entry.label, 20))
        ));
    }
    if entries.len() > shown {
        s.push_str(&format!(
            "<text class=\"legend\" x=\"{}\" y=\"{}\" dominant-baseline=\"middle\">+{} more</text>\n",
            coord(x),
            coord(row_y(shown)),
            entries.len() - shown
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Line plots

/// One line of a line plot.
struct Series {
    label: String,
    colour: &'static str,
    dash: Option<&'static str>,
    points: Vec<(f64, f64)>,
    /// Draw a dot at every point (always done when there is only one).
    markers: bool,
}

/// A horizontal dashed reference line (e.g. a limit).
struct HLine {
    y: f64,
    label: String,
    colour: &'static str,
}

struct LinePlot<'a> {
    title: &'a str,
    x_title: &'a str,
    y_title: &'a str,
    series: Vec<Series>,
    hlines: Vec<HLine>,
}

/// An SVG line plot; both axes include zero. Points that are not finite are skipped.
fn line_plot(p: &LinePlot) -> String {
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (0.0_f64, 0.0_f64, 0.0_f64, 0.0_f64);
    let mut any = false;
    for &(x, y) in p.series.iter().flat_map(|s| &s.points) {
        if x.is_finite() && y.is_finite() {
            any = true;
            (x_lo, x_hi) = (x_lo.min(x), x_hi.max(x));
            (y_lo, y_hi) = (y_lo.min(y), y_hi.max(y));
        }
    }
    for h in p.hlines.iter().filter(|h| h.y.is_finite()) {
        (y_lo, y_hi) = (y_lo.min(h.y), y_hi.max(h.y));
    }
    let (xa, ya) = (Axis::new(x_lo, x_hi), Axis::new(y_lo, y_hi));
    let f = FRAME;

    let mut s = svg_open(p.title);
    s.push_str(&y_axis(&ya, p.y_title));
    s.push_str(&x_axis(&xa, p.x_title));
    s.push_str(&frame_lines());
    for series in &p.series {
        s.push_str(&series_svg(&xa, &ya, series));
    }
    for h in p.hlines.iter().filter(|h| h.y.is_finite()) {
        let y = coord(f.y(&ya, h.y));
        s.push_str(&format!(
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"1.5\" \
             stroke-dasharray=\"6 4\"/>\n",
            coord(f.left),
            coord(f.right),
            h.colour
        ));
    }
    if !any {
        s.push_str(&format!(
            "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>\n",
            coord((f.left + f.right) / 2.0),
            coord((f.top + f.bottom) / 2.0)
        ));
    }
    let mut entries: Vec<LegendEntry> = p
        .series
        .iter()
        .map(|series| LegendEntry {
            label: series.label.clone(),
            colour: series.colour,
            swatch: Swatch::Line(series.dash),
        })
        .collect();
    entries.extend(p.hlines.iter().map(|h| LegendEntry {
        label: h.label.clone(),
        colour: h.colour,
        swatch: Swatch::Line(Some("6 4")),
    }));
    s.push_str(&legend(&entries));
    s.push_str("</svg>\n");
    s
}

/// The polyline (and dots) of one series.
fn series_svg(xa: &Axis, ya: &Axis, series: &Series) -> String {
    let f = FRAME;
    let points: Vec<(String, String)> = series
        .points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| (coord(f.x(xa, x)), coord(f.y(ya, y))))
        .collect();
    let c = series.colour;
    let mut s = String::new();
    if points.len() >= 2 {
        let list: Vec<String> = points.iter().map(|(x, y)| format!("{x},{y}")).collect();
        let dash = series
            .dash
            .map(|d| format!(" stroke-dasharray=\"{d}\""))
            .unwrap_or_default();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.8\" \
             stroke-linejoin=\"round\"{dash} points=\"{}\"/>\n",
            list.join(" ")
        ));
    }
    if series.markers || points.len() == 1 {
        for (x, y) in &points {
            s.push_str(&format!(
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{c}\"/>\n"
            ));
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Timeline plots

/// One quantity of a [`Sample`] drawn over time.
struct Metric {
    name: &'static str,
    dash: Option<&'static str>,
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
        dash: None,
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
fn timeline_plots(runs: &[RunResult], labels: &[String]) -> String {
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
fn bar_style(single: bool, r: usize, k: usize) -> (&'static str, f64) {
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
fn percentile_bars(runs: &[RunResult], labels: &[String]) -> String {
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
fn capacity_table(cap: &Capacity, label: &str) -> String {
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
fn capacity_section(runs: &[RunResult], labels: &[String]) -> String {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
}
