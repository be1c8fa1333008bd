//! `svclab cleanup`

use clap::Args;

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Also remove runs whose owner is alive, and namespaces without a run
    /// record.
    #[arg(long)]
    pub force: bool,
    /// Only these runs (4 hex digits each); all by default.
    #[arg(value_name = "RUN")]
    pub runs: Vec<String>,
}
