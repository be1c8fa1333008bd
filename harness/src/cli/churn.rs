//! `svclab churn`

use std::path::PathBuf;

use clap::Args;

use super::{BackendItem, Format};

#[derive(Args, Debug)]
#[command(after_help = super::BACKEND_RULE)]
pub struct ChurnArgs {
    /// The scenario file (its `churn:` section, or a default burst).
    pub scenario: PathBuf,
    /// The one backend the agents run (default: none, which programs
    /// nothing).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none",
        value_name = "BACKEND"
    )]
    pub backend: Vec<BackendItem>,
    /// Overrides the scenario's churn seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output format (json, the default, is the report documented in
    /// results/README.md; text is a short summary).
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_enum, default_value_t = super::Format::Json)]
    pub output: Format,
}
