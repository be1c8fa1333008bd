//! `svclab capture`

use std::path::PathBuf;

use clap::Args;

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
