//! `junit.xml`: one test suite per backend, one test case per check, so CI
//! systems show svclab's checks like any other tests.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::RunResults;
use crate::checks::Verdict;

pub fn render(r: &RunResults) -> anyhow::Result<String> {
    let mut report = Report::new(format!("svclab {}", r.scenario));
    report.add_test_suites(suites(r, ""));
    // An interrupted run is an error, never a pass: CI must not read the
    // missing checks as fine.
    if let Some(i) = &r.interrupted {
        report.add_test_suite(error_suite(
            "interrupted",
            &i.line(),
            &format!("checks not run: {}", i.not_run.join(", ")),
        ));
    }
    Ok(report.to_string()?)
}

/// A suite of one errored test case `svclab.<name>`: what CI must never
/// read as a pass (an interrupted run, a matrix's missing cells).
pub fn error_suite(name: &str, message: &str, description: &str) -> TestSuite {
    let mut suite = TestSuite::new(format!("svclab.{name}"));
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
    status.set_message(message);
    status.set_description(description);
    let mut case = TestCase::new(name, status);
    case.set_classname(format!("svclab.{name}"));
    suite.add_test_case(case);
    suite
}

/// One suite per backend, named `svclab.<prefix><backend>`.
pub fn suites(r: &RunResults, prefix: &str) -> Vec<TestSuite> {
    let mut out = Vec::new();
    for b in &r.backends {
        let class = format!("svclab.{prefix}{}", b.backend);
        let mut suite = TestSuite::new(class.clone());
        if let Some(why) = &b.unavailable {
            let mut status = TestCaseStatus::skipped();
            status.set_message(format!("backend not run: {why}"));
            let mut case = TestCase::new("backend-available", status);
            case.set_classname(class.clone());
            suite.add_test_case(case);
        }
        for c in &b.checks {
            let status = match c.verdict {
                Verdict::Pass => TestCaseStatus::success(),
                Verdict::Skip => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(c.summary.clone());
                    s
                }
                Verdict::Fail => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(c.summary.clone());
                    let detail: Vec<String> = c
                        .evidence
                        .iter()
                        .filter(|e| !e.ok)
                        .map(|e| {
                            format!(
                                "{} -> {}\n  expected: {}\n  observed: {}",
                                e.vantage, e.target, e.expected, e.observed
                            )
                        })
                        .collect();
                    s.set_description(detail.join("\n"));
                    s
                }
            };
            let mut case = TestCase::new(c.name.clone(), status);
            case.set_classname(class.clone());
            case.set_time(Duration::from_secs_f64(c.seconds));
            suite.add_test_case(case);
        }
        out.push(suite);
    }
    out
}
