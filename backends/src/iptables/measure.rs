//! Sync cost at benchmark sizes, run by hand in a release build:
//!
//! ```text
//! cargo test --release -p svclab-backends iptables::measure -- --ignored --nocapture
//! ```
//!
//! `SVCLAB_MEASURE_SERVICES` (default `1000,10000`), `SVCLAB_MEASURE_PARTIALS`
//! (default 10), `SVCLAB_MEASURE_FLAVORS` (default `nft,legacy`) narrow it;
//! `SVCLAB_MEASURE_REPS` (default 1) repeats each size, alternating agent and
//! bare runs; `SVCLAB_MEASURE_KEEP=1` keeps the dumped inputs.
//!
//! For each flavor and size (Services x 10 endpoints) it times, in a fresh
//! namespace, the agent's full sync and one-endpoint partial syncs (render,
//! dump, restore, bookkeeping), then replays the dumped inputs with the
//! bare tool in another fresh namespace: the floor the agent is held to.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::backend::IptablesBackend;
use super::book::Book;
use super::fixtures::{ep, node, synthetic};
use super::hooks;
use super::render::{Config, Scope, render};
use crate::kernel::iptables::Flavor;
use crate::model::{ChangeSet, NodeContext, ProxyState};
use crate::protocol::SyncMode;
use crate::testkit::in_new_netns;
use crate::{Backend, BackendOptions, SyncRequest, require_netns};

const ENDPOINTS_PER_SERVICE: usize = 10;

struct Run {
    setup: Duration,
    cleanup: Duration,
    full: Duration,
    partials: Vec<Duration>,
    render_full: Duration,
    render_partial: Duration,
    files: Vec<PathBuf>,
}

/// Adds one endpoint to the `k`th service port; returns the change.
fn add_endpoint(state: &mut ProxyState, k: usize) -> ChangeSet {
    let name = state.services.keys().nth(k).unwrap().clone();
    let eps = state.endpoints.get_mut(&name).unwrap();
    eps.push(ep([10, 250, (k >> 8) as u8, k as u8], 8080, false));
    eps.sort();
    ChangeSet {
        changed: BTreeSet::from([name]),
        ..ChangeSet::default()
    }
}

fn agent_run(flavor: Flavor, services: usize, partials: usize, dir: &Path) -> Run {
    let mut state = synthetic(services, ENDPOINTS_PER_SERVICE);
    let node = node();
    let options = BackendOptions {
        dump_dir: Some(dir.to_path_buf()),
        ..BackendOptions::default()
    };
    let config = Config::new(&options);

    // Render alone, to see the agent's own share.
    let t = Instant::now();
    let r = render(&config, &state, &node, Scope::Full, &Book::default());
    let render_full = t.elapsed();
    let mut book = Book::default();
    book.apply(r.update);

    in_new_netns(|| {
        let mut b = IptablesBackend::new(flavor, &options);
        let t = Instant::now();
        b.setup(&node).unwrap();
        let setup = t.elapsed();
        let all = ChangeSet {
            changed: state.services.keys().cloned().collect(),
            ..ChangeSet::default()
        };
        let t = Instant::now();
        b.sync(&request(SyncMode::Full, 1, &state, &all, &node))
            .unwrap();
        let full = t.elapsed();
        let mut times = Vec::new();
        let mut render_partial = Duration::ZERO;
        for k in 0..partials {
            let changes = add_endpoint(&mut state, k * 7);
            let t = Instant::now();
            let out = b
                .sync(&request(
                    SyncMode::Partial,
                    k as u64 + 2,
                    &state,
                    &changes,
                    &node,
                ))
                .unwrap();
            times.push(t.elapsed());
            assert!(out.written > 0);
            let t = Instant::now();
            let r = render(
                &config,
                &state,
                &node,
                Scope::Partial(&changes.changed),
                &book,
            );
            render_partial += t.elapsed();
            assert!(!r.full);
            book.apply(r.update);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort_by_key(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.split('-').next().unwrap().parse::<u64>().unwrap()
        });
        let t = Instant::now();
        b.cleanup().unwrap();
        let cleanup = t.elapsed();
        Run {
            setup,
            cleanup,
            full,
            partials: times,
            render_full,
            render_partial: render_partial / partials.max(1) as u32,
            files,
        }
    })
}

fn request<'a>(
    mode: SyncMode,
    seq: u64,
    state: &'a ProxyState,
    changes: &'a ChangeSet,
    node: &'a NodeContext,
) -> SyncRequest<'a> {
    SyncRequest {
        mode,
        seq,
        state,
        changes,
        node,
    }
}

/// Replays the dumped inputs with the bare tool, in order, in a fresh
/// namespace with the same hooks; returns each one's wall time.
fn bare_run(flavor: Flavor, files: &[PathBuf]) -> Vec<Duration> {
    in_new_netns(|| {
        hooks::ensure(flavor).unwrap();
        files
            .iter()
            .map(|f| {
                let t = Instant::now();
                let status = Command::new(flavor.restore())
                    .args(flavor.restore_args())
                    .stdin(Stdio::from(File::open(f).unwrap()))
                    .status()
                    .unwrap();
                assert!(status.success(), "{} {}", flavor.restore(), f.display());
                t.elapsed()
            })
            .collect()
    })
}

/// A comma-separated list of numbers from the environment.
fn env_list(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{var}: {n:?}: {e}"))
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// `reps` alternating agent and bare runs, so load from other work on the
/// machine falls on both alike; prints medians.
fn measure_size(flavor: Flavor, services: usize, partials: usize, reps: usize, keep: bool) {
    let (mut agent_full, mut bare_full) = (Vec::new(), Vec::new());
    let (mut agent_partial, mut bare_partial) = (Vec::new(), Vec::new());
    let (mut render_full, mut render_partial) = (Vec::new(), Vec::new());
    let (mut setup, mut cleanup) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Kept (SVCLAB_MEASURE_KEEP=1) or removed below; never at a name
        // someone could plant first.
        let dir = tempfile::Builder::new()
            .prefix(&format!("svclab-measure-{flavor:?}-{services}-{rep}-"))
            .tempdir()
            .unwrap()
            .keep();
        let run = agent_run(flavor, services, partials, &dir);
        let bare = bare_run(flavor, &run.files);
        if keep {
            println!("  dumps kept in {}", dir.display());
        } else {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let (full, rest) = bare.split_first().unwrap();
        bare_full.push(*full);
        bare_partial.extend_from_slice(rest);
        agent_full.push(run.full);
        agent_partial.extend(run.partials);
        render_full.push(run.render_full);
        render_partial.push(run.render_partial);
        setup.push(run.setup);
        cleanup.push(run.cleanup);
    }
    let ratio = |a: &[Duration], b: &[Duration]| {
        median(a.to_vec()).as_secs_f64() / median(b.to_vec()).as_secs_f64()
    };
    println!(
        "| {} | {services} x {ENDPOINTS_PER_SERVICE} | {} / {} | {} / {} | {:.2} / {:.2} | {} / {} \
         | {} / {} |",
        flavor.restore(),
        ms(median(agent_full.clone())),
        ms(median(bare_full.clone())),
        ms(median(agent_partial.clone())),
        ms(median(bare_partial.clone())),
        ratio(&agent_full, &bare_full),
        ratio(&agent_partial, &bare_partial),
        ms(median(render_full)),
        ms(median(render_partial)),
        ms(median(setup)),
        ms(median(cleanup)),
    );
    println!(
        "  full agent: {:?}\n  full bare:  {:?}\n  partial agent: {:?}\n  partial bare:  {:?}",
        agent_full.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        bare_full.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        agent_partial.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        bare_partial.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
    );
}

#[test]
#[ignore = "minutes of kernel work; run by hand in a release build"]
fn measure_sync_costs() {
    require_netns!();
    let sizes = env_list("SVCLAB_MEASURE_SERVICES", "1000,10000");
    let partials = env_list("SVCLAB_MEASURE_PARTIALS", "10")[0];
    let reps = env_list("SVCLAB_MEASURE_REPS", "1")[0].max(1);
    let keep = std::env::var_os("SVCLAB_MEASURE_KEEP").is_some();
    println!(
        "| flavor | services x eps | full: agent / bare | partial p50: agent / bare | ratio | \
         render full / partial | setup / cleanup |"
    );
    println!("|---|---|---|---|---|---|---|");
    let flavors = std::env::var("SVCLAB_MEASURE_FLAVORS").unwrap_or("nft,legacy".into());
    for flavor in [Flavor::Nft, Flavor::Legacy] {
        if !flavors.contains(&format!("{flavor:?}").to_lowercase()) {
            continue;
        }
        if let Err(why) = super::probe::capability(flavor) {
            println!("| {flavor:?} | skipped: {why} |");
            continue;
        }
        for &services in &sizes {
            measure_size(flavor, services, partials, reps, keep);
        }
    }
}
