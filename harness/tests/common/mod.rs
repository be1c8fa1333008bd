//! Shared helpers for the lab's integration tests. They drive the real
//! `svclab` binary; tests that need root say so and skip without it.

#![allow(dead_code)]

pub mod host;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// One lab at a time on this machine: probes time out at 1 s, and two labs
/// competing for 2 cores would make the checks flaky, not wrong. The mutex
/// orders the tests of one binary; the `flock` orders test binaries and
/// worktrees (several checkouts testing at once on one host).
static LAB: Mutex<()> = Mutex::new(());
const MACHINE_LOCK: &str = "/run/svclab-tests.lock";

pub struct LabLock {
    _file: Option<nix::fcntl::Flock<std::fs::File>>,
    _guard: MutexGuard<'static, ()>,
}

pub fn lab_lock() -> LabLock {
    let guard = LAB.lock().unwrap_or_else(|e| e.into_inner());
    // Without root (no /run access) the lab tests skip anyway.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(MACHINE_LOCK)
        .ok()
        .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok());
    LabLock {
        _file: file,
        _guard: guard,
    }
}

/// Why lab tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix_is_root() {
        return Some("needs root to create network namespaces".into());
    }
    None
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether a test that cannot run here must fail rather than skip: under
/// CI (`CI=true`, as GitHub sets it) or `SVCLAB_REQUIRE_PRIVILEGED=1`, so
/// a job cannot go green with its privileged tests never run.
pub fn privileged_required() -> bool {
    let set = |k: &str, v: &[&str]| std::env::var(k).is_ok_and(|x| v.contains(&x.as_str()));
    set("CI", &["true", "1"]) || set("SVCLAB_REQUIRE_PRIVILEGED", &["1", "true"])
}

/// A test that needs root, a kernel feature or a tool ci/setup installs,
/// and cannot have it here: under [`privileged_required`] this fails the
/// test; otherwise it prints `SKIP <test name>: <why>` and the caller
/// returns.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if privileged_required() {
        panic!(
            "{test} cannot run here: {why} (CI=true or SVCLAB_REQUIRE_PRIVILEGED=1 makes this a \
             failure, not a skip)"
        );
    }
    eprintln!("SKIP {test}: {why}");
}

#[macro_export]
macro_rules! require_root {
    () => {
        if let Some(why) = common::skip_reason() {
            common::skip(&why);
            return;
        }
    };
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The binary under test; `SVCLAB_BIN` overrides it (several worktrees
/// sharing one target dir overwrite each other's `target/debug/svclab`).
pub fn svclab_bin() -> PathBuf {
    std::env::var_os("SVCLAB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_svclab")))
}

pub fn svclab() -> Command {
    let mut c = Command::new(svclab_bin());
    c.current_dir(root());
    c
}

pub fn run(args: &[&str]) -> Output {
    svclab().args(args).output().expect("running svclab")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// svclab namespaces on this host.
pub fn lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("svclab-"))
        .collect()
}

/// Namespaces of one run.
pub fn run_namespaces(run: &str) -> Vec<String> {
    lab_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&format!("svclab-{run}-")))
        .collect()
}

/// The run id printed by `svclab up` ("stop: svclab down --run <run>").
pub fn run_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("stop: svclab down --run "))
        .unwrap_or_else(|| panic!("no run id in:\n{out}"))
        .trim()
        .to_string()
}

/// A private results folder for one test (a new folder with a random name,
/// mode 0700: root never writes at a path someone could plant first).
pub fn results_dir(name: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("svclab-test-{name}-"))
        .tempdir()
        .expect("creating a results folder")
        .keep()
}

/// The one run folder inside `base`, and its results.json.
pub fn results_json(base: &Path) -> (PathBuf, serde_json::Value) {
    let dir = std::fs::read_dir(base)
        .expect("results folder")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("results.json").is_file())
        .unwrap_or_else(|| panic!("no results.json under {}", base.display()));
    let json = serde_json::from_slice(&std::fs::read(dir.join("results.json")).expect("read"))
        .expect("parse");
    (dir, json)
}

/// (backend, check) -> (verdict, summary) from results.json.
pub fn verdicts(results: &serde_json::Value) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for b in results["backends"].as_array().expect("backends") {
        let backend = b["backend"].as_str().unwrap_or("").to_string();
        for c in b["checks"].as_array().expect("checks") {
            out.push((
                backend.clone(),
                c["name"].as_str().unwrap_or("").to_string(),
                c["verdict"].as_str().unwrap_or("").to_string(),
                c["summary"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

/// Runs a command inside a lab namespace (test setup only).
pub fn in_netns(ns: &str, cmd: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("ip netns exec")
}

/// Takes a lab down when dropped, so a failing test leaves nothing behind.
pub struct LabGuard(pub String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if !run_namespaces(&self.0).is_empty() {
            let _ = run(&["down", "--run", &self.0]);
        }
    }
}

/// Both supported upstream kube-proxy builds are in the cache; otherwise the
/// test skips (fails under CI) naming the command that builds the missing one.
#[allow(dead_code)] // not every test binary runs upstream kube-proxy
pub fn have_kube_proxy() -> bool {
    for v in svclab::kubeproxy::SUPPORTED_VERSIONS {
        if !svclab::kubeproxy::binary(v).is_file() {
            let why = format!(
                "kube-proxy {v} is not built ({})",
                svclab::kubeproxy::build_command(v)
            );
            skip(&why);
            return false;
        }
    }
    true
}
