//! `svclab churn`: bring a lab up with agents, play the scenario's churn
//! (or a default burst) against it, and account for every change: the
//! watch events sent to each agent must equal the events its syncs report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use svclab_backends::BackendKind;
use svclab_backends::protocol::SyncMode;

use crate::controlplane::churn::schedule;
use crate::lab::{Lab, LabOptions};
use crate::scenario::{Churn, Scenario};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAccount {
    pub full_syncs: usize,
    pub partial_syncs: usize,
    pub failed_syncs: usize,
    /// Watch events the syncs say they folded in.
    pub events_synced: u64,
    pub last_resource_version: u64,
    pub partial_wall_p50_ms: f64,
    /// Times the agent died and was restarted; a restarted agent's new
    /// list replaces the events it missed, so it is accounted for by the
    /// resourceVersion it reached.
    pub restarts: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChurnReport {
    pub backend: String,
    pub services: usize,
    pub steps: usize,
    /// Watch events every agent was sent (initial list and churn).
    pub events_sent: u64,
    pub resource_version: u64,
    pub nodes: BTreeMap<String, NodeAccount>,
    /// Control plane: time to compute the initial state and its events.
    pub control_plane_seconds: f64,
    pub harness_max_rss_mib: f64,
    pub up_seconds: f64,
    pub churn_seconds: f64,
    pub accounted: bool,
}

/// `svclab churn -o text`: the verdict and one line per node.
pub fn text(r: &ChurnReport) -> String {
    let mut out = format!(
        "churn on {}: {} Services, {} steps, {} events sent (resourceVersion {}) in {:.1} s; {}\n",
        r.backend,
        r.services,
        r.steps,
        r.events_sent,
        r.resource_version,
        r.churn_seconds,
        if r.accounted {
            "every agent accounted for every change"
        } else {
            "NOT every change was accounted for"
        }
    );
    for (node, a) in &r.nodes {
        out.push_str(&format!(
            "  {node:<12} full {} partial {} failed {} events {} rv {} p50 {:.2} ms restarts {}\n",
            a.full_syncs,
            a.partial_syncs,
            a.failed_syncs,
            a.events_synced,
            a.last_resource_version,
            a.partial_wall_p50_ms,
            a.restarts
        ));
    }
    out
}

/// The burst used when a scenario has no `churn:` section.
pub fn default_churn(seed: u64) -> Churn {
    Churn {
        seed,
        duration_seconds: 5.0,
        endpoint_flaps_per_second: 5.0,
        terminating_per_second: 1.0,
        services_created_per_second: 1.0,
        services_deleted_per_second: 1.0,
        scale: Vec::new(),
    }
}

/// Peak RSS of this process (the harness: control plane and prober).
fn max_rss_mib() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|r| r.max_rss() as f64 / 1024.0)
        .unwrap_or(0.0)
}

/// Plays the schedule in real time, sending each step's events at once and
/// waiting for the agents only at the end. Returns (steps, seconds).
async fn play(lab: &mut Lab, churn: &Churn) -> anyhow::Result<(usize, f64)> {
    let steps = schedule(churn, &lab.cp());
    let start = Instant::now();
    for step in &steps {
        let due = start + Duration::from_secs_f64(step.at);
        tokio::time::sleep_until(due.into()).await;
        let events = lab.cp().apply(&step.action)?;
        lab.send(events).await?;
    }
    lab.wait_synced().await?;
    Ok((steps.len(), start.elapsed().as_secs_f64()))
}

pub async fn run(
    scn: Scenario,
    backend: BackendKind,
    seed: Option<u64>,
) -> anyhow::Result<ChurnReport> {
    let mut churn = scn.lab.churn.clone().unwrap_or_else(|| default_churn(1));
    if let Some(s) = seed {
        churn.seed = s;
    }
    let t = Instant::now();
    // A stop signal is left to this function: it removes the lab itself.
    let _cooperation = crate::guard::cooperate();
    let opts = LabOptions {
        backend: Some(backend.clone()),
        sync_timeout: Some(Duration::from_secs(1800)),
        supervise_agents: true,
        ..Default::default()
    };
    let services = scn.services.len();
    let mut lab = Lab::up(scn, &opts).await?;
    let up_seconds = t.elapsed().as_secs_f64();
    let control_plane_seconds = lab.times.control_plane.as_secs_f64();
    let played = tokio::select! {
        biased;
        sig = crate::stop::stopped() => Err(crate::probe::Interrupted(sig).into()),
        r = play(&mut lab, &churn) => r,
    };
    let (steps, churn_seconds) = match played {
        Ok(x) => x,
        Err(e) => {
            lab.down().await;
            return Err(e);
        }
    };
    let rv = lab.proxy_rv();
    let rv = rv.services.max(rv.endpoint_slices);
    let events_sent = lab.events_sent;
    let mut nodes = BTreeMap::new();
    if let Some(agents) = lab.agents.as_mut() {
        agents.drain();
        let restarts = agents.restarts();
        for n in &lab.topology.nodes {
            let mine: Vec<_> = agents.reports.iter().filter(|r| r.node == n.name).collect();
            let mut partial: Vec<f64> = mine
                .iter()
                .filter(|r| r.mode == SyncMode::Partial)
                .map(|r| r.wall_seconds * 1e3)
                .collect();
            partial.sort_by(f64::total_cmp);
            nodes.insert(
                n.name.clone(),
                NodeAccount {
                    full_syncs: mine.iter().filter(|r| r.mode == SyncMode::Full).count(),
                    partial_syncs: partial.len(),
                    failed_syncs: mine.iter().filter(|r| r.error.is_some()).count(),
                    events_synced: mine
                        .iter()
                        .map(|r| r.service_events + r.endpoint_events)
                        .sum(),
                    last_resource_version: mine
                        .iter()
                        .map(|r| r.resource_version)
                        .max()
                        .unwrap_or(0),
                    partial_wall_p50_ms: partial.get(partial.len() / 2).copied().unwrap_or(0.0),
                    restarts: restarts.get(&n.name).copied().unwrap_or(0),
                },
            );
        }
    }
    lab.down().await;
    let accounted = !nodes.is_empty()
        && nodes.values().all(|n| {
            (n.events_synced == events_sent || n.restarts > 0)
                && n.last_resource_version == rv
                && n.failed_syncs == 0
        });
    Ok(ChurnReport {
        backend: backend.to_string(),
        services,
        steps,
        events_sent,
        resource_version: rv,
        nodes,
        control_plane_seconds,
        harness_max_rss_mib: max_rss_mib(),
        up_seconds,
        churn_seconds,
        accounted,
    })
}
