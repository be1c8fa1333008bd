//! A running lab: topology, workloads, control plane and agents for one
//! scenario and at most one backend. `Lab::up` builds it (and removes
//! whatever it built if a step fails); `Lab::down` removes all of it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use svclab_backends::protocol::WatchEvent;
use svclab_backends::{BackendKind, Fault};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::agent::AgentArgs;
use crate::agent::supervisor::Agents;
use crate::apiserver::{API_PORT, ApiServer, SharedControlPlane};
use crate::controlplane::ControlPlane;
use crate::probe::{Outcome, ProbeSpec, Prober};
use crate::scenario::Scenario;
use crate::state::{ProcRef, RunState, run_dir};
use crate::topology::{BuildTimes, RunId, Topology};
use crate::workload::PodServers;

/// How watch events reach the agents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Feed {
    /// The agents list and watch the lab's API, as kube-proxy does.
    #[default]
    Api,
    /// The harness writes JSON lines to each agent's stdin (the first
    /// round's path; benchmarks compare the two).
    Pipe,
}

#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    pub backend: Option<BackendKind>,
    pub feed: Feed,
    pub faults: Vec<Fault>,
    pub dump_dir: Option<PathBuf>,
    pub ipvs_scheduler: Option<String>,
    /// Skip the reachability sample after the topology is built.
    pub skip_fabric_check: bool,
    /// How long agents may take to apply a change.
    pub sync_timeout: Option<Duration>,
    /// Agent HTTP ports off (many labs at once on one host need none).
    pub agent_ports: bool,
    /// Start the agents but leave the initial list unsent: the caller sends
    /// `cp.initial_events()` itself (a benchmark times that first sync
    /// under its own budget).
    pub defer_initial_sync: bool,
    /// Restart agents that die, with backoff, as a kubelet restarts
    /// kube-proxy (`up`, `run`, `churn`); off, a dead agent is an error
    /// (benchmarks).
    pub supervise_agents: bool,
    /// Say on stderr which run id the lab has, before anything is built.
    pub announce: bool,
}

/// What bringing a lab up cost, by step.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpTimes {
    pub topology: BuildTimes,
    #[serde(with = "secs")]
    pub workloads: Duration,
    #[serde(with = "secs")]
    pub fabric_check: Duration,
    #[serde(with = "secs")]
    pub control_plane: Duration,
    #[serde(with = "secs")]
    pub first_sync: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

pub struct Lab {
    pub run: RunId,
    pub scenario: Scenario,
    pub topology: Topology,
    cp: SharedControlPlane,
    /// The API endpoint in every node (started with the topology).
    pub api: Option<ApiServer>,
    pub feed: Feed,
    /// Per node, the kubeconfig that reaches the API from inside it.
    pub kubeconfigs: Vec<PathBuf>,
    pub state: RunState,
    pub prober: Prober,
    pub agents: Option<Agents>,
    pub backend: Option<BackendKind>,
    pub times: UpTimes,
    /// Watch events sent to every agent so far (SYNCED markers aside).
    pub events_sent: u64,
    /// When the agents were started: fed through the API, they list it
    /// themselves from then on, so their first sync is timed from here.
    pub agents_started: Option<Instant>,
    workloads: Option<Child>,
    /// The workload server exits when this closes.
    workloads_stdin: Option<tokio::process::ChildStdin>,
    sync_timeout: Duration,
}

const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// How long an agent may take to stop: longer than kube-proxy's SIGTERM
/// grace plus its `--cleanup` bound (`agent::kubeproxy`).
const AGENT_STOP_GRACE: Duration = Duration::from_secs(45);

/// Longer than any API request holds the control plane (a 50k-Service list
/// takes it for milliseconds).
const CP_LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// One writer of state.json at a time: the lab, and an agent's death or
/// restart reported from the supervisor.
static STATE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `processes` with every agent entry replaced by `agents`.
fn with_agents(processes: &mut Vec<ProcRef>, agents: Vec<ProcRef>) {
    processes.retain(|p| !p.role.starts_with("agent "));
    processes.extend(agents);
}

impl Lab {
    /// Builds the lab. On any error, what was built is removed again.
    pub async fn up(scenario: Scenario, opts: &LabOptions) -> Result<Lab> {
        let run = crate::state::fresh_run_id();
        let mut state = RunState::new(&run, &scenario.file);
        state.backend = opts.backend.as_ref().map(|b| b.to_string());
        let topology = Topology::plan(&scenario, &run);
        state.topology = Some(topology.clone());
        // The record exists before the first kernel object does.
        state
            .save()
            .with_context(|| format!("writing {}", run_dir(&run).display()))?;
        crate::guard::register(&run);
        if opts.announce {
            tracing::info!(
                "svclab: lab {run}{}",
                opts.backend
                    .as_ref()
                    .map_or(String::new(), |b| format!(" for {b}"))
            );
        }
        let cp = match ControlPlane::new(&scenario) {
            Ok(cp) => cp,
            Err(e) => {
                crate::guard::cleanup_registered_run(&run);
                return Err(e.into());
            }
        };
        let mut lab = Lab {
            run: run.clone(),
            scenario,
            topology,
            cp: std::sync::Arc::new(std::sync::Mutex::new(cp)),
            api: None,
            feed: opts.feed,
            kubeconfigs: Vec::new(),
            state,
            prober: Prober::new(),
            agents: None,
            backend: opts.backend.clone(),
            times: UpTimes::default(),
            events_sent: 0,
            agents_started: None,
            workloads: None,
            workloads_stdin: None,
            sync_timeout: opts
                .sync_timeout
                .unwrap_or(DEFAULT_SYNC_TIMEOUT * crate::results::HostFacts::slowdown()),
        };
        // A stop signal cancels the build (a probe, a wait for the
        // workloads or the first sync can take seconds); what was built is
        // removed.
        let built = tokio::select! {
            biased;
            sig = crate::stop::stopped() => Err(anyhow::Error::new(crate::probe::Interrupted(sig))),
            r = lab.build(opts) => r,
        };
        match built {
            Ok(()) => Ok(lab),
            Err(e) => {
                let interrupted = crate::stop::stopping();
                lab.down().await;
                if interrupted {
                    // A namespace being created by a cancelled build step
                    // finishes within milliseconds (no new one starts);
                    // sweep once more.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    crate::guard::cleanup_registered_run(&run);
                }
                Err(e)
            }
        }
    }

    async fn build(&mut self, opts: &LabOptions) -> Result<()> {
        self.times.topology = self
            .topology
            .create()
            .await
            .context("building the topology")?;

        let t = Instant::now();
        self.start_workloads().await?;
        self.times.workloads = t.elapsed();

        let netns: Vec<String> = self
            .topology
            .nodes
            .iter()
            .map(|n| n.netns.clone())
            .collect();
        self.api = Some(ApiServer::start(self.cp.clone(), &netns, API_PORT).await?);
        let names: Vec<String> = self.topology.nodes.iter().map(|n| n.name.clone()).collect();
        self.kubeconfigs = crate::apiserver::write_kubeconfigs(&self.log_dir(), &names, API_PORT)?;

        if !opts.skip_fabric_check {
            let t = Instant::now();
            self.check_fabric().await?;
            self.times.fabric_check = t.elapsed();
        }

        if let Some(backend) = opts.backend.clone() {
            let t = Instant::now();
            self.start_agents(&backend, opts).await?;
            if !opts.defer_initial_sync {
                // Fed through the API, the agents list it themselves; `send`
                // counts it either way.
                let events = self.cp().initial_events();
                self.times.control_plane = t.elapsed();
                let t = Instant::now();
                self.apply(events).await.context("initial sync")?;
                self.times.first_sync = t.elapsed();
            }
        }
        self.save_state();
        Ok(())
    }

    fn log_dir(&self) -> PathBuf {
        run_dir(&self.run)
    }

    /// The control plane (the API's store behind it). Do not hold it across
    /// an await, nor take it twice: the API server takes it for every
    /// request. A guard still alive where it is taken again would hang the
    /// run for ever; it panics instead (and the panic removes the lab).
    pub fn cp(&self) -> std::sync::MutexGuard<'_, ControlPlane> {
        let since = Instant::now();
        loop {
            match self.cp.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    assert!(
                        since.elapsed() < CP_LOCK_PATIENCE,
                        "the control plane's lock was held for {CP_LOCK_PATIENCE:?}: a Lab::cp() guard is alive where it is taken again"
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    /// The newest resourceVersion a proxy's informers see: what "every
    /// agent has synced" waits for.
    pub fn proxy_rv(&self) -> svclab_backends::protocol::StreamVersions {
        self.cp().store().proxy_versions()
    }

    pub fn save_state(&mut self) {
        let services = self.cp().services().cloned().collect();
        self.state.services = services;
        if let Some(agents) = &self.agents {
            with_agents(&mut self.state.processes, agents.proc_refs());
        }
        let _one = STATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.state.save() {
            tracing::warn!("saving the run state: {e}");
        }
    }

    /// Restarts dead agents whose backoff has run out (supervised labs);
    /// for callers between waits (`svclab up`, between checks).
    pub async fn supervise(&mut self) {
        let restarted = match self.agents.as_mut() {
            Some(a) => a.supervise().await,
            None => 0,
        };
        if restarted > 0 {
            self.save_state();
        }
    }

    /// Waits for the next agent message or restart, at most `for_at_most`,
    /// and acts on it; `svclab up` loops on this.
    pub async fn supervise_for(&mut self, for_at_most: Duration) {
        let until = tokio::time::Instant::now() + for_at_most;
        let before = self.agents.as_ref().map(|a| a.pids());
        match self.agents.as_mut() {
            Some(a) => a.tick(until).await,
            None => tokio::time::sleep_until(until).await,
        }
        if self.agents.as_ref().map(|a| a.pids()) != before {
            self.save_state();
        }
    }

    /// Agent deaths and restarts so far.
    pub fn agent_events(&self) -> Vec<crate::agent::supervisor::AgentEvent> {
        self.agents
            .as_ref()
            .map(|a| a.events.clone())
            .unwrap_or_default()
    }

    async fn start_workloads(&mut self) -> Result<()> {
        let servers: Vec<PodServers> = self
            .scenario
            .pods
            .iter()
            .zip(&self.topology.pods)
            .filter(|(p, _)| !p.ports.is_empty())
            .map(|(p, net)| PodServers {
                pod: p.key(),
                netns: net.netns.clone(),
                ip: p.ip,
                ip6: p.ip6,
                ports: p.ports.iter().map(|pp| (pp.port, pp.protocol)).collect(),
            })
            .collect();
        let exe = crate::state::self_exe();
        let log = std::fs::File::create(self.log_dir().join("workloads.log"))?;
        let mut cmd = Command::new(exe);
        cmd.arg0("svclab")
            .arg("workloads")
            .arg("--run")
            .arg(self.run.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // A process group of its own: a terminal's Ctrl-C reaches the
        // harness, which stops the checks first, not the pods' servers under
        // a running check. The server never outlives us.
        crate::netns::prepare_child(cmd.as_std_mut(), None, crate::netns::Group::Own);
        let mut child = cmd.spawn().context("starting the workload server")?;
        if let Some(pr) = child.id().and_then(|pid| ProcRef::of(pid, "workloads")) {
            self.state.processes.push(pr);
            self.save_state();
        }
        let mut stdin = child.stdin.take().expect("piped");
        let mut line = serde_json::to_string(&servers)?;
        line.push('\n');
        stdin.write_all(line.as_bytes()).await?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        match ready {
            Ok(Ok(Some(l))) if l.starts_with("READY") => {}
            other => {
                let log = std::fs::read_to_string(self.log_dir().join("workloads.log"))
                    .unwrap_or_default();
                bail!("the workload server did not start ({other:?}): {log}");
            }
        }
        self.workloads_stdin = Some(stdin);
        self.workloads = Some(child);
        Ok(())
    }

    /// The reachability sample: every node's pods reach a pod on every
    /// other node, and `external` reaches every node IP. A refused
    /// connection proves reachability as well as an answer does.
    async fn check_fabric(&self) -> Result<()> {
        let timeout = Duration::from_secs(2);
        let mut failures = Vec::new();
        let target_of = |node: usize| {
            self.scenario.pods.iter().find(|p| p.node == node).map(|p| {
                let port = p
                    .ports
                    .iter()
                    .find(|pp| pp.protocol != svclab_backends::model::Protocol::Udp);
                (p, port.map_or(9, |pp| pp.port))
            })
        };
        for (from_node, _) in self.topology.nodes.iter().enumerate() {
            let Some((src, _)) = target_of(from_node) else {
                continue;
            };
            let src_ns = &self.topology.pods[self
                .scenario
                .pods
                .iter()
                .position(|p| p == src)
                .expect("pod")]
            .netns;
            for (to_node, _) in self.topology.nodes.iter().enumerate() {
                if to_node == from_node {
                    continue;
                }
                let Some((dst, port)) = target_of(to_node) else {
                    continue;
                };
                let spec = ProbeSpec::new(
                    std::net::SocketAddrV4::new(dst.ip, port),
                    svclab_backends::model::Protocol::Tcp,
                    timeout,
                );
                let r = self.prober.probe(src_ns, spec).await?;
                if !matches!(r.outcome, Outcome::Answered | Outcome::Refused) {
                    failures.push(format!(
                        "pod {} -> pod {} ({}:{port}): {:?}",
                        src.key(),
                        dst.key(),
                        dst.ip,
                        r.outcome
                    ));
                }
            }
        }
        if let Some(ext) = &self.topology.external {
            for n in &self.topology.nodes {
                let spec = ProbeSpec::new(
                    std::net::SocketAddrV4::new(n.ip, 9),
                    svclab_backends::model::Protocol::Tcp,
                    timeout,
                );
                let r = self.prober.probe(ext, spec).await?;
                if !matches!(r.outcome, Outcome::Answered | Outcome::Refused) {
                    failures.push(format!(
                        "external -> node {} ({}): {:?}",
                        n.name, n.ip, r.outcome
                    ));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!(
                "the lab's network does not work:\n  {}",
                failures.join("\n  ")
            )
        }
    }

    async fn start_agents(&mut self, backend: &BackendKind, opts: &LabOptions) -> Result<()> {
        backend
            .capability()
            .map_err(|e| anyhow::anyhow!("backend {backend} cannot run here: {e}"))?;
        let lab = &self.scenario.lab;
        let agents: Vec<(AgentArgs, String)> = self
            .topology
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    AgentArgs {
                        node: n.name.clone(),
                        backend: backend.clone(),
                        node_ip: n.ip,
                        pod_cidr: n.pod_cidr,
                        node_ip_v6: n.ip6,
                        pod_cidr_v6: n.pod_cidr6,
                        zone: self.scenario.nodes.get(i).and_then(|p| p.zone.clone()),
                        cluster_cidr: lab.pod_cidr,
                        cluster_cidr_v6: self.scenario.stack.v6.as_ref().map(|v| v.pod_cidr),
                        service_cidr: lab.service_cidr,
                        service_cidr_v6: self.scenario.stack.v6.as_ref().map(|v| v.service_cidr),
                        run_prefix: format!("sl{}", self.run),
                        min_sync_period_ms: lab.agent.min_sync_period_ms,
                        sync_period_ms: lab.agent.sync_period_ms,
                        node_port_addresses: lab.agent.node_port_addresses.clone(),
                        faults: opts.faults.clone(),
                        dump_dir: opts.dump_dir.as_ref().map(|d| d.join(&n.name)),
                        ipvs_scheduler: opts.ipvs_scheduler.clone().unwrap_or_else(|| "rr".into()),
                        healthz_port: if opts.agent_ports { 10256 } else { 0 },
                        metrics_port: if opts.agent_ports { 10249 } else { 0 },
                        kubeconfig: (self.feed == Feed::Api)
                            .then(|| self.kubeconfigs.get(i).cloned())
                            .flatten(),
                    },
                    n.netns.clone(),
                )
            })
            .collect();
        let hook: Option<crate::agent::supervisor::StateHook> = opts.supervise_agents.then(|| {
            let run = self.run.clone();
            let hook: crate::agent::supervisor::StateHook = std::sync::Arc::new(move |change| {
                use crate::agent::supervisor::StateChange;
                let _one = STATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                match RunState::load(&run) {
                    Ok(mut st) => {
                        match change {
                            StateChange::Exited { node, pid, status } => {
                                for p in &mut st.processes {
                                    if p.pid == pid && p.role == format!("agent {node}") {
                                        p.role = format!(
                                            "agent {node} (exited with {status}; restart pending)"
                                        );
                                    }
                                }
                            }
                            StateChange::Table(procs) => with_agents(&mut st.processes, procs),
                        }
                        if let Err(e) = st.save() {
                            tracing::warn!("svclab: recording the agents in the run state: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("svclab: reading the run state: {e}"),
                }
            });
            hook
        });
        self.agents_started = Some(Instant::now());
        let mut agents =
            Agents::start_with(agents, &self.log_dir(), opts.supervise_agents, hook).await?;
        if self.feed == Feed::Api {
            agents.fed_by_api(self.cp().store().proxy_versions_handle());
        }
        with_agents(&mut self.state.processes, agents.proc_refs());
        self.agents = Some(agents);
        self.save_state();
        Ok(())
    }

    /// Sends `events` to the agents and waits until all have applied them.
    pub async fn apply(&mut self, events: Vec<WatchEvent>) -> Result<()> {
        self.send(events).await?;
        self.wait_synced().await
    }

    /// Sends `events` (which the control plane produced, and its store
    /// already serves) to every agent without waiting for a sync: through
    /// the pipe, or, fed through the API, nothing to send (the agents'
    /// watches have them).
    pub async fn send(&mut self, events: Vec<WatchEvent>) -> Result<()> {
        let Some(agents) = self.agents.as_mut() else {
            return Ok(());
        };
        let proxied = |e: &&WatchEvent| match e.object() {
            None => false,
            Some(o) => match self.feed {
                Feed::Pipe => true,
                Feed::Api => {
                    crate::controlplane::store::proxied_labels(o.metadata().labels.as_ref())
                }
            },
        };
        self.events_sent += events.iter().filter(proxied).count() as u64;
        match self.feed {
            Feed::Pipe => agents.send(&events).await,
            Feed::Api => Ok(()),
        }
    }

    /// Waits until every agent has applied everything the control plane
    /// has produced so far (that a proxy sees).
    pub async fn wait_synced(&mut self) -> Result<()> {
        let rv = self.proxy_rv();
        let timeout = self.sync_timeout;
        if let Some(agents) = self.agents.as_mut() {
            agents.wait_synced(rv, timeout).await?;
        }
        Ok(())
    }

    /// The namespace of a pod.
    pub fn pod_netns(&self, namespace: &str, name: &str) -> Option<&str> {
        self.topology.pod(namespace, name).map(|p| p.netns.as_str())
    }

    /// Removes everything. Never fails: problems are printed, and the
    /// run's namespaces and state are removed regardless.
    pub async fn down(self) {
        self.down_with_logs().await;
    }

    /// [`Lab::down`], returning the lab's logs as they were once the agents
    /// had stopped (see [`crate::results::collect_logs`]).
    pub async fn down_with_logs(mut self) -> Vec<(String, Vec<u8>)> {
        self.prober.close();
        if let Some(agents) = self.agents.take() {
            // Upstream kube-proxy's --cleanup gets its own bound in the agent
            // (`agent::kubeproxy`); this one is longer.
            let grace = AGENT_STOP_GRACE * crate::results::HostFacts::slowdown();
            for p in agents.stop(grace).await {
                tracing::warn!("svclab: {p}");
            }
        }
        self.workloads_stdin = None;
        if let Some(mut w) = self.workloads.take() {
            let _ = w.kill().await;
        }
        let logs = crate::results::collect_logs(&self.log_dir());
        crate::guard::cleanup_registered_run(&self.run);
        logs
    }
}
