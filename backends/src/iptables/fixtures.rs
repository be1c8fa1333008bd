//! Test fixtures: a node, service ports and endpoints built tersely.

use std::net::Ipv4Addr;

use crate::model::{Endpoint, NodeContext, Protocol, ProxyState, ServicePort};
use crate::testkit;

/// A node whose cluster CIDR is kube-proxy's test cluster CIDR
/// (10.0.0.0/8), so rules compare with its goldens.
pub fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        pod_cidr: "10.180.0.0/24".parse().unwrap(),
        cluster_cidr: "10.0.0.0/8".parse().unwrap(),
        service_cidr: "172.30.0.0/16".parse().unwrap(),
        run_prefix: "svl".into(),
        ..testkit::node()
    }
}

pub use crate::testkit::port;

/// A TCP port named `p80` on port 80, as most of kube-proxy's tests use.
pub fn p80(ns: &str, name: &str, ip: [u8; 4]) -> ServicePort {
    port(ns, name, "p80", Protocol::Tcp, ip, 80)
}

/// A ready endpoint; `local` means on this test's node.
pub fn ep(ip: [u8; 4], port: u16, local: bool) -> Endpoint {
    testkit::endpoint(
        Ipv4Addr::from(ip),
        port,
        Some(if local { "node-a" } else { "node-b" }),
        local,
    )
}

pub fn state(ports: Vec<(ServicePort, Vec<Endpoint>)>) -> ProxyState {
    let mut s = ProxyState::default();
    for (svc, mut eps) in ports {
        eps.sort();
        if !eps.is_empty() {
            s.endpoints.insert(svc.name.clone(), eps);
        }
        s.services.insert(svc.name.clone(), svc);
    }
    s
}

/// `services` ClusterIP service ports with `per` ready endpoints each, the
/// shape of the benchmark (10k Services x 10 endpoints).
pub fn synthetic(services: usize, per: usize) -> ProxyState {
    let ports = (0..services)
        .map(|i| {
            let i = i as u32;
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 0, 0)) + i);
            let svc = port(
                "bench",
                &format!("svc-{i}"),
                "http",
                Protocol::Tcp,
                vip.octets(),
                80,
            );
            let eps = (0..per as u32)
                .map(|j| {
                    let ip = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * per as u32 + j;
                    ep(Ipv4Addr::from(ip).octets(), 8080, j % 3 == 0)
                })
                .collect();
            (svc, eps)
        })
        .collect();
    state(ports)
}

/// One of each shape: three endpoints, NodePort, externalTrafficPolicy
/// Local, internalTrafficPolicy Local, ClientIP affinity, UDP, and a
/// service port without endpoints.
pub fn mixed() -> ProxyState {
    let mut nodeport = p80("ns3", "nodeport", [172, 30, 0, 43]);
    nodeport.node_port = Some(30003);
    let mut etp = p80("ns2", "etp-local", [172, 30, 0, 42]);
    etp.node_port = Some(30001);
    etp.external_policy_local = true;
    etp.health_check_node_port = Some(30000);
    let mut itp = p80("ns2", "itp-local", [172, 30, 0, 47]);
    itp.internal_policy_local = true;
    let mut sticky = p80("ns5", "sticky", [172, 30, 0, 45]);
    sticky.session_affinity_seconds = Some(10800);
    let dns = port("ns1", "dns", "dns", Protocol::Udp, [172, 30, 0, 10], 53);
    state(vec![
        (
            p80("ns1", "three", [172, 30, 0, 41]),
            vec![
                ep([10, 180, 0, 1], 80, false),
                ep([10, 180, 0, 2], 80, true),
                ep([10, 180, 0, 3], 80, false),
            ],
        ),
        (nodeport, vec![ep([10, 180, 0, 4], 80, false)]),
        (
            etp,
            vec![
                ep([10, 180, 0, 5], 80, true),
                ep([10, 180, 1, 5], 80, false),
            ],
        ),
        (
            itp,
            vec![
                ep([10, 180, 0, 6], 80, true),
                ep([10, 180, 1, 6], 80, false),
            ],
        ),
        (
            sticky,
            vec![
                ep([10, 180, 0, 7], 80, false),
                ep([10, 180, 1, 7], 80, false),
            ],
        ),
        (
            dns,
            vec![
                ep([10, 180, 0, 8], 5353, false),
                ep([10, 180, 1, 8], 5353, false),
            ],
        ),
        (p80("ns6", "empty", [172, 30, 0, 46]), vec![]),
    ])
}
