//! Removing what runs left behind. A run is only touched when its owner is
//! gone (or when asked to force it), and only objects carrying its prefix
//! are removed. Errors are collected, not fatal: cleanup goes on.
//!
//! Root acts here on what it finds on disk, so nothing found is believed
//! without proof: a run's record is used only if nobody else could have
//! written it (`RunState::load_trusted`), a process is signalled only once
//! it is proven to be svclab's (`ProcRef::claim`: executable, start time,
//! network namespace), and namespaces that merely look like svclab's (no
//! record) are reported, not removed, unless `--force`.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::state::{Claimed, LoadError, ProcRef, RunState, run_dir};
use crate::topology::{RunId, destroy_prefix};

#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Runs removed.
    pub runs: Vec<RunId>,
    /// Runs left alone because their owner lives.
    pub skipped: Vec<(RunId, String)>,
    /// Runs whose record could not be trusted: nothing of them was touched.
    pub refused: Vec<(RunId, String)>,
    /// Namespaces that look like svclab's but have no run record: left
    /// alone (without `--force`).
    pub orphans: Vec<String>,
    pub namespaces: usize,
    pub processes: usize,
    /// What cleanup chose not to do, and why (processes that are not
    /// svclab's, records it ignored).
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

impl CleanupReport {
    /// Success: nothing failed and no record was refused.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.refused.is_empty()
    }

    /// What `svclab cleanup` says.
    pub fn print(&self) {
        self.print_details();
        println!(
            "removed {} run(s): {} namespace(s), {} process(es)",
            self.runs.len(),
            self.namespaces,
            self.processes
        );
    }

    /// Everything but the summary line (what `svclab down` says).
    pub fn print_details(&self) {
        for (run, why) in &self.skipped {
            println!("run {run}: left alone: {why}");
        }
        for (run, why) in &self.refused {
            eprintln!("error: run {run}: refused, nothing of it was touched: {why}");
        }
        for n in &self.notes {
            println!("{n}");
        }
        if !self.orphans.is_empty() {
            println!(
                "found {} svclab-looking namespace(s) without a run record: {}; \
                 rerun `svclab cleanup` with --force to remove them",
                self.orphans.len(),
                self.orphans.join(", ")
            );
        }
        for e in &self.errors {
            eprintln!("error: {e}");
        }
    }
}

/// Cleans every run whose owner is dead; with `force`, live ones too, and
/// namespaces without a run record.
pub fn cleanup_all(force: bool) -> CleanupReport {
    let mut report = CleanupReport::default();
    for run in crate::state::known_runs() {
        cleanup_run(&run, force, &mut report);
    }
    report
}

/// Cleans one run into `report`.
pub fn cleanup_run(run: &RunId, force: bool, report: &mut CleanupReport) {
    let state = match RunState::load_trusted(run) {
        Ok(st) => Some(st),
        Err(LoadError::Missing) => None,
        Err(e) => {
            if !force {
                report.refused.push((run.clone(), e.to_string()));
                return;
            }
            let why = match &e {
                LoadError::Untrusted(why) | LoadError::Unreadable(why) => why.clone(),
                LoadError::Missing => e.to_string(),
            };
            report.notes.push(format!(
                "run {run}: its record was ignored ({why}); nothing it names was signalled"
            ));
            None
        }
    };
    if state.is_none() && !force {
        let names: Vec<String> = crate::netns::list_with_prefix(&run.ns_prefix())
            .into_iter()
            .map(|ns| ns.name)
            .collect();
        if !names.is_empty() {
            report.orphans.extend(names);
            return;
        }
        // A folder with no record and nothing built: a run killed while it
        // wrote its first record (nothing in it is acted on). A young one
        // may be a run writing it right now: left for a later cleanup.
        let old = std::fs::symlink_metadata(run_dir(run))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if old {
            remove_run_dir(run, report);
        }
        return;
    }
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
    let namespaces = crate::netns::list_with_prefix(&run.ns_prefix());
    let run_netns: Vec<u64> = namespaces
        .iter()
        .filter_map(|ns| crate::netns::inode_of(&ns.path()))
        .collect();
    let mut procs: Vec<ProcRef> = Vec::new();
    if let Some(st) = state {
        // Forced: the owner (a lab process) goes too, or it would idle on.
        if st.owner.pid != std::process::id() {
            procs.push(st.owner);
        }
        procs.extend(st.processes);
    }
    let (found, foreign) = processes_in(&run_netns);
    procs.extend(found);
    procs.sort_by_key(|p| p.pid);
    procs.dedup_by_key(|p| p.pid);
    procs.retain(|p| p.pid != std::process::id());
    let mut claimed = Vec::new();
    for p in &procs {
        match p.claim(&run_netns) {
            Ok(Some(c)) => claimed.push(c),
            Ok(None) => {}
            Err(why) => report.notes.push(format!(
                "run {run}: pid {} ({}, named as {:?}) is not svclab's: {why}; not signalled",
                p.pid,
                crate::state::comm_of(p.pid),
                p.role
            )),
        }
    }
    report.processes += stop_claimed(&claimed);
    for (pid, ns) in foreign {
        if procs.iter().any(|p| p.pid == pid) {
            continue;
        }
        report.notes.push(format!(
            "run {run}: pid {pid} ({}) in namespace {ns} is not svclab's; not signalled: \
             the namespace's name is removed, the namespace itself lives on until that \
             process exits",
            crate::state::comm_of(pid)
        ));
    }
    let before = namespaces.len();
    if let Err(errs) = destroy_prefix(&run.ns_prefix()) {
        report
            .errors
            .extend(errs.into_iter().map(|e| e.to_string()));
    }
    report.namespaces +=
        before.saturating_sub(crate::netns::list_with_prefix(&run.ns_prefix()).len());
    remove_run_dir(run, report);
    report.runs.push(run.clone());
}

fn remove_run_dir(run: &RunId, report: &mut CleanupReport) {
    let dir = run_dir(run);
    // `remove_dir_all` never follows a symlink inside the folder.
    if std::fs::symlink_metadata(&dir).is_ok()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        report
            .errors
            .push(format!("removing {}: {e}", dir.display()));
    }
}

/// `svclab down RUN`: asks the run's owner to tear its lab down (once it
/// is proven to be svclab's), waits for it, then removes what is left.
/// A record that cannot be trusted is refused (`report.refused`); a run
/// without a record is only reported (`svclab cleanup --force RUN`).
pub fn down(run: &RunId) -> CleanupReport {
    let mut report = CleanupReport::default();
    match RunState::load_trusted(run) {
        Ok(st) => {
            let run_netns: Vec<u64> = crate::netns::list_with_prefix(&run.ns_prefix())
                .iter()
                .filter_map(|ns| crate::netns::inode_of(&ns.path()))
                .collect();
            match st.owner.claim(&run_netns) {
                // The lab process tears its own lab down on SIGTERM.
                Ok(Some(owner)) if owner.signal(Signal::SIGTERM) => {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while owner.alive() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Ok(_) => {}
                Err(why) => report.notes.push(format!(
                    "run {run}: its owner pid {} ({}) is not svclab's: {why}; not signalled",
                    st.owner.pid,
                    crate::state::comm_of(st.owner.pid)
                )),
            }
            cleanup_run(run, true, &mut report);
        }
        Err(LoadError::Missing) => cleanup_run(run, false, &mut report),
        Err(e) => report.refused.push((run.clone(), e.to_string())),
    }
    report
}

/// SIGTERM, a short grace period, then SIGKILL. Returns how many were alive.
fn stop_claimed(procs: &[Claimed]) -> usize {
    let alive: Vec<&Claimed> = procs.iter().filter(|p| p.signal(Signal::SIGTERM)).collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && alive.iter().any(|p| p.alive()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in &alive {
        if p.alive() {
            p.signal(Signal::SIGKILL);
        }
    }
    alive.len()
}

/// SIGTERM, a short grace period, then SIGKILL, for processes this process
/// started itself. Returns how many were alive.
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

/// The processes whose network namespace is one of `inodes` (a run's),
/// found through /proc even if the run never recorded them (it may have
/// been killed right after starting them): svclab's, and the others (pid
/// and the namespace's name), which are never signalled.
fn processes_in(inodes: &[u64]) -> (Vec<ProcRef>, Vec<(u32, String)>) {
    let (mut ours, mut foreign) = (Vec::new(), Vec::new());
    if inodes.is_empty() {
        return (ours, foreign);
    }
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return (ours, foreign);
    };
    let names: Vec<(u64, String)> =
        crate::netns::list_with_prefix(crate::topology::names::NS_PREFIX)
            .into_iter()
            .filter_map(|ns| Some((crate::netns::inode_of(&ns.path())?, ns.name)))
            .collect();
    for pid in proc_dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(ino) = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()) else {
            continue;
        };
        if !inodes.contains(&ino) {
            continue;
        }
        if crate::state::is_svclab(pid) {
            if let Some(p) = ProcRef::of(pid, "found") {
                ours.push(p);
            }
        } else {
            let ns = names
                .iter()
                .find(|(i, _)| *i == ino)
                .map_or_else(|| format!("net:[{ino}]"), |(_, n)| n.clone());
            foreign.push((pid, ns));
        }
    }
    (ours, foreign)
}
