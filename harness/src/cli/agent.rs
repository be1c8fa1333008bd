//! `svclab agent` (hidden: the lab starts one per node).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Args;
use ipnet::Ipv4Net;
use svclab_backends::{BackendKind, Fault};

/// `svclab agent` flags.
#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// The node this agent serves.
    #[arg(long)]
    pub node: String,
    /// The backend it programs.
    #[arg(long)]
    pub backend: BackendKind,
    /// The node's address.
    #[arg(long)]
    pub node_ip: Ipv4Addr,
    /// The node's pod CIDR.
    #[arg(long)]
    pub pod_cidr: Ipv4Net,
    /// Every pod's CIDR (for masquerading).
    #[arg(long)]
    pub cluster_cidr: Ipv4Net,
    /// The ClusterIP range.
    #[arg(long)]
    pub service_cidr: Ipv4Net,
    /// Prefix for kernel objects outside kube-proxy's fixed names.
    #[arg(long, default_value = "svclab-")]
    pub run_prefix: String,
    /// Minimum time between syncs, ms.
    #[arg(long, default_value_t = 100)]
    pub min_sync_period_ms: u64,
    /// Time between full resyncs, ms.
    #[arg(long, default_value_t = 60_000)]
    pub sync_period_ms: u64,
    /// Deliberate defects, for negative tests.
    #[arg(long = "fault")]
    pub faults: Vec<Fault>,
    /// Write each sync's tool input here.
    #[arg(long)]
    pub dump_dir: Option<PathBuf>,
    /// IPVS's scheduler.
    #[arg(long, default_value = "rr")]
    pub ipvs_scheduler: String,
    /// kube-proxy's healthz port, on 0.0.0.0 (0: off).
    #[arg(long, default_value_t = 10256)]
    pub healthz_port: u16,
    /// kube-proxy's metrics port, on 127.0.0.1 (0: off).
    #[arg(long, default_value_t = 10249)]
    pub metrics_port: u16,
    /// Watch the lab's API through this kubeconfig (as kube-proxy does);
    /// without it, watch events come as JSON lines on stdin.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}
