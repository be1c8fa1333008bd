//! EndpointSlice generation at 10k Services × 10 endpoints: the control
//! plane admitting every Service (ClusterIP and NodePort allocation) and
//! running the endpoint controller over the pods.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use svclab::controlplane::ControlPlane;
use svclab::controlplane::endpoints::slices_for;

fn endpoint_slices(c: &mut Criterion) {
    let scn = common::scenario();
    c.bench_function("controlplane_new_10k_x10", |b| {
        b.iter(|| ControlPlane::new(black_box(&scn)).expect("control plane"))
    });
    let cp = ControlPlane::new(&scn).expect("control plane");
    let names = scn.node_names();
    c.bench_function("slices_for_all_10k", |b| {
        b.iter(|| {
            cp.services()
                .map(|svc| slices_for(svc, black_box(&scn.pods), &names, &[]).len())
                .sum::<usize>()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = endpoint_slices
}
criterion_main!(benches);
