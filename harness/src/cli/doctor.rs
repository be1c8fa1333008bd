//! `svclab doctor`

use clap::Args;

use super::{BackendItem, Format};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Output format (json: findings and backends, see results/README.md).
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Exit with status 1, naming each and why, if one of these backends
    /// cannot run here (comma-separated; `all` is every built-in one).
    #[arg(long, value_delimiter = ',', value_name = "BACKEND,...")]
    pub require: Vec<BackendItem>,
}
