//! A run's record on disk, `/run/svclab/<run>/state.json`: who owns the run,
//! which processes it started and what network it built. `svclab down`,
//! `svclab cleanup` and `svclab trace` read it; it is written before the
//! first kernel object is created, so even a SIGKILLed run can be found.
//!
//! Root acts on these records (it signals the processes they name and
//! removes the namespaces), so they are private whatever the caller's
//! umask: `/run/svclab` and every run folder are 0700, every file 0600, all
//! owned by the effective user; the record is replaced atomically by
//! renaming a fresh `O_EXCL` temporary file. A record that anyone else could
//! have written is refused (`RunState::load_trusted`), and a process named in
//! a record is signalled only once it is proven to be svclab's
//! (`ProcRef::claim`).

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::topology::{RunId, Topology};

pub const STATE_DIR: &str = "/run/svclab";

pub fn run_dir(run: &RunId) -> PathBuf {
    PathBuf::from(STATE_DIR).join(run.as_str())
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Makes `path` a private folder of ours (mode 0700, whatever the umask):
/// created if missing; if it exists it must be a real folder (not a
/// symlink) owned by the effective user, and its mode is tightened to 0700.
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(path)?;
    if !m.file_type().is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a folder (a symlink or a file is in its place); refusing to use it",
            path.display()
        )));
    }
    if m.uid() != euid() {
        return Err(io::Error::other(format!(
            "{} is owned by uid {}, not by uid {}; refusing to use it",
            path.display(),
            m.uid(),
            euid()
        )));
    }
    if m.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(path, Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `/run/svclab`, private (see `ensure_private_dir`).
pub fn ensure_state_dir() -> io::Result<()> {
    ensure_private_dir(Path::new(STATE_DIR))
}

/// A run's folder, private, inside a private `/run/svclab`.
pub fn ensure_run_dir(run: &RunId) -> io::Result<PathBuf> {
    ensure_state_dir()?;
    let dir = run_dir(run);
    ensure_private_dir(&dir)?;
    Ok(dir)
}

/// Creates a new file readable and writable by us only (0600 whatever the
/// umask). `O_EXCL` and `O_NOFOLLOW`: an existing file or a planted symlink
/// at `path` is an error, never opened.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(0o600))?;
    Ok(f)
}

/// A private temporary folder (random name, created exclusively, mode 0700
/// whatever the umask) inside `parent`, removed when dropped.
pub fn private_temp_dir_in(parent: &Path, prefix: &str) -> io::Result<tempfile::TempDir> {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(parent)?;
    std::fs::set_permissions(d.path(), Permissions::from_mode(0o700))?;
    Ok(d)
}

/// A new private file (0600, random name, `O_EXCL`) in `dir`, kept (not
/// removed when closed): the file and its path.
pub fn private_named_file_in(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> io::Result<(File, PathBuf)> {
    let f = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    f.as_file().set_permissions(Permissions::from_mode(0o600))?;
    f.keep().map_err(|e| e.error)
}

/// Why a path cannot be trusted as root's own: not a plain file or folder,
/// owned by someone else, or writable by group or others.
fn untrusted(path: &Path, m: &std::fs::Metadata, want_dir: bool) -> Option<String> {
    let kind_ok = if want_dir {
        m.file_type().is_dir()
    } else {
        m.file_type().is_file()
    };
    if !kind_ok {
        return Some(format!(
            "{} is not a plain {}",
            path.display(),
            if want_dir { "folder" } else { "file" }
        ));
    }
    if m.uid() != euid() {
        return Some(format!(
            "{} is owned by uid {}, not by uid {} (who runs svclab)",
            path.display(),
            m.uid(),
            euid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        let who = match (m.mode() & 0o020 != 0, m.mode() & 0o002 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Some(format!(
            "{} is writable by {who} (mode {:04o})",
            path.display(),
            m.mode() & 0o7777
        ));
    }
    None
}

/// Why a run's record could not be read as ours.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No `state.json`: the run has no record.
    #[error("no run record")]
    Missing,
    /// Someone other than us could have written it.
    #[error(
        "{0}: the record is not trusted (inspect it; `svclab cleanup --force RUN` ignores it \
         and signals only processes proven svclab's)"
    )]
    Untrusted(String),
    #[error("{0}")]
    Unreadable(String),
}

/// The identity of an executable: the file `/proc/<pid>/exe` points to
/// (which stays the same inode when a rebuild replaces the binary on disk).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExeId {
    pub dev: u64,
    pub ino: u64,
    /// The path, for messages (may end in " (deleted)").
    #[serde(default)]
    pub path: String,
}

fn exe_of(pid: u32) -> Option<ExeId> {
    let link = format!("/proc/{pid}/exe");
    let m = std::fs::metadata(&link).ok()?;
    Some(ExeId {
        dev: m.dev(),
        ino: m.ino(),
        path: std::fs::read_link(&link)
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    })
}

/// The inode of `pid`'s network namespace.
pub fn netns_of(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// A process, identified by pid and start time so a reused pid is never
/// mistaken for ours, with its executable and network namespace as they
/// were when it was recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcRef {
    pub pid: u32,
    pub start_ticks: u64,
    pub role: String,
    /// Its executable when recorded (absent in records of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<ExeId>,
    /// The inode of its network namespace when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// The command name of `pid`, for messages.
pub fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A process proven to be svclab's, held by a pidfd so that a pid reused
/// after the proof is never signalled.
pub struct Claimed {
    pub proc: ProcRef,
    pidfd: Option<OwnedFd>,
}

impl Claimed {
    /// Sends `sig`; false if the process is gone.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> bool {
        match &self.pidfd {
            // SAFETY: a plain syscall on a pidfd we own.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig as libc::c_int,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ) == 0
            },
            None => self.proc.signal(sig),
        }
    }

    pub fn alive(&self) -> bool {
        self.proc.alive()
    }
}

fn pidfd_open(pid: u32) -> io::Result<Option<OwnedFd>> {
    // SAFETY: a plain syscall; the fd it returns is ours.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if r >= 0 {
        // SAFETY: r is a new file descriptor nobody else owns.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(r as i32) }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // A kernel without pidfds (before 5.3): fall back to the pid.
        Some(libc::ENOSYS) => Ok(None),
        _ => Err(e),
    }
}

impl ProcRef {
    pub fn of(pid: u32, role: impl Into<String>) -> Option<ProcRef> {
        Some(ProcRef {
            pid,
            start_ticks: start_ticks(pid)?,
            role: role.into(),
            exe: exe_of(pid),
            netns: netns_of(pid),
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

    /// Signals the process if it is still the one recorded (by start time
    /// only: for a process we started ourselves; anything read from a
    /// record goes through `claim`).
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> bool {
        self.alive()
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig).is_ok()
    }

    /// Proves the process is svclab's before anything signals it: it is
    /// the process recorded (same start time), its executable is svclab
    /// (the same file as recorded at start, and svclab's), and its network
    /// namespace is one of `run_netns` (the run's namespaces) or the one
    /// recorded for it. `Ok(None)`: it is gone. `Err`: it is someone
    /// else's, with the reason.
    pub fn claim(&self, run_netns: &[u64]) -> Result<Option<Claimed>, String> {
        let pidfd = match pidfd_open(self.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(format!("cannot open it: {e}")),
        };
        // Proven after the pidfd is open: if the pid were reused in
        // between, the start time below would not match.
        if !self.alive() {
            return Ok(None);
        }
        let Some(exe) = exe_of(self.pid) else {
            return Err("its executable cannot be read".into());
        };
        if let Some(rec) = &self.exe
            && (rec.dev, rec.ino) != (exe.dev, exe.ino)
        {
            return Err(format!(
                "its executable is {}, not the one recorded at its start ({})",
                exe.path, rec.path
            ));
        }
        if !is_svclab_exe(&exe) {
            return Err(format!("its executable is {}, not svclab", exe.path));
        }
        let ns = netns_of(self.pid);
        let ns_ok = ns.is_some_and(|n| run_netns.contains(&n) || self.netns == Some(n))
            // Records of older versions did not keep the owner's namespace.
            || (self.netns.is_none() && self.role == "owner");
        if !ns_ok {
            return Err(format!(
                "its network namespace ({}) is none of the run's",
                ns.map_or("unreadable".into(), |n| format!("net:[{n}]"))
            ));
        }
        Ok(Some(Claimed {
            proc: self.clone(),
            pidfd,
        }))
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

    /// Writes the record atomically (a reader never sees half of it): a
    /// fresh 0600 temporary file (random name, `O_EXCL`) in the private run
    /// folder, renamed over `state.json`.
    pub fn save(&self) -> io::Result<()> {
        let dir = ensure_run_dir(&self.run)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".state.json.")
            .permissions(Permissions::from_mode(0o600))
            .tempfile_in(&dir)?;
        tmp.as_file()
            .set_permissions(Permissions::from_mode(0o600))?;
        tmp.write_all(&serde_json::to_vec_pretty(self)?)?;
        tmp.persist(dir.join("state.json"))
            .map(drop)
            .map_err(|e| e.error)
    }

    /// Reads the record without asking who wrote it (for reading only:
    /// anything that signals or removes uses `load_trusted`).
    pub fn load(run: &RunId) -> io::Result<RunState> {
        let raw = std::fs::read(run_dir(run).join("state.json"))?;
        serde_json::from_slice(&raw).map_err(io::Error::other)
    }

    /// Reads the record only if nobody but us could have written it:
    /// `/run/svclab`, the run folder and `state.json` must be ours (the
    /// effective user's), not symlinks, and not writable by group or others.
    pub fn load_trusted(run: &RunId) -> Result<RunState, LoadError> {
        let dir = run_dir(run);
        let file = dir.join("state.json");
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&file)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::Missing),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(LoadError::Untrusted(format!(
                    "{} is a symlink",
                    file.display()
                )));
            }
            Err(e) => {
                return Err(LoadError::Unreadable(format!(
                    "reading {}: {e}",
                    file.display()
                )));
            }
        };
        for (path, want_dir) in [(Path::new(STATE_DIR), true), (dir.as_path(), true)] {
            let m = std::fs::symlink_metadata(path)
                .map_err(|e| LoadError::Unreadable(format!("{}: {e}", path.display())))?;
            if let Some(why) = untrusted(path, &m, want_dir) {
                return Err(LoadError::Untrusted(why));
            }
        }
        let m = f
            .metadata()
            .map_err(|e| LoadError::Unreadable(format!("{}: {e}", file.display())))?;
        if let Some(why) = untrusted(&file, &m, false) {
            return Err(LoadError::Untrusted(why));
        }
        let mut raw = Vec::new();
        (&f).read_to_end(&mut raw)
            .map_err(|e| LoadError::Unreadable(format!("reading {}: {e}", file.display())))?;
        serde_json::from_slice(&raw)
            .map_err(|e| LoadError::Unreadable(format!("{}: {e}", file.display())))
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

/// A fresh run id that no namespace or state directory uses yet.
pub fn fresh_run_id() -> RunId {
    loop {
        let id = RunId::random();
        let taken =
            !crate::netns::list_with_prefix(&id.ns_prefix()).is_empty() || run_dir(&id).exists();
        if !taken {
            return id;
        }
    }
}

/// This program, for re-executing itself (agents, workload server, the lab
/// process). Through /proc/self/exe it keeps working when the binary on
/// disk is replaced by a rebuild while a lab runs.
pub fn self_exe() -> std::path::PathBuf {
    std::path::PathBuf::from("/proc/self/exe")
}

/// Whether `pid` runs svclab (see `is_svclab_exe`).
pub fn is_svclab(pid: u32) -> bool {
    exe_of(pid).is_some_and(|e| is_svclab_exe(&e))
}

/// Whether an executable is svclab: the very file this process runs, or a
/// file named `svclab` (a rebuild may have replaced it on disk: then the
/// link ends in " (deleted)").
fn is_svclab_exe(exe: &ExeId) -> bool {
    if exe_of(std::process::id()).is_some_and(|me| (me.dev, me.ino) == (exe.dev, exe.ino)) {
        return true;
    }
    Path::new(&exe.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .is_some_and(|n| n == "svclab" || n == "svclab (deleted)")
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs whose record loads and whose owner process is alive: the labs
/// running on this host.
pub fn running_runs() -> Vec<RunState> {
    known_runs()
        .into_iter()
        .filter_map(|r| RunState::load(&r).ok())
        .filter(|s| s.owner.alive())
        .collect()
}

/// The one run-id rule of the command line: `--run R` names a lab,
/// without it the only running lab is meant (an error names the running
/// ones when there are several, or says there is none).
pub fn pick_run(run: Option<&str>) -> anyhow::Result<RunState> {
    let id = match run {
        Some(r) => RunId::parse(r)
            .ok_or_else(|| anyhow::anyhow!("--run {r:?} is not a run id (4 hex digits)"))?,
        None => {
            let live = running_runs();
            match live.as_slice() {
                [] => anyhow::bail!("no lab is running (start one with `svclab up`)"),
                [one] => one.run.clone(),
                many => anyhow::bail!(
                    "several labs are running ({}); name one with --run",
                    many.iter()
                        .map(|s| s.run.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let st = RunState::load(&id).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            let live: Vec<String> = running_runs().iter().map(|s| s.run.to_string()).collect();
            anyhow::anyhow!(
                "no lab {id} on this host (running: {})",
                if live.is_empty() {
                    "none".to_string()
                } else {
                    live.join(", ")
                }
            )
        }
        _ => anyhow::anyhow!("reading lab {id}'s record: {e}"),
    })?;
    if !st.owner.alive() {
        anyhow::bail!("lab {id}'s owner process is gone (remove it with `svclab cleanup`)");
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_claimed_only_if_it_is_svclabs() {
        // This test binary is "svclab" here: the same file as /proc/self/exe.
        let me = ProcRef::current("owner");
        assert!(me.exe.is_some() && me.netns.is_some());
        assert!(matches!(me.claim(&[]), Ok(Some(_))));
        let gone = ProcRef {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(matches!(gone.claim(&[]), Ok(None)));
        // Another executable: refused, whatever the record says about it.
        let mut sleep = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = sleep.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while comm_of(pid) != "sleep" && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let other = ProcRef::of(pid, "agent node-0").unwrap();
        let err = other.claim(&[other.netns.unwrap()]).err().unwrap();
        assert!(err.contains("not svclab"), "{err}");
        // Recorded as our own executable, but it runs another: refused.
        let forged = ProcRef {
            exe: me.exe.clone(),
            ..other
        };
        let err = forged.claim(&[forged.netns.unwrap()]).err().unwrap();
        assert!(err.contains("not the one recorded"), "{err}");
        sleep.kill().unwrap();
        sleep.wait().unwrap();
        // Our own process, but in a namespace that is neither recorded nor
        // the run's.
        let elsewhere = ProcRef {
            netns: Some(1),
            role: "agent node-0".into(),
            ..me.clone()
        };
        let err = elsewhere.claim(&[2]).err().unwrap();
        assert!(err.contains("none of the run's"), "{err}");
    }

    #[test]
    fn private_dirs_and_files_ignore_the_umask_and_refuse_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, Permissions::from_mode(0o777)).unwrap();
        ensure_private_dir(&loose).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&loose), 0o700);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&loose, &link).unwrap();
        assert!(ensure_private_dir(&link).is_err());
        let target = tmp.path().join("target");
        std::fs::write(&target, "precious").unwrap();
        let planted = tmp.path().join("planted");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(create_private_file(&planted).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        let fresh = tmp.path().join("fresh");
        create_private_file(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        let (_, named) = private_named_file_in(tmp.path(), "up-", ".log").unwrap();
        assert_eq!(mode(&named), 0o600);
        let d = private_temp_dir_in(tmp.path(), ".dump-").unwrap();
        assert_eq!(mode(d.path()), 0o700);
    }

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
