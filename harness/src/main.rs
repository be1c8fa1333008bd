mod cleanup;
mod controlplane;
mod probe;
mod workload;
mod netns;
mod scenario;
mod state;
mod topology;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "svclab",
    version,
    about = "End-to-end test harness and benchmark lab for Kubernetes Service proxies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the lab's network and keep it until `svclab down`.
    Up { scenario: Option<PathBuf> },
    /// Tear a lab down.
    Down { run: Option<String> },
    /// Remove what earlier runs left behind.
    Cleanup {
        #[arg(long)]
        force: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Up { scenario } => {
            let scn = match scenario {
                Some(p) => scenario::Scenario::load(&p).map_err(|e| anyhow::anyhow!("{e}"))?,
                None => scenario::Scenario::smoke(),
            };
            let run = topology::RunId::fresh();
            let mut st = state::RunState::new(&run, &scn.file);
            let topo = topology::Topology::plan(&scn, &run);
            st.topology = Some(topo.clone());
            st.save()?;
            let t0 = Instant::now();
            let times = rt
                .block_on(topo.create())
                .context("building the topology")?;
            println!(
                "run {run}: {} namespaces in {:?} ({:?})",
                topo.namespaces().len(),
                t0.elapsed(),
                times
            );
        }
        Command::Down { run } => {
            let mut report = cleanup::CleanupReport::default();
            let run = topology::RunId::parse(run.as_deref().unwrap_or("")).context("run id")?;
            let t0 = Instant::now();
            cleanup::cleanup_run(&run, true, &mut report);
            println!("{report:?} in {:?}", t0.elapsed());
        }
        Command::Cleanup { force } => {
            let report = cleanup::cleanup_all(force);
            println!("{report:?}");
        }
    }
    Ok(())
}
