//! `svclab up`

use std::path::PathBuf;

use clap::Args;

use super::BackendItem;

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
