//! VM mode: `svclab vm [--kernel K]... -- <svclab command>` runs any svclab
//! command inside a qemu VM booted (virtme-ng) from a stock distribution
//! kernel with the host's filesystem, so backends whose kernel parts this
//! host lacks (IP_VS here) are tested for real. Everything of one kernel
//! runs in one boot; `results/` is shared read-write so results come back.
//! Results made inside are labelled emulated with the VM's kernel, and their
//! timings are never compared with the host's.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

pub use crate::cli::vm::VmArgs;
use anyhow::{Context, Result, bail};

/// The newest kernel image under /boot.
pub fn default_kernel() -> Option<PathBuf> {
    let mut k: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    k.sort();
    k.pop()
}

/// Modules the lab's backends may need inside the VM's stock kernel.
const MODULES: &str = "ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh ip_vs_lc dummy veth bridge br_netfilter \
                       nf_conntrack nf_nat xt_statistic xt_recent xt_comment xt_mark xt_MASQUERADE \
                       xt_addrtype xt_conntrack xt_set ip_set ip_set_hash_ip ip_set_hash_ipport \
                       ip_set_hash_ipportip ip_set_hash_ipportnet ip_set_hash_net ip_set_bitmap_port \
                       nf_reject_ipv4 ipt_REJECT nft_reject_inet nf_tables nft_numgen nft_ct nft_nat \
                       nft_masq nft_chain_nat nft_compat ip_tables iptable_nat iptable_filter";

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The script the VM runs: modules, labels, then the command.
fn script(exe: &Path, cwd: &Path, command: &[String], kernel: &Path) -> String {
    let release = kernel
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .unwrap_or_default();
    let args: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    format!(
        "for m in {MODULES}; do modprobe -q $m 2>/dev/null; done; \
         export SVCLAB_IN_VM={release} CI={ci}; cd {cwd} && exec {exe} {args}",
        ci = shell_quote(&std::env::var("CI").unwrap_or_default()),
        cwd = shell_quote(&cwd.display().to_string()),
        exe = shell_quote(&exe.display().to_string()),
        args = args.join(" "),
    )
}

fn result_dirs(base: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("results.json").is_file() || p.join("bench.json").is_file())
        .collect();
    v.sort();
    v
}

pub fn run(args: VmArgs) -> Result<ExitCode> {
    let kernels = if args.kernels.is_empty() {
        vec![
            default_kernel()
                .context("no kernel under /boot: install linux-image-amd64 (ci/setup --vm)")?,
        ]
    } else {
        args.kernels.clone()
    };
    for k in &kernels {
        if !k.is_file() {
            bail!("kernel {} does not exist", k.display());
        }
    }
    which("vng").context("virtme-ng (vng) is not installed: run ci/setup --vm")?;
    which("qemu-system-x86_64").context("qemu is not installed: run ci/setup --vm")?;
    // The VM runs this same binary by its path on the shared filesystem.
    let exe = std::env::current_exe()?;
    let cwd = std::env::current_dir()?;
    std::fs::create_dir_all(&args.results)?;
    let results = std::fs::canonicalize(&args.results)?;
    let mut failed = false;
    let mut made: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    for kernel in &kernels {
        let before = result_dirs(&results);
        let start = Instant::now();
        tracing::info!(
            "svclab vm: booting {} (software emulation, about 40 s)",
            kernel.display()
        );
        let mut child = Command::new("vng")
            .arg("--run")
            .arg(kernel)
            .args([
                "--disable-kvm",
                "--memory",
                &args.memory,
                "--cpus",
                &args.cpus.to_string(),
            ])
            .arg(format!("--rwdir={}", results.display()))
            // The VM mounts its own /var/cache: upstream kube-proxy's
            // builds are bound in, read-only, at the same path.
            .args(
                Some(crate::kubeproxy::cache_dir())
                    .filter(|d| d.is_dir())
                    .map(|d| format!("--rodir={}", d.display())),
            )
            .arg("--exec")
            .arg(script(&exe, &cwd, &args.command, kernel))
            .stdin(Stdio::null())
            // Relayed, not inherited: qemu reopens an inherited stdout
            // through /proc/self/fd, at offset 0, and so wrote over a log
            // file that `ci/test > log` had already filled.
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting vng")?;
        let relays = [
            relay(child.stdout.take(), std::io::stdout),
            relay(child.stderr.take(), std::io::stderr),
        ];
        let deadline = start + Duration::from_secs(args.timeout);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if status.is_some() {
            // The VM is gone; its output ends with it.
            for r in relays.into_iter().flatten() {
                let _ = r.join();
            }
        }
        match status {
            Some(s) if s.success() => {}
            Some(s) => {
                tracing::warn!("svclab vm: {} exited with {s}", kernel.display());
                failed = true;
            }
            None => {
                tracing::warn!(
                    "svclab vm: {} did not finish within {} s; killed",
                    kernel.display(),
                    args.timeout
                );
                failed = true;
            }
        }
        tracing::info!(
            "svclab vm: {} took {:.0} s (emulated)",
            kernel.display(),
            start.elapsed().as_secs_f64()
        );
        let new: Vec<PathBuf> = result_dirs(&results)
            .into_iter()
            .filter(|d| !before.contains(d))
            .collect();
        made.push((kernel.clone(), new));
    }
    if kernels.len() > 1 {
        print_matrix(&made);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Copies a child's output to ours as it comes, on a thread.
fn relay<R, W>(from: Option<R>, to: fn() -> W) -> Option<std::thread::JoinHandle<()>>
where
    R: std::io::Read + Send + 'static,
    W: std::io::Write + 'static,
{
    let mut from = from?;
    Some(std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to());
    }))
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(program).is_file());
    if found {
        Ok(())
    } else {
        bail!("{program} not found on PATH")
    }
}

/// One table: kernel × backend × check, from each VM's results.json.
fn print_matrix(made: &[(PathBuf, Vec<PathBuf>)]) {
    println!("kernel matrix (emulated VMs):");
    for (kernel, dirs) in made {
        for d in dirs {
            let Ok(raw) = std::fs::read(d.join("results.json")) else {
                continue;
            };
            let Ok(r) = serde_json::from_slice::<crate::results::RunResults>(&raw) else {
                continue;
            };
            println!("== {} ({})", kernel.display(), r.host.kernel);
            print!("{}", crate::results::terminal_table(&r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_and_labels() {
        let s = script(
            Path::new("/w/target/release/svclab"),
            Path::new("/w"),
            &[
                "run".into(),
                "scenarios/behaviours.yaml".into(),
                "--backend".into(),
                "ipvs,iptables".into(),
                "a b".into(),
            ],
            Path::new("/boot/vmlinuz-6.1.0-56-amd64"),
        );
        assert!(s.contains("SVCLAB_IN_VM=6.1.0-56-amd64"), "{s}");
        assert!(s.contains("exec /w/target/release/svclab run scenarios/behaviours.yaml --backend ipvs,iptables 'a b'"), "{s}");
        assert!(s.contains("modprobe -q $m"));
    }
}
