//! `svclab bench sync`: rule-sync cost at scale, per backend and Service
//! count. For each case it brings up a lab (one node by default: one agent,
//! clean CPU figures), times the first full sync from the agent's report,
//! plays a cycle of single-Service changes (timing each sync and the
//! network programming latency a client sees), measures the data path to
//! the Service iptables matches last, and after the lab is gone replays the
//! agent's dumped tool input with the bare tool: the floor.
//!
//! Every wait is bounded by the per-size budget; a full sync that exceeds
//! it is reported "not finished", its tool is killed, and the run goes on
//! (larger sizes of that backend are skipped).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use svclab_backends::BackendKind;
use svclab_backends::model::IpFamily;
use svclab_backends::protocol::{SyncMode, SyncReport};

use super::changes::{ChangeKind, Changer, with_bench_objects};
use super::datapath::{self, Datapath};
use super::floor::{self, ToolRun};
use super::npl::{self, Watch};
use super::procs;
use super::schema::{BenchResults, Case, Status};
use super::stats::{Recorder, Summary};
use crate::lab::{Lab, LabOptions};
use crate::scenario::Scenario;
use crate::scenario::generate::{Shape, yaml};

/// Partial syncs are one Service each; a minute is generous at any size.
const PARTIAL_LIMIT: Duration = Duration::from_secs(120);
/// How long a client may lag behind a finished sync before the change
/// counts as never seen.
const NPL_GRACE: Duration = Duration::from_secs(10);
const NPL_INTERVAL: Duration = Duration::from_millis(2);
const NPL_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// The prober's vantage threads are named `probe:<namespace>`.
const PROBER_THREADS: &str = "probe:";
/// Periodic full resyncs would land between the partial syncs: off.
const RESYNC_OFF_MS: u64 = 24 * 3600 * 1000;
/// Distributions are reported at these statistics.
const QUANTILES: [&str; 4] = ["p50", "p90", "p99", "max"];

/// What `bench sync` was asked to do.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncSettings {
    pub scenario: Option<PathBuf>,
    pub services: Vec<usize>,
    pub endpoints: usize,
    pub backends: Vec<String>,
    pub partials: usize,
    pub budget_seconds: u64,
    pub nodes: usize,
    pub connects: usize,
    /// The lab's IP families, one series each.
    pub families: Vec<SyncFamily>,
    pub min_sync_period_ms: u64,
    pub sync_period_ms: u64,
}

/// A sync series' IP families (`--family`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncFamily {
    Ipv4,
    Ipv6,
    Dual,
}

impl SyncFamily {
    pub fn parse(s: &str) -> anyhow::Result<SyncFamily> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ipv4" => Ok(SyncFamily::Ipv4),
            "ipv6" => Ok(SyncFamily::Ipv6),
            "dual" => Ok(SyncFamily::Dual),
            other => anyhow::bail!("--family {other:?}: expected ipv4, ipv6 or dual"),
        }
    }

    /// The lab's `ipFamilies`, primary first.
    pub fn families(self) -> Vec<IpFamily> {
        match self {
            SyncFamily::Ipv4 => vec![IpFamily::IPv4],
            SyncFamily::Ipv6 => vec![IpFamily::IPv6],
            SyncFamily::Dual => vec![IpFamily::IPv4, IpFamily::IPv6],
        }
    }

    /// The series' name in results: the backend's own for IPv4 (as before
    /// families existed), `<backend>/ipv6` or `<backend>/dual` otherwise.
    pub fn label(self, kind: &BackendKind) -> String {
        match self {
            SyncFamily::Ipv4 => kind.to_string(),
            SyncFamily::Ipv6 => format!("{kind}/ipv6"),
            SyncFamily::Dual => format!("{kind}/dual"),
        }
    }
}

/// One change of the cycle and the syncs that applied it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartialRecord {
    pub change: ChangeKind,
    pub syncs: Vec<SyncReport>,
    /// From emitting the change to a client seeing it (`None`: not seen,
    /// or a backend without a dataplane).
    pub npl_seconds: Option<f64>,
    pub npl_probes: u64,
    /// From emitting the change to every agent reporting it synced.
    pub wait_seconds: f64,
    /// The harness's CPU over that wait, the NPL prober's threads aside.
    pub harness_cpu_seconds: f64,
    /// The NPL prober's CPU over that wait.
    pub prober_cpu_seconds: f64,
}

/// Everything measured for one backend at one size.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncDetail {
    pub services: usize,
    pub endpoints: u64,
    pub nodes: usize,
    pub lab_up_seconds: f64,
    /// The first full sync of every agent.
    pub full: Vec<SyncReport>,
    /// From sending the initial list to every agent having synced it.
    pub first_sync_end_to_end_seconds: f64,
    pub first_sync_harness_cpu_seconds: f64,
    pub partials: Vec<PartialRecord>,
    pub datapath: Option<Datapath>,
    /// The bare tool on the first node's dumped inputs.
    pub floor: Vec<ToolRun>,
    pub floor_error: Option<String>,
    /// Seconds spent waiting for the kernel to free the lab's namespaces.
    pub netns_reclaim_seconds: f64,
}

/// svclab's agents read the pipe: the first sync is timed from the moment
/// the list is sent, which the pipe lets the bench choose. Upstream
/// kube-proxy reads only the API: it lists as it starts, so its first sync
/// is timed from the agents' start (kube-proxy's own figure, from its
/// metrics, is the full-sync duration).
fn feed_for(kind: &BackendKind) -> crate::lab::Feed {
    match kind {
        BackendKind::KubeProxy { .. } => crate::lab::Feed::Api,
        _ => crate::lab::Feed::Pipe,
    }
}

/// A kube-proxy agent's report that proves versions programmed by an
/// earlier sync: no kube-proxy sync of its own, so no figures.
fn proof_only(r: &SyncReport) -> bool {
    r.wall_seconds == 0.0
}

fn has_dataplane(kind: &BackendKind) -> bool {
    *kind != BackendKind::None
}

/// The scenario for one size: generated, or the given file; plus the
/// bench's own objects, and periodic resyncs off.
pub fn scenario_for(
    settings: &SyncSettings,
    services: usize,
    family: SyncFamily,
) -> Result<Scenario> {
    let mut scn = match &settings.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            with_bench_objects(&path.display().to_string(), &text)?
        }
        None => {
            let shape = Shape {
                services,
                endpoints: settings.endpoints,
                nodes: settings.nodes,
                families: family.families(),
                ..Shape::default()
            };
            with_bench_objects(
                &format!("generated {services}x{}", settings.endpoints),
                &yaml(&shape),
            )?
        }
    };
    scn.lab.agent.sync_period_ms = RESYNC_OFF_MS;
    Ok(scn)
}

/// How a case ended, with whatever was measured before it ended.
pub struct CaseRun {
    pub status: Status,
    pub reason: Option<String>,
    pub detail: SyncDetail,
}

fn agent_pids(lab: &Lab) -> Vec<u32> {
    lab.agents
        .as_ref()
        .map(|a| a.pids().into_iter().map(|(_, p)| p).collect())
        .unwrap_or_default()
}

fn reports_since(lab: &mut Lab, from: usize) -> Vec<SyncReport> {
    match lab.agents.as_mut() {
        Some(a) => {
            a.drain();
            a.reports[from.min(a.reports.len())..].to_vec()
        }
        None => Vec::new(),
    }
}

fn report_count(lab: &Lab) -> usize {
    lab.agents.as_ref().map_or(0, |a| a.reports.len())
}

/// The client pod on the first node: where probes start.
fn client_netns(lab: &Lab) -> Option<String> {
    let pod = lab.scenario.pods.iter().find(|p| p.client && p.node == 0)?;
    lab.pod_netns(&pod.namespace, &pod.name).map(String::from)
}

/// Runs one backend at one size. Never hangs: each wait has a bound.
pub async fn run_case(
    kind: &BackendKind,
    scn: Scenario,
    settings: &SyncSettings,
    dump_root: &Path,
) -> CaseRun {
    let budget = Duration::from_secs(settings.budget_seconds);
    let mut detail = SyncDetail {
        // The bench's probe Service aside.
        services: scn.services.len().saturating_sub(1),
        endpoints: settings.endpoints as u64,
        nodes: scn.nodes.len(),
        ..Default::default()
    };
    let netns_before = procs::live_netns();
    let opts = LabOptions {
        backend: Some(kind.clone()),
        dump_dir: Some(dump_root.to_path_buf()),
        sync_timeout: Some(budget),
        defer_initial_sync: true,
        feed: feed_for(kind),
        ..Default::default()
    };
    let t = Instant::now();
    let mut lab = match Lab::up(scn, &opts).await {
        Ok(l) => l,
        Err(e) => {
            return CaseRun {
                status: Status::Failed,
                reason: Some(format!("bringing the lab up: {e:#}")),
                detail,
            };
        }
    };
    detail.lab_up_seconds = t.elapsed().as_secs_f64();
    let first_node = lab.topology.nodes[0].name.clone();
    let (status, reason) = match drive(&mut lab, kind, settings, budget, &mut detail).await {
        Ok(()) => (Status::Ok, None),
        Err(End::NotFinished(why)) => (Status::NotFinished, Some(why)),
        Err(End::Failed(e)) => (Status::Failed, Some(format!("{e:#}"))),
    };
    lab.down().await;
    // The floor runs alone: not while the kernel still frees the lab.
    detail.netns_reclaim_seconds = tokio::task::spawn_blocking(move || {
        procs::wait_netns_freed(netns_before, 20, Duration::from_secs(120))
    })
    .await
    .map_or(0.0, |d| d.as_secs_f64());
    if status == Status::Ok && floor::tool_of(kind).is_some() {
        let dir = dump_root.join(&first_node);
        let k = kind.clone();
        match tokio::task::spawn_blocking(move || floor::replay(&k, &dir, budget)).await {
            Ok(Ok(runs)) => detail.floor = runs,
            Ok(Err(e)) => detail.floor_error = Some(e.to_string()),
            Err(e) => detail.floor_error = Some(e.to_string()),
        }
    }
    let _ = std::fs::remove_dir_all(dump_root);
    CaseRun {
        status,
        reason,
        detail,
    }
}

enum End {
    NotFinished(String),
    Failed(anyhow::Error),
}

fn failed(e: impl Into<anyhow::Error>) -> End {
    End::Failed(e.into())
}

async fn drive(
    lab: &mut Lab,
    kind: &BackendKind,
    settings: &SyncSettings,
    budget: Duration,
    detail: &mut SyncDetail,
) -> Result<(), End> {
    first_sync(lab, budget, detail).await?;
    let client = client_netns(lab)
        .context("the scenario has no client pod on the first node")
        .map_err(failed)?;
    // The agent holds a change back until the minimum sync period has
    // passed since its last sync; spacing the changes keeps that wait out
    // of the programming latency.
    let spacing = Duration::from_millis(lab.scenario.lab.agent.min_sync_period_ms + 20);
    let mut changer = Changer::new(lab.scenario.stack.families.len() == 2);
    for _ in 0..settings.partials {
        tokio::time::sleep(spacing).await;
        let record = partial(lab, kind, &mut changer, &client)
            .await
            .map_err(failed)?;
        detail.partials.push(record);
    }
    detail.datapath = Some(
        data_path(lab, kind, settings.connects, &client)
            .await
            .map_err(failed)?,
    );
    Ok(())
}

async fn first_sync(lab: &mut Lab, budget: Duration, detail: &mut SyncDetail) -> Result<(), End> {
    let from = report_count(lab);
    let events = lab.cp().initial_events();
    let cpu = procs::self_cpu();
    let t = match lab.feed {
        crate::lab::Feed::Api => lab.agents_started.unwrap_or_else(Instant::now),
        crate::lab::Feed::Pipe => Instant::now(),
    };
    lab.send(events).await.map_err(failed)?;
    let rv = lab.proxy_rv();
    let left = budget.saturating_sub(t.elapsed());
    let waited = match lab.agents.as_mut() {
        Some(a) => a.wait_synced(rv, left).await,
        None => Ok(()),
    };
    detail.first_sync_end_to_end_seconds = t.elapsed().as_secs_f64();
    detail.first_sync_harness_cpu_seconds = procs::self_cpu() - cpu;
    match waited {
        Ok(()) => {}
        Err(crate::agent::supervisor::AgentError::Timeout { .. }) => {
            // Stop the tool so the agent's sync fails and it can exit.
            let killed = procs::kill_descendants(&agent_pids(lab));
            return Err(End::NotFinished(format!(
                "the first full sync did not finish within the {budget:?} budget \
                 ({killed} tool process(es) killed)"
            )));
        }
        Err(e) => return Err(failed(e)),
    }
    detail.full = reports_since(lab, from)
        .into_iter()
        .filter(|r| r.mode == SyncMode::Full && r.error.is_none() && !proof_only(r))
        .collect();
    if detail.full.is_empty() {
        return Err(failed(anyhow::anyhow!(
            "the agents synced without a full sync report"
        )));
    }
    Ok(())
}

async fn partial(
    lab: &mut Lab,
    kind: &BackendKind,
    changer: &mut Changer,
    client: &str,
) -> Result<PartialRecord> {
    let change = changer.next(&mut lab.cp())?;
    let from = report_count(lab);
    let rt = lab.prober.vantage(client)?;
    let cpu = procs::self_cpu();
    let prober_cpu = procs::threads_cpu(PROBER_THREADS);
    let since = Instant::now();
    let watcher = has_dataplane(kind).then(|| {
        rt.spawn(npl::watch(Watch {
            target: change.target,
            signal: change.signal,
            since,
            interval: NPL_INTERVAL,
            probe_timeout: NPL_PROBE_TIMEOUT,
            deadline: since + PARTIAL_LIMIT + NPL_GRACE,
        }))
    });
    lab.send(change.events).await?;
    let rv = lab.proxy_rv();
    if let Some(a) = lab.agents.as_mut() {
        a.wait_synced(rv, PARTIAL_LIMIT)
            .await
            .with_context(|| format!("{:?}", change.kind))?;
    }
    let wait = since.elapsed();
    let prober_cpu = procs::threads_cpu(PROBER_THREADS) - prober_cpu;
    let harness_cpu = procs::self_cpu() - cpu - prober_cpu;
    let seen = match watcher {
        Some(mut w) => match tokio::time::timeout(NPL_GRACE, &mut w).await {
            Ok(joined) => joined?,
            Err(_) => {
                w.abort();
                None
            }
        },
        None => None,
    };
    Ok(PartialRecord {
        change: change.kind,
        syncs: reports_since(lab, from)
            .into_iter()
            .filter(|r| r.error.is_none() && !proof_only(r))
            .collect(),
        npl_seconds: seen.map(|s| s.latency.as_secs_f64()),
        npl_probes: seen.map_or(0, |s| s.probes),
        wait_seconds: wait.as_secs_f64(),
        harness_cpu_seconds: harness_cpu.max(0.0),
        prober_cpu_seconds: prober_cpu,
    })
}

async fn data_path(
    lab: &mut Lab,
    kind: &BackendKind,
    connects: usize,
    client: &str,
) -> Result<Datapath> {
    // The primary family's ClusterIPs, as the changes' probes use.
    let primary = lab.scenario.stack.families[0];
    let targets = crate::checks::expect::targets(&lab.cp(), primary);
    let target = datapath::deepest(targets.iter().filter(|t| !t.service.starts_with("bench-")))
        .context("no TCP Service with endpoints to connect to")?;
    let service = format!("{}/{}", target.namespace, target.service);
    let (addr, direct) = if has_dataplane(kind) {
        (target.vip_addr(), false)
    } else {
        let ep = target.cluster()[0];
        (std::net::SocketAddr::new(ep.ip, ep.port), true)
    };
    let pids = agent_pids(lab);
    datapath::measure(&lab.prober, client, service, addr, direct, connects, &pids).await
}

fn walls(reports: &[&SyncReport]) -> Recorder {
    Recorder::from_values(reports.iter().map(|r| r.wall_seconds))
}

fn cpus(reports: &[&SyncReport]) -> Recorder {
    Recorder::from_values(reports.iter().map(|r| r.cpu.total_seconds()))
}

fn put(r: &mut BenchResults, backend: &str, size: u64, metric: &str, unit: &str, rec: &Recorder) {
    if let Some(s) = rec.summary() {
        r.dist(backend, size, metric, unit, &s, &QUANTILES);
    }
}

/// The figures of one case, named after kube-proxy's metrics where one
/// exists.
pub fn add_figures(r: &mut BenchResults, backend: &str, size: u64, d: &SyncDetail) {
    let full: Vec<&SyncReport> = d.full.iter().collect();
    let partial: Vec<&SyncReport> = d.partials.iter().flat_map(|p| &p.syncs).collect();
    let all: Vec<&SyncReport> = full.iter().chain(&partial).copied().collect();
    put(
        r,
        backend,
        size,
        "sync_proxy_rules_duration_seconds",
        "seconds",
        &walls(&all),
    );
    put(
        r,
        backend,
        size,
        "sync_full_proxy_rules_duration_seconds",
        "seconds",
        &walls(&full),
    );
    put(
        r,
        backend,
        size,
        "sync_partial_proxy_rules_duration_seconds",
        "seconds",
        &walls(&partial),
    );
    put(
        r,
        backend,
        size,
        "sync_full_cpu_seconds",
        "seconds",
        &cpus(&full),
    );
    put(
        r,
        backend,
        size,
        "sync_partial_cpu_seconds",
        "seconds",
        &cpus(&partial),
    );
    if let Some(f) = full.first() {
        r.value(
            backend,
            size,
            "sync_full_agent_max_rss_bytes",
            "bytes",
            f.cpu.self_max_rss_kib as f64 * 1024.0,
        );
        if f.cpu.children_max_rss_kib > 0 {
            r.value(
                backend,
                size,
                "sync_full_tool_max_rss_bytes",
                "bytes",
                f.cpu.children_max_rss_kib as f64 * 1024.0,
            );
        }
        r.value(
            backend,
            size,
            "first_sync_end_to_end_seconds",
            "seconds",
            d.first_sync_end_to_end_seconds,
        );
    }
    let npl = Recorder::from_values(d.partials.iter().filter_map(|p| p.npl_seconds));
    put(
        r,
        backend,
        size,
        "network_programming_duration_seconds",
        "seconds",
        &npl,
    );
    let agent_npl = Recorder::from_values(
        partial
            .iter()
            .flat_map(|s| s.programming_seconds.iter().copied()),
    );
    put(
        r,
        backend,
        size,
        "network_programming_duration_seconds_agent",
        "seconds",
        &agent_npl,
    );
    if let Some(dp) = &d.datapath {
        if let Some(l) = &dp.latency {
            r.dist(
                backend,
                size,
                "datapath_connect_latency_seconds",
                "seconds",
                l,
                &QUANTILES,
            );
        }
        if let Some(c) = dp.agent_cpu_per_connection_seconds {
            r.value(
                backend,
                size,
                "datapath_agent_cpu_per_connection_seconds",
                "seconds",
                c,
            );
        }
    }
    floor_figures(r, backend, size, &full, &partial, &d.floor);
    harness_figures(r, backend, size, d, &full, &partial);
}

fn floor_figures(
    r: &mut BenchResults,
    backend: &str,
    size: u64,
    full: &[&SyncReport],
    partial: &[&SyncReport],
    floor: &[ToolRun],
) {
    let tool_full = floor.iter().find(|t| t.mode == SyncMode::Full);
    let tool_partial: Vec<&ToolRun> = floor
        .iter()
        .filter(|t| t.mode == SyncMode::Partial)
        .collect();
    if let (Some(tf), Some(af)) = (tool_full, full.first()) {
        r.value(
            backend,
            size,
            "floor_full_seconds",
            "seconds",
            tf.wall_seconds,
        );
        r.value(
            backend,
            size,
            "floor_full_cpu_seconds",
            "seconds",
            tf.cpu_seconds,
        );
        if tf.wall_seconds > 0.0 {
            r.value(
                backend,
                size,
                "floor_full_ratio",
                "ratio",
                af.wall_seconds / tf.wall_seconds,
            );
        }
        if tf.cpu_seconds > 0.0 {
            r.value(
                backend,
                size,
                "floor_full_cpu_ratio",
                "ratio",
                af.cpu.total_seconds() / tf.cpu_seconds,
            );
        }
    }
    let tp = Recorder::from_values(tool_partial.iter().map(|t| t.wall_seconds)).summary();
    // Only partial syncs that ran the tool have a floor to compare with.
    let ap = Recorder::from_values(
        partial
            .iter()
            .filter(|s| s.written > 0)
            .map(|s| s.wall_seconds),
    )
    .summary();
    if let Some(tp) = tp {
        r.dist(
            backend,
            size,
            "floor_partial_seconds",
            "seconds",
            &tp,
            &QUANTILES,
        );
        if let Some(ap) = ap
            && tp.p50 > 0.0
        {
            r.value(
                backend,
                size,
                "floor_partial_ratio",
                "ratio",
                ap.p50 / tp.p50,
            );
        }
    }
}

fn harness_figures(
    r: &mut BenchResults,
    backend: &str,
    size: u64,
    d: &SyncDetail,
    full: &[&SyncReport],
    partial: &[&SyncReport],
) {
    // Below a millisecond of agent CPU the ratio is noise over nothing.
    const MIN_AGENT_CPU: f64 = 1e-3;
    let agent_full: f64 = full.iter().map(|s| s.cpu.total_seconds()).sum();
    r.value(
        backend,
        size,
        "harness_cpu_full_sync_seconds",
        "seconds",
        d.first_sync_harness_cpu_seconds,
    );
    if agent_full >= MIN_AGENT_CPU {
        r.value(
            backend,
            size,
            "harness_cpu_ratio_full",
            "ratio",
            d.first_sync_harness_cpu_seconds / agent_full,
        );
    }
    let agent_partial: f64 = partial.iter().map(|s| s.cpu.total_seconds()).sum();
    let harness_partial: f64 = d.partials.iter().map(|p| p.harness_cpu_seconds).sum();
    if agent_partial >= MIN_AGENT_CPU {
        r.value(
            backend,
            size,
            "harness_cpu_ratio_partial",
            "ratio",
            harness_partial / agent_partial,
        );
    }
    let prober = Recorder::from_values(
        d.partials
            .iter()
            .filter(|p| p.npl_seconds.is_some())
            .map(|p| p.prober_cpu_seconds),
    );
    put(
        r,
        backend,
        size,
        "npl_prober_cpu_seconds",
        "seconds",
        &prober,
    );
}

/// A line for the terminal as each case ends.
pub fn progress_line(backend: &str, size: u64, run: &CaseRun) -> String {
    let d = &run.detail;
    let s = |v: Option<Summary>| v.map_or("-".into(), |s| format!("{:.1} ms", s.p50 * 1e3));
    let full = d
        .full
        .first()
        .map_or("-".into(), |f| format!("{:.2} s", f.wall_seconds));
    let partial = s(Recorder::from_values(
        d.partials
            .iter()
            .flat_map(|p| p.syncs.iter().map(|s| s.wall_seconds)),
    )
    .summary());
    let npl = s(Recorder::from_values(d.partials.iter().filter_map(|p| p.npl_seconds)).summary());
    let dp = d
        .datapath
        .as_ref()
        .and_then(|x| x.latency)
        .map_or("-".into(), |l| format!("{:.0} µs", l.p50 * 1e6));
    format!(
        "bench sync: {backend:>16} {size:>6} Services: {} · full {full} · partial p50 {partial} · \
         NPL p50 {npl} · connect p50 {dp}{}",
        run.status,
        run.reason
            .as_deref()
            .map_or(String::new(), |r| format!(" ({r})"))
    )
}

/// Turns a finished case into the results.
pub fn record(r: &mut BenchResults, backend: &str, size: u64, run: CaseRun) {
    add_figures(r, backend, size, &run.detail);
    r.cases.push(Case {
        backend: backend.into(),
        size,
        status: run.status,
        reason: run.reason,
        detail: serde_json::to_value(&run.detail).unwrap_or_default(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_parse_and_name_their_series() {
        let kind: BackendKind = "kube-proxy:nftables".parse().unwrap();
        for (text, family, label) in [
            ("ipv4", vec![IpFamily::IPv4], "kube-proxy:nftables"),
            ("IPv6", vec![IpFamily::IPv6], "kube-proxy:nftables/ipv6"),
            (
                " dual",
                vec![IpFamily::IPv4, IpFamily::IPv6],
                "kube-proxy:nftables/dual",
            ),
        ] {
            let f = SyncFamily::parse(text).unwrap();
            assert_eq!(f.families(), family);
            assert_eq!(f.label(&kind), label);
        }
        let e = SyncFamily::parse("ip6").unwrap_err().to_string();
        assert!(e.contains("\"ip6\": expected ipv4, ipv6 or dual"), "{e}");
    }

    /// A dual-stack series' bench Services are PreferDualStack, the
    /// generated and the bench's own alike, so each change reaches both
    /// of a proxy's families.
    #[test]
    fn a_dual_series_makes_every_service_dual_stack() {
        let settings = SyncSettings {
            scenario: None,
            services: vec![20],
            endpoints: 2,
            backends: vec![],
            partials: 0,
            budget_seconds: 1,
            nodes: 1,
            connects: 0,
            families: vec![SyncFamily::Dual],
            min_sync_period_ms: 0,
            sync_period_ms: 0,
        };
        let scn = scenario_for(&settings, 20, SyncFamily::Dual).unwrap();
        assert_eq!(scn.stack.families, [IpFamily::IPv4, IpFamily::IPv6]);
        assert_eq!(scn.services.len(), 21);
        for s in &scn.services {
            let policy = s.spec.as_ref().unwrap().ip_family_policy.as_deref();
            assert_eq!(policy, Some("PreferDualStack"), "{:?}", s.metadata.name);
        }
        let v6 = scenario_for(&settings, 20, SyncFamily::Ipv6).unwrap();
        assert_eq!(v6.stack.families, [IpFamily::IPv6]);
    }
}
