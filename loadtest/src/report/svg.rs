//! SVG plots: axes with round ticks, the plotting frame, legends and line plots.

use super::*;

/// Size of every plot (SVG user units).
pub(super) const W: f64 = 680.0;
pub(super) const H: f64 = 300.0;

/// The plotting area inside a plot; the legend sits to its right.
pub(super) const FRAME: Frame = Frame {
    left: 70.0,
    right: 510.0,
    top: 34.0,
    bottom: 252.0,
};

/// Height of one legend row.
pub(super) const LEGEND_ROW: f64 = 18.0;

/// At most this many ticks on an axis (a guard; normal axes have about six).
pub(super) const MAX_TICKS: f64 = 50.0;

/// A numeric axis: a range from one round number to another, and its ticks.
pub(super) struct Axis {
    pub(super) lo: f64,
    pub(super) hi: f64,
    pub(super) ticks: Vec<f64>,
    /// Decimals of the tick labels.
    decimals: u8,
    /// Tick labels are `value / div` followed by `suffix` (`k`, `M`).
    div: f64,
    suffix: &'static str,
}

impl Axis {
    /// An axis covering `min..=max` with about six ticks at round numbers; 0..1 when the range
    /// is empty or cannot be drawn.
    pub(super) fn new(min: f64, max: f64) -> Self {
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
    pub(super) fn unit() -> Self {
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
    pub(super) fn map(&self, v: f64, from: f64, to: f64) -> f64 {
        let t = (v - self.lo) / (self.hi - self.lo);
        (from + t * (to - from)).clamp(from.min(to), from.max(to))
    }

    /// The label of tick `v`.
    pub(super) fn label(&self, v: f64) -> String {
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
pub(super) fn nice_step(raw: f64) -> f64 {
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
pub(super) fn decimals(step: f64) -> u8 {
    (0u8..=6)
        .find(|&d| {
            let x = step * 10f64.powi(i32::from(d));
            (x - x.round()).abs() < 1e-6 * x.abs().max(1.0)
        })
        .unwrap_or(6)
}

/// The plotting area of a plot, in SVG units (`top` < `bottom`).
#[derive(Clone, Copy)]
pub(super) struct Frame {
    pub(super) left: f64,
    pub(super) right: f64,
    pub(super) top: f64,
    pub(super) bottom: f64,
}

impl Frame {
    pub(super) fn x(&self, axis: &Axis, v: f64) -> f64 {
        axis.map(v, self.left, self.right)
    }

    pub(super) fn y(&self, axis: &Axis, v: f64) -> f64 {
        axis.map(v, self.bottom, self.top)
    }
}

// ---------------------------------------------------------------------------------------------
// SVG building blocks

/// The opening `<svg>` tag of a plot and its title.
pub(super) fn svg_open(title: &str) -> String {
    let t = escape(title);
    format!(
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\">\n\
         <text class=\"title\" x=\"{}\" y=\"20\">{t}</text>\n",
        coord(FRAME.left)
    )
}

/// Horizontal grid lines, tick labels and the (vertical) title of the y axis.
pub(super) fn y_axis(axis: &Axis, title: &str) -> String {
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
pub(super) fn x_axis(axis: &Axis, title: &str) -> String {
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
pub(super) fn x_title(title: &str) -> String {
    let f = FRAME;
    format!(
        "<text class=\"axis-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
        coord((f.left + f.right) / 2.0),
        coord(f.bottom + 38.0),
        escape(title)
    )
}

/// The two axis lines (left and bottom of the frame).
pub(super) fn frame_lines() -> String {
    let f = FRAME;
    let (l, r, t, b) = (coord(f.left), coord(f.right), coord(f.top), coord(f.bottom));
    format!(
        "<line class=\"axis\" x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{b}\"/>\n"
    )
}

/// What a legend entry shows next to its label.
pub(super) enum Swatch {
    /// A line, optionally dashed (`stroke-dasharray`).
    Line(Option<&'static str>),
    /// A filled box with this opacity.
    Bar(f64),
}

pub(super) struct LegendEntry {
    pub(super) label: String,
    pub(super) colour: &'static str,
    pub(super) swatch: Swatch,
}

/// The legend, in a column right of the frame; entries that do not fit are counted.
pub(super) fn legend(entries: &[LegendEntry]) -> String {
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
pub(super) struct Series {
    pub(super) label: String,
    pub(super) colour: &'static str,
    pub(super) dash: Option<&'static str>,
    pub(super) points: Vec<(f64, f64)>,
    /// Draw a dot at every point (always done when there is only one).
    pub(super) markers: bool,
}

/// A horizontal dashed reference line (e.g. a limit).
pub(super) struct HLine {
    pub(super) y: f64,
    pub(super) label: String,
    pub(super) colour: &'static str,
}

pub(super) struct LinePlot<'a> {
    pub(super) title: &'a str,
    pub(super) x_title: &'a str,
    pub(super) y_title: &'a str,
    pub(super) series: Vec<Series>,
    pub(super) hlines: Vec<HLine>,
}

/// An SVG line plot; both axes include zero. Points that are not finite are skipped.
pub(super) fn line_plot(p: &LinePlot) -> String {
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
pub(super) fn series_svg(xa: &Axis, ya: &Axis, series: &Series) -> String {
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
