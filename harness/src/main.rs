//! `svclab`: an end-to-end test harness and benchmark lab for Kubernetes
//! Service proxies.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use svclab_backends::BackendKind;

use svclab::cli::{self, Cli, Command, Format};
use svclab::scenario::Scenario;
use svclab::{
    agent, cleanup, doctor, guard, lab, run, scenario, state, stop, topology, vm, workload,
};

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
            return match rules(&args) {
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
                up_foreground(scn, backend).await
            } else {
                up_detached(scenario, backend)
            }
        }
        Command::Down(args) => down(args.run().map(str::to_string)),
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
        Command::Workloads(_) => workloads().await,
        Command::Run(cli::run::RunArgs {
            scenario,
            backend,
            require,
            checks,
            fault,
            balance_connections,
            results,
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
            };
            let (r, dir) = run::run(&scn, &opts).await?;
            Ok(run::report(&r, &dir))
        }
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
fn rules(args: &cli::rules::RulesArgs) -> anyhow::Result<()> {
    use svclab::rules::{Ruleset, dump, normalise};
    let st = svclab::state::pick_run(args.run.run.as_deref())?;
    let backend = st
        .backend
        .clone()
        .ok_or_else(|| anyhow::anyhow!("lab {} runs no agents, so no rules", st.run))?;
    let ruleset = Ruleset::of_backend(&backend).ok_or_else(|| {
        anyhow::anyhow!(
            "lab {} runs {backend}, which programs no iptables or nftables ruleset",
            st.run
        )
    })?;
    let nodes: Vec<(String, String)> = st
        .topology
        .as_ref()
        .map(|t| {
            t.nodes
                .iter()
                .map(|n| (n.name.clone(), n.netns.clone()))
                .collect()
        })
        .unwrap_or_default();
    let picked: Vec<&(String, String)> = nodes
        .iter()
        .filter(|(name, _)| args.all_nodes || *name == args.node)
        .collect();
    if picked.is_empty() {
        anyhow::bail!(
            "lab {} has no node {:?} (nodes: {})",
            st.run,
            args.node,
            nodes
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (name, netns) in picked {
        let text = dump(netns, ruleset)?;
        let prefix = if args.all_nodes {
            format!("{name}: ")
        } else {
            String::new()
        };
        if args.raw {
            for l in text.lines() {
                println!("{prefix}{l}");
            }
        } else {
            for l in normalise(ruleset, &text) {
                println!("{prefix}{l}");
            }
        }
    }
    Ok(())
}

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

async fn up_foreground(scn: Scenario, backend: Option<BackendKind>) -> Result<ExitCode> {
    // A stop signal is left to this function: it removes the lab itself.
    let _cooperation = guard::cooperate();
    let opts = lab::LabOptions {
        backend,
        agent_ports: true,
        supervise_agents: true,
        ..Default::default()
    };
    let mut lab = lab::Lab::up(scn, &opts).await?;
    if let Some(log) = std::env::var_os("SVCLAB_DAEMON_LOG") {
        let _ = std::fs::rename(log, state::run_dir(&lab.run).join("daemon.log"));
    }
    println!("READY {}", lab.run);
    print_lab(&lab);
    // A test hook: proves that a panic still removes the lab.
    if std::env::var_os("SVCLAB_TEST_PANIC_AFTER_UP").is_some() {
        panic!("SVCLAB_TEST_PANIC_AFTER_UP is set");
    }
    // Supervise the agents (a dead one is reported and restarted) until a
    // stop signal; then remove the lab.
    loop {
        tokio::select! {
            _ = stop::stopped() => break,
            _ = lab.supervise_for(std::time::Duration::from_secs(1)) => {}
        }
    }
    lab.down().await;
    Ok(ExitCode::from(stop::exit_code().unwrap_or(1)))
}

fn print_lab(lab: &lab::Lab) {
    let t = &lab.topology;
    println!(
        "lab {} ({}): {} nodes, {} pods, {} namespaces in {:.0} ms",
        lab.run,
        lab.scenario.name,
        t.nodes.len(),
        t.pods.len(),
        t.namespaces().len(),
        lab.times.topology.total.as_secs_f64() * 1e3
    );
    for n in &t.nodes {
        println!(
            "  node {:<10} {}  pods {}  netns {}",
            n.name, n.ip, n.pod_cidr, n.netns
        );
    }
    if let (Some(ns), Some(ip)) = (&t.external, t.external_ip) {
        println!("  external        {ip}  netns {ns}");
    }
    for svc in lab.cp().services() {
        let spec = svc.spec.clone().unwrap_or_default();
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| match p.node_port {
                Some(np) => format!("{}:{np}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                None => format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
            })
            .collect();
        println!(
            "  service {}/{} {} {}",
            svc.metadata.namespace.as_deref().unwrap_or("default"),
            svc.metadata.name.as_deref().unwrap_or(""),
            spec.cluster_ip.as_deref().unwrap_or("-"),
            ports.join(",")
        );
    }
    println!(
        "  try: svclab exec --run {} node/{} -- curl -s {}:8080/hostname",
        lab.run,
        t.nodes[0].name,
        lab.scenario
            .pods
            .iter()
            .find(|p| !p.client)
            .map_or("".into(), |p| p.ip.to_string())
    );
    if let (Some(n), Some(kc)) = (t.nodes.first(), lab.kubeconfigs.first()) {
        println!("  kubeconfig: {} (one per node beside it)", kc.display());
        println!(
            "  kubectl: svclab exec --run {} node/{} -- kubectl --kubeconfig {} get svc,endpointslices -A",
            lab.run,
            n.name,
            kc.display()
        );
    }
    println!("  stop: svclab down --run {}", lab.run);
}

fn up_detached(scenario: Option<PathBuf>, backend: Option<BackendKind>) -> Result<ExitCode> {
    let exe = svclab::state::self_exe();
    let mut cmd = std::process::Command::new(exe);
    {
        use std::os::unix::process::CommandExt;
        cmd.arg0("svclab");
    }
    cmd.arg("up").arg("--foreground");
    if let Some(s) = &scenario {
        cmd.arg(s);
    }
    if let Some(b) = &backend {
        cmd.arg("--backend").arg(b.to_string());
    }
    // The lab process outlives this one: it must not hold our stderr (a
    // caller waiting for EOF would hang), so it logs to a file, which it
    // moves into its run folder once the run exists.
    state::ensure_state_dir()?;
    let (log_file, log) =
        state::private_named_file_in(std::path::Path::new(state::STATE_DIR), "up-", ".log")?;
    cmd.env("SVCLAB_DAEMON_LOG", &log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log_file);
    // SAFETY: setsid is async-signal-safe; the lab must survive this
    // terminal's session (it is stopped with `svclab down`).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the lab process")?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next();
    match first {
        Some(Ok(l)) if l.starts_with("READY ") => {
            for l in lines.map_while(Result::ok) {
                if l.starts_with("  stop:") {
                    println!("{l}");
                    break;
                }
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let status = child.wait()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            eprint!("{text}");
            bail!("the lab did not come up ({status})")
        }
    }
}

fn down(run: Option<String>) -> Result<ExitCode> {
    let run = match run {
        Some(r) => topology::RunId::parse(&r)
            .with_context(|| format!("{r:?} is not a run id (4 hex digits)"))?,
        None => {
            let live = state::known_runs();
            match live.as_slice() {
                [one] => one.clone(),
                [] => {
                    println!("no lab is running");
                    return Ok(ExitCode::SUCCESS);
                }
                many => bail!(
                    "several labs exist ({}); name one: svclab down --run RUN",
                    many.iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let report = cleanup::down(&run);
    report.print_details();
    if report.runs.contains(&run) {
        println!("lab {run} is down");
    }
    Ok(if report.ok() && report.orphans.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The workload server: reads the pods' servers as one JSON line, binds
/// them, says READY, and serves until stdin closes.
async fn workloads() -> Result<ExitCode> {
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await??;
    let pods: Vec<workload::PodServers> =
        serde_json::from_str(&line).context("reading the pod list")?;
    let n = workload::serve(pods).await?;
    println!("READY {n}");
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
