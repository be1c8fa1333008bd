//! `svclab rules`

use clap::Args;

use super::RunArg;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  svclab rules                    # node-0 of the only running lab, normalised\n  \
                  svclab rules --node node-1 --raw\n  svclab rules --all-nodes"
)]
pub struct RulesArgs {
    #[command(flatten)]
    pub run: RunArg,
    /// The node whose ruleset to print.
    #[arg(
        long,
        value_name = "NODE",
        default_value = "node-0",
        conflicts_with = "all_nodes"
    )]
    pub node: String,
    /// Every node's ruleset, each line prefixed with its node.
    #[arg(long)]
    pub all_nodes: bool,
    /// The tool's output as it is (iptables-save or nft list ruleset),
    /// not normalised.
    #[arg(long)]
    pub raw: bool,
}
