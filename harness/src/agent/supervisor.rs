//! The harness's side of the agents: start one per node inside the node's
//! namespace, feed every agent the same watch events, collect their sync
//! reports, and notice an agent that dies, hangs or fails a sync.
//!
//! Supervised agents (under `up`, `run` and `churn`) are treated the way a
//! kubelet treats kube-proxy: an agent that exits is reported at once (on
//! stderr, through the state hook into the run's state.json, and as an
//! [`AgentEvent`] for the report) and restarted with a doubling backoff
//! (1 s, 2 s, 4 s ... capped at [`RESTART_BACKOFF_CAP`]); the new agent gets
//! the current objects as a fresh list, like an informer's relist, and its
//! pid replaces the dead one. Unsupervised agents (benchmarks) end the wait
//! with an error instead, so a measurement never hides a crash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use svclab_backends::model::IpFamily;
use svclab_backends::protocol::{AgentMessage, ApiObject, StreamVersions, SyncReport, WatchEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::AgentArgs;
use crate::netns::{self, Group, NetNs};
use crate::state::ProcRef;

/// The first restart waits this long; each further one twice as long.
pub const RESTART_BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait before a restart.
pub const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(32);
/// An agent that ran this long before it died starts the backoff afresh.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(120);
/// A supervised agent's sync may fail (it retries with backoff) this many
/// times in a row before a wait for it gives up; an unsupervised one's
/// first failure ends the wait.
pub const SUPERVISED_FAILURES_IN_A_ROW: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {node}: {what}")]
    Failed { node: String, what: String },
    #[error(
        "agents did not apply resourceVersions (Services {}, EndpointSlices {}) within {timeout:?}: {detail}",
        rv.services,
        rv.endpoint_slices
    )]
    Timeout {
        rv: StreamVersions,
        timeout: Duration,
        detail: String,
    },
}

/// Something that happened to an agent, for the run's report.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentEvent {
    /// Unix time, seconds.
    pub at: f64,
    pub node: String,
    /// `exited` or `restarted`.
    pub kind: String,
    pub detail: String,
}

/// What the run's record must say about the agents now.
pub enum StateChange {
    /// An agent process just exited (said from its waiter, at once).
    Exited {
        node: String,
        pid: u32,
        status: String,
    },
    /// The agents' whole process table (after a restart).
    Table(Vec<ProcRef>),
}

/// Called whenever an agent dies or is restarted, so the run's record
/// follows at once.
pub type StateHook = Arc<dyn Fn(StateChange) + Send + Sync>;

enum Msg {
    Line(Box<AgentMessage>),
    Exited(String),
}

/// One running process of an agent.
struct Incarnation {
    pid: u32,
    proc_ref: Option<ProcRef>,
    stdin: Option<ChildStdin>,
    kill: Option<oneshot::Sender<()>>,
    waiter: tokio::task::JoinHandle<Option<std::process::ExitStatus>>,
    started: Instant,
}

struct Dead {
    status: String,
    restart_at: Instant,
    proc_ref: Option<ProcRef>,
}

struct Handle {
    node: String,
    args: AgentArgs,
    netns: String,
    log: PathBuf,
    generation: u32,
    live: Option<Incarnation>,
    dead: Option<Dead>,
    /// Highest resourceVersion reported synced (without error) by the
    /// running incarnation.
    synced_rv: StreamVersions,
    /// A restarted incarnation was given the objects as of this
    /// resourceVersion: its first good sync covers it.
    replayed_rv: Option<StreamVersions>,
    started: bool,
    fatal: Option<String>,
    failures_in_a_row: u32,
    /// A report of the sync round still being read failed (an agent with a
    /// proxier per family writes an IPv4 report, then an IPv6 one).
    round_failed: bool,
    last_failure: Option<String>,
    restarts: u32,
    /// Restarts since the backoff last reset.
    crash_streak: u32,
}

/// What every agent has been told so far: the current objects, for a
/// restarted agent's list.
#[derive(Default)]
struct Replay {
    objects: BTreeMap<(&'static str, String), ApiObject>,
    synced: bool,
    max_rv: u64,
}

impl Replay {
    fn apply(&mut self, e: &WatchEvent) {
        if let Some(o) = e.object() {
            let rv = o
                .metadata()
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            self.max_rv = self.max_rv.max(rv);
        }
        match e {
            WatchEvent::Added { object } | WatchEvent::Modified { object } => {
                self.objects
                    .insert((object.kind(), object.key()), object.clone());
            }
            WatchEvent::Deleted { object } => {
                self.objects.remove(&(object.kind(), object.key()));
            }
            WatchEvent::Synced => self.synced = true,
        }
    }

    fn lines(&self) -> String {
        let mut s = String::new();
        for o in self.objects.values() {
            s.push_str(&WatchEvent::Added { object: o.clone() }.to_line());
        }
        if self.synced {
            s.push_str(&WatchEvent::Synced.to_line());
        }
        s
    }
}

pub struct Agents {
    handles: Vec<Handle>,
    tx: mpsc::UnboundedSender<(usize, u32, Msg)>,
    rx: mpsc::UnboundedReceiver<(usize, u32, Msg)>,
    /// Every sync report received, in arrival order (a restarted agent's
    /// `seq` starts at 1 again).
    pub reports: Vec<SyncReport>,
    /// Deaths and restarts, in order.
    pub events: Vec<AgentEvent>,
    supervised: bool,
    replay: Option<Replay>,
    hook: Option<StateHook>,
    /// Set once the agents are being stopped on purpose.
    stopping: Arc<AtomicBool>,
    /// Fed through the API: the newest resourceVersion the agents' informers
    /// see (a restarted agent lists it itself, no replay).
    api_rv: Option<Arc<crate::controlplane::store::ProxyVersions>>,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The wait before restart number `streak + 1`.
pub fn restart_backoff(streak: u32) -> Duration {
    RESTART_BACKOFF_START
        .saturating_mul(1u32 << streak.min(16))
        .min(RESTART_BACKOFF_CAP)
}

fn role(node: &str) -> String {
    format!("agent {node}")
}

/// Starts one agent process; its stdout lines and its exit arrive on `tx`
/// tagged with `(i, generation)`.
#[allow(clippy::too_many_arguments)]
fn spawn(
    i: usize,
    generation: u32,
    args: &AgentArgs,
    netns: &str,
    log: &Path,
    tx: &mpsc::UnboundedSender<(usize, u32, Msg)>,
    stopping: &Arc<AtomicBool>,
    hook: Option<StateHook>,
) -> anyhow::Result<Incarnation> {
    let stderr = if generation == 0 {
        std::fs::File::create(log)?
    } else {
        let mut f = std::fs::OpenOptions::new().append(true).open(log)?;
        use std::io::Write;
        let _ = writeln!(f, "--- svclab: agent restarted (restart {generation}) ---");
        f
    };
    let ns_fd = NetNs::new(netns).open()?;
    let mut cmd = Command::new(crate::state::self_exe());
    cmd.arg0("svclab")
        .arg("agent")
        .args(args.to_flags())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    // In the node's namespace; a process group of its own (a terminal's
    // Ctrl-C reaches the harness, which stops the agents in order, not the
    // agents behind its back); never outliving the harness.
    netns::prepare_child(cmd.as_std_mut(), Some(ns_fd), Group::Own);
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting the agent for {}: {e}", args.node))?;
    let pid = child.id().unwrap_or(0);
    let proc_ref = ProcRef::of(pid, role(&args.node));
    let stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take();
    let node = args.node.clone();
    {
        let tx = tx.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<AgentMessage>(&line) {
                    Ok(m) => {
                        if tx.send((i, generation, Msg::Line(Box::new(m)))).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("agent {node}: unreadable line {line:?}: {e}"),
                }
            }
        });
    }
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let tx = tx.clone();
    let stopping = stopping.clone();
    let waiter = tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s.ok(),
            _ = kill_rx => {
                let _ = child.kill().await;
                return child.wait().await.ok();
            }
        };
        let what = status.map_or("an unknown status".to_string(), |s| s.to_string());
        if !stopping.load(Ordering::SeqCst) && !crate::stop::stopping() {
            // Reported at once, whoever is (or is not) waiting on the agents.
            tracing::warn!("svclab: agent {node} (pid {pid}) exited with {what}");
            if let Some(hook) = &hook {
                hook(StateChange::Exited {
                    node: node.clone(),
                    pid,
                    status: what.clone(),
                });
            }
        }
        let _ = tx.send((i, generation, Msg::Exited(what)));
        status
    });
    Ok(Incarnation {
        pid,
        proc_ref,
        stdin,
        kill: Some(kill_tx),
        waiter,
        started: Instant::now(),
    })
}

impl Agents {
    /// Starts one agent per `(args, netns)`; stderr goes to `log_dir`.
    /// Unsupervised: a dead agent ends every wait with an error.
    pub async fn start(agents: Vec<(AgentArgs, String)>, log_dir: &Path) -> anyhow::Result<Agents> {
        Agents::start_with(agents, log_dir, false, None).await
    }

    /// Starts the agents; `supervised` ones are restarted when they die,
    /// and `hook` hears of every change of their processes.
    pub async fn start_with(
        agents: Vec<(AgentArgs, String)>,
        log_dir: &Path,
        supervised: bool,
        hook: Option<StateHook>,
    ) -> anyhow::Result<Agents> {
        std::fs::create_dir_all(log_dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let mut all = Agents {
            handles: Vec::new(),
            tx,
            rx,
            reports: Vec::new(),
            events: Vec::new(),
            supervised,
            replay: supervised.then(Replay::default),
            hook,
            stopping,
            api_rv: None,
        };
        for (i, (args, netns)) in agents.into_iter().enumerate() {
            let log = log_dir.join(format!("agent-{}.log", args.node));
            let inc = match spawn(
                i,
                0,
                &args,
                &netns,
                &log,
                &all.tx,
                &all.stopping,
                all.hook.clone(),
            ) {
                Ok(inc) => inc,
                Err(e) => {
                    all.stop(Duration::from_secs(5)).await;
                    return Err(e);
                }
            };
            all.handles.push(Handle {
                node: args.node.clone(),
                args,
                netns,
                log,
                generation: 0,
                live: Some(inc),
                dead: None,
                synced_rv: StreamVersions::default(),
                replayed_rv: None,
                started: false,
                fatal: None,
                failures_in_a_row: 0,
                round_failed: false,
                last_failure: None,
                restarts: 0,
                crash_streak: 0,
            });
        }
        Ok(all)
    }

    /// The agents watch the API themselves: nothing is written to them,
    /// and a restarted one's first sync covers what the API had at its start.
    pub fn fed_by_api(&mut self, proxy_rv: Arc<crate::controlplane::store::ProxyVersions>) {
        self.replay = None;
        self.api_rv = Some(proxy_rv);
    }

    /// The running agents' pids.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.handles
            .iter()
            .filter_map(|h| h.live.as_ref().map(|l| (h.node.clone(), l.pid)))
            .collect()
    }

    /// The agents' process records: a running agent as `agent <node>`; a
    /// dead one, until its restart, under a role that says so.
    pub fn proc_refs(&self) -> Vec<ProcRef> {
        self.handles
            .iter()
            .filter_map(|h| match (&h.live, &h.dead) {
                (Some(l), _) => l.proc_ref.clone(),
                (None, Some(d)) => d.proc_ref.clone().map(|mut p| {
                    p.role = format!(
                        "{} (exited with {}; restart {} pending)",
                        role(&h.node),
                        d.status,
                        h.restarts + 1
                    );
                    p
                }),
                (None, None) => None,
            })
            .collect()
    }

    /// Kills `node`'s agent with SIGKILL, as a crash or an OOM kill would
    /// (it cleans nothing up: its rules stay), and waits at most `timeout`
    /// for the supervisor to start the next one. Returns the old and the
    /// new pid. Only supervised agents are restarted.
    pub async fn kill_and_restart(
        &mut self,
        node: &str,
        timeout: Duration,
    ) -> anyhow::Result<(u32, u32)> {
        anyhow::ensure!(
            self.supervised,
            "the agents are not supervised: none restarts"
        );
        let i = self
            .handles
            .iter()
            .position(|h| h.node == node)
            .ok_or_else(|| anyhow::anyhow!("no agent on node {node}"))?;
        let (old, generation) = {
            let h = &self.handles[i];
            let live = h
                .live
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the agent on {node} is not running"))?;
            (live.pid, h.generation)
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let deadline = Instant::now() + timeout;
        loop {
            self.tick(deadline).await;
            let h = &self.handles[i];
            if h.generation > generation
                && let Some(l) = &h.live
            {
                return Ok((old, l.pid));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the agent on {node} (pid {old}, killed) was not restarted within {:.0} s",
                timeout.as_secs_f64()
            );
        }
    }

    /// Restarts so far, per node.
    pub fn restarts(&self) -> BTreeMap<String, u32> {
        self.handles
            .iter()
            .map(|h| (h.node.clone(), h.restarts))
            .collect()
    }

    pub fn logs(&self) -> Vec<PathBuf> {
        self.handles.iter().map(|h| h.log.clone()).collect()
    }

    fn tell_hook(&self) {
        if let Some(hook) = &self.hook {
            hook(StateChange::Table(self.proc_refs()));
        }
    }

    /// Writes `events` to every agent. A supervised agent that is down
    /// gets them with its restart's list instead.
    pub async fn send(&mut self, events: &[WatchEvent]) -> anyhow::Result<()> {
        if let Some(replay) = self.replay.as_mut() {
            for e in events {
                replay.apply(e);
            }
        }
        let mut buf = String::with_capacity(events.len() * 512);
        for e in events {
            buf.push_str(&e.to_line());
        }
        let supervised = self.supervised;
        let writes = self.handles.iter_mut().map(|h| {
            let buf = &buf;
            async move {
                let node = h.node.clone();
                let stdin = h.live.as_mut().and_then(|l| l.stdin.as_mut());
                let Some(stdin) = stdin else {
                    if supervised {
                        return Ok(());
                    }
                    return Err(anyhow::anyhow!("agent {node}: stdin is closed"));
                };
                match stdin.write_all(buf.as_bytes()).await {
                    Ok(()) => Ok(()),
                    // It died: its exit is on the way, and its restart
                    // gets the whole list.
                    Err(_) if supervised => Ok(()),
                    Err(e) => Err(anyhow::anyhow!(
                        "agent {node}: writing events: {e}; log:\n{}",
                        tail(&h.log, 20)
                    )),
                }
            }
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
        Ok(())
    }

    fn absorb(&mut self, i: usize, generation: u32, msg: Msg) {
        let supervised = self.supervised;
        let h = &mut self.handles[i];
        let current = generation == h.generation;
        match msg {
            Msg::Line(m) => match *m {
                AgentMessage::Sync(r) => {
                    if current {
                        // A round with a proxier per family is its IPv4
                        // report then its IPv6 one, written once both
                        // synced: the versions count as programmed when the
                        // round's last report is in and none failed, so no
                        // one probes before the IPv6 report is read.
                        let ends_round = r.family != Some(IpFamily::IPv4);
                        h.round_failed |= r.error.is_some();
                        if ends_round {
                            if !h.round_failed {
                                let covered = h.replayed_rv.take().unwrap_or_default();
                                h.synced_rv = h.synced_rv.max(r.versions).max(covered);
                            }
                            h.round_failed = false;
                        }
                        if r.error.is_none() {
                            h.failures_in_a_row = 0;
                        } else {
                            h.failures_in_a_row += 1;
                            let what = format!(
                                "{} sync {} failed: {}",
                                r.mode,
                                r.seq,
                                r.error.clone().unwrap_or_default()
                            );
                            let limit = if supervised {
                                SUPERVISED_FAILURES_IN_A_ROW
                            } else {
                                1
                            };
                            if h.failures_in_a_row >= limit {
                                h.fatal = Some(if limit == 1 {
                                    what.clone()
                                } else {
                                    format!(
                                        "{} syncs in a row failed; the last: {what}",
                                        h.failures_in_a_row
                                    )
                                });
                            }
                            h.last_failure = Some(what);
                        }
                    }
                    self.reports.push(*r);
                }
                _ if !current => {}
                AgentMessage::Started { .. } => h.started = true,
                AgentMessage::Fatal { error, .. } => h.fatal = Some(error),
            },
            Msg::Exited(_) if !current => {}
            Msg::Exited(status) => {
                let Some(inc) = h.live.take() else { return };
                if self.stopping.load(Ordering::SeqCst) {
                    return;
                }
                if inc.started.elapsed() >= BACKOFF_RESET_AFTER {
                    h.crash_streak = 0;
                }
                let wait = restart_backoff(h.crash_streak);
                h.synced_rv = StreamVersions::default();
                h.replayed_rv = None;
                h.failures_in_a_row = 0;
                h.round_failed = false;
                let detail = if supervised && !crate::stop::stopping() {
                    format!(
                        "pid {} exited with {status}; restart {} in {:.0} s",
                        inc.pid,
                        h.restarts + 1,
                        wait.as_secs_f64()
                    )
                } else {
                    format!("pid {} exited with {status}", inc.pid)
                };
                if supervised && !crate::stop::stopping() {
                    tracing::warn!(
                        "svclab: agent {}: restart {} in {:.0} s",
                        h.node,
                        h.restarts + 1,
                        wait.as_secs_f64()
                    );
                }
                self.events.push(AgentEvent {
                    at: crate::state::now(),
                    node: h.node.clone(),
                    kind: "exited".into(),
                    detail,
                });
                h.dead = Some(Dead {
                    status,
                    restart_at: Instant::now() + wait,
                    proc_ref: inc.proc_ref,
                });
                self.tell_hook();
            }
        }
    }

    /// Takes whatever messages have arrived, without waiting.
    pub fn drain(&mut self) {
        while let Ok((i, g, m)) = self.rx.try_recv() {
            self.absorb(i, g, m);
        }
    }

    /// Supervised: restarts every dead agent whose backoff has run out.
    /// Returns how many were restarted.
    pub async fn restart_due(&mut self) -> usize {
        if !self.supervised || crate::stop::stopping() || self.stopping.load(Ordering::SeqCst) {
            return 0;
        }
        let now = Instant::now();
        let mut restarted = 0;
        for i in 0..self.handles.len() {
            let due = self.handles[i]
                .dead
                .as_ref()
                .is_some_and(|d| d.restart_at <= now);
            if !due {
                continue;
            }
            let generation = self.handles[i].generation + 1;
            let h = &self.handles[i];
            let inc = spawn(
                i,
                generation,
                &h.args,
                &h.netns,
                &h.log,
                &self.tx,
                &self.stopping,
                self.hook.clone(),
            );
            let h = &mut self.handles[i];
            match inc {
                Ok(mut inc) => {
                    let given = match (&self.api_rv, &self.replay) {
                        (Some(rv), _) => {
                            h.replayed_rv = Some(rv.load());
                            "the API's list".to_string()
                        }
                        (None, Some(replay)) => {
                            let lines = replay.lines();
                            // One ordered stream: everything up to its last version.
                            h.replayed_rv = replay.synced.then_some(StreamVersions {
                                services: replay.max_rv,
                                endpoint_slices: replay.max_rv,
                            });
                            if let Some(stdin) = inc.stdin.as_mut() {
                                // A failed write shows up as the new agent's exit.
                                let _ = stdin.write_all(lines.as_bytes()).await;
                            }
                            format!("{} object(s)", replay.objects.len())
                        }
                        (None, None) => {
                            unreachable!("supervised agents keep a replay or watch the API")
                        }
                    };
                    h.generation = generation;
                    h.synced_rv = StreamVersions::default();
                    h.failures_in_a_row = 0;
                    h.restarts += 1;
                    h.crash_streak += 1;
                    h.started = false;
                    h.fatal = None;
                    h.dead = None;
                    let detail =
                        format!("restart {} as pid {}, given {given}", h.restarts, inc.pid);
                    tracing::warn!("svclab: agent {}: {detail}", h.node);
                    self.events.push(AgentEvent {
                        at: crate::state::now(),
                        node: h.node.clone(),
                        kind: "restarted".into(),
                        detail,
                    });
                    h.live = Some(inc);
                    restarted += 1;
                }
                Err(e) => {
                    h.crash_streak += 1;
                    let wait = restart_backoff(h.crash_streak);
                    tracing::warn!(
                        "svclab: agent {}: restart failed: {e:#}; next try in {:.0} s",
                        h.node,
                        wait.as_secs_f64()
                    );
                    if let Some(d) = h.dead.as_mut() {
                        d.restart_at = Instant::now() + wait;
                    }
                }
            }
        }
        if restarted > 0 {
            self.tell_hook();
        }
        restarted
    }

    /// Takes what has arrived and restarts what is due; for a caller that
    /// is not waiting on a sync (`svclab up`, between checks).
    pub async fn supervise(&mut self) -> usize {
        self.drain();
        self.restart_due().await
    }

    /// Waits for the next message or restart due, at most until `until`.
    pub async fn tick(&mut self, until: Instant) {
        let next_restart = self
            .handles
            .iter()
            .filter_map(|h| h.dead.as_ref().map(|d| d.restart_at))
            .min();
        let wake = next_restart.map_or(until, |r| r.min(until));
        if let Ok(Some((i, g, m))) = tokio::time::timeout_at(wake, self.rx.recv()).await {
            self.absorb(i, g, m);
        }
        self.supervise().await;
    }

    /// Waits until every agent has synced resourceVersion `rv`. Fails on a
    /// fatal message, on failed syncs (the first one when unsupervised, a
    /// run of them when supervised: the agent retries), an exited agent
    /// (unsupervised; a supervised one is restarted and waited for), or
    /// the timeout.
    pub async fn wait_synced(
        &mut self,
        rv: StreamVersions,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            self.restart_due().await;
            for h in &mut self.handles {
                if let Some(f) = h.fatal.take() {
                    return Err(AgentError::Failed {
                        node: h.node.clone(),
                        what: format!("{f}\nlog ({}):\n{}", h.log.display(), tail(&h.log, 20)),
                    });
                }
                if !self.supervised
                    && let Some(d) = &h.dead
                {
                    return Err(AgentError::Failed {
                        node: h.node.clone(),
                        what: format!(
                            "exited with {}; log ({}):\n{}",
                            d.status,
                            h.log.display(),
                            tail(&h.log, 20)
                        ),
                    });
                }
            }
            if self.handles.iter().all(|h| h.synced_rv.covers(&rv)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let detail = self
                    .handles
                    .iter()
                    .map(|h| {
                        let mut s = format!(
                            "{} at services {}, endpointslices {}",
                            h.node, h.synced_rv.services, h.synced_rv.endpoint_slices
                        );
                        if h.dead.is_some() {
                            s.push_str(" (down, restart pending)");
                        }
                        if let Some(f) = &h.last_failure {
                            s.push_str(&format!(" (last failure: {f})"));
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(AgentError::Timeout {
                    rv,
                    timeout,
                    detail,
                });
            }
            let next_restart = self
                .handles
                .iter()
                .filter_map(|h| h.dead.as_ref().map(|d| d.restart_at))
                .min();
            let wake = next_restart.map_or(deadline, |r| r.min(deadline));
            if let Ok(Some((i, g, m))) = tokio::time::timeout_at(wake, self.rx.recv()).await {
                self.absorb(i, g, m);
            }
        }
    }

    /// Closes every agent's stdin (agents clean their backend up and exit),
    /// waits, and kills what does not exit in time. Returns the problems.
    pub async fn stop(mut self, grace: Duration) -> Vec<String> {
        self.stopping.store(true, Ordering::SeqCst);
        let mut problems = Vec::new();
        for h in &mut self.handles {
            if let Some(l) = h.live.as_mut() {
                l.stdin = None;
            }
        }
        for h in &mut self.handles {
            let Some(mut l) = h.live.take() else { continue };
            match tokio::time::timeout(grace, &mut l.waiter).await {
                Ok(Ok(Some(s))) if s.success() => {}
                Ok(Ok(Some(s))) => problems.push(format!(
                    "agent {} exited with {s}; log:\n{}",
                    h.node,
                    tail(&h.log, 10)
                )),
                Ok(Ok(None)) => problems.push(format!("agent {}: no exit status", h.node)),
                Ok(Err(e)) => problems.push(format!("agent {}: {e}", h.node)),
                Err(_) => {
                    if let Some(k) = l.kill.take() {
                        let _ = k.send(());
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(5), &mut l.waiter).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_doubles_up_to_the_cap() {
        let waits: Vec<u64> = (0..8).map(|n| restart_backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(restart_backoff(u32::MAX), RESTART_BACKOFF_CAP);
    }

    fn svc(name: &str, rv: u64) -> ApiObject {
        let mut s = k8s_openapi::api::core::v1::Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s.metadata.resource_version = Some(rv.to_string());
        ApiObject::Service(Box::new(s))
    }

    #[test]
    fn replay_lists_the_current_objects_then_synced() {
        let mut r = Replay::default();
        r.apply(&WatchEvent::Added {
            object: svc("a", 1),
        });
        r.apply(&WatchEvent::Added {
            object: svc("b", 2),
        });
        r.apply(&WatchEvent::Synced);
        r.apply(&WatchEvent::Modified {
            object: svc("a", 3),
        });
        r.apply(&WatchEvent::Deleted {
            object: svc("b", 4),
        });
        assert_eq!(r.max_rv, 4, "a deletion's resourceVersion counts");
        let lines: Vec<WatchEvent> = r
            .lines()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![
                WatchEvent::Added {
                    object: svc("a", 3)
                },
                WatchEvent::Synced
            ]
        );
    }
}
