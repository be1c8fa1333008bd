//! Test fixtures: a node, Services and endpoints in kube-proxy's test
//! conventions (pods 10.0.0.0/8, ClusterIPs 172.30.0.0/16, node IP
//! 192.168.0.2), and the change set between two states.

use std::net::Ipv4Addr;

use crate::model::{ChangeSet, Endpoint, NodeContext, Protocol, ProxyState, ServicePort};
use crate::testkit;

pub fn node() -> NodeContext {
    NodeContext {
        node_name: "test-node".into(),
        pod_cidr: "10.0.0.0/24".parse().unwrap(),
        cluster_cidr: "10.0.0.0/8".parse().unwrap(),
        service_cidr: "172.30.0.0/16".parse().unwrap(),
        run_prefix: "svclab-test".into(),
        ..testkit::node()
    }
}

pub use crate::testkit::port;

pub fn tcp(ns: &str, name: &str, vip: [u8; 4]) -> ServicePort {
    port(ns, name, "p80", Protocol::Tcp, vip, 80)
}

/// A ready endpoint; `local` says whether it is on the test node.
pub fn ep(ip: [u8; 4], port: u16, local: bool) -> Endpoint {
    testkit::endpoint(
        Ipv4Addr::from(ip),
        port,
        Some(if local { "test-node" } else { "node2" }),
        local,
    )
}

pub fn insert(state: &mut ProxyState, svc: ServicePort, mut eps: Vec<Endpoint>) {
    eps.sort();
    if !eps.is_empty() {
        state.endpoints.insert(svc.name.clone(), eps);
    } else {
        state.endpoints.remove(&svc.name);
    }
    state.services.insert(svc.name.clone(), svc);
}

/// What a change tracker would report between `old` and `new`.
pub fn changes(old: &ProxyState, new: &ProxyState) -> ChangeSet {
    let mut cs = ChangeSet::default();
    for (name, svc) in &old.services {
        match new.services.get(name) {
            None => {
                cs.changed.insert(name.clone());
                cs.deleted.insert(name.clone(), svc.clone());
            }
            Some(n) if n != svc || old.endpoints_of(name) != new.endpoints_of(name) => {
                cs.changed.insert(name.clone());
            }
            Some(_) => {}
        }
    }
    for name in new.services.keys() {
        if !old.services.contains_key(name) {
            cs.changed.insert(name.clone());
        }
    }
    for name in &cs.changed {
        let removed: Vec<Endpoint> = old
            .endpoints_of(name)
            .iter()
            .filter(|e| !new.endpoints_of(name).contains(e))
            .cloned()
            .collect();
        if !removed.is_empty() {
            cs.removed_endpoints.insert(name.clone(), removed);
        }
    }
    cs
}

/// One Service of each shape the backend renders differently.
pub fn mixed() -> ProxyState {
    let mut s = ProxyState::default();
    let three = |third: u8| {
        vec![
            ep([10, 180, third, 1], 8080, true),
            ep([10, 180, third, 2], 8080, false),
            ep([10, 180, third, 3], 8080, false),
        ]
    };
    insert(&mut s, tcp("ns1", "plain", [172, 30, 0, 1]), three(1));
    insert(&mut s, tcp("ns1", "empty", [172, 30, 0, 2]), vec![]);
    let mut np = tcp("ns1", "nodeport", [172, 30, 0, 3]);
    np.node_port = Some(30003);
    insert(&mut s, np, three(3));
    let mut aff = tcp("ns1", "sticky", [172, 30, 0, 4]);
    aff.session_affinity_seconds = Some(10800);
    insert(&mut s, aff, three(4));
    let mut itp = tcp("ns1", "itp", [172, 30, 0, 5]);
    itp.internal_policy_local = true;
    insert(&mut s, itp, three(5));
    let mut etp = tcp("ns1", "etp", [172, 30, 0, 6]);
    etp.node_port = Some(30006);
    etp.external_policy_local = true;
    etp.external_ips = vec![Ipv4Addr::new(192, 168, 99, 6).into()];
    insert(&mut s, etp, three(6));
    for (pn, proto, p) in [
        ("http", Protocol::Tcp, 80),
        ("dns", Protocol::Udp, 53),
        ("dns-tcp", Protocol::Tcp, 53),
    ] {
        insert(
            &mut s,
            port("ns2", "multi", pn, proto, [172, 30, 0, 7], p),
            three(7),
        );
    }
    s
}

/// A state with `services` Services of one TCP port and `endpoints` remote
/// endpoints each, for size tests and measurements.
pub fn synthetic(services: usize, endpoints: usize) -> ProxyState {
    let mut state = ProxyState::default();
    for i in 0..services {
        let vip = [172, 30, (i >> 8) as u8, i as u8];
        let svc = tcp(&format!("ns{}", i % 50), &format!("svc{i}"), vip);
        let eps = (0..endpoints)
            .map(|j| ep([10, (i >> 8) as u8 + 1, i as u8, j as u8 + 1], 8080, false))
            .collect();
        insert(&mut state, svc, eps);
    }
    state
}
