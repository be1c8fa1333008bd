//! Removing what runs left behind. A run is only touched when its owner is
//! gone (or when asked to force it), and only objects carrying its prefix
//! are removed. Errors are collected, not fatal: cleanup goes on.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::state::{ProcRef, RunState, run_dir};
use crate::topology::{RunId, destroy_prefix};

#[derive(Debug, Default)]
pub struct CleanupReport {
    pub runs: Vec<RunId>,
    pub skipped: Vec<(RunId, String)>,
    pub namespaces: usize,
    pub processes: usize,
    pub errors: Vec<String>,
}

/// Cleans every run whose owner is dead; with `force`, live ones too.
pub fn cleanup_all(force: bool) -> CleanupReport {
    let mut report = CleanupReport::default();
    for run in crate::state::known_runs() {
        cleanup_run(&run, force, &mut report);
    }
    report
}

/// Cleans one run into `report`.
pub fn cleanup_run(run: &RunId, force: bool, report: &mut CleanupReport) {
    let state = RunState::load(run).ok();
    if let Some(st) = &state
        && st.owner.alive()
        && st.owner.pid != std::process::id()
        && !force
    {
        report.skipped.push((
            run.clone(),
            format!(
                "in use by pid {} (svclab down, or cleanup --force)",
                st.owner.pid
            ),
        ));
        return;
    }
    let mut procs: Vec<ProcRef> = Vec::new();
    if let Some(st) = state {
        // Forced: the owner (a lab process) goes too, or it would idle on.
        if st.owner.pid != std::process::id() {
            procs.push(st.owner);
        }
        procs.extend(st.processes);
    }
    procs.extend(svclab_processes_in(&run.ns_prefix()));
    procs.sort_by_key(|p| p.pid);
    procs.dedup_by_key(|p| p.pid);
    procs.retain(|p| p.pid != std::process::id());
    report.processes += stop_processes(&procs);
    let before = crate::netns::list_with_prefix(&run.ns_prefix()).len();
    if let Err(errs) = destroy_prefix(&run.ns_prefix()) {
        report
            .errors
            .extend(errs.into_iter().map(|e| e.to_string()));
    }
    report.namespaces += before - crate::netns::list_with_prefix(&run.ns_prefix()).len();
    let dir = run_dir(run);
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        report
            .errors
            .push(format!("removing {}: {e}", dir.display()));
    }
    report.runs.push(run.clone());
}

/// SIGTERM, a short grace period, then SIGKILL. Returns how many were alive.
pub fn stop_processes(procs: &[ProcRef]) -> usize {
    let alive: Vec<&ProcRef> = procs.iter().filter(|p| p.signal(Signal::SIGTERM)).collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && alive.iter().any(|p| p.alive()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in &alive {
        p.signal(Signal::SIGKILL);
    }
    alive.len()
}

/// svclab processes (agents, workload servers) whose network namespace is
/// one of the run's: found through /proc even if the run never recorded
/// them (it may have been killed right after starting them).
fn svclab_processes_in(prefix: &str) -> Vec<ProcRef> {
    let inodes: Vec<u64> = crate::netns::list_with_prefix(prefix)
        .iter()
        .filter_map(|ns| crate::netns::inode_of(&ns.path()))
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
            ino.is_ok_and(|i| inodes.contains(&i)) && crate::state::is_svclab(*pid)
        })
        .filter_map(|pid| ProcRef::of(pid, "found"))
        .collect()
}
