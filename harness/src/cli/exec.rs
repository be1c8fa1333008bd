//! `svclab exec`

use clap::Args;

use super::RunArg;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  svclab exec pod/svclab-system/client-node-0 -- curl -s 10.96.0.11/hostname\n  \
                  svclab exec node/node-0 -- nft list ruleset\n  svclab exec --run 1a2b external -- ip addr"
)]
pub struct ExecArgs {
    #[command(flatten)]
    pub run: RunArg,
    /// Where to run it: pod/<namespace>/<name>, node/<name> or external.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}
