//! `svclab trace` flags and the command itself.

use std::collections::BTreeSet;
use std::process::ExitCode;

use clap::Args;
use svclab_backends::model::Protocol;

use super::{LabView, find_run, resolve, text, trace};
use crate::probe::{Outcome, Prober};

/// `svclab trace --from ... --to ...`
#[derive(Args, Clone, Debug)]
pub struct TraceArgs {
    /// Where the probe starts: pod/<namespace>/<name>, node/<name> or
    /// external.
    #[arg(long)]
    pub from: String,
    /// What it dials: <service>[.<namespace>]:<port> (a Service port, or
    /// a node port), or <ip>:<port>. From `external`, a Service port means
    /// its NodePort.
    #[arg(long)]
    pub to: String,
    /// tcp or udp.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    pub proto: Protocol,
    /// The node whose address a NodePort probe dials (default: the
    /// client's node, or the first node).
    #[arg(long)]
    pub node: Option<String>,
    /// The lab's run id (default: the only running lab).
    #[arg(long)]
    pub run: Option<String>,
    /// Print the trace as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("{s:?}: expected tcp or udp")),
    }
}

/// Runs one trace; exit code 0 when the probe was answered, 1 otherwise
/// (the trace is printed either way).
pub async fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let st = find_run(args.run.as_deref())?;
    let lab = LabView::of_state(&st)?;
    let from = resolve::from(&args.from, &lab.topology)?;
    let to = resolve::to(
        &args.to,
        args.proto,
        &from,
        args.node.as_deref(),
        &st.services,
        &lab.topology,
    )?;
    let prober = Prober::new();
    // Without the lab's slices at hand, big labs trace the client's node
    // and the node dialled; small ones trace every node anyway.
    let endpoint_nodes: BTreeSet<usize> = lab
        .topology
        .nodes
        .iter()
        .position(|n| Some(&n.name) == to.node.as_ref())
        .into_iter()
        .collect();
    let t = trace(&lab, &prober, &from, &to, Some(&endpoint_nodes)).await;
    prober.close();
    let t = t?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        print!("{}", text(&t));
    }
    Ok(if t.probe.outcome == Outcome::Answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
