//! The floor: what the bare tool costs on the agent's exact input. The agent
//! dumps every sync's tool input (`<seq>-<mode>.iptables` / `.nft`); this
//! replays them in order (setup and hooks first, untimed) with
//! `iptables-nft-restore --noflush`, `iptables-legacy-restore --noflush` or
//! `nft -f`, in a fresh private network namespace, and times each run's
//! wall clock and CPU (from wait4, so only that process is counted).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use svclab_backends::protocol::SyncMode;
use svclab_backends::{BackendKind, FloorTool};

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("floor: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("floor: `{command}` on {file} failed ({status}): {stderr}")]
    Tool {
        command: String,
        file: String,
        status: String,
        stderr: String,
    },
    #[error("floor: `{command}` on {file} ran past {budget:?}; killed")]
    Budget {
        command: String,
        file: String,
        budget: Duration,
    },
    #[error("floor: setting up the namespace: {0}")]
    Setup(String),
}

/// One timed run of the bare tool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolRun {
    pub file: String,
    pub seq: u64,
    pub mode: SyncMode,
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    pub max_rss_kib: u64,
}

/// A dumped input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    pub path: PathBuf,
    pub seq: u64,
    /// `full`, `partial` or `setup`.
    pub mode: String,
}

/// The tool that replays `kind`'s dumps, if the backend dumps any.
pub fn tool_of(kind: &BackendKind) -> Option<FloorTool> {
    kind.spec().and_then(|s| s.floor)
}

/// The dumps in `dir` with extension `ext`, in sync order; empty inputs
/// (a sync with nothing to write runs no tool) are left out.
pub fn dumps(dir: &Path, ext: &str) -> Vec<Dump> {
    let mut out: Vec<Dump> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .filter_map(|path| {
            let stem = path.file_stem()?.to_str()?.to_string();
            let (seq, mode) = stem.split_once('-')?;
            Some(Dump {
                seq: seq.parse().ok()?,
                mode: mode.to_string(),
                path,
            })
        })
        .collect();
    out.sort_by_key(|d| d.seq);
    out
}

/// Runs `program args < file` to completion (or kills it at `budget`),
/// returning its own wall time, CPU and peak RSS.
fn timed(
    program: &str,
    args: &[&str],
    file: &Path,
    budget: Duration,
) -> Result<(f64, f64, u64), FloorError> {
    let command = format!("{program} {}", args.join(" "));
    let name = file.display().to_string();
    let input = File::open(file).map_err(|source| FloorError::Io {
        what: format!("opening {name}"),
        source,
    })?;
    // The tool's stderr goes to an anonymous file beside its input (in the
    // bench's private dump folder): no name anyone could plant a symlink at.
    let mut errors = private_tempfile_beside(file).map_err(|source| FloorError::Io {
        what: "creating a stderr file".into(),
        source,
    })?;
    let t = Instant::now();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::from(input))
        .stdout(Stdio::null())
        .stderr(Stdio::from(errors.try_clone().map_err(|source| {
            FloorError::Io {
                what: "stderr file".into(),
                source,
            }
        })?))
        .spawn()
        .map_err(|source| FloorError::Io {
            what: format!("starting `{command}`"),
            source,
        })?;
    let pid = child.id() as i32;
    // A watchdog kills the tool at the budget. The child is reaped only by
    // wait4 below, so its pid cannot be reused before the watchdog is told.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(budget) {
            // SAFETY: plain syscall on a pid we have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            return true;
        }
        false
    });
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64();
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    let stderr = {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let _ = errors
            .rewind()
            .and_then(|()| errors.read_to_string(&mut text));
        text
    };
    if r < 0 {
        return Err(FloorError::Io {
            what: format!("waiting for `{command}`"),
            source: std::io::Error::last_os_error(),
        });
    }
    if killed {
        return Err(FloorError::Budget {
            command,
            file: name,
            budget,
        });
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(FloorError::Tool {
            command,
            file: name,
            status: format!("wait status {status}"),
            stderr: stderr.trim().chars().take(2000).collect(),
        });
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        wall,
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss as u64,
    ))
}

/// An unnamed file (`O_TMPFILE`, or a random `O_EXCL` name unlinked at
/// once) with mode 0600, in the folder that holds `file`.
fn private_tempfile_beside(file: &Path) -> std::io::Result<File> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::tempfile_in(dir)
}

/// Runs `f` on a new thread inside a fresh private network namespace that
/// dies with the thread; tools it spawns run in that namespace.
fn in_private_netns<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FloorError> {
    std::thread::Builder::new()
        .name("floor".into())
        .spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| FloorError::Setup(format!("unshare(CLONE_NEWNET): {e}")))?;
            Ok(f())
        })
        .map_err(|source| FloorError::Io {
            what: "spawning the floor thread".into(),
            source,
        })?
        .join()
        .map_err(|_| FloorError::Setup("the floor thread panicked".into()))?
}

/// Replays the dumps of `kind` found in `dir`, in order: the first full
/// sync and every later sync are timed; each tool run gets `budget`.
pub fn replay(
    kind: &BackendKind,
    dir: &Path,
    budget: Duration,
) -> Result<Vec<ToolRun>, FloorError> {
    let Some(tool) = tool_of(kind) else {
        return Ok(Vec::new());
    };
    let files = dumps(dir, tool.ext);
    in_private_netns(move || {
        (tool.prepare)().map_err(|e| FloorError::Setup(e.to_string()))?;
        let mut runs = Vec::new();
        for d in &files {
            let (wall, cpu, rss) = timed(tool.program, tool.args, &d.path, budget)?;
            let mode = match d.mode.as_str() {
                "full" => SyncMode::Full,
                "partial" => SyncMode::Partial,
                // The fixed objects the agent's setup made; not a sync.
                _ => continue,
            };
            runs.push(ToolRun {
                file: d
                    .path
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                seq: d.seq,
                mode,
                wall_seconds: wall,
                cpu_seconds: cpu,
                max_rss_kib: rss,
            });
        }
        Ok(runs)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_sort_by_sequence_and_skip_empty_inputs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (name, text) in [
            ("10-partial.nft", "x"),
            ("0-setup.nft", "x"),
            ("2-partial.nft", "x"),
            ("1-full.nft", "x"),
            ("3-partial.nft", ""),
            ("1-full.iptables", "x"),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let d = dumps(dir, "nft");
        let got: Vec<(u64, &str)> = d.iter().map(|d| (d.seq, d.mode.as_str())).collect();
        assert_eq!(
            got,
            [(0, "setup"), (1, "full"), (2, "partial"), (10, "partial")]
        );
    }

    #[test]
    fn a_tool_run_is_timed_and_failures_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let f = dir.join("1-full.txt");
        std::fs::write(&f, "hello\n").unwrap();
        let (wall, cpu, _) = timed("cat", &[], &f, Duration::from_secs(10)).unwrap();
        assert!(wall > 0.0 && cpu >= 0.0);
        let err = timed("false", &[], &f, Duration::from_secs(10)).unwrap_err();
        assert!(err.to_string().contains("1-full.txt"), "{err}");
        let err = timed("sleep", &["5"], &f, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, FloorError::Budget { .. }), "{err}");
    }
}
