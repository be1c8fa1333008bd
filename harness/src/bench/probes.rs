//! `svclab bench probes`: the probe engine's throughput. One node, one
//! ClusterIP Service with several endpoints, a backend that DNATs
//! (iptables by default); a client pod runs TCP probes (connect, `whoami`,
//! read the answer) through the VIP, `concurrency` at a time. Reports
//! answered probes per second, the connect latency distribution, and the
//! CPU the harness (the prober) and the workload server spent per probe.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use svclab_backends::BackendKind;
use svclab_backends::model::{IpFamily, Protocol};

use super::procs;
use super::schema::{BenchResults, Case, Status};
use super::stats::{Recorder, Summary};

use crate::lab::{Lab, LabOptions};
use crate::probe::{Outcome, ProbeSpec};
use crate::scenario::Scenario;
use crate::scenario::generate::{Shape, yaml};

const WARMUP: usize = 500;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSettings {
    pub backend: String,
    pub endpoints: usize,
    pub probes: usize,
    pub concurrency: usize,
    pub runs: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRun {
    pub probes: usize,
    pub answered: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub connect_latency: Option<Summary>,
    pub harness_cpu_per_probe_seconds: f64,
    pub workloads_cpu_per_probe_seconds: Option<f64>,
    /// Outcomes other than answered, by kind.
    pub failures: std::collections::BTreeMap<String, usize>,
}

fn outcome_name(o: &Outcome) -> String {
    match o {
        Outcome::Error(e) => format!("error: {e}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

async fn one_run(
    lab: &Lab,
    client: &str,
    spec: ProbeSpec,
    n: usize,
    concurrency: usize,
    workloads: Option<u32>,
) -> Result<ProbeRun> {
    let cpu = procs::self_cpu();
    let w0 = workloads.and_then(procs::process_cpu);
    let t = Instant::now();
    let results = lab
        .prober
        .probe_many(client, vec![spec; n], concurrency)
        .await?;
    let seconds = t.elapsed().as_secs_f64();
    let harness = procs::self_cpu() - cpu;
    let w1 = workloads.and_then(procs::process_cpu);
    let mut lat = Recorder::new();
    let mut failures = std::collections::BTreeMap::new();
    for r in &results {
        if r.outcome == Outcome::Answered {
            lat.record(r.latency.as_secs_f64());
        } else {
            *failures.entry(outcome_name(&r.outcome)).or_insert(0) += 1;
        }
    }
    let answered = results.len() - failures.values().sum::<usize>();
    Ok(ProbeRun {
        probes: n,
        answered,
        seconds,
        per_second: answered as f64 / seconds,
        connect_latency: lat.summary(),
        harness_cpu_per_probe_seconds: harness / n.max(1) as f64,
        workloads_cpu_per_probe_seconds: match (w0, w1) {
            (Some(a), Some(b)) => Some((b - a) / n.max(1) as f64),
            _ => None,
        },
        failures,
    })
}

pub async fn run(settings: &ProbeSettings, r: &mut BenchResults) -> Result<()> {
    let backend: BackendKind = settings
        .backend
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let size = settings.endpoints as u64;
    if let Err(e) = backend.capability() {
        r.cases.push(Case {
            backend: backend.to_string(),
            size,
            status: Status::Unavailable,
            reason: Some(e.reason),
            detail: serde_json::Value::Null,
        });
        return Ok(());
    }
    let shape = Shape {
        services: 1,
        endpoints: settings.endpoints,
        nodes: 1,
        pools: 1,
        node_ports: false,
        ..Default::default()
    };
    let scn = Scenario::parse("bench probes", &yaml(&shape)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = LabOptions {
        backend: Some(backend.clone()),
        ..Default::default()
    };
    let lab = Lab::up(scn, &opts).await?;
    let outcome = measure(&lab, settings).await;
    lab.down().await;
    let runs = outcome?;
    let b = backend.to_string();
    // The run with the median throughput stands for all of them.
    let mut order: Vec<&ProbeRun> = runs.iter().collect();
    order.sort_by(|x, y| x.per_second.total_cmp(&y.per_second));
    if let Some(mid) = order.get(order.len() / 2) {
        r.value(&b, size, "probes_per_second", "per-second", mid.per_second);
        if let Some(l) = &mid.connect_latency {
            r.dist(
                &b,
                size,
                "probe_connect_latency_seconds",
                "seconds",
                l,
                &["p50", "p90", "p99", "max"],
            );
        }
        r.value(
            &b,
            size,
            "probe_harness_cpu_per_probe_seconds",
            "seconds",
            mid.harness_cpu_per_probe_seconds,
        );
        if let Some(c) = mid.workloads_cpu_per_probe_seconds {
            r.value(
                &b,
                size,
                "probe_workloads_cpu_per_probe_seconds",
                "seconds",
                c,
            );
        }
    }
    if let Some(best) = order.last() {
        r.value(
            &b,
            size,
            "probes_per_second_best",
            "per-second",
            best.per_second,
        );
    }
    r.cases.push(Case {
        backend: b,
        size,
        status: Status::Ok,
        reason: None,
        detail: serde_json::to_value(&runs)?,
    });
    Ok(())
}

async fn measure(lab: &Lab, settings: &ProbeSettings) -> Result<Vec<ProbeRun>> {
    let pod = lab
        .scenario
        .pods
        .iter()
        .find(|p| p.client)
        .context("no client pod")?;
    let client = lab
        .pod_netns(&pod.namespace, &pod.name)
        .context("client pod namespace")?
        .to_string();
    let target = crate::checks::expect::targets(&lab.cp(), IpFamily::IPv4)
        .into_iter()
        .next()
        .context("no Service")?;
    let spec = ProbeSpec::new(target.vip_addr(), Protocol::Tcp, Duration::from_secs(2));
    let workloads = lab
        .state
        .processes
        .iter()
        .find(|p| p.role == "workloads")
        .map(|p| p.pid);
    let warm = lab
        .prober
        .probe_many(&client, vec![spec; WARMUP], settings.concurrency)
        .await?;
    let ok = warm
        .iter()
        .filter(|r| r.outcome == Outcome::Answered)
        .count();
    if ok < WARMUP / 2 {
        anyhow::bail!(
            "only {ok} of {WARMUP} warm-up probes to {} were answered",
            target.label()
        );
    }
    let mut runs = Vec::new();
    for i in 0..settings.runs.max(1) {
        let run = one_run(
            lab,
            &client,
            spec,
            settings.probes,
            settings.concurrency,
            workloads,
        )
        .await?;
        println!(
            "bench probes: run {}: {} of {} answered in {:.2} s: {:.0} probes/s, connect p50 {:.0} µs p99 {:.0} µs; \
             CPU per probe: harness {:.1} µs, workloads {}",
            i + 1,
            run.answered,
            run.probes,
            run.seconds,
            run.per_second,
            run.connect_latency.map_or(0.0, |l| l.p50 * 1e6),
            run.connect_latency.map_or(0.0, |l| l.p99 * 1e6),
            run.harness_cpu_per_probe_seconds * 1e6,
            run.workloads_cpu_per_probe_seconds
                .map_or("-".into(), |c| format!("{:.1} µs", c * 1e6)),
        );
        runs.push(run);
    }
    Ok(runs)
}
