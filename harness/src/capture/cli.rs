//! `svclab capture` flags and the command itself.

use std::process::ExitCode;

pub use crate::cli::capture::CaptureArgs;

use super::{Options, client, convert};

/// Prints the scenario on stdout and what was left out on stderr.
pub async fn run(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    let listed = client::list(&args.kubeconfig, args.namespace.as_deref()).await?;
    let opts = Options {
        namespace: args.namespace.clone(),
        anonymize: args.anonymize,
        source: if args.anonymize {
            "a cluster".into()
        } else {
            listed.source.clone()
        },
    };
    let captured = convert(&listed.services, &listed.slices, &opts)?;
    print!("{}", captured.yaml);
    tracing::info!(
        "svclab capture: {} Services, {} pods in {} Deployments on {} nodes",
        captured.services,
        captured.pods,
        captured.deployments,
        captured.nodes
    );
    for n in &captured.notes {
        tracing::info!("  note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}
