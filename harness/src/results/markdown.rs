//! `summary.md`: the checks × backends table and what failed, for people
//! and for CI job summaries.

use std::fmt::Write;

use super::RunResults;
use crate::checks::Verdict;

pub fn render(r: &RunResults) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# svclab run {}: {}\n", r.run, r.scenario);
    let _ = writeln!(
        s,
        "Host: {} ({}), kernel {}, {} CPUs{}. Started {}, finished {}.\n",
        r.host.hostname,
        r.host.os,
        r.host.kernel,
        r.host.cpus,
        if r.host.emulated {
            ", **emulated VM: timings not comparable with host runs**"
        } else {
            ""
        },
        r.started_at,
        r.finished_at
    );
    if let Some(i) = &r.interrupted {
        let _ = writeln!(s, "> **{}**\n", i.line());
        if !i.not_run.is_empty() {
            let _ = writeln!(s, "Not run: {}.\n", i.not_run.join(", "));
        }
    }
    body(&mut s, r, 2);
    s
}

/// The checks × backends table, the per-backend counts, failures with
/// evidence, agent events and skips with their reasons; its headings at
/// `level` (`##` for 2).
pub fn body(s: &mut String, r: &RunResults, level: usize) {
    let h = "#".repeat(level);
    let hh = "#".repeat(level + 1);
    let _ = write!(s, "| check |");
    for b in &r.backends {
        let _ = write!(s, " {} |", b.backend);
    }
    let _ = write!(s, "\n|---|");
    for _ in &r.backends {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    for name in r.check_names() {
        let _ = write!(s, "| {name} |");
        for b in &r.backends {
            let cell = match r.verdict(b, &name) {
                Some(Verdict::Pass) => "PASS",
                Some(Verdict::Fail) => "**FAIL**",
                Some(Verdict::Skip) => "SKIP",
                None => "-",
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s.push('\n');
    for b in &r.backends {
        if let Some(why) = &b.unavailable {
            let _ = writeln!(s, "- **{}** not run: {why}", b.backend);
            continue;
        }
        let _ = writeln!(
            s,
            "- **{}**: {} passed, {} failed, {} skipped; {} syncs",
            b.backend,
            b.count(Verdict::Pass),
            b.count(Verdict::Fail),
            b.count(Verdict::Skip),
            b.syncs.len()
        );
    }
    for b in &r.backends {
        let failed: Vec<_> = b
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .collect();
        if failed.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{h} Failures on {}\n", b.backend);
        for c in failed {
            let _ = writeln!(s, "{hh} {}\n\n{}\n", c.name, c.summary);
            for e in c.evidence.iter().filter(|e| !e.ok).take(10) {
                let _ = writeln!(
                    s,
                    "- {} -> {}\n  - expected: {}\n  - observed: {}",
                    e.vantage, e.target, e.expected, e.observed
                );
            }
            if let Some(trace) = &c.trace {
                let _ = writeln!(
                    s,
                    "\nThe kernel's trace of one failing probe:\n\n```\n{}\n```",
                    trace.trim_end()
                );
            }
        }
    }
    for b in &r.backends {
        if b.agent_events.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{h} Agent events on {}\n", b.backend);
        for e in &b.agent_events {
            let _ = writeln!(s, "- {} {}: {}", e.node, e.kind, e.detail);
        }
    }
    let skipped: Vec<_> = r
        .backends
        .iter()
        .flat_map(|b| {
            b.checks
                .iter()
                .filter(|c| c.verdict == Verdict::Skip)
                .map(move |c| (b, c))
        })
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(s, "\n{h} Skips\n");
        for (b, c) in skipped {
            let _ = writeln!(s, "- {} / {}: {}", b.backend, c.name, c.summary);
        }
    }
}
