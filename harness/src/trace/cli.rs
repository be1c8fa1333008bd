//! `svclab trace` flags and the command itself.

use std::collections::BTreeSet;
use std::process::ExitCode;

pub use crate::cli::trace::TraceArgs;

use super::{LabView, find_run, resolve, text, trace};
use crate::probe::{Outcome, Prober};

/// Runs one trace; exit code 0 when the probe was answered, 1 otherwise
/// (the trace is printed either way).
pub async fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let st = find_run(args.run.run.as_deref())?;
    let lab = LabView::of_state(&st)?;
    let family = resolve::family(&args.to, args.family, &st.services)?;
    let from = resolve::from(&args.from, &lab.topology, family)?;
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
    if args.json() {
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
