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
