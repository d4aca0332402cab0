//! The report's tables: capacity steps, summary by phase, API latency, errors, runs. Each returns
//! an empty string when it has nothing to show, so the page leaves it out.

use super::*;

/// A table row: a text cell, then right-aligned (numeric) cells.
pub(super) fn row(first: &str, cells: &[String]) -> String {
    let mut s = format!("<tr><td>{}</td>", escape(first));
    for cell in cells {
        s.push_str(&format!("<td class=\"n\">{}</td>", escape(cell)));
    }
    s.push_str("</tr>\n");
    s
}

/// The limits and the levels of a capacity search; empty when it has no steps.
pub(super) fn capacity_table(cap: &Capacity) -> String {
    if cap.steps.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "<p class=\"muted\">Limits: p99 ≤ {} ms, loss ≤ {} %</p>\n\
         <table>\n<tr><th>consults</th><th>forwarded pkt/s</th><th>p99 (ms)</th>\
         <th>loss (%)</th><th>server CPU (%)</th><th>ok</th></tr>\n",
        ms(cap.latency_limit_ms),
        pct(cap.loss_limit)
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

/// One row per phase: join and media latency, loss, throughput, server load, errors; empty
/// without phases.
pub(super) fn summary_table(run: &RunResult) -> String {
    if run.phases.is_empty() {
        return String::new();
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
pub(super) fn pcts_cells(p: &Pcts) -> [String; 5] {
    [
        p.count.to_string(),
        ms(p.p50),
        ms(p.p95),
        ms(p.p99),
        ms(p.max),
    ]
}

/// True when a phase made API requests or uploads.
pub(super) fn has_api(p: &PhaseResult) -> bool {
    !p.api_ms.is_empty() || p.upload_ms.count > 0
}

/// Per phase that made API requests or uploads: latency per endpoint, then upload → stored (when
/// there were uploads). Empty when no phase made any.
pub(super) fn api_tables(run: &RunResult) -> String {
    let mut s = String::new();
    for p in run.phases.iter().filter(|p| has_api(p)) {
        s.push_str(&format!(
            "<h4>{}</h4>\n<table>\n<tr><th>endpoint</th><th>count</th><th>p50 (ms)</th>\
             <th>p95 (ms)</th><th>p99 (ms)</th><th>max (ms)</th></tr>\n",
            escape(&p.name)
        ));
        for (endpoint, pcts) in &p.api_ms {
            s.push_str(&row(endpoint, &pcts_cells(pcts)));
        }
        if p.upload_ms.count > 0 {
            s.push_str(&row("upload → stored", &pcts_cells(&p.upload_ms)));
        }
        s.push_str("</table>\n");
    }
    s
}

/// Errors by kind with a total; empty when there were none.
pub(super) fn errors_table(run: &RunResult) -> String {
    if run.errors.values().all(|&n| n == 0) {
        return String::new();
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

/// Target, start, duration and notes of one run (the notes table only when there are notes).
pub(super) fn run_meta(run: &RunResult) -> String {
    let or_dash = |s: &str| {
        if s.trim().is_empty() {
            DASH.to_string()
        } else {
            escape(s)
        }
    };
    let mut s = String::from("<table>\n");
    let facts = [
        ("scenario", or_dash(&run.scenario)),
        ("target", or_dash(&run.target)),
        ("started at", or_dash(&run.started_at)),
        ("duration", duration(run.duration_s)),
        ("phases", run.phases.len().to_string()),
        ("timeline samples", run.timeline.len().to_string()),
    ];
    for (key, value) in facts {
        s.push_str(&format!("<tr><th>{key}</th><td>{value}</td></tr>\n"));
    }
    for (key, value) in &run.notes {
        s.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            escape(key),
            escape(value)
        ));
    }
    s.push_str("</table>\n");
    s
}
