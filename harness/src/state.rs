//! A run's record on disk, `/run/svclab/<run>/state.json`: who owns the run,
//! which processes it started and what network it built. `svclab down`,
//! `svclab cleanup` and `svclab trace` read it; it is written before the
//! first kernel object is created, so even a SIGKILLed run can be found.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::topology::{RunId, Topology};

pub const STATE_DIR: &str = "/run/svclab";

pub fn run_dir(run: &RunId) -> PathBuf {
    PathBuf::from(STATE_DIR).join(run.as_str())
}

/// A process, identified by pid and start time so a reused pid is never
/// mistaken for ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcRef {
    pub pid: u32,
    pub start_ticks: u64,
    pub role: String,
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

impl ProcRef {
    pub fn of(pid: u32, role: impl Into<String>) -> Option<ProcRef> {
        Some(ProcRef {
            pid,
            start_ticks: start_ticks(pid)?,
            role: role.into(),
        })
    }

    pub fn current(role: impl Into<String>) -> ProcRef {
        ProcRef::of(std::process::id(), role).expect("our own /proc entry exists")
    }

    /// Still the same process, and not a zombie.
    pub fn alive(&self) -> bool {
        if start_ticks(self.pid) != Some(self.start_ticks) {
            return false;
        }
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> bool {
        self.alive()
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig).is_ok()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    pub run: RunId,
    /// The process that owns the lab and will tear it down.
    pub owner: ProcRef,
    pub scenario: String,
    pub started_at: f64,
    /// The backend the agents run, if any.
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub topology: Option<Topology>,
    /// Processes the run started (workload server, agents).
    #[serde(default)]
    pub processes: Vec<ProcRef>,
    /// The control plane's current Services, for `svclab trace`.
    #[serde(default)]
    pub services: Vec<k8s_openapi::api::core::v1::Service>,
}

impl RunState {
    pub fn new(run: &RunId, scenario: &str) -> RunState {
        RunState {
            run: run.clone(),
            owner: ProcRef::current("owner"),
            scenario: scenario.to_string(),
            started_at: now(),
            backend: None,
            topology: None,
            processes: Vec::new(),
            services: Vec::new(),
        }
    }

    /// Writes the record atomically (a reader never sees half of it).
    pub fn save(&self) -> io::Result<()> {
        let dir = run_dir(&self.run);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, dir.join("state.json"))
    }

    pub fn load(run: &RunId) -> io::Result<RunState> {
        let raw = std::fs::read(run_dir(run).join("state.json"))?;
        serde_json::from_slice(&raw).map_err(io::Error::other)
    }
}

/// Every run id that has a state directory or a namespace on this host.
pub fn known_runs() -> Vec<RunId> {
    let mut ids: Vec<RunId> = std::fs::read_dir(STATE_DIR)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| RunId::parse(&e.file_name().to_string_lossy()))
        .collect();
    for ns in crate::netns::list_with_prefix(crate::topology::names::NS_PREFIX) {
        let id = ns.name[crate::topology::names::NS_PREFIX.len()..]
            .split('-')
            .next()
            .and_then(RunId::parse);
        if let Some(id) = id {
            ids.push(id);
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// This program, for re-executing itself (agents, workload server, the lab
/// process). Through /proc/self/exe it keeps working when the binary on
/// disk is replaced by a rebuild while a lab runs.
pub fn self_exe() -> std::path::PathBuf {
    std::path::PathBuf::from("/proc/self/exe")
}

/// Whether `pid` runs svclab (by its executable, which a rebuild may have
/// replaced: then the link ends in " (deleted)").
pub fn is_svclab(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n == "svclab" || n.starts_with("svclab "))
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_ref_tells_our_process_from_others() {
        let me = ProcRef::current("test");
        assert!(me.alive());
        let stale = ProcRef {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(!stale.alive());
    }
}
