//! The verdict that opens every report: per target, the level it sustained and what stopped it,
//! then the ratios between targets.

use super::*;

/// What one run showed, in the verdict's terms.
pub(super) struct Finding {
    label: String,
    /// The level it sustained, in consults: `highest_sustained` of a capacity search, the peak
    /// of a scenario that ran clean; `None` when there is nothing to compare.
    level: Option<u32>,
    /// Why `level` is `None` (or 0), for the ratios.
    why_not: &'static str,
    /// The sentence (HTML).
    html: String,
}

/// Total errors of a run: its errors by kind, or the phases' counts when it has none by kind.
pub(super) fn total_errors(run: &RunResult) -> u64 {
    let by_kind = run
        .errors
        .values()
        .fold(0u64, |sum, &n| sum.saturating_add(n));
    if by_kind > 0 {
        by_kind
    } else {
        run.phases
            .iter()
            .fold(0u64, |sum, p| sum.saturating_add(p.errors))
    }
}

/// The larger of a phase's audio and video loss.
pub(super) fn phase_loss(p: &PhaseResult) -> f64 {
    p.audio_loss.max(p.video_loss)
}

/// `3 errors (api_5xx 2, media_timeout 1)`.
fn errors_phrase(run: &RunResult, total: u64) -> String {
    let noun = if total == 1 { "error" } else { "errors" };
    let kinds: Vec<String> = run
        .errors
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(kind, n)| format!("{} {n}", escape(kind)))
        .collect();
    if kinds.is_empty() {
        format!("{total} {noun}")
    } else {
        format!("{total} {noun} ({})", kinds.join(", "))
    }
}

/// The finding of a run with a capacity search.
fn capacity_finding(run: &RunResult, label: &str, cap: &Capacity) -> Finding {
    let mut html = format!(
        "<strong>{}</strong>: sustained <strong>{} consults</strong> within p99 ≤ {} ms and \
         loss ≤ {} %",
        escape(label),
        cap.highest_sustained,
        ms(cap.latency_limit_ms),
        pct(cap.loss_limit)
    );
    if let Some(step) = cap
        .steps
        .iter()
        .find(|s| s.ok && s.consults == cap.highest_sustained)
    {
        html.push_str(&format!(
            " (there: p99 {} ms, loss {} %)",
            ms(step.latency_p99_ms),
            pct(step.loss)
        ));
    }
    let stopped = cap.stopped_because.trim().trim_end_matches('.');
    if stopped.is_empty() {
        html.push_str("; the reason it stopped was not recorded");
    } else {
        html.push_str(&format!("; stopped because {}", escape(stopped)));
    }
    let errors = total_errors(run);
    if errors > 0 {
        html.push_str(&format!("; {}", errors_phrase(run, errors)));
    }
    html.push('.');
    Finding {
        label: label.to_string(),
        level: Some(cap.highest_sustained),
        why_not: "sustained no level",
        html,
    }
}

/// The finding of a scenario run (no capacity search): did it run clean, and its peak.
fn scenario_finding(run: &RunResult, label: &str) -> Finding {
    let name = format!("<strong>{}</strong>", escape(label));
    let errors = total_errors(run);
    let Some(peak) = run.phases.iter().rev().max_by_key(|p| p.consults) else {
        let html = if errors > 0 {
            format!(
                "{name}: <span class=\"bad\">not clean</span>: {}; no phases recorded.",
                errors_phrase(run, errors)
            )
        } else {
            format!("{name}: nothing measured (no phases recorded).")
        };
        return Finding {
            label: label.to_string(),
            level: None,
            why_not: "measured nothing",
            html,
        };
    };
    let without_media = run.errors.get("media_timeout").copied().unwrap_or(0);
    let received = run.phases.iter().any(|p| p.media_latency_ms.count > 0);
    let at_peak = format!(
        "peak <strong>{} consults</strong> (p99 {} ms, loss {} %)",
        peak.consults,
        ms(peak.media_latency_ms.p99),
        pct(phase_loss(peak))
    );
    if errors == 0 && without_media == 0 && received {
        return Finding {
            label: label.to_string(),
            level: Some(peak.consults),
            why_not: "",
            html: format!(
                "{name}: <span class=\"ok\">ran clean</span>: no errors, every peer got media; \
                 {at_peak}."
            ),
        };
    }
    let mut problems = Vec::new();
    if errors > 0 {
        problems.push(errors_phrase(run, errors));
    }
    if without_media > 0 {
        let peers = if without_media == 1 { "peer" } else { "peers" };
        problems.push(format!("{without_media} {peers} got no media"));
    }
    if !received {
        problems.push("no media received".to_string());
    }
    Finding {
        label: label.to_string(),
        level: None,
        why_not: "did not run clean",
        html: format!(
            "{name}: <span class=\"bad\">not clean</span>: {}; {at_peak}.",
            problems.join("; ")
        ),
    }
}

/// The finding of one run.
pub(super) fn finding(run: &RunResult, label: &str) -> Finding {
    match &run.capacity {
        Some(cap) => capacity_finding(run, label, cap),
        None => scenario_finding(run, label),
    }
}

/// The run the ratios divide: the first `clinic` run (ours), else the first run.
fn reference(runs: &[RunResult]) -> usize {
    runs.iter()
        .position(|run| run.target.trim().eq_ignore_ascii_case("clinic"))
        .unwrap_or(0)
}

/// `clinic ÷ janus 1.08× (40 ÷ 37 consults)`, per other run. Empty with one run.
fn ratios(runs: &[RunResult], findings: &[Finding]) -> String {
    if findings.len() < 2 {
        return String::new();
    }
    let r = reference(runs);
    let Some(base) = findings.get(r) else {
        return String::new();
    };
    let items: Vec<String> = findings
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != r)
        .map(|(_, other)| {
            let head = format!(
                "<strong>{}</strong> ÷ <strong>{}</strong>",
                escape(&base.label),
                escape(&other.label)
            );
            match (base.level, other.level) {
                (Some(a), Some(b)) if a > 0 && b > 0 => format!(
                    "{head}: <strong>{}×</strong> ({a} ÷ {b} consults)",
                    num(f64::from(a) / f64::from(b), 2)
                ),
                (Some(_), Some(_)) => {
                    let zero = if other.level == Some(0) { other } else { base };
                    format!(
                        "{head}: {DASH} ({} sustained no level)",
                        escape(&zero.label)
                    )
                }
                (None, _) => format!("{head}: {DASH} ({} {})", escape(&base.label), base.why_not),
                (_, None) => format!(
                    "{head}: {DASH} ({} {})",
                    escape(&other.label),
                    other.why_not
                ),
            }
        })
        .collect();
    format!(
        "<p class=\"ratios\">Sustained level: {}.</p>\n",
        items.join("; ")
    )
}

/// The verdict section: one sentence per run, then the ratios.
pub(super) fn verdict(runs: &[RunResult], labels: &[String]) -> String {
    let findings: Vec<Finding> = runs
        .iter()
        .zip(labels)
        .map(|(run, label)| finding(run, label))
        .collect();
    let mut s = String::from("<section class=\"verdict\">\n<h2>Verdict</h2>\n<ul>\n");
    for f in &findings {
        s.push_str(&format!("<li>{}</li>\n", f.html));
    }
    s.push_str("</ul>\n");
    s.push_str(&ratios(runs, &findings));
    s.push_str("</section>\n");
    s
}
