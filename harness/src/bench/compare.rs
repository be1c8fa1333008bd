//! `svclab compare BASE CANDIDATE --threshold 10%`: every figure two bench
//! runs share, as the ratio candidate/base, with the ones that got worse by
//! more than the threshold flagged (direction-aware: a longer time or a
//! lower throughput is worse). A case that finished in the base run and not
//! in the candidate is a regression too. The exit code is non-zero on any
//! regression, for CI gates.
//!
//! Ratios, not absolute differences, decide; and an emulated run (inside
//! `svclab vm`) is never compared with a host run: their timings do not
//! measure the same thing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use crate::cli::compare::CompareArgs;

use super::schema::{BenchResults, Better, Status};

/// Keeps, of `base`, the OLD backend of every pair and, of `cand`, the NEW
/// one renamed to NEW (and OLD's cases and figures renamed to NEW too), so
/// [`compare`] lines them up. Errors when a pair's backend is in neither.
pub fn paired(
    base: &BenchResults,
    cand: &BenchResults,
    pairs: &[(String, String)],
) -> Result<(BenchResults, BenchResults), String> {
    let mut b = base.clone();
    let mut c = cand.clone();
    b.cases.clear();
    b.figures.clear();
    c.cases.clear();
    c.figures.clear();
    for (old, new) in pairs {
        let before = (b.figures.len(), c.figures.len());
        for case in base.cases.iter().filter(|x| &x.backend == old) {
            let mut case = case.clone();
            case.backend = new.clone();
            b.cases.push(case);
        }
        for fig in base.figures.iter().filter(|x| &x.backend == old) {
            let mut fig = fig.clone();
            fig.backend = new.clone();
            b.figures.push(fig);
        }
        c.cases
            .extend(cand.cases.iter().filter(|x| &x.backend == new).cloned());
        c.figures
            .extend(cand.figures.iter().filter(|x| &x.backend == new).cloned());
        if b.figures.len() == before.0 {
            return Err(format!(
                "the base run ({}) has no figures of {old}",
                base.run
            ));
        }
        if c.figures.len() == before.1 {
            return Err(format!(
                "the candidate run ({}) has no figures of {new}",
                cand.run
            ));
        }
    }
    Ok((b, c))
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(
        "refusing to compare an emulated run ({emulated}) with a host run ({host}): timings \
         under software emulation do not measure the same thing; compare emulated runs with \
         emulated runs"
    )]
    Emulated { emulated: String, host: String },
    #[error("refusing to compare a `{base}` bench with a `{candidate}` bench")]
    Kind { base: String, candidate: String },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Ok,
    Better,
    Regression,
    /// Only in one run, or not comparable (a zero base).
    Info(String),
}

#[derive(Clone, Debug)]
pub struct Row {
    pub backend: String,
    pub size: u64,
    pub metric: String,
    pub stat: String,
    pub unit: String,
    pub base: Option<f64>,
    pub candidate: Option<f64>,
    pub ratio: Option<f64>,
    pub verdict: Verdict,
}

pub struct Comparison {
    pub rows: Vec<Row>,
    pub threshold: f64,
}

impl Comparison {
    pub fn regressions(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Regression)
            .count()
    }

    /// `svclab compare -o json`: the threshold, the regression count and
    /// every row (verdict `ok`, `better`, `regression` or `info` with a
    /// note).
    pub fn json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let (verdict, note) = match &r.verdict {
                    Verdict::Ok => ("ok", None),
                    Verdict::Better => ("better", None),
                    Verdict::Regression => ("regression", None),
                    Verdict::Info(n) => ("info", Some(n.clone())),
                };
                serde_json::json!({
                    "backend": r.backend,
                    "size": r.size,
                    "metric": r.metric,
                    "stat": r.stat,
                    "unit": r.unit,
                    "base": r.base,
                    "candidate": r.candidate,
                    "ratio": r.ratio,
                    "verdict": verdict,
                    "note": note,
                })
            })
            .collect();
        serde_json::json!({
            "threshold": self.threshold,
            "regressions": self.regressions(),
            "rows": rows,
        })
    }
}

fn status_row(backend: &str, size: u64, base: Status, cand: Status, reason: Option<&str>) -> Row {
    Row {
        backend: backend.into(),
        size,
        metric: "status".into(),
        stat: String::new(),
        unit: String::new(),
        base: None,
        candidate: None,
        ratio: None,
        verdict: if base == Status::Ok && cand != Status::Ok {
            Verdict::Regression
        } else {
            Verdict::Info(format!(
                "{base} -> {cand}{}",
                reason.map_or(String::new(), |r| format!(": {r}"))
            ))
        },
    }
}

pub fn compare(
    base: &BenchResults,
    cand: &BenchResults,
    threshold: f64,
) -> Result<Comparison, CompareError> {
    if base.kind != cand.kind {
        return Err(CompareError::Kind {
            base: base.kind.clone(),
            candidate: cand.kind.clone(),
        });
    }
    if base.host.emulated != cand.host.emulated {
        let (e, h) = if base.host.emulated {
            (&base.run, &cand.run)
        } else {
            (&cand.run, &base.run)
        };
        return Err(CompareError::Emulated {
            emulated: e.clone(),
            host: h.clone(),
        });
    }
    let mut rows = Vec::new();
    for bc in &base.cases {
        if let Some(cc) = cand.case(&bc.backend, bc.size)
            && bc.status != cc.status
        {
            rows.push(status_row(
                &bc.backend,
                bc.size,
                bc.status,
                cc.status,
                cc.reason.as_deref(),
            ));
        }
    }
    let cand_figs: BTreeMap<_, _> = cand.figures.iter().map(|f| (f.key(), f)).collect();
    for bf in &base.figures {
        let cf = cand_figs.get(&bf.key());
        let candidate_case = cand.case(&bf.backend, bf.size);
        let (ratio, verdict) = match cf {
            None => match candidate_case {
                Some(c) if c.status == Status::Ok => (None, Verdict::Regression),
                Some(_) => continue, // the status row says it
                None => (None, Verdict::Info("not in the candidate".into())),
            },
            Some(cf) if bf.value == 0.0 => (
                None,
                Verdict::Info(format!("base is 0, candidate {}", cf.value)),
            ),
            Some(cf) => {
                let ratio = cf.value / bf.value;
                let worse = match bf.better {
                    Better::Lower => ratio,
                    Better::Higher => 1.0 / ratio,
                };
                let verdict = if worse > 1.0 + threshold {
                    Verdict::Regression
                } else if worse < 1.0 / (1.0 + threshold) {
                    Verdict::Better
                } else {
                    Verdict::Ok
                };
                (Some(ratio), verdict)
            }
        };
        rows.push(Row {
            backend: bf.backend.clone(),
            size: bf.size,
            metric: bf.metric.clone(),
            stat: bf.stat.clone(),
            unit: bf.unit.clone(),
            base: Some(bf.value),
            candidate: cf.map(|f| f.value),
            ratio,
            verdict,
        });
    }
    Ok(Comparison { rows, threshold })
}

/// A number in its unit, short.
pub fn human(v: f64, unit: &str) -> String {
    match unit {
        "seconds" if v < 1e-3 => format!("{:.1} µs", v * 1e6),
        "seconds" if v < 1.0 => format!("{:.2} ms", v * 1e3),
        "seconds" => format!("{v:.3} s"),
        "bytes" => format!("{:.1} MiB", v / 1048576.0),
        "per-second" => format!("{v:.0}/s"),
        "speedup" => format!("{v:.1}x"),
        _ => format!("{v:.3}"),
    }
}

pub fn table(c: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:>6}  {:<48} {:>5}  {:>12} {:>12} {:>7}  verdict",
        "backend", "size", "metric", "stat", "base", "candidate", "ratio"
    );
    for r in &c.rows {
        let v = |x: Option<f64>| x.map_or("-".into(), |x| human(x, &r.unit));
        let verdict = match &r.verdict {
            Verdict::Ok => "ok".to_string(),
            Verdict::Better => "better".to_string(),
            Verdict::Regression => "REGRESSION".to_string(),
            Verdict::Info(why) => why.clone(),
        };
        let _ = writeln!(
            s,
            "{:<16} {:>6}  {:<48} {:>5}  {:>12} {:>12} {:>7}  {verdict}",
            r.backend,
            r.size,
            r.metric,
            r.stat,
            v(r.base),
            v(r.candidate),
            r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
        );
    }
    let _ = writeln!(
        s,
        "{} figure(s) compared, {} regression(s) beyond {:.0}%",
        c.rows.len(),
        c.regressions(),
        c.threshold * 100.0
    );
    s
}

/// Exit code: 0 without regressions, 1 with, 2 when the runs cannot be
/// compared.
pub fn run(args: &CompareArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut base = BenchResults::load(&args.base)?;
    let mut cand = BenchResults::load(&args.candidate)?;
    if !args.pairs.is_empty() {
        match paired(&base, &cand, &args.pairs) {
            Ok((b, c)) => (base, cand) = (b, c),
            Err(e) => {
                eprintln!("svclab compare: {e}");
                return Ok(std::process::ExitCode::from(2));
            }
        }
    }
    match compare(&base, &cand, args.threshold) {
        Ok(c) => {
            match args.output {
                crate::cli::Format::Text => print!("{}", table(&c)),
                crate::cli::Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&c.json())?)
                }
            }
            Ok(if c.regressions() > 0 {
                std::process::ExitCode::from(1)
            } else {
                std::process::ExitCode::SUCCESS
            })
        }
        Err(e) => {
            eprintln!("svclab compare: {e}");
            Ok(std::process::ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::Case;
    use super::*;

    fn results(emulated: bool, full: f64, rate: f64) -> BenchResults {
        let mut r = BenchResults::new("sync", "r", serde_json::json!({}));
        r.host.emulated = emulated;
        r.value(
            "iptables",
            1000,
            "sync_full_proxy_rules_duration_seconds",
            "seconds",
            full,
        );
        r.value("iptables", 1000, "probes_per_second", "per-second", rate);
        r.cases.push(Case {
            backend: "iptables".into(),
            size: 1000,
            status: Status::Ok,
            reason: None,
            detail: serde_json::Value::Null,
        });
        r
    }

    #[test]
    fn direction_decides_what_is_worse() {
        let base = results(false, 1.0, 1000.0);
        let same = compare(&base, &base, 0.1).unwrap();
        assert_eq!(same.regressions(), 0);
        // Slower sync: regression; higher throughput: better.
        let c = compare(&base, &results(false, 1.2, 1200.0), 0.1).unwrap();
        assert_eq!(c.regressions(), 1);
        assert_eq!(c.rows[0].verdict, Verdict::Regression);
        assert_eq!(c.rows[1].verdict, Verdict::Better);
        // Lower throughput beyond the threshold: regression.
        let c = compare(&base, &results(false, 1.0, 850.0), 0.1).unwrap();
        assert_eq!(c.rows[1].verdict, Verdict::Regression);
        // Within the threshold: ok.
        let c = compare(&base, &results(false, 1.05, 960.0), 0.1).unwrap();
        assert_eq!(c.regressions(), 0);
    }

    #[test]
    fn a_case_that_stopped_finishing_is_a_regression() {
        let base = results(false, 1.0, 1000.0);
        let mut cand = results(false, 1.0, 1000.0);
        cand.figures.clear();
        cand.cases[0].status = Status::NotFinished;
        let c = compare(&base, &cand, 0.1).unwrap();
        assert_eq!(c.regressions(), 1);
        assert_eq!(c.rows[0].metric, "status");
    }

    #[test]
    fn a_pair_compares_two_versions_of_one_run() {
        let mut run = results(false, 1.0, 1000.0);
        for (backend, full) in [("kp@v1", 1.0), ("kp@v2", 1.5)] {
            run.value(
                backend,
                1000,
                "sync_full_proxy_rules_duration_seconds",
                "seconds",
                full,
            );
        }
        let pairs = vec![("kp@v1".to_string(), "kp@v2".to_string())];
        let (b, c) = paired(&run, &run, &pairs).unwrap();
        let cmp = compare(&b, &c, 0.1).unwrap();
        // Only the pair's figure, the upgrade's 1.5x as a regression.
        assert_eq!(cmp.rows.len(), 1, "{:?}", cmp.rows);
        assert_eq!(cmp.rows[0].backend, "kp@v2");
        assert_eq!(cmp.rows[0].ratio, Some(1.5));
        assert_eq!(cmp.regressions(), 1);
        let missing = vec![("kp@v1".to_string(), "kp@v3".to_string())];
        let err = paired(&run, &run, &missing).unwrap_err();
        assert!(err.contains("no figures of kp@v3"), "{err}");
    }

    #[test]
    fn emulated_and_host_runs_are_not_compared() {
        let err = compare(&results(true, 1.0, 1.0), &results(false, 1.0, 1.0), 0.1)
            .err()
            .unwrap();
        assert!(err.to_string().contains("emulated"), "{err}");
    }
}
