//! `svclab vm`

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct VmArgs {
    /// Kernel image to boot (repeat for a kernel matrix). Default: the
    /// newest /boot/vmlinuz-*.
    #[arg(long = "kernel")]
    pub kernels: Vec<PathBuf>,
    /// The VM's memory (qemu -m syntax).
    #[arg(long, default_value = "2G")]
    pub memory: String,
    /// The VM's CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Give up on one VM after this many seconds.
    #[arg(long, default_value_t = 2400)]
    pub timeout: u64,
    /// Where results are written (shared with the VM read-write).
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// The svclab command to run inside, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}
