//! `svclab capture` flags and the command itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{Options, client, convert};

/// `svclab capture --kubeconfig K [--namespace NS] [--anonymize]`
#[derive(Args, Clone, Debug)]
pub struct CaptureArgs {
    /// The kubeconfig whose current context is read.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// Only this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Rewrite namespaces, Services, nodes and labels to neutral names.
    #[arg(long)]
    pub anonymize: bool,
}

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
    eprintln!(
        "svclab capture: {} Services, {} pods in {} Deployments on {} nodes",
        captured.services, captured.pods, captured.deployments, captured.nodes
    );
    for n in &captured.notes {
        eprintln!("  note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}
