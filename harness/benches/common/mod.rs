//! The 10k-Service × 10-endpoint state the benches share, built the way
//! the lab builds it: a generated scenario, the control plane's initial
//! list, and an agent's change tracker fed with it.

// Each bench binary compiles this module and uses part of it.
#![allow(dead_code)]

use svclab::controlplane::ControlPlane;
use svclab::scenario::Scenario;
use svclab::scenario::generate::{Shape, yaml};
use svclab_backends::model::NodeContext;
use svclab_backends::tracker::ChangeTracker;

pub const SERVICES: usize = 10_000;
pub const ENDPOINTS: usize = 10;

pub fn scenario() -> Scenario {
    let shape = Shape {
        services: SERVICES,
        endpoints: ENDPOINTS,
        nodes: 2,
        ..Shape::default()
    };
    Scenario::parse("bench 10k", &yaml(&shape)).expect("generated scenarios are valid")
}

/// The first node, as its agent sees itself.
pub fn node(scn: &Scenario) -> NodeContext {
    let n = &scn.nodes[0];
    NodeContext {
        node_name: n.name.clone(),
        node_ip: n.ip.into(),
        pod_cidr: n.pod_cidr.into(),
        cluster_cidr: scn.lab.pod_cidr.into(),
        service_cidr: scn.lab.service_cidr.into(),
        run_prefix: "slbench".into(),
        bridge: svclab::topology::names::POD_BRIDGE.into(),
        uplink: svclab::topology::names::NODE_UPLINK.into(),
        node_port_ips: None,
        localhost_node_ports: false,
        zone: None,
    }
}

/// A tracker that has seen the whole initial list and synced it.
pub fn synced_tracker(scn: &Scenario, cp: &ControlPlane) -> ChangeTracker {
    let mut t = ChangeTracker::new(&scn.nodes[0].name);
    for ev in cp.initial_events() {
        t.apply(&ev).expect("the control plane's objects are valid");
    }
    t.take_changes(true);
    t
}
