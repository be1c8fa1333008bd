//! `svclab run`

use std::path::PathBuf;

use clap::Args;

use super::{BackendItem, CheckSelection};

fn parse_family(s: &str) -> Result<svclab_backends::model::IpFamily, String> {
    svclab_backends::model::IpFamily::ALL
        .into_iter()
        .find(|f| f.lower() == s)
        .ok_or_else(|| format!("{s:?} is not an IP family: ipv4 or ipv6"))
}

#[derive(Args, Debug)]
#[command(after_help = super::BACKEND_RULE)]
pub struct RunArgs {
    /// The scenario file (see scenarios/).
    pub scenario: PathBuf,
    /// Backends to run the checks against.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "all",
        value_name = "BACKEND,..."
    )]
    pub backend: Vec<BackendItem>,
    /// Backends that must run: one that cannot run here fails the run
    /// (exit code 2, nothing built) instead of being recorded as skipped.
    /// Each is run even if --backend leaves it out.
    #[arg(long, value_delimiter = ',', value_name = "BACKEND,...")]
    pub require: Vec<BackendItem>,
    #[command(flatten)]
    pub checks: CheckSelection,
    /// Run the checks in this IP family only (`ipv4` or `ipv6`); a
    /// dual-stack lab otherwise runs each check in both. The scenario's
    /// lab must have the family.
    #[arg(long, value_parser = parse_family, value_name = "ipv4|ipv6")]
    pub family: Option<svclab_backends::model::IpFamily>,
    /// Deliberate defect to inject (negative tests of the lab itself;
    /// repeatable).
    #[arg(long)]
    pub fault: Vec<svclab_backends::Fault>,
    /// Connections per Service in the balance check (default: the
    /// scenario's).
    #[arg(long, value_name = "N")]
    pub balance_connections: Option<usize>,
    /// Where the results folder is created.
    #[arg(
        long,
        env = "SVCLAB_RESULTS",
        default_value = "results",
        value_name = "DIR"
    )]
    pub results: PathBuf,
    /// Also write node-0's ruleset, read once each backend's lab is synced
    /// and before any check runs, to `DIR/<scenario>/<backend>.rules`
    /// (normalised, as `svclab rules --up --out` writes it), for backends
    /// that program iptables, nftables or IPVS.
    #[arg(long, value_name = "DIR")]
    pub rules_out: Option<PathBuf>,
}
