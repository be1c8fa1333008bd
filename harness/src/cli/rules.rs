//! `svclab rules`

use clap::Args;

use super::RunArg;
use crate::rules::{Ruleset, dump, normalise};

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

/// Prints a lab node's ruleset, normalised (or raw).
pub fn run(args: &RulesArgs) -> anyhow::Result<()> {
    let st = crate::state::pick_run(args.run.run.as_deref())?;
    let backend = st
        .backend
        .clone()
        .ok_or_else(|| anyhow::anyhow!("lab {} runs no agents, so no rules", st.run))?;
    let ruleset = Ruleset::of_backend(&backend).ok_or_else(|| {
        anyhow::anyhow!(
            "lab {} runs {backend}, which programs no iptables or nftables ruleset",
            st.run
        )
    })?;
    let nodes: Vec<(String, String)> = st
        .topology
        .as_ref()
        .map(|t| {
            t.nodes
                .iter()
                .map(|n| (n.name.clone(), n.netns.clone()))
                .collect()
        })
        .unwrap_or_default();
    let picked: Vec<&(String, String)> = nodes
        .iter()
        .filter(|(name, _)| args.all_nodes || *name == args.node)
        .collect();
    if picked.is_empty() {
        anyhow::bail!(
            "lab {} has no node {:?} (nodes: {})",
            st.run,
            args.node,
            nodes
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (name, netns) in picked {
        let text = dump(netns, ruleset)?;
        let prefix = if args.all_nodes {
            format!("{name}: ")
        } else {
            String::new()
        };
        if args.raw {
            for l in text.lines() {
                println!("{prefix}{l}");
            }
        } else {
            for l in normalise(ruleset, &text) {
                println!("{prefix}{l}");
            }
        }
    }
    Ok(())
}
