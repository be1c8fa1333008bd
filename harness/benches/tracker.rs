//! Endpoint diffing at 10k Services: the agent's change tracker takes one
//! EndpointSlice change (an endpoint goes not-ready, then ready again) and
//! works out what changed for the next partial sync.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use svclab::controlplane::ControlPlane;

fn one_slice_change(c: &mut Criterion) {
    let scn = common::scenario();
    let mut cp = ControlPlane::new(&scn).expect("control plane");
    let mut tracker = common::synced_tracker(&scn, &cp);
    // Two versions of one Service's slice (pool-0-0 not ready, then ready
    // again), alternated so every round is a real change. The pod backs a
    // fifth of the Services; one slice is what one real change touches.
    let down = cp.set_ready("default", "pool-0-0", false).expect("pod");
    let up = cp.set_ready("default", "pool-0-0", true).expect("pod");
    let one = |events: &[svclab_backends::protocol::WatchEvent]| events[0].clone();
    let (down, up) = (one(&down), one(&up));
    let mut flip = false;
    c.bench_function("tracker_one_slice_change_10k", |b| {
        b.iter(|| {
            flip = !flip;
            tracker
                .apply(if flip { &down } else { &up })
                .expect("valid slice");
            // The agent takes both at every sync.
            black_box(tracker.take_trigger_times());
            black_box(tracker.take_changes(false))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = one_slice_change
}
criterion_main!(benches);
