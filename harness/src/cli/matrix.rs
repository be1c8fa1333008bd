//! `svclab matrix` and `svclab merge`

use std::path::PathBuf;

use clap::Args;

use super::{BackendItem, CheckSelection, Format};

#[derive(Args, Debug)]
#[command(after_help = super::BACKEND_RULE)]
pub struct MatrixArgs {
    /// The scenario file (see scenarios/), whose checks every cell runs.
    /// Give none to run a benchmark instead: `-- bench sync [OPTIONS]`.
    #[arg(required_unless_present = "command")]
    pub scenario: Option<PathBuf>,
    /// Kernels: `host` (this machine's running kernel, cells run directly)
    /// or anything `svclab vm --kernel` accepts (one VM boot per kernel).
    #[arg(
        long = "kernel",
        value_delimiter = ',',
        default_value = "host",
        value_name = "KERNEL,..."
    )]
    pub kernels: Vec<String>,
    /// Backends to run on every kernel (`all`: on the host, every backend
    /// it can run; in a VM, every built-in backend).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "all",
        value_name = "BACKEND,..."
    )]
    pub backend: Vec<BackendItem>,
    #[command(flatten)]
    pub checks: CheckSelection,
    /// Print the cells (kernel, backend, scenario, check filter) this
    /// command would run, and run nothing.
    #[arg(long)]
    pub plan: bool,
    /// Run only the I-th of N contiguous slices of the cells (1-based,
    /// kernel-major), for CI runners; `svclab merge` joins the shards.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::matrix::Shard>,
    /// Give up on one VM kernel after this many seconds (`svclab vm
    /// --timeout`).
    #[arg(long, value_name = "SECONDS")]
    pub vm_timeout: Option<u64>,
    /// Output format of --plan.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
    /// Where the matrix folder is created.
    #[arg(
        long,
        env = "SVCLAB_RESULTS",
        default_value = "results",
        value_name = "DIR"
    )]
    pub results: PathBuf,
    /// Instead of a scenario: `bench sync [OPTIONS]` (without `--backend`
    /// and `--results`), run on every kernel, with `none` added to the
    /// backends; the report sets the kernels side by side as ratios within
    /// each kernel's run.
    #[arg(last = true, value_name = "COMMAND", conflicts_with_all = ["scenario", "shard", "check", "skip_check"])]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Matrix folders (shards of one plan, or whole matrices) to join.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Where the merged matrix folder is created.
    #[arg(
        long,
        env = "SVCLAB_RESULTS",
        default_value = "results",
        value_name = "DIR"
    )]
    pub results: PathBuf,
}
