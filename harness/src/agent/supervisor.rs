//! The harness's side of the agents: start one per node inside the node's
//! namespace, feed every agent the same watch events, collect their sync
//! reports, and notice an agent that dies, hangs or fails a sync.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use svclab_backends::protocol::{AgentMessage, SyncReport, WatchEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::AgentArgs;
use crate::netns::NetNs;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {node}: {what}")]
    Failed { node: String, what: String },
    #[error("agents did not apply resourceVersion {rv} within {timeout:?}: {detail}")]
    Timeout {
        rv: u64,
        timeout: Duration,
        detail: String,
    },
}

struct Handle {
    node: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    /// Highest resourceVersion reported synced (without error).
    synced_rv: u64,
    started: bool,
    fatal: Option<String>,
}

pub struct Agents {
    handles: Vec<Handle>,
    rx: mpsc::UnboundedReceiver<(usize, AgentMessage)>,
    /// Every sync report received, in arrival order.
    pub reports: Vec<SyncReport>,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Agents {
    /// Starts one agent per `(args, netns)`; stderr goes to `log_dir`.
    pub async fn start(agents: Vec<(AgentArgs, String)>, log_dir: &Path) -> anyhow::Result<Agents> {
        std::fs::create_dir_all(log_dir)?;
        let exe = crate::state::self_exe();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut handles = Vec::new();
        for (i, (args, netns)) in agents.into_iter().enumerate() {
            let log = log_dir.join(format!("agent-{}.log", args.node));
            let stderr = std::fs::File::create(&log)?;
            let ns_fd = NetNs::new(&netns).open()?;
            let raw = ns_fd.as_raw_fd();
            let mut cmd = Command::new(&exe);
            cmd.arg0("svclab")
                .arg("agent")
                .args(args.to_flags())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(stderr))
                .kill_on_drop(true);
            // SAFETY: only async-signal-safe syscalls run between fork and
            // exec: setns into the node's namespace, and a parent-death
            // signal so an agent never outlives the harness.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| anyhow::anyhow!("starting the agent for {}: {e}", args.node))?;
            drop(ns_fd);
            let stdout = child.stdout.take().expect("piped");
            let stdin = child.stdin.take();
            let tx = tx.clone();
            let node = args.node.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<AgentMessage>(&line) {
                        Ok(m) => {
                            if tx.send((i, m)).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!("agent {node}: unreadable line {line:?}: {e}"),
                    }
                }
            });
            handles.push(Handle {
                node: args.node,
                child,
                stdin,
                log,
                synced_rv: 0,
                started: false,
                fatal: None,
            });
        }
        Ok(Agents {
            handles,
            rx,
            reports: Vec::new(),
        })
    }

    pub fn pids(&self) -> Vec<(String, u32)> {
        self.handles
            .iter()
            .filter_map(|h| h.child.id().map(|p| (h.node.clone(), p)))
            .collect()
    }

    pub fn logs(&self) -> Vec<PathBuf> {
        self.handles.iter().map(|h| h.log.clone()).collect()
    }

    /// Writes `events` to every agent.
    pub async fn send(&mut self, events: &[WatchEvent]) -> anyhow::Result<()> {
        let mut buf = String::with_capacity(events.len() * 512);
        for e in events {
            buf.push_str(&e.to_line());
        }
        let writes = self.handles.iter_mut().map(|h| {
            let buf = &buf;
            async move {
                let node = h.node.clone();
                let Some(stdin) = h.stdin.as_mut() else {
                    return Err(anyhow::anyhow!("agent {node}: stdin is closed"));
                };
                stdin.write_all(buf.as_bytes()).await.map_err(|e| {
                    anyhow::anyhow!(
                        "agent {node}: writing events: {e}; log:\n{}",
                        tail(&h.log, 20)
                    )
                })
            }
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
        Ok(())
    }

    fn absorb(&mut self, i: usize, msg: AgentMessage) {
        let h = &mut self.handles[i];
        match msg {
            AgentMessage::Started { .. } => h.started = true,
            AgentMessage::Fatal { error, .. } => h.fatal = Some(error),
            AgentMessage::Sync(r) => {
                if r.error.is_none() {
                    h.synced_rv = h.synced_rv.max(r.resource_version);
                } else {
                    h.fatal = Some(format!(
                        "{} sync {} failed: {}",
                        r.mode,
                        r.seq,
                        r.error.clone().unwrap_or_default()
                    ));
                }
                self.reports.push(r);
            }
        }
    }

    /// Takes whatever messages have arrived, without waiting.
    pub fn drain(&mut self) {
        while let Ok((i, m)) = self.rx.try_recv() {
            self.absorb(i, m);
        }
    }

    /// Waits until every agent has synced resourceVersion `rv`. Fails on a
    /// fatal message, a failed sync, an exited agent, or the timeout.
    pub async fn wait_synced(&mut self, rv: u64, timeout: Duration) -> Result<(), AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.drain();
            for h in &mut self.handles {
                if let Some(f) = h.fatal.take() {
                    return Err(AgentError::Failed {
                        node: h.node.clone(),
                        what: format!("{f}\nlog ({}):\n{}", h.log.display(), tail(&h.log, 20)),
                    });
                }
                if let Ok(Some(status)) = h.child.try_wait() {
                    return Err(AgentError::Failed {
                        node: h.node.clone(),
                        what: format!(
                            "exited with {status}; log ({}):\n{}",
                            h.log.display(),
                            tail(&h.log, 20)
                        ),
                    });
                }
            }
            if self.handles.iter().all(|h| h.synced_rv >= rv) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((i, m))) => self.absorb(i, m),
                Ok(None) => {}
                Err(_) => {
                    let detail = self
                        .handles
                        .iter()
                        .map(|h| format!("{} at {}", h.node, h.synced_rv))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(AgentError::Timeout {
                        rv,
                        timeout,
                        detail,
                    });
                }
            }
        }
    }

    /// Closes every agent's stdin (agents clean their backend up and exit),
    /// waits, and kills what does not exit in time. Returns the problems.
    pub async fn stop(mut self, grace: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        for h in &mut self.handles {
            h.stdin = None;
        }
        for h in &mut self.handles {
            match tokio::time::timeout(grace, h.child.wait()).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => problems.push(format!(
                    "agent {} exited with {s}; log:\n{}",
                    h.node,
                    tail(&h.log, 10)
                )),
                Ok(Err(e)) => problems.push(format!("agent {}: {e}", h.node)),
                Err(_) => {
                    let _ = h.child.kill().await;
                    problems.push(format!(
                        "agent {} did not exit within {grace:?}; killed",
                        h.node
                    ));
                }
            }
        }
        self.drain();
        problems
    }
}
