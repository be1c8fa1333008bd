//! A matrix folder's `summary.md`, `report.html` and `junit.xml`: an
//! overview whose columns are kernels, then each kernel's checks × backends
//! table drawn by the run report's own code (`results::{markdown, html,
//! junit}`).

use std::fmt::Write;

use super::{HOST, Matrix, kernel_folder};
use crate::checks::Verdict;
use crate::results::{BackendRun, RunResults, html, junit as run_junit, markdown as run_md};

/// What the report says about VM kernels.
pub const EMULATED: &str = "Cells on a VM kernel ran under `svclab vm` (qemu without KVM, \
    emulated): their verdicts count like the host's, their timings are not comparable with the \
    host's.";

/// The marker of a cell the plan has and no folder ran.
pub const MISSING: &str = "MISSING: no folder of this matrix ran this cell";

/// One kernel's cells as one run's results, so the run report's tables
/// draw them; a missing cell is a backend that did not run, saying so.
pub fn kernel_results(m: &Matrix, kernel: &str, with_missing: bool) -> RunResults {
    let cells: Vec<_> = m.cells.iter().filter(|c| c.kernel == kernel).collect();
    let mut backends: Vec<BackendRun> = Vec::new();
    for id in m.plan.cells.iter().filter(|c| c.kernel == kernel) {
        if let Some(c) = cells.iter().find(|c| c.backend == id.backend) {
            backends.push(c.result.clone());
        } else if with_missing && m.missing.contains(id) {
            backends.push(BackendRun {
                unavailable: Some(MISSING.into()),
                ..BackendRun::new(&id.backend)
            });
        }
    }
    RunResults {
        schema: crate::results::SCHEMA.into(),
        run: kernel.to_string(),
        scenario: m.plan.scenario.name.clone(),
        scenario_file: m.plan.scenario.file.clone(),
        started_at: m.started_at.clone(),
        finished_at: m.finished_at.clone(),
        host: cells.first().map(|c| c.host.clone()).unwrap_or_default(),
        backends,
        interrupted: None,
    }
}

/// `host (6.18.0-1-amd64)`, `6.1 (6.1.0-57-amd64, emulated)`.
fn kernel_label(m: &Matrix, kernel: &str) -> String {
    let cell = m.cells.iter().find(|c| c.kernel == kernel);
    let release = cell.map(|c| c.host.kernel.as_str()).unwrap_or("");
    let emulated = cell.is_some_and(|c| c.host.emulated) || (cell.is_none() && kernel != HOST);
    match (release.is_empty(), emulated) {
        (true, true) => format!("{kernel} (emulated)"),
        (true, false) => kernel.to_string(),
        (false, true) => format!("{kernel} ({release}, emulated)"),
        (false, false) => format!("{kernel} ({release})"),
    }
}

/// A cell's verdict counts, or why it has none.
fn cell_text(m: &Matrix, kernel: &str, backend: &str) -> Option<(String, &'static str)> {
    if let Some(c) = m
        .cells
        .iter()
        .find(|c| c.kernel == kernel && c.backend == backend)
    {
        let b = &c.result;
        if let Some(why) = &b.unavailable {
            return Some((format!("not run: {why}"), "SKIP"));
        }
        let class = if b.count(Verdict::Fail) > 0 {
            "FAIL"
        } else {
            "PASS"
        };
        return Some((
            format!(
                "{} pass · {} fail · {} skip",
                b.count(Verdict::Pass),
                b.count(Verdict::Fail),
                b.count(Verdict::Skip)
            ),
            class,
        ));
    }
    m.missing
        .iter()
        .any(|c| c.kernel == kernel && c.backend == backend)
        .then(|| ("MISSING".to_string(), "FAIL"))
}

/// The plan's backends, in order.
fn backends(m: &Matrix) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in &m.plan.cells {
        if !out.contains(&c.backend) {
            out.push(c.backend.clone());
        }
    }
    out
}

fn provenance(m: &Matrix) -> String {
    let total = m.plan.cells.len();
    let mut s = format!(
        "scenario {} ({}, sha256 {}) · {} of the plan's {total} cell(s) here",
        m.plan.scenario.name,
        m.plan.scenario.file,
        &m.plan.scenario.sha256[..m.plan.scenario.sha256.len().min(12)],
        m.cells.len()
    );
    if let Some(sh) = m.shard {
        let _ = write!(s, " · shard {sh}");
    }
    if !m.merged_from.is_empty() {
        let _ = write!(s, " · merged from {}", m.merged_from.join(", "));
    }
    let _ = write!(s, " · {} → {}", m.started_at, m.finished_at);
    s
}

fn missing_line(m: &Matrix) -> Option<String> {
    (!m.missing.is_empty()).then(|| {
        format!(
            "MISSING: {} cell(s) of the plan have no results: {}",
            m.missing.len(),
            super::exec::names(&m.missing)
        )
    })
}

pub fn markdown(m: &Matrix) -> String {
    let mut s = String::new();
    let kernels = m.kernels();
    let _ = writeln!(s, "# svclab matrix: {}\n", m.plan.scenario.name);
    let _ = writeln!(s, "{}.\n", provenance(m));
    let _ = writeln!(s, "Columns are kernels. {EMULATED}\n");
    if let Some(l) = missing_line(m) {
        let _ = writeln!(s, "> **{l}**\n");
    }
    let _ = write!(s, "| backend |");
    for k in &kernels {
        let _ = write!(s, " {} |", kernel_label(m, k));
    }
    let _ = write!(s, "\n|---|");
    for _ in &kernels {
        s.push_str("---|");
    }
    s.push('\n');
    for b in backends(m) {
        let _ = write!(s, "| {b} |");
        for k in &kernels {
            let cell = match cell_text(m, k, &b) {
                Some((t, "FAIL")) => format!("**{t}**"),
                Some((t, _)) => t,
                None => "-".into(),
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    for k in &kernels {
        let _ = writeln!(s, "\n## Kernel {}\n", kernel_label(m, k));
        run_md::body(&mut s, &kernel_results(m, k, true), 3);
    }
    s
}

pub fn html(m: &Matrix) -> String {
    let kernels = m.kernels();
    let mut s = html::page_start(&format!("svclab matrix {}", m.plan.scenario.name));
    let _ = write!(
        s,
        "<h1>svclab matrix: {}</h1><p class=\"muted\">{}</p><p>Columns are kernels. {}</p>",
        html::esc(&m.plan.scenario.name),
        html::esc(&provenance(m)),
        html::esc(EMULATED)
    );
    if let Some(l) = missing_line(m) {
        let _ = write!(s, "<p class=\"FAIL\" id=\"missing\">{}</p>", html::esc(&l));
    }
    s.push_str("<table><tr><th>backend</th>");
    for k in &kernels {
        let _ = write!(
            s,
            "<th><a href=\"#{}\">{}</a></th>",
            kernel_folder(k),
            html::esc(&kernel_label(m, k))
        );
    }
    s.push_str("</tr>");
    for b in backends(m) {
        let _ = write!(s, "<tr><td>{}</td>", html::esc(&b));
        for k in &kernels {
            match cell_text(m, k, &b) {
                Some((t, class)) => {
                    let _ = write!(s, "<td class=\"{class}\">{}</td>", html::esc(&t));
                }
                None => s.push_str("<td>-</td>"),
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    for k in &kernels {
        let id = kernel_folder(k);
        let _ = write!(
            s,
            "<h2 id=\"{id}\">Kernel {}</h2>",
            html::esc(&kernel_label(m, k))
        );
        html::body(&mut s, &kernel_results(m, k, true), &format!("{id}-"), 3);
    }
    let _ = write!(
        s,
        "<p class=\"muted\">Generated by svclab. Schema of matrix.json: {}.</p></body></html>",
        super::SCHEMA
    );
    s
}

/// One suite per kernel and backend (`svclab.<kernel>.<backend>`), and an
/// error for the missing cells.
pub fn junit(m: &Matrix) -> anyhow::Result<String> {
    let mut report = quick_junit::Report::new(format!("svclab matrix {}", m.plan.scenario.name));
    for k in m.kernels() {
        let r = kernel_results(m, &k, false);
        report.add_test_suites(run_junit::suites(&r, &format!("{k}.")));
    }
    if let Some(l) = missing_line(m) {
        report.add_test_suite(run_junit::error_suite(
            "missing",
            &l,
            &super::exec::names(&m.missing),
        ));
    }
    Ok(report.to_string()?)
}

#[cfg(test)]
mod tests {
    use super::super::tests::plan;
    use super::super::{Cell, SCHEMA};
    use super::*;

    fn matrix() -> Matrix {
        let r = crate::results::tests::sample();
        let mut host = r.host.clone();
        host.kernel = "6.18.0-test".into();
        let mut vm = host.clone();
        vm.kernel = "6.1.0-57-amd64".into();
        vm.emulated = true;
        let mut cells = Vec::new();
        for (k, h) in [("host", &host), ("6.1", &vm)] {
            for b in ["iptables", "nftables"] {
                let mut result = r.backends[0].clone();
                result.backend = b.into();
                cells.push(Cell {
                    kernel: k.into(),
                    backend: b.into(),
                    run_dir: format!("cells/kernel-{k}/x"),
                    host: h.clone(),
                    result,
                });
            }
        }
        let mut m = Matrix {
            schema: SCHEMA.into(),
            plan: plan(&["host", "6.1"], &["iptables", "nftables"]),
            shard: None,
            merged_from: Vec::new(),
            started_at: "2026-11-23T00:00:00Z".into(),
            finished_at: "2026-11-23T00:01:00Z".into(),
            cells,
            missing: Vec::new(),
        };
        let all = m.plan.cells.clone();
        m.settle(&all);
        m
    }

    #[test]
    fn columns_are_kernels_and_each_kernel_has_its_table() {
        let m = matrix();
        let md = markdown(&m);
        assert!(
            md.contains("| backend | host (6.18.0-test) | 6.1 (6.1.0-57-amd64, emulated) |"),
            "{md}"
        );
        assert!(
            md.contains("## Kernel 6.1 (6.1.0-57-amd64, emulated)"),
            "{md}"
        );
        assert!(md.contains("emulated"), "{md}");
        // The run report's own table, once per kernel.
        assert_eq!(
            md.matches("| hairpin-masquerade | **FAIL** | **FAIL** |")
                .count(),
            2,
            "{md}"
        );
        // Skip reasons in each kernel's footnotes.
        assert_eq!(
            md.matches("iptables / itp-local: the scenario has no")
                .count(),
            2,
            "{md}"
        );
        let page = html(&m);
        // The reason on hover.
        assert!(
            page.contains("title=\"the scenario has no internalTrafficPolicy: Local Service\""),
            "hover reason"
        );
        // Anchors stay unique across kernels.
        assert!(page.contains("id=\"kernel-6.1-iptables-hairpin-masquerade\""));
        assert!(page.contains("id=\"kernel-host-iptables-hairpin-masquerade\""));
        for banned in ["<script", "src=\"http", "href=\"http", "<link"] {
            assert!(!page.contains(banned), "{banned} in report.html");
        }
        let xml = junit(&m).unwrap();
        assert!(xml.contains("svclab.6.1.nftables"), "{xml}");
        assert!(xml.contains("svclab.host.iptables"), "{xml}");
        assert!(!xml.contains("svclab.missing"), "{xml}");
    }
}
