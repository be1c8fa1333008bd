//! `svclab workloads` (hidden: started by the lab).

use clap::Args;

#[derive(Args, Debug)]
pub struct WorkloadsArgs {
    /// The run this server belongs to (for `ps` and cleanup).
    #[arg(long)]
    pub run: String,
}
