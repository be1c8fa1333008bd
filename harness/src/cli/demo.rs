//! `svclab demo`

use std::path::PathBuf;

use clap::Args;

use super::CheckSelection;

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub checks: CheckSelection,
    /// Where the results folder is created.
    #[arg(
        long,
        env = "SVCLAB_RESULTS",
        default_value = "results",
        value_name = "DIR"
    )]
    pub results: PathBuf,
}
