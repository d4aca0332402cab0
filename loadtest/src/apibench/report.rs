//! The API benchmark's report: the verdict first (each target's sustained rate, the clinic's
//! fraction of the ceiling, the goals met or not, the flood's effect), then one chart of p99 and
//! errors against the offered rate for every target, then the tables.

use super::{ApiBench, Flood, Ramp, goal_rps};
use crate::report::{Curve, load_chart};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ramp<'a>(b: &'a ApiBench, backend: &str, target: &str) -> Option<&'a Ramp> {
    b.ramps
        .iter()
        .find(|r| r.backend == backend && r.target == target)
}

fn backends(b: &ApiBench) -> Vec<String> {
    let mut v: Vec<String> = b.ramps.iter().map(|r| r.backend.clone()).collect();
    v.dedup();
    v
}

/// One verdict line per backend, and one per flood.
pub fn verdict_lines(b: &ApiBench) -> Vec<(bool, String)> {
    let mut lines = Vec::new();
    for backend in backends(b) {
        let clinic = ramp(b, &backend, "clinic");
        let ceiling = ramp(b, &backend, "ceiling");
        let goal = goal_rps(&backend);
        if let Some(c) = clinic {
            let mut text = format!(
                "{backend}: the clinic API sustained {:.0} req/s at p99 ≤ {:.0} ms (goal ≥ {goal:.0})",
                c.sustained_rps, b.limits.p99_ms
            );
            let mut ok = c.sustained_rps >= goal;
            if let Some(k) = ceiling {
                let frac = if k.sustained_rps > 0.0 {
                    c.sustained_rps / k.sustained_rps
                } else {
                    f64::NAN
                };
                text.push_str(&format!(
                    "; the bare ceiling {:.0} req/s, so {:.0}% of it (goal ≥ 50%)",
                    k.sustained_rps,
                    frac * 100.0
                ));
                ok &= frac >= 0.5;
                text.push_str(&format!(
                    ". What stopped each: the clinic, {}; the ceiling, {}",
                    c.stopped_because, k.stopped_because
                ));
            } else {
                text.push_str(&format!(". What stopped it: {}", c.stopped_because));
            }
            lines.push((ok, text));
        } else if let Some(k) = ceiling {
            lines.push((
                true,
                format!(
                    "{backend}: the bare ceiling sustained {:.0} req/s (what stopped it: {})",
                    k.sustained_rps, k.stopped_because
                ),
            ));
        }
    }
    for f in &b.floods {
        lines.push((f.passed, flood_line(f)));
    }
    lines
}

fn flood_line(f: &Flood) -> String {
    format!(
        "{}: with {} concurrent bad sign-ins beside the mix at {:.0} req/s, everyone else's p99 went {:.1} → {:.1} ms ({:.2}×, goal ≤ 2×), {} 5xx",
        f.backend,
        f.attackers,
        f.rps,
        f.baseline.all_ms.p99,
        f.flooded.all_ms.p99,
        f.p99_ratio,
        f.flooded.server_errors
    )
}

/// The verdict as plain text (printed at the end of a run).
pub fn verdict_text(b: &ApiBench) -> String {
    verdict_lines(b)
        .into_iter()
        .map(|(ok, l)| format!("{} {l}", if ok { "PASS" } else { "MISS" }))
        .collect::<Vec<_>>()
        .join("\n")
}

const STYLE: &str = "<style>
body{font-family:system-ui,sans-serif;color:#222;max-width:1440px;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.3rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.3rem 0 1rem;font-size:.88rem}
th,td{padding:.2rem .6rem;border-bottom:1px solid #e4e4e4;text-align:left}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2a7d2a}.bad{color:#c0392b}.muted{color:#777}
svg{max-width:100%;height:auto}
</style>
";

fn n(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "–".into()
    }
}

/// The HTML page.
pub fn html(b: &ApiBench) -> String {
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<title>API benchmark</title>\n");
    o.push_str(STYLE);
    o.push_str("</head>\n<body>\n<h1>API benchmark: a busy morning's mix</h1>\n");
    o.push_str("<h2>Verdict</h2>\n<ul>\n");
    for (ok, line) in verdict_lines(b) {
        o.push_str(&format!(
            "<li class=\"{}\">{}</li>\n",
            if ok { "ok" } else { "bad" },
            escape(&line)
        ));
    }
    o.push_str("</ul>\n");
    let curves: Vec<Curve> = b
        .ramps
        .iter()
        .map(|r| {
            let mut points: Vec<(f64, f64, f64)> = r
                .levels
                .iter()
                .map(|l| (l.offered_rps, l.all_ms.p99, l.error_fraction()))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Curve {
                label: format!("{} ({})", r.target, r.backend),
                points,
            }
        })
        .collect();
    if !curves.is_empty() {
        o.push_str(&load_chart(
            "p99 latency and errors against load",
            "requests/s offered",
            &curves,
            Some(b.limits.p99_ms),
            Some(b.limits.max_error_fraction),
        ));
    }
    o.push_str(&format!(
        "<p class=\"muted\">{}. Limits: p99 of the whole mix ≤ {:.0} ms, at most {:.1}% errors, at least {:.0}% of the offered rate answered, no 5xx, the client's own lag p99 ≤ {:.0} ms. Open-loop load: operations start on schedule whether or not earlier ones have answered, and are timed from when the client started them; its lag against the schedule is the lag column.</p>\n",
        escape(&b.machine),
        b.limits.p99_ms,
        b.limits.max_error_fraction * 100.0,
        b.limits.min_achieved * 100.0,
        b.limits.max_lag_ms
    ));

    if !b.floods.is_empty() {
        o.push_str("<h2>Sign-in flood</h2>\n<table><tr><th>backend</th><th>req/s</th><th>level</th><th class=n>p50 ms</th><th class=n>p99 ms</th><th class=n>sign-in p99 ms</th><th class=n>5xx</th><th class=n>errors %</th><th>attackers' answers</th></tr>\n");
        for f in &b.floods {
            for (l, answers) in [
                (&f.baseline, String::new()),
                (&f.flooded, format!("{:?}", f.attacker_answers)),
            ] {
                let signin = l
                    .routes
                    .get("POST /api/v1/auth/login")
                    .map_or(f64::NAN, |p| p.p99);
                o.push_str(&format!(
                    "<tr><td>{}</td><td class=n>{:.0}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>\n",
                    escape(&f.backend), f.rps, escape(&l.label), n(l.all_ms.p50, 2), n(l.all_ms.p99, 2), n(signin, 1), l.server_errors, n(l.error_fraction() * 100.0, 2), escape(&answers)
                ));
            }
        }
        o.push_str("</table>\n");
    }

    o.push_str("<h2>Levels</h2>\n");
    for r in &b.ramps {
        o.push_str(&format!(
            "<h3>{} on {}: sustained {:.0} req/s</h3>\n<table><tr><th>offered req/s</th><th class=n>answered req/s</th><th class=n>p50 ms</th><th class=n>p99 ms</th><th class=n>max ms</th><th class=n>errors %</th><th class=n>5xx</th><th class=n>server CPU %</th><th class=n>RSS MiB</th><th class=n>client lag p99 ms</th><th class=n>steal %</th><th>verdict</th></tr>\n",
            escape(&r.target),
            escape(&r.backend),
            r.sustained_rps
        ));
        let mut levels: Vec<_> = r.levels.iter().collect();
        levels.sort_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps));
        for l in levels {
            o.push_str(&format!(
                "<tr><td class=n>{:.0}</td><td class=n>{:.0}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{:.0}</td><td class=n>{:.0}</td><td class=n>{}</td><td class=n>{:.0}</td><td class=\"{}\">{}</td></tr>\n",
                l.offered_rps,
                l.achieved_rps,
                n(l.all_ms.p50, 2),
                n(l.all_ms.p99, 2),
                n(l.all_ms.max, 1),
                n(l.error_fraction() * 100.0, 2),
                l.server_errors,
                l.server_cpu_pct,
                l.server_rss_mib,
                n(l.client_lag_ms.p99, 1),
                l.steal_pct,
                if l.passed { "ok" } else { "bad" },
                escape(l.failed_because.as_deref().unwrap_or("ok"))
            ));
        }
        o.push_str("</table>\n");
    }

    o.push_str("<h2>Routes at the highest level sustained</h2>\n");
    for r in &b.ramps {
        let Some(l) = r
            .levels
            .iter()
            .filter(|l| l.passed)
            .max_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps))
        else {
            continue;
        };
        o.push_str(&format!(
            "<h3>{} on {} at {:.0} req/s</h3>\n<table><tr><th>route</th><th class=n>requests</th><th class=n>p50 ms</th><th class=n>p99 ms</th><th class=n>max ms</th></tr>\n",
            escape(&r.target),
            escape(&r.backend),
            l.offered_rps
        ));
        for (route, p) in &l.routes {
            o.push_str(&format!(
                "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>\n",
                escape(route),
                p.count,
                n(p.p50, 2),
                n(p.p99, 2),
                n(p.max, 1)
            ));
        }
        o.push_str("</table>\n");
        if !l.substituted.is_empty() {
            o.push_str(&format!(
                "<p class=\"muted\">Ran as their stand-in (nothing to act on at that moment): {}</p>\n",
                escape(&format!("{:?}", l.substituted))
            ));
        }
    }
    let samples: Vec<&String> = b
        .ramps
        .iter()
        .flat_map(|r| r.levels.iter())
        .chain(b.floods.iter().flat_map(|f| [&f.baseline, &f.flooded]))
        .flat_map(|l| l.error_samples.iter())
        .collect();
    if !samples.is_empty() {
        o.push_str("<h2>Unexpected answers (first few per level)</h2>\n<ul>\n");
        for s in samples.iter().take(60) {
            o.push_str(&format!("<li>{}</li>\n", escape(s)));
        }
        o.push_str("</ul>\n");
    }
    o.push_str(
        "<h2>The mix</h2>\n<table><tr><th>operation</th><th class=n>% of operations</th></tr>\n",
    );
    for (op, w) in &b.mix {
        o.push_str(&format!(
            "<tr><td>{}</td><td class=n>{w:.1}</td></tr>\n",
            escape(op)
        ));
    }
    o.push_str("</table>\n</body>\n</html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::super::drive::{Level, Limits};
    use super::super::{ApiBench, Flood, Ramp};
    use super::*;
    use crate::results::Pcts;

    fn level(rps: f64, p99: f64, passed: bool) -> Level {
        Level {
            label: format!("{rps}"),
            offered_rps: rps,
            achieved_rps: rps,
            all_ms: Pcts {
                count: 10,
                p50: 1.0,
                p95: 2.0,
                p99,
                max: p99,
            },
            passed,
            failed_because: (!passed).then(|| "p99 too high".into()),
            ..Level::default()
        }
    }

    fn ramp(target: &str, best: f64) -> Ramp {
        Ramp {
            backend: "sqlite".into(),
            target: target.into(),
            levels: vec![level(best, 10.0, true), level(best * 1.25, 40.0, false)],
            sustained_rps: best,
            stopped_because: "p99 too high".into(),
            setup_s: 1.0,
        }
    }

    fn bench(clinic: f64, ceiling: f64, flood_ratio: f64) -> ApiBench {
        ApiBench {
            started: String::new(),
            limits: Limits {
                p99_ms: 25.0,
                max_error_fraction: 0.001,
                min_achieved: 0.95,
                max_lag_ms: 10.0,
                max_steal_pct: 5.0,
            },
            mix: vec![("patient read".into(), 100.0)],
            ramps: vec![ramp("ceiling", ceiling), ramp("clinic", clinic)],
            floods: vec![Flood {
                backend: "sqlite".into(),
                rps: 300.0,
                attackers: 64,
                baseline: level(300.0, 4.0, true),
                flooded: level(300.0, 4.0 * flood_ratio, true),
                attacker_answers: [(429u16, 100u64)].into_iter().collect(),
                p99_ratio: flood_ratio,
                passed: flood_ratio <= 2.0,
            }],
            quick: false,
            machine: "test".into(),
        }
    }

    #[test]
    fn the_verdict_judges_goal_fraction_and_flood() {
        let good = verdict_lines(&bench(400.0, 700.0, 1.5));
        assert!(good.iter().all(|(ok, _)| *ok), "{good:?}");
        assert!(good[0].1.contains("sustained 400 req/s"), "{}", good[0].1);
        assert!(good[0].1.contains("57% of it"), "{}", good[0].1);
        // Below half the ceiling, below the goal, and a flood that tripled p99: each a miss.
        let frac = verdict_lines(&bench(400.0, 900.0, 1.5));
        assert!(!frac[0].0);
        let goal = verdict_lines(&bench(250.0, 400.0, 1.5));
        assert!(!goal[0].0);
        let flood = verdict_lines(&bench(400.0, 700.0, 3.0));
        assert!(!flood[1].0, "{flood:?}");
        assert!(verdict_text(&bench(400.0, 700.0, 3.0)).contains("MISS sqlite: with 64"));
    }

    #[test]
    fn the_page_opens_with_the_verdict_and_leaves_empty_sections_out() {
        let page = html(&bench(400.0, 700.0, 1.5));
        let verdict = page.find("<h2>Verdict</h2>").unwrap();
        let first_table = page.find("<table").unwrap();
        assert!(verdict < first_table);
        assert!(
            !page.contains("Unexpected answers"),
            "no errors, no section"
        );
        let mut with_errors = bench(400.0, 700.0, 1.5);
        with_errors.ramps[1].levels[0].error_samples = vec!["GET /x: 500".into()];
        assert!(html(&with_errors).contains("Unexpected answers"));
    }
}
