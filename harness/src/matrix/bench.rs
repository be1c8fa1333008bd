//! `svclab matrix --kernel A,B --backend x,y -- bench sync ARGS`: one
//! `svclab bench sync` per kernel (on the host directly, in a VM boot for
//! the others), written as one folder `results/<UTC>-matrix-bench-sync/`
//! with each kernel's bench folder under `cells/kernel-<k>/`,
//! `bench-matrix.json` and `summary.md`, whose columns are kernels.
//!
//! Figures are set side by side as ratios within their own kernel's run:
//! the full sync over the bare tool's (the floor), and the connect latency
//! over `none`'s (which every kernel runs, added when not asked for).
//! Absolute times are shown for the host only; a kernel under software
//! emulation is compared with nothing but itself, and the table says so.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{HOST, kernel_folder};
use crate::bench::schema::BenchResults;

pub const SCHEMA: &str = "svclab.dev/matrix-bench/v1";

/// One kernel's bench: its folder (relative to the matrix folder) and
/// what it measured, or why it measured nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelBench {
    pub kernel: String,
    pub backends: Vec<String>,
    pub run_dir: Option<String>,
    pub emulated: bool,
    /// The kernel release it ran on (`uname -r`).
    pub release: Option<String>,
    /// Figures were written, but `bench sync` (or its VM) did not exit
    /// cleanly: a missed target, or a VM killed at its timeout, whose
    /// remaining cases are then absent.
    pub exit: Option<String>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchMatrix {
    pub schema: String,
    /// The `bench sync` arguments every kernel ran with (besides
    /// `--backend` and `--results`).
    pub args: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
    pub kernels: Vec<KernelBench>,
}

impl BenchMatrix {
    pub fn ok(&self) -> bool {
        self.kernels.iter().all(|k| k.error.is_none())
    }
}

/// Checks the trailing command: `bench sync` and its own options, without
/// `--backend` or `--results` (the matrix sets those).
pub fn bench_args(command: &[String]) -> Result<Vec<String>, String> {
    let rest = match command {
        [b, s, rest @ ..] if b == "bench" && s == "sync" => rest,
        _ => {
            return Err(format!(
                "the command after `--` must be `bench sync [OPTIONS]`, not {:?}",
                command.join(" ")
            ));
        }
    };
    for a in rest {
        for own in ["--backend", "--results"] {
            if a == own || a.starts_with(&format!("{own}=")) {
                return Err(format!(
                    "{own} is the matrix's own option: give it before `--` (the backends \
                     of every kernel, where the matrix folder goes)"
                ));
            }
        }
    }
    Ok(rest.to_vec())
}

/// Every kernel's backends with `none` first: the connect latency is set
/// against it.
pub fn with_none(backends: &[String]) -> Vec<String> {
    let mut out = vec!["none".to_string()];
    out.extend(backends.iter().filter(|b| *b != "none").cloned());
    out
}

/// Runs `bench sync` on every kernel and writes the matrix folder.
pub fn run(
    per_kernel: &[(String, Vec<String>)],
    args: &[String],
    results: &Path,
    vm_timeout: Option<u64>,
) -> Result<(BenchMatrix, PathBuf)> {
    let started_at = jiff::Timestamp::now().to_string();
    let dir = crate::results::new_run_dir(results, "matrix-bench-sync")?;
    let mut kernels = Vec::new();
    let mut benches = Vec::new();
    for (kernel, backends) in per_kernel {
        if crate::stop::stopping() {
            break;
        }
        let base = dir.join("cells").join(kernel_folder(kernel));
        std::fs::create_dir_all(&base)?;
        tracing::info!(
            "svclab matrix: kernel {kernel}: bench sync on {}",
            backends.join(", ")
        );
        let mut entry = KernelBench {
            kernel: kernel.clone(),
            backends: backends.clone(),
            run_dir: None,
            emulated: kernel != HOST,
            release: None,
            exit: None,
            error: None,
        };
        match bench_on(kernel, backends, args, &base, vm_timeout) {
            Ok((r, run_dir, status)) => {
                entry.exit = (!status.success()).then(|| status.to_string());
                entry.run_dir = Some(
                    run_dir
                        .strip_prefix(&dir)
                        .unwrap_or(&run_dir)
                        .display()
                        .to_string(),
                );
                entry.emulated = r.host.emulated;
                entry.release = Some(r.host.kernel.clone());
                benches.push((kernel.clone(), r));
            }
            Err(e) => {
                tracing::warn!("svclab matrix: kernel {kernel}: {e:#}");
                entry.error = Some(format!("{e:#}"));
            }
        }
        kernels.push(entry);
    }
    let m = BenchMatrix {
        schema: SCHEMA.into(),
        args: args.to_vec(),
        started_at,
        finished_at: jiff::Timestamp::now().to_string(),
        kernels,
    };
    std::fs::write(
        dir.join("bench-matrix.json"),
        serde_json::to_vec_pretty(&m)?,
    )?;
    std::fs::write(dir.join("summary.md"), summary(&m, &benches))?;
    Ok((m, dir))
}

/// One `svclab bench sync` (this same binary) on `kernel`, writing its
/// folder under `base`; returns what it measured and where.
fn bench_on(
    kernel: &str,
    backends: &[String],
    args: &[String],
    base: &Path,
    timeout: Option<u64>,
) -> Result<(BenchResults, PathBuf, std::process::ExitStatus)> {
    let base = std::fs::canonicalize(base)?;
    let mut cmd = super::svclab_on(kernel, &base, timeout)?;
    cmd.args(["bench", "sync"])
        .args(args)
        .args(["--backend", &backends.join(","), "--results"])
        .arg(&base);
    tracing::debug!("svclab matrix: {cmd:?}");
    let status = cmd.status().context("starting svclab bench sync")?;
    let dirs = super::folders_holding(&base, "bench.json")?;
    let [run_dir] = dirs.as_slice() else {
        anyhow::bail!(
            "svclab bench sync on kernel {kernel} exited with {status} and left {} bench \
             folder(s) in {}",
            dirs.len(),
            base.display()
        );
    };
    if !status.success() {
        // bench sync exits 1 when a target is missed; its figures stand.
        tracing::info!("svclab matrix: kernel {kernel}: bench sync exited with {status}");
    }
    Ok((BenchResults::load(run_dir)?, run_dir.clone(), status))
}

const FULL: &str = "sync_full_proxy_rules_duration_seconds";
const PARTIAL: &str = "sync_partial_proxy_rules_duration_seconds";
const FLOOR_RATIO: &str = "floor_full_ratio";
const CONNECT: &str = "datapath_connect_latency_seconds";

/// The kernels side by side: per backend and size, each kernel's full sync
/// (seconds on the host only), its ratio to the floor, its ratio to the
/// first backend given besides `none` (same kernel, same size), and the
/// connect latency's ratio to `none`'s.
pub fn summary(m: &BenchMatrix, benches: &[(String, BenchResults)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# svclab matrix: bench sync {}\n", m.args.join(" "));
    for k in &m.kernels {
        let _ = writeln!(
            s,
            "- kernel `{}`{}: {}{}",
            k.kernel,
            k.release
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            match (&k.error, &k.run_dir, k.emulated) {
                (Some(e), _, _) => format!("no figures: {e}"),
                (None, Some(d), true) => {
                    format!("`{d}`, under software emulation: its times are not real ones")
                }
                (None, Some(d), false) => format!("`{d}`"),
                (None, None, _) => "did not run".into(),
            },
            k.exit
                .as_ref()
                .map(|e| format!(
                    " (bench sync {e}: a missed target, or its VM's timeout, \
                     which leaves later cases out)"
                ))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        s,
        "\nEvery ratio is within one kernel's run (emulated figures are set only against \
         figures of the same emulated run). `vs X`: full sync over backend X's, same kernel \
         and size. `floor`: over the bare tool's on the same input. `connect / none`: connect \
         p50 over `none`'s.\n"
    );
    let mut backends: Vec<String> = Vec::new();
    let mut sizes: Vec<u64> = Vec::new();
    for (_, r) in benches {
        for b in r.backends() {
            if b != "none" && !backends.contains(&b) {
                backends.push(b);
            }
        }
        sizes.extend(r.sizes());
    }
    sizes.sort_unstable();
    sizes.dedup();
    let Some(reference) = backends.first().cloned() else {
        s.push_str("No figures.\n");
        return s;
    };
    let mut head = String::from("| backend | Services |");
    let mut rule = String::from("|---|---|");
    for (k, r) in benches {
        let emulated = if r.host.emulated { ", emulated" } else { "" };
        let _ = write!(
            head,
            " {k}{emulated}: full sync | vs {reference} | floor | partial p50 vs {reference} | connect / none |"
        );
        rule.push_str("---|---|---|---|---|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    for b in &backends {
        for &n in &sizes {
            let _ = write!(s, "| {b} | {n} |");
            for (_, r) in benches {
                let full = r.figure(b, n, FULL, "p50");
                let shown = match full {
                    Some(v) if !r.host.emulated => format!("{v:.2} s"),
                    Some(_) => "(emulated)".into(),
                    None => match r.case(b, n) {
                        Some(c) => c.status.to_string(),
                        None => "-".into(),
                    },
                };
                let floor = r
                    .figure(b, n, FLOOR_RATIO, "value")
                    .map(|v| format!("{v:.2}x"))
                    .unwrap_or_else(|| "-".into());
                let _ = write!(
                    s,
                    " {shown} | {} | {floor} | {} | {} |",
                    ratio(full, r.figure(&reference, n, FULL, "p50")),
                    ratio(
                        r.figure(b, n, PARTIAL, "p50"),
                        r.figure(&reference, n, PARTIAL, "p50")
                    ),
                    ratio(
                        r.figure(b, n, CONNECT, "p50"),
                        r.figure("none", n, CONNECT, "p50")
                    ),
                );
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(emulated: bool, figs: &[(&str, u64, &str, f64)]) -> BenchResults {
        let mut r = BenchResults::new("sync", "r", serde_json::json!({}));
        r.host.emulated = emulated;
        for &(b, n, metric, v) in figs {
            r.cases.push(crate::bench::schema::Case {
                backend: b.into(),
                size: n,
                status: crate::bench::schema::Status::Ok,
                reason: None,
                detail: serde_json::Value::Null,
            });
            let stat = if metric == FLOOR_RATIO {
                "value"
            } else {
                "p50"
            };
            r.figures.push(crate::bench::schema::Figure {
                backend: b.into(),
                size: n,
                metric: metric.into(),
                stat: stat.into(),
                value: v,
                unit: "seconds".into(),
                better: crate::bench::schema::Better::Lower,
            });
        }
        r
    }

    fn matrix(kernels: &[(&str, bool)]) -> BenchMatrix {
        BenchMatrix {
            schema: SCHEMA.into(),
            args: vec!["--services".into(), "1000".into()],
            started_at: String::new(),
            finished_at: String::new(),
            kernels: kernels
                .iter()
                .map(|&(k, emulated)| KernelBench {
                    kernel: k.into(),
                    backends: vec![],
                    run_dir: Some(format!("cells/kernel-{k}/x")),
                    emulated,
                    release: None,
                    exit: None,
                    error: None,
                })
                .collect(),
        }
    }

    #[test]
    fn kernels_are_set_side_by_side_as_ratios_within_each_run() {
        let host = bench(
            false,
            &[
                ("none", 1000, CONNECT, 0.0001),
                ("iptables", 1000, FULL, 2.0),
                ("iptables", 1000, CONNECT, 0.0002),
                ("nftables", 1000, FULL, 1.0),
                ("nftables", 1000, FLOOR_RATIO, 1.1),
                ("nftables", 1000, CONNECT, 0.0001),
            ],
        );
        let vm = bench(
            true,
            &[
                ("none", 1000, CONNECT, 0.001),
                ("iptables", 1000, FULL, 30.0),
                ("nftables", 1000, FULL, 60.0),
            ],
        );
        let m = matrix(&[("host", false), ("6.1", true)]);
        let s = summary(&m, &[("host".into(), host), ("6.1".into(), vm)]);
        let row = |b: &str| {
            s.lines()
                .find(|l| l.starts_with(&format!("| {b} | 1000 |")))
                .unwrap_or_else(|| panic!("no {b} row in\n{s}"))
                .to_string()
        };
        // Host: seconds shown; nftables half of iptables, at its floor
        // 1.1x, as fast as none to connect.
        assert_eq!(
            row("nftables"),
            "| nftables | 1000 | 1.00 s | 0.50x | 1.10x | - | 1.00x | (emulated) | 2.00x | - | - | - |"
        );
        assert_eq!(
            row("iptables"),
            "| iptables | 1000 | 2.00 s | 1.00x | - | - | 2.00x | (emulated) | 1.00x | - | - | - |"
        );
        assert!(!s.contains("30.00 s") && !s.contains("60.00 s"), "{s}");
        assert!(s.contains("6.1, emulated: full sync"), "{s}");
        assert!(!s.contains("| none |"), "{s}");
    }

    #[test]
    fn the_command_after_the_dashes_is_bench_sync_without_the_matrix_options() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            bench_args(&v("bench sync --services 1000,5000")).unwrap(),
            v("--services 1000,5000")
        );
        assert!(
            bench_args(&v("run x.yaml"))
                .unwrap_err()
                .contains("bench sync")
        );
        assert!(
            bench_args(&v("bench sync --backend iptables"))
                .unwrap_err()
                .contains("--backend is the matrix's own option")
        );
        assert!(bench_args(&v("bench sync --results=/tmp")).is_err());
        assert_eq!(
            with_none(&v("iptables none nftables")),
            v("none iptables nftables")
        );
    }
}
