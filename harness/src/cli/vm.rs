//! `svclab vm`

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct VmArgs {
    /// Kernel to boot (repeat for a kernel matrix): a path to an image, a
    /// release (6.12.95+deb12-amd64) or its package name, a version (6.1,
    /// 6.12: its newest release here), or `unstable` (the newest kernel
    /// fetched from Debian's unstable suite). Looked for under /boot and in
    /// the kernels `ci/kernels` fetched (`svclab doctor` lists them).
    /// Default: the newest /boot/vmlinuz-*.
    #[arg(long = "kernel", value_name = "KERNEL")]
    pub kernels: Vec<String>,
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
    /// A shell script to run inside instead of one command: several svclab
    /// commands in one boot. It gets `$SVCLAB` (this svclab's path) and
    /// `$SVCLAB_RESULTS` (the shared results folder); its exit code is the
    /// VM's.
    #[arg(long, value_name = "FILE", conflicts_with = "command")]
    pub script: Option<PathBuf>,
    /// The svclab command to run inside, after `--`.
    #[arg(last = true, required_unless_present = "script")]
    pub command: Vec<String>,
}
