//! `svclab merge DIR...`: joins shard folders (or whole matrix folders) of
//! one plan into one matrix folder and one report. It refuses folders that
//! are not parts of one matrix (another schema, scenario content, check
//! selection or plan) and cells that two folders both ran; cells of the
//! plan that no folder ran are named and marked missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{CellId, Matrix, SCHEMA};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("svclab merge: nothing to merge (name at least one matrix folder)")]
    Empty,
    #[error("svclab merge: {dir}: {why}")]
    Read { dir: PathBuf, why: String },
    #[error(
        "svclab merge: {dir}/matrix.json: field `{field}` is {theirs}, but {first}/matrix.json has \
         {ours}: these folders are not parts of one matrix"
    )]
    Mismatch {
        dir: PathBuf,
        first: PathBuf,
        field: &'static str,
        ours: String,
        theirs: String,
    },
    #[error("svclab merge: cell {cell} is in both {a}/matrix.json and {b}/matrix.json")]
    Duplicate {
        cell: CellId,
        a: PathBuf,
        b: PathBuf,
    },
}

/// The matrix the folders make together; its `missing` names the plan's
/// cells none of them has.
pub fn join(parts: &[(PathBuf, Matrix)]) -> Result<Matrix, MergeError> {
    let Some((first_dir, first)) = parts.first() else {
        return Err(MergeError::Empty);
    };
    for (dir, m) in parts {
        let mismatch = |field: &'static str, ours: String, theirs: String| MergeError::Mismatch {
            dir: dir.clone(),
            first: first_dir.clone(),
            field,
            ours,
            theirs,
        };
        if m.schema != SCHEMA {
            return Err(mismatch("schema", short(&SCHEMA), short(&m.schema)));
        }
        if m.plan.scenario.sha256 != first.plan.scenario.sha256 {
            return Err(mismatch(
                "plan.scenario.sha256",
                format!(
                    "{} ({})",
                    first.plan.scenario.sha256, first.plan.scenario.file
                ),
                format!("{} ({})", m.plan.scenario.sha256, m.plan.scenario.file),
            ));
        }
        if m.plan.checks != first.plan.checks {
            return Err(mismatch(
                "plan.checks",
                short(&first.plan.checks),
                short(&m.plan.checks),
            ));
        }
        if m.plan.cells != first.plan.cells {
            return Err(mismatch(
                "plan.cells",
                super::exec::names(&first.plan.cells),
                super::exec::names(&m.plan.cells),
            ));
        }
        if let (Some(a), Some(b)) = (first.shard, m.shard)
            && a.count != b.count
        {
            return Err(mismatch("shard.count", a.to_string(), b.to_string()));
        }
    }
    let mut seen: BTreeMap<CellId, &Path> = BTreeMap::new();
    let mut cells = Vec::new();
    for (dir, m) in parts {
        for c in &m.cells {
            if let Some(a) = seen.insert(c.id(), dir) {
                return Err(MergeError::Duplicate {
                    cell: c.id(),
                    a: a.to_path_buf(),
                    b: dir.clone(),
                });
            }
            cells.push(c.clone());
        }
    }
    let mut m = Matrix {
        schema: SCHEMA.into(),
        plan: first.plan.clone(),
        shard: None,
        merged_from: parts.iter().map(|(d, _)| d.display().to_string()).collect(),
        started_at: parts
            .iter()
            .map(|(_, m)| m.started_at.clone())
            .min()
            .unwrap_or_default(),
        finished_at: parts
            .iter()
            .map(|(_, m)| m.finished_at.clone())
            .max()
            .unwrap_or_default(),
        cells,
        missing: Vec::new(),
    };
    let plan = m.plan.cells.clone();
    m.settle(&plan);
    Ok(m)
}

/// A value as short JSON, for error messages.
fn short<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Loads the folders, joins them, and writes the merged folder under
/// `results` with every cell's run folder copied in.
pub fn run(dirs: &[PathBuf], results: &Path) -> anyhow::Result<(Matrix, PathBuf)> {
    let mut parts = Vec::new();
    for d in dirs {
        let m = super::load(d).map_err(|e| MergeError::Read {
            dir: d.clone(),
            why: format!("{e:#}"),
        })?;
        parts.push((d.clone(), m));
    }
    let mut m = join(&parts)?;
    let out = super::new_dir(results, &m.plan.scenario.name, None)?;
    // Each part's run folders, copied under the same relative path (or a
    // numbered one when two parts used one name).
    let mut moved: BTreeMap<(PathBuf, String), String> = BTreeMap::new();
    for (dir, part) in &parts {
        let mut runs: Vec<&String> = part.cells.iter().map(|c| &c.run_dir).collect();
        runs.dedup();
        for rel in runs {
            if moved.contains_key(&(dir.clone(), rel.clone())) {
                continue;
            }
            let mut dest = rel.clone();
            let mut n = 1;
            while out.join(&dest).exists() {
                n += 1;
                dest = format!("{rel}-{n}");
            }
            let src = dir.join(rel);
            if src.is_dir() {
                copy_dir(&src, &out.join(&dest))?;
            }
            moved.insert((dir.clone(), rel.clone()), dest);
        }
    }
    // The merged cells, in plan order, each with its own part's folder.
    let mut owners: BTreeMap<CellId, &PathBuf> = BTreeMap::new();
    for (dir, part) in &parts {
        for c in &part.cells {
            owners.insert(c.id(), dir);
        }
    }
    for c in &mut m.cells {
        if let Some(dir) = owners.get(&c.id())
            && let Some(dest) = moved.get(&((*dir).clone(), c.run_dir.clone()))
        {
            c.run_dir = dest.clone();
        }
    }
    super::write_all(&out, &m)?;
    Ok((m, out))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let ty = e.file_type()?;
        let dest = to.join(e.file_name());
        if ty.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else if ty.is_file() {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::plan;
    use super::super::{Cell, Shard};
    use super::*;

    /// A shard folder's matrix of `plan(["host", "6.1"], ["iptables",
    /// "nftables"])`, with the given cells run (each from
    /// `RunResults::sample()`'s backend).
    fn part(shard: Option<Shard>, cells: &[(&str, &str)]) -> Matrix {
        let r = crate::results::tests::sample();
        let cells = cells
            .iter()
            .map(|(k, b)| {
                let mut result = r.backends[0].clone();
                result.backend = b.to_string();
                Cell {
                    kernel: k.to_string(),
                    backend: b.to_string(),
                    run_dir: format!("cells/kernel-{k}/20261123T000000Z-smoke"),
                    host: r.host.clone(),
                    result,
                }
            })
            .collect();
        let mut m = Matrix {
            schema: SCHEMA.into(),
            plan: plan(&["host", "6.1"], &["iptables", "nftables"]),
            shard,
            merged_from: Vec::new(),
            started_at: "2026-11-23T00:00:00Z".into(),
            finished_at: "2026-11-23T00:00:30Z".into(),
            cells,
            missing: Vec::new(),
        };
        let expected = m.plan.shard(shard).to_vec();
        m.settle(&expected);
        m
    }

    fn shards() -> Vec<(PathBuf, Matrix)> {
        let s = |i| Some(Shard { index: i, count: 2 });
        vec![
            (
                "a".into(),
                part(s(1), &[("host", "iptables"), ("host", "nftables")]),
            ),
            (
                "b".into(),
                part(s(2), &[("6.1", "nftables"), ("6.1", "iptables")]),
            ),
        ]
    }

    #[test]
    fn shards_join_into_the_plan() {
        let m = join(&shards()).unwrap();
        assert!(m.missing.is_empty());
        assert_eq!(m.shard, None);
        assert_eq!(m.merged_from, ["a", "b"]);
        // Plan order, not the order the parts listed them.
        let ids: Vec<String> = m.cells.iter().map(|c| c.id().to_string()).collect();
        assert_eq!(
            ids,
            [
                "host/iptables",
                "host/nftables",
                "6.1/iptables",
                "6.1/nftables"
            ]
        );
        // sample() has a failed check: the merged matrix fails.
        assert!(!m.ok());
    }

    #[test]
    fn missing_cells_are_named() {
        let mut parts = shards();
        parts.pop();
        let m = join(&parts).unwrap();
        let missing: Vec<String> = m.missing.iter().map(|c| c.to_string()).collect();
        assert_eq!(missing, ["6.1/iptables", "6.1/nftables"]);
        let md = super::super::report::markdown(&m);
        assert!(md.contains("MISSING"), "{md}");
        assert!(md.contains("6.1/iptables"), "{md}");
        let xml = super::super::report::junit(&m).unwrap();
        assert!(xml.contains("missing"), "{xml}");
    }

    #[test]
    fn a_different_scenario_is_refused_by_content() {
        let mut parts = shards();
        // Same name and file, other content.
        parts[1].1.plan.scenario.sha256 = "cd".repeat(32);
        let e = join(&parts).unwrap_err().to_string();
        assert!(e.contains("b/matrix.json"), "{e}");
        assert!(e.contains("plan.scenario.sha256"), "{e}");
        assert!(e.contains("a/matrix.json"), "{e}");
    }

    #[test]
    fn another_schema_is_refused() {
        let mut parts = shards();
        parts[1].1.schema = "svclab.dev/matrix/v0".into();
        let e = join(&parts).unwrap_err().to_string();
        assert!(e.contains("b/matrix.json") && e.contains("`schema`"), "{e}");
        assert!(e.contains("svclab.dev/matrix/v0"), "{e}");
        // And on disk, before anything is parsed further.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("matrix.json"),
            r#"{"schema": "svclab.dev/results/v1"}"#,
        )
        .unwrap();
        let e = run(&[dir.path().to_path_buf()], dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `schema`"), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
    }

    #[test]
    fn other_checks_plans_or_shard_counts_are_refused() {
        let mut parts = shards();
        parts[1].1.plan.checks.checks.pop();
        let e = join(&parts).unwrap_err().to_string();
        assert!(e.contains("`plan.checks`"), "{e}");

        let mut parts = shards();
        parts[1].1.plan.cells.pop();
        let e = join(&parts).unwrap_err().to_string();
        assert!(e.contains("`plan.cells`"), "{e}");

        let mut parts = shards();
        parts[1].1.shard = Some(Shard { index: 2, count: 3 });
        let e = join(&parts).unwrap_err().to_string();
        assert!(e.contains("`shard.count`"), "{e}");
    }

    #[test]
    fn a_cell_in_two_folders_is_refused() {
        let mut parts = shards();
        let dup = parts[0].1.cells[0].clone();
        parts[1].1.cells.push(dup);
        let e = join(&parts).unwrap_err().to_string();
        assert!(e.contains("host/iptables"), "{e}");
        assert!(
            e.contains("a/matrix.json") && e.contains("b/matrix.json"),
            "{e}"
        );
        assert!(matches!(join(&[]), Err(MergeError::Empty)));
    }

    #[test]
    fn merge_writes_one_folder_with_every_run_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        for (name, m) in shards() {
            let d = tmp.path().join(name);
            let run = d.join(&m.cells[0].run_dir);
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(run.join("results.json"), "{}").unwrap();
            super::super::write_all(&d, &m).unwrap();
            dirs.push(d);
        }
        let out_base = tmp.path().join("out");
        let (m, out) = run(&dirs, &out_base).unwrap();
        let back = super::super::load(&out).unwrap();
        assert_eq!(back.cells.len(), 4);
        for c in &m.cells {
            assert!(
                out.join(&c.run_dir).join("results.json").is_file(),
                "{}",
                c.run_dir
            );
        }
        for f in ["summary.md", "report.html", "junit.xml"] {
            assert!(out.join(f).is_file(), "{f}");
        }
    }
}
