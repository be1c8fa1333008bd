//! The bench folder's `report.html` (self-contained: inline CSS and SVG
//! charts, no scripts) and the terminal tables, both read from the figures
//! of `bench.json`, plus the targets each kind of bench is held to.

use std::fmt::Write as _;

use super::compare::human;
use super::schema::{BenchResults, Status};
use crate::results::charts;
use crate::results::html::{STYLE, esc};

/// One target: what, whether it was met, and the numbers behind it.
pub struct TargetCheck {
    pub what: String,
    pub met: bool,
    pub detail: String,
}

/// The targets the brief sets, checked on every case that has the figures.
pub fn targets(r: &BenchResults) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let mut push =
        |what: String, met: bool, detail: String| out.push(TargetCheck { what, met, detail });
    match r.kind.as_str() {
        "sync" => {
            for c in r.cases.iter().filter(|c| c.status == Status::Ok) {
                let (b, n) = (c.backend.as_str(), c.size);
                let f = |m: &str, s: &str| r.figure(b, n, m, s);
                for (m, what) in [
                    ("floor_full_ratio", "full sync ≤ 1.1x the bare tool"),
                    (
                        "floor_partial_ratio",
                        "partial sync p50 ≤ 1.1x the bare tool",
                    ),
                ] {
                    if let Some(v) = f(m, "value") {
                        push(format!("{b} {n}: {what}"), v <= 1.1, format!("{v:.2}x"));
                    }
                }
                for (m, what) in [
                    (
                        "harness_cpu_ratio_full",
                        "harness CPU < 5% of the agent's (full sync)",
                    ),
                    (
                        "harness_cpu_ratio_partial",
                        "harness CPU < 5% of the agent's (partial syncs, NPL prober aside)",
                    ),
                ] {
                    if let Some(v) = f(m, "value") {
                        push(
                            format!("{b} {n}: {what}"),
                            v < 0.05,
                            format!("{:.1}%", v * 100.0),
                        );
                    }
                }
                if let (Some(npl), Some(p)) = (
                    f("network_programming_duration_seconds", "p99"),
                    f("sync_partial_proxy_rules_duration_seconds", "p99"),
                ) {
                    push(
                        format!("{b} {n}: NPL p99 ≤ partial sync p99 + 100 ms"),
                        npl <= p + 0.1,
                        format!("{} vs {}", human(npl, "seconds"), human(p + 0.1, "seconds")),
                    );
                }
            }
        }
        "topology" => {
            for n in r.sizes() {
                for (m, what) in [
                    ("topology_create_seconds", "create ≤ 3 s"),
                    ("topology_teardown_seconds", "teardown ≤ 3 s"),
                ] {
                    if let Some(v) = r.figure("svclab", n, m, "p50") {
                        push(
                            format!("{n} pods: {what} (median)"),
                            v <= 3.0,
                            human(v, "seconds"),
                        );
                    }
                }
                for (m, what) in [
                    (
                        "topology_create_speedup_over_ip",
                        "create ≥ 10x faster than ip",
                    ),
                    (
                        "topology_teardown_speedup_over_ip",
                        "teardown ≥ 10x faster than ip",
                    ),
                ] {
                    if let Some(v) = r.figure("svclab", n, m, "value") {
                        push(format!("{n} pods: {what}"), v >= 10.0, format!("{v:.1}x"));
                    }
                }
            }
        }
        "probes" => {
            for c in &r.cases {
                if let Some(v) = r.figure(&c.backend, c.size, "probes_per_second", "value") {
                    push(
                        format!("{} probes through DNAT ≥ 10,000/s", c.backend),
                        v >= 10_000.0,
                        format!("{v:.0}/s"),
                    );
                }
            }
        }
        _ => {}
    }
    out
}

/// The sync bench's main columns: (heading, metric, stat).
const SYNC_COLUMNS: [(&str, &str, &str); 10] = [
    ("full sync", "sync_full_proxy_rules_duration_seconds", "p50"),
    ("full CPU", "sync_full_cpu_seconds", "p50"),
    (
        "partial p50",
        "sync_partial_proxy_rules_duration_seconds",
        "p50",
    ),
    (
        "partial p99",
        "sync_partial_proxy_rules_duration_seconds",
        "p99",
    ),
    ("NPL p50", "network_programming_duration_seconds", "p50"),
    ("NPL p99", "network_programming_duration_seconds", "p99"),
    ("connect p50", "datapath_connect_latency_seconds", "p50"),
    ("connect p99", "datapath_connect_latency_seconds", "p99"),
    ("floor full", "floor_full_ratio", "value"),
    ("floor partial", "floor_partial_ratio", "value"),
];

fn cell(r: &BenchResults, backend: &str, size: u64, metric: &str, stat: &str) -> String {
    r.figures
        .iter()
        .find(|f| f.backend == backend && f.size == size && f.metric == metric && f.stat == stat)
        .map_or("-".into(), |f| match f.unit.as_str() {
            "ratio" => format!("{:.2}x", f.value),
            u => human(f.value, u),
        })
}

/// The sync bench as a terminal table (Markdown, so it pastes into a
/// report as it is).
pub fn sync_table(r: &BenchResults) -> String {
    let mut s = String::from("| backend | Services | status |");
    for (h, _, _) in SYNC_COLUMNS {
        let _ = write!(s, " {h} |");
    }
    s.push_str("\n|---|---|---|");
    s.push_str(&"---|".repeat(SYNC_COLUMNS.len()));
    s.push('\n');
    for c in &r.cases {
        let _ = write!(s, "| {} | {} | {} |", c.backend, c.size, c.status);
        for (_, m, st) in SYNC_COLUMNS {
            let _ = write!(s, " {} |", cell(r, &c.backend, c.size, m, st));
        }
        s.push('\n');
    }
    for c in r.cases.iter().filter(|c| c.reason.is_some()) {
        let _ = writeln!(
            s,
            "- {} {}: {}: {}",
            c.backend,
            c.size,
            c.status,
            c.reason.as_deref().unwrap_or("")
        );
    }
    s
}

pub fn targets_text(r: &BenchResults) -> String {
    let mut s = String::new();
    for t in targets(r) {
        let _ = writeln!(
            s,
            "[{}] {}: {}",
            if t.met { "met" } else { "MISSED" },
            t.what,
            t.detail
        );
    }
    s
}

fn series(r: &BenchResults, metric: &str, stat: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    r.backends()
        .into_iter()
        .map(|b| {
            let pts = r
                .sizes()
                .into_iter()
                .filter_map(|n| r.figure(&b, n, metric, stat).map(|v| (n as f64, v)))
                .collect();
            (b, pts)
        })
        .filter(|(_, pts): &(String, Vec<(f64, f64)>)| !pts.is_empty())
        .collect()
}

fn header(s: &mut String, r: &BenchResults) {
    let h = &r.host;
    let _ = write!(
        s,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>svclab bench {0}</title><style>{STYLE}</style></head><body>\
         <h1>svclab bench {0}</h1><p class=\"muted\">run {1} · {2} → {3}<br>host {4} · {5} · kernel {6} · {7} CPUs ({8}) · {9} MiB<br>\
         load average at start {10:.1}/{11:.1}/{12:.1}, at end {13:.1}/{14:.1}/{15:.1}{16}</p>",
        esc(&r.kind),
        esc(&r.run),
        esc(&r.started_at),
        esc(&r.finished_at),
        esc(&h.hostname),
        esc(&h.os),
        esc(&h.kernel),
        h.cpus,
        esc(&h.cpu_model),
        h.memory_mib,
        r.load_at_start.0[0],
        r.load_at_start.0[1],
        r.load_at_start.0[2],
        r.load_at_end.0[0],
        r.load_at_end.0[1],
        r.load_at_end.0[2],
        if r.load_at_start.0[0] > h.cpus as f64 * 0.5 {
            " · <b>the machine was shared: other work competed for the CPUs</b>"
        } else {
            ""
        }
    );
    if h.emulated {
        s.push_str(
            "<p class=\"bad\">Emulated VM (svclab vm): these timings are not comparable with \
             host runs.</p>",
        );
    }
    let _ = write!(
        s,
        "<p>Settings: <code>{}</code></p>",
        esc(&r.settings.to_string())
    );
}

fn targets_html(s: &mut String, r: &BenchResults) {
    let t = targets(r);
    if t.is_empty() {
        return;
    }
    s.push_str("<h2>Targets</h2><table><tr><th>target</th><th>measured</th><th></th></tr>");
    for t in &t {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&t.what),
            esc(&t.detail),
            if t.met { "ok" } else { "bad" },
            if t.met { "met" } else { "missed" }
        );
    }
    s.push_str("</table>");
}

fn status_html(s: &mut String, r: &BenchResults) {
    s.push_str(
        "<h2>Cases</h2><table><tr><th>backend</th><th>size</th><th>status</th><th>why</th></tr>",
    );
    for c in &r.cases {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            esc(&c.backend),
            c.size,
            if c.status == Status::Ok { "ok" } else { "bad" },
            c.status,
            esc(c.reason.as_deref().unwrap_or(""))
        );
    }
    s.push_str("</table>");
}

fn figures_html(s: &mut String, r: &BenchResults) {
    s.push_str(
        "<h2>Every figure</h2><table><tr><th>backend</th><th>size</th><th>metric</th>\
         <th>value</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>",
    );
    let mut seen: Vec<(String, u64, String)> = Vec::new();
    for f in &r.figures {
        let k = (f.backend.clone(), f.size, f.metric.clone());
        if seen.contains(&k) {
            continue;
        }
        seen.push(k);
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            esc(&f.backend),
            f.size,
            esc(&f.metric)
        );
        for st in ["value", "min", "p50", "p90", "p99", "max"] {
            let _ = write!(
                s,
                "<td>{}</td>",
                esc(&cell(r, &f.backend, f.size, &f.metric, st))
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
}

fn sync_html(s: &mut String, r: &BenchResults) {
    let charts_spec: [(&str, &str, &str, &str, bool); 7] = [
        (
            "Full sync (agent wall time)",
            "sync_full_proxy_rules_duration_seconds",
            "p50",
            "seconds",
            true,
        ),
        (
            "Full sync CPU (agent + tool)",
            "sync_full_cpu_seconds",
            "p50",
            "CPU seconds",
            true,
        ),
        (
            "Partial sync p50",
            "sync_partial_proxy_rules_duration_seconds",
            "p50",
            "seconds",
            true,
        ),
        (
            "Partial sync p99",
            "sync_partial_proxy_rules_duration_seconds",
            "p99",
            "seconds",
            true,
        ),
        (
            "Network programming latency p99 (client-observed)",
            "network_programming_duration_seconds",
            "p99",
            "seconds",
            true,
        ),
        (
            "Data path: connect latency p50",
            "datapath_connect_latency_seconds",
            "p50",
            "seconds",
            false,
        ),
        (
            "Data path: connect latency p99",
            "datapath_connect_latency_seconds",
            "p99",
            "seconds",
            false,
        ),
    ];
    s.push_str("<h2>Against Service count</h2>");
    for (title, metric, stat, y, log) in charts_spec {
        let ser = series(r, metric, stat);
        if !ser.is_empty() {
            s.push_str(&charts::lines(title, "Services", y, &ser, log));
        }
    }
    s.push_str("<h2>Numbers</h2><table><tr><th>backend</th><th>Services</th><th>status</th>");
    for (h, _, _) in SYNC_COLUMNS {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>");
    for c in &r.cases {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td>",
            esc(&c.backend),
            c.size,
            if c.status == Status::Ok { "ok" } else { "bad" },
            c.status
        );
        for (_, m, st) in SYNC_COLUMNS {
            let _ = write!(s, "<td>{}</td>", esc(&cell(r, &c.backend, c.size, m, st)));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s.push_str(
        "<h2>The floor</h2><p>The agent's dumped tool input, replayed with the bare tool in a \
         fresh namespace: agent time over tool time (1.00x would be no overhead at all).</p>\
         <table><tr><th>backend</th><th>Services</th><th>agent full</th><th>tool full</th><th>ratio</th>\
         <th>CPU ratio</th><th>agent partial p50</th><th>tool partial p50</th><th>ratio</th></tr>",
    );
    for c in r.cases.iter().filter(|c| {
        r.figure(&c.backend, c.size, "floor_full_seconds", "value")
            .is_some()
    }) {
        let g = |m: &str, st: &str| cell(r, &c.backend, c.size, m, st);
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.backend),
            c.size,
            g("sync_full_proxy_rules_duration_seconds", "p50"),
            g("floor_full_seconds", "value"),
            g("floor_full_ratio", "value"),
            g("floor_full_cpu_ratio", "value"),
            g("sync_partial_proxy_rules_duration_seconds", "p50"),
            g("floor_partial_seconds", "p50"),
            g("floor_partial_ratio", "value"),
        );
    }
    s.push_str("</table>");
}

pub fn render(r: &BenchResults) -> String {
    let mut s = String::new();
    header(&mut s, r);
    targets_html(&mut s, r);
    if r.kind == "sync" {
        sync_html(&mut s, r);
    }
    status_html(&mut s, r);
    figures_html(&mut s, r);
    s.push_str(
        "<p class=\"muted\">Generated by svclab bench. Schema of bench.json: svclab.dev/bench/v1 \
         (results/README.md).</p></body></html>",
    );
    s
}
