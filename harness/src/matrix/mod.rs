//! `svclab matrix`: one scenario's checks over kernels × backends, written
//! as one folder, `results/<UTC>-matrix-<scenario>/`, with `matrix.json`
//! (schema in `results/README.md`), `summary.md`, `report.html` and
//! `junit.xml` whose columns are kernels.
//!
//! The plan is the list of cells, kernel-major in the order given
//! (`--kernel A,B --backend x,y`: A/x, A/y, B/x, B/y). `--shard I/N` runs
//! the I-th of N contiguous slices of it, so a shard boots as few VMs as it
//! can; `svclab merge` joins shard folders back into one matrix.

pub mod bench;
pub mod exec;
pub mod merge;
pub mod report;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::results::{BackendRun, HostFacts};

pub const SCHEMA: &str = "svclab.dev/matrix/v1";

/// The kernel name of the cells that run on this machine's own kernel.
pub const HOST: &str = "host";

/// Which scenario, by content: two files with one name but other content
/// are different scenarios.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioRef {
    pub name: String,
    pub file: String,
    /// SHA-256 of the scenario file's bytes, hex.
    pub sha256: String,
}

impl ScenarioRef {
    pub fn of(name: &str, file: &Path) -> std::io::Result<ScenarioRef> {
        let bytes = std::fs::read(file)?;
        Ok(ScenarioRef {
            name: name.to_string(),
            file: file.display().to_string(),
            sha256: hex(&Sha256::digest(&bytes)),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `--check`/`--skip-check` as given, and the checks they select.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckFilter {
    pub check: Option<String>,
    pub skip_check: Option<String>,
    /// The selected checks, in run order.
    pub checks: Vec<String>,
}

impl CheckFilter {
    /// The selection as one `--check` expression (every name exactly).
    pub fn as_regex(&self) -> String {
        format!("^({})$", self.checks.join("|"))
    }
}

/// One cell of the plan: a backend on a kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellId {
    /// `host`, or what `svclab vm --kernel` was given.
    pub kernel: String,
    pub backend: String,
}

impl std::fmt::Display for CellId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kernel, self.backend)
    }
}

/// Which slice of the plan: the `index`-th (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s:?}: expected I/N, e.g. 1/3"))?;
        let parse = |v: &str, what: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("--shard {s:?}: {what} {v:?} is not a number"))
        };
        let (index, count) = (parse(i, "I")?, parse(n, "N")?);
        if count == 0 || index == 0 || index > count {
            return Err(format!("--shard {s:?}: needs 1 <= I <= N"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Every cell of a matrix, and what each runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub scenario: ScenarioRef,
    pub checks: CheckFilter,
    /// Kernel-major, in the order given.
    pub cells: Vec<CellId>,
}

impl Plan {
    /// `backends(kernel)` gives each kernel's backends (where `all` means
    /// what that kernel can run).
    pub fn new(
        scenario: ScenarioRef,
        checks: CheckFilter,
        kernels: &[String],
        backends: impl Fn(&str) -> Vec<String>,
    ) -> Plan {
        let mut cells: Vec<CellId> = Vec::new();
        for k in kernels {
            for b in backends(k) {
                let id = CellId {
                    kernel: k.clone(),
                    backend: b,
                };
                if !cells.contains(&id) {
                    cells.push(id);
                }
            }
        }
        Plan {
            scenario,
            checks,
            cells,
        }
    }

    /// The shard's cells: the `index`-th of `count` contiguous slices,
    /// sizes differing by one at most (a shard may be empty when there are
    /// fewer cells than shards).
    pub fn shard(&self, shard: Option<Shard>) -> &[CellId] {
        let Some(s) = shard else {
            return &self.cells;
        };
        let n = self.cells.len();
        &self.cells[(s.index - 1) * n / s.count..s.index * n / s.count]
    }

    /// The kernels of `cells`, each with its backends, in order.
    pub fn by_kernel(cells: &[CellId]) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for c in cells {
            match out.last_mut() {
                Some((k, bs)) if *k == c.kernel => bs.push(c.backend.clone()),
                _ => out.push((c.kernel.clone(), vec![c.backend.clone()])),
            }
        }
        out
    }

    /// `--plan -o json`: the cells one invocation runs.
    pub fn json(&self, shard: Option<Shard>) -> serde_json::Value {
        let cells: Vec<serde_json::Value> = self
            .shard(shard)
            .iter()
            .map(|c| {
                serde_json::json!({
                    "kernel": c.kernel,
                    "backend": c.backend,
                    "scenario": self.scenario.file,
                    "check": self.checks.check,
                    "skipCheck": self.checks.skip_check,
                })
            })
            .collect();
        serde_json::json!({
            "schema": SCHEMA,
            "scenario": self.scenario,
            "checks": self.checks.checks,
            "shard": shard,
            "planCells": self.cells.len(),
            "cells": cells,
        })
    }
}

/// One cell's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    pub kernel: String,
    pub backend: String,
    /// The run folder holding this cell's results.json and logs, relative
    /// to the matrix folder (one run folder holds a kernel's cells).
    pub run_dir: String,
    /// The machine the cell ran on (inside the VM for a VM kernel).
    pub host: HostFacts,
    pub result: BackendRun,
}

impl Cell {
    pub fn id(&self) -> CellId {
        CellId {
            kernel: self.kernel.clone(),
            backend: self.backend.clone(),
        }
    }

    pub fn failed(&self) -> bool {
        self.result.count(crate::checks::Verdict::Fail) > 0
    }
}

/// A matrix folder's `matrix.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Matrix {
    pub schema: String,
    pub plan: Plan,
    /// The slice this folder ran; none for a whole matrix or a merge.
    pub shard: Option<Shard>,
    /// The folders a merge joined, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
    /// In plan order.
    pub cells: Vec<Cell>,
    /// Cells of the plan (of the shard's slice) with no outcome here.
    pub missing: Vec<CellId>,
}

impl Matrix {
    /// Orders the cells as the plan does and names the plan's cells (of
    /// `expected`) that have none.
    pub fn settle(&mut self, expected: &[CellId]) {
        let pos = |c: &Cell| {
            self.plan
                .cells
                .iter()
                .position(|p| *p == c.id())
                .unwrap_or(usize::MAX)
        };
        let mut cells = std::mem::take(&mut self.cells);
        cells.sort_by_key(|c| pos(c));
        self.cells = cells;
        self.missing = expected
            .iter()
            .filter(|id| !self.cells.iter().any(|c| c.id() == **id))
            .cloned()
            .collect();
    }

    /// Exit code 1 when a check failed or a cell is missing.
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && !self.cells.iter().any(Cell::failed)
    }

    /// The kernels with a cell or a missing cell, in plan order.
    pub fn kernels(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.plan.cells {
            let here = self.cells.iter().any(|x| x.kernel == c.kernel)
                || self.missing.iter().any(|x| x.kernel == c.kernel);
            if here && !out.contains(&c.kernel) {
                out.push(c.kernel.clone());
            }
        }
        out
    }
}

/// A kernel's name as one folder name under `cells/`.
pub fn kernel_folder(kernel: &str) -> String {
    format!(
        "kernel-{}",
        crate::results::folder_name(kernel.trim_start_matches('/'))
    )
}

/// The folders directly under `base` that hold a file named `file`: the
/// run (or bench) folders a cell's `svclab` command left there.
pub fn folders_holding(base: &Path, file: &str) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(base)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(file).is_file())
        .collect())
}

/// This same binary, to run a cell's command on `kernel`: directly for
/// `host`, else under `svclab vm --kernel` (results shared in `base`);
/// the caller appends the command.
pub fn svclab_on(
    kernel: &str,
    base: &Path,
    timeout: Option<u64>,
) -> std::io::Result<std::process::Command> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    if kernel != HOST {
        cmd.args(["vm", "--kernel", kernel, "--results"])
            .arg(base)
            .args(timeout.map(|t| format!("--timeout={t}")))
            .arg("--");
    }
    Ok(cmd)
}

/// Reads `dir/matrix.json`.
pub fn load(dir: &Path) -> anyhow::Result<Matrix> {
    use anyhow::Context;
    let path = dir.join("matrix.json");
    let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // The schema first, so an old or foreign file is named as such rather
    // than as a parse error deep inside.
    let value: serde_json::Value =
        serde_json::from_slice(&raw).with_context(|| format!("{} is not JSON", path.display()))?;
    let schema = value.get("schema").and_then(|s| s.as_str()).unwrap_or("");
    if schema != SCHEMA {
        anyhow::bail!(
            "{}: field `schema` is {schema:?}, this svclab reads {SCHEMA:?}",
            path.display()
        );
    }
    let m: Matrix = serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("{}: field `{}`: {}", path.display(), e.path(), e.inner()))?;
    Ok(m)
}

/// Writes every file of a matrix folder.
pub fn write_all(dir: &Path, m: &Matrix) -> anyhow::Result<()> {
    std::fs::write(dir.join("matrix.json"), serde_json::to_vec_pretty(m)?)?;
    std::fs::write(dir.join("summary.md"), report::markdown(m))?;
    std::fs::write(dir.join("report.html"), report::html(m))?;
    std::fs::write(dir.join("junit.xml"), report::junit(m)?)?;
    Ok(())
}

/// `results/<UTC>-matrix-<scenario>[-shard-IofN]`, created.
pub fn new_dir(base: &Path, scenario: &str, shard: Option<Shard>) -> std::io::Result<PathBuf> {
    let name = match shard {
        Some(s) => format!("matrix-{scenario}-shard-{}of{}", s.index, s.count),
        None => format!("matrix-{scenario}"),
    };
    crate::results::new_run_dir(base, &name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn plan(kernels: &[&str], backends: &[&str]) -> Plan {
        Plan::new(
            ScenarioRef {
                name: "smoke".into(),
                file: "scenarios/smoke.yaml".into(),
                sha256: "ab".repeat(32),
            },
            CheckFilter {
                check: None,
                skip_check: None,
                checks: vec!["clusterip-tcp".into(), "balance-uniform".into()],
            },
            &kernels.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            |_| backends.iter().map(|b| b.to_string()).collect(),
        )
    }

    #[test]
    fn the_plan_is_kernel_major_in_the_order_given() {
        let p = plan(&["6.1", "host"], &["nftables", "iptables"]);
        let ids: Vec<String> = p.cells.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            ids,
            [
                "6.1/nftables",
                "6.1/iptables",
                "host/nftables",
                "host/iptables"
            ]
        );
    }

    #[test]
    fn shards_partition_the_plan_in_contiguous_slices() {
        for (kernels, backends) in [
            (&["host"][..], &["iptables", "nftables"][..]),
            (&["6.1", "6.12", "host"][..], &["a", "b", "c", "d", "e"][..]),
            (&["6.1"][..], &["a"][..]),
        ] {
            let p = plan(kernels, backends);
            for n in 1..=7 {
                let mut joined: Vec<CellId> = Vec::new();
                let mut sizes = Vec::new();
                for i in 1..=n {
                    let s = p.shard(Some(Shard { index: i, count: n }));
                    sizes.push(s.len());
                    joined.extend_from_slice(s);
                }
                // Every cell exactly once, in plan order.
                assert_eq!(joined, p.cells, "{n} shards");
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{n} shards: sizes {sizes:?}");
                // Contiguous kernel-major slices: a shard boots each of its
                // kernels once, and at most ceil(kernels / n) + 1 of them.
                for i in 1..=n {
                    let s = p.shard(Some(Shard { index: i, count: n }));
                    let groups = Plan::by_kernel(s);
                    let mut seen: Vec<&String> = groups.iter().map(|(k, _)| k).collect();
                    seen.dedup();
                    assert_eq!(seen.len(), groups.len(), "a kernel split within a shard");
                    assert!(groups.len() <= kernels.len().div_ceil(n) + 1);
                }
            }
            // Deterministic: the same plan, the same slices.
            let again = plan(kernels, backends);
            assert_eq!(
                again.shard(Some(Shard { index: 1, count: 2 })),
                p.shard(Some(Shard { index: 1, count: 2 }))
            );
        }
        assert_eq!(
            plan(&["host"], &["iptables", "nftables"])
                .shard(Some(Shard { index: 2, count: 2 }))
                .iter()
                .map(|c| c.backend.as_str())
                .collect::<Vec<_>>(),
            ["nftables"]
        );
    }

    #[test]
    fn shard_arguments_are_checked() {
        assert_eq!(
            "2/3".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 3 }
        );
        for bad in ["0/3", "4/3", "1/0", "3", "a/b", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn plan_json_names_each_cell() {
        let p = plan(&["host"], &["iptables", "nftables"]);
        let j = p.json(Some(Shard { index: 1, count: 2 }));
        assert_eq!(j["planCells"], 2);
        assert_eq!(j["cells"].as_array().unwrap().len(), 1);
        assert_eq!(j["cells"][0]["kernel"], "host");
        assert_eq!(j["cells"][0]["backend"], "iptables");
        assert_eq!(j["cells"][0]["scenario"], "scenarios/smoke.yaml");
        assert_eq!(j["shard"]["index"], 1);
        assert_eq!(
            p.checks.as_regex(),
            "^(clusterip-tcp|balance-uniform)$",
            "what a VM's run is given"
        );
    }

    #[test]
    fn kernel_folders_are_one_component() {
        assert_eq!(
            kernel_folder("/boot/vmlinuz-6.1.0-57-amd64"),
            "kernel-boot_vmlinuz-6.1.0-57-amd64"
        );
        assert_eq!(kernel_folder("host"), "kernel-host");
        assert_eq!(kernel_folder("6.12"), "kernel-6.12");
    }
}
