//! `svclab down`

use clap::Args;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::{cleanup, state, topology};

#[derive(Args, Debug)]
pub struct DownArgs {
    /// The lab's run id, 4 hex digits (default: the only lab on this host;
    /// see `svclab ls`).
    #[arg(long = "run", value_name = "RUN")]
    pub run_flag: Option<String>,
    /// The run id as a positional argument (kept for compatibility; same as
    /// --run).
    #[arg(value_name = "RUN", conflicts_with = "run_flag", hide = true)]
    pub run: Option<String>,
}

impl DownArgs {
    pub fn run(&self) -> Option<&str> {
        self.run_flag.as_deref().or(self.run.as_deref())
    }
}

/// `svclab down`: removes one lab.
pub fn run(run: Option<String>) -> Result<ExitCode> {
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
