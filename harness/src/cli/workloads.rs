//! `svclab workloads` (hidden: started by the lab).

use clap::Args;
use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::workload;

#[derive(Args, Debug)]
pub struct WorkloadsArgs {
    /// The run this server belongs to (for `ps` and cleanup).
    #[arg(long)]
    pub run: String,
}

/// The workload server: reads the pods' servers as one JSON line, binds
/// them, says READY, and serves until stdin closes.
pub async fn run() -> Result<ExitCode> {
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
