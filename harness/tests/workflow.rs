//! ci/github-actions.yml is a valid GitHub Actions workflow: checked
//! against GitHub's workflow schema by check-jsonschema (installed by
//! `ci/setup --schema`; its schemas are vendored, so no network is used).

use std::path::Path;
use std::process::Command;

#[test]
fn workflow_matches_githubs_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let workflow = root.join("ci/github-actions.yml");
    assert!(workflow.is_file(), "{} is missing", workflow.display());
    let out = match Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.github-workflows"])
        .arg(&workflow)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIP: check-jsonschema is not on PATH (install it with ci/setup --schema)");
            return;
        }
        Err(e) => panic!("running check-jsonschema: {e}"),
    };
    assert!(
        out.status.success(),
        "check-jsonschema rejects {}:\n{}{}",
        workflow.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The commands the workflow runs exist with the flags it passes.
#[test]
fn workflow_uses_commands_svclab_has() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join("ci/github-actions.yml")).unwrap();
    for (args, flag) in [
        (&["run", "--help"][..], "--backend"),
        (&["vm", "--help"][..], "--kernel"),
        (&["bench", "sync", "--help"][..], "--services"),
        (&["compare", "--help"][..], "--threshold"),
        (&["cleanup", "--help"][..], "cleanup"),
        (&["matrix", "--help"][..], "--shard"),
        (&["merge", "--help"][..], "--results"),
    ] {
        let sub = args[..args.len() - 1].join(" ");
        assert!(
            text.contains(&format!("svclab {sub}")),
            "workflow lacks `svclab {sub}`"
        );
        let out = Command::new(env!("CARGO_BIN_EXE_svclab"))
            .args(args)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "svclab {}: {help}", args.join(" "));
        assert!(help.contains(flag), "`svclab {sub}` has no {flag}:\n{help}");
    }
}

/// The workflow's steps, one text block each (from a `      - ` line to
/// the next).
fn steps(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut in_steps = false;
    for line in text.lines() {
        if line.trim_end() == "    steps:" {
            in_steps = true;
            continue;
        }
        if !in_steps {
            continue;
        }
        if line.starts_with("      - ") {
            out.push(String::new());
        }
        if let Some(s) = out.last_mut() {
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

/// The JUnit files every run writes are published as a check, and every
/// run's summary.md lands on the job's summary page, even when an
/// earlier step failed.
#[test]
fn workflow_publishes_junit_and_the_summary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join("ci/github-actions.yml")).unwrap();
    let steps = steps(&text);
    assert!(steps.len() > 10, "found {} steps", steps.len());
    let junit = steps
        .iter()
        .find(|s| s.contains("uses: mikepenz/action-junit-report@"))
        .expect("no step publishes the JUnit results");
    assert!(
        junit.contains("report_paths: results/**/junit.xml"),
        "{junit}"
    );
    assert!(junit.contains("if: always()"), "{junit}");
    assert!(
        text.contains("\n  checks: write\n"),
        "a check run needs `permissions: checks: write`"
    );
    let summary = steps
        .iter()
        .find(|s| s.contains("$GITHUB_STEP_SUMMARY"))
        .expect("no step writes the job summary");
    assert!(summary.contains("results/*/summary.md"), "{summary}");
    assert!(summary.contains("if: always()"), "{summary}");
    // Both come after the runs that write those files.
    let pos = |needle: &str| {
        steps
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("no step with {needle}"))
    };
    let last_run = pos("svclab vm --kernel");
    assert!(pos("action-junit-report") > last_run);
    assert!(pos("$GITHUB_STEP_SUMMARY") > last_run);
    // The run folders the workflow reads are the ones svclab writes.
    let src = std::fs::read_to_string(root.join("harness/src/results/mod.rs")).unwrap();
    for file in ["junit.xml", "summary.md"] {
        assert!(
            src.contains(&format!("dir.join(\"{file}\")")),
            "svclab no longer writes {file}"
        );
    }
}

/// The workflow's jobs, one text block each (from a `  name:` line under
/// `jobs:` to the next).
fn jobs(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_jobs = false;
    for line in text.lines() {
        if line.trim_end() == "jobs:" {
            in_jobs = true;
            continue;
        }
        if !in_jobs {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
            && !name.starts_with('#')
        {
            out.push((name.to_string(), String::new()));
            continue;
        }
        if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The behaviours matrix runs as a GitHub Actions `strategy.matrix` over
/// shards, each `svclab matrix --shard I/N` with N the number of shards
/// in the strategy, each uploading its folder; the merge job needs them,
/// downloads every shard's artifact, runs `svclab merge`, and publishes
/// the one report, its JUnit file and its summary even when a shard failed.
#[test]
fn the_matrix_jobs_shard_and_merge_consistently() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join("ci/github-actions.yml")).unwrap();
    let jobs = jobs(&text);
    let job = |name: &str| {
        jobs.iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| {
                panic!(
                    "no job {name:?}; jobs: {:?}",
                    jobs.iter().map(|(n, _)| n).collect::<Vec<_>>()
                )
            })
    };
    let matrix = job("matrix");
    // strategy.matrix.shard: [1, 2, ..., N]
    assert!(matrix.contains("    strategy:\n"), "{matrix}");
    let list = matrix
        .lines()
        .find_map(|l| l.trim().strip_prefix("shard: ["))
        .and_then(|l| l.strip_suffix(']'))
        .expect("strategy.matrix.shard: [..]");
    let shards: Vec<usize> = list.split(',').map(|s| s.trim().parse().unwrap()).collect();
    let n = shards.len();
    assert_eq!(
        shards,
        (1..=n).collect::<Vec<_>>(),
        "shards 1..N, each once"
    );
    assert!(n >= 2, "a matrix of one shard shards nothing");
    let runs: Vec<&str> = matrix
        .lines()
        .filter(|l| l.trim_start().starts_with("run:") && l.contains("svclab matrix "))
        .collect();
    assert!(!runs.is_empty(), "the matrix job runs no `svclab matrix`");
    for r in &runs {
        assert!(
            r.contains(&format!("--shard ${{{{ matrix.shard }}}}/{n} ")),
            "`--shard I/N` disagrees with the {n} shards of the strategy: {r}"
        );
    }
    assert!(
        runs.iter()
            .any(|r| !r.contains("--plan") && r.contains("--results shard")),
        "no step runs the shard into shard/: {runs:?}"
    );
    let upload = matrix
        .split("      - ")
        .find(|s| s.contains("actions/upload-artifact@"))
        .expect("the matrix job uploads its shard");
    assert!(upload.contains("if: always()"), "{upload}");
    assert!(upload.contains("path: shard/"), "{upload}");
    assert!(
        upload.contains("name: svclab-matrix-shard-${{ matrix.shard }}"),
        "{upload}"
    );

    let merge = job("merge");
    assert!(merge.contains("    needs: matrix\n"), "{merge}");
    assert!(
        merge.contains("    if: always()\n"),
        "merge even when a shard failed: {merge}"
    );
    let download = merge
        .split("      - ")
        .find(|s| s.contains("actions/download-artifact@"))
        .expect("the merge job downloads the shards");
    assert!(
        download.contains("pattern: svclab-matrix-shard-*"),
        "{download}"
    );
    assert!(download.contains("path: shards"), "{download}");
    let pos = |needle: &str| {
        merge
            .find(needle)
            .unwrap_or_else(|| panic!("the merge job has no {needle}"))
    };
    assert!(
        merge.contains("svclab merge shards/*/*-matrix-* --results merged"),
        "{merge}"
    );
    assert!(pos("action-junit-report") > pos("svclab merge"));
    assert!(
        merge.contains("report_paths: merged/*/junit.xml"),
        "{merge}"
    );
    assert!(pos("$GITHUB_STEP_SUMMARY") > pos("svclab merge"));
    assert!(merge.contains("merged/*/summary.md"), "{merge}");
    assert!(
        merge.contains("path: merged/"),
        "the merged folder is an artifact"
    );
    // The folders merge reads are the ones svclab writes.
    let src = std::fs::read_to_string(root.join("harness/src/matrix/mod.rs")).unwrap();
    assert!(src.contains("\"matrix-{scenario}-shard-{}of{}\""));
    for file in ["matrix.json", "junit.xml", "summary.md", "report.html"] {
        assert!(src.contains(&format!("dir.join(\"{file}\")")), "{file}");
    }
}
