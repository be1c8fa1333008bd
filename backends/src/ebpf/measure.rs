//! Sync cost at benchmark sizes, run by hand in a release build:
//!
//! ```text
//! cargo test --release -p svclab-backends ebpf::measure -- --ignored --nocapture
//! ```
//!
//! `SVCLAB_MEASURE_SERVICES` (default `1000,10000`) and
//! `SVCLAB_MEASURE_PARTIALS` (default 200) narrow it. For each size
//! (Services x 10 endpoints) it times, in a fresh namespace, setup (load,
//! verify, attach), the full sync, partial syncs that replace one endpoint
//! of one Service (the map updates: 10 new slots, the flip, 10 deletions),
//! and reading the counters.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::backend::EbpfBackend;
use super::testnet::service;
use crate::model::{ChangeSet, Endpoint, NodeContext, Protocol, ProxyState};
use crate::protocol::SyncMode;
use crate::testkit;
use crate::{Backend, BackendOptions, SyncRequest, kernel::cmd};

const ENDPOINTS_PER_SERVICE: usize = 10;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().parse().expect("a number"))
        .collect()
}

fn endpoint(k: usize, i: usize, generation: usize) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(
            10,
            244,
            (i + 1 + generation * 16) as u8,
            (k % 250) as u8 + 1,
        )
        .into(),
        port: 8080 + (k / 250) as u16,
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some("n1".into()),
        is_local: false,
        hints: Default::default(),
    }
}

fn synthetic(services: usize) -> ProxyState {
    let mut state = ProxyState::default();
    for k in 0..services {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + k as u32 + 1);
        let svc = service(&format!("svc-{k}"), vip, 80, Protocol::Tcp);
        let eps = (0..ENDPOINTS_PER_SERVICE)
            .map(|i| endpoint(k, i, 0))
            .collect();
        state.endpoints.insert(svc.name.clone(), eps);
        state.services.insert(svc.name.clone(), svc);
    }
    state
}

fn node() -> NodeContext {
    NodeContext {
        node_ip: Ipv4Addr::new(192, 168, 0, 1).into(),
        run_prefix: "svclab-m".into(),
        ..testkit::node()
    }
}

fn links() {
    for args in [
        &["link", "add", "cni0", "type", "bridge"][..],
        &["addr", "add", "10.244.0.1/24", "dev", "cni0"],
        &["link", "set", "cni0", "up"],
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ],
        &["addr", "add", "192.168.0.1/24", "dev", "eth0"],
        &["link", "set", "eth0", "up"],
    ] {
        cmd::run("ip", args, None).unwrap();
    }
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
#[ignore = "a measurement: run by hand in a release build"]
fn sync_cost() {
    crate::require_netns!();
    if let Err(e) = super::capability::capability() {
        eprintln!("SKIP: {e}");
        return;
    }
    let partials = env_list("SVCLAB_MEASURE_PARTIALS", "200")[0];
    for services in env_list("SVCLAB_MEASURE_SERVICES", "1000,10000") {
        let mut state = synthetic(services);
        let node = node();
        crate::testkit::in_new_netns(|| {
            links();
            let mut b = EbpfBackend::new(&BackendOptions::default());
            let t = Instant::now();
            b.setup(&node).unwrap();
            let setup = t.elapsed();
            let all = ChangeSet {
                changed: state.services.keys().cloned().collect(),
                ..ChangeSet::default()
            };
            let t = Instant::now();
            let full = b
                .sync(&SyncRequest {
                    mode: SyncMode::Full,
                    seq: 1,
                    state: &state,
                    changes: &all,
                    node: &node,
                })
                .unwrap();
            let full_wall = t.elapsed();

            let names: Vec<_> = state.services.keys().cloned().collect();
            let mut times = Vec::new();
            let mut written = BTreeSet::new();
            for round in 0..partials {
                let k = (round * 7919) % services;
                let eps = state.endpoints.get_mut(&names[k]).unwrap();
                let i = round % ENDPOINTS_PER_SERVICE;
                eps[i] = endpoint(k, i, 1 + round % 2);
                eps.sort();
                let changes = ChangeSet {
                    changed: BTreeSet::from([names[k].clone()]),
                    ..ChangeSet::default()
                };
                let t = Instant::now();
                let out = b
                    .sync(&SyncRequest {
                        mode: SyncMode::Partial,
                        seq: 2 + round as u64,
                        state: &state,
                        changes: &changes,
                        node: &node,
                    })
                    .unwrap();
                times.push(t.elapsed());
                written.insert(out.written);
            }
            times.sort();
            let t = Instant::now();
            let stats = b.stats().unwrap();
            let stats_wall = t.elapsed();
            let t = Instant::now();
            b.cleanup().unwrap();
            let cleanup = t.elapsed();
            eprintln!(
                "ebpf {services} Services x {ENDPOINTS_PER_SERVICE} endpoints: setup {:.1} ms, \
                 full sync {:.1} ms ({} map writes, {} entries), partial sync (one endpoint \
                 replaced, {written:?} map writes) p50 {:.3} ms p90 {:.3} ms max {:.3} ms over \
                 {partials}, stats {:.1} ms ({} Services), cleanup {:.1} ms",
                ms(setup),
                ms(full_wall),
                full.written,
                full.rules,
                ms(pct(&times, 50)),
                ms(pct(&times, 90)),
                ms(*times.last().unwrap()),
                ms(stats_wall),
                stats.detail["services"].as_object().map_or(0, |m| m.len()),
                ms(cleanup),
            );
            assert!(
                pct(&times, 50) < Duration::from_millis(1),
                "partial sync p50 over 1 ms"
            );
        });
    }
}
