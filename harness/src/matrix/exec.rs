//! Running a matrix's cells: one kernel at a time, all of its backends in
//! one `svclab run` (one VM boot per kernel for VM kernels).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use svclab_backends::BackendKind;

use super::{Cell, CellId, HOST, Matrix, Plan, SCHEMA, Shard, kernel_folder};
use crate::checks::CheckResult;
use crate::results::{BackendRun, HostFacts, RunResults};
use crate::scenario::Scenario;

/// What `svclab matrix` was asked to run.
pub struct MatrixOptions {
    pub scenario_path: PathBuf,
    pub plan: Plan,
    pub shard: Option<Shard>,
    /// Where the matrix folder is created.
    pub results: PathBuf,
    /// `svclab vm --timeout` for each VM kernel.
    pub vm_timeout: Option<u64>,
}

/// Runs the shard's cells and writes the matrix folder; returns the matrix
/// and its folder.
pub async fn run(scn: &Scenario, opts: &MatrixOptions) -> Result<(Matrix, PathBuf)> {
    let started_at = jiff::Timestamp::now().to_string();
    let dir = super::new_dir(&opts.results, &scn.name, opts.shard)?;
    let cells = opts.plan.shard(opts.shard).to_vec();
    let checks: Vec<&'static str> = opts
        .plan
        .checks
        .checks
        .iter()
        .filter_map(|n| crate::checks::check_names().find(|c| c == n))
        .collect();
    let mut out: Vec<Cell> = Vec::new();
    for (kernel, backends) in Plan::by_kernel(&cells) {
        if crate::stop::stopping() {
            break;
        }
        let base = dir.join("cells").join(kernel_folder(&kernel));
        std::fs::create_dir_all(&base)?;
        tracing::info!(
            "svclab matrix: kernel {kernel}: {} on {}",
            scn.name,
            backends.join(", ")
        );
        let made = if kernel == HOST {
            let kinds = backends
                .iter()
                .map(|b| b.parse::<BackendKind>().map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>>>()?;
            let run_opts = crate::run::RunOptions {
                backends: kinds,
                results: base.clone(),
                checks: checks.clone(),
                ..Default::default()
            };
            crate::run::run(scn, &run_opts).await
        } else {
            let (kernel, backends, base) = (kernel.clone(), backends.clone(), base.clone());
            let path = opts.scenario_path.clone();
            let regex = opts.plan.checks.as_regex();
            let timeout = opts.vm_timeout;
            tokio::task::spawn_blocking(move || {
                in_vm(&kernel, &backends, &path, &regex, &base, timeout)
            })
            .await?
        };
        match made {
            Ok((r, run_dir)) => {
                print!("== kernel {kernel}\n{}", crate::results::terminal_table(&r));
                let rel = run_dir
                    .strip_prefix(&dir)
                    .unwrap_or(&run_dir)
                    .display()
                    .to_string();
                for b in r.backends {
                    out.push(Cell {
                        kernel: kernel.clone(),
                        backend: b.backend.clone(),
                        run_dir: rel.clone(),
                        host: r.host.clone(),
                        result: b,
                    });
                }
            }
            Err(e) => {
                // The kernel's cells fail with why, as a lab that did not
                // come up fails `lab-up` in `svclab run`.
                tracing::warn!("svclab matrix: kernel {kernel}: {e:#}");
                for b in &backends {
                    out.push(failed_cell(&kernel, b, &base, &dir, &format!("{e:#}")));
                }
            }
        }
    }
    let mut m = Matrix {
        schema: SCHEMA.into(),
        plan: opts.plan.clone(),
        shard: opts.shard,
        merged_from: Vec::new(),
        started_at,
        finished_at: jiff::Timestamp::now().to_string(),
        cells: out,
        missing: Vec::new(),
    };
    m.settle(&cells);
    super::write_all(&dir, &m)?;
    Ok((m, dir))
}

/// A cell with no run behind it: one failed `matrix-cell` check saying why.
fn failed_cell(kernel: &str, backend: &str, base: &Path, dir: &Path, why: &str) -> Cell {
    Cell {
        kernel: kernel.to_string(),
        backend: backend.to_string(),
        run_dir: base.strip_prefix(dir).unwrap_or(base).display().to_string(),
        host: HostFacts::default(),
        result: BackendRun {
            checks: vec![CheckResult::fail(
                "matrix-cell",
                format!("the cell did not run: {why}"),
            )],
            ..BackendRun::new(backend)
        },
    }
}

/// One VM boot of `kernel` running the scenario on `backends`, with
/// `svclab vm` (this same binary) writing its run folder under `base`.
fn in_vm(
    kernel: &str,
    backends: &[String],
    scenario: &Path,
    checks: &str,
    base: &Path,
    timeout: Option<u64>,
) -> Result<(RunResults, PathBuf)> {
    let base = std::fs::canonicalize(base)?;
    let mut cmd = super::svclab_on(kernel, &base, timeout)?;
    cmd.arg("run")
        .arg(scenario)
        .args([
            "--backend",
            &backends.join(","),
            "--check",
            checks,
            "--results",
        ])
        .arg(&base);
    tracing::debug!("svclab matrix: {cmd:?}");
    let status = cmd.status().context("starting svclab vm")?;
    let dirs = super::folders_holding(&base, "results.json")?;
    let [run_dir] = dirs.as_slice() else {
        anyhow::bail!(
            "svclab vm --kernel {kernel} exited with {status} and left {} run folder(s) in {}",
            dirs.len(),
            base.display()
        );
    };
    let raw = std::fs::read(run_dir.join("results.json"))?;
    let r: RunResults = serde_json::from_slice(&raw)
        .with_context(|| format!("reading {}", run_dir.join("results.json").display()))?;
    Ok((r, run_dir.clone()))
}

/// Each kernel's backends, `all` expanded: on the host, what it can run;
/// in a VM, every built-in backend (the VM's kernel decides, and a backend
/// it cannot run is recorded as such).
pub fn backends_for(kernel: &str, items: &[crate::cli::BackendItem]) -> Result<Vec<String>> {
    let kinds = if kernel == HOST {
        crate::cli::resolve_backends(items)?
    } else {
        crate::cli::resolve_backends_with(items, || BackendKind::BUILTIN.to_vec())?
    };
    Ok(kinds.iter().map(|b| b.to_string()).collect())
}

/// The cells of a shard, for messages.
pub fn names(cells: &[CellId]) -> String {
    cells
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `svclab matrix`: the plan first (every mistake of the command line is
/// said before anything runs, exit code 2), then `--plan` prints it or the
/// shard's cells run.
pub async fn command(args: crate::cli::matrix::MatrixArgs) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let usage = |e: &dyn std::fmt::Display| {
        eprintln!("svclab matrix: {e}");
        Ok(ExitCode::from(2))
    };
    let Some(scenario) = args.scenario.clone() else {
        return bench_command(&args);
    };
    let scn = match Scenario::load(&scenario) {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    crate::scenario::print_notes(&scn);
    let checks = match args.checks.select() {
        Ok(c) => c,
        Err(e) => return usage(&format!("{e:#}")),
    };
    let filter = super::CheckFilter {
        check: args.checks.check.clone(),
        skip_check: args.checks.skip_check.clone(),
        checks: checks.iter().map(|c| c.to_string()).collect(),
    };
    let mut per_kernel = Vec::new();
    for k in &args.kernels {
        match backends_for(k, &args.backend) {
            Ok(b) => per_kernel.push((k.clone(), b)),
            Err(e) => return usage(&format!("kernel {k}: {e:#}")),
        }
    }
    let kernels: Vec<String> = args.kernels.clone();
    let scenario_ref = super::ScenarioRef::of(&scn.name, &scenario)?;
    let plan = Plan::new(scenario_ref, filter, &kernels, |k| {
        per_kernel
            .iter()
            .find(|(x, _)| x == k)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    });
    if args.plan {
        match args.output {
            crate::cli::Format::Json => {
                println!("{}", serde_json::to_string_pretty(&plan.json(args.shard))?)
            }
            crate::cli::Format::Text => {
                for c in plan.shard(args.shard) {
                    println!("{c}");
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = MatrixOptions {
        scenario_path: scenario,
        plan,
        shard: args.shard,
        results: args.results.clone(),
        vm_timeout: args.vm_timeout,
    };
    let (m, dir) = run(&scn, &opts).await?;
    Ok(report(&m, &dir))
}

/// `svclab matrix ... -- bench sync ARGS`: one bench per kernel, then
/// the kernels side by side (exit code 1 when a kernel gave no figures).
fn bench_command(args: &crate::cli::matrix::MatrixArgs) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let bench_args = match super::bench::bench_args(&args.command) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("svclab matrix: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut per_kernel = Vec::new();
    for k in &args.kernels {
        match backends_for(k, &args.backend) {
            Ok(b) => per_kernel.push((k.clone(), super::bench::with_none(&b))),
            Err(e) => {
                eprintln!("svclab matrix: kernel {k}: {e:#}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    if args.plan {
        let cells: Vec<CellId> = per_kernel
            .iter()
            .flat_map(|(k, bs)| {
                bs.iter().map(|b| CellId {
                    kernel: k.clone(),
                    backend: b.clone(),
                })
            })
            .collect();
        match args.output {
            crate::cli::Format::Json => println!("{}", serde_json::to_string_pretty(&cells)?),
            crate::cli::Format::Text => {
                for c in cells {
                    println!("{c}");
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (m, dir) = super::bench::run(&per_kernel, &bench_args, &args.results, args.vm_timeout)?;
    print!("{}", std::fs::read_to_string(dir.join("summary.md"))?);
    println!("results: {}", dir.display());
    Ok(if m.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where the matrix is and whether it holds: exit code 1 when a check
/// failed or a cell is missing.
pub fn report(m: &Matrix, dir: &Path) -> std::process::ExitCode {
    for c in &m.missing {
        println!("missing: {c}");
    }
    let failed: Vec<String> = m
        .cells
        .iter()
        .filter(|c| c.failed())
        .map(|c| c.id().to_string())
        .collect();
    println!(
        "matrix: {} cell(s), {} with a failed check{}",
        m.cells.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        }
    );
    println!("results: {}", dir.display());
    println!("  report: {}", dir.join("report.html").display());
    if m.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// `svclab merge`.
pub fn merge_command(args: crate::cli::matrix::MergeArgs) -> Result<std::process::ExitCode> {
    match super::merge::run(&args.dirs, &args.results) {
        Ok((m, dir)) => Ok(report(&m, &dir)),
        Err(e) => {
            eprintln!("{e:#}");
            Ok(std::process::ExitCode::from(2))
        }
    }
}
