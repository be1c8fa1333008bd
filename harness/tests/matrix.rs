//! `svclab matrix` on the host, whole and as two shards joined by `svclab
//! merge`: the merged matrix has the same cells, verdicts and evidence as
//! the whole one.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The one matrix folder under `base`.
fn matrix_dir(base: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(base)
        .expect("results folder")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("matrix.json").is_file())
        .collect();
    assert_eq!(dirs.len(), 1, "matrix folders under {}", base.display());
    dirs[0].clone()
}

fn load(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("matrix.json")).expect("matrix.json"))
        .expect("parse matrix.json")
}

/// What must not depend on how the matrix was cut: the plan, each cell's
/// verdicts with their evidence counts, the missing cells. Times, run ids
/// and paths go.
fn normalised(m: &Value) -> Value {
    let cells: Vec<Value> = m["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| {
            let checks: Vec<Value> = c["result"]["checks"]
                .as_array()
                .expect("checks")
                .iter()
                .map(|k| {
                    json!({
                        "name": k["name"],
                        "verdict": k["verdict"],
                        "evidence": k["evidence"].as_array().map_or(0, Vec::len),
                        "balance": k["balance"].as_array().map_or(0, Vec::len),
                    })
                })
                .collect();
            json!({
                "kernel": c["kernel"],
                "backend": c["backend"],
                "hostKernel": c["host"]["kernel"],
                "unavailable": c["result"]["unavailable"],
                "checks": checks,
            })
        })
        .collect();
    json!({
        "schema": m["schema"],
        "plan": m["plan"],
        "cells": cells,
        "missing": m["missing"],
    })
}

fn matrix(name: &str, extra: &[&str]) -> (std::process::Output, PathBuf) {
    let base = common::results_dir(name);
    let mut args = vec![
        "matrix",
        "scenarios/smoke.yaml",
        "--kernel",
        "host",
        "--backend",
        "iptables,nftables",
        "--results",
        base.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = common::run(&args);
    (out, base)
}

/// `svclab merge DIRS... --results <a new folder>`.
fn merge(name: &str, dirs: &[&PathBuf]) -> (std::process::Output, PathBuf) {
    let base = common::results_dir(name);
    let mut args: Vec<&str> = vec!["merge"];
    args.extend(dirs.iter().map(|d| d.to_str().unwrap()));
    args.extend(["--results", base.to_str().unwrap()]);
    (common::run(&args), base)
}

#[test]
fn shards_merge_into_the_whole_matrix() {
    require_root!();
    let _lab = common::lab_lock();
    let started = std::time::Instant::now();

    let (out, base) = matrix("matrix-whole", &[]);
    let whole = matrix_dir(&base);
    assert!(out.status.success(), "{}", common::text(&out));
    let whole_json = load(&whole);
    assert!(whole_json["shard"].is_null());
    // Each cell's run folder is in the matrix folder.
    for c in whole_json["cells"].as_array().unwrap() {
        let run = whole.join(c["runDir"].as_str().unwrap());
        assert!(run.join("results.json").is_file(), "{}", run.display());
    }
    for f in ["summary.md", "report.html", "junit.xml"] {
        assert!(whole.join(f).is_file(), "{f}");
    }
    let md = std::fs::read_to_string(whole.join("summary.md")).unwrap();
    assert!(md.contains("| backend | host ("), "{md}");

    let mut shards = Vec::new();
    for i in 1..=2 {
        let shard = format!("{i}/2");
        let (out, base) = matrix(&format!("matrix-shard-{i}"), &["--shard", &shard]);
        assert!(out.status.success(), "{}", common::text(&out));
        let dir = matrix_dir(&base);
        let m = load(&dir);
        assert_eq!(m["shard"], json!({"index": i, "count": 2}));
        assert_eq!(m["cells"].as_array().unwrap().len(), 1, "one cell a shard");
        assert!(
            dir.file_name()
                .unwrap()
                .to_string_lossy()
                .ends_with(&format!("shard-{i}of2"))
        );
        shards.push(dir);
    }

    // A shard alone is half the plan: merge names the other half, writes
    // the report with it marked, and exits 1.
    let (out, alone) = merge("matrix-alone", &[&shards[0]]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("missing: host/nftables"),
        "{}",
        common::text(&out)
    );
    let m = load(&matrix_dir(&alone));
    assert_eq!(
        m["missing"],
        json!([{"kernel": "host", "backend": "nftables"}])
    );

    // One shard twice: a duplicated cell, refused.
    let (out, dup) = merge("matrix-dup", &[&shards[0], &shards[0]]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cell host/iptables is in both"),
        "{}",
        common::text(&out)
    );

    let (out, merged_base) = merge("matrix-merged", &[&shards[0], &shards[1]]);
    assert!(out.status.success(), "{}", common::text(&out));
    let merged = matrix_dir(&merged_base);
    let merged_json = load(&merged);
    assert_eq!(normalised(&merged_json), normalised(&whole_json));
    assert_eq!(merged_json["mergedFrom"].as_array().unwrap().len(), 2);
    for c in merged_json["cells"].as_array().unwrap() {
        let run = merged.join(c["runDir"].as_str().unwrap());
        assert!(run.join("results.json").is_file(), "{}", run.display());
    }
    eprintln!(
        "matrix: whole, two shards and three merges in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for d in [base, alone, dup, merged_base] {
        let _ = std::fs::remove_dir_all(d);
    }
    for s in shards {
        let _ = std::fs::remove_dir_all(s.parent().unwrap());
    }
}

/// `svclab matrix -- bench sync`: one bench per kernel in the matrix
/// folder, `none` added, and the summary's rows ratios within the run.
#[test]
fn a_bench_matrix_sets_kernels_side_by_side() {
    require_root!();
    let _lab = common::lab_lock();
    let base = common::results_dir("matrix-bench");
    let out = common::run(&[
        "matrix",
        "--kernel",
        "host",
        "--backend",
        "iptables,nftables-flat",
        "--results",
        base.to_str().unwrap(),
        "--",
        "bench",
        "sync",
        "--services",
        "20",
        "--partials",
        "1",
        "--connects",
        "20",
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let dirs: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("bench-matrix.json").is_file())
        .collect();
    assert_eq!(dirs.len(), 1, "{}", common::text(&out));
    let m: Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("bench-matrix.json")).unwrap()).unwrap();
    let k = &m["kernels"][0];
    assert_eq!(k["kernel"], "host");
    assert_eq!(k["backends"], json!(["none", "iptables", "nftables-flat"]));
    assert_eq!(k["emulated"], false);
    assert!(k["error"].is_null(), "{k}");
    let bench = dirs[0].join(k["runDir"].as_str().unwrap());
    let b: Value =
        serde_json::from_slice(&std::fs::read(bench.join("bench.json")).unwrap()).unwrap();
    let backends: Vec<&str> = b["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["backend"].as_str().unwrap())
        .collect();
    assert_eq!(backends, ["none", "iptables", "nftables-flat"]);
    let md = std::fs::read_to_string(dirs[0].join("summary.md")).unwrap();
    let row = md
        .lines()
        .find(|l| l.starts_with("| nftables-flat | 20 |"))
        .unwrap_or_else(|| panic!("no nftables-flat row:\n{md}"));
    // Seconds, ratio to iptables, to the floor, partial, connect over none:
    // all measured.
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(cells[3].ends_with(" s"), "{row}");
    for c in &cells[4..8] {
        assert!(c.ends_with('x'), "{row}");
    }
    assert!(md.contains("| iptables | 20 | "), "{md}");
    let _ = std::fs::remove_dir_all(base);
}
