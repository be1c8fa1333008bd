//! Issue 14, findings 3, 5, 9 and 10, through the binary: bad scenarios end
//! in exit 2 with a located message, quickly, in bounded memory and with
//! bounded output; nothing is created, least of all outside `--results`.
//! None of these cases gets as far as building a lab, so no root is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A fresh folder for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("svclab-hardening-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `svclab run FILE --results DIR/results` under an address-space cap of
/// 1 GiB, so input that makes svclab allocate gigabytes fails the test
/// instead of the machine. The required backend cannot run: a scenario that
/// loads ends the run (exit 2) before any lab is built.
/// A backend that cannot run anywhere: `--require` stops the run after the
/// scenario loaded, before anything is built.
const NO_BACKEND: &str = "exec:/nonexistent/svclab-no-such-backend";

fn run(dir: &Path, file: &str, content: &[u8]) -> (Output, Duration) {
    let path = dir.join(file);
    std::fs::write(&path, content).unwrap();
    let started = Instant::now();
    let out = Command::new("prlimit")
        .arg("--as=1073741824")
        .arg(env!("CARGO_BIN_EXE_svclab"))
        .arg("run")
        .arg(&path)
        .args(["--backend", "none", "--require", NO_BACKEND, "--results"])
        .arg(dir.join("results"))
        .output()
        .expect("prlimit runs svclab");
    (out, started.elapsed())
}

fn assert_rejected(what: &str, out: &Output, took: Duration, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit code; stderr:\n{stderr:.2000}"
    );
    assert!(
        stderr.contains(needle),
        "{what}: {needle:?} not in:\n{stderr:.2000}"
    );
    assert!(
        stderr.len() < 8192,
        "{what}: {} bytes of stderr",
        stderr.len()
    );
    assert!(took < Duration::from_secs(20), "{what}: took {took:?}");
    stderr
}

const LAB: &str = "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n";

#[test]
fn finding_3_names_never_reach_paths() {
    let dir = scratch("names");
    let (out, took) = run(
        &dir,
        "escape.yaml",
        b"apiVersion: svclab.dev/v1alpha1\nkind: Lab\nmetadata:\n  name: ../../escaped\nspec:\n  nodes: 2\n",
    );
    assert_rejected(
        "Lab name with ../",
        &out,
        took,
        "escape.yaml:4:9: Lab: metadata.name: \"../../escaped\" is not a DNS-1123 subdomain",
    );
    assert!(!dir.join("escaped").exists() && !dir.join("results").exists());
    let long = "a".repeat(300);
    for (what, body, needle) in [
        (
            "namespace with ../",
            "metadata: {name: web, namespace: ../../x}".to_string(),
            "metadata.namespace: \"../../x\" is not a DNS-1123 label",
        ),
        (
            "300-character name",
            format!("metadata: {{name: {long}}}"),
            "must be no more than 63 characters (it has 300)",
        ),
        (
            "shell in a name",
            "metadata: {name: \"$(touch /tmp/x)\"}".to_string(),
            "is not a DNS-1035 label",
        ),
    ] {
        let text = format!(
            "{LAB}---\napiVersion: v1\nkind: Service\n{body}\nspec:\n  ports: [{{port: 80}}]\n"
        );
        let (out, took) = run(&dir, "svc.yaml", text.as_bytes());
        assert_rejected(what, &out, took, "svc.yaml:8:");
        assert_rejected(what, &out, took, needle);
    }
    // The results folder refuses a name that is not one path component.
    let err = svclab::results::new_run_dir(&dir.join("results"), "../../escaped").unwrap_err();
    assert!(
        err.to_string().contains("cannot name a results folder"),
        "{err}"
    );
    assert!(!dir.join("escaped").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn finding_5_small_inputs_stay_small() {
    let dir = scratch("limits");
    // 1.2 KB: ten levels of ten aliases.
    let mut bomb =
        String::from("apiVersion: svclab.dev/v1alpha1\nkind: Lab\nx0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        bomb.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    bomb.push_str("spec:\n  nodes: 2\n");
    let (out, took) = run(&dir, "bomb.yaml", bomb.as_bytes());
    assert_rejected(
        "alias bomb",
        &out,
        took,
        "(syntax): aliases expand too much",
    );

    let (out, took) = run(
        &dir,
        "nodes.yaml",
        b"apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 4294967295\n",
    );
    assert_rejected(
        "4294967295 nodes",
        &out,
        took,
        "nodes.yaml:4:10: Lab: spec.nodes: must be 1 to 250 nodes",
    );

    let replicas = "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 250\n  nodeNetwork: 172.18.0.0/16\n  \
         podCIDR: 100.64.0.0/10\n  nodeCIDRMaskSize: 18\n---\napiVersion: apps/v1\nkind: Deployment\n\
         metadata: {name: web}\nspec:\n  replicas: 1000000\n  selector: {matchLabels: {app: web}}\n  \
         template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c}]}\n";
    let (out, took) = run(&dir, "replicas.yaml", replicas.as_bytes());
    assert_rejected(
        "1e6 replicas",
        &out,
        took,
        "replicas.yaml:13:13: Deployment default/web: spec.replicas: the lab would run",
    );
    assert_rejected("1e6 replicas", &out, took, "this machine holds at most");

    let (out, took) = run(
        &dir,
        "timeout.yaml",
        format!("{LAB}  probes: {{timeoutMs: 9223372036854775807}}\n").as_bytes(),
    );
    assert_rejected(
        "endless timeout",
        &out,
        took,
        "timeout.yaml:5:23: Lab: spec.probes.timeoutMs: 9223372036854775807 is out of range 1-60000",
    );

    // Many errors: the first few, then a count.
    let mut many = LAB.to_string();
    for i in 0..5000 {
        many.push_str(&format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  ports: [{{port: 0}}]\n"));
    }
    let (out, took) = run(&dir, "many.yaml", many.as_bytes());
    let stderr = assert_rejected("5000 errors", &out, took, "... and 4980 more error(s)");
    assert_eq!(stderr.lines().count(), 21, "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn finding_9_bad_bytes_and_big_values() {
    let dir = scratch("bytes");
    let mut bytes =
        b"apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n# caf".to_vec();
    bytes.extend_from_slice(b"\xe9\n");
    let (out, took) = run(&dir, "latin1.yaml", &bytes);
    assert_rejected(
        "Latin-1 byte",
        &out,
        took,
        "latin1.yaml:5:6: (file): invalid UTF-8 at byte offset 64",
    );

    // A 50 MB name is quoted in a few dozen bytes.
    let name = "n".repeat(50 << 20);
    let text = format!(
        "{LAB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n"
    );
    let path = dir.join("name.yaml");
    std::fs::write(&path, &text).unwrap();
    drop((name, text));
    let (out, took) = run(&dir, "name.yaml", &std::fs::read(&path).unwrap());
    assert_rejected("50 MB name", &out, took, "is larger than 32 MiB");

    let name = "n".repeat(20 << 20);
    let text = format!(
        "{LAB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n"
    );
    let (out, took) = run(&dir, "name20.yaml", text.as_bytes());
    assert_rejected("20 MB name", &out, took, &format!("({} bytes)", 20 << 20));

    // A 50 MB file of Services is refused before it is parsed.
    let mut services = LAB.to_string();
    let mut i = 0;
    while services.len() < 50_000_000 {
        services.push_str(&format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  ports: [{{port: 0}}]\n"));
        i += 1;
    }
    let (out, took) = run(&dir, "services.yaml", services.as_bytes());
    assert_rejected(
        "50 MB of Services",
        &out,
        took,
        "services.yaml:0:0: (file): is larger than 32 MiB",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn finding_10_valid_kubernetes_input_loads() {
    // `svclab run` requiring a backend that cannot run loads the scenario,
    // prints its notes, and stops (exit 2) before building anything.
    let dir = scratch("valid");
    let text = format!(
        "{LAB}---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {{name: shop}}
- apiVersion: v1
  kind: ConfigMap
  metadata: {{name: cfg, namespace: shop}}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: shop}}
spec: {{type: ExternalName, externalName: db.example.com}}
---
apiVersion: v1
kind: Service
metadata: {{name: lonely, namespace: shop}}
spec:
  selector: {{app: nobody}}
  publishNotReadyAddresses: yes
  ports: [{{port: 80}}]
"
    );
    let path = dir.join("valid.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_svclab"))
        .arg("run")
        .arg(&path)
        .args(["--backend", "none", "--require", NO_BACKEND, "--results"])
        .arg(dir.join("results"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        "note: ",
        "1 ConfigMap document(s) ignored",
        "1 Namespace document(s) accepted",
        "Service shop/db is ExternalName",
        "Service shop/lonely: selector app=nobody matches no pod",
        "required backend exec:/nonexistent/svclab-no-such-backend cannot run here",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
