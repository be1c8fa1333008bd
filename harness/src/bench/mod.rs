//! `svclab bench`: the benchmark lab.
//!
//! - [`topology`]: building and tearing down the lab's network, against an
//!   `ip`-command script;
//! - [`sync`]: rule-sync cost per backend and Service count (full and
//!   partial syncs, network programming latency, data-path latency, the
//!   bare-tool floor, the harness's own overhead);
//! - [`probes`]: the probe engine's throughput through DNAT;
//! - [`api`]: the lab's API endpoint: the initial list to an agent, one
//!   change fanned out to many agents, the API path against the pipe;
//! - [`compare`]: two runs' figures side by side, for CI gates.
//!
//! Every bench writes `results/<UTC>-bench-<kind>/` with `bench.json`
//! ([`schema`]), `bench.csv` and `report.html` ([`report`]).

pub mod api;
pub mod changes;
pub mod compare;
pub mod datapath;
pub mod floor;
pub mod npl;
pub mod probes;
pub mod procs;
pub mod report;
pub mod schema;
pub mod stats;
pub mod sync;
pub mod topology;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use crate::cli::bench::{BenchArgs, BenchKind};
use anyhow::{Context, Result};
use svclab_backends::BackendKind;

use schema::{BenchResults, Case, Status};

fn finish(r: &mut BenchResults, dir: &Path) -> Result<()> {
    r.finished_at = jiff::Timestamp::now().to_string();
    r.load_at_end = schema::Load::now();
    save(r, dir)
}

fn save(r: &BenchResults, dir: &Path) -> Result<()> {
    r.write(dir)?;
    std::fs::write(dir.join("report.html"), report::render(r))?;
    Ok(())
}

fn new_dir(results: &Path, kind: &str) -> Result<(PathBuf, String)> {
    let dir = crate::results::new_run_dir(results, &format!("bench-{kind}"))
        .with_context(|| format!("creating a folder in {}", results.display()))?;
    let name = dir
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    Ok((dir, name))
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.kind {
        BenchKind::Topology {
            nodes,
            pods_per_node,
            runs,
            ip_runs,
            ip_script,
            family,
            results,
        } => {
            for f in &family {
                if !matches!(f.as_str(), "ipv4" | "dual") {
                    anyhow::bail!("--family: {f:?} is not ipv4 or dual");
                }
            }
            let settings = topology::TopologySettings {
                nodes,
                pods_per_node,
                runs,
                ip_runs,
                ip_script,
                families: family,
            };
            let (dir, name) = new_dir(&results, "topology")?;
            let mut r = BenchResults::new("topology", &name, serde_json::to_value(&settings)?);
            let outcome = topology::run(&settings, &mut r).await;
            finish(&mut r, &dir)?;
            outcome?;
            print!("{}", topology::summary(&r));
            print!("{}", report::targets_text(&r));
            println!("results: {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        BenchKind::Sync {
            scenario,
            services,
            endpoints,
            backend,
            partials,
            budget,
            nodes,
            connects,
            family,
            results,
        } => {
            let backend = crate::cli::resolve_backends(&backend)?;
            let mut families = Vec::new();
            for f in family {
                let f = sync::SyncFamily::parse(&f)?;
                if !families.contains(&f) {
                    families.push(f);
                }
            }
            if scenario.is_some() && families != [sync::SyncFamily::Ipv4] {
                anyhow::bail!(
                    "--family applies to generated scenarios; a scenario file sets its own \
                     spec.ipFamilies"
                );
            }
            let mut sizes = services;
            sizes.sort_unstable();
            sizes.dedup();
            let settings = sync::SyncSettings {
                scenario,
                services: sizes,
                endpoints,
                backends: backend.iter().map(|b| b.to_string()).collect(),
                partials,
                budget_seconds: budget,
                nodes: nodes.max(1),
                connects,
                families,
                min_sync_period_ms: 0,
                sync_period_ms: 0,
            };
            run_sync(settings, &backend, &results).await
        }
        BenchKind::Api {
            services,
            endpoints,
            nodes,
            changes,
            backend,
            results,
        } => {
            let backend = crate::cli::one_backend("bench api", &backend)?;
            let settings = api::ApiSettings {
                services,
                endpoints,
                nodes,
                changes,
                backend: backend.to_string(),
            };
            let (dir, name) = new_dir(&results, "api")?;
            let mut r = BenchResults::new("api", &name, serde_json::to_value(&settings)?);
            let outcome = api::run(&settings, &mut r).await;
            finish(&mut r, &dir)?;
            outcome?;
            for c in &r.cases {
                println!(
                    "bench api: {} at {}: {}{}",
                    c.backend,
                    c.size,
                    c.status,
                    c.reason
                        .as_deref()
                        .map_or(String::new(), |r| format!(": {r}"))
                );
            }
            for f in &r.figures {
                println!(
                    "  {:<14} {:>6} {:<34} {:<5} {:>12.6} {}",
                    f.backend, f.size, f.metric, f.stat, f.value, f.unit
                );
            }
            println!("results: {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        BenchKind::Probes {
            backend,
            endpoints,
            probes,
            concurrency,
            runs,
            results,
        } => {
            let backend = crate::cli::one_backend("bench probes", &backend)?;
            let settings = probes::ProbeSettings {
                backend: backend.to_string(),
                endpoints,
                probes,
                concurrency,
                runs,
            };
            let (dir, name) = new_dir(&results, "probes")?;
            let mut r = BenchResults::new("probes", &name, serde_json::to_value(&settings)?);
            let outcome = probes::run(&settings, &mut r).await;
            finish(&mut r, &dir)?;
            outcome?;
            for c in r.cases.iter().filter(|c| c.status != Status::Ok) {
                println!(
                    "bench probes: {}: {}: {}",
                    c.backend,
                    c.status,
                    c.reason.as_deref().unwrap_or("")
                );
            }
            print!("{}", report::targets_text(&r));
            println!("results: {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_sync(
    mut settings: sync::SyncSettings,
    backends: &[BackendKind],
    results: &Path,
) -> Result<ExitCode> {
    // A given scenario is one size: its own Services.
    let probe = sync::scenario_for(
        &settings,
        settings.services.first().copied().unwrap_or(1000),
        sync::SyncFamily::Ipv4,
    )?;
    if settings.scenario.is_some() {
        settings.services = vec![probe.services.len().saturating_sub(1)];
    }
    settings.min_sync_period_ms = probe.lab.agent.min_sync_period_ms;
    settings.sync_period_ms = probe.lab.agent.sync_period_ms;
    drop(probe);
    let (dir, name) = new_dir(results, "sync")?;
    let mut r = BenchResults::new("sync", &name, serde_json::to_value(&settings)?);
    println!("bench sync: writing {}", dir.display());
    for (family, kind) in settings
        .families
        .clone()
        .into_iter()
        .flat_map(|f| backends.iter().map(move |k| (f, k)))
    {
        let b = family.label(kind);
        // Unavailable: it programs IPv4 only and the series has IPv6, or
        // it cannot run on this host.
        let ipv4_only = kind
            .limitations(&Default::default())
            .into_iter()
            .find(|(f, _)| *f == svclab_backends::api::Feature::Ipv6)
            .filter(|_| family != sync::SyncFamily::Ipv4)
            .map(|(_, why)| why);
        if let Some(why) = ipv4_only.or_else(|| kind.capability().err().map(|e| e.reason)) {
            for &size in &settings.services {
                r.cases.push(Case {
                    backend: b.clone(),
                    size: size as u64,
                    status: Status::Unavailable,
                    reason: Some(why.clone()),
                    detail: serde_json::Value::Null,
                });
            }
            println!("bench sync: {b}: unavailable: {why}");
            continue;
        }
        let mut blown: Option<usize> = None;
        for &size in &settings.services {
            if let Some(smaller) = blown {
                r.cases.push(Case {
                    backend: b.clone(),
                    size: size as u64,
                    status: Status::Skipped,
                    reason: Some(format!(
                        "the full sync at {smaller} Services did not finish within the budget"
                    )),
                    detail: serde_json::Value::Null,
                });
                continue;
            }
            let run = match sync::scenario_for(&settings, size, family) {
                Ok(scn) => {
                    // The agents' dumped tool input: a private folder with
                    // a random name inside the results folder (root writes
                    // there; never at a name someone could plant first).
                    let dump = crate::state::private_temp_dir_in(
                        &dir,
                        &format!(".dump-{}-{size}-", b.replace('/', "-")),
                    )
                    .with_context(|| format!("a dump folder in {}", dir.display()))?;
                    sync::run_case(kind, scn, &settings, dump.path()).await
                }
                Err(e) => sync::CaseRun {
                    status: Status::Failed,
                    reason: Some(format!("{e:#}")),
                    detail: Default::default(),
                },
            };
            println!("{}", sync::progress_line(&b, size as u64, &run));
            if run.status == Status::NotFinished {
                blown = Some(size);
            }
            sync::record(&mut r, &b, size as u64, run);
            save(&r, &dir)?;
        }
    }
    finish(&mut r, &dir)?;
    print!("{}", report::sync_table(&r));
    print!("{}", report::targets_text(&r));
    println!("results: {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
