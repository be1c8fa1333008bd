//! `svclab up`

use std::path::PathBuf;

use clap::Args;

use super::BackendItem;
use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use svclab_backends::BackendKind;

use crate::scenario::Scenario;
use crate::{guard, lab, state, stop};

#[derive(Args, Debug)]
#[command(after_help = super::BACKEND_RULE)]
pub struct UpArgs {
    /// Scenario file (default: the built-in smoke scenario).
    pub scenario: Option<PathBuf>,
    /// The one backend the lab's agents run (default: no agents at all).
    #[arg(long, value_delimiter = ',', value_name = "BACKEND")]
    pub backend: Vec<BackendItem>,
    /// Stay in the foreground (Ctrl-C tears the lab down).
    #[arg(long)]
    pub foreground: bool,
}

/// The lab process: brings the lab up, prints it, supervises it until a
/// stop signal, then removes it.
pub async fn foreground(scn: Scenario, backend: Option<BackendKind>) -> Result<ExitCode> {
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
    if let (Some(ns), Some(ip)) = (&t.external2, t.external2_ip) {
        println!("  external-2      {ip}  netns {ns}");
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

/// Starts the lab process detached and relays its first lines.
pub fn detached(scenario: Option<PathBuf>, backend: Option<BackendKind>) -> Result<ExitCode> {
    let exe = crate::state::self_exe();
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
