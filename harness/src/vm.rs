//! VM mode: `svclab vm [--kernel K]... -- <svclab command>` runs any svclab
//! command inside a qemu VM booted (virtme-ng) from a stock distribution
//! kernel with the host's filesystem, so backends whose kernel parts this
//! host lacks (IP_VS here) are tested for real. Everything of one kernel
//! runs in one boot; `results/` is shared read-write so results come back.
//! Results made inside are labelled emulated with the VM's kernel, and their
//! timings are never compared with the host's.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
                       nft_masq nft_chain_nat nft_compat ip_tables iptable_nat iptable_filter sctp xt_sctp";

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

/// The script the VM runs: modules, labels, then the command, whose
/// results folder (`SVCLAB_RESULTS`, unless it names one) is the one shared
/// read-write: the rest of the host's filesystem is read-only in the guest.
/// A hard link to `exe`'s file next to it, removed when dropped. A
/// rebuild while a VM runs writes a new file at `exe`'s path; the guest,
/// reading it through the shared filesystem, then started agents that died
/// at once ("Broken pipe" bringing a lab up, every lab after the rebuild).
/// The link keeps the file the VM started with. None (the path as it is)
/// where no link can be made there.
fn pin(exe: &Path) -> Option<tempfile::TempPath> {
    let dir = exe.parent()?;
    tempfile::Builder::new()
        .prefix(".svclab-vm-")
        .make_in(dir, |p| std::fs::hard_link(exe, p))
        .map(tempfile::NamedTempFile::into_temp_path)
        .inspect_err(|e| {
            tracing::debug!(
                "svclab vm: no link to {} in {}: {e}",
                exe.display(),
                dir.display()
            )
        })
        .ok()
}

fn script(exe: &Path, cwd: &Path, guest: &Guest<'_>, release: &str, results: &Path) -> String {
    let exe = shell_quote(&exe.display().to_string());
    let run = match guest {
        Guest::Command(command) => {
            let args: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
            format!("exec {exe} {}", args.join(" "))
        }
        Guest::Script(file) => format!("exec sh {}", shell_quote(&file.display().to_string())),
    };
    // The host's SVCLAB_* settings (SVCLAB_LOG, ...) go along.
    let mut forwarded: Vec<String> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("SVCLAB_")
                && !matches!(k.as_str(), "SVCLAB_IN_VM" | "SVCLAB_RESULTS")
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(|(k, v)| format!("{k}={} ", shell_quote(&v)))
        .collect();
    forwarded.sort();
    format!(
        "echo 'svclab vm: the guest is up' >&2; \
         for m in {MODULES}; do modprobe -q $m 2>/dev/null; done; \
         export {forwarded}SVCLAB_IN_VM={release} CI={ci} SVCLAB_RESULTS={results} SVCLAB={exe}; \
         cd {cwd} && {run}",
        forwarded = forwarded.concat(),
        ci = shell_quote(&std::env::var("CI").unwrap_or_default()),
        results = shell_quote(&results.display().to_string()),
        cwd = shell_quote(&cwd.display().to_string()),
    )
}

/// What the guest runs: one svclab command, or a shell script.
enum Guest<'a> {
    Command(&'a [String]),
    Script(&'a Path),
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
    let specs = if args.kernels.is_empty() {
        vec![
            default_kernel()
                .context("no kernel under /boot: install linux-image-amd64 (ci/setup --vm)")?
                .display()
                .to_string(),
        ]
    } else {
        args.kernels.clone()
    };
    let sources = crate::kernels::Sources::host();
    let mut kernels = Vec::new();
    for spec in &specs {
        let k = sources.resolve(spec)?;
        if k.modules.is_none() {
            if k.place == crate::kernels::Place::Path {
                tracing::warn!(
                    "svclab vm: no lib/modules/{}/modules.dep above {}: the guest cannot load \
                     modules (ip_vs, nf_tables, ...)",
                    k.release,
                    k.image.display()
                );
            } else {
                bail!(
                    "kernel {} has no modules.dep, so the guest could not load ip_vs, \
                     nf_tables, ...: fetch it again with `ci/kernels {}`",
                    k.describe(),
                    k.release
                );
            }
        }
        tracing::info!("svclab vm: kernel {spec} is {}", k.describe());
        kernels.push(k);
    }
    which("vng").context("virtme-ng (vng) is not installed: run ci/setup --vm")?;
    which("qemu-system-x86_64").context("qemu is not installed: run ci/setup --vm")?;
    // The VM runs this same binary, by a path on the shared filesystem
    // that a rebuild does not replace.
    let exe = std::env::current_exe()?;
    let pinned = pin(&exe);
    let exe = pinned.as_deref().unwrap_or(&exe).to_path_buf();
    let cwd = std::env::current_dir()?;
    std::fs::create_dir_all(&args.results)?;
    let results = std::fs::canonicalize(&args.results)?;
    let script_path = match &args.script {
        Some(f) => {
            Some(std::fs::canonicalize(f).with_context(|| format!("--script {}", f.display()))?)
        }
        None => None,
    };
    let guest = match &script_path {
        Some(f) => Guest::Script(f),
        None => Guest::Command(&args.command),
    };
    let mut failed = false;
    let mut made: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    for k in &kernels {
        let kernel = &k.image;
        let before = result_dirs(&results);
        let start = Instant::now();
        tracing::info!(
            "svclab vm: booting {} (software emulation, about 40 s)",
            kernel.display()
        );
        // qemu under software emulation has been seen to hang before the
        // guest starts (no output, no CPU) for the whole timeout; a boot
        // that says nothing for BOOT_SILENCE is killed and tried again.
        // The script goes to the guest as a file in the shared results
        // folder: virtme-ng passes --exec on the kernel command line, which
        // x86 cuts at 2048 bytes, and a guest whose command was cut never
        // starts it (a long --check list hung a boot with no output).
        // A random name, removed when dropped.
        let script_file = tempfile::Builder::new()
            .prefix(".svclab-vm-")
            .suffix(".sh")
            .tempfile_in(&results)
            .with_context(|| format!("a script file in {}", results.display()))?;
        std::fs::write(
            script_file.path(),
            script(&exe, &cwd, &guest, &k.release, &results),
        )
        .with_context(|| format!("writing {}", script_file.path().display()))?;
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let boot_start = Instant::now();
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
                // So is a fetched kernel's folder: virtme-ng links the
                // guest's /lib/modules/<release> to its lib/modules.
                .args(k.guest_dir().map(|d| format!("--rodir={}", d.display())))
                .arg("--exec")
                .arg(format!(
                    "sh {}",
                    shell_quote(&script_file.path().display().to_string())
                ))
                .stdin(Stdio::null())
                // Relayed, not inherited: qemu reopens an inherited stdout
                // through /proc/self/fd, at offset 0, and so wrote over a log
                // file that `ci/test > log` had already filled.
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting vng")?;
            let seen = Arc::new(AtomicBool::new(false));
            let relays = [
                relay(child.stdout.take(), std::io::stdout, seen.clone()),
                relay(child.stderr.take(), std::io::stderr, seen.clone()),
            ];
            let deadline = boot_start + Duration::from_secs(args.timeout);
            let outcome = loop {
                if let Some(s) = child.try_wait()? {
                    break Boot::Exited(s);
                }
                let silent = !seen.load(Ordering::Relaxed) && boot_start.elapsed() > BOOT_SILENCE;
                if silent || Instant::now() > deadline {
                    // vng's qemu first, then vng itself.
                    crate::bench::procs::kill_descendants(&[child.id()]);
                    let _ = child.kill();
                    let _ = child.wait();
                    break if silent { Boot::Silent } else { Boot::TimedOut };
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            if let Boot::Exited(_) = outcome {
                // The VM is gone; its output ends with it.
                for r in relays.into_iter().flatten() {
                    let _ = r.join();
                }
            }
            if matches!(outcome, Boot::Silent) && attempt < BOOT_ATTEMPTS {
                tracing::warn!(
                    "svclab vm: {} said nothing in {} s (qemu hung before the guest started); \
                     booting it again",
                    kernel.display(),
                    BOOT_SILENCE.as_secs()
                );
                continue;
            }
            break outcome;
        };
        match outcome {
            Boot::Exited(s) if s.success() => {}
            Boot::Exited(s) => {
                tracing::warn!("svclab vm: {} exited with {s}", kernel.display());
                failed = true;
            }
            Boot::Silent => {
                tracing::warn!(
                    "svclab vm: {} said nothing in {} s, {BOOT_ATTEMPTS} times; killed",
                    kernel.display(),
                    BOOT_SILENCE.as_secs()
                );
                failed = true;
            }
            Boot::TimedOut => {
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

/// Copies a child's output to ours as it comes, on a thread; `seen` turns
/// true at its first byte.
fn relay<R, W>(
    from: Option<R>,
    to: fn() -> W,
    seen: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>>
where
    R: std::io::Read + Send + 'static,
    W: std::io::Write + 'static,
{
    let mut from = from?;
    Some(std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut out = to();
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.store(true, Ordering::Relaxed);
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    }))
}

/// How one boot ended.
enum Boot {
    Exited(std::process::ExitStatus),
    /// No output at all within [`BOOT_SILENCE`].
    Silent,
    /// Past `--timeout`.
    TimedOut,
}

/// A guest prints its first line (the svclab command's) about 40 s after
/// qemu starts, a few minutes at most on a loaded host.
const BOOT_SILENCE: Duration = Duration::from_secs(300);
/// Boots tried when one stays silent.
const BOOT_ATTEMPTS: u32 = 2;

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
    #[test]
    fn the_guest_keeps_the_binary_it_started_with_across_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("svclab");
        std::fs::write(&exe, "old").unwrap();
        let pinned = super::pin(&exe).expect("a link next to the binary");
        assert_eq!(pinned.parent(), Some(dir.path()));
        // A rebuild: a new file renamed over the path.
        std::fs::write(dir.path().join("new"), "new").unwrap();
        std::fs::rename(dir.path().join("new"), &exe).unwrap();
        assert_eq!(std::fs::read_to_string(&pinned).unwrap(), "old");
        let path = pinned.to_path_buf();
        drop(pinned);
        assert!(!path.exists(), "the link is removed");
        assert_eq!(std::fs::read_to_string(&exe).unwrap(), "new");
    }

    use super::*;

    #[test]
    fn script_quotes_and_labels() {
        let command: Vec<String> = vec![
            "run".into(),
            "scenarios/behaviours.yaml".into(),
            "--backend".into(),
            "ipvs,iptables".into(),
            "a b".into(),
        ];
        let s = script(
            Path::new("/w/target/release/svclab"),
            Path::new("/w"),
            &Guest::Command(&command),
            "6.1.0-56-amd64",
            Path::new("/tmp/r s"),
        );
        assert!(s.contains("SVCLAB_IN_VM=6.1.0-56-amd64"), "{s}");
        assert!(s.contains("SVCLAB_RESULTS='/tmp/r s'"), "{s}");
        assert!(s.contains("exec /w/target/release/svclab run scenarios/behaviours.yaml --backend ipvs,iptables 'a b'"), "{s}");
        assert!(s.contains("modprobe -q $m"));
        let s = script(
            Path::new("/w/target/release/svclab"),
            Path::new("/w"),
            &Guest::Script(Path::new("/w/ci/vm stage")),
            "6.1.0-56-amd64",
            Path::new("/w/results"),
        );
        assert!(s.contains("SVCLAB=/w/target/release/svclab"), "{s}");
        assert!(s.ends_with("cd /w && exec sh '/w/ci/vm stage'"), "{s}");
    }
}
