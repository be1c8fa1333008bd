//! `svclab bench api`: what the lab's API endpoint costs its proxies.
//!
//! - `list`: one agent (the `none` backend, so its sync is the list) starts
//!   against N Services × E endpoints: the time from the agent's start to
//!   its first synced report, the harness's RSS (the API server and the
//!   control plane behind it) and the agent's;
//! - `fanout`: one EndpointSlice change at a time reaching every agent of
//!   an M-node lab: per agent, the time from the change to its sync
//!   (kube-proxy's network programming latency, from the slice's
//!   trigger-time annotation), p50/p99 over every agent and change;
//! - `feed`: the same for one backend fed through the API and through the
//!   first round's pipe, in the same run: what the API path adds.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use svclab_backends::BackendKind;
use svclab_backends::protocol::SyncReport;

use super::schema::{BenchResults, Case, Status};
use super::stats::Recorder;
use crate::lab::{Feed, Lab, LabOptions};
use crate::scenario::Scenario;
use crate::scenario::generate::{Shape, yaml};

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiSettings {
    pub services: usize,
    pub endpoints: usize,
    pub nodes: usize,
    pub changes: usize,
    pub backend: String,
}

fn rss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib * 1024.0)
}

fn scenario(services: usize, endpoints: usize, nodes: usize) -> Result<Scenario> {
    let shape = Shape {
        services,
        endpoints,
        nodes,
        pools: 2,
        node_ports: false,
        ..Default::default()
    };
    Scenario::parse("bench api", &yaml(&shape)).map_err(|e| anyhow::anyhow!("{e}"))
}

fn opts(backend: BackendKind, feed: Feed) -> LabOptions {
    LabOptions {
        backend: Some(backend),
        feed,
        skip_fabric_check: true,
        sync_timeout: Some(Duration::from_secs(600)),
        ..Default::default()
    }
}

fn failed(r: &mut BenchResults, label: &str, size: u64, e: &anyhow::Error) {
    r.cases.push(Case {
        backend: label.into(),
        size,
        status: Status::Failed,
        reason: Some(format!("{e:#}")),
        detail: serde_json::Value::Null,
    });
}

fn ok(r: &mut BenchResults, label: &str, size: u64) {
    r.cases.push(Case {
        backend: label.into(),
        size,
        status: Status::Ok,
        reason: None,
        detail: serde_json::Value::Null,
    });
}

pub async fn run(s: &ApiSettings, r: &mut BenchResults) -> Result<()> {
    let backend: BackendKind = s.backend.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let size = s.services as u64;
    match list(s).await {
        Ok(m) => {
            ok(r, "list", size);
            r.value(
                "list",
                size,
                "first_sync_through_api_seconds",
                "seconds",
                m.seconds,
            );
            r.value("list", size, "harness_rss_bytes", "bytes", m.harness_rss);
            r.value("list", size, "agent_rss_bytes", "bytes", m.agent_rss);
            r.value(
                "list",
                size,
                "api_and_agent_rss_bytes",
                "bytes",
                m.harness_rss + m.agent_rss,
            );
        }
        Err(e) => failed(r, "list", size, &e),
    }
    stop_check()?;
    let nodes = s.nodes as u64;
    // No coalescing: one flip touches several slices, and a minimum sync
    // period would hold the later ones back (that is sync policy, not delivery).
    match programming(BackendKind::None, Feed::Api, s.nodes, s.changes, Some(0)).await {
        Ok(rec) => {
            ok(r, "fanout", nodes);
            if let Some(sum) = rec.summary() {
                r.dist(
                    "fanout",
                    nodes,
                    "delivery_seconds",
                    "seconds",
                    &sum,
                    &["p50", "p90", "p99", "max"],
                );
            }
        }
        Err(e) => failed(r, "fanout", nodes, &e),
    }
    for feed in [Feed::Pipe, Feed::Api] {
        stop_check()?;
        let label = format!(
            "{backend}/{}",
            if feed == Feed::Api { "api" } else { "pipe" }
        );
        match programming(backend.clone(), feed, 2, s.changes, None).await {
            Ok(rec) => {
                ok(r, &label, 2);
                if let Some(sum) = rec.summary() {
                    r.dist(
                        &label,
                        2,
                        "network_programming_seconds",
                        "seconds",
                        &sum,
                        &["p50", "p90", "p99"],
                    );
                }
            }
            Err(e) => failed(r, &label, 2, &e),
        }
    }
    Ok(())
}

fn stop_check() -> Result<()> {
    if crate::stop::stopping() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

struct ListFigures {
    seconds: f64,
    harness_rss: f64,
    agent_rss: f64,
}

async fn list(s: &ApiSettings) -> Result<ListFigures> {
    let scn = scenario(s.services, s.endpoints, 1)?;
    let lab = Lab::up(scn, &opts(BackendKind::None, Feed::Api))
        .await
        .context("bringing the lab up")?;
    let seconds = lab.times.first_sync.as_secs_f64();
    let harness_rss = rss_bytes();
    let agent_rss = lab
        .agents
        .as_ref()
        .and_then(|a| a.reports.last())
        .map_or(0.0, |r: &SyncReport| r.cpu.self_max_rss_kib as f64 * 1024.0);
    lab.down().await;
    Ok(ListFigures {
        seconds,
        harness_rss,
        agent_rss,
    })
}

/// `changes` readiness flips of one endpoint, one at a time, each waited
/// for on every agent; the programming latencies every agent reported.
async fn programming(
    backend: BackendKind,
    feed: Feed,
    nodes: usize,
    changes: usize,
    min_sync_period_ms: Option<u64>,
) -> Result<Recorder> {
    let mut scn = scenario(10, 4, nodes)?;
    if let Some(ms) = min_sync_period_ms {
        scn.lab.agent.min_sync_period_ms = ms;
    }
    let mut lab = Lab::up(scn, &opts(backend, feed))
        .await
        .context("bringing the lab up")?;
    let r = flips(&mut lab, changes).await;
    lab.down().await;
    r
}

async fn flips(lab: &mut Lab, changes: usize) -> Result<Recorder> {
    let pod = lab
        .scenario
        .pods
        .iter()
        .find(|p| !p.client && p.active)
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .context("the scenario has no pod")?;
    let from = lab.agents.as_ref().map_or(0, |a| a.reports.len());
    let mut rec = Recorder::new();
    for i in 0..changes {
        let events = lab.cp().set_ready(&pod.0, &pod.1, i % 2 == 1)?;
        lab.apply(events).await?;
        // Spaced beyond the minimum sync period: each change is its own sync.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    if let Some(a) = lab.agents.as_mut() {
        a.drain();
        for rep in &a.reports[from..] {
            for &p in &rep.programming_seconds {
                rec.record(p);
            }
        }
    }
    Ok(rec)
}
