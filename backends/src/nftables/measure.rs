//! Sync cost measurement, run by hand in release mode (each size in fresh
//! private network namespaces):
//!
//! ```text
//! SVCLAB_NFT_SIZES=1000,2000,4000 cargo test --release -p svclab-backends \
//!     nftables::measure -- --ignored --nocapture
//! ```
//!
//! Per size (Services x 10 endpoints): render time, the backend's full sync
//! and one-endpoint partial sync (wall), and the bare `nft -f` on the very
//! same dumped inputs, with nft's user/sys CPU and peak RSS.

use std::path::Path;

use nix::sys::resource::{UsageWho, getrusage};
use std::time::Instant;

use crate::model::ProxyState;
use crate::nftables::fixtures::{changes, ep, node, synthetic};
use crate::nftables::{Existing, NftablesBackend, Programmed};
use crate::protocol::SyncMode;
use crate::testkit::in_new_netns;
use crate::{Backend, BackendOptions, SyncRequest, kernel::cmd, require_netns};

const ENDPOINTS: usize = 10;

/// `/usr/bin/time` figures for one `nft -f FILE`: wall, user, sys seconds
/// and peak RSS in MiB.
fn bare_nft(file: &Path) -> (f64, f64, f64, f64) {
    let path = file.to_str().expect("utf-8 path");
    let out = cmd::run(
        "/usr/bin/time",
        &["-f", "%e %U %S %M", "nft", "-f", path],
        None,
    )
    .unwrap_or_else(|e| panic!("bare nft -f {path}: {e}"));
    let last = out.stderr.lines().last().unwrap_or_default();
    let f: Vec<f64> = last
        .split_whitespace()
        .map(|x| x.parse().expect("time output"))
        .collect();
    (f[0], f[1], f[2], f[3] / 1024.0)
}

fn sync(
    b: &mut NftablesBackend,
    seq: u64,
    mode: SyncMode,
    old: &ProxyState,
    new: &ProxyState,
) -> f64 {
    let cs = changes(old, new);
    let node = node();
    let t = Instant::now();
    b.sync(&SyncRequest {
        mode,
        seq,
        state: new,
        changes: &cs,
        node: &node,
    })
    .unwrap_or_else(|e| panic!("sync {seq} ({mode}): {e}"));
    t.elapsed().as_secs_f64()
}

#[test]
#[ignore = "measurement: run by hand in release mode"]
fn measure_sync_cost() {
    require_netns!();
    let sizes: Vec<usize> = std::env::var("SVCLAB_NFT_SIZES")
        .unwrap_or_else(|_| "1000,2000".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .expect("SVCLAB_NFT_SIZES: comma-separated numbers")
        })
        .collect();

    // CPU time of this thread as well as wall time: the machine is shared.
    let cpu = || {
        let u = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    };
    let big = synthetic(10_000, ENDPOINTS);
    let (t, c) = (Instant::now(), cpu());
    let plan = Programmed::default().plan_full(
        &big,
        &node(),
        &BackendOptions::default(),
        &Existing::default(),
    );
    eprintln!(
        "render full 10000x{ENDPOINTS}: {:.3} s wall, {:.3} s cpu, {} lines, {:.1} MiB",
        t.elapsed().as_secs_f64(),
        cpu() - c,
        plan.lines,
        plan.text.len() as f64 / (1 << 20) as f64
    );

    for n in sizes {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(format!("measure-{n}"));
        let state = synthetic(n, ENDPOINTS);
        let mut next = state.clone();
        next.endpoints
            .values_mut()
            .next()
            .expect("a Service")
            .push(ep([10, 250, 0, 1], 8080, false));

        let (full_wall, partial_wall, resync_wall, rules, lines_full, lines_partial) =
            in_new_netns(|| {
                let mut b = NftablesBackend::new(&BackendOptions {
                    dump_dir: Some(dir.clone()),
                    ..BackendOptions::default()
                });
                b.setup(&node()).expect("setup");
                let full = sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);
                let partial = sync(&mut b, 2, SyncMode::Partial, &state, &next);
                // The periodic resync: a full sync over a table that already
                // holds everything.
                let resync = sync(&mut b, 3, SyncMode::Full, &next, &next);
                let stats = b.stats().expect("stats");
                let lines = |f: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .expect("dumped input")
                        .lines()
                        .count()
                };
                let out = (
                    full,
                    partial,
                    resync,
                    stats.rules,
                    lines("1-full.nft"),
                    lines("2-partial.nft"),
                );
                b.cleanup().expect("cleanup");
                out
            });
        let (bare_full, bare_partial) = in_new_netns(|| {
            cmd::run(
                "nft",
                &["-f", dir.join("0-setup.nft").to_str().unwrap()],
                None,
            )
            .expect("setup input");
            let full = bare_nft(&dir.join("1-full.nft"));
            let partial = bare_nft(&dir.join("2-partial.nft"));
            (full, partial)
        });
        std::fs::remove_dir_all(&dir).expect("removing the dump dir");
        eprintln!(
            "{n}x{ENDPOINTS}: {rules} rules+elements | full: backend {full_wall:.2} s, \
             {lines_full} lines, bare nft {:.2} s (user {:.2}, sys {:.2}, rss {:.0} MiB) | \
             partial (+1 endpoint): backend {partial_wall:.3} s, {lines_partial} lines, \
             bare nft {:.3} s (user {:.2}, sys {:.2}) | resync: backend {resync_wall:.2} s",
            bare_full.0,
            bare_full.1,
            bare_full.2,
            bare_full.3,
            bare_partial.0,
            bare_partial.1,
            bare_partial.2,
        );
    }
}
