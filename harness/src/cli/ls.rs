//! `svclab ls`

use clap::Args;

use super::Format;

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Output format (json: an array of labs, see results/README.md).
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}
