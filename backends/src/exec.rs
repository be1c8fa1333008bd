//! The `exec:PROGRAM` backend: any program that speaks the agent protocol
//! (`backends/PROTOCOL.md`) becomes a dataplane. The agent passes the watch
//! events through unchanged and asks for a sync; the program answers with
//! one JSON line per sync.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use crate::model::NodeContext;
use crate::protocol::{ProgramInput, ProgramReply, WatchEvent};
use crate::{Backend, BackendError, BackendStats, SyncOutcome, SyncRequest, Unavailable};

/// How long a program may take to answer one SYNC.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

pub struct ExecBackend {
    program: String,
    child: Option<Child>,
    stdin: Option<BufWriter<ChildStdin>>,
    replies: Option<Receiver<std::io::Result<String>>>,
    last: SyncOutcome,
}

/// Finds `program` the way a shell would.
fn resolve(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

pub fn capability(program: &str) -> Result<(), Unavailable> {
    use std::os::unix::fs::PermissionsExt;
    let path = resolve(program)
        .ok_or_else(|| Unavailable::new(format!("exec backend program {program:?} not found")))?;
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0);
    if mode & 0o111 == 0 {
        return Err(Unavailable::new(format!(
            "exec backend program {} is not executable",
            path.display()
        )));
    }
    Ok(())
}

impl ExecBackend {
    pub fn new(program: &str) -> Self {
        ExecBackend {
            program: program.to_string(),
            child: None,
            stdin: None,
            replies: None,
            last: SyncOutcome::default(),
        }
    }

    fn send(&mut self, input: &ProgramInput) -> Result<(), BackendError> {
        let program = &self.program;
        let w = self
            .stdin
            .as_mut()
            .ok_or_else(|| BackendError::Other(format!("exec:{program} is not running")))?;
        serde_json::to_writer(&mut *w, input)
            .map_err(|e| BackendError::Other(format!("writing to exec:{program}: {e}")))?;
        w.write_all(b"\n")
            .map_err(|e| BackendError::io(format!("writing to exec:{program}"), e))
    }
}

impl Backend for ExecBackend {
    fn setup(&mut self, node: &NodeContext) -> Result<(), BackendError> {
        capability(&self.program)?;
        let mut child = Command::new(&self.program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BackendError::io(format!("starting exec:{}", self.program), e))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("exec-replies".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| BackendError::io("spawning the exec reply reader", e))?;
        self.stdin = Some(BufWriter::new(child.stdin.take().expect("piped stdin")));
        self.child = Some(child);
        self.replies = Some(rx);
        self.send(&ProgramInput::Config { node: node.clone() })
    }

    fn observe(&mut self, event: &WatchEvent) -> Result<(), BackendError> {
        self.send(&ProgramInput::Event(event.clone()))
    }

    fn sync(&mut self, req: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError> {
        self.send(&ProgramInput::Sync {
            mode: req.mode,
            seq: req.seq,
        })?;
        let program = self.program.clone();
        self.stdin
            .as_mut()
            .expect("set up")
            .flush()
            .map_err(|e| BackendError::io(format!("writing to exec:{program}"), e))?;
        let rx = self.replies.as_ref().expect("set up");
        loop {
            let line = match rx.recv_timeout(REPLY_TIMEOUT) {
                Ok(Ok(line)) => line,
                Ok(Err(e)) => return Err(BackendError::io(format!("reading exec:{program}"), e)),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BackendError::Other(format!(
                        "exec:{program} did not answer SYNC {} within {:?}",
                        req.seq, REPLY_TIMEOUT
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BackendError::Other(format!(
                        "exec:{program} exited before answering SYNC {}",
                        req.seq
                    )));
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let reply: ProgramReply = serde_json::from_str(&line).map_err(|e| {
                BackendError::Other(format!("exec:{program} answered {line:?}: {e}"))
            })?;
            if reply.seq != req.seq {
                return Err(BackendError::Other(format!(
                    "exec:{program} answered seq {} to SYNC {}",
                    reply.seq, req.seq
                )));
            }
            if let Some(error) = reply.error {
                return Err(BackendError::Other(format!("exec:{program}: {error}")));
            }
            self.last = SyncOutcome {
                rules: reply.rules,
                written: reply.written,
            };
            return Ok(self.last);
        }
    }

    fn stats(&mut self) -> Result<BackendStats, BackendError> {
        Ok(BackendStats {
            rules: self.last.rules,
            detail: serde_json::Value::Null,
        })
    }

    fn cleanup(&mut self) -> Result<(), Vec<BackendError>> {
        // Closing stdin is the program's signal to clean up and exit.
        self.stdin = None;
        let mut errors = Vec::new();
        if let Some(mut child) = self.child.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        errors.push(BackendError::Other(format!(
                            "exec:{} exited with {status} at cleanup",
                            self.program
                        )));
                        break;
                    }
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        errors.push(BackendError::Other(format!(
                            "exec:{} did not exit within 10 s of stdin closing; killed",
                            self.program
                        )));
                        break;
                    }
                    Err(e) => {
                        errors.push(BackendError::io(
                            format!("waiting for exec:{}", self.program),
                            e,
                        ));
                        break;
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Drop for ExecBackend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
