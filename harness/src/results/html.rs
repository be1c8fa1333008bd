//! `report.html`: one self-contained page (inline CSS and SVG, no scripts,
//! no external references) with the checks × backends table, the evidence
//! behind every verdict, balance charts and sync figures.

use std::fmt::Write;

use super::{RunResults, charts};
use crate::checks::Verdict;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.PASS{background:#d9f2d9}.FAIL{background:#f8d0d0;font-weight:bold}.SKIP{background:#eee;color:#666}\
.ok{color:#1a7f1a}.bad{color:#b00;font-weight:bold}details{margin:.3em 0}summary{cursor:pointer}\
code{background:#f5f5f5;padding:0 3px}.muted{color:#666}svg{max-width:100%;height:auto}";

fn verdict_cell(v: Option<Verdict>, anchor: &str) -> String {
    match v {
        Some(v) => format!("<td class=\"{v}\"><a href=\"#{anchor}\">{v}</a></td>"),
        None => "<td>-</td>".into(),
    }
}

pub fn render(r: &RunResults) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>svclab {} {}</title><style>{STYLE}</style></head><body>",
        esc(&r.run),
        esc(&r.scenario)
    );
    let _ = write!(
        s,
        "<h1>svclab: {}</h1><p class=\"muted\">run {} · scenario <code>{}</code> · {} → {}<br>host {} · {} · kernel {} · {} CPUs · {} MiB{}</p>",
        esc(&r.scenario),
        esc(&r.run),
        esc(&r.scenario_file),
        esc(&r.started_at),
        esc(&r.finished_at),
        esc(&r.host.hostname),
        esc(&r.host.os),
        esc(&r.host.kernel),
        r.host.cpus,
        r.host.memory_mib,
        if r.host.emulated {
            " · <b>emulated VM: timings are not comparable with host runs</b>"
        } else {
            ""
        }
    );
    if let Some(i) = &r.interrupted {
        let _ = write!(
            s,
            "<p class=\"FAIL\" id=\"interrupted\">{}</p>",
            esc(&i.line())
        );
        if !i.not_run.is_empty() {
            let _ = write!(s, "<p>Not run: {}</p>", esc(&i.not_run.join(", ")));
        }
    }
    let _ = write!(s, "<h2>Checks</h2><table><tr><th>check</th>");
    for b in &r.backends {
        let _ = write!(s, "<th>{}</th>", esc(&b.backend));
    }
    s.push_str("</tr>");
    for name in r.check_names() {
        let _ = write!(s, "<tr><td>{}</td>", esc(&name));
        for b in &r.backends {
            s.push_str(&verdict_cell(
                r.verdict(b, &name),
                &format!("{}-{}", b.backend, name),
            ));
        }
        s.push_str("</tr>");
    }
    s.push_str("<tr><th>total</th>");
    for b in &r.backends {
        match &b.unavailable {
            Some(why) => {
                let _ = write!(s, "<td class=\"SKIP\">not run: {}</td>", esc(why));
            }
            None => {
                let _ = write!(
                    s,
                    "<td>{} pass · {} fail · {} skip</td>",
                    b.count(Verdict::Pass),
                    b.count(Verdict::Fail),
                    b.count(Verdict::Skip)
                );
            }
        }
    }
    s.push_str("</tr></table>");

    for b in &r.backends {
        let _ = write!(s, "<h2 id=\"{0}\">Backend {0}</h2>", esc(&b.backend));
        if let Some(why) = &b.unavailable {
            let _ = write!(s, "<p>Not run: {}</p>", esc(why));
            continue;
        }
        sync_table(&mut s, b);
        if !b.agent_events.is_empty() {
            s.push_str(
                "<h3>Agent events</h3><table><tr><th>node</th><th>event</th><th>detail</th></tr>",
            );
            for e in &b.agent_events {
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&e.node),
                    esc(&e.kind),
                    esc(&e.detail)
                );
            }
            s.push_str("</table>");
        }
        for c in &b.checks {
            let open = if c.verdict == Verdict::Fail {
                " open"
            } else {
                ""
            };
            let _ = write!(
                s,
                "<details id=\"{}-{}\"{open}><summary><span class=\"{}\">{}</span> <b>{}</b> — {} <span class=\"muted\">({:.1} s)</span></summary>",
                esc(&b.backend),
                esc(&c.name),
                c.verdict,
                c.verdict,
                esc(&c.name),
                esc(&c.summary),
                c.seconds
            );
            if !c.evidence.is_empty() {
                s.push_str("<table><tr><th></th><th>vantage</th><th>target</th><th>expected</th><th>observed</th><th>probes</th></tr>");
                for e in &c.evidence {
                    let _ = write!(
                        s,
                        "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        if e.ok { "ok" } else { "bad" },
                        if e.ok { "✔" } else { "✘" },
                        esc(&e.vantage),
                        esc(&e.target),
                        esc(&e.expected),
                        esc(&e.observed),
                        e.probes
                    );
                }
                s.push_str("</table>");
            }
            if let Some(trace) = &c.trace {
                let _ = write!(
                    s,
                    "<p>The kernel's trace of one failing probe:</p><pre>{}</pre>",
                    esc(trace)
                );
            }
            for t in &c.balance {
                let labels: Vec<String> = t.counts.iter().map(|(l, _)| l.clone()).collect();
                let values: Vec<u64> = t.counts.iter().map(|(_, v)| *v).collect();
                let expected = t.connections as f64 / values.len().max(1) as f64;
                s.push_str(&charts::bars(&t.target, &labels, &values, expected));
                let _ = write!(
                    s,
                    "<p>{} connections over {} endpoints · χ² = {:.2} (df {}) · p = {:.4} · max/min = {:.2} · {}</p>",
                    t.connections,
                    values.len(),
                    t.chi_square,
                    t.degrees_of_freedom,
                    t.p_value,
                    t.max_min_ratio,
                    if t.pass {
                        "<span class=\"ok\">uniform</span>"
                    } else {
                        "<span class=\"bad\">not uniform</span>"
                    }
                );
            }
            s.push_str("</details>");
        }
    }
    s.push_str("<p class=\"muted\">Generated by svclab. Schema of results.json: svclab.dev/results/v1.</p></body></html>");
    s
}

fn sync_table(s: &mut String, b: &super::BackendRun) {
    if b.syncs.is_empty() {
        return;
    }
    let mut full: Vec<f64> = b
        .syncs
        .iter()
        .filter(|r| r.mode == svclab_backends::protocol::SyncMode::Full)
        .map(|r| r.wall_seconds)
        .collect();
    let mut partial: Vec<f64> = b
        .syncs
        .iter()
        .filter(|r| r.mode == svclab_backends::protocol::SyncMode::Partial)
        .map(|r| r.wall_seconds)
        .collect();
    let median = |v: &mut Vec<f64>| {
        if v.is_empty() {
            return "-".to_string();
        }
        v.sort_by(f64::total_cmp);
        format!("{:.1} ms", v[v.len() / 2] * 1e3)
    };
    let errors = b.syncs.iter().filter(|r| r.error.is_some()).count();
    let _ = write!(
        s,
        "<p>{} syncs ({} full, median {}; {} partial, median {}; {} failed) · rules at the end: {}</p>",
        b.syncs.len(),
        full.len(),
        median(&mut full),
        partial.len(),
        median(&mut partial),
        errors,
        b.syncs.last().map_or(0, |r| r.rules)
    );
    if !b.metrics_cross_check.is_empty() {
        let _ = write!(
            s,
            "<p>Agent metrics against harness counts: {}</p>",
            esc(&b.metrics_cross_check.join("; "))
        );
    }
}
