//! `svclab compare`

use std::path::PathBuf;

use clap::Args;

use crate::bench::compare::{parse_pair, parse_threshold};

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// The baseline: a bench folder, or its bench.json.
    pub base: PathBuf,
    /// The run to judge against it.
    pub candidate: PathBuf,
    /// How much worse a figure may get before it counts as a regression,
    /// as a percentage (`10%`) or a fraction (`0.1`).
    #[arg(long, default_value = "10%", value_parser = parse_threshold)]
    pub threshold: f64,
    /// Compare backend OLD's figures in BASE with backend NEW's in
    /// CANDIDATE instead of like with like: a version upgrade, e.g.
    /// `--pair kube-proxy:nftables@v1.34.4=kube-proxy:nftables@v1.37.2`
    /// (BASE and CANDIDATE may be the same folder). Repeatable; other
    /// backends are left out.
    #[arg(long = "pair", value_name = "OLD=NEW", value_parser = parse_pair)]
    pub pairs: Vec<(String, String)>,
    /// Output format (json: every row and the verdict, see
    /// results/README.md).
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_enum, default_value_t = super::Format::Text)]
    pub output: super::Format,
}
