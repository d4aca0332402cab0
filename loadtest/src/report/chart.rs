//! Charts drawn with plotters' SVG backend: the load chart (p99 latency and loss against load,
//! every target together), line charts (quantities over time) and grouped bars.
//!
//! Text: plotters is built without a font feature, so it uses its "naive" font backend, which
//! estimates text extents (0.7 em per character) instead of reading a font file, and the SVG
//! backend writes `<text>` elements that the browser lays out with its own sans-serif font. No
//! font file is needed, so drawing text cannot fail for want of one; the estimates only place
//! the axis titles, and the label areas leave room to spare.
//!
//! Every chart returns an inline `<svg class="plot">` (no XML prolog). Values that are not finite
//! (or beyond ±1e12, which no latency, loss or rate reaches) are skipped; if plotters reports an
//! error the chart is replaced by a small SVG saying so. Nothing here panics on its input.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{escape, truncate};

/// One target's measurements at each load level.
pub struct Curve {
    /// The target (legend text).
    pub label: String,
    /// (load, p99 latency ms, loss as a fraction 0..1) per level, in increasing load.
    pub points: Vec<(f64, f64, f64)>,
}

/// One line of a [`line_chart`].
pub struct Line {
    /// Legend text.
    pub label: String,
    /// Index into the palette: lines with the same index share a colour (e.g. one run's p50
    /// and p99), so a run keeps its colour across charts.
    pub colour: usize,
    /// Drawn dashed (e.g. a second quantity of the same run).
    pub dashed: bool,
    /// (x, y) in increasing x.
    pub points: Vec<(f64, f64)>,
}

/// One series of a [`bar_chart`]: a bar in every group.
pub(super) struct Bars {
    pub(super) label: String,
    pub(super) colour: usize,
    /// 0..1; lower for the lesser percentiles of a run.
    pub(super) opacity: f64,
    /// One value per group; a value that is not finite leaves the slot empty.
    pub(super) values: Vec<f64>,
}

/// Series colours (Tableau 10). Curve, line or run `i` has colour `i` in every chart.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

/// Limit lines: dark grey, so they are never mistaken for a series.
const LIMIT: RGBColor = RGBColor(0x44, 0x44, 0x44);
const GRID: RGBColor = RGBColor(0xe8, 0xe8, 0xe8);
const AXIS: RGBColor = RGBColor(0x88, 0x88, 0x88);
const INK: RGBColor = RGBColor(0x33, 0x33, 0x33);
const MUTED: RGBColor = RGBColor(0x77, 0x77, 0x77);

const FONT: &str = "sans-serif";
/// Font sizes as plotters takes them (its SVG backend writes `size / 1.24` px).
const TITLE_SIZE: f64 = 19.0;
const LABEL_SIZE: f64 = 15.0;
const TICK_SIZE: f64 = 14.0;

/// Height of the title line and of each legend row above a chart.
const TITLE_H: u32 = 30;
const LEGEND_ROW_H: u32 = 20;
/// Estimated width of one legend character (px) at [`LABEL_SIZE`].
const LEGEND_CHAR_W: u32 = 7;

/// Values beyond this magnitude are not plotted (they only come from broken measurements, and
/// plotters' tick search misbehaves on ranges near `f64::MAX`).
const PLOTTABLE: f64 = 1e12;

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// The colour of series `i`.
fn rgb(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn plottable(v: f64) -> bool {
    v.is_finite() && v.abs() <= PLOTTABLE
}

/// A tick label: round, short, `k`/`M` for large values.
pub(super) fn tick(v: &f64) -> String {
    let v = *v + 0.0;
    let a = v.abs();
    let (x, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let mut s = format!("{x:.3}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if s == "-0" {
        s = "0".to_string();
    }
    format!("{s}{suffix}")
}

/// A range from zero (or the lowest value, when negative) to the highest value with 8 %
/// headroom, covering every plottable value; 0..1 when there is none or all are zero.
fn span(values: impl IntoIterator<Item = f64>) -> Range<f64> {
    let (mut lo, mut hi) = (0.0_f64, 0.0_f64);
    for v in values.into_iter().filter(|&v| plottable(v)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let pad = (hi - lo) * 0.08;
    let lo = if lo < 0.0 { lo - pad } else { lo };
    let hi = hi + pad;
    if hi > lo { lo..hi } else { lo..lo + 1.0 }
}

/// How many x labels to ask plotters for: 8, or fewer when every x is a whole number (a count
/// of consults) and the range is short, so no tick falls between two whole numbers.
fn x_label_count(x: &Range<f64>, whole: bool) -> usize {
    let units = (x.end - x.start).floor();
    if whole && units < 8.0 {
        (units.max(0.0) as usize + 1).max(2)
    } else {
        8
    }
}

/// The plottable points of `points`.
fn clean(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    points
        .into_iter()
        .filter(|&(x, y)| plottable(x) && plottable(y))
        .collect()
}

/// What a legend entry shows next to its label.
#[derive(Clone, Copy)]
enum Swatch {
    /// A line with a dot (the series of a load chart).
    LineDot(RGBColor),
    /// A line, dashed or not.
    Line(RGBColor, bool),
    /// A filled box with this opacity.
    Box(RGBColor, f64),
}

struct Entry {
    label: String,
    swatch: Swatch,
}

/// Legend entries laid out in rows across `width`: (row, x) of each entry.
fn legend_layout(entries: &[Entry], width: u32) -> Vec<(u32, u32)> {
    let (mut row, mut x) = (0u32, 12u32);
    entries
        .iter()
        .map(|entry| {
            let chars = u32::try_from(entry.label.chars().count().min(40)).unwrap_or(40);
            let w = 34 + chars * LEGEND_CHAR_W + 18;
            if x > 12 && x + w > width {
                row += 1;
                x = 12;
            }
            let at = (row, x);
            x += w;
            at
        })
        .collect()
}

/// The height of a chart's title and legend.
fn header_height(entries: &[Entry], width: u32) -> u32 {
    let rows = legend_layout(entries, width)
        .last()
        .map_or(0, |&(row, _)| row + 1);
    TITLE_H + rows * LEGEND_ROW_H + 6
}

/// Draws the title and the legend rows into `area` (the header strip of a chart).
fn draw_header(area: &DrawingArea<SVGBackend<'_>, Shift>, title: &str, entries: &[Entry]) -> Drawn {
    let width = area.dim_in_pixel().0;
    let title_style = (FONT, TITLE_SIZE)
        .into_font()
        .style(FontStyle::Bold)
        .color(&INK);
    area.draw(&Text::new(title.to_string(), (12, 8), title_style))?;
    let text_style = (FONT, LABEL_SIZE)
        .into_font()
        .color(&INK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (entry, (row, x)) in entries.iter().zip(legend_layout(entries, width)) {
        let (x, y) = (
            i32::try_from(x).unwrap_or(0),
            i32::try_from(TITLE_H + row * LEGEND_ROW_H + LEGEND_ROW_H / 2).unwrap_or(0),
        );
        match entry.swatch {
            Swatch::LineDot(c) => {
                area.draw(&PathElement::new(
                    vec![(x, y), (x + 24, y)],
                    c.stroke_width(2),
                ))?;
                area.draw(&Circle::new((x + 12, y), 3, c.filled()))?;
            }
            Swatch::Line(c, dashed) => {
                if dashed {
                    for s in [0, 10, 20] {
                        area.draw(&PathElement::new(
                            vec![(x + s, y), (x + s + 5, y)],
                            c.stroke_width(2),
                        ))?;
                    }
                } else {
                    area.draw(&PathElement::new(
                        vec![(x, y), (x + 24, y)],
                        c.stroke_width(2),
                    ))?;
                }
            }
            Swatch::Box(c, opacity) => {
                area.draw(&Rectangle::new(
                    [(x + 5, y - 6), (x + 19, y + 6)],
                    c.mix(opacity).filled(),
                ))?;
            }
        }
        area.draw(&Text::new(
            truncate(&entry.label, 40),
            (x + 32, y),
            text_style.clone(),
        ))?;
    }
    Ok(())
}

/// One series of a [`panel`].
struct Trace {
    colour: RGBColor,
    dashed: bool,
    markers: bool,
    points: Vec<(f64, f64)>,
}

/// A horizontal dashed line with its label at the right end.
struct HLine {
    y: f64,
    label: String,
}

/// What a [`panel`] draws.
struct Panel<'a> {
    x: Range<f64>,
    y: Range<f64>,
    /// The x-axis title; `None` draws no x labels (the upper panel of a shared x axis).
    x_desc: Option<&'a str>,
    y_desc: &'a str,
    /// At most this many x labels.
    x_labels: usize,
    traces: &'a [Trace],
    hline: Option<HLine>,
}

/// One plotting area with its axes, grid, traces and limit line.
fn panel(area: &DrawingArea<SVGBackend<'_>, Shift>, p: &Panel) -> Drawn {
    let mut chart = ChartBuilder::on(area)
        .margin_left(8)
        .margin_right(28)
        .margin_top(6)
        .margin_bottom(if p.x_desc.is_some() { 6 } else { 10 })
        .x_label_area_size(if p.x_desc.is_some() { 46 } else { 0 })
        .y_label_area_size(70)
        .build_cartesian_2d(p.x.clone(), p.y.clone())?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .axis_style(AXIS)
        .label_style((FONT, TICK_SIZE).into_font().color(&MUTED))
        .axis_desc_style((FONT, LABEL_SIZE).into_font().color(&INK))
        .x_labels(p.x_labels)
        .y_labels(6)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .y_desc(p.y_desc);
    if let Some(x_desc) = p.x_desc {
        mesh.x_desc(x_desc);
    }
    mesh.draw()?;
    for t in p.traces {
        let style = t.colour.stroke_width(2);
        if t.dashed {
            chart.draw_series(DashedLineSeries::new(t.points.iter().copied(), 7, 4, style))?;
        } else {
            chart.draw_series(LineSeries::new(t.points.iter().copied(), style))?;
        }
        if t.markers || t.points.len() == 1 {
            chart.draw_series(
                t.points
                    .iter()
                    .map(|&point| Circle::new(point, 3, t.colour.filled())),
            )?;
        }
    }
    if let Some(h) = &p.hline {
        chart.draw_series(DashedLineSeries::new(
            [(p.x.start, h.y), (p.x.end, h.y)],
            6,
            4,
            LIMIT.stroke_width(1),
        ))?;
        let style = (FONT, TICK_SIZE)
            .into_font()
            .color(&LIMIT)
            .pos(Pos::new(HPos::Right, VPos::Bottom));
        chart.draw_series(std::iter::once(Text::new(
            h.label.clone(),
            (p.x.end, h.y),
            style,
        )))?;
    }
    Ok(())
}

/// "no data" in the middle of `area`.
fn no_data(area: &DrawingArea<SVGBackend<'_>, Shift>) -> Drawn {
    let (w, h) = area.dim_in_pixel();
    let style = (FONT, LABEL_SIZE)
        .into_font()
        .color(&MUTED)
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(
        "no data",
        (
            i32::try_from(w / 2).unwrap_or(0),
            i32::try_from(h / 2).unwrap_or(0),
        ),
        style,
    ))?;
    Ok(())
}

/// Runs `draw` on an SVG backend of `size` and returns the tagged SVG, or a small SVG with the
/// error when plotters reports one.
fn render(
    title: &str,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Drawn,
) -> String {
    let mut buf = String::with_capacity(16 * 1024);
    let drawn = {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .map_err(Into::into)
            .and_then(|()| draw(&root));
        drawn.and_then(|()| root.present().map_err(Into::into))
    };
    let label = escape(title);
    match drawn {
        Ok(()) => match buf.strip_prefix("<svg ") {
            Some(rest) => {
                format!("<svg class=\"plot\" role=\"img\" aria-label=\"{label}\" {rest}",)
            }
            None => buf,
        },
        Err(e) => format!(
            "<svg class=\"plot\" role=\"img\" aria-label=\"{label}\" width=\"{w}\" height=\"80\" \
             viewBox=\"0 0 {w} 80\" xmlns=\"http://www.w3.org/2000/svg\">\n\
             <text x=\"12\" y=\"24\" font-family=\"sans-serif\" font-weight=\"bold\">{label}</text>\n\
             <text x=\"12\" y=\"52\" font-family=\"sans-serif\" fill=\"#777\">chart not drawn: {}</text>\n\
             </svg>\n",
            escape(&e.to_string()),
            w = size.0,
        ),
    }
}

/// Width of the load chart.
const LOAD_W: u32 = 900;
/// Heights of its latency panel and of its loss panel (with the shared x labels).
const LOAD_TOP_H: u32 = 270;
const LOAD_BOTTOM_H: u32 = 250;

/// An inline SVG (no XML prolog) of p99 latency and loss against load for all curves together;
/// dashed horizontal lines at the limits when given. Each curve keeps its colour in both panels.
///
/// Two panels stacked on one x axis: p99 latency (ms) above, loss (%) below. Points whose load,
/// latency or loss is not finite are left out of the panel that needs them. Curve `i` has
/// palette colour `i`, so a report that colours its runs by index matches.
pub fn load_chart(
    title: &str,
    x_label: &str,
    curves: &[Curve],
    latency_limit_ms: Option<f64>,
    loss_limit: Option<f64>,
) -> String {
    let latency_limit = latency_limit_ms.filter(|&v| plottable(v));
    let loss_limit_pct = loss_limit.map(|v| v * 100.0).filter(|&v| plottable(v));
    let trace = |i: usize, points: Vec<(f64, f64)>| Trace {
        colour: rgb(i),
        dashed: false,
        markers: true,
        points,
    };
    let latency: Vec<Trace> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| trace(i, clean(c.points.iter().map(|&(x, y, _)| (x, y)))))
        .collect();
    let loss: Vec<Trace> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| trace(i, clean(c.points.iter().map(|&(x, _, l)| (x, l * 100.0)))))
        .collect();
    let all = || latency.iter().chain(&loss).flat_map(|t| &t.points);
    let any = all().next().is_some();
    let x = span(all().map(|p| p.0));
    let x_labels = x_label_count(&x, all().all(|p| p.0.fract() == 0.0));
    let y_latency = span(
        latency
            .iter()
            .flat_map(|t| t.points.iter().map(|p| p.1))
            .chain(latency_limit),
    );
    let y_loss = span(
        loss.iter()
            .flat_map(|t| t.points.iter().map(|p| p.1))
            .chain(loss_limit_pct),
    );

    let mut entries: Vec<Entry> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| Entry {
            label: c.label.clone(),
            swatch: Swatch::LineDot(rgb(i)),
        })
        .collect();
    if latency_limit.is_some() || loss_limit_pct.is_some() {
        entries.push(Entry {
            label: "limit".to_string(),
            swatch: Swatch::Line(LIMIT, true),
        });
    }
    let header_h = header_height(&entries, LOAD_W);
    let size = (LOAD_W, header_h + LOAD_TOP_H + LOAD_BOTTOM_H);
    render(title, size, |root| {
        let (header, body) = root.split_vertically(header_h);
        draw_header(&header, title, &entries)?;
        let (top, bottom) = body.split_vertically(LOAD_TOP_H);
        panel(
            &top,
            &Panel {
                x: x.clone(),
                y: y_latency,
                x_desc: None,
                x_labels,
                y_desc: "p99 latency (ms)",
                traces: &latency,
                hline: latency_limit.map(|y| HLine {
                    y,
                    label: format!("p99 limit {} ms", tick(&y)),
                }),
            },
        )?;
        panel(
            &bottom,
            &Panel {
                x,
                y: y_loss,
                x_desc: Some(x_label),
                x_labels,
                y_desc: "loss (%)",
                traces: &loss,
                hline: loss_limit_pct.map(|y| HLine {
                    y,
                    label: format!("loss limit {} %", tick(&y)),
                }),
            },
        )?;
        if !any {
            no_data(&body)?;
        }
        Ok(())
    })
}

/// Size of a line chart's plotting part (below its title and legend) and of a bar chart.
const SMALL_W: u32 = 640;
const SMALL_H: u32 = 270;

/// An inline SVG line chart (e.g. a quantity over time) of every line together; both axes
/// start at zero (or below, for negative values). Points that are not finite are skipped.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, lines: &[Line]) -> String {
    let traces: Vec<Trace> = lines
        .iter()
        .map(|l| Trace {
            colour: rgb(l.colour),
            dashed: l.dashed,
            markers: false,
            points: clean(l.points.iter().copied()),
        })
        .collect();
    let points = || traces.iter().flat_map(|t| &t.points);
    let any = points().next().is_some();
    let x = span(points().map(|p| p.0));
    let y = span(points().map(|p| p.1));
    let entries: Vec<Entry> = lines
        .iter()
        .map(|l| Entry {
            label: l.label.clone(),
            swatch: Swatch::Line(rgb(l.colour), l.dashed),
        })
        .collect();
    let header_h = header_height(&entries, SMALL_W);
    render(title, (SMALL_W, header_h + SMALL_H), |root| {
        let (header, body) = root.split_vertically(header_h);
        draw_header(&header, title, &entries)?;
        panel(
            &body,
            &Panel {
                x,
                y,
                x_desc: Some(x_label),
                y_desc: y_label,
                x_labels: 8,
                traces: &traces,
                hline: None,
            },
        )?;
        if !any {
            no_data(&body)?;
        }
        Ok(())
    })
}

/// Grouped bars: for each group (e.g. a phase), one bar per series, side by side.
pub(super) fn bar_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    groups: &[String],
    bars: &[Bars],
) -> String {
    let n = groups.len().max(1);
    let values = || bars.iter().flat_map(|b| b.values.iter().copied());
    let y = span(values().map(|v| v.max(0.0)));
    let entries: Vec<Entry> = bars
        .iter()
        .map(|b| Entry {
            label: b.label.clone(),
            swatch: Swatch::Box(rgb(b.colour), b.opacity),
        })
        .collect();
    let header_h = header_height(&entries, SMALL_W);
    let label_chars = (560 / n / 8).clamp(3, 24);
    render(title, (SMALL_W, header_h + SMALL_H), |root| {
        let (header, body) = root.split_vertically(header_h);
        draw_header(&header, title, &entries)?;
        let mut chart = ChartBuilder::on(&body)
            .margin_left(8)
            .margin_right(28)
            .margin_top(6)
            .margin_bottom(6)
            .x_label_area_size(46)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n as f64, y.clone())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .axis_style(AXIS)
            .label_style((FONT, TICK_SIZE).into_font().color(&MUTED))
            .axis_desc_style((FONT, LABEL_SIZE).into_font().color(&INK))
            // The phase names are drawn below, one under each group.
            .x_labels(0)
            .y_labels(6)
            .y_label_formatter(&tick)
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        let slot = 0.8 / bars.len().max(1) as f64;
        for (k, b) in bars.iter().enumerate() {
            let fill = rgb(b.colour).mix(b.opacity.clamp(0.0, 1.0)).filled();
            let rects = b.values.iter().enumerate().filter_map(|(g, &v)| {
                if !plottable(v) {
                    return None;
                }
                let x0 = g as f64 + 0.1 + k as f64 * slot;
                Some(Rectangle::new(
                    [(x0, y.start.max(0.0)), (x0 + slot * 0.9, v.max(0.0))],
                    fill,
                ))
            });
            chart.draw_series(rects)?;
        }
        let style = (FONT, TICK_SIZE)
            .into_font()
            .color(&MUTED)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (g, group) in groups.iter().enumerate() {
            let (x, y0) = chart.backend_coord(&(g as f64 + 0.5, y.start));
            root.draw(&Text::new(
                truncate(group, label_chars),
                (x, y0 + 6),
                style.clone(),
            ))?;
        }
        Ok(())
    })
}
