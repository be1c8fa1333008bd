//! `svclab run`: for each backend, bring the lab up, run every check, tear
//! the lab down, and go on; then write the results folder and print the
//! checks × backends table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use svclab_backends::{BackendKind, BackendOptions, Fault};

use crate::checks::{self, CheckResult, CheckRun, Settings, Verdict};
use crate::lab::{Lab, LabOptions};
use crate::results::{self, BackendRun, HostFacts, RunResults};
use crate::scenario::Scenario;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub backends: Vec<BackendKind>,
    pub faults: Vec<Fault>,
    pub results: PathBuf,
    /// Overrides the scenario's balance connections (K).
    pub balance_connections: Option<usize>,
    /// The checks to run, in order (empty: every check); the others are
    /// left out of the results.
    pub checks: Vec<&'static str>,
    /// Where node-0's ruleset goes once each lab is synced
    /// (`--rules-out`).
    pub rules_out: Option<PathBuf>,
    /// Only this family's checks (`--family`); every family of the lab
    /// when unset.
    pub family: Option<svclab_backends::model::IpFamily>,
}

impl RunOptions {
    /// The checks this run runs.
    pub fn checks(&self) -> Vec<&'static str> {
        if self.checks.is_empty() {
            checks::check_names().collect()
        } else {
            self.checks.clone()
        }
    }

    /// Each check once per IP family of the scenario's lab, the families
    /// of one check side by side, under the names results give them.
    pub fn runs(&self, scn: &Scenario) -> Vec<CheckRun> {
        let mut runs = CheckRun::all(&self.checks(), &scn.stack.families);
        if let Some(f) = self.family {
            runs.retain(|r| r.family == f);
        }
        runs
    }
}

fn settings(scn: &Scenario, opts: &RunOptions) -> Settings {
    let p = &scn.lab.probes;
    let factor = HostFacts::slowdown();
    Settings {
        timeout: Duration::from_millis(p.timeout_ms) * factor,
        refuse_within: Duration::from_secs(1) * factor,
        per_target: p.per_target,
        concurrency: p.concurrency,
        balance_connections: opts
            .balance_connections
            .unwrap_or(scn.lab.balance.connections),
        min_p_value: scn.lab.balance.min_p_value,
    }
}

fn progress(len: u64) -> ProgressBar {
    let interactive =
        std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("CI").is_none();
    if !interactive {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs the scenario on every backend; returns the results and their folder.
///
/// A stop signal (SIGINT, SIGTERM, SIGHUP) ends the run early and in order:
/// no further check starts, the running one is cancelled with its probes
/// and gets no verdict, the lab is removed, and the results folder holds
/// the verdicts of the checks that finished before the signal, marked
/// interrupted (`RunResults::interrupted` and an `INTERRUPTED` file).
pub async fn run(scn: &Scenario, opts: &RunOptions) -> anyhow::Result<(RunResults, PathBuf)> {
    // The signal handler leaves the winding down to this function.
    let _cooperation = crate::guard::cooperate();
    let started_at = jiff::Timestamp::now().to_string();
    let runs = opts.runs(scn);
    let pb = progress((opts.backends.len() * runs.len()) as u64);
    let mut backends = Vec::new();
    let mut not_run = Vec::new();
    for backend in &opts.backends {
        if crate::stop::stopping() {
            not_run.extend(runs.iter().map(|c| format!("{backend}/{}", c.name)));
            continue;
        }
        if !pb.is_hidden() {
            pb.set_message(format!("{backend}: bringing the lab up"));
        } else {
            tracing::info!("svclab: {backend}: bringing the lab up");
        }
        let b = run_backend(scn, backend, opts, &pb).await;
        not_run.extend(b.not_run.iter().map(|c| format!("{backend}/{c}")));
        backends.push(b);
        if pb.is_hidden() {
            let b = backends.last().expect("just pushed");
            tracing::info!(
                "svclab: {backend}: {} passed, {} failed, {} skipped",
                b.count(Verdict::Pass),
                b.count(Verdict::Fail),
                b.count(Verdict::Skip)
            );
        }
    }
    pb.finish_and_clear();
    let results = RunResults {
        schema: results::SCHEMA.into(),
        run: jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string(),
        scenario: scn.name.clone(),
        scenario_file: scn.file.clone(),
        started_at,
        finished_at: jiff::Timestamp::now().to_string(),
        host: HostFacts::collect(),
        backends,
        interrupted: crate::stop::stop_signal().map(|sig| results::Interruption {
            signal: crate::stop::signal_name(sig),
            exit_code: (128 + sig) as u8,
            at: jiff::Timestamp::now().to_string(),
            not_run,
        }),
    };
    let dir = results::new_run_dir(&opts.results, &scn.name)?;
    results::write_all(&dir, &results)?;
    Ok((results, dir))
}

async fn run_backend(
    scn: &Scenario,
    backend: &BackendKind,
    opts: &RunOptions,
    pb: &ProgressBar,
) -> BackendRun {
    let mut run = BackendRun::new(&backend.to_string());
    let runs = opts.runs(scn);
    if let Err(e) = backend.capability() {
        run.unavailable = Some(e.reason);
        pb.inc(runs.len() as u64);
        return run;
    }
    let lab_opts = LabOptions {
        backend: Some(backend.clone()),
        faults: opts.faults.clone(),
        agent_ports: true,
        supervise_agents: true,
        announce: true,
        ..Default::default()
    };
    let mut lab = match Lab::up(scn.clone(), &lab_opts).await {
        Ok(lab) => lab,
        // Interrupted while the lab came up: no check ran, none failed.
        Err(_) if crate::stop::stopping() => {
            run.not_run = runs.iter().map(|c| c.name.clone()).collect();
            return run;
        }
        Err(e) => {
            run.checks.push(CheckResult::fail(
                "lab-up",
                format!("the lab did not come up: {e:#}"),
            ));
            pb.inc(runs.len() as u64);
            return run;
        }
    };
    run.lab_times = serde_json::to_value(&lab.times).unwrap_or_default();
    // A ruleset that could not be written fails the run, after the checks.
    let rules_failure = opts.rules_out.as_ref().and_then(|dir| {
        let e = write_rules(&lab, scn, backend, dir).err()?;
        Some(CheckResult::fail(
            "rules-out",
            format!("node-0's ruleset was not written: {e:#}"),
        ))
    });
    // What the agents were started with (the lab's default scheduler).
    let backend_opts = BackendOptions {
        faults: opts.faults.clone(),
        ..Default::default()
    };
    run.checks = run_checks(
        &mut lab,
        backend,
        &backend_opts,
        settings(scn, opts),
        &runs,
        pb,
    )
    .await;
    run.not_run = runs[run.checks.len()..]
        .iter()
        .map(|c| c.name.clone())
        .collect();
    run.checks.extend(rules_failure);
    if !crate::stop::stopping() {
        crate::scrape::attach(&mut lab, &mut run).await;
    } else if let Some(agents) = lab.agents.as_mut() {
        agents.drain();
        run.syncs = agents.reports.clone();
    }
    run.agent_events = lab.agent_events();
    // After the agents stopped: kube-proxy's cleanup is in its log too.
    run.logs = lab.down_with_logs().await;
    run
}

/// `--rules-out`: node-0's ruleset of a synced lab, normalised, in
/// `dir/<scenario file's stem>/<backend>.rules`; nothing for a backend
/// that programs no ruleset svclab reads (userspace, eBPF, `none`).
fn write_rules(lab: &Lab, scn: &Scenario, backend: &BackendKind, dir: &Path) -> anyhow::Result<()> {
    let name = backend.to_string();
    let Some(ruleset) = crate::rules::Ruleset::of_backend(&name) else {
        return Ok(());
    };
    let node = lab
        .topology
        .nodes
        .first()
        .ok_or_else(|| anyhow::anyhow!("the lab has no node"))?;
    let text = crate::rules::dump(&node.netns, ruleset)?;
    let stem = Path::new(&scn.file)
        .file_stem()
        .map_or_else(|| scn.name.clone(), |s| s.to_string_lossy().into_owned());
    let file =
        crate::rules::write_normalised(dir, &stem, &name, crate::rules::normalise(ruleset, &text))?;
    tracing::info!("svclab: {name}: node-0's ruleset in {}", file.display());
    Ok(())
}

/// Runs the `selected` checks against a lab whose agents run `backend`,
/// in order, and has the kernel trace a failing probe of each failed one.
/// Once a stop signal arrives no further check starts, the running one is
/// cancelled (its probes with it) and gets no verdict: the result holds
/// only the checks that finished before the signal.
async fn run_checks(
    lab: &mut Lab,
    backend: &BackendKind,
    options: &BackendOptions,
    settings: Settings,
    selected: &[CheckRun],
    progress: &ProgressBar,
) -> Vec<CheckResult> {
    let mut ctx = checks::Ctx::new(
        lab,
        backend.limitations(options).into_iter().collect(),
        settings,
    );
    let mut out = Vec::new();
    for run in selected {
        let name = &run.name;
        if crate::stop::stopping() {
            break;
        }
        progress.set_message(format!("{backend}: {name}"));
        let start = Instant::now();
        let ran = tokio::select! {
            biased;
            _ = crate::stop::stopped() => None,
            r = ctx.run(run, backend) => Some(r),
        };
        // Cancelled: no verdict for a check that did not finish.
        let Some((mut result, failing_probe)) = ran else {
            break;
        };
        // A stop signal while the check ran: what it saw may be the
        // teardown, not the backend.
        if crate::stop::stopping() {
            break;
        }
        if result.verdict == Verdict::Fail
            && let Some(p) = failing_probe
        {
            progress.set_message(format!("{backend}: {name}: tracing a failing probe"));
            let traced = tokio::select! {
                biased;
                _ = crate::stop::stopped() => None,
                t = crate::trace::for_failure(ctx.lab, &p.vantage, &p.target, p.address) => Some(t),
            };
            result.trace = match traced {
                None => None,
                Some(Some(Ok(trace))) => Some(crate::trace::text(&trace)),
                Some(Some(Err(e))) => Some(format!("the trace could not be taken: {e}")),
                Some(None) => None,
            };
        }
        result.seconds = start.elapsed().as_secs_f64();
        out.push(result);
        progress.inc(1);
        // Between checks: a dead agent is restarted (with backoff) before
        // the next check relies on it.
        ctx.lab.supervise().await;
    }
    out
}

/// Prints the table and where the results are; the exit code says whether
/// any check failed, or 128 + the signal for an interrupted run.
pub fn report(results: &RunResults, dir: &Path) -> std::process::ExitCode {
    println!("{}", results::terminal_table(results));
    println!("results: {}", dir.display());
    println!("  report: {}", dir.join("report.html").display());
    if let Some(i) = &results.interrupted {
        return std::process::ExitCode::from(i.exit_code);
    }
    if results.failed() > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
