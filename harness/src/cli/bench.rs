//! `svclab bench`

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::BackendItem;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: BenchKind,
}

#[derive(Subcommand, Debug)]
pub enum BenchKind {
    /// Create and tear down the lab topology (no agents) several times, and
    /// once with ci/ip-baseline.sh for comparison.
    Topology {
        /// Nodes of the topology.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Pods per node, the node's client pod included.
        #[arg(long, default_value_t = 100)]
        pods_per_node: usize,
        /// Builds (and teardowns) measured.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Runs of the ip script (0: none).
        #[arg(long, default_value_t = 1)]
        ip_runs: usize,
        /// The `ip`-command script the build is compared with.
        #[arg(long, default_value = "ci/ip-baseline.sh", value_name = "FILE")]
        ip_script: PathBuf,
        /// The lab's IP families: `ipv4`, `dual` (IPv4 and IPv6), or both,
        /// measured in alternation, with dual's create time as a ratio of
        /// IPv4-only's.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "ipv4",
            value_name = "ipv4|dual,..."
        )]
        family: Vec<String>,
        /// Where the results folder is created.
        #[arg(
            long,
            env = "SVCLAB_RESULTS",
            default_value = "results",
            value_name = "DIR"
        )]
        results: PathBuf,
    },
    /// Full and partial sync cost, network programming latency, data-path
    /// latency and the bare-tool floor, per backend and Service count.
    #[command(after_help = super::BACKEND_RULE)]
    Sync {
        /// A scenario file to measure instead of generated ones (its own
        /// Services are the one size; --services is ignored).
        scenario: Option<PathBuf>,
        /// Service counts to measure, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1000,5000,10000,20000,50000",
            value_name = "N,..."
        )]
        services: Vec<usize>,
        /// Endpoints per generated Service.
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Backends to measure.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "all",
            value_name = "BACKEND,..."
        )]
        backend: Vec<BackendItem>,
        /// Single-Service changes after the full sync, each synced and
        /// watched by a client (a cycle of endpoint added, endpoint
        /// removed, Service added, Service deleted).
        #[arg(long, default_value_t = 20)]
        partials: usize,
        /// Seconds a size's first full sync may take before it counts as
        /// not finished (larger sizes of that backend are then skipped).
        #[arg(long, default_value_t = 600)]
        budget: u64,
        /// Nodes (agents) of the lab.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Sequential TCP connects for the data-path latency.
        #[arg(long, default_value_t = 2000)]
        connects: usize,
        /// The lab's IP families, each measured as its own series:
        /// `ipv4`, `ipv6` (IPv6 only) or `dual` (IPv4 primary, the
        /// Services PreferDualStack, so a proxy programs both). Series
        /// other than ipv4 are named `<backend>/<family>`; a backend that
        /// programs IPv4 only is unavailable in them, with the reason.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "ipv4",
            value_name = "ipv4|ipv6|dual,..."
        )]
        family: Vec<String>,
        /// Where the results folder is created.
        #[arg(
            long,
            env = "SVCLAB_RESULTS",
            default_value = "results",
            value_name = "DIR"
        )]
        results: PathBuf,
    },
    /// The lab's API endpoint: the initial list of N Services to one agent
    /// (time, the harness's and the agent's RSS), one EndpointSlice change
    /// fanned out to every agent of an M-node lab (p50/p99 delivery), and
    /// network programming latency fed through the API against the pipe.
    #[command(after_help = super::BACKEND_RULE)]
    Api {
        /// Services in the initial list.
        #[arg(long, default_value_t = 50_000)]
        services: usize,
        /// Endpoints per generated Service.
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Nodes (agents) the fan-out reaches.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Readiness flips per fan-out and feed case.
        #[arg(long, default_value_t = 40)]
        changes: usize,
        /// The one backend of the API-against-pipe comparison (default:
        /// iptables).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "iptables",
            value_name = "BACKEND"
        )]
        backend: Vec<BackendItem>,
        /// Where the results folder is created.
        #[arg(
            long,
            env = "SVCLAB_RESULTS",
            default_value = "results",
            value_name = "DIR"
        )]
        results: PathBuf,
    },
    /// Probe-engine throughput: TCP probes through DNAT per second.
    #[command(after_help = super::BACKEND_RULE)]
    Probes {
        /// The one backend that does the DNAT (default: iptables).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "iptables",
            value_name = "BACKEND"
        )]
        backend: Vec<BackendItem>,
        /// Endpoints behind the ClusterIP.
        #[arg(long, default_value_t = 4)]
        endpoints: usize,
        /// Probes per run.
        #[arg(long, default_value_t = 20_000)]
        probes: usize,
        /// Probes in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Runs measured.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the results folder is created.
        #[arg(
            long,
            env = "SVCLAB_RESULTS",
            default_value = "results",
            value_name = "DIR"
        )]
        results: PathBuf,
    },
}
