//! `svclab bench topology`: how long the lab's network takes to build and
//! to tear down (namespaces, veths, bridges, addresses, routes; no agents),
//! over several runs, against `ci/ip-baseline.sh`, which builds the same
//! topology with one `ip` command per object.
//!
//! Deleting a namespace returns before the kernel has freed it; each run
//! waits for the kernel to catch up, so no run pays for the previous one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use svclab_backends::model::IpFamily;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::procs;
use super::schema::{BenchResults, Case, Status};
use super::stats::Recorder;
use crate::scenario::Scenario;
use crate::scenario::generate::{Shape, yaml};
use crate::state::RunState;
use crate::topology::Topology;

const RECLAIM_LIMIT: Duration = Duration::from_secs(120);
/// The ip script creates a thousand namespaces one process at a time.
const IP_SCRIPT_LIMIT: Duration = Duration::from_secs(900);

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologySettings {
    pub nodes: usize,
    pub pods_per_node: usize,
    pub runs: usize,
    pub ip_runs: usize,
    pub ip_script: PathBuf,
    /// `ipv4` and/or `dual`.
    #[serde(default)]
    pub families: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyRun {
    pub namespaces: usize,
    pub create_seconds: f64,
    /// Of which: creating the namespaces, then the links and addresses.
    pub namespaces_seconds: f64,
    pub links_seconds: f64,
    pub teardown_seconds: f64,
    /// Until the kernel had freed the namespaces again.
    pub reclaim_seconds: f64,
}

/// One number of a run, by name.
type Field = fn(&TopologyRun) -> f64;

/// The scenario: `nodes` nodes, each with a client pod and
/// `pods_per_node - 1` pods of one Deployment (spread evenly).
fn scenario(nodes: usize, pods_per_node: usize, dual: bool) -> Result<Scenario> {
    let shape = Shape {
        services: 1,
        endpoints: nodes * pods_per_node.saturating_sub(1),
        nodes,
        pools: 1,
        node_ports: false,
        families: if dual {
            vec![IpFamily::IPv4, IpFamily::IPv6]
        } else {
            vec![IpFamily::IPv4]
        },
    };
    let text = yaml(&shape);
    Scenario::parse("bench topology", &text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The backend name a family's figures are kept under.
fn label(family: &str) -> &'static str {
    if family == "dual" {
        "svclab-dual"
    } else {
        "svclab"
    }
}

async fn one_run(scn: &Scenario) -> Result<TopologyRun> {
    let run = crate::state::fresh_run_id();
    let topology = Topology::plan(scn, &run);
    let mut state = RunState::new(&run, "bench topology");
    state.topology = Some(topology.clone());
    state.save().context("writing the run state")?;
    crate::guard::register(&run);
    let before = procs::live_netns();
    let t = Instant::now();
    let built = topology.create().await;
    let create = t.elapsed();
    let times = match built {
        Ok(t) => t,
        Err(e) => {
            crate::guard::cleanup_registered_run(&run);
            return Err(e).context("building the topology");
        }
    };
    let t = Instant::now();
    let destroyed = {
        let topology = topology.clone();
        tokio::task::spawn_blocking(move || topology.destroy()).await?
    };
    let teardown = t.elapsed();
    crate::guard::cleanup_registered_run(&run);
    if let Err(errors) = destroyed {
        anyhow::bail!(
            "tearing the topology down: {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let reclaim =
        tokio::task::spawn_blocking(move || procs::wait_netns_freed(before, 20, RECLAIM_LIMIT))
            .await?;
    Ok(TopologyRun {
        namespaces: topology.namespaces().len(),
        create_seconds: create.as_secs_f64(),
        namespaces_seconds: times.namespaces.as_secs_f64(),
        links_seconds: times.links.as_secs_f64(),
        teardown_seconds: teardown.as_secs_f64(),
        reclaim_seconds: reclaim.as_secs_f64(),
    })
}

/// Runs the ip script once; it prints `create_seconds=` and
/// `teardown_seconds=` lines.
fn ip_run(script: &Path, nodes: usize, pods_per_node: usize) -> Result<TopologyRun> {
    let before = procs::live_netns();
    let child = Command::new("bash")
        .arg(script)
        .arg(nodes.to_string())
        .arg(pods_per_node.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", script.display()))?;
    let pid = child.id();
    // The script cleans up after itself on SIGTERM; bounded like every wait.
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < IP_SCRIPT_LIMIT {
            std::thread::sleep(Duration::from_millis(200));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    });
    let out = child.wait_with_output()?;
    let _ = watchdog.join();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let field = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("{} printed no {name}: {text}", script.display()))
    };
    let create = field("create_seconds")?;
    let teardown = field("teardown_seconds")?;
    let namespaces = field("namespaces")? as usize;
    let reclaim = procs::wait_netns_freed(before, 20, RECLAIM_LIMIT);
    Ok(TopologyRun {
        namespaces,
        create_seconds: create,
        teardown_seconds: teardown,
        reclaim_seconds: reclaim.as_secs_f64(),
        ..Default::default()
    })
}

pub async fn run(settings: &TopologySettings, r: &mut BenchResults) -> Result<()> {
    let families: Vec<String> = if settings.families.is_empty() {
        vec!["ipv4".into()]
    } else {
        settings.families.clone()
    };
    let scns = families
        .iter()
        .map(|f| scenario(settings.nodes, settings.pods_per_node, f == "dual"))
        .collect::<Result<Vec<_>>>()?;
    let size = scns[0].pods.len() as u64;
    let mut by_family: Vec<Vec<TopologyRun>> = vec![Vec::new(); families.len()];
    for i in 0..settings.runs.max(1) {
        for (k, scn) in scns.iter().enumerate() {
            let run = one_run(scn).await?;
            // The kernel frees deleted namespaces in a worker, after RCU grace
            // periods; sometimes it takes longer than we wait. The next run then
            // starts with some still pending, which is said, not hidden.
            let reclaimed = if run.reclaim_seconds >= RECLAIM_LIMIT.as_secs_f64() {
                format!(
                    "the kernel had not freed them all after {} s",
                    RECLAIM_LIMIT.as_secs()
                )
            } else {
                format!("the kernel freed them {:.2} s later", run.reclaim_seconds)
            };
            println!(
                "bench topology: run {} ({}): {} namespaces: create {:.2} s (namespaces {:.2} s, links {:.2} s), \
             teardown {:.2} s, {reclaimed}",
                i + 1,
                families[k],
                run.namespaces,
                run.create_seconds,
                run.namespaces_seconds,
                run.links_seconds,
                run.teardown_seconds,
            );
            by_family[k].push(run);
        }
    }
    let stats = ["p50", "min", "max"];
    let dist = |f: Field, runs: &[TopologyRun]| Recorder::from_values(runs.iter().map(f)).summary();
    let metrics: [(&str, Field); 4] = [
        ("topology_create_seconds", |r| r.create_seconds),
        ("topology_create_namespaces_seconds", |r| {
            r.namespaces_seconds
        }),
        ("topology_create_links_seconds", |r| r.links_seconds),
        ("topology_teardown_seconds", |r| r.teardown_seconds),
    ];
    for (family, runs) in families.iter().zip(&by_family) {
        for (metric, f) in metrics {
            if let Some(s) = dist(f, runs) {
                r.dist(label(family), size, metric, "seconds", &s, &stats);
            }
        }
        r.cases.push(Case {
            backend: label(family).into(),
            size,
            status: Status::Ok,
            reason: None,
            detail: serde_json::to_value(runs)?,
        });
    }
    // Dual-stack's cost: its median create time over IPv4-only's, both
    // from this run.
    let p50 = |f: &str| {
        families
            .iter()
            .position(|x| x == f)
            .and_then(|k| dist(|r| r.create_seconds, &by_family[k]))
            .map(|s| s.p50)
    };
    if let (Some(v4), Some(dual)) = (p50("ipv4"), p50("dual")) {
        r.value(
            "svclab-dual",
            size,
            "topology_create_dual_over_ipv4",
            "ratio",
            dual / v4,
        );
    }
    let runs = families
        .iter()
        .position(|f| f == "ipv4")
        .map(|k| by_family[k].clone())
        .unwrap_or_default();

    let mut ip_runs = Vec::new();
    let mut ip_error = None;
    if settings.ip_runs > 0 {
        if !settings.ip_script.exists() {
            ip_error = Some(format!("{} not found", settings.ip_script.display()));
        }
        for i in 0..settings.ip_runs {
            if ip_error.is_some() {
                break;
            }
            let script = settings.ip_script.clone();
            let (n, p) = (settings.nodes, settings.pods_per_node);
            match tokio::task::spawn_blocking(move || ip_run(&script, n, p)).await? {
                Ok(run) => {
                    println!(
                        "bench topology: ip script run {}: {} namespaces: create {:.2} s, teardown {:.2} s",
                        i + 1,
                        run.namespaces,
                        run.create_seconds,
                        run.teardown_seconds
                    );
                    ip_runs.push(run);
                }
                Err(e) => ip_error = Some(format!("{e:#}")),
            }
        }
    }
    let ip_create = dist(|r| r.create_seconds, &ip_runs);
    let ip_teardown = dist(|r| r.teardown_seconds, &ip_runs);
    if let Some(s) = ip_create {
        r.dist("ip", size, "topology_create_seconds", "seconds", &s, &stats);
    }
    if let Some(s) = ip_teardown {
        r.dist(
            "ip",
            size,
            "topology_teardown_seconds",
            "seconds",
            &s,
            &stats,
        );
    }
    let lab_create = dist(|r| r.create_seconds, &runs);
    let lab_teardown = dist(|r| r.teardown_seconds, &runs);
    if let (Some(ip), Some(lab)) = (ip_create, lab_create) {
        r.value(
            "svclab",
            size,
            "topology_create_speedup_over_ip",
            "speedup",
            ip.p50 / lab.p50,
        );
    }
    if let (Some(ip), Some(lab)) = (ip_teardown, lab_teardown) {
        r.value(
            "svclab",
            size,
            "topology_teardown_speedup_over_ip",
            "speedup",
            ip.p50 / lab.p50,
        );
    }
    r.cases.push(Case {
        backend: "ip".into(),
        size,
        status: if ip_error.is_some() {
            Status::Failed
        } else if ip_runs.is_empty() {
            Status::Skipped
        } else {
            Status::Ok
        },
        reason: ip_error,
        detail: serde_json::to_value(&ip_runs)?,
    });
    Ok(())
}

/// The terminal summary.
pub fn summary(r: &BenchResults) -> String {
    let mut s = String::new();
    for size in r.sizes() {
        let get = |b: &str, m: &str, st: &str| r.figure(b, size, m, st);
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2} s"));
        s.push_str(&format!(
            "topology with {size} pods: create median {} (min {}, max {}), teardown median {} (min {}, max {})\n",
            fmt(get("svclab", "topology_create_seconds", "p50")),
            fmt(get("svclab", "topology_create_seconds", "min")),
            fmt(get("svclab", "topology_create_seconds", "max")),
            fmt(get("svclab", "topology_teardown_seconds", "p50")),
            fmt(get("svclab", "topology_teardown_seconds", "min")),
            fmt(get("svclab", "topology_teardown_seconds", "max")),
        ));
        if let Some(x) = get("svclab-dual", "topology_create_dual_over_ipv4", "value") {
            s.push_str(&format!(
                "dual-stack: create median {} ({x:.2}x IPv4-only's), teardown median {}\n",
                fmt(get("svclab-dual", "topology_create_seconds", "p50")),
                fmt(get("svclab-dual", "topology_teardown_seconds", "p50")),
            ));
        }
        match (
            get("svclab", "topology_create_speedup_over_ip", "value"),
            get("svclab", "topology_teardown_speedup_over_ip", "value"),
        ) {
            (Some(c), Some(t)) => s.push_str(&format!(
                "ip script: create {}, teardown {}: svclab is {c:.1}x faster to create, {t:.1}x to tear down\n",
                fmt(get("ip", "topology_create_seconds", "p50")),
                fmt(get("ip", "topology_teardown_seconds", "p50")),
            )),
            _ => {
                if let Some(c) = r.case("ip", size) {
                    s.push_str(&format!(
                        "ip script: {}{}\n",
                        c.status,
                        c.reason.as_deref().map_or(String::new(), |r| format!(": {r}"))
                    ));
                }
            }
        }
    }
    s
}
