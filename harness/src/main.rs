//! `svclab`: an end-to-end test harness and benchmark lab for Kubernetes
//! Service proxies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use svclab_backends::BackendKind;

use svclab::cli::{self, Cli, Command, Format};
use svclab::scenario::Scenario;
use svclab::{agent, cleanup, doctor, guard, run, scenario, stop, topology, vm};

fn load_scenario(path: Option<&PathBuf>) -> Result<Scenario, ExitCode> {
    match path {
        None => Ok(Scenario::smoke()),
        Some(p) => Scenario::load(p)
            .inspect(scenario::print_notes)
            .map_err(|e| {
                eprintln!("{e}");
                ExitCode::from(2)
            }),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread: it passes the filter on to children's environment.
    svclab::logging::init(cli.verbose);
    tracing::debug!(
        "svclab {} (pid {}): {:?}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        std::env::args().collect::<Vec<_>>()
    );
    // One TLS crypto provider for every client (kube, reqwest).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = match cli.command {
        Command::Agent(args) => return ExitCode::from(agent::run(args) as u8),
        // Enters a namespace and becomes the command: before any thread.
        Command::Exec(args) => {
            return svclab::labs::exec(args.run.run.as_deref(), &args.target, &args.command);
        }
        Command::Completions(args) => {
            cli::completions::write(args.shell, &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Rules(args) => {
            return match cli::rules::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("svclab: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        other => other,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("svclab: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    guard::install(rt.handle());
    let result = rt.block_on(dispatch(command));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("svclab: {e:#}");
            ExitCode::FAILURE
        }
    };
    // A stopped command exits with 128 + the signal, whatever it got to.
    match stop::exit_code() {
        Some(stopped) => ExitCode::from(stopped),
        None => code,
    }
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Up(cli::up::UpArgs {
            scenario,
            backend,
            foreground,
        }) => {
            let backend = if backend.is_empty() {
                None
            } else {
                Some(cli::one_backend("up", &backend)?)
            };
            let scn = match load_scenario(scenario.as_ref()) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            if foreground {
                cli::up::foreground(scn, backend).await
            } else {
                cli::up::detached(scenario, backend)
            }
        }
        Command::Down(args) => cli::down::run(args.run().map(str::to_string)),
        Command::Ls(args) => {
            let labs = svclab::labs::list();
            match args.output {
                Format::Text => print!("{}", svclab::labs::text(&labs)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&labs)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup(cli::cleanup::CleanupArgs { force, runs }) => {
            let report = if runs.is_empty() {
                cleanup::cleanup_all(force)
            } else {
                let mut report = cleanup::CleanupReport::default();
                for r in &runs {
                    let run = topology::RunId::parse(r)
                        .with_context(|| format!("{r:?} is not a run id (4 hex digits)"))?;
                    cleanup::cleanup_run(&run, force, &mut report);
                }
                report
            };
            report.print();
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Workloads(_) => cli::workloads::run().await,
        Command::Run(cli::run::RunArgs {
            scenario,
            backend,
            require,
            checks,
            family,
            fault,
            balance_connections,
            results,
            rules_out,
        }) => {
            // Everything the command line can get wrong is said before
            // anything is built (exit code 2): the scenario first (its
            // notes too), then the selection and the required backends.
            let scn = match load_scenario(Some(&scenario)) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let checks = match checks.select() {
                Ok(c) => c,
                Err(e) => return Ok(usage_error(&e)),
            };
            if let Some(f) = family
                && !scn.stack.families.contains(&f)
            {
                let has: Vec<&str> = scn.stack.families.iter().map(|f| f.as_k8s()).collect();
                return Ok(usage_error(&anyhow::anyhow!(
                    "--family {} asks for {f} checks, and {}'s lab has ipFamilies {has:?}",
                    f.lower(),
                    scenario.display()
                )));
            }
            let mut backends = match cli::resolve_backends(&backend) {
                Ok(b) => b,
                Err(e) => return Ok(usage_error(&e)),
            };
            if !require.is_empty() {
                let required = match cli::resolve_backends(&require) {
                    Ok(b) => b,
                    Err(e) => return Ok(usage_error(&e)),
                };
                if let Some(code) = require_runnable("run", &required) {
                    return Ok(code);
                }
                for b in required {
                    if !backends.contains(&b) {
                        backends.push(b);
                    }
                }
            }
            let opts = run::RunOptions {
                backends,
                faults: fault,
                results,
                balance_connections,
                checks,
                rules_out,
                family,
            };
            let (r, dir) = run::run(&scn, &opts).await?;
            Ok(run::report(&r, &dir))
        }
        Command::Matrix(args) => svclab::matrix::exec::command(args).await,
        Command::Merge(args) => svclab::matrix::exec::merge_command(args),
        Command::Demo(cli::demo::DemoArgs { checks, results }) => {
            let checks = match checks.select() {
                Ok(c) => c,
                Err(e) => return Ok(usage_error(&e)),
            };
            let scn = Scenario::demo();
            // The `none` baseline programs nothing: every check would skip
            // on it, so the demo leaves it out (`run --backend none` has it).
            let backends: Vec<BackendKind> = doctor::runnable()
                .into_iter()
                .filter(|b| *b != BackendKind::None)
                .collect();
            for b in BackendKind::BUILTIN {
                if let Err(e) = b.capability() {
                    println!("demo: skipping {b}: {}", e.reason);
                }
            }
            println!(
                "demo: scenario {} on {}",
                scenario::DEMO_NAME,
                backends
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let opts = run::RunOptions {
                backends,
                results,
                checks,
                ..Default::default()
            };
            let (r, dir) = run::run(&scn, &opts).await?;
            Ok(run::report(&r, &dir))
        }
        Command::Churn(cli::churn::ChurnArgs {
            scenario,
            backend,
            seed,
            output,
        }) => {
            let backend = cli::one_backend("churn", &backend)?;
            let scn = match load_scenario(Some(&scenario)) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let report = svclab::churn::run(scn, backend, seed).await?;
            match output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Text => print!("{}", svclab::churn::text(&report)),
            }
            Ok(if report.accounted {
                ExitCode::SUCCESS
            } else {
                eprintln!("svclab churn: some agent did not account for every change");
                ExitCode::FAILURE
            })
        }
        Command::Generate(cli::generate::GenerateArgs {
            services,
            endpoints,
            nodes,
            pools,
        }) => {
            let shape = scenario::generate::Shape {
                services,
                endpoints,
                nodes,
                pools,
                node_ports: true,
                ..Default::default()
            };
            print!("{}", scenario::generate::yaml(&shape));
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => {
            // `all` here means every built-in backend, runnable or not.
            let required = if args.require.is_empty() {
                Vec::new()
            } else {
                match cli::resolve_backends_with(&args.require, || BackendKind::BUILTIN.to_vec()) {
                    Ok(b) => b,
                    Err(e) => return Ok(usage_error(&e)),
                }
            };
            let report = doctor::report().await;
            match args.output {
                Format::Text => print!("{}", doctor::text(&report)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(require_runnable("doctor", &required)
                .map_or(ExitCode::SUCCESS, |_| ExitCode::FAILURE))
        }
        Command::Bench(args) => svclab::bench::run(args).await,
        Command::Compare(args) => svclab::bench::compare::run(&args),
        Command::Trace(args) => svclab::trace::cli::run(args).await,
        Command::Capture(args) => svclab::capture::cli::run(args).await,
        Command::Vm(args) => tokio::task::spawn_blocking(move || vm::run(args)).await?,
        Command::Agent(_) | Command::Exec(_) | Command::Completions(_) | Command::Rules(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// `svclab rules`: a node's ruleset, as the lab's backend programmed it.
/// A command line that cannot be run: said on stderr, exit code 2.
fn usage_error(e: &anyhow::Error) -> ExitCode {
    eprintln!("svclab: {e:#}");
    ExitCode::from(2)
}

/// `--require`: each backend that cannot run here is named, with why, on
/// stderr; then exit code 2 for `run` (nothing was built), 1 for `doctor`.
fn require_runnable(command: &str, required: &[BackendKind]) -> Option<ExitCode> {
    let missing: Vec<doctor::BackendFinding> = required
        .iter()
        .map(doctor::backend_finding)
        .filter(|f| !f.can_run)
        .collect();
    if missing.is_empty() {
        return None;
    }
    for f in &missing {
        eprintln!(
            "svclab {command}: required backend {} cannot run here: {}",
            f.backend,
            f.reason.as_deref().unwrap_or("unknown")
        );
    }
    Some(ExitCode::from(if command == "run" { 2 } else { 1 }))
}
