//! Rendering a full 10k-Service × 10-endpoint ruleset: kube-proxy's
//! iptables layout (restore input) and nftables layout (one `nft -f`
//! transaction). Pure CPU: no kernel is touched.
//!
//! IPVS planning is not benched: `backends::ipvs`'s plan module is
//! private to the backend.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use svclab::controlplane::ControlPlane;
use svclab_backends::BackendOptions;

fn render(c: &mut Criterion) {
    let scn = common::scenario();
    let cp = ControlPlane::new(&scn).expect("control plane");
    let tracker = common::synced_tracker(&scn, &cp);
    let state = tracker.state();
    let node = common::node(&scn);
    let options = BackendOptions::default();
    let mut g = c.benchmark_group("render_full_10k_x10");
    g.bench_function("iptables", |b| {
        b.iter(|| svclab_backends::iptables::render_full(black_box(state), &node, &options))
    });
    g.bench_function("nftables", |b| {
        b.iter(|| svclab_backends::nftables::render_full(black_box(state), &node, &options))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = render
}
criterion_main!(benches);
